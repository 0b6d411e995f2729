"""How a client proves who it is to ``dmfn serve``: an API key and/or a client certificate.

An API key travels as ``Authorization: Bearer KEY`` (an HTTP header, or gRPC metadata). It is
never taken from a command line, where every local user can read it: the SDK takes it as an
argument, else from ``$DMFN_API_KEY``, else from the file named by ``$DMFN_API_KEY_FILE``;
``dmfn predict`` also has ``--api-key-file``. A client certificate (mutual TLS, ``dmfn serve
--tls-client-ca``) is a PEM certificate and its PEM private key.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

API_KEY_ENV = "DMFN_API_KEY"
API_KEY_FILE_ENV = "DMFN_API_KEY_FILE"
#: Longest key accepted (the server's check reads at most 512 characters).
MAX_KEY_CHARS = 512


def read_key_file(path: Path | str, argument: str = "api_key_file") -> str:
    """The key in ``path`` (its first non-empty line); ValueError naming ``argument``."""
    try:
        lines = [line.strip() for line in Path(path).read_text().splitlines()]
    except (OSError, UnicodeDecodeError) as err:
        reason = getattr(err, "strerror", None) or type(err).__name__
        raise ValueError(f"argument '{argument}': {path} cannot be read ({reason})") from None
    key = next((line for line in lines if line), "")
    if not key:
        raise ValueError(f"argument '{argument}': {path} holds no key")
    return key


def _check_key(key: str, argument: str) -> str:
    if (
        not isinstance(key, str)
        or not key
        or len(key) > MAX_KEY_CHARS
        or any(c.isspace() or not c.isprintable() for c in key)
    ):
        raise ValueError(
            f"argument '{argument}': an API key is 1 to {MAX_KEY_CHARS} printable characters "
            "without spaces"
        )
    return key


@dataclass(frozen=True)
class Credentials:
    """An API key (None: none sent) and a client certificate with its key (PEM file paths)."""

    api_key: str | None = None
    client_cert: str | None = None
    client_key: str | None = None

    def __repr__(self) -> str:  # never show the key
        shown = "set" if self.api_key else "None"
        return f"Credentials(api_key={shown}, client_cert={self.client_cert!r})"

    @classmethod
    def resolve(
        cls,
        api_key: str | None = None,
        client_cert: str | Path | None = None,
        client_key: str | Path | None = None,
    ) -> Credentials:
        """Check the arguments (ValueError naming the argument); a missing key is taken from
        ``$DMFN_API_KEY`` or the file ``$DMFN_API_KEY_FILE``."""
        if api_key is None:
            if os.environ.get(API_KEY_ENV):
                api_key = _check_key(os.environ[API_KEY_ENV].strip(), API_KEY_ENV)
            elif os.environ.get(API_KEY_FILE_ENV):
                api_key = read_key_file(os.environ[API_KEY_FILE_ENV], API_KEY_FILE_ENV)
        if api_key is not None:
            api_key = _check_key(api_key, "api_key")
        if (client_cert is None) != (client_key is None):
            raise ValueError("arguments 'client_cert' and 'client_key': give both or neither")
        for name, path in (("client_cert", client_cert), ("client_key", client_key)):
            if path is not None and not Path(path).is_file():
                raise ValueError(f"argument '{name}': {path} is not a file")
        return cls(
            api_key,
            None if client_cert is None else str(client_cert),
            None if client_key is None else str(client_key),
        )

    @property
    def has_certificate(self) -> bool:
        return self.client_cert is not None

    def headers(self, protocol: str) -> dict[str, str] | None:
        """The request headers (gRPC metadata keys are lower case), or None."""
        if not self.api_key:
            return None
        return {
            "authorization" if protocol == "grpc" else "Authorization": f"Bearer {self.api_key}"
        }
