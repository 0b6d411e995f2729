"""A real Orthanc PACS with its DICOMweb plugin, for the tests: its own port, storage and log.

Debian's ``orthanc`` and ``orthanc-dicomweb`` packages (installed by ``make setup`` through
scripts/system-deps.sh). :func:`orthanc_or_skip` says why when they are missing.
"""

from __future__ import annotations

import json
import shutil
import subprocess
import time
import urllib.request
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import pytest

from dmfn.serving.triton import free_ports

ORTHANC = shutil.which("Orthanc") or "/usr/sbin/Orthanc"
DICOMWEB_PLUGIN = Path("/usr/share/orthanc/plugins/libOrthancDicomWeb.so")
START_TIMEOUT_S = 30.0


def orthanc_or_skip() -> None:
    """Skip (with the reason printed by pytest -ra) where Orthanc or its DICOMweb plugin is missing."""
    if not Path(ORTHANC).exists():
        pytest.skip("Orthanc is not installed (make setup installs Debian's orthanc as root)")
    if not DICOMWEB_PLUGIN.is_file():
        pytest.skip(f"Orthanc's DICOMweb plugin is missing ({DICOMWEB_PLUGIN}; orthanc-dicomweb)")


@contextmanager
def running_orthanc(folder: Path) -> Iterator[str]:
    """Start Orthanc with storage under ``folder``, bound to 127.0.0.1; yield its DICOMweb root
    URL; stop it (its log is ``folder/orthanc.log``)."""
    orthanc_or_skip()
    (port,) = free_ports(1)
    storage = folder / "storage"
    storage.mkdir(parents=True)
    config = {
        "Name": "dmfn-test",
        "StorageDirectory": str(storage),
        "IndexDirectory": str(storage),
        "HttpPort": port,
        "RemoteAccessAllowed": False,
        "AuthenticationEnabled": False,
        "DicomServerEnabled": False,
        "Plugins": [str(DICOMWEB_PLUGIN)],
        "DicomWeb": {"Enable": True, "Root": "/dicom-web/"},
    }
    config_path = folder / "orthanc.json"
    config_path.write_text(json.dumps(config))
    log = (folder / "orthanc.log").open("wb")
    process = subprocess.Popen([ORTHANC, str(config_path)], stdout=log, stderr=subprocess.STDOUT)
    base = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + START_TIMEOUT_S
        while True:
            if process.poll() is not None:
                raise RuntimeError(f"Orthanc exited with {process.returncode}; see {log.name}")
            try:
                with urllib.request.urlopen(f"{base}/system", timeout=2):
                    break
            except OSError:
                if time.monotonic() > deadline:
                    raise RuntimeError(f"Orthanc not up in {START_TIMEOUT_S} s") from None
                time.sleep(0.2)
        yield f"{base}/dicom-web"
    finally:
        process.terminate()
        try:
            process.wait(timeout=20)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()
        log.close()


def orthanc_series(dicomweb_url: str, study_uid: str) -> list[dict]:
    """Orthanc's own REST view of a study's series (MainDicomTags), to check what was stored."""
    base = dicomweb_url.rsplit("/dicom-web", 1)[0]
    request = urllib.request.Request(
        f"{base}/tools/find",
        data=json.dumps(
            {"Level": "Series", "Query": {"StudyInstanceUID": study_uid}, "Expand": True}
        ).encode(),
        method="POST",
    )
    with urllib.request.urlopen(request, timeout=10) as answer:
        return json.loads(answer.read())
