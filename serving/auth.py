"""API keys of ``dmfn serve``: a file of named SHA-256 digests, checked inside the front door.

The keys file (``dmfn serve --api-keys FILE``; written by ``dmfn keys``) holds one key per line::

    # dmfn API keys: NAME sha256:HEX (the digest of the key; the key itself is shown once)
    pacs-gateway sha256:9f86d081884c7d659a2feaa0c55ad015a3bf4f1b2b0b822cd15d6c15b0f00a08

A client sends ``Authorization: Bearer KEY`` (HTTP header or gRPC metadata). The front door
computes the key's SHA-256 with nginx's JavaScript module and looks the digest up in a map
rendered from this file; the name is what the logs and the per-client limits use. Keys are
random 256-bit tokens, so one SHA-256 is the right digest (as for GitHub's tokens): nothing
stored on the server opens the service, and a stolen keys file reveals no key.

Reloading: the service re-reads the file when it changes (or on SIGHUP) and reloads the door
without dropping connections; a file that does not parse keeps the previous keys in force.
"""

from __future__ import annotations

import hashlib
import hmac
import os
import re
import secrets
import stat
from dataclasses import dataclass
from pathlib import Path

PREFIX = "dmfn_"
NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.@-]{0,63}$")
_LINE = re.compile(r"^(?P<name>\S+)\s+sha256:(?P<digest>[0-9a-f]{64})$")
HEADER = "# dmfn API keys: NAME sha256:HEX (the digest of the key; the key itself is shown once)\n"
#: nginx JavaScript (njs) that the front door loads: the SHA-256 of the bearer token, or "".
NJS_SCRIPT = """// dmfn front door: the SHA-256 of the request's bearer token (rendered by dmfn.serving.auth)
var crypto = require('crypto');
function digest(r) {
    var value = r.headersIn['Authorization'] || '';
    var m = /^Bearer\\s+(\\S{16,512})$/i.exec(value);
    return m ? crypto.createHash('sha256').update(m[1]).digest('hex') : '';
}
export default {digest};
"""


class KeysFileError(ValueError):
    """The keys file is missing, unsafe or malformed (the message names the file and line)."""


def new_key() -> str:
    """A fresh API key: ``dmfn_`` and 43 URL-safe characters (256 random bits)."""
    return PREFIX + secrets.token_urlsafe(32)


def key_digest(key: str) -> str:
    """Hex SHA-256 of ``key`` (what the keys file stores)."""
    return hashlib.sha256(key.encode()).hexdigest()


@dataclass(frozen=True)
class ApiKeys:
    """Named key digests: ``((name, sha256 hex), ...)`` in file order."""

    entries: tuple[tuple[str, str], ...]

    @property
    def names(self) -> tuple[str, ...]:
        return tuple(name for name, _ in self.entries)

    def name_of(self, key: str) -> str | None:
        """The name of ``key`` if it is one of these keys, else None (constant-time compare)."""
        digest = key_digest(key)
        found = None
        for name, stored in self.entries:
            if hmac.compare_digest(stored, digest):
                found = name
        return found

    def nginx_map(self) -> str:
        """Lines of an nginx ``map`` block: digest -> key name."""
        return "".join(f'    "{digest}" "{name}";\n' for name, digest in self.entries)

    def text(self) -> str:
        return HEADER + "".join(f"{name} sha256:{digest}\n" for name, digest in self.entries)

    @classmethod
    def parse(cls, text: str, where: str = "keys file") -> ApiKeys:
        entries: list[tuple[str, str]] = []
        for number, raw in enumerate(text.splitlines(), start=1):
            line = raw.strip()
            if not line or line.startswith("#"):
                continue
            match = _LINE.match(line)
            if match is None or not NAME.match(match["name"]):
                raise KeysFileError(
                    f"{where} line {number}: expected 'NAME sha256:HEX' (NAME: letters, digits, "
                    "_ . @ -, at most 64; HEX: 64 lowercase hex digits); write keys with "
                    "`dmfn keys new`"
                )
            if match["name"] in {n for n, _ in entries}:
                raise KeysFileError(f"{where} line {number}: the name {match['name']!r} repeats")
            entries.append((match["name"], match["digest"]))
        return cls(tuple(entries))

    @classmethod
    def load(cls, path: Path) -> ApiKeys:
        """Read ``path``; refuses a file that other users may write (they could add a key)."""
        path = Path(path)
        try:
            info = path.stat()
            text = path.read_text()
        except OSError as err:
            raise KeysFileError(f"keys file {path}: cannot be read ({err.strerror})") from None
        if not stat.S_ISREG(info.st_mode):
            raise KeysFileError(f"keys file {path}: not a regular file")
        if info.st_mode & (stat.S_IWGRP | stat.S_IWOTH):
            raise KeysFileError(
                f"keys file {path}: writable by other users (mode {stat.S_IMODE(info.st_mode):o}); "
                f"anyone who can write it can add a key: chmod 600 {path}"
            )
        keys = cls.parse(text, f"keys file {path}")
        if not keys.entries:
            raise KeysFileError(
                f"keys file {path}: holds no key, so every request would be refused; add one "
                f"with `dmfn keys new NAME --file {path}`"
            )
        return keys


def file_stamp(path: Path) -> tuple[float, int, int]:
    """(mtime, size, inode) of ``path``, or zeros when it cannot be read: what tells a reload."""
    try:
        info = Path(path).stat()
    except OSError:
        return (0.0, -1, 0)
    return (info.st_mtime, info.st_size, info.st_ino)


def write_keys(path: Path, keys: ApiKeys) -> None:
    """Write ``keys`` to ``path`` (mode 0600, replaced atomically)."""
    path = Path(path)
    tmp = path.with_name(f".{path.name}.tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w") as handle:
        handle.write(keys.text())
    os.replace(tmp, path)
