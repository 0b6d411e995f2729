"""What a python-backend worker of ``dmfn serve`` records for the supervisor that watches it.

A worker (one ``triton_python_backend_stub`` process: ``preprocess_0_1``, ...) is a child of
tritonserver, so ``dmfn serve`` cannot read its exit status. When one dies, the supervisor
explains it from what the worker left in the folder named by ``$DMFN_WORKER_STATE_DIR``:

- ``<instance>.crash``: Python's faulthandler output for a fatal signal (SIGSEGV, SIGFPE,
  SIGABRT, SIGBUS, SIGILL: the signal and the Python stack). A SIGKILL, e.g. from the kernel's
  out-of-memory killer, leaves nothing: then the supervisor's last reading of the worker's
  memory is the clue;
- ``<instance>.last``: the request being processed (studies in the batch, their declared voxels,
  when), one fixed-size record rewritten in place at the start of each ``execute`` (one
  ``pwrite``, about a microsecond).

Outside ``dmfn serve`` (no variable), nothing is recorded.
"""

from __future__ import annotations

import contextlib
import faulthandler
import os
import time
from pathlib import Path

WORKER_STATE_ENV = "DMFN_WORKER_STATE_DIR"
RECORD_BYTES = 80


def crash_file(folder: Path, instance: str) -> Path:
    return Path(folder) / f"{instance}.crash"


def last_request_file(folder: Path, instance: str) -> Path:
    return Path(folder) / f"{instance}.last"


def format_request_record(n_studies: int, n_voxels: int, unix_time: float) -> bytes:
    """The fixed-size record of one request: ``unix_time n_studies n_voxels``, space-padded."""
    text = f"{unix_time:.3f} {int(n_studies)} {int(n_voxels)}"
    return text.encode().ljust(RECORD_BYTES - 1) + b"\n"


def parse_request_record(data: bytes) -> tuple[float, int, int] | None:
    """(unix time, studies, voxels) of a record, or None if it is empty or unreadable."""
    try:
        when, studies, size = data.split()[:3]
        return float(when), int(studies), int(size)
    except ValueError:
        return None


class WorkerRecorder:
    """The worker side (see the module docstring); a no-op outside ``dmfn serve``."""

    def __init__(self, instance: str, folder: str | None = None) -> None:
        folder = folder if folder is not None else os.environ.get(WORKER_STATE_ENV)
        self._fd: int | None = None
        self._crash = None
        if not folder or not instance:
            return
        try:
            self._crash = open(crash_file(Path(folder), instance), "w")
            faulthandler.enable(self._crash, all_threads=True)
            self._fd = os.open(
                last_request_file(Path(folder), instance), os.O_WRONLY | os.O_CREAT, 0o600
            )
        except OSError:  # recording is a diagnostic: never stop a worker for it
            self.close()

    @property
    def active(self) -> bool:
        return self._fd is not None

    def request(self, n_studies: int, n_voxels: int) -> None:
        """Record the request this worker starts to process (voxels as declared by the client)."""
        if self._fd is not None:
            with contextlib.suppress(OSError):
                os.pwrite(self._fd, format_request_record(n_studies, n_voxels, time.time()), 0)

    def close(self) -> None:
        if self._crash is not None:
            with contextlib.suppress(Exception):
                faulthandler.disable()
                self._crash.close()
            self._crash = None
        if self._fd is not None:
            with contextlib.suppress(OSError):
                os.close(self._fd)
            self._fd = None
