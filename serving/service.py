"""The dmfn inference service: Triton behind the front door, watched by a supervisor.

``dmfn serve`` runs one :class:`DmfnService`. It owns the processes and files of one run:

- a private **run folder** (mode 0700) holding everything local users must not reach: Triton's
  unix sockets (HTTP, gRPC, metrics; one subfolder per Triton generation), the workers' state
  records, the front door's configuration, temp files and log socket, the readiness flag;
- **Triton** (:class:`~dmfn.serving.triton.TritonServer`), listening only on those sockets, its
  python-backend shared memory owner-only and under a prefix unique to this run;
- **the front door** (:mod:`~dmfn.serving.frontdoor`, nginx) on the public ports;
- the **metrics** endpoint (:mod:`~dmfn.serving.metrics`) and the front door's **log
  receiver** (:mod:`~dmfn.serving.logs`), two threads of this process;
- the **supervisor** (:class:`~dmfn.serving.supervisor.Supervisor`), a thread that checks and
  repairs all of it.

Every child is started by one :class:`~dmfn.serving.spawner.Spawner` thread, so children die
with the process (kill -9 included) and never earlier. A state file
(:mod:`~dmfn.serving.runstate`) lets the next ``dmfn serve`` on the same ports clean up after a
killed one. On :meth:`shutdown` readiness turns false, the front door stops accepting
connections and lets requests in flight finish (at most ``drain_timeout_s``), then Triton stops,
leftover workers are killed and the shared-memory regions and run folder are removed, on every
path.
"""

from __future__ import annotations

import contextlib
import json
import logging
import math
import os
import secrets
import shutil
import tempfile
import threading
import time
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from dmfn.contract.limits import InputLimits
from dmfn.contract.schema import clinical_vector as schema_clinical
from dmfn.contract.server import ServerContract
from dmfn.contract.wire import encode_study

from .auth import ApiKeys, file_stamp
from .frontdoor import FrontDoor, FrontDoorConfig, FrontDoorError, find_nginx
from .logs import DEFAULT_BACKUPS, DEFAULT_MAX_BYTES, LogReceiver, RotatingLog
from .metrics import MetricsServer, render_service_metrics
from .processes import kill_marked, remove_shm_regions
from .repository import MANIFEST_FILE, check_repository
from .runstate import RunState, clear_predecessor, port_owner
from .spawner import Spawner
from .triton import PortInUseError, TritonError, TritonServer, port_is_free

log = logging.getLogger("dmfn.serve")

READY_FLAG = "ready"
#: Longest path of a unix socket (sun_path is 108 bytes on Linux, with the terminating NUL).
MAX_SOCKET_PATH = 107
LOOPBACK = ("127.0.0.1", "localhost", "::1")


@dataclass(frozen=True)
class ServiceConfig:
    """Settings of one ``dmfn serve`` (ports on ``host``; seconds; bytes; paths)."""

    repository: Path
    host: str = "127.0.0.1"
    http_port: int = 8000
    grpc_port: int = 8001
    metrics_port: int = 8002
    tritonserver: Path | None = None
    #: Folder for ``triton.log`` and ``front_door.log`` (rotated by size). None: Triton's
    #: output goes to the terminal and the front door's log lives in the run folder.
    log_dir: Path | None = None
    log_max_bytes: int = DEFAULT_MAX_BYTES
    log_backups: int = DEFAULT_BACKUPS
    log_verbose: int = 0
    front_workers: int = 1
    tls_cert: Path | None = None
    tls_key: Path | None = None
    #: PEM of the authority that signs client certificates: mutual TLS on every port.
    tls_client_ca: Path | None = None
    #: Keys file (:mod:`dmfn.serving.auth`): every request but health checks needs a key.
    api_keys: Path | None = None
    max_requests_per_client: int = 16
    max_requests: int = 64
    drain_timeout_s: float = 30.0
    check_interval_s: float = 0.5
    #: Seconds between canary requests through the pipeline (None: only at start and repairs).
    canary_interval_s: float | None = 1.0
    #: A canary unanswered this long, with no other request completing meanwhile, marks the
    #: pipeline stalled (readiness false); so does a stopped worker, at once. With the
    #: interval, the check and Triton's statistics (0.5 s each at most), a stall shows within
    #: 5 s.
    stall_timeout_s: float = 2.0
    #: Seconds a stall or a stopped worker may last before Triton is replaced.
    repair_after_s: float = 10.0
    #: Replacements in a row, each of a Triton that served less than ``stable_after_s``, after
    #: which the service gives up (a crash loop). A single failure after a stable run does not
    #: count toward it.
    max_restarts: int = 3
    stable_after_s: float = 60.0
    ready_timeout_s: float = 180.0
    #: Run as root (refused by default: see :meth:`DmfnService.start`).
    allow_root: bool = False

    def __post_init__(self) -> None:
        if not Path(self.repository).is_dir():
            raise ValueError(f"argument 'repository': {self.repository} is not a directory")
        if (self.tls_cert is None) != (self.tls_key is None):
            raise ValueError("arguments 'tls_cert' and 'tls_key': give both or neither")
        for name in ("tls_cert", "tls_key", "tls_client_ca", "api_keys"):
            path = getattr(self, name)
            if path is not None and not Path(path).is_file():
                raise ValueError(f"argument '{name}': {path} is not a file")
        if self.tls_client_ca is not None and self.tls_cert is None:
            raise ValueError(
                "argument 'tls_client_ca': client certificates need TLS: give --tls-cert and "
                "--tls-key too"
            )
        for name in (
            "drain_timeout_s",
            "check_interval_s",
            "ready_timeout_s",
            "stall_timeout_s",
            "repair_after_s",
            "stable_after_s",
        ):
            value = getattr(self, name)
            if not (isinstance(value, int | float) and math.isfinite(value) and value > 0):
                raise ValueError(f"argument '{name}': must be a number > 0, got {value!r}")
        if self.canary_interval_s is not None and not self.canary_interval_s > 0:
            raise ValueError(
                f"argument 'canary_interval_s': must be > 0 or None, got {self.canary_interval_s!r}"
            )
        for name in ("max_requests_per_client", "max_requests", "front_workers"):
            if getattr(self, name) < 1:
                raise ValueError(f"argument '{name}': must be >= 1, got {getattr(self, name)}")
        if self.max_restarts < 0:
            raise ValueError(f"argument 'max_restarts': must be >= 0, got {self.max_restarts}")


@dataclass
class ServiceEvent:
    """Something the supervisor did: when (time.time()), what kind, and a sentence."""

    time: float
    kind: str  # "worker_replaced", "triton_restarted", "front_door_restarted", "failed", ...
    message: str


def repository_limits(repository: Path) -> InputLimits:
    """The input limits recorded in ``repository``'s manifest (written by ``dmfn export``)."""
    path = Path(repository) / MANIFEST_FILE
    try:
        data = json.loads(path.read_text())["input_limits"]
        if data is None:
            raise KeyError("input_limits")
        return InputLimits.from_dict(data)
    except (OSError, KeyError, ValueError, TypeError) as err:
        raise ValueError(
            f"argument 'repository': {path} does not record the model's input limits "
            f"({type(err).__name__}: {err}); export the model again with `dmfn export`"
        ) from None


def repository_provenance(repository: Path) -> dict[str, str] | None:
    """The served checkpoint's provenance recorded by ``dmfn export`` (sha256, training date,
    synthetic), or None for a repository written before it was recorded."""
    try:
        value = json.loads((Path(repository) / MANIFEST_FILE).read_text()).get("provenance")
    except (OSError, ValueError):
        return None
    return value if isinstance(value, dict) else None


def canary_arrays(contract: ServerContract) -> dict[str, np.ndarray]:
    """A small valid study for health checks: 12 x 24 x 24 voxels of 1 mm, soft tissue with a
    cubic lesion, CTC in the middle of the accepted range, a 50-year-old man, anterior."""
    hu = np.full((12, 24, 24), 40, np.int16)
    mask = np.zeros(hu.shape, np.uint8)
    mask[4:8, 8:16, 8:16] = 1
    hu[mask == 1] = 70
    if contract.limits is not None:
        ctc = [(lo + hi) / 2 for lo, hi in contract.limits.ctc_ranges]
    else:
        ctc = [10.0] * len(contract.ctc_features)
    clinical = schema_clinical(50.0, "M", "anterior")
    return encode_study(hu, mask, (1.0, 1.0, 1.0), ctc, clinical)


class DmfnService:
    """Triton + front door + supervisor. Use :meth:`start`, then :meth:`wait` (blocks until
    :meth:`request_stop` or a fatal failure) and :meth:`shutdown`; or as a context manager."""

    def __init__(self, config: ServiceConfig) -> None:
        from .supervisor import Supervisor

        self.config = config
        self.events: list[ServiceEvent] = []
        self.event_counts: Counter[str] = Counter()
        self.failure: str | None = None
        self.triton: TritonServer | None = None
        self.front: FrontDoor | None = None
        self.limits: InputLimits | None = None
        #: The served checkpoint's provenance from the repository manifest (None: unrecorded).
        self.provenance: dict[str, str] | None = None
        self.ready_seconds: float | None = None
        self.api_keys: ApiKeys | None = None
        #: The keys file's (mtime, size, inode) when it was last read.
        self.keys_stamp: tuple[float, int, int] | None = None
        self.contract: ServerContract | None = None
        #: Model -> names of its python-backend instances (``preprocess_0_1``), from Triton.
        self.expected_instances: dict[str, list[str]] = {}
        self.supervisor = Supervisor(self)
        self._shm_prefix = f"dmfn_{secrets.token_hex(5)}_"
        self._generation = 0
        self._run_dir: Path | None = None
        self._state: RunState | None = None
        self._spawner: Spawner | None = None
        self._receiver: LogReceiver | None = None
        self._metrics: MetricsServer | None = None
        self._stop = threading.Event()
        self._stopping = False
        #: Serialises start, repairs and teardown (the supervisor's thread and the caller's).
        self.lock = threading.RLock()
        self._listeners: list[Callable[[ServiceEvent], None]] = []

    # ------------------------------------------------------------------ addresses
    @property
    def probe_host(self) -> str:
        return "127.0.0.1" if self.config.host in ("0.0.0.0", "") else self.config.host

    @property
    def http_url(self) -> str:
        """host:port of the public HTTP endpoint."""
        return f"{self.probe_host}:{self.config.http_port}"

    @property
    def grpc_url(self) -> str:
        return f"{self.probe_host}:{self.config.grpc_port}"

    @property
    def metrics_url(self) -> str:
        return f"{self.scheme}://{self.probe_host}:{self.config.metrics_port}/metrics"

    @property
    def scheme(self) -> str:
        return "https" if self.config.tls_cert is not None else "http"

    @property
    def shm_prefix(self) -> str:
        """Prefix of every /dev/shm region of this service (all Triton generations)."""
        return self._shm_prefix

    def generation_prefix(self) -> str:
        return f"{self._shm_prefix}g{self._generation}_"

    @property
    def run_dir(self) -> Path | None:
        return self._run_dir

    @property
    def front_door_log(self) -> Path | None:
        if self.config.log_dir is not None:
            return Path(self.config.log_dir) / "front_door.log"
        return None if self._run_dir is None else self._run_dir / "front_door.log"

    @property
    def stopping(self) -> bool:
        return self._stopping or self._stop.is_set()

    def on_event(self, listener: Callable[[ServiceEvent], None]) -> None:
        """Call ``listener`` with every :class:`ServiceEvent` (e.g. to print it)."""
        self._listeners.append(listener)

    def event(self, kind: str, message: str) -> None:
        event = ServiceEvent(time.time(), kind, message)
        self.events.append(event)
        self.event_counts[kind] += 1
        (log.error if kind == "failed" else log.warning)(message)
        for listener in self._listeners:
            with contextlib.suppress(Exception):
                listener(event)

    # ------------------------------------------------------------------ readiness flag
    @property
    def flag(self) -> Path:
        assert self._run_dir is not None
        return self._run_dir / READY_FLAG

    def set_ready(self, ready: bool) -> None:
        """Create or remove the flag the front door's readiness endpoints read."""
        if self._run_dir is None:
            return
        if ready and not self.stopping:
            self.flag.touch()
        else:
            self.flag.unlink(missing_ok=True)

    def is_ready(self) -> bool:
        """What the public readiness endpoints answer."""
        return self._run_dir is not None and self.flag.exists()

    def service_metrics(self) -> str:
        refusals = self._receiver.counts() if self._receiver is not None else {}
        keys = None if self.api_keys is None else len(self.api_keys.entries)
        return render_service_metrics(self.is_ready(), refusals, dict(self.event_counts), keys)

    # ------------------------------------------------------------------ start
    def _check_user(self) -> None:
        if os.geteuid() == 0 and not self.config.allow_root:
            raise ValueError(
                "refusing to run as root: the front door and the workers parse what clients "
                "send, and a flaw in any of them would then own the machine. Run dmfn serve as "
                "its own user (docs/deploy.md), or pass --allow-root where root is the only "
                "user (a container)"
            )

    def _check_public_ports(self) -> None:
        c = self.config
        ports = {"http_port": c.http_port, "grpc_port": c.grpc_port, "metrics_port": c.metrics_port}
        if len(set(ports.values())) != len(ports):
            raise ValueError(f"ports must be distinct, got {ports}")
        for name, port in ports.items():
            if not 0 < port < 65536:
                raise ValueError(f"argument '{name}': must be in 1..65535, got {port}")
        try:
            cleared = clear_predecessor(c.host, (c.http_port, c.grpc_port, c.metrics_port))
        except RuntimeError as err:
            raise PortInUseError(str(err)) from None
        if cleared:
            self.event("predecessor_cleared", cleared)
        for name, port in ports.items():
            if not port_is_free(c.host, port):
                raise PortInUseError(
                    f"argument '{name}' (--{name.replace('_', '-')}): port {port} on {c.host} "
                    f"is already in use by {port_owner(port)}; stop it or choose another port"
                )

    def _make_run_dir(self) -> Path:
        run_dir = Path(tempfile.mkdtemp(prefix="dmfn-serve-"))  # mode 0700
        longest = run_dir / "g999" / "grpc:0"
        if len(str(longest)) > MAX_SOCKET_PATH - 10:
            shutil.rmtree(run_dir, ignore_errors=True)
            raise ValueError(
                f"the temporary folder {run_dir.parent} has too long a path for unix sockets; "
                "set TMPDIR to a short one (e.g. /tmp)"
            )
        return run_dir

    def new_triton(self) -> TritonServer:
        """A Triton for the current generation, in its own folder of the run folder."""
        c = self.config
        assert self._run_dir is not None
        folder = self._run_dir / f"g{self._generation}"
        folder.mkdir(mode=0o700)
        (folder / "workers").mkdir(mode=0o700)
        return TritonServer(
            repository=Path(c.repository),
            socket_dir=folder,
            tritonserver=c.tritonserver,
            log_path=None if c.log_dir is None else Path(c.log_dir) / "triton.log",
            log_max_bytes=c.log_max_bytes,
            log_backups=c.log_backups,
            log_verbose=c.log_verbose,
            exit_timeout_s=5,
            shm_prefix=self.generation_prefix(),
            worker_state_dir=folder / "workers",
            spawner=self._spawner,
        )

    def next_generation(self) -> None:
        self._generation += 1

    def front_config(self) -> FrontDoorConfig:
        c = self.config
        assert self._run_dir is not None and self.limits is not None and self.triton is not None
        return FrontDoorConfig(
            run_dir=self._run_dir,
            ready_flag=self.flag,
            host=c.host,
            http_port=c.http_port,
            grpc_port=c.grpc_port,
            metrics_port=c.metrics_port,
            upstream_http=self.triton.socket("http"),
            upstream_grpc=self.triton.socket("grpc"),
            metrics_socket=self._run_dir / "metrics.sock",
            log_socket=self._run_dir / "log.sock",
            log_file=self.front_door_log,
            max_body_bytes=self.limits.max_body_bytes(),
            drain_timeout_s=c.drain_timeout_s,
            workers=c.front_workers,
            tls_cert=Path(c.tls_cert).resolve() if c.tls_cert else None,
            tls_key=Path(c.tls_key).resolve() if c.tls_key else None,
            tls_client_ca=Path(c.tls_client_ca).resolve() if c.tls_client_ca else None,
            api_keys=self.api_keys,
            max_requests_per_client=c.max_requests_per_client,
            max_requests=c.max_requests,
        )

    def start(self) -> None:
        """Start Triton, the front door and the supervisor; return when the service is ready.

        Raises ValueError (bad settings, root without ``allow_root``, a port taken:
        :class:`PortInUseError`), TritonError or FrontDoorError; nothing is left running on
        failure.
        """
        c = self.config
        self._check_user()
        problems = check_repository(c.repository)
        if problems:
            raise ValueError(
                f"argument 'repository': {c.repository} is not a complete dmfn model "
                "repository: " + "; ".join(problems)
            )
        if find_nginx() is None:
            raise FrontDoorError(
                "nginx was not found: install it (`apt-get install nginx`; `make setup` does this "
                "as root)"
            )
        self.limits = repository_limits(Path(c.repository))
        self.provenance = repository_provenance(Path(c.repository))
        if c.api_keys is not None:
            self.keys_stamp = file_stamp(Path(c.api_keys))  # before reading: no change is missed
            self.api_keys = ApiKeys.load(Path(c.api_keys))
        with self.lock:
            self._check_public_ports()
            self._run_dir = self._make_run_dir()
            t0 = time.monotonic()
            try:
                self._spawner = Spawner()
                self._state = RunState(
                    c.host,
                    (c.http_port, c.grpc_port, c.metrics_port),
                    run_dir=str(self._run_dir),
                    shm_prefix=self._shm_prefix,
                )
                self._state.save()
                door_log = self.front_door_log
                assert door_log is not None
                self._receiver = LogReceiver(
                    self._run_dir / "log.sock",
                    RotatingLog(door_log, c.log_max_bytes, c.log_backups),
                )
                self._metrics = MetricsServer(
                    self._run_dir / "metrics.sock",
                    lambda: self.triton.socket("metrics") if self.triton is not None else None,
                    self.service_metrics,
                )
                self.triton = self.new_triton()
                self.triton.start()
                self.record_children()
                self.triton.wait_ready(c.ready_timeout_s)
                self.expected_instances = self.supervisor.read_expected_instances()
                self.contract = self.supervisor.read_contract()
                self.front = FrontDoor(self.front_config(), spawner=self._spawner)
                self.front.start()
                self.record_children()
                if not self.supervisor.canary_once():
                    raise TritonError(
                        "the pipeline did not answer a valid canary request after start-up "
                        f"(see the server log)\n{self.triton.log_tail()}"
                    )
                self.set_ready(True)
                self.ready_seconds = time.monotonic() - t0
            except BaseException:
                self._teardown(drain=False)
                raise
        self.supervisor.start()

    def record_children(self) -> None:
        """Write the current children's process groups to the state file."""
        if self._state is None:
            return
        children = {}
        if self.triton is not None and self.triton.process is not None:
            children[str(self.triton.process.pid)] = "tritonserver"
        if self.front is not None and self.front.process is not None:
            children[str(self.front.process.pid)] = "nginx"
        self._state.children = children
        with contextlib.suppress(OSError):
            self._state.save()

    def reload_keys(self) -> str:
        """Re-read the keys file and switch the front door to it without dropping connections.
        Returns what happened; a bad file keeps the keys in force (ValueError says why)."""
        if self.config.api_keys is None:
            return "API keys are off (no --api-keys): nothing to reload"
        self.keys_stamp = file_stamp(Path(self.config.api_keys))
        keys = ApiKeys.load(Path(self.config.api_keys))
        with self.lock:
            if self.front is None or self.triton is None:
                raise ValueError("the service is not running")
            previous, self.api_keys = self.api_keys, keys
            try:
                self.front.reconfigure(self.front_config())
            except FrontDoorError:
                self.api_keys = previous
                raise
        return f"{len(keys.entries)} API key(s) in force: {', '.join(keys.names)}"

    # ------------------------------------------------------------------ stop
    def request_stop(self) -> None:
        """Ask :meth:`wait` to return (safe from a signal handler)."""
        self._stop.set()

    def wait(self, poll_s: float = 0.5) -> None:
        """Block until :meth:`request_stop` or a fatal failure."""
        while not self._stop.wait(poll_s):
            pass

    def fail(self, message: str) -> None:
        self.failure = message
        self.set_ready(False)
        self.event("failed", message)
        self._stop.set()

    def shutdown(self) -> int:
        """Drain and stop everything; returns the exit code for ``dmfn serve``: 0 after a clean
        stop, 1 after a failure of the service or when Triton itself exited with an error."""
        self._stopping = True
        self._stop.set()
        self.supervisor.stop()
        code = self._teardown(drain=True)
        if self.failure is not None:
            return 1
        return 0 if code in (0, None) else 1

    def _teardown(self, drain: bool) -> int | None:
        with self.lock:
            self._stopping = True
            self.set_ready(False)
            if self.front is not None:
                if drain:
                    self.front.drain()
                else:
                    self.front.stop()
                self.front = None
            code = None
            if self.triton is not None:
                code = self.triton.stop()
                self.triton = None
            self.supervisor.join_retiring()
            kill_marked(self._shm_prefix)
            removed = remove_shm_regions(self._shm_prefix)
            if removed:
                log.info("removed %d shared-memory region(s) left by dead workers", len(removed))
            for closer in (self._metrics, self._receiver, self._spawner):
                if closer is not None:
                    with contextlib.suppress(Exception):
                        closer.close()
            self._metrics = self._receiver = self._spawner = None
            if self._run_dir is not None:
                shutil.rmtree(self._run_dir, ignore_errors=True)
                self._run_dir = None
            if self._state is not None:
                self._state.remove()
                self._state = None
            return code

    def __enter__(self) -> DmfnService:
        self.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.shutdown()
