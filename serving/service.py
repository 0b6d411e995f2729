"""The dmfn inference service: Triton behind the front door, watched by a supervisor.

``dmfn serve`` runs one :class:`DmfnService`:

- **Triton** (:class:`~dmfn.serving.triton.TritonServer`) on loopback ports chosen at start, its
  admin APIs (model repository, shared memory, trace, logging) locked by a random key that only
  this process holds, its python-backend shared memory under a prefix unique to this run;
- **the front door** (:mod:`~dmfn.serving.frontdoor`, nginx) on the public ports: body-size limit
  from the model's input limits, admin APIs refused, truthful readiness, optional TLS;
- **the supervisor** (a thread of this process), every ``check_interval_s``:

  - a python-backend worker (stub) that died, Triton exiting, or two failed canary requests in a
    row are answered by replacing Triton: a new Triton starts on new loopback ports, answers a
    canary request, the front door switches to it (nginx reloads its configuration without
    dropping connections), and the old one drains and stops. Requests keep flowing meanwhile;
    only those the old Triton had already scheduled onto the dead worker fail. Readiness is
    false until the new Triton answers. At most ``max_restarts`` replacements in
    ``restart_window_s``; beyond that the service stops with a failure. (Reloading just the
    model through Triton's repository API was tried first: with a dead stub, Triton 2.51 can
    block the reload for its 30 s stub timeout and then never finishes unloading the old
    instance, so a later shutdown times out.) Without the front door Triton is restarted in
    place, on the same ports;
  - nginx exiting is answered by a restart;
  - every ``canary_interval_s`` (if set) a small valid study goes through the pipeline.

On :meth:`shutdown` readiness turns false, the front door stops accepting connections and lets
requests in flight finish (at most ``drain_timeout_s``), then Triton stops, leftover stubs are
killed and the shared-memory regions of this run are removed, on every path.
"""

from __future__ import annotations

import contextlib
import json
import logging
import math
import secrets
import shutil
import tempfile
import threading
import time
import urllib.error
import urllib.request
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from dmfn.client.sdk import infer_inputs
from dmfn.contract import schema as S
from dmfn.contract.limits import InputLimits
from dmfn.contract.schema import clinical_vector as schema_clinical
from dmfn.contract.server import ServerContract
from dmfn.contract.wire import encode_study

from .config import MODEL_NAMES
from .frontdoor import ADMIN_HEADER, FrontDoor, FrontDoorConfig, FrontDoorError
from .processes import kill_marked, live_stubs, remove_shm_regions
from .repository import MANIFEST_FILE, check_repository
from .triton import PortInUseError, TritonError, TritonServer, free_ports, port_is_free

log = logging.getLogger("dmfn.serve")

READY_FLAG = "ready"


@dataclass(frozen=True)
class ServiceConfig:
    """Settings of one ``dmfn serve`` (ports on ``host``; seconds; paths)."""

    repository: Path
    host: str = "127.0.0.1"
    http_port: int = 8000
    grpc_port: int = 8001
    metrics_port: int = 8002
    tritonserver: Path | None = None
    log_path: Path | None = None
    log_verbose: int = 0
    #: nginx in front (body limit, admin APIs refused, truthful readiness, TLS). Without it
    #: Triton listens on the public ports itself (admin APIs still locked by the key).
    front_door: bool = True
    front_workers: int = 1
    tls_cert: Path | None = None
    tls_key: Path | None = None
    drain_timeout_s: float = 30.0
    check_interval_s: float = 0.5
    #: Seconds between canary requests through the pipeline (None: only after a repair).
    canary_interval_s: float | None = 30.0
    max_restarts: int = 3
    restart_window_s: float = 600.0
    ready_timeout_s: float = 180.0

    def __post_init__(self) -> None:
        if not Path(self.repository).is_dir():
            raise ValueError(f"argument 'repository': {self.repository} is not a directory")
        if (self.tls_cert is None) != (self.tls_key is None):
            raise ValueError("arguments 'tls_cert' and 'tls_key': give both or neither")
        for name in ("tls_cert", "tls_key"):
            path = getattr(self, name)
            if path is not None and not Path(path).is_file():
                raise ValueError(f"argument '{name}': {path} is not a file")
        if self.tls_cert is not None and not self.front_door:
            raise ValueError(
                "argument 'tls_cert': TLS is terminated by the front door; drop --no-front-door"
            )
        for name in ("drain_timeout_s", "check_interval_s", "ready_timeout_s", "restart_window_s"):
            value = getattr(self, name)
            if not (isinstance(value, int | float) and math.isfinite(value) and value > 0):
                raise ValueError(f"argument '{name}': must be a number > 0, got {value!r}")
        if self.canary_interval_s is not None and not self.canary_interval_s > 0:
            raise ValueError(
                f"argument 'canary_interval_s': must be > 0 or None, got {self.canary_interval_s!r}"
            )
        if self.max_restarts < 0 or self.front_workers < 1:
            raise ValueError("arguments 'max_restarts' >= 0 and 'front_workers' >= 1 are required")


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
        self.config = config
        self.events: list[ServiceEvent] = []
        self.failure: str | None = None
        self.triton: TritonServer | None = None
        self.front: FrontDoor | None = None
        self.limits: InputLimits | None = None
        #: The served checkpoint's provenance from the repository manifest (None: unrecorded).
        self.provenance: dict[str, str] | None = None
        self.ready_seconds: float | None = None
        self._admin_key = secrets.token_urlsafe(24)
        self._shm_prefix = f"dmfn_{secrets.token_hex(5)}_"
        self._generation = 0
        self._retiring: list[threading.Thread] = []
        self._run_dir: Path | None = None
        self._stop = threading.Event()
        self._lock = threading.RLock()
        self._thread: threading.Thread | None = None
        self._expected_instances: dict[str, list[str]] = {}
        self._restarts: list[float] = []
        self._canary_failures = 0
        self._last_canary = 0.0
        #: Triton's HTTP, gRPC and metrics ports (loopback behind the front door).
        self._internal_ports: tuple[int, int, int] = (0, 0, 0)
        self._contract: ServerContract | None = None
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
        return f"http://{self.probe_host}:{self.config.metrics_port}/metrics"

    @property
    def scheme(self) -> str:
        return "https" if self.config.tls_cert is not None else "http"

    @property
    def internal_http_url(self) -> str:
        return f"127.0.0.1:{self._internal_ports[0]}"

    @property
    def shm_prefix(self) -> str:
        """Prefix of every /dev/shm region of this service (all Triton generations)."""
        return self._shm_prefix

    def _generation_prefix(self) -> str:
        return f"{self._shm_prefix}g{self._generation}_"

    @property
    def run_dir(self) -> Path | None:
        return self._run_dir

    def on_event(self, listener: Callable[[ServiceEvent], None]) -> None:
        """Call ``listener`` with every :class:`ServiceEvent` (e.g. to print it)."""
        self._listeners.append(listener)

    def _event(self, kind: str, message: str) -> None:
        event = ServiceEvent(time.time(), kind, message)
        self.events.append(event)
        (log.error if kind == "failed" else log.warning)(message)
        for listener in self._listeners:
            with contextlib.suppress(Exception):
                listener(event)

    # ------------------------------------------------------------------ readiness flag
    @property
    def _flag(self) -> Path:
        assert self._run_dir is not None
        return self._run_dir / READY_FLAG

    def _set_ready(self, ready: bool) -> None:
        if self._run_dir is None:
            return
        if ready:
            self._flag.touch()
            self._flag.chmod(0o644)
        else:
            self._flag.unlink(missing_ok=True)

    def is_ready(self) -> bool:
        """What the public readiness endpoints answer."""
        return self._run_dir is not None and self._flag.exists()

    # ------------------------------------------------------------------ start
    def _check_public_ports(self) -> None:
        c = self.config
        ports = {"http_port": c.http_port, "grpc_port": c.grpc_port, "metrics_port": c.metrics_port}
        if len(set(ports.values())) != len(ports):
            raise ValueError(f"ports must be distinct, got {ports}")
        for name, port in ports.items():
            if not 0 < port < 65536:
                raise ValueError(f"argument '{name}': must be in 1..65535, got {port}")
            if not port_is_free(c.host, port):
                raise PortInUseError(
                    f"argument '{name}' (--{name.replace('_', '-')}): port {port} on {c.host} "
                    "is already in use (another server running? choose another port)"
                )

    def _new_triton(self) -> TritonServer:
        c = self.config
        http, grpc, metrics = self._internal_ports
        host = "127.0.0.1" if c.front_door else c.host
        return TritonServer(
            repository=Path(c.repository),
            host=host,
            http_port=http,
            grpc_port=grpc,
            metrics_port=metrics,
            tritonserver=c.tritonserver,
            log_path=c.log_path,
            log_verbose=c.log_verbose,
            exit_timeout_s=5 if c.front_door else max(1, round(c.drain_timeout_s)),
            admin_key=self._admin_key,
            shm_prefix=self._generation_prefix(),
        )

    def start(self) -> None:
        """Start Triton, the front door and the supervisor; return when the service is ready.

        Raises ValueError (bad settings, port taken: :class:`PortInUseError`), TritonError or
        FrontDoorError; nothing is left running on failure.
        """
        c = self.config
        problems = check_repository(c.repository)
        if problems:
            raise ValueError(
                f"argument 'repository': {c.repository} is not a complete dmfn model "
                "repository: " + "; ".join(problems)
            )
        self.limits = repository_limits(Path(c.repository))
        self.provenance = repository_provenance(Path(c.repository))
        self._check_public_ports()
        self._run_dir = Path(tempfile.mkdtemp(prefix="dmfn-serve-"))
        t0 = time.monotonic()
        try:
            if c.front_door:
                self._internal_ports = tuple(free_ports(3))  # type: ignore[assignment]
            else:
                self._internal_ports = (c.http_port, c.grpc_port, c.metrics_port)
            self.triton = self._new_triton()
            self.triton.start()
            self.triton.wait_ready(c.ready_timeout_s)
            self._expected_instances = self._read_expected_instances()
            self._contract = self._read_contract()
            if c.front_door:
                self.front = FrontDoor(self._front_config())
                self.front.start()
            if not self._canary():
                raise TritonError(
                    "the pipeline did not answer a valid canary request after start-up "
                    f"(see the server log)\n{self.triton.log_tail()}"
                )
            self._set_ready(True)
            self.ready_seconds = time.monotonic() - t0
        except BaseException:
            self._teardown(drain=False)
            raise
        self._thread = threading.Thread(target=self._supervise, name="dmfn-supervisor", daemon=True)
        self._thread.start()

    def _front_config(self) -> FrontDoorConfig:
        c = self.config
        assert self._run_dir is not None and self.limits is not None
        return FrontDoorConfig(
            run_dir=self._run_dir,
            ready_flag=self._flag,
            host=c.host,
            http_port=c.http_port,
            grpc_port=c.grpc_port,
            metrics_port=c.metrics_port,
            upstream_http_port=self._internal_ports[0],
            upstream_grpc_port=self._internal_ports[1],
            upstream_metrics_port=self._internal_ports[2],
            max_body_bytes=self.limits.max_body_bytes(),
            drain_timeout_s=c.drain_timeout_s,
            workers=c.front_workers,
            tls_cert=Path(c.tls_cert).resolve() if c.tls_cert else None,
            tls_key=Path(c.tls_key).resolve() if c.tls_key else None,
        )

    # ------------------------------------------------------------------ Triton's admin API
    def _admin(self, method: str, path: str, timeout_s: float = 60.0) -> tuple[int, bytes]:
        """A request to Triton's internal HTTP port with the admin key."""
        request = urllib.request.Request(
            f"http://{self.internal_http_url}{path}",
            data=b"{}" if method == "POST" else None,
            headers={ADMIN_HEADER: self._admin_key, "Content-Type": "application/json"},
            method=method,
        )
        try:
            with urllib.request.urlopen(request, timeout=timeout_s) as response:
                return response.status, response.read()
        except urllib.error.HTTPError as err:
            return err.code, err.read()
        except (urllib.error.URLError, OSError) as err:
            return 0, str(err).encode()

    def _read_expected_instances(self) -> dict[str, list[str]]:
        """Model -> names of its python-backend instances (``preprocess_0_1``), from Triton."""
        out: dict[str, list[str]] = {}
        for model in MODEL_NAMES:
            status, body = self._admin("GET", f"/v2/models/{model}/config")
            if status != 200:
                raise TritonError(f"cannot read the config of model {model!r} ({status})")
            config = json.loads(body)
            if config.get("backend") != "python":
                continue
            names = []
            for g, group in enumerate(config.get("instance_group", [])):
                base = group.get("name") or f"{model}_{g}"
                names += [f"{base}_{i}" for i in range(int(group.get("count", 1)))]
            out[model] = names
        return out

    def _read_contract(self) -> ServerContract:
        status, body = self._admin("GET", f"/v2/models/{S.PIPELINE_MODEL}/config")
        if status != 200:
            raise TritonError(f"cannot read the config of {S.PIPELINE_MODEL} ({status})")
        return ServerContract.from_parameters(json.loads(body).get("parameters", {}))

    # ------------------------------------------------------------------ checks
    def dead_instances(self) -> dict[str, list[str]]:
        """Model -> its python-backend instances that have no live stub process now."""
        if self.triton is None or self.triton.process is None:
            return {}
        alive = live_stubs(self.triton.process.pid)
        missing = {
            model: [n for n in names if n not in alive]
            for model, names in self._expected_instances.items()
        }
        return {m: names for m, names in missing.items() if names}

    def _canary(self) -> bool:
        """One valid study through the pipeline on Triton's internal port; True if it answered."""
        import tritonclient.http as httpclient

        assert self._contract is not None
        self._last_canary = time.monotonic()
        client = httpclient.InferenceServerClient(
            self.internal_http_url, connection_timeout=30.0, network_timeout=30.0
        )
        try:
            inputs = infer_inputs(httpclient, canary_arrays(self._contract))
            result = client.infer(S.PIPELINE_MODEL, inputs)
            probs = result.as_numpy(S.PROBS)
            return probs is not None and bool(np.isfinite(probs).all())
        except Exception as err:  # any failure means "not answering"
            log.warning("canary request failed: %s", err)
            return False
        finally:
            with contextlib.suppress(Exception):
                client.close()

    # ------------------------------------------------------------------ repairs
    def _replace_triton(self, kind: str, why: str) -> None:
        """Start a new Triton, switch the front door to it, retire the old one (see the module
        docstring); ``kind`` names the event."""
        self._set_ready(False)
        now = time.monotonic()
        self._restarts = [t for t in self._restarts if now - t < self.config.restart_window_s]
        if len(self._restarts) >= self.config.max_restarts:
            self._fail(
                f"{why}; Triton was already replaced {len(self._restarts)} times in "
                f"{self.config.restart_window_s:.0f} s: giving up"
            )
            return
        self._restarts.append(now)
        old, old_prefix = self.triton, self._generation_prefix()
        t0 = time.monotonic()
        self._generation += 1
        try:
            if self.front is not None:
                self._internal_ports = tuple(free_ports(3))  # type: ignore[assignment]
                new = self._new_triton()
            else:  # in place: the public ports are Triton's own
                self._retire(old, old_prefix, wait_for_front=False)
                old = None
                new = self._new_triton()
            new.start()
            self.triton = new
            new.wait_ready(self.config.ready_timeout_s)
            self._expected_instances = self._read_expected_instances()
            if not self._canary():
                raise TritonError("the new Triton did not answer the canary request")
            if self.front is not None:
                self.front.reconfigure(self._front_config())
        except (TritonError, ValueError, FrontDoorError) as err:
            self._fail(f"{why}; starting a new Triton failed: {err}")
            return
        if old is not None:
            thread = threading.Thread(
                target=self._retire, args=(old, old_prefix), name="dmfn-retire", daemon=True
            )
            thread.start()
            self._retiring.append(thread)
        self._set_ready(True)
        self._event(kind, f"{why}; a new Triton took over in {time.monotonic() - t0:.1f} s")

    def _retire(self, old: TritonServer | None, prefix: str, wait_for_front: bool = True) -> None:
        """Stop a replaced Triton once the front door no longer uses it, then remove what its
        dead workers left (processes, shared memory)."""
        front = self.front
        if wait_for_front and front is not None:
            front.wait_old_workers(self.config.drain_timeout_s)
        if old is not None:
            code = old.stop(timeout_s=30.0)
            log.info("replaced Triton stopped (exit code %s)", code)
        kill_marked(prefix)
        remove_shm_regions(prefix)

    def _fail(self, message: str) -> None:
        self.failure = message
        self._set_ready(False)
        self._event("failed", message)
        self._stop.set()

    def check_once(self) -> None:
        """One round of the supervisor's checks and repairs (the thread calls it in a loop)."""
        with self._lock:
            if self._stop.is_set() or self.triton is None:
                return
            process = self.triton.process
            if process is None or process.poll() is not None:
                code = None if process is None else process.returncode
                self._replace_triton("triton_restarted", f"Triton exited on its own (code {code})")
                return
            if self.front is not None and not self.front.running():
                self._set_ready(False)
                try:
                    self.front.start()
                except FrontDoorError as err:
                    self._fail(f"the front door (nginx) died and could not be restarted: {err}")
                    return
                self._set_ready(True)
                self._event("front_door_restarted", "the front door (nginx) died; restarted it")
            dead = self.dead_instances()
            if dead:
                names = ", ".join(n for names in dead.values() for n in names)
                self._replace_triton("worker_replaced", f"worker(s) {names} died")
                return
            interval = self.config.canary_interval_s
            if interval is not None and time.monotonic() - self._last_canary >= interval:
                if self._canary():
                    self._canary_failures = 0
                else:
                    self._canary_failures += 1
                    if self._canary_failures >= 2:
                        self._canary_failures = 0
                        self._replace_triton(
                            "worker_replaced", "the pipeline failed two canary requests in a row"
                        )

    def _supervise(self) -> None:
        while not self._stop.wait(self.config.check_interval_s):
            try:
                self.check_once()
            except Exception as err:  # the supervisor must outlive any one check
                log.exception("supervisor check failed: %s", err)

    # ------------------------------------------------------------------ stop
    def request_stop(self) -> None:
        """Ask :meth:`wait` to return (safe from a signal handler)."""
        self._stop.set()

    def wait(self, poll_s: float = 0.5) -> None:
        """Block until :meth:`request_stop` or a fatal failure."""
        while not self._stop.wait(poll_s):
            pass

    def shutdown(self) -> int:
        """Drain and stop everything; returns the exit code for ``dmfn serve``: 0 after a clean
        stop, 1 after a failure of the service or when Triton itself exited with an error."""
        self._stop.set()
        if self._thread is not None and self._thread is not threading.current_thread():
            self._thread.join(timeout=120.0)
        code = self._teardown(drain=True)
        if self.failure is not None:
            return 1
        return 0 if code in (0, None) else 1

    def _teardown(self, drain: bool) -> int | None:
        with self._lock:
            self._set_ready(False)
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
            for thread in self._retiring:
                thread.join(timeout=60.0)
            kill_marked(self._shm_prefix)
            removed = remove_shm_regions(self._shm_prefix)
            if removed:
                log.info("removed %d shared-memory region(s) left by dead workers", len(removed))
            if self._run_dir is not None:
                shutil.rmtree(self._run_dir, ignore_errors=True)
                self._run_dir = None
            return code

    def __enter__(self) -> DmfnService:
        self.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.shutdown()
