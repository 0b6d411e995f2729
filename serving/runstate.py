"""What a ``dmfn serve`` leaves behind for its successor, and who holds a port.

Every service writes a state file named after its public address and ports
(``$XDG_RUNTIME_DIR/dmfn`` or the user's cache folder, mode 0700): its own pid, the process
groups of its front door and Triton, its run folder and its shared-memory prefix. The children
die with the service (PR_SET_PDEATHSIG), but a kill -9 can still leave a front door that was
being restarted, a run folder or shared memory. A new ``dmfn serve`` on the same ports reads the
file: if the recorded service is gone, it stops what is left (checking each pid's command line,
so a recycled pid is never touched) and removes the folder and regions; if it is alive, it says
so. When a port is taken by anything else, :func:`port_owner` says which process holds it.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import shutil
import signal
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

from .processes import processes, remove_shm_regions

log = logging.getLogger(__name__)


def state_dir() -> Path:
    """The per-user folder of state files (created 0700)."""
    base = os.environ.get("XDG_RUNTIME_DIR")
    if base and Path(base).is_dir() and os.access(base, os.W_OK):
        folder = Path(base) / "dmfn"
    else:
        from dmfn.resources import cache_dir

        folder = cache_dir() / "run"
    folder.mkdir(parents=True, exist_ok=True, mode=0o700)
    return folder


@dataclass
class RunState:
    """One service's record (see the module docstring). Pids of 0 mean "none"."""

    host: str
    ports: tuple[int, int, int]
    pid: int = field(default_factory=os.getpid)
    run_dir: str = ""
    shm_prefix: str = ""
    #: pid (= process group) -> the words its command line must contain.
    children: dict[str, str] = field(default_factory=dict)

    @property
    def path(self) -> Path:
        safe = self.host.replace(":", "_").replace("/", "_") or "any"
        return state_dir() / f"serve-{safe}-{'-'.join(map(str, self.ports))}.json"

    def save(self) -> None:
        tmp = self.path.with_suffix(".tmp")
        tmp.write_text(json.dumps(asdict(self)))
        os.replace(tmp, self.path)

    def remove(self) -> None:
        with contextlib.suppress(FileNotFoundError):
            self.path.unlink()

    @classmethod
    def read(cls, host: str, ports: tuple[int, int, int]) -> RunState | None:
        path = cls(host, ports).path
        try:
            data = json.loads(path.read_text())
            return cls(
                host=data["host"],
                ports=tuple(data["ports"]),
                pid=int(data["pid"]),
                run_dir=str(data.get("run_dir", "")),
                shm_prefix=str(data.get("shm_prefix", "")),
                children={str(k): str(v) for k, v in data.get("children", {}).items()},
            )
        except (OSError, ValueError, KeyError, TypeError):
            return None


def _cmdline(pid: int) -> str:
    try:
        return (
            Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
        )
    except OSError:
        return ""


def is_dmfn_serve(pid: int) -> bool:
    """True if ``pid`` runs (a Python process whose arguments mention) dmfn serve."""
    text = _cmdline(pid)
    return "serve" in text and "dmfn" in text


def clear_predecessor(host: str, ports: tuple[int, int, int]) -> str | None:
    """Clean up after a dead ``dmfn serve`` on these ports; returns what was done (None: no
    record). Raises RuntimeError when the recorded service is still running."""
    state = RunState.read(host, ports)
    if state is None:
        return None
    if state.pid != os.getpid() and is_dmfn_serve(state.pid):
        raise RuntimeError(
            f"another dmfn serve (pid {state.pid}) is running on {host} ports "
            f"{'/'.join(map(str, ports))}: stop it first (kill -TERM {state.pid})"
        )
    stopped = []
    for pid_text, marker in state.children.items():
        pid = int(pid_text)
        if pid > 0 and marker in _cmdline(pid):
            with contextlib.suppress(ProcessLookupError, PermissionError):
                os.killpg(pid, signal.SIGKILL)
                stopped.append(f"{marker} (pid {pid})")
    if state.shm_prefix:
        for proc in processes():
            if any(state.shm_prefix in a for a in proc.argv):
                with contextlib.suppress(ProcessLookupError, PermissionError):
                    os.kill(proc.pid, signal.SIGKILL)
                    stopped.append(f"worker (pid {proc.pid})")
        remove_shm_regions(state.shm_prefix)
    if state.run_dir and Path(state.run_dir).name.startswith("dmfn-serve-"):
        shutil.rmtree(state.run_dir, ignore_errors=True)
    state.remove()
    time.sleep(0.2 if stopped else 0.0)  # let the kernel release their sockets
    what = ", ".join(stopped) if stopped else "nothing was left running"
    return f"a previous dmfn serve (pid {state.pid}) had died: {what}; its files were removed"


def _listening_inodes(port: int) -> set[str]:
    inodes = set()
    for table in ("/proc/net/tcp", "/proc/net/tcp6"):
        with contextlib.suppress(OSError):
            for line in Path(table).read_text().splitlines()[1:]:
                fields = line.split()
                if (
                    len(fields) > 9
                    and fields[3] == "0A"
                    and int(fields[1].rsplit(":", 1)[1], 16) == port
                ):
                    inodes.add(fields[9])
    return inodes


def port_owner(port: int) -> str:
    """Which process listens on TCP ``port`` ("pid 123 (nginx: worker process)"), or why it
    cannot be told (another user's process is not visible to this one)."""
    inodes = _listening_inodes(port)
    if not inodes:
        return "no listening socket was found (it may have just closed)"
    owners = []
    for proc in processes():
        with contextlib.suppress(OSError):
            for fd in Path(f"/proc/{proc.pid}/fd").iterdir():
                with contextlib.suppress(OSError):
                    target = os.readlink(fd)
                    if target.startswith("socket:[") and target[8:-1] in inodes:
                        owners.append(f"pid {proc.pid} ({' '.join(proc.argv)[:80]})")
                        break
    if not owners:
        return "a process of another user (not visible to this one)"
    return ", ".join(owners)
