#!/usr/bin/env bash
# Proof of the GPU path on a GPU host, in one run of a few minutes; every result goes to a file.
#
#   scripts/gpu_check.sh [--install-only] [--skip-served]
#
# Run from the repository root on the GPU host (the device tool's `run`; docs/deploy.md section 6).
# Results: $OUT/ when set (the device tool's output folder), else build/gpu_check/:
#   gpu_check.txt (everything, in order), tests.txt, bench.json, served.json.
#
# 1. What the host has: GPU, driver, Python, and which needed packages are already installed.
# 2. Installs what it lacks from the wheels carried in .whl/ (scripts/gpu_wheels.sh), never from a
#    registry, into /tmp/dmfn-site, which stays while the machine stays warm: carry the
#    `--part triton` wheels with --install-only first, then the `--part main` wheels for the run.
# 3. Builds the C++ extension there (pybind11, scikit-build-core and CMake of the host).
# 4. GPU tests: every CuPy kernel against the C++ kernel (tests/test_gpu.py, within 1e-3 HU),
#    the device pipeline against the CPU one, TensorRT against ONNX Runtime where TensorRT is
#    importable (said plainly when it is not), and the CPU kernel tests on this host's build
#    (tests/test_spatial.py needs SimpleITK, which the host lacks: it runs in `make test`).
# 5. benchmarks/gpu.py: PDE 3D bandwidth against the device copy, a 300x512x512 study end to end
#    on the GPU against the C++ path on this machine's CPUs.
# 6. scripts/gpu_served_check.py: Triton with the --device gpu repository; served probabilities
#    against in-process within 1e-3.
set -uo pipefail
cd "$(dirname "$0")/.."
REPO=$(pwd)
RESULTS=${OUT:-$REPO/build/gpu_check}
SITE=/tmp/dmfn-site
PY=${PYTHON:-python3}
INSTALL_ONLY=0
SERVED=1
for arg in "$@"; do
    case $arg in
        --install-only) INSTALL_ONLY=1 ;;
        --skip-served) SERVED=0 ;;
        -h|--help) sed -n '2,22p' "$0" | sed 's/^# \{0,1\}//'; exit 0 ;;
        *) echo "gpu_check.sh: unknown argument $arg (see --help)" >&2; exit 2 ;;
    esac
done
mkdir -p "$RESULTS" "$SITE"
LOG=$RESULTS/gpu_check.txt
: > "$LOG"
say() { echo "$*" | tee -a "$LOG"; }
step() { say ""; say "== $* ($(date -u +%H:%M:%S))"; }
STATUS=0
export PYTHONPATH=$SITE${PYTHONPATH:+:$PYTHONPATH} PYTHONUNBUFFERED=1

step "1. host"
nvidia-smi --query-gpu=name,driver_version,memory.total --format=csv,noheader 2>&1 | tee -a "$LOG"
say "python: $($PY -c 'import sys; print(sys.version.split()[0], sys.executable)')"
for module in cupy numpy torch onnx onnxruntime tensorrt tritonclient pytriton pydicom nibabel nrrd tqdm; do
    say "  $module: $($PY -c "import $module as m; print(getattr(m, '__version__', 'present'))" 2>/dev/null || echo missing)"
done

step "2. install carried wheels (.whl/) the host lacks"
shopt -s nullglob
for wheel in .whl/*.whl; do
    name=$(basename "$wheel" | cut -d- -f1)
    $PY -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade \
        --target "$SITE" "$wheel" 2>&1 | grep -v "WARNING: Target directory" | tee -a "$LOG"
    say "  installed $name"
done
[[ $INSTALL_ONLY == 1 ]] && { say "install only: done"; exit 0; }

step "3. build dmfn (C++ extension) for this host"
if ! $PY -m pip install -q --no-build-isolation --no-deps --ignore-requires-python --upgrade \
        --target "$SITE" . >> "$LOG" 2>&1; then
    say "BUILD FAILED (see above)"; exit 1
fi
cd /tmp || exit 1  # import the installed dmfn, not the source folders
$PY -c "import dmfn.preprocess._core as c, dmfn.preprocess.gpu as g; print('dmfn', c.__file__, 'openmp', c.openmp); print('cupy backend:', g.cupy_unavailable_reason() or 'available')" 2>&1 | tee -a "$LOG"
TRT=$($PY -c "from dmfn.training.export import tensorrt_unavailable_reason as r; print(r() or 'available')" 2>&1 | tail -1)
say "TensorRT: $TRT"

step "4. tests"
$PY -m pytest -c "$REPO/pyproject.toml" --rootdir "$REPO" -o filterwarnings=default -p no:cacheprovider \
    -q -rs "$REPO/tests/test_gpu.py" "$REPO/tests/test_pde.py" "$REPO/tests/test_pipeline.py" \
    "$REPO/tests/test_export.py::test_tensorrt_engine_matches_onnxruntime" \
    2>&1 | tee "$RESULTS/tests.txt" | tail -25 | tee -a "$LOG"
[[ ${PIPESTATUS[0]} == 0 ]] || STATUS=1
grep -c "SKIPPED.*tensorrt\|needs TensorRT" "$RESULTS/tests.txt" >/dev/null && say "TensorRT vs ONNX Runtime: NOT run ($TRT)"

step "5. benchmarks/gpu.py"
timeout 240 $PY "$REPO/benchmarks/gpu.py" --out "$RESULTS/bench.json" 2>&1 | tee -a "$LOG"
[[ ${PIPESTATUS[0]} == 0 ]] || STATUS=1

if [[ $SERVED == 1 ]]; then
    step "6. served check (Triton, --device gpu repository)"
    if $PY -c "import pytriton" 2>/dev/null; then
        TARGET=cpu
        [[ $TRT == available ]] && TARGET=tensorrt
        timeout 300 $PY "$REPO/scripts/gpu_served_check.py" --target $TARGET --out "$RESULTS/served.json" 2>&1 \
            | tail -40 | tee -a "$LOG"
        [[ ${PIPESTATUS[0]} == 0 ]] || STATUS=1
    else
        say "not run: nvidia-pytriton (the tritonserver binary) is not installed; carry it with"
        say "scripts/gpu_wheels.sh --part triton and run this script with --install-only first"
        STATUS=1
    fi
fi
step "done: status $STATUS"
exit $STATUS
