"""The private run folder of one ``dmfn serve`` and the local pieces that live in it.

:class:`RunFolder` holds everything local users must not reach: one subfolder per Triton
generation (Triton's unix sockets, the workers' state records), the front door's configuration,
temp files and log socket, the metrics socket and the readiness flag. Beside the folder it owns
the state file a successor reads (:mod:`~dmfn.serving.runstate`), the
:class:`~dmfn.serving.spawner.Spawner` of every child, the receiver of the front door's log
(:mod:`~dmfn.serving.logs`) and the metrics endpoint (:mod:`~dmfn.serving.metrics`).
:meth:`RunFolder.close` removes all of it, with the workers and shared memory left under the
run's prefix.
"""

from __future__ import annotations

import contextlib
import logging
import shutil
import tempfile
from collections.abc import Callable, Mapping
from pathlib import Path

from dmfn.contract.audit import AUDIT_HEADER_PATTERN, AUDIT_LOG_ENV, OFF
from dmfn.contract.limits import InputLimits

from .auth import ApiKeys
from .frontdoor import FrontDoor, FrontDoorConfig
from .logs import LogReceiver, RotatingLog
from .metrics import MetricsServer
from .processes import kill_marked, remove_shm_regions
from .runstate import RunState
from .settings import ServiceConfig
from .spawner import Spawner
from .triton import TritonServer

log = logging.getLogger("dmfn.serve")

READY_FLAG = "ready"
#: Longest path of a unix socket (sun_path is 108 bytes on Linux, with the terminating NUL).
MAX_SOCKET_PATH = 107


def make_run_dir() -> Path:
    """A new private folder (mode 0700) in the temporary folder, short enough for the unix
    sockets of every Triton generation; ValueError if TMPDIR is too long a path."""
    run_dir = Path(tempfile.mkdtemp(prefix="dmfn-serve-"))
    longest = run_dir / "g999" / "grpc:0"
    if len(str(longest)) > MAX_SOCKET_PATH - 10:
        shutil.rmtree(run_dir, ignore_errors=True)
        raise ValueError(
            f"the temporary folder {run_dir.parent} has too long a path for unix sockets; "
            "set TMPDIR to a short one (e.g. /tmp)"
        )
    return run_dir


class RunFolder:
    """The run folder and its local pieces (see the module docstring). ``triton_metrics``
    gives the current Triton's metrics socket (None: none running); ``service_metrics`` the
    service's own metrics text."""

    def __init__(
        self,
        config: ServiceConfig,
        shm_prefix: str,
        triton_metrics: Callable[[], Path | None],
        service_metrics: Callable[[], str],
    ) -> None:
        c = self.config = config
        self.shm_prefix = shm_prefix
        self.path = make_run_dir()
        self.spawner: Spawner | None = None
        self.state: RunState | None = None
        self.receiver: LogReceiver | None = None
        self.metrics: MetricsServer | None = None
        self.front_door_log = (
            self.path if c.log_dir is None else Path(c.log_dir)
        ) / "front_door.log"
        try:
            self.spawner = Spawner()
            self.state = RunState(
                c.host,
                (c.http_port, c.grpc_port, c.metrics_port),
                run_dir=str(self.path),
                shm_prefix=shm_prefix,
            )
            self.state.save()
            self.receiver = LogReceiver(
                self.path / "log.sock",
                RotatingLog(self.front_door_log, c.log_max_bytes, c.log_backups),
            )
            self.metrics = MetricsServer(
                self.path / "metrics.sock", triton_metrics, service_metrics
            )
        except BaseException:
            self.close()
            raise

    # ------------------------------------------------------------------ readiness flag
    @property
    def flag(self) -> Path:
        return self.path / READY_FLAG

    def set_flag(self, ready: bool) -> None:
        """Create or remove the flag the front door's readiness endpoints read."""
        if ready:
            self.flag.touch()
        else:
            self.flag.unlink(missing_ok=True)

    def refusals(self) -> dict[str, int]:
        """Requests the front door refused so far, by reason (:class:`LogReceiver`)."""
        return self.receiver.counts() if self.receiver is not None else {}

    # ------------------------------------------------------------------ children
    def new_triton(
        self, generation: int, shm_prefix: str, audit_env: Mapping[str, str] | None = None
    ) -> TritonServer:
        """A Triton for ``generation``, in its own folder ``g<generation>``, its shared memory
        under ``shm_prefix``; ``audit_env`` configures its models' audit trail (None: off)."""
        c = self.config
        folder = self.path / f"g{generation}"
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
            shm_prefix=shm_prefix,
            worker_state_dir=folder / "workers",
            spawner=self.spawner,
            extra_env=dict(audit_env) if audit_env else {AUDIT_LOG_ENV: OFF},
            forward_headers=AUDIT_HEADER_PATTERN if audit_env else None,
        )

    def front_config(
        self,
        triton: TritonServer,
        limits: InputLimits,
        api_keys: ApiKeys | None,
        audit_header: str | None = None,
    ) -> FrontDoorConfig:
        """The front door's configuration: public ports in front of ``triton``'s sockets;
        ``audit_header``: the header that stamps each request with its caller (None: none)."""
        c = self.config
        return FrontDoorConfig(
            run_dir=self.path,
            ready_flag=self.flag,
            host=c.host,
            http_port=c.http_port,
            grpc_port=c.grpc_port,
            metrics_port=c.metrics_port,
            upstream_http=triton.socket("http"),
            upstream_grpc=triton.socket("grpc"),
            metrics_socket=self.path / "metrics.sock",
            log_socket=self.path / "log.sock",
            log_file=self.front_door_log,
            max_body_bytes=limits.max_body_bytes(),
            drain_timeout_s=c.drain_timeout_s,
            workers=c.front_workers,
            tls_cert=Path(c.tls_cert).resolve() if c.tls_cert else None,
            tls_key=Path(c.tls_key).resolve() if c.tls_key else None,
            tls_client_ca=Path(c.tls_client_ca).resolve() if c.tls_client_ca else None,
            api_keys=api_keys,
            max_requests_per_client=c.max_requests_per_client,
            max_requests=c.max_requests,
            audit_header=audit_header,
        )

    def record_children(self, triton: TritonServer | None, front: FrontDoor | None) -> None:
        """Write the children's process groups to the state file."""
        if self.state is None:
            return
        children = {}
        if triton is not None and triton.process is not None:
            children[str(triton.process.pid)] = "tritonserver"
        if front is not None and front.process is not None:
            children[str(front.process.pid)] = "nginx"
        self.state.children = children
        with contextlib.suppress(OSError):
            self.state.save()

    # ------------------------------------------------------------------ cleanup
    def close(self) -> None:
        """Kill the workers left under the run's prefix, remove their shared memory, stop the
        local servers and the spawner, remove the folder and the state file."""
        kill_marked(self.shm_prefix)
        removed = remove_shm_regions(self.shm_prefix)
        if removed:
            log.info("removed %d shared-memory region(s) left by dead workers", len(removed))
        for closer in (self.metrics, self.receiver, self.spawner):
            if closer is not None:
                with contextlib.suppress(Exception):
                    closer.close()
        self.metrics = self.receiver = self.spawner = None
        shutil.rmtree(self.path, ignore_errors=True)
        if self.state is not None:
            self.state.remove()
            self.state = None
