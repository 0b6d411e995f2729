"""The metrics endpoint of ``dmfn serve``: Triton's Prometheus metrics plus the service's own.

A small HTTP server on a unix socket of the private run folder; the front door forwards
``GET /metrics`` of the public metrics port to it (behind the same TLS and keys as inference).
It answers Triton's own metrics (read from the current Triton's metrics socket) followed by the
``dmfn_*`` metrics of :func:`render_service_metrics`.
"""

from __future__ import annotations

import contextlib
import http.server
import logging
import os
import socketserver
import threading
from collections.abc import Callable, Mapping
from pathlib import Path

from . import uds

log = logging.getLogger(__name__)

CONTENT_TYPE = "text/plain; version=0.0.4; charset=utf-8"


def _labels(labels: Mapping[str, str]) -> str:
    if not labels:
        return ""
    body = ",".join(
        f'{k}="{str(v).replace(chr(92), chr(92) * 2).replace(chr(34), chr(92) + chr(34))}"'
        for k, v in labels.items()
    )
    return "{" + body + "}"


def render_service_metrics(
    ready: bool,
    refusals: Mapping[str, int],
    events: Mapping[str, int],
    api_keys: int | None,
    audit_failures: int | None = None,
) -> str:
    """The ``dmfn_*`` metrics in Prometheus text format.

    ``refusals``: refused requests by reason; ``events``: supervisor events by kind
    (``worker_replaced``, ``triton_restarted``, ``front_door_restarted``, ...); ``api_keys``: the
    number of keys in force (None: keys are off); ``audit_failures``: audit lines the models
    could not write (None: the audit trail is off).
    """
    lines = [
        "# HELP dmfn_ready Whether dmfn serve reports ready (1) or not (0).",
        "# TYPE dmfn_ready gauge",
        f"dmfn_ready {int(ready)}",
        "# HELP dmfn_refused_requests_total Requests the front door refused, by reason.",
        "# TYPE dmfn_refused_requests_total counter",
    ]
    lines += [
        f"dmfn_refused_requests_total{_labels({'reason': r})} {n}"
        for r, n in sorted(refusals.items())
    ]
    lines += [
        "# HELP dmfn_supervisor_events_total Repairs and failures of the supervisor, by kind.",
        "# TYPE dmfn_supervisor_events_total counter",
    ]
    lines += [
        f"dmfn_supervisor_events_total{_labels({'kind': k})} {n}" for k, n in sorted(events.items())
    ]
    if api_keys is not None:
        lines += [
            "# HELP dmfn_api_keys API keys in force.",
            "# TYPE dmfn_api_keys gauge",
            f"dmfn_api_keys {api_keys}",
        ]
    if audit_failures is not None:
        lines += [
            "# HELP dmfn_audit_write_failures_total Audit lines the served models could not write.",
            "# TYPE dmfn_audit_write_failures_total counter",
            f"dmfn_audit_write_failures_total {audit_failures}",
        ]
    return "\n".join(lines) + "\n"


class _UnixHTTPServer(socketserver.ThreadingMixIn, socketserver.UnixStreamServer):
    daemon_threads = True


class MetricsServer:
    """Serves ``GET /metrics`` on ``socket_path``: the bytes of ``triton_metrics()`` (Triton's
    text, or "" when it cannot be read) followed by ``service_metrics()``."""

    def __init__(
        self,
        socket_path: Path,
        triton_socket: Callable[[], Path | None],
        service_metrics: Callable[[], str],
    ) -> None:
        self.socket_path = Path(socket_path)
        owner = self

        class Handler(http.server.BaseHTTPRequestHandler):
            def do_GET(self) -> None:
                if self.path.split("?")[0] != "/metrics":
                    self.send_error(404)
                    return
                body = owner.render().encode()
                self.send_response(200)
                self.send_header("Content-Type", CONTENT_TYPE)
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

            def log_message(self, format: str, *args: object) -> None:
                pass

        self._triton_socket = triton_socket
        self._service_metrics = service_metrics
        with contextlib.suppress(FileNotFoundError):
            self.socket_path.unlink()
        old = os.umask(0o077)
        try:
            self._server = _UnixHTTPServer(str(self.socket_path), Handler)
        finally:
            os.umask(old)
        self._thread = threading.Thread(
            target=self._server.serve_forever, name="dmfn-metrics", daemon=True
        )
        self._thread.start()

    def render(self) -> str:
        text = ""
        path = self._triton_socket()
        if path is not None:
            status, body = uds.request(path, "GET", "/metrics", timeout_s=5.0)
            if status == 200:
                text = body.decode(errors="replace")
            else:
                log.warning("Triton's metrics could not be read (%s)", status or body[:200])
        if text and not text.endswith("\n"):
            text += "\n"
        return text + self._service_metrics()

    def close(self) -> None:
        self._server.shutdown()
        self._server.server_close()
        self._thread.join(timeout=5.0)
        with contextlib.suppress(FileNotFoundError):
            self.socket_path.unlink()
