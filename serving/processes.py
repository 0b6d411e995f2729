"""What the supervisor of ``dmfn serve`` reads from Linux: Triton's python-backend stub processes
and the shared-memory regions they own.

A python-backend model instance is one ``triton_python_backend_stub`` process, a child of
tritonserver, whose arguments hold the instance name (``<model>_<group>_<index>``, e.g.
``preprocess_0_1``) and its shared-memory region (``/dev/shm/<prefix><uuid>``). Triton 2.51 does
not restart a stub that dies or stops, and its health endpoints stay green; these helpers let
the supervisor see it. Linux only (``/proc``); elsewhere nothing is found.
"""

from __future__ import annotations

import contextlib
import logging
import os
import signal
import subprocess
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

log = logging.getLogger(__name__)

STUB_NAME = "triton_python_backend_stub"
SHM_DIR = Path("/dev/shm")


@dataclass(frozen=True)
class Proc:
    """One process: pid, parent pid, state letter (R, S, Z, ...) and arguments."""

    pid: int
    ppid: int
    state: str
    argv: tuple[str, ...]


def processes() -> Iterator[Proc]:
    """Every process readable in /proc (vanished ones are skipped)."""
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            stat = (entry / "stat").read_text()
            raw = (entry / "cmdline").read_bytes()
        except OSError:
            continue
        # "pid (comm) state ppid ...": comm may hold spaces and parentheses.
        fields = stat[stat.rfind(")") + 2 :].split()
        argv = tuple(a.decode(errors="replace") for a in raw.split(b"\0") if a)
        yield Proc(int(entry.name), int(fields[1]), fields[0], argv)


def instance_name(argv: tuple[str, ...]) -> str | None:
    """The model-instance name in a stub's arguments (the 9th: ``preprocess_0_1``), else None."""
    if not argv or not argv[0].endswith(STUB_NAME) or len(argv) < 9:
        return None
    return argv[8]


def live_stubs(parent_pid: int) -> dict[str, Proc]:
    """Instance name -> the live (not zombie) stub process of that instance, among the children
    of ``parent_pid`` (a tritonserver)."""
    out: dict[str, Proc] = {}
    for proc in processes():
        if proc.ppid != parent_pid or proc.state in ("Z", "X"):
            continue
        name = instance_name(proc.argv)
        if name is not None:
            out[name] = proc
    return out


def kill_marked(marker: str, sig: int = signal.SIGKILL) -> list[int]:
    """Send ``sig`` to every process with ``marker`` in its arguments (e.g. the stubs of a server
    that died, found by their shared-memory prefix); returns their pids."""
    killed = []
    for proc in processes():
        if proc.pid != os.getpid() and any(marker in a for a in proc.argv):
            with contextlib.suppress(ProcessLookupError, PermissionError):
                os.kill(proc.pid, sig)
                killed.append(proc.pid)
    return killed


def remove_shm_regions(prefix: str) -> list[str]:
    """Unlink every ``/dev/shm/<prefix>*`` region; returns the names removed."""
    if not prefix:
        raise ValueError("argument 'prefix': must not be empty (it would match every region)")
    removed = []
    with contextlib.suppress(OSError):
        for path in SHM_DIR.glob(f"{prefix}*"):
            with contextlib.suppress(OSError):
                path.unlink()
                removed.append(path.name)
    return removed


def shm_regions(prefix: str) -> list[Path]:
    """The ``/dev/shm/<prefix>*`` regions that exist now."""
    return sorted(SHM_DIR.glob(f"{prefix}*")) if prefix else []


def _label(proc: Proc) -> str:
    name = instance_name(proc.argv)
    if name is not None:
        return name
    text = " ".join(proc.argv)
    for marker, label in (("tritonserver", "tritonserver"), ("nginx: worker", "nginx worker")):
        if marker in text:
            return label
    return (
        "nginx master" if "nginx: master" in text else Path(proc.argv[0]).name if proc.argv else "?"
    )


def tree_rss(pid: int) -> dict[str, int]:
    """Resident memory in bytes of ``pid`` and each of its descendants, by a readable label
    (``tritonserver``, ``preprocess_0_1``, ``nginx worker``, ...; repeated labels are summed).
    Shared memory mapped by two processes counts in both."""
    children: dict[int, list[Proc]] = {}
    by_pid: dict[int, Proc] = {}
    for proc in processes():
        children.setdefault(proc.ppid, []).append(proc)
        by_pid[proc.pid] = proc
    out: dict[str, int] = {}
    todo = [by_pid[pid]] if pid in by_pid else []
    while todo:
        current = todo.pop()
        todo.extend(children.get(current.pid, []))
        with contextlib.suppress(OSError, ValueError, IndexError):
            pages = int(Path(f"/proc/{current.pid}/statm").read_text().split()[1])
            label = _label(current)
            out[label] = out.get(label, 0) + pages * os.sysconf("SC_PAGE_SIZE")
    return out


def tree_rss_bytes(pid: int) -> int:
    """Resident memory of ``pid`` and all its descendants, in bytes (0 if it is gone)."""
    return sum(tree_rss(pid).values())


def stop_process(process: subprocess.Popen, signum: int, timeout_s: float, name: str) -> int | None:
    """Send ``signum``, wait up to ``timeout_s`` seconds, then SIGKILL the process group (the
    process was started with ``start_new_session``). Returns the exit code."""
    if process.poll() is None:
        with contextlib.suppress(ProcessLookupError):
            process.send_signal(signum)
        try:
            process.wait(timeout=timeout_s)
        except subprocess.TimeoutExpired:
            log.warning("%s did not stop within %.0f s: killing it", name, timeout_s)
            with contextlib.suppress(ProcessLookupError):
                os.killpg(process.pid, signal.SIGKILL)
            process.wait()
    return process.returncode
