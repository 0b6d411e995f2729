#!/usr/bin/env bash
# Build dmfn._preprocess with AddressSanitizer + UBSan and run the kernel tests against it.
# The instrumented module temporarily replaces the installed one and is restored on exit.
set -euo pipefail
cd "$(dirname "$0")/.."
PY=.venv/bin/python
build=build/asan
cmake -S . -B "$build" -G Ninja -DDMFN_ASAN=ON -DDMFN_NATIVE=ON -DCMAKE_BUILD_TYPE=RelWithDebInfo \
  -Dpybind11_DIR="$($PY -m pybind11 --cmakedir)" -DPython_EXECUTABLE="$PY" >/dev/null
cmake --build "$build" >/dev/null
installed=$($PY -c "import dmfn._preprocess as m; print(m.__file__)")
cp "$installed" "$installed.orig"
trap 'mv -f "$installed.orig" "$installed"' EXIT
cp "$build"/_preprocess*.so "$installed"
libasan=$(g++ -print-file-name=libasan.so)
libubsan=$(g++ -print-file-name=libubsan.so)
# Python itself is not instrumented: leak checks would report the interpreter, so they are off.
ASAN_OPTIONS=detect_leaks=0:abort_on_error=1 UBSAN_OPTIONS=halt_on_error=1:print_stacktrace=1 \
  LD_PRELOAD="$libasan $libubsan" \
  $PY -m pytest -q -p no:cacheprovider tests/test_pde.py tests/test_spatial.py tests/test_pipeline.py "$@"
echo "asan: kernel tests passed under AddressSanitizer + UBSan"
