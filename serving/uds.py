"""HTTP over a unix-domain socket: how ``dmfn serve`` talks to its own Triton and to itself.

Triton's HTTP, gRPC and metrics endpoints listen on unix sockets in the service's private run
folder (mode 0700), so no other local user can reach them, whatever their key or port guess.
"""

from __future__ import annotations

import http.client
import socket
from pathlib import Path


class UnixHTTPConnection(http.client.HTTPConnection):
    """An :class:`http.client.HTTPConnection` to the HTTP server listening on ``path``."""

    def __init__(self, path: Path | str, timeout: float = 30.0) -> None:
        super().__init__("localhost", timeout=timeout)
        self.socket_path = str(path)

    def connect(self) -> None:
        sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        sock.settimeout(self.timeout)
        try:
            sock.connect(self.socket_path)
        except OSError:
            sock.close()
            raise
        self.sock = sock


def request(
    path: Path | str,
    method: str,
    url: str,
    body: bytes | None = None,
    headers: dict[str, str] | None = None,
    timeout_s: float = 30.0,
) -> tuple[int, bytes]:
    """One HTTP request to the server on unix socket ``path``: (status, body). Status 0 with the
    error text as body when the server cannot be reached."""
    connection = UnixHTTPConnection(path, timeout_s)
    try:
        connection.request(method, url, body=body, headers=headers or {})
        response = connection.getresponse()
        return response.status, response.read()
    except OSError as err:
        return 0, str(err).encode()
    finally:
        connection.close()
