#!/usr/bin/env bash
# Locust load test of the dmfn service; see loadtests/README.md and `loadtests/run.sh --help`.
set -euo pipefail
ROOT="$(cd "$(dirname "$0")/.." && pwd)"
PY="${PYTHON:-$ROOT/.venv/bin/python}"
exec "$PY" "$ROOT/loadtests/run.py" "$@"
