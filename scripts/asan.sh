#!/usr/bin/env bash
# Build dmfn.preprocess._core with AddressSanitizer + UBSan and run the kernel tests against it.
# The instrumented module goes into a private copy of the package (build/asan/pkg); the installed
# module, which other processes may have loaded, is never touched.
set -euo pipefail
cd "$(dirname "$0")/.."
PY=.venv/bin/python
build=build/asan
cmake -S . -B "$build" -G Ninja -DDMFN_ASAN=ON -DDMFN_NATIVE=ON -DCMAKE_BUILD_TYPE=RelWithDebInfo \
  -Dpybind11_DIR="$($PY -m pybind11 --cmakedir)" -DPython_EXECUTABLE="$PY" >/dev/null
cmake --build "$build" >/dev/null
pkg="$build/pkg"
rm -rf "$pkg" && mkdir -p "$pkg"
# the same folder -> package map as pyproject.toml's [tool.scikit-build.wheel.packages]
cp -r dmfn "$pkg/dmfn"
for pair in contract:contract client:client preprocess_ext/preprocess:preprocess serving:serving \
            synth:synth evaluation:evaluation training:training; do
  cp -r "${pair%%:*}" "$pkg/dmfn/${pair##*:}"
done
cp "$build"/_core*.so "$pkg/dmfn/preprocess/"
site=$($PY -c 'import sysconfig; print(sysconfig.get_paths()["purelib"])')
libasan=$(g++ -print-file-name=libasan.so)
libubsan=$(g++ -print-file-name=libubsan.so)
# -S keeps the editable install's import hook out and -P the working directory (whose dmfn/ folder
# is the source tree, not the package), so `import dmfn` finds the private copy first.
# Python itself is not instrumented: leak checks would report the interpreter, so they are off.
export PYTHONPATH="$PWD/$pkg:$site" ASAN_OPTIONS=detect_leaks=0:abort_on_error=1 \
  UBSAN_OPTIONS=halt_on_error=1:print_stacktrace=1 LD_PRELOAD="$libasan $libubsan"
$PY -S -P -c "import dmfn.preprocess._core as m; assert m.__file__.startswith('$PWD/$pkg'), m.__file__"
$PY -S -P -m pytest -q -p no:cacheprovider tests/test_pde.py tests/test_spatial.py tests/test_pipeline.py tests/test_buffer_pool.py "$@"
echo "asan: kernel tests passed under AddressSanitizer + UBSan ($pkg)"
