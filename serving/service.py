"""The dmfn inference service: Triton behind the front door, watched by a supervisor.

``dmfn serve`` runs one :class:`DmfnService`, the lifecycle of one run. After the checks of
:mod:`~dmfn.serving.preflight` it starts, in order:

- the **run folder** (:class:`~dmfn.serving.run.RunFolder`, mode 0700) with the state file,
  the spawner of every child, the metrics endpoint and the front door's log receiver;
- **Triton** (:class:`~dmfn.serving.triton.TritonServer`), listening only on unix sockets of
  that folder, its python-backend shared memory owner-only and under a prefix unique to this run;
- **the front door** (:mod:`~dmfn.serving.frontdoor`, nginx) on the public ports;
- the **supervisor** (:class:`~dmfn.serving.supervisor.Supervisor`), threads that check and
  repair all of it.

On :meth:`DmfnService.shutdown` readiness turns false, the front door stops accepting
connections and lets requests in flight finish (at most ``drain_timeout_s``), then Triton stops
and the run folder is closed (leftover workers, shared memory, files), on every path.
"""

from __future__ import annotations

import contextlib
import logging
import os
import secrets
import threading
import time
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from dmfn.contract.audit import (
    AUDIT_HEADER_ENV,
    AUDIT_HEADER_PREFIX,
    AUDIT_LOG_ENV,
    AUDIT_MODEL_SHA256_ENV,
    audit_from_env,
    read_failure_counts,
)
from dmfn.contract.limits import InputLimits
from dmfn.contract.server import ServerContract

from .auth import ApiKeys, file_stamp
from .frontdoor import FrontDoor, FrontDoorConfig, FrontDoorError
from .metrics import render_service_metrics
from .preflight import check_can_start, claim_public_ports
from .repository import repository_limits, repository_provenance
from .run import RunFolder
from .settings import LOOPBACK, ServiceConfig
from .supervisor import Supervisor
from .triton import TritonError, TritonServer

__all__ = ["LOOPBACK", "DmfnService", "ServiceConfig", "ServiceEvent"]

log = logging.getLogger("dmfn.serve")


@dataclass
class ServiceEvent:
    """Something the supervisor did: when (time.time()), what kind, and a sentence."""

    time: float
    kind: str  # "worker_replaced", "triton_restarted", "front_door_restarted", "failed", ...
    message: str


class DmfnService:
    """Triton + front door + supervisor. Use :meth:`start`, then :meth:`wait` (blocks until
    :meth:`request_stop` or a fatal failure) and :meth:`shutdown`; or as a context manager."""

    def __init__(self, config: ServiceConfig) -> None:
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
        #: The front door's audit stamp: a name no client can guess (contract/audit.py).
        self.audit_header = AUDIT_HEADER_PREFIX + secrets.token_hex(16)
        #: The served models' audit settings (None: the trail is off); set by :meth:`start`.
        self.audit_env: dict[str, str] | None = None
        self._generation = 0
        self._run: RunFolder | None = None
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

    @property
    def generation(self) -> int:
        """How many times Triton was replaced (its folder is ``g<generation>``)."""
        return self._generation

    def generation_prefix(self) -> str:
        return f"{self._shm_prefix}g{self._generation}_"

    @property
    def run_dir(self) -> Path | None:
        return None if self._run is None else self._run.path

    @property
    def front_door_log(self) -> Path | None:
        if self.config.log_dir is not None:
            return Path(self.config.log_dir) / "front_door.log"
        return None if self._run is None else self._run.front_door_log

    @property
    def stopping(self) -> bool:
        return self._stopping or self._stop.is_set()

    # ------------------------------------------------------------------ events, readiness
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

    def set_ready(self, ready: bool) -> None:
        """Create or remove the flag the front door's readiness endpoints read."""
        if self._run is not None:
            self._run.set_flag(ready and not self.stopping)

    def is_ready(self) -> bool:
        """What the public readiness endpoints answer."""
        return self._run is not None and self._run.flag.exists()

    def audit_failures(self) -> int | None:
        """Audit lines the served models could not write so far (None: the trail is off)."""
        if self.audit_env is None:
            return None
        return read_failure_counts(self._run.path) if self._run is not None else 0

    def service_metrics(self) -> str:
        refusals = self._run.refusals() if self._run is not None else {}
        keys = None if self.api_keys is None else len(self.api_keys.entries)
        return render_service_metrics(
            self.is_ready(), refusals, dict(self.event_counts), keys, self.audit_failures()
        )

    # ------------------------------------------------------------------ children
    def new_triton(self) -> TritonServer:
        """A Triton for the current generation, in its own folder of the run folder."""
        assert self._run is not None
        return self._run.new_triton(self._generation, self.generation_prefix(), self.audit_env)

    def next_generation(self) -> None:
        self._generation += 1

    def front_config(self) -> FrontDoorConfig:
        assert self._run is not None and self.limits is not None and self.triton is not None
        header = self.audit_header if self.audit_env is not None else None
        return self._run.front_config(self.triton, self.limits, self.api_keys, header)

    def record_children(self) -> None:
        """Write the current children's process groups to the state file."""
        if self._run is not None:
            self._run.record_children(self.triton, self.front)

    # ------------------------------------------------------------------ start
    def start(self) -> None:
        """Start Triton, the front door and the supervisor; return when the service is ready.

        Raises ValueError (bad settings, root without ``allow_root``, a port taken:
        :class:`PortInUseError`), TritonError or FrontDoorError; nothing is left running on
        failure.
        """
        c = self.config
        check_can_start(c)
        self.limits = repository_limits(Path(c.repository))
        self.provenance = repository_provenance(Path(c.repository))
        self.audit_env = self._audit_settings()
        if c.api_keys is not None:
            self.keys_stamp = file_stamp(Path(c.api_keys))  # before reading: no change is missed
            self.api_keys = ApiKeys.load(Path(c.api_keys))
        with self.lock:
            claim_public_ports(c, lambda cleared: self.event("predecessor_cleared", cleared))
            t0 = time.monotonic()
            try:
                self._run = RunFolder(
                    c,
                    self._shm_prefix,
                    lambda: self.triton.socket("metrics") if self.triton is not None else None,
                    self.service_metrics,
                )
                self.triton = self.new_triton()
                self.triton.start()
                self.record_children()
                self.triton.wait_ready(c.ready_timeout_s)
                self.expected_instances = self.supervisor.read_expected_instances()
                self.contract = self.supervisor.read_contract()
                self.front = FrontDoor(self.front_config(), spawner=self._run.spawner)
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

    def _audit_settings(self) -> dict[str, str] | None:
        """The models' audit environment, after checking that the file can be written
        (ValueError naming it otherwise: better refused at start than unaudited)."""
        path = self.config.audit_path
        if path is None:
            return None
        path = Path(path).absolute()
        env = {
            AUDIT_LOG_ENV: str(path),
            AUDIT_HEADER_ENV: self.audit_header,
            AUDIT_MODEL_SHA256_ENV: (self.provenance or {}).get("model_sha256", ""),
        }
        audit = audit_from_env(None, {**os.environ, **env})  # the size settings, checked
        assert audit is not None
        try:
            path.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
            os.close(os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o600))
        except OSError as err:
            raise ValueError(
                f"argument 'audit_log' (--audit-log): cannot write {path}: {err.strerror or err}"
            ) from err
        return env

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
                (self.front.drain if drain else self.front.stop)()
                self.front = None
            code = None
            if self.triton is not None:
                code = self.triton.stop()
                self.triton = None
            self.supervisor.join_retiring()
            if self._run is not None:
                self._run.close()
                self._run = None
            return code

    def __enter__(self) -> DmfnService:
        self.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.shutdown()
