"""Logs of ``dmfn serve`` that cannot fill the disk.

- :class:`RotatingLog`: an append-only text file capped in size. At ``max_bytes`` it becomes
  ``NAME.1`` (the older ones ``NAME.2`` ...; ``backups`` are kept), and every line is cut at
  ``max_line_bytes``. Triton's output and the front door's log both go through one.
- :class:`LogReceiver`: the front door (nginx) sends its error log and one line per refused
  request to a unix datagram socket in the service's private run folder (nginx's ``syslog:``
  target); the receiver writes them to a :class:`RotatingLog` and counts the refusals by reason
  for the metrics endpoint. A client that floods the door with long URLs or refused bodies
  therefore costs at most ``(backups + 1) * max_bytes`` of disk. When the receiver falls behind,
  the kernel's socket buffer fills and nginx drops messages instead of waiting.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import re
import socket
import threading
import time
from collections import Counter
from pathlib import Path

log = logging.getLogger(__name__)

DEFAULT_MAX_BYTES = 10 * 2**20
DEFAULT_BACKUPS = 3
DEFAULT_MAX_LINE_BYTES = 1024
_CUT = b" ...[cut]"
#: syslog tags of the front door's two streams (nginx ``tag=``).
ERROR_TAG = "dmfn_door"
REFUSAL_TAG = "dmfn_refused"
#: "<PRI>Mmm dd hh:mm:ss TAG: message" (nginx's syslog format with ``nohostname``).
_SYSLOG = re.compile(
    rb"^<\d{1,3}>[A-Z][a-z]{2} [ \d]\d \d\d:\d\d:\d\d (?P<tag>[\w.-]+): (?P<msg>.*)$", re.S
)


class RotatingLog:
    """A size-capped, line-truncating log file (see the module docstring). Thread-safe."""

    def __init__(
        self,
        path: Path,
        max_bytes: int = DEFAULT_MAX_BYTES,
        backups: int = DEFAULT_BACKUPS,
        max_line_bytes: int = DEFAULT_MAX_LINE_BYTES,
    ) -> None:
        if max_bytes < 4096:
            raise ValueError(f"argument 'max_bytes': must be >= 4096, got {max_bytes}")
        if backups < 0:
            raise ValueError(f"argument 'backups': must be >= 0, got {backups}")
        if max_line_bytes < 64:
            raise ValueError(f"argument 'max_line_bytes': must be >= 64, got {max_line_bytes}")
        self.path = Path(path)
        self.max_bytes, self.backups, self.max_line_bytes = max_bytes, backups, max_line_bytes
        self._lock = threading.Lock()
        self._partial = bytearray()
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self._file = open(self.path, "ab")
        self._size = self._file.tell()

    def _rotate(self) -> None:
        self._file.close()
        for index in range(self.backups, 0, -1):
            older = self.path.with_name(f"{self.path.name}.{index}")
            newer = (
                self.path if index == 1 else self.path.with_name(f"{self.path.name}.{index - 1}")
            )
            with contextlib.suppress(FileNotFoundError):
                os.replace(newer, older)
        if self.backups == 0:
            with contextlib.suppress(FileNotFoundError):
                self.path.unlink()
        self._file = open(self.path, "ab")
        self._size = 0

    def _cut(self, line: bytes) -> bytes:
        if len(line) <= self.max_line_bytes:
            return line
        return line[: self.max_line_bytes - len(_CUT)] + _CUT

    def _write_lines(self, lines: list[bytes]) -> None:
        data = b"".join(self._cut(line) + b"\n" for line in lines)
        if not data:
            return
        if self._size + len(data) > self.max_bytes and self._size > 0:
            self._rotate()
        self._file.write(data)
        self._file.flush()
        self._size += len(data)

    def write_line(self, text: str | bytes) -> None:
        """Append one line (newlines inside it are replaced by spaces)."""
        raw = text.encode(errors="replace") if isinstance(text, str) else bytes(text)
        with self._lock:
            self._write_lines([raw.replace(b"\n", b" ").rstrip(b"\r")])

    def write(self, chunk: bytes) -> None:
        """Append raw output (e.g. a child's stdout): complete lines are written, a partial last
        line waits for its end (at most ``max_line_bytes`` of it is kept)."""
        with self._lock:
            self._partial += chunk
            *lines, rest = bytes(self._partial).split(b"\n")
            self._partial = bytearray(rest[: self.max_line_bytes])
            self._write_lines([line.rstrip(b"\r") for line in lines])

    def close(self) -> None:
        with self._lock:
            if self._partial:
                self._write_lines([bytes(self._partial)])
                self._partial.clear()
            self._file.close()


class LogReceiver:
    """Receives the front door's syslog datagrams on ``socket_path`` (see the module docstring).

    ``refusals`` counts refused requests by reason (``auth``, ``client_cert``, ``admin_api``,
    ``too_large``, ``too_many``, ...).
    """

    def __init__(self, socket_path: Path, sink: RotatingLog) -> None:
        self.socket_path = Path(socket_path)
        self.sink = sink
        self.refusals: Counter[str] = Counter()
        self._lock = threading.Lock()
        self._sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
        with contextlib.suppress(FileNotFoundError):
            self.socket_path.unlink()
        old = os.umask(0o077)
        try:
            self._sock.bind(str(self.socket_path))
        finally:
            os.umask(old)
        self._sock.settimeout(0.5)
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="dmfn-door-log", daemon=True)
        self._thread.start()

    def counts(self) -> dict[str, int]:
        with self._lock:
            return dict(self.refusals)

    def _handle(self, datagram: bytes) -> None:
        match = _SYSLOG.match(datagram)
        if match is None:
            self.sink.write_line(datagram)
            return
        tag, message = match["tag"].decode(errors="replace"), match["msg"].strip()
        if tag != REFUSAL_TAG:
            self.sink.write_line(message)
            return
        try:
            entry = json.loads(message)
        except ValueError:
            self.sink.write_line(b"refused (unparsed) " + message)
            return
        reason = str(entry.get("reason") or "other")
        with self._lock:
            self.refusals[reason] += 1
        stamp = time.strftime("%Y-%m-%dT%H:%M:%S", time.localtime())
        self.sink.write_line(
            f"{stamp} refused {reason}: {entry.get('status')} {entry.get('method')} "
            f"{entry.get('uri')} client={entry.get('client')} key={entry.get('key') or '-'}"
        )

    def _run(self) -> None:
        while not self._stop.is_set():
            try:
                datagram = self._sock.recv(65536)
            except TimeoutError:
                continue
            except OSError:
                return
            try:
                self._handle(datagram)
            except Exception as err:  # a log line must never stop the receiver
                log.warning("front-door log line dropped: %s", err)

    def close(self) -> None:
        self._stop.set()
        self._thread.join(timeout=5.0)
        self._sock.close()
        with contextlib.suppress(FileNotFoundError):
            self.socket_path.unlink()
        self.sink.close()
