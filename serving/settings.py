"""The settings of one ``dmfn serve``: :class:`ServiceConfig`, checked when it is made."""

from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path

from dmfn.contract.audit import default_client_path

from .logs import DEFAULT_BACKUPS, DEFAULT_MAX_BYTES

#: Hosts that only this machine reaches (``dmfn serve`` allows them without TLS and keys).
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
    #: The audit trail's file (one line per study the pipeline answered or refused); None:
    #: ``audit.jsonl`` in ``log_dir``, else ``server-audit.jsonl`` beside the client's default
    #: (``~/.local/state/dmfn/``). ``audit=False`` turns it off.
    audit_log: Path | None = None
    audit: bool = True
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
    #: Run as root (refused by default: see :func:`~dmfn.serving.preflight.check_can_start`).
    allow_root: bool = False

    @property
    def audit_path(self) -> Path | None:
        """Where the served models write the audit trail (None: off)."""
        if not self.audit:
            return None
        if self.audit_log is not None:
            return Path(self.audit_log)
        if self.log_dir is not None:
            return Path(self.log_dir) / "audit.jsonl"
        return default_client_path().with_name("server-audit.jsonl")

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
