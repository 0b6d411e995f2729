"""Launch a real Triton Inference Server on a dmfn model repository.

By default the ``tritonserver`` binary bundled in the ``nvidia-pytriton`` wheel (Triton 2.51) is
used; any other binary (for example ``/opt/tritonserver/bin/tritonserver`` in NGC's container)
can be given. The python backend is wired for the running interpreter: a backend folder under
``build/triton/backends`` holds pytriton's python backend plus the stub built for this Python
(3.11), the server's other backends (onnxruntime, tensorrt, ...) are linked beside it, the
interpreter's ``bin`` goes first on PATH (the stub finds its environment through ``python3``) and
the interpreter's ``libpython`` first on LD_LIBRARY_PATH.
"""

from __future__ import annotations

import fcntl
import hashlib
import logging
import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import sysconfig
import threading
import time
import urllib.error
import urllib.request
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO

from dmfn.resources import cache_dir

from . import uds
from .config import MODEL_NAMES
from .logs import DEFAULT_BACKUPS, DEFAULT_MAX_BYTES, RotatingLog
from .processes import stop_process
from .repository import check_repository
from .spawner import Spawner, child_setup

log = logging.getLogger(__name__)

STUB_NAME = "triton_python_backend_stub"
#: Environment variable naming the folder where python-backend workers record their state.
WORKER_STATE_ENV = "DMFN_WORKER_STATE_DIR"
#: Log lines that mean a port could not be bound.
_PORT_ERRORS = ("address already in use", "failed to start http", "failed to start grpc")
#: Triton's error lines: glog-style "E1127 17:47:06.123 ...] message", or "error: message".
_ERROR_LINE = re.compile(r"^(?:E\d{4} \S+ +\d+ \S+\] |error: )(?P<message>.*)$", re.IGNORECASE)
#: Bytes of server output kept in memory when no log file is given (for error messages).
_TAIL_BYTES = 64 * 1024
#: Messages Triton prints on every host without an NVIDIA GPU; harmless there.
CPU_HOST_NOISE = re.compile(
    r"CudaDriverHelper|CUDA driver version is insufficient|NVML|DCGM|pinned memory pool"
)
#: glibc malloc settings for the server and its stubs: buffers above 1 MiB (request bodies,
#: volumes) are mmap-ed and given back to the OS when freed, so memory does not stay at the peak
#: of the largest request served. Fixed thresholds also stop glibc from raising them on its own.
MALLOC_ENV = {
    "MALLOC_MMAP_THRESHOLD_": str(1 << 20),
    "MALLOC_TRIM_THRESHOLD_": str(1 << 20),
    "MALLOC_ARENA_MAX": "4",
}


def has_nvidia_gpu() -> bool:
    """True when an NVIDIA device node exists (then CUDA messages are not noise)."""
    return Path("/dev/nvidiactl").exists()


class TritonError(RuntimeError):
    """The server could not be started or stopped (message says why)."""


class PortInUseError(TritonError, ValueError):
    """A requested port is already taken."""


def _pytriton_root() -> Path | None:
    try:
        import pytriton
    except ImportError:
        return None
    root = Path(pytriton.__file__).parent / "tritonserver"
    return root if root.is_dir() else None


def bundled_tritonserver() -> Path:
    """The tritonserver binary of the nvidia-pytriton wheel; ValueError if it is not installed."""
    root = _pytriton_root()
    binary = root / "bin" / "tritonserver" if root else None
    if binary is None or not binary.is_file():
        raise ValueError(
            "the bundled tritonserver was not found: install the serving extra "
            "(`make setup` installs nvidia-pytriton) or pass --tritonserver PATH"
        )
    return binary


def _project_build_dir() -> Path:
    """The folder for the prepared backend directories: a per-user cache (``$XDG_CACHE_HOME``)."""
    return cache_dir() / "triton"


def _python_backend_source(tritonserver: Path) -> tuple[Path, Path | None]:
    """(python backend folder, stub for this interpreter or None to keep the folder's own)."""
    version = f"{sys.version_info.major}.{sys.version_info.minor}"
    root = _pytriton_root()
    if root is not None:
        stub = root / "python_backend_stubs" / version / STUB_NAME
        if (root / "backends" / "python").is_dir() and stub.is_file():
            return root / "backends" / "python", stub
    own = tritonserver.resolve().parent.parent / "backends" / "python"
    if own.is_dir():
        log.warning(
            "pytriton is not installed: using %s; its stub must be built for Python %s",
            own,
            version,
        )
        return own, None
    raise ValueError(
        f"no python backend found (neither nvidia-pytriton nor {own}); install nvidia-pytriton"
    )


def prepare_backend_dir(tritonserver: Path, build_dir: Path | None = None) -> Path:
    """Create the backend folder for ``tritonserver`` and return it (idempotent, process-safe).

    ``python/`` = the python backend with the stub for this interpreter; every other backend of
    the server's own ``backends/`` folder (``<prefix>/backends`` for ``<prefix>/bin/tritonserver``)
    is linked in beside it.
    """
    build_dir = Path(build_dir) if build_dir else _project_build_dir()
    source, stub = _python_backend_source(tritonserver)
    server_backends = tritonserver.resolve().parent.parent / "backends"
    if server_backends == source.parent:
        target = build_dir / "backends"
    else:  # another server (e.g. NGC's): its own folder, keyed by the server's backends path
        key = hashlib.sha256(str(server_backends).encode()).hexdigest()[:12]
        target = build_dir / f"backends-{key}"
    build_dir.mkdir(parents=True, exist_ok=True)
    with open(build_dir / ".backends.lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        python_dir = target / "python"
        wanted_stub = python_dir / STUB_NAME
        if not (python_dir / "libtriton_python.so").is_file() or (
            stub is not None and not wanted_stub.is_file()
        ):
            shutil.rmtree(python_dir, ignore_errors=True)
            shutil.copytree(source, python_dir, ignore=shutil.ignore_patterns("__pycache__"))
            if stub is not None:
                shutil.copy2(stub, wanted_stub)
        if server_backends.is_dir():
            for backend in server_backends.iterdir():
                link = target / backend.name
                if backend.name != "python" and backend.is_dir() and not link.exists():
                    link.symlink_to(backend, target_is_directory=True)
    return target


def shm_private_library() -> Path | None:
    """The library preloaded into tritonserver that makes its shared memory owner-only
    (``serving/native/shm_private.cpp``), or None when the extension was built without it."""
    import importlib.util

    spec = importlib.util.find_spec("dmfn.serving._shm_private")
    return Path(spec.origin) if spec is not None and spec.origin else None


def server_env(base: dict[str, str] | None = None) -> dict[str, str]:
    """Environment for tritonserver: this interpreter first on PATH, its libpython first, the
    shared-memory library preloaded, glibc's malloc tuned (:data:`MALLOC_ENV`)."""
    env = dict(os.environ if base is None else base)
    bin_dir = str(Path(sys.executable).parent)
    env["PATH"] = os.pathsep.join([bin_dir, env.get("PATH", "")]).rstrip(os.pathsep)
    libs = [sysconfig.get_config_var("LIBDIR") or ""]
    root = _pytriton_root()
    if root is not None:
        libs.append(str(root.parent.parent / "nvidia_pytriton.libs"))
    libs.append(env.get("LD_LIBRARY_PATH", ""))
    env["LD_LIBRARY_PATH"] = os.pathsep.join(p for p in libs if p)
    shim = shm_private_library()
    if shim is not None:
        env["LD_PRELOAD"] = " ".join(p for p in (str(shim), env.get("LD_PRELOAD", "")) if p)
    for key, value in MALLOC_ENV.items():
        env.setdefault(key, value)
    return env


class _OutputTee:
    """Copy a child's output pipe to a file descriptor (the terminal) or a size-capped log, and
    keep its last bytes.

    The last bytes explain a failure from what the server said. A daemon thread reads until end
    of file.
    """

    def __init__(
        self,
        pipe: IO[bytes],
        echo_fd: int | None,
        max_bytes: int = _TAIL_BYTES,
        hide: re.Pattern[str] | None = None,
        sink: RotatingLog | None = None,
    ) -> None:
        self._pipe = pipe
        self._echo_fd = echo_fd
        self._hide = hide
        self._sink = sink
        #: Lines not echoed because they matched ``hide``.
        self.hidden = 0
        self._max_bytes = max_bytes
        self._tail = bytearray()
        self._lock = threading.Lock()
        self._closing = False  # close() was called: whoever finishes last closes the files
        self._closed = False
        self._thread = threading.Thread(target=self._run, name="tritonserver-output", daemon=True)
        self._thread.start()

    def _shown(self, chunk: bytes) -> bytes:
        if self._hide is None:
            return chunk
        kept = []
        for line in chunk.splitlines(keepends=True):
            if self._hide.search(line.decode(errors="replace")):
                self.hidden += 1
            else:
                kept.append(line)
        return b"".join(kept)

    def _run(self) -> None:
        try:
            self._copy()
        finally:
            with self._lock:
                closing = self._closing
            if closing:
                self._close_files()

    def _close_files(self) -> None:
        with self._lock:
            if self._closed:
                return
            self._closed = True
        self._pipe.close()
        if self._sink is not None:
            self._sink.close()

    def _copy(self) -> None:
        fd = self._pipe.fileno()
        while chunk := os.read(fd, 65536):
            if self._sink is not None:
                self._sink.write(chunk)
            shown = self._shown(chunk) if self._echo_fd is not None else b""
            if self._echo_fd is not None and shown:
                try:
                    os.write(self._echo_fd, shown)
                except OSError:  # terminal gone: keep capturing
                    self._echo_fd = None
            with self._lock:
                self._tail += chunk
                del self._tail[: max(0, len(self._tail) - self._max_bytes)]

    def join(self, timeout_s: float) -> None:
        """Wait up to ``timeout_s`` seconds for the pipe to reach end of file."""
        self._thread.join(timeout_s)

    def close(self, timeout_s: float = 5.0) -> None:
        """Close the pipe and the log once the reader reaches end of file: now if it does within
        ``timeout_s``, else when it does (a killed server's stubs can hold the pipe open a while
        longer; closing it under the reader would lose their last lines)."""
        with self._lock:
            self._closing = True
        self.join(timeout_s)
        if not self._thread.is_alive():
            self._close_files()

    def text(self) -> str:
        with self._lock:
            return self._tail.decode(errors="replace")


def _stderr_fd() -> int:
    """File descriptor of this process's stderr (2 if sys.stderr has none, e.g. when captured)."""
    try:
        return sys.stderr.fileno()
    except (AttributeError, OSError, ValueError):
        return 2


def port_is_free(host: str, port: int) -> bool:
    """True if no socket listens on ``port`` of ``host`` (connections in TIME_WAIT left by a
    server that just stopped do not count: Triton binds with SO_REUSEADDR too)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            sock.bind((host, port))
        except OSError:
            return False
    return True


def free_ports(n: int, host: str = "127.0.0.1") -> list[int]:
    """``n`` distinct ports that were free a moment ago (the OS picks them)."""
    socks = []
    try:
        for _ in range(n):
            s = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
            s.bind((host, 0))
            socks.append(s)
        return [s.getsockname()[1] for s in socks]
    finally:
        for s in socks:
            s.close()


@dataclass
class TritonServer:
    """One tritonserver process serving ``repository`` with explicit model control.

    It listens either on TCP ports of ``host`` (HTTP, gRPC, metrics), or, with ``socket_dir``,
    only on unix sockets in that folder (``http``, ``grpc:0``, ``metrics``): what ``dmfn serve``
    uses behind its front door, so that no other local user can reach Triton. ``log_path``
    collects the server's output in a size-capped :class:`~dmfn.serving.logs.RotatingLog` (None:
    it is echoed to this process's stderr); the last 64 KiB are kept for :meth:`log_tail` either
    way. Use as a context manager, or call :meth:`start`, :meth:`wait_ready`, :meth:`stop`.
    Triton's admin APIs (model loading, shared memory, trace, logging) are open to whoever
    reaches it: on TCP, keep it on loopback of a single-user machine, or use ``dmfn serve``.
    """

    repository: Path
    host: str = "127.0.0.1"
    http_port: int = 8000
    grpc_port: int = 8001
    metrics_port: int = 8002
    #: Listen only on unix sockets in this folder (the ports and host are then unused).
    socket_dir: Path | None = None
    models: Sequence[str] = MODEL_NAMES
    tritonserver: Path | None = None
    log_path: Path | None = None
    log_max_bytes: int = DEFAULT_MAX_BYTES
    log_backups: int = DEFAULT_BACKUPS
    log_verbose: int = 0
    #: Seconds Triton waits for in-flight requests / open connections when asked to stop.
    exit_timeout_s: int = 10
    #: Prefix of the python backend's /dev/shm regions, so that they can be found and removed
    #: whatever way the server ends (None: Triton's default).
    shm_prefix: str | None = None
    #: Folder where the python-backend workers record their last request and fatal signals
    #: (``DMFN_WORKER_STATE_DIR``; :mod:`dmfn.serving.workerstate`). None: not recorded.
    worker_state_dir: Path | None = None
    #: Starts the process (a service's :class:`~dmfn.serving.spawner.Spawner`); None: this thread.
    spawner: Spawner | None = field(default=None, repr=False)
    extra_args: Sequence[str] = ()
    #: Variables added to the server's environment (its python-backend workers inherit them:
    #: the audit trail's settings, :mod:`dmfn.contract.audit`).
    extra_env: Mapping[str, str] = field(default_factory=dict, repr=False)
    #: Request headers (a regular expression of names) that Triton hands to the models as
    #: request parameters, on HTTP and gRPC (the front door's audit stamp); None: none.
    forward_headers: str | None = None
    #: Seconds the last :meth:`wait_ready` took (None before).
    ready_seconds: float | None = field(default=None, init=False)
    process: subprocess.Popen | None = field(default=None, init=False, repr=False)
    _tee: _OutputTee | None = field(default=None, init=False, repr=False)

    @property
    def probe_host(self) -> str:
        return "127.0.0.1" if self.host in ("0.0.0.0", "") else self.host

    @property
    def http_url(self) -> str:
        """host:port of the HTTP endpoint (TCP mode)."""
        return f"{self.probe_host}:{self.http_port}"

    @property
    def grpc_url(self) -> str:
        """The gRPC target: host:port, or ``unix:PATH`` with ``socket_dir``."""
        if self.socket_dir is not None:
            return f"unix:{self.socket_dir / 'grpc'}:0"
        return f"{self.probe_host}:{self.grpc_port}"

    @property
    def metrics_url(self) -> str:
        return f"http://{self.probe_host}:{self.metrics_port}/metrics"

    def socket(self, endpoint: str) -> Path:
        """The unix socket of ``endpoint`` (``http``, ``grpc`` or ``metrics``) with ``socket_dir``."""
        if self.socket_dir is None:
            raise TritonError("this server listens on TCP ports, not unix sockets")
        return self.socket_dir / ("grpc:0" if endpoint == "grpc" else endpoint)

    def command(self, backend_dir: Path) -> list[str]:
        binary = self.tritonserver or bundled_tritonserver()
        if self.socket_dir is not None:
            where = [
                f"--{endpoint}-address=unix:{Path(self.socket_dir).resolve() / endpoint}"
                for endpoint in ("http", "grpc", "metrics")
            ] + ["--http-port=0", "--grpc-port=0", "--metrics-port=0"]
        else:
            where = [
                f"--http-address={self.host}",
                f"--grpc-address={self.host}",
                f"--metrics-address={self.host}",
                f"--http-port={self.http_port}",
                f"--grpc-port={self.grpc_port}",
                f"--metrics-port={self.metrics_port}",
            ]
        cmd = [
            str(binary),
            f"--model-repository={Path(self.repository).resolve()}",
            f"--backend-directory={backend_dir}",
            "--model-control-mode=explicit",
            *[f"--load-model={m}" for m in self.models],
            "--disable-auto-complete-config",
            "--exit-on-error=true",
            "--strict-readiness=true",
            *where,
            f"--log-verbose={self.log_verbose}",
            f"--exit-timeout-secs={self.exit_timeout_s}",
        ]
        if self.shm_prefix is not None:
            cmd.append(f"--backend-config=python,shm-region-prefix-name={self.shm_prefix}")
        if self.forward_headers is not None:
            cmd += [
                f"--http-header-forward-pattern={self.forward_headers}",
                f"--grpc-header-forward-pattern={self.forward_headers}",
            ]
        return cmd + list(self.extra_args)

    def _check_inputs(self) -> Path:
        binary = Path(self.tritonserver) if self.tritonserver else bundled_tritonserver()
        if not binary.is_file() or not os.access(binary, os.X_OK):
            raise ValueError(f"argument 'tritonserver': {binary} is not an executable file")
        self.tritonserver = binary
        problems = check_repository(self.repository)
        if problems:
            raise ValueError(
                f"argument 'repository': {self.repository} is not a complete dmfn model "
                "repository: " + "; ".join(problems)
            )
        if self.socket_dir is not None:
            if not Path(self.socket_dir).is_dir():
                raise ValueError(f"argument 'socket_dir': {self.socket_dir} is not a directory")
            return binary
        ports = {"http_port": self.http_port, "grpc_port": self.grpc_port}
        ports["metrics_port"] = self.metrics_port
        if len(set(ports.values())) != len(ports):
            raise ValueError(f"ports must be distinct, got {ports}")
        for name, port in ports.items():
            if not 0 < port < 65536:
                raise ValueError(f"argument '{name}': must be in 1..65535, got {port}")
            if not port_is_free(self.host, port):
                raise PortInUseError(
                    f"argument '{name}' (--{name.replace('_', '-')}): port {port} on {self.host} "
                    "is already in use (another server running? choose another port)"
                )
        return binary

    def start(self) -> None:
        """Launch the process (returns at once; see :meth:`wait_ready`)."""
        if self.process is not None:
            raise TritonError("server already started")
        binary = self._check_inputs()
        backend_dir = prepare_backend_dir(binary)
        cmd = self.command(backend_dir)
        log.info("starting %s", " ".join(cmd))
        env = server_env()
        if self.worker_state_dir is not None:
            env[WORKER_STATE_ENV] = str(self.worker_state_dir)
        env.update(self.extra_env)
        sink = None
        if self.log_path is not None:
            sink = RotatingLog(Path(self.log_path), self.log_max_bytes, self.log_backups, 4096)
        popen = self.spawner.popen if self.spawner is not None else subprocess.Popen
        self.process = popen(
            cmd,
            env=env,
            stdin=subprocess.DEVNULL,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            start_new_session=True,  # our own signal handling decides when it stops
            preexec_fn=child_setup() if sys.platform == "linux" else None,
        )
        hide = None if has_nvidia_gpu() else CPU_HOST_NOISE
        echo = None if sink is not None else _stderr_fd()
        pipe = self.process.stdout
        assert pipe is not None  # stdout=PIPE above
        self._tee = _OutputTee(pipe, echo, hide=hide, sink=sink)

    def log_tail(self, n_lines: int = 40) -> str:
        """The last ``n_lines`` lines the server wrote."""
        text = self._tee.text() if self._tee is not None else ""
        return "\n".join(text.splitlines()[-n_lines:])

    def _exit_error(self, code: int) -> TritonError:
        """The error for a server that exited with ``code`` before it was ready, worded from its
        output: PortInUseError if it could not bind a port, else its own error lines."""
        if self._tee is not None:
            self._tee.join(5.0)  # let the reader drain what the server wrote last
        tail = self.log_tail()
        if self.socket_dir is None and any(p in tail.lower() for p in _PORT_ERRORS):
            return PortInUseError(
                f"tritonserver could not bind its ports on {self.host} "
                f"(http {self.http_port}, grpc {self.grpc_port}, "
                f"metrics {self.metrics_port}; taken since they were checked?):\n{tail}"
            )
        errors = [
            m["message"].strip().strip('"').strip()
            for m in map(_ERROR_LINE.match, tail.splitlines())
            if m
        ]
        # Triton also logs benign errors (no CUDA on a CPU machine): keep the failures if any.
        errors = [e for e in errors if "fail" in e.lower()] or errors
        if errors:
            said = "; ".join(dict.fromkeys(errors))  # unique, in order
            if any("load" in e.lower() for e in errors):
                said += f" (model repository {self.repository})"
        elif tail:
            said = "no error line in its output (see below)"
        else:
            said = "it wrote no output"
        where = f"; log: {self.log_path}" if self.log_path is not None else ""
        return TritonError(
            f"tritonserver exited with code {code} before it was ready: {said}{where}\n{tail}"
        )

    def get(self, path: str, timeout_s: float = 2.0) -> tuple[int, bytes]:
        """GET ``path`` from the server's HTTP endpoint: (status, body); status 0 when it cannot
        be reached."""
        if self.socket_dir is not None:
            return uds.request(self.socket("http"), "GET", path, timeout_s=timeout_s)
        try:
            with urllib.request.urlopen(f"http://{self.http_url}{path}", timeout=timeout_s) as r:
                return r.status, r.read()
        except urllib.error.HTTPError as err:
            return err.code, err.read()
        except (urllib.error.URLError, OSError) as err:
            return 0, str(err).encode()

    def is_ready(self) -> bool:
        return self.get("/v2/health/ready")[0] == 200

    def wait_ready(self, timeout_s: float = 120.0) -> float:
        """Block until /v2/health/ready answers 200; return the seconds waited.

        Raises :class:`TritonError` (with the log tail) if the process exits or time runs out.
        """
        if self.process is None:
            raise TritonError("server not started")
        t0 = time.monotonic()
        while time.monotonic() - t0 < timeout_s:
            code = self.process.poll()
            if code is not None:
                raise self._exit_error(code)
            if self.is_ready():
                self.ready_seconds = time.monotonic() - t0
                return self.ready_seconds
            time.sleep(0.1)
        raise TritonError(f"tritonserver was not ready after {timeout_s:.0f} s\n{self.log_tail()}")

    def stop(self, timeout_s: float | None = None) -> int | None:
        """SIGTERM, wait up to ``timeout_s`` (default: exit_timeout_s + 20), then SIGKILL.

        Returns the exit code (None if it was not running)."""
        timeout_s = self.exit_timeout_s + 20.0 if timeout_s is None else timeout_s
        process, self.process = self.process, None
        code = None
        if process is not None:
            code = stop_process(process, signal.SIGTERM, timeout_s, "tritonserver")
        if self._tee is not None:
            self._tee.close()
            self._tee = None
        return code

    def __enter__(self) -> TritonServer:
        self.start()
        try:
            self.wait_ready()
        except BaseException:
            self.stop()
            raise
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()
