#!/usr/bin/env bash
# Fetch, on a machine with PyPI, the Python 3.12 wheels that a GPU host without a registry lacks,
# into .whl/ (git-ignored; carried to the host). The GPU host of docs/deploy.md section 6 already
# has CuPy, NumPy 2, PyTorch, ONNX, ONNX Runtime, pybind11, scikit-build-core and CMake; it lacks
# dmfn's I/O and client packages and the Triton server. One carry holds at most 64 MiB, so the
# wheels come in two parts, each carried by its own call of scripts/gpu_check.sh:
#
#   scripts/gpu_wheels.sh --part triton   # nvidia-pytriton (55 MB: tritonserver + python backend)
#   scripts/gpu_wheels.sh --part main     # pydicom, nibabel, pynrrd, tritonclient[http] + deps
#
# Each part empties .whl/ first and prints what it holds and its size.
set -euo pipefail
cd "$(dirname "$0")/.."
PART=main
PYVER=3.12
while [[ $# -gt 0 ]]; do
    case "$1" in
        --part) PART=$2; shift 2 ;;
        --python-version) PYVER=$2; shift 2 ;;
        -h|--help) sed -n '2,14p' "$0" | sed 's/^# \{0,1\}//'; exit 0 ;;
        *) echo "gpu_wheels.sh: unknown argument $1 (see --help)" >&2; exit 2 ;;
    esac
done
case $PART in
    triton) WHEELS=(nvidia-pytriton==0.7.0) ;;
    main) WHEELS=(pydicom==3.0.1 nibabel==5.4.2 pynrrd==1.1.3 tritonclient==2.50.0
                  geventhttpclient==2.6.1 gevent==25.9.1 greenlet==3.2.4 zope.event==6.0
                  zope.interface==8.0.1 brotli==1.1.0 python-rapidjson==1.25) ;;
    *) echo "gpu_wheels.sh: --part must be triton or main, got $PART" >&2; exit 2 ;;
esac
grep -qx '/.whl/' .git/info/exclude 2>/dev/null || echo '/.whl/' >> .git/info/exclude
rm -rf .whl && mkdir -p .whl
PLATFORMS=()
for p in manylinux_2_35 manylinux_2_34 manylinux_2_31 manylinux_2_28 manylinux_2_27 manylinux_2_24 \
         manylinux_2_17 manylinux2014 manylinux_2_5 manylinux1; do
    PLATFORMS+=(--platform "${p}_x86_64")
done
python3 -m pip download -q --no-deps --only-binary=:all: --python-version "$PYVER" \
    --implementation cp "${PLATFORMS[@]}" -d .whl "${WHEELS[@]}" 2> >(grep -v 'is ignored' >&2)
ls -la .whl
du -sh .whl
