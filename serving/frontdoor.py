"""The front door: an nginx reverse proxy between the network and Triton.

Triton 2.51 has no request-body limit (its HTTP server buffers any body before checking it, and
its gRPC limit is 2 GiB), no per-API deny list that cannot be lifted by a header, and a readiness
endpoint that stays 200 while a python-backend stub is dead. So ``dmfn serve`` binds Triton to
loopback ports and puts nginx on the public ports:

- bodies above the model's largest valid request are refused (HTTP 413 / gRPC
  RESOURCE_EXHAUSTED) from their headers, before they are read;
- the admin APIs (model repository, shared memory, trace, logging) are refused (HTTP 403 / gRPC
  PERMISSION_DENIED) whatever headers the client sends; the header that carries Triton's admin
  key is removed from every request;
- readiness (HTTP ``/v2/health/ready`` and ``/v2/models/*/ready``, gRPC ``ServerReady`` and
  ``ModelReady``) answers "not ready" unless the watchdog's flag file exists, so it tells the
  truth while a worker is being replaced or the server drains;
- optional TLS for both protocols (``tls_cert`` / ``tls_key``);
- draining: on SIGQUIT nginx stops accepting connections and lets requests in flight finish,
  for at most ``drain_timeout_s``;
- switching to another Triton (:meth:`FrontDoor.reconfigure`): nginx reloads its configuration;
  workers with the old one finish their requests while new workers use the new upstream;
- Triton's Prometheus metrics on the public metrics port (``/metrics`` only).

nginx is Debian's ``nginx`` package (``make setup`` installs it as root); its worker processes run
as ``nobody`` when started as root.
"""

from __future__ import annotations

import contextlib
import grp
import logging
import os
import pwd
import shutil
import signal
import socket
import subprocess
import time
from dataclasses import dataclass
from pathlib import Path

log = logging.getLogger(__name__)

#: HTTP header that carries Triton's admin key (restricted APIs). The front door strips it.
ADMIN_HEADER = "dmfn-admin-key"
#: Triton HTTP path prefixes no client may reach (admin APIs).
ADMIN_HTTP_PREFIXES = (
    "/v2/repository",
    "/v2/systemsharedmemory",
    "/v2/cudasharedmemory",
    "/v2/trace",
    "/v2/logging",
)
#: Triton gRPC methods no client may call (admin APIs), as a regex over the method name.
ADMIN_GRPC_METHODS = "Repository|SystemSharedMemory|CudaSharedMemory|TraceSetting|LogSettings"
GRPC_SERVICE = "inference.GRPCInferenceService"
#: gRPC status codes (grpc/status.h).
GRPC_PERMISSION_DENIED = 7
GRPC_RESOURCE_EXHAUSTED = 8
GRPC_UNAVAILABLE = 14


class FrontDoorError(RuntimeError):
    """nginx could not be started (message says why)."""


def find_nginx() -> Path | None:
    """The nginx binary on PATH or in /usr/sbin, or None."""
    found = shutil.which("nginx") or shutil.which("nginx", path="/usr/sbin:/usr/local/sbin")
    return Path(found) if found else None


@dataclass(frozen=True)
class FrontDoorConfig:
    """Where the front door listens and what it forwards to (ports on ``host``; upstreams on
    127.0.0.1). ``max_body_bytes`` is the largest request body accepted."""

    run_dir: Path
    ready_flag: Path
    host: str
    http_port: int
    grpc_port: int
    metrics_port: int
    upstream_http_port: int
    upstream_grpc_port: int
    upstream_metrics_port: int
    max_body_bytes: int
    drain_timeout_s: float = 30.0
    workers: int = 1
    tls_cert: Path | None = None
    tls_key: Path | None = None

    @property
    def tls(self) -> bool:
        return self.tls_cert is not None


def _json_error(message: str) -> str:
    return "'" + '{"error":"' + message.replace("'", "").replace('"', "") + '"}' + "'"


def _grpc_error(status: int, message: str, indent: str) -> str:
    """Lines of a location (or if-block) body answering a gRPC call with ``status``."""
    message = message.replace('"', "").replace("%", " percent")
    return (
        f"{indent}add_header grpc-status {status} always;\n"
        f'{indent}add_header grpc-message "{message}" always;\n'
        f"{indent}return 204;\n"
    )


def _user_line() -> str:
    """Workers drop to nobody when nginx runs as root (nginx ignores `user` otherwise)."""
    if os.geteuid() != 0:
        return ""
    try:
        user = pwd.getpwnam("nobody")
        group = grp.getgrgid(user.pw_gid).gr_name
    except KeyError:
        return ""
    return f"user nobody {group};\n"


def render_nginx_conf(cfg: FrontDoorConfig) -> str:
    """The nginx configuration text of the front door (see the module docstring)."""
    run = cfg.run_dir
    flag = cfg.ready_flag
    ssl = " ssl" if cfg.tls else ""
    tls_lines = ""
    if cfg.tls:
        tls_lines = (
            f"    ssl_certificate {cfg.tls_cert};\n"
            f"    ssl_certificate_key {cfg.tls_key};\n"
            "    ssl_protocols TLSv1.2 TLSv1.3;\n"
        )
    limit_mib = cfg.max_body_bytes / 2**20
    too_large = (
        f"request body above this server's limit of {cfg.max_body_bytes} bytes "
        f"({limit_mib:.1f} MiB): send one study per request, cropped to the lesion box"
    )
    denied = "this API is not available through this server"
    down = "the inference server is restarting: retry in a few seconds"
    not_ready = "not ready: a worker is being replaced or the server is draining"
    admin_prefixes = "".join(
        f"        location ^~ {p} {{ return 403 {_json_error(denied)}; }}\n"
        for p in ADMIN_HTTP_PREFIXES
    )
    grpc_methods = "/" + GRPC_SERVICE.replace(".", "\\.") + "/"
    return f"""# dmfn front door (rendered by dmfn.serving.frontdoor; do not edit)
{_user_line()}worker_processes {cfg.workers};
daemon off;
master_process on;
pid {run}/nginx.pid;
error_log {run}/front_door.log warn;
worker_shutdown_timeout {max(1, round(cfg.drain_timeout_s))}s;

events {{
    worker_connections 4096;
}}

http {{
    access_log off;
    server_tokens off;
    default_type application/json;
    client_max_body_size {cfg.max_body_bytes};
    client_body_buffer_size 1m;
    client_body_temp_path {run}/tmp/client_body;
    proxy_temp_path {run}/tmp/proxy;
    fastcgi_temp_path {run}/tmp/fastcgi;
    uwsgi_temp_path {run}/tmp/uwsgi;
    scgi_temp_path {run}/tmp/scgi;
    proxy_request_buffering off;
    proxy_http_version 1.1;
    proxy_read_timeout 600s;
    proxy_send_timeout 600s;
    grpc_read_timeout 600s;
    grpc_send_timeout 600s;

    upstream triton_http {{
        server 127.0.0.1:{cfg.upstream_http_port};
        keepalive 64;
    }}
    upstream triton_grpc {{
        server 127.0.0.1:{cfg.upstream_grpc_port};
        keepalive 64;
    }}

    server {{
        listen {cfg.host}:{cfg.http_port}{ssl};
{tls_lines}        proxy_set_header Connection "";
        proxy_set_header {ADMIN_HEADER} "";
        error_page 413 @too_large;
        location @too_large {{ return 413 {_json_error(too_large)}; }}
        error_page 502 504 @down;
        location @down {{ return 503 {_json_error(down)}; }}

{admin_prefixes}        location ~ ^/v2/models/.+/trace {{ return 403 {_json_error(denied)}; }}
        location ~ ^/v2/(health/ready|models/[^/]+(/versions/[^/]+)?/ready)$ {{
            if (!-f {flag}) {{ return 503 {_json_error(not_ready)}; }}
            proxy_pass http://triton_http;
        }}
        location / {{
            proxy_pass http://triton_http;
        }}
    }}

    server {{
        listen {cfg.host}:{cfg.grpc_port}{ssl} http2;
{tls_lines}        grpc_set_header {ADMIN_HEADER} "";
        error_page 413 @grpc_too_large;
        location @grpc_too_large {{
            default_type application/grpc;
{_grpc_error(GRPC_RESOURCE_EXHAUSTED, too_large, "            ")}        }}
        error_page 502 504 @grpc_down;
        location @grpc_down {{
            default_type application/grpc;
{_grpc_error(GRPC_UNAVAILABLE, down, "            ")}        }}
        location ~ ^{grpc_methods}({ADMIN_GRPC_METHODS}) {{
            default_type application/grpc;
{_grpc_error(GRPC_PERMISSION_DENIED, denied, "            ")}        }}
        location ~ ^{grpc_methods}(ServerReady|ModelReady)$ {{
            default_type application/grpc;
            if (!-f {flag}) {{
{_grpc_error(GRPC_UNAVAILABLE, not_ready, "                ")}            }}
            grpc_pass grpc://triton_grpc;
        }}
        location / {{
            grpc_pass grpc://triton_grpc;
        }}
    }}

    server {{
        listen {cfg.host}:{cfg.metrics_port};
        location = /metrics {{
            proxy_pass http://127.0.0.1:{cfg.upstream_metrics_port};
        }}
        location / {{ return 404 {_json_error("only /metrics is served here")}; }}
    }}
}}
"""


def _port_open(host: str, port: int) -> bool:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.settimeout(0.5)
        return sock.connect_ex((host, port)) == 0


class FrontDoor:
    """One nginx master process running :func:`render_nginx_conf` of ``cfg``."""

    def __init__(self, cfg: FrontDoorConfig, nginx: Path | None = None) -> None:
        self.cfg = cfg
        self.nginx = nginx or find_nginx()
        self.process: subprocess.Popen | None = None

    @property
    def log_path(self) -> Path:
        return self.cfg.run_dir / "front_door.log"

    def _write_config(self) -> Path:
        conf = self.cfg.run_dir / "nginx.conf"
        conf.write_text(render_nginx_conf(self.cfg))
        test = subprocess.run(
            [
                str(self.nginx), "-t", "-q", "-p", str(self.cfg.run_dir),
                "-e", str(self.log_path), "-c", str(conf),
            ],
            capture_output=True,
            text=True,
        )  # fmt: skip
        if test.returncode != 0:
            raise FrontDoorError(f"nginx refused its configuration: {test.stderr.strip()}")
        return conf

    def _prepare(self) -> Path:
        if self.nginx is None:
            raise FrontDoorError(
                "nginx was not found: install it (`apt-get install nginx`; `make setup` does this "
                "as root) or pass --no-front-door (then request bodies are not limited before "
                "Triton reads them)"
            )
        run = self.cfg.run_dir
        tmp = run / "tmp"
        for name in ("client_body", "proxy", "fastcgi", "uwsgi", "scgi"):
            (tmp / name).mkdir(parents=True, exist_ok=True)
        if os.geteuid() == 0:  # workers run as nobody: they need the temp folders and the flag
            with contextlib.suppress(KeyError, OSError):
                user = pwd.getpwnam("nobody")
                for path in [tmp, *tmp.iterdir()]:
                    os.chown(path, user.pw_uid, user.pw_gid)
            run.chmod(0o755)
        conf = run / "nginx.conf"
        conf.write_text(render_nginx_conf(self.cfg))
        test = subprocess.run(
            [
                str(self.nginx),
                "-t",
                "-q",
                "-p",
                str(run),
                "-e",
                str(self.log_path),
                "-c",
                str(conf),
            ],
            capture_output=True,
            text=True,
        )
        if test.returncode != 0:
            raise FrontDoorError(f"nginx refused its configuration: {test.stderr.strip()}")
        return conf

    def start(self, timeout_s: float = 15.0) -> None:
        """Start nginx and wait until both ports accept connections."""
        conf = self._prepare()
        self.process = subprocess.Popen(
            [
                str(self.nginx),
                "-p",
                str(self.cfg.run_dir),
                "-e",
                str(self.log_path),
                "-c",
                str(conf),
            ],
            stdin=subprocess.DEVNULL,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
            start_new_session=True,
        )
        host = "127.0.0.1" if self.cfg.host in ("0.0.0.0", "") else self.cfg.host
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                raise FrontDoorError(
                    f"nginx exited with code {self.process.returncode}: {self.log_tail()}"
                )
            ports = (self.cfg.http_port, self.cfg.grpc_port, self.cfg.metrics_port)
            if all(_port_open(host, port) for port in ports):
                return
            time.sleep(0.05)
        self.stop()
        raise FrontDoorError(f"nginx did not open its ports within {timeout_s:.0f} s")

    def log_tail(self, n_lines: int = 10) -> str:
        try:
            lines = self.log_path.read_text(errors="replace").splitlines()
        except OSError:
            return ""
        return "\n".join(lines[-n_lines:])

    def running(self) -> bool:
        return self.process is not None and self.process.poll() is None

    def _workers(self) -> dict[int, bool]:
        """Worker pid -> True if it is still on an old configuration (shutting down)."""
        from .processes import processes

        process = self.process  # another thread may stop the front door meanwhile
        if process is None:
            return {}
        return {
            p.pid: "shutting down" in " ".join(p.argv)
            for p in processes()
            if p.ppid == process.pid and p.state not in ("Z", "X")
        }

    def reconfigure(self, cfg: FrontDoorConfig, timeout_s: float = 10.0) -> None:
        """Switch to ``cfg`` (e.g. another upstream Triton) without dropping connections: new
        workers take new connections, old ones finish theirs. Returns once new workers run."""
        if not self.running():
            raise FrontDoorError("the front door is not running")
        before = set(self._workers())
        self.cfg = cfg
        self._write_config()
        assert self.process is not None
        self.process.send_signal(signal.SIGHUP)
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            workers = self._workers()
            fresh = [pid for pid, old in workers.items() if not old and pid not in before]
            # An old worker stops accepting connections before it calls itself "shutting down".
            stale = [pid for pid, old in workers.items() if pid in before and not old]
            if len(fresh) >= cfg.workers and not stale:
                return
            time.sleep(0.02)
        raise FrontDoorError(
            f"nginx did not start workers with its new configuration in {timeout_s:g} s"
        )

    def wait_old_workers(self, timeout_s: float) -> bool:
        """Wait until no worker runs an old configuration; False on timeout."""
        deadline = time.monotonic() + timeout_s + 5.0
        while time.monotonic() < deadline:
            if not any(self._workers().values()):
                return True
            time.sleep(0.05)
        return False

    def drain(self) -> int | None:
        """Graceful stop: stop accepting connections, let requests in flight finish (at most the
        drain timeout, then nginx closes them), and wait for the exit. Returns the exit code."""
        return self._signal_and_wait(signal.SIGQUIT, self.cfg.drain_timeout_s + 10.0)

    def stop(self) -> int | None:
        """Fast stop (SIGTERM), for error paths."""
        return self._signal_and_wait(signal.SIGTERM, 10.0)

    def _signal_and_wait(self, signum: int, timeout_s: float) -> int | None:
        from .processes import stop_process

        process, self.process = self.process, None
        if process is None:
            return None
        return stop_process(process, signum, timeout_s, "nginx")
