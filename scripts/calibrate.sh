#!/usr/bin/env bash
# Calibrate the synthetic CT on CT-only models (scripts/calibrate.py says how; log: docs/calibration.md).
set -euo pipefail
ROOT="$(cd "$(dirname "$0")/.." && pwd)"
exec "$ROOT/.venv/bin/python" "$ROOT/scripts/calibrate.py" "$@"
