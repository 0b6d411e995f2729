#!/usr/bin/env bash
# Triton's perf_analyzer on dmfn_pipeline, concurrency 1..16; see loadtests/perf_analyzer.py.
set -euo pipefail
ROOT="$(cd "$(dirname "$0")/.." && pwd)"
PY="${PYTHON:-$ROOT/.venv/bin/python}"
exec "$PY" "$ROOT/loadtests/perf_analyzer.py" "$@"
