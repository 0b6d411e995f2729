"""The audit trail: one JSON line per prediction, whichever path made it (docs/deploy.md).

A line holds the UTC time, which path wrote it (``source``: ``sdk``, ``local``, ``server``,
``cli``), the caller, the request id (joins a client's line to the server's), the study and
series UIDs (or the image id of a study not read from DICOM), the model's sha256, the outcome
(``ok``, ``refused`` with the rule, ``failed`` with the reason), the top class, the malignant
probability and the duration. Never a patient's name or ID, never an image or a header.

Writing: each line is one ``os.write`` on a file opened with ``O_APPEND`` (mode 0600), so
writers in several processes never interleave or tear a line. Rotation is by size, under an
``flock`` on ``<file>.lock``: the writer that finds the file full renames ``audit.jsonl`` ->
``audit.jsonl.1`` -> ... and the oldest beyond ``backups`` is removed. A write that fails
(disk full, permission) raises nothing into the prediction: it logs a WARNING, counts itself in
:attr:`AuditLog.failures` and calls ``on_failure`` (the server's models tell the supervisor).

UIDs hashed on request (``hash_uids``): HMAC-SHA256 under the operator's key
(``hmac-sha256:<hex>``), or a plain SHA-256 without a key (``sha256:<hex>``). A plain hash hides
nothing from whoever already holds the UID: it can be recomputed and matched. Only the keyed
hash keeps a UID unreadable to someone who has the file but not the key.

Configuration from the environment (:func:`audit_from_env`):

- ``DMFN_AUDIT_LOG``: the file, or ``off``; unset: the caller's default (the client's
  ``$XDG_STATE_HOME/dmfn/audit.jsonl``, ``~/.local/state/dmfn/audit.jsonl``);
- ``DMFN_AUDIT_MAX_BYTES`` (10 MiB), ``DMFN_AUDIT_BACKUPS`` (20);
- ``DMFN_AUDIT_HASH_UIDS=1`` with ``DMFN_AUDIT_KEY_FILE`` (the HMAC key; keep it 0600).
"""

from __future__ import annotations

import contextlib
import datetime
import fcntl
import getpass
import hashlib
import hmac
import json
import logging
import math
import os
import socket
import threading
import time
from collections.abc import Callable, Mapping
from dataclasses import asdict, dataclass, field
from pathlib import Path

log = logging.getLogger("dmfn.audit")

AUDIT_LOG_ENV = "DMFN_AUDIT_LOG"
AUDIT_MAX_BYTES_ENV = "DMFN_AUDIT_MAX_BYTES"
AUDIT_BACKUPS_ENV = "DMFN_AUDIT_BACKUPS"
AUDIT_HASH_ENV = "DMFN_AUDIT_HASH_UIDS"
AUDIT_KEY_FILE_ENV = "DMFN_AUDIT_KEY_FILE"
#: The value of ``DMFN_AUDIT_LOG`` that turns the trail off.
OFF = "off"
DEFAULT_MAX_BYTES = 10 * 2**20
DEFAULT_BACKUPS = 20
#: Longest rule or reason kept in a line (characters); the rest is cut with an ellipsis.
MAX_RULE_CHARS = 500
OUTCOMES = ("ok", "refused", "failed")
SOURCES = ("sdk", "local", "server", "cli")


def one_line(err: BaseException | str) -> str:
    """An error's message (or a text) on one line, cut at :data:`MAX_RULE_CHARS`; an error
    without a message gives its type's name."""
    if isinstance(err, BaseException):
        text = err.strerror if isinstance(err, OSError) and err.strerror else str(err)
        text = " ".join(text.split()) or type(err).__name__
    else:
        text = " ".join(str(err).split())
    return text if len(text) <= MAX_RULE_CHARS else text[: MAX_RULE_CHARS - 1] + "…"


def utc_now() -> str:
    """The current UTC time, ISO 8601 with microseconds and a ``Z``."""
    now = datetime.datetime.now(datetime.UTC)
    return now.strftime("%Y-%m-%dT%H:%M:%S.%fZ")


_CALLER: str | None = None


def local_caller() -> str:
    """``user@host`` of this process (the uid when the user has no name)."""
    global _CALLER
    if _CALLER is None:
        try:
            user = getpass.getuser()
        except (KeyError, OSError):  # no passwd entry (containers) and no $USER
            user = f"uid{os.getuid()}"
        _CALLER = f"{user}@{socket.gethostname()}"
    return _CALLER


def default_client_path(environ: Mapping[str, str] | None = None) -> Path:
    """``$XDG_STATE_HOME/dmfn/audit.jsonl`` (``~/.local/state/dmfn/audit.jsonl`` when unset)."""
    env = os.environ if environ is None else environ
    state = env.get("XDG_STATE_HOME") or str(Path.home() / ".local" / "state")
    return Path(state) / "dmfn" / "audit.jsonl"


@dataclass(frozen=True)
class AuditRecord:
    """One audit line (field order = the line's key order); None fields are written as null.

    ``study_uid``/``series_uid``: DICOM StudyInstanceUID / SeriesInstanceUID (hashed when the
    log hashes UIDs); ``image_id``: the id of a study not read from DICOM (file name), hashed
    likewise; ``rule``: why a study was refused or failed; ``duration_ms``: wall time of the
    prediction as this path saw it.
    """

    source: str
    caller: str
    outcome: str
    request_id: str | None = None
    study_uid: str | None = None
    series_uid: str | None = None
    image_id: str | None = None
    model_sha256: str | None = None
    rule: str | None = None
    top_class: str | None = None
    malignant_prob: float | None = None
    duration_ms: float | None = None
    time: str = field(default_factory=utc_now)

    def __post_init__(self) -> None:
        if self.outcome not in OUTCOMES:
            raise ValueError(f"field 'outcome': must be one of {OUTCOMES}, got {self.outcome!r}")
        if self.source not in SOURCES:
            raise ValueError(f"field 'source': must be one of {SOURCES}, got {self.source!r}")


_ORDER = ("time", "source", "caller", "request_id", "study_uid", "series_uid", "image_id",
          "model_sha256", "outcome", "rule", "top_class", "malignant_prob", "duration_ms")  # fmt: skip


def _number(value: float | None, digits: int) -> float | None:
    if value is None:
        return None
    value = float(value)
    return round(value, digits) if math.isfinite(value) else None


class AuditLog:
    """An audit file: :meth:`write` / :meth:`record` append one line (see the module docstring).

    Args:
        path: the file (its folder is created, mode 0700, when missing).
        max_bytes: size at which it is rotated.
        backups: rotated files kept (``path.1`` newest ... ``path.N``).
        hash_uids: write UIDs and image ids hashed.
        key: the HMAC key for ``hash_uids`` (None: plain SHA-256, see the module docstring).
        on_failure: called with the reason after every failed write (after the WARNING).

    Thread- and process-safe; :attr:`failures` counts failed writes.
    """

    def __init__(
        self,
        path: str | Path,
        max_bytes: int = DEFAULT_MAX_BYTES,
        backups: int = DEFAULT_BACKUPS,
        hash_uids: bool = False,
        key: bytes | None = None,
        on_failure: Callable[[str], None] | None = None,
    ) -> None:
        if not (isinstance(max_bytes, int) and max_bytes >= 4096):
            raise ValueError(f"argument 'max_bytes': must be an integer >= 4096, got {max_bytes!r}")
        if not (isinstance(backups, int) and backups >= 1):
            raise ValueError(f"argument 'backups': must be an integer >= 1, got {backups!r}")
        if key is not None and not key:
            raise ValueError("argument 'key': must be a non-empty bytes or None")
        self.path = Path(path)
        self.lock_path = self.path.with_name(self.path.name + ".lock")
        self.max_bytes = max_bytes
        self.backups = backups
        self.hash_uids = bool(hash_uids)
        self.key = key
        self.on_failure = on_failure
        self.failures = 0
        self.written = 0
        self._count_lock = threading.Lock()

    def __repr__(self) -> str:
        hashing = ("hmac-sha256" if self.key else "sha256") if self.hash_uids else "no"
        return f"AuditLog({str(self.path)!r}, max_bytes={self.max_bytes}, hash_uids={hashing})"

    # ------------------------------------------------------------------ identifiers
    def identifier(self, value: str | None) -> str | None:
        """``value`` as written: as is, hashed (``hmac-sha256:`` / ``sha256:`` + hex), or None
        when empty."""
        if not value:
            return None
        if not self.hash_uids:
            return value
        if self.key:
            return "hmac-sha256:" + hmac.new(self.key, value.encode(), hashlib.sha256).hexdigest()
        return "sha256:" + hashlib.sha256(value.encode()).hexdigest()

    def line(self, record: AuditRecord) -> bytes:
        """The JSON line of ``record`` (identifiers hashed as configured), newline included."""
        values = asdict(record)
        for name in ("study_uid", "series_uid", "image_id"):
            values[name] = self.identifier(values[name])
        values["malignant_prob"] = _number(values["malignant_prob"], 6)
        values["duration_ms"] = _number(values["duration_ms"], 3)
        values["rule"] = None if record.rule is None else one_line(record.rule)
        ordered = {name: values[name] for name in _ORDER}
        return (json.dumps(ordered, ensure_ascii=False, separators=(",", ":")) + "\n").encode()

    # ------------------------------------------------------------------ writing
    def write(self, record: AuditRecord) -> bool:
        """Append ``record``; False (and a WARNING, :attr:`failures` + 1, ``on_failure``) when
        the line could not be written. Never raises for an I/O failure."""
        data = self.line(record)
        try:
            self._append(data)
        except OSError as err:
            self._failed(f"{self.path}: {one_line(err)}")
            return False
        with self._count_lock:
            self.written += 1
        return True

    def record(self, **fields: object) -> bool:
        """:meth:`write` of ``AuditRecord(**fields)``."""
        return self.write(AuditRecord(**fields))  # type: ignore[arg-type]

    def refused(
        self,
        rule: BaseException | str,
        *,
        study_uid: str = "",
        series_uid: str = "",
        image_id: str = "",
        source: str = "cli",
        model_sha256: str | None = None,
        caller: str | None = None,
    ) -> bool:
        """One ``refused`` line for a study turned away before prediction (an unreadable file,
        a bad manifest row); ``rule`` is the error or its message. Never pass a patient's name
        or ID as an identifier."""
        return self.record(
            source=source,
            caller=caller or local_caller(),
            outcome="refused",
            study_uid=study_uid,
            series_uid=series_uid,
            image_id=image_id,
            model_sha256=model_sha256 or None,
            rule=one_line(rule),
        )

    def _failed(self, reason: str) -> None:
        with self._count_lock:
            self.failures += 1
        log.warning("audit line not written (%d so far): %s", self.failures, reason)
        if self.on_failure is not None:
            with contextlib.suppress(Exception):
                self.on_failure(reason)

    def _open(self) -> int:
        flags = os.O_WRONLY | os.O_APPEND | os.O_CREAT | os.O_CLOEXEC
        try:
            return os.open(self.path, flags, 0o600)
        except FileNotFoundError:
            self.path.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
            return os.open(self.path, flags, 0o600)

    def _append(self, data: bytes) -> None:
        fd = self._open()
        try:
            if os.fstat(fd).st_size + len(data) > self.max_bytes:
                os.close(fd)
                fd = -1
                self._rotate(len(data))
                fd = self._open()
            written = os.write(fd, data)
            if written != len(data):  # a short write: the disk filled up mid-line
                raise OSError(28, f"short write ({written} of {len(data)} bytes)")
        finally:
            if fd >= 0:
                os.close(fd)

    def _rotate(self, incoming: int) -> None:
        """Rename the full file away under the lock, unless another writer just did (then
        ``incoming`` more bytes fit)."""
        lock = os.open(self.lock_path, os.O_WRONLY | os.O_CREAT | os.O_CLOEXEC, 0o600)
        try:
            fcntl.flock(lock, fcntl.LOCK_EX)
            try:
                size = self.path.stat().st_size
            except FileNotFoundError:
                return
            if size == 0 or size + incoming <= self.max_bytes:  # rotated meanwhile
                return
            for n in range(self.backups, 0, -1):
                older = self.path.with_name(f"{self.path.name}.{n}")
                if n == self.backups:
                    older.unlink(missing_ok=True)
                else:
                    with contextlib.suppress(FileNotFoundError):
                        older.rename(self.path.with_name(f"{self.path.name}.{n + 1}"))
            self.path.rename(self.path.with_name(f"{self.path.name}.1"))
        finally:
            os.close(lock)  # releases the flock


def _positive_int(environ: Mapping[str, str], name: str, default: int) -> int:
    raw = environ.get(name, "").strip()
    if not raw:
        return default
    try:
        return int(raw)
    except ValueError:
        raise ValueError(f"environment variable {name}: must be an integer, got {raw!r}") from None


def audit_from_env(
    default_path: str | Path | None = None,
    environ: Mapping[str, str] | None = None,
    on_failure: Callable[[str], None] | None = None,
) -> AuditLog | None:
    """The audit log the environment configures (see the module docstring); None when
    ``DMFN_AUDIT_LOG=off``, or when it is unset and there is no ``default_path``.

    Raises ValueError naming the variable for a bad size or count, a missing or empty key file.
    """
    env = os.environ if environ is None else environ
    where = env.get(AUDIT_LOG_ENV, "").strip()
    if where.lower() == OFF:
        return None
    path = Path(where) if where else (Path(default_path) if default_path is not None else None)
    if path is None:
        return None
    hash_uids = env.get(AUDIT_HASH_ENV, "").strip().lower() in ("1", "true", "yes", "on")
    key = None
    key_file = env.get(AUDIT_KEY_FILE_ENV, "").strip()
    if key_file:
        try:
            key = Path(key_file).read_bytes().strip()
        except OSError as err:
            raise ValueError(
                f"environment variable {AUDIT_KEY_FILE_ENV}: cannot read {key_file}: "
                f"{one_line(err)}"
            ) from err
        if not key:
            raise ValueError(f"environment variable {AUDIT_KEY_FILE_ENV}: {key_file} is empty")
    return AuditLog(
        path,
        _positive_int(env, AUDIT_MAX_BYTES_ENV, DEFAULT_MAX_BYTES),
        _positive_int(env, AUDIT_BACKUPS_ENV, DEFAULT_BACKUPS),
        hash_uids,
        key,
        on_failure,
    )


# --------------------------------------------------------------------------- the server's side
#: Environment of the served models: the header the front door stamps on each request, and the
#: served checkpoint's sha256 (both set by ``dmfn serve``).
AUDIT_HEADER_ENV = "DMFN_AUDIT_HEADER"
AUDIT_MODEL_SHA256_ENV = "DMFN_AUDIT_MODEL_SHA256"
#: Prefix of that header's name; the rest is a random token of the service run, so a client
#: cannot forge it (not as a header: nginx replaces it; not as a request parameter: it cannot
#: guess the name). Triton forwards headers matching :data:`AUDIT_HEADER_PATTERN` as request
#: parameters, which the ensemble hands on to its steps.
AUDIT_HEADER_PREFIX = "dmfn-audit-"
AUDIT_HEADER_PATTERN = "^dmfn-audit-[0-9a-f]+$"
#: File (in the workers' state folder) where a served model counts its failed audit writes.
AUDIT_FAILURES_SUFFIX = ".audit_failures"


def parse_stamp(parameters: str | Mapping[str, object] | None, header: str) -> tuple[str, float]:
    """(caller, time the front door passed the request on, unix s) from a request's parameters
    (the python backend's JSON string). A request without the stamp did not come through the
    front door (the supervisor's canary): ``("unstamped", nan)``; one stamped twice (a client
    that sent a parameter of the same name) keeps both claims in the caller."""
    values: list[object] = []
    if isinstance(parameters, str):
        try:
            json.loads(parameters or "{}", object_pairs_hook=lambda pairs: values.extend(
                v for k, v in pairs if k == header))  # fmt: skip
        except ValueError:
            values = []
    elif parameters is not None:
        values = [parameters[header]] if header in parameters else []
    if not values:
        return "unstamped", math.nan
    if len(values) > 1:  # a client guessed the header's name: keep every claim, trust none
        return "several stamps: " + " | ".join(str(v) for v in values), math.nan
    when, _, caller = str(values[0]).partition(" ")
    try:
        received = float(when)
    except ValueError:
        received = math.nan
    return caller.strip() or "unknown", received


class ServerAudit:
    """The audit of one served model instance (``preprocess``, ``postprocess``): a no-op unless
    ``dmfn serve`` configured it (``DMFN_AUDIT_LOG`` and ``DMFN_AUDIT_HEADER`` set). Failed
    writes are counted in ``<state folder>/<instance>.audit_failures`` for the supervisor."""

    def __init__(
        self,
        instance: str,
        warn: Callable[[str], None] | None = None,
        environ: Mapping[str, str] | None = None,
    ) -> None:
        env = os.environ if environ is None else environ
        self.header = env.get(AUDIT_HEADER_ENV, "")
        self.model_sha256 = env.get(AUDIT_MODEL_SHA256_ENV, "") or None
        self._warn = warn
        self._counter: int | None = None
        self._earlier = 0  # counted by this instance's predecessors (a replaced worker)
        state = env.get("DMFN_WORKER_STATE_DIR", "")
        if state and instance:
            path = Path(state) / f"{instance}{AUDIT_FAILURES_SUFFIX}"
            self._earlier = _count_in(path)
            with contextlib.suppress(OSError):
                self._counter = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_CLOEXEC, 0o600)
        self.log = audit_from_env(None, env, self._failed) if self.header else None

    @property
    def active(self) -> bool:
        return self.log is not None

    def _failed(self, reason: str) -> None:
        if self._warn is not None:
            self._warn(f"audit line not written: {reason}")
        if self._counter is not None and self.log is not None:
            with contextlib.suppress(OSError):
                count = self._earlier + self.log.failures
                os.pwrite(self._counter, f"{count}\n".encode().ljust(24), 0)

    def write(
        self,
        request_id: str,
        parameters: str | None,
        outcome: str,
        rule: str | None = None,
        top_class: str | None = None,
        malignant_prob: float | None = None,
    ) -> None:
        """One line for one study of a request; requests the front door did not stamp (the
        supervisor's canary, which reaches Triton on its private socket) are not predictions
        anybody asked for and are left out."""
        if self.log is None:
            return
        caller, received = parse_stamp(parameters, self.header)
        if caller == "unstamped":
            return
        duration = (time.time() - received) * 1e3 if math.isfinite(received) else None
        self.log.record(
            source="server", caller=caller, outcome=outcome, request_id=request_id or None,
            model_sha256=self.model_sha256, rule=rule, top_class=top_class,
            malignant_prob=malignant_prob, duration_ms=duration,
        )  # fmt: skip

    def close(self) -> None:
        if self._counter is not None:
            with contextlib.suppress(OSError):
                os.close(self._counter)
            self._counter = None


def read_failure_counts(folder: Path) -> int:
    """The failed audit writes the served models of ``folder`` (and its subfolders) counted."""
    return sum(_count_in(p) for p in Path(folder).rglob(f"*{AUDIT_FAILURES_SUFFIX}"))


def _count_in(path: Path) -> int:
    try:
        return int(path.read_text().split()[0])
    except (OSError, ValueError, IndexError):
        return 0


def study_identifiers(study_uid: str, image_id: str) -> dict[str, str]:
    """The identifiers a client line carries for a study: a study read from DICOM (it has a
    StudyInstanceUID) has its SeriesInstanceUID as ``image_id``; any other study's
    ``image_id`` (a file name) is kept under its own key. Never the patient's ID."""
    if study_uid:
        return {"study_uid": study_uid, "series_uid": image_id}
    return {"image_id": image_id}


def client_audit(environ: Mapping[str, str] | None = None) -> AuditLog | None:
    """The audit log of a client process: ``DMFN_AUDIT_LOG``, else the per-user default."""
    return audit_from_env(default_client_path(environ), environ)


__all__ = [
    "AUDIT_LOG_ENV",
    "AuditLog",
    "AuditRecord",
    "ServerAudit",
    "audit_from_env",
    "client_audit",
    "default_client_path",
    "local_caller",
    "one_line",
    "study_identifiers",
]
