#!/usr/bin/env bash
# Debian packages the tests need, installed when missing (root + apt-get), else a clear message.
# Add a package here with the command that proves it is present.
set -euo pipefail
declare -A probe=(
  # R with pROC: the reference the clinical statistics are tested against.
  [r-base-core]="command -v Rscript"
  [r-cran-proc]="Rscript -e 'library(pROC)'"
  # nginx: the front door of `dmfn serve` (body limit, admin APIs closed, truthful readiness, TLS).
  [nginx]="command -v nginx || test -x /usr/sbin/nginx"
  # its JavaScript module: API keys are checked by their SHA-256 inside nginx (serving/auth.py).
  [libnginx-mod-http-js]="test -f /usr/lib/nginx/modules/ngx_http_js_module.so"
  # openssl: the TLS tests make a self-signed certificate with it.
  [openssl]="command -v openssl"
  # Orthanc with DICOMweb: the PACS of the round-trip tests (dmfn predict --dicomweb ... --store).
  [orthanc]="command -v Orthanc || test -x /usr/sbin/Orthanc"
  [orthanc-dicomweb]="test -f /usr/share/orthanc/plugins/libOrthancDicomWeb.so"
  # OpenJPEG's headers: the client's JPEG 2000 region decoder (client/native) links libopenjp2.
  [libopenjp2-7-dev]="test -f /usr/include/openjpeg-2.5/openjpeg.h"
  # dcmtk: the independent DICOM reader of the tests (dsrdump for SR, dcmdump).
  [dcmtk]="command -v dsrdump"
)
need=()
for pkg in "${!probe[@]}"; do
  bash -c "${probe[$pkg]}" >/dev/null 2>&1 || need+=("$pkg")
done
[ ${#need[@]} -eq 0 ] && exit 0
if [ "$(id -u)" != 0 ] || ! command -v apt-get >/dev/null; then
  echo "system-deps: cannot install ${need[*]} (not root or no apt-get); tests needing them skip" >&2
  exit 0
fi
echo "system-deps: installing ${need[*]}"
apt-get update -qq
DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends "${need[@]}" >/dev/null
