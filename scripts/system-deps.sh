#!/usr/bin/env bash
# Debian packages needed by the tests: R with pROC (the reference for the clinical statistics).
# Idempotent; skipped (with a message) where we are not root or apt-get is missing.
set -euo pipefail
need=()
command -v Rscript >/dev/null 2>&1 || need+=(r-base-core)
if command -v Rscript >/dev/null 2>&1 && ! Rscript -e 'library(pROC)' >/dev/null 2>&1; then need+=(r-cran-proc); fi
command -v Rscript >/dev/null 2>&1 || need+=(r-cran-proc)
[ ${#need[@]} -eq 0 ] && exit 0
if [ "$(id -u)" != 0 ] || ! command -v apt-get >/dev/null; then
  echo "system-deps: cannot install ${need[*]} (not root or no apt-get); R-based tests will skip" >&2
  exit 0
fi
echo "system-deps: installing ${need[*]}"
apt-get update -qq
DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends "${need[@]}" >/dev/null
