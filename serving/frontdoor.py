"""The front door: an nginx reverse proxy between the network and Triton.

Triton 2.51 has no request-body limit, no authentication, admin APIs that a header unlocks, and
a readiness endpoint that stays 200 while a python-backend worker is dead or stopped. So
``dmfn serve`` makes Triton listen only on unix sockets in its private run folder (mode 0700:
no other local user can connect) and puts nginx on the public ports:

- **authentication** (optional): an API key (``Authorization: Bearer KEY``, HTTP header or gRPC
  metadata) checked by its SHA-256 (:mod:`dmfn.serving.auth`), and/or a client certificate
  signed by ``tls_client_ca`` (mutual TLS). Health endpoints stay open; everything else,
  metrics included, needs them. The key never reaches Triton or a log;
- **bounded cost per client**: HTTP bodies are buffered by the door (``body_buffer_bytes`` in
  memory, the rest in a private temp folder) and reach Triton only once complete; at most
  ``max_requests_per_client`` requests in flight per client (its key name, else its address)
  and ``max_requests`` in all (HTTP 429 / gRPC RESOURCE_EXHAUSTED beyond); headers must arrive
  within ``header_timeout_s`` and each read of a body within ``body_timeout_s``. nginx cannot
  buffer gRPC bodies (its grpc module streams), so a gRPC upload is held by Triton: one client
  costs at most ``max_requests_per_client`` bodies of ``max_body_bytes`` there;
- bodies above the model's largest valid request are refused (HTTP 413 / gRPC
  RESOURCE_EXHAUSTED) from their headers, before they are read;
- the admin APIs (model repository, shared memory, trace, logging) are refused (HTTP 403 / gRPC
  PERMISSION_DENIED) whatever the client sends;
- readiness (HTTP ``/v2/health/ready``, ``/v2/models/*/ready``; gRPC ``ServerReady``,
  ``ModelReady`` and ``grpc.health.v1.Health``) answers "not ready" unless the supervisor's flag
  file exists; a request that finds Triton restarting gets 503 with ``Retry-After``;
- the log (errors, and one line per refused request, without any key) goes to the service's
  :class:`~dmfn.serving.logs.LogReceiver`, which caps its size and counts refusals by reason;
- optional TLS (1.2 and 1.3) for all three ports;
- draining: on SIGQUIT nginx stops accepting connections and lets requests in flight finish,
  for at most ``drain_timeout_s``; :meth:`FrontDoor.reconfigure` switches to another Triton
  (or reloads the keys) without dropping connections.

nginx is Debian's ``nginx`` package and, for API keys, ``libnginx-mod-http-js`` (``make setup``
installs both as root). Its workers run as the service's own user (as root only with
``dmfn serve --allow-root``), since they must reach Triton's sockets.
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

from .auth import NJS_SCRIPT, ApiKeys
from .logs import ERROR_TAG, REFUSAL_TAG
from .spawner import Spawner, child_setup

log = logging.getLogger(__name__)

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
GRPC_UNAUTHENTICATED = 16
#: Seconds a client is asked to wait (Retry-After) while Triton restarts or readiness is false.
RETRY_AFTER_S = 5
#: Seconds a readiness probe waits for Triton before it answers "not ready".
PROBE_TIMEOUT_S = 2
NJS_MODULE = Path("/usr/lib/nginx/modules/ngx_http_js_module.so")
#: Paths open without a key: liveness and readiness (load balancers probe them).
PUBLIC_PATHS = (
    r"^/v2/health/(live|ready)$",
    r"^/inference\.GRPCInferenceService/Server(Live|Ready)$",
    r"^/grpc\.health\.v1\.Health/",
)


class FrontDoorError(RuntimeError):
    """nginx could not be started (message says why)."""


def find_nginx() -> Path | None:
    """The nginx binary on PATH or in /usr/sbin, or None."""
    found = shutil.which("nginx") or shutil.which("nginx", path="/usr/sbin:/usr/local/sbin")
    return Path(found) if found else None


def njs_module() -> Path | None:
    """nginx's JavaScript module (Debian's libnginx-mod-http-js), or None."""
    return NJS_MODULE if NJS_MODULE.is_file() else None


@dataclass(frozen=True)
class FrontDoorConfig:
    """Where the front door listens and what it forwards to (ports on ``host``; Triton and the
    service's own endpoints on unix sockets). Sizes in bytes, times in seconds."""

    run_dir: Path
    ready_flag: Path
    host: str
    http_port: int
    grpc_port: int
    metrics_port: int
    upstream_http: Path
    upstream_grpc: Path
    metrics_socket: Path
    log_socket: Path
    max_body_bytes: int
    #: Where the log receiver writes what nginx sends to ``log_socket`` (for error messages).
    log_file: Path | None = None
    drain_timeout_s: float = 30.0
    workers: int = 1
    tls_cert: Path | None = None
    tls_key: Path | None = None
    tls_client_ca: Path | None = None
    api_keys: ApiKeys | None = None
    max_requests_per_client: int = 16
    max_requests: int = 256
    body_buffer_bytes: int = 256 * 1024
    header_timeout_s: float = 10.0
    body_timeout_s: float = 30.0
    #: Header (``dmfn-audit-<token>``) set on every request passed to Triton, replacing any the
    #: client sent: ``"<unix time, ms> <caller>"``, the caller being the client certificate's
    #: subject, else the API key's name, else ``anonymous <address>``
    #: (:mod:`dmfn.contract.audit`). None: no stamp.
    audit_header: str | None = None

    @property
    def tls(self) -> bool:
        return self.tls_cert is not None

    @property
    def temp_dir(self) -> Path:
        return self.run_dir / "tmp"


def _quote(text: str) -> str:
    return "'" + text.replace("\\", "").replace("'", "") + "'"


def _json_error(message: str) -> str:
    return _quote('{"error":"' + message.replace('"', "") + '"}')


def _grpc_error(status: int, message: str, indent: str) -> str:
    """Lines of a location (or if-block) body answering a gRPC call with ``status``."""
    message = message.replace('"', "").replace("%", " percent")
    return (
        f"{indent}add_header grpc-status {status} always;\n"
        f'{indent}add_header grpc-message "{message}" always;\n'
        f"{indent}return 204;\n"
    )


def _user_line() -> str:
    """As root (``--allow-root``), workers stay root: they must reach Triton's private sockets,
    and a shared user such as nobody would open them to every process of that user."""
    if os.geteuid() != 0:
        return ""
    group = grp.getgrgid(pwd.getpwuid(0).pw_gid).gr_name
    return f"user root {group};\n"


def _tls_lines(cfg: FrontDoorConfig, indent: str = "        ") -> str:
    if not cfg.tls:
        return ""
    lines = [
        f"ssl_certificate {cfg.tls_cert};",
        f"ssl_certificate_key {cfg.tls_key};",
        "ssl_protocols TLSv1.2 TLSv1.3;",
        "ssl_session_cache shared:dmfn_tls:1m;",
    ]
    if cfg.tls_client_ca is not None:
        # optional: load balancers probe health without a certificate; every other path needs
        # a valid one ($dmfn_no_cert), and an invalid one is refused on every path (495)
        lines += [f"ssl_client_certificate {cfg.tls_client_ca};", "ssl_verify_client optional;"]
    return "".join(f"{indent}{line}\n" for line in lines)


def _auth_lines(cfg: FrontDoorConfig) -> str:
    """Server-level checks: a client certificate (496 -> the certificate error page) and an API
    key (401), except on the public health paths."""
    lines = ""
    if cfg.tls_client_ca is not None:
        lines += "        if ($dmfn_no_cert) { return 496; }\n"
    if cfg.api_keys is not None:
        lines += "        if ($dmfn_unauthorized) { return 401; }\n"
    return lines


def _messages(cfg: FrontDoorConfig) -> dict[str, str]:
    return {
        "too_large": (
            f"request body above this server's limit of {cfg.max_body_bytes} bytes "
            f"({cfg.max_body_bytes / 2**20:.1f} MiB): send one study per request, cropped to the "
            "lesion box"
        ),
        "too_many": (
            f"too many requests in flight (at most {cfg.max_requests_per_client} per client, "
            f"{cfg.max_requests} in all): retry later"
        ),
        "denied": "this API is not available through this server",
        "down": "the inference server is restarting: retry in a few seconds",
        "not_ready": "not ready: a worker is stopped or being replaced, or the server is draining",
        "auth": "an API key is required: send the header Authorization: Bearer KEY",
        "cert": "a valid client certificate is required",
    }


def _http_refusals(m: dict[str, str]) -> str:
    """The error pages of an HTTP server for a missing key (401) and a bad certificate (403)."""
    return f"""        error_page 401 @unauthorized;
        location @unauthorized {{
            set $dmfn_refused auth;
            add_header WWW-Authenticate 'Bearer realm="dmfn"' always;
            return 401 {_json_error(m["auth"])};
        }}
        error_page 495 496 =403 @bad_cert;
        location @bad_cert {{ set $dmfn_refused client_cert; return 403 {_json_error(m["cert"])}; }}
"""


def _stamp_line(cfg: FrontDoorConfig, directive: str) -> str:
    """The line that stamps each request passed on with the time and the caller (audit)."""
    if cfg.audit_header is None:
        return ""
    return f'        {directive} {cfg.audit_header} "$msec $dmfn_caller";\n'


#: The caller in the audit stamp: the client certificate's subject (RFC 2253) with the key's
#: name when both are used, else the key's name, else ``anonymous`` and the client's address.
CALLER_MAP = r"""    map "$ssl_client_s_dn|$dmfn_key_id|$remote_addr" $dmfn_caller {
        "~^(?<dmfn_dn>.+)\|(?<dmfn_kn>[^|]+)\|[^|]*$" "$dmfn_dn (key $dmfn_kn)";
        "~^(?<dmfn_dn>.+)\|\|[^|]*$" "$dmfn_dn";
        "~^\|(?<dmfn_kn>[^|]+)\|" "key $dmfn_kn";
        "~^\|\|(?<dmfn_addr>.*)$" "anonymous $dmfn_addr";
        default "unknown";
    }
"""


def _http_server(cfg: FrontDoorConfig) -> str:
    m = _messages(cfg)
    ssl = " ssl" if cfg.tls else ""
    admin = "".join(
        f"        location ^~ {p} {{ set $dmfn_refused admin_api; return 403 {_json_error(m['denied'])}; }}\n"
        for p in ADMIN_HTTP_PREFIXES
    )
    auth = _auth_lines(cfg)
    return f"""    server {{
        listen {cfg.host}:{cfg.http_port}{ssl};
{_tls_lines(cfg)}        set $dmfn_refused "";
{auth}        limit_conn dmfn_client {cfg.max_requests_per_client};
        limit_conn dmfn_total {cfg.max_requests};
        proxy_set_header Connection "";
        proxy_set_header Authorization "";
{_stamp_line(cfg, "proxy_set_header")}{_http_refusals(m)}        error_page 413 @too_large;
        location @too_large {{ return 413 {_json_error(m["too_large"])}; }}
        error_page 429 @too_many;
        location @too_many {{
            add_header Retry-After {RETRY_AFTER_S} always;
            return 429 {_json_error(m["too_many"])};
        }}
        error_page 502 504 =503 @down;
        location @down {{
            add_header Retry-After {RETRY_AFTER_S} always;
            return 503 {_json_error(m["down"])};
        }}

{admin}        location ~ ^/v2/models/.+/trace {{ set $dmfn_refused admin_api; return 403 {_json_error(m["denied"])}; }}
        location ~ ^/v2/(health/ready|models/[^/]+(/versions/[^/]+)?/ready)$ {{
            if (!-f {cfg.ready_flag}) {{
                add_header Retry-After {RETRY_AFTER_S} always;
                return 503 {_json_error(m["not_ready"])};
            }}
            # a hung Triton must not hang the probe: 504 -> @down -> 503
            proxy_connect_timeout {PROBE_TIMEOUT_S}s;
            proxy_read_timeout {PROBE_TIMEOUT_S}s;
            proxy_pass http://triton_http;
        }}
        location / {{
            proxy_pass http://triton_http;
        }}
    }}
"""


def _grpc_server(cfg: FrontDoorConfig) -> str:
    m = _messages(cfg)
    ssl = " ssl" if cfg.tls else ""
    methods = "/" + GRPC_SERVICE.replace(".", "\\.") + "/"
    auth = _auth_lines(cfg)
    i3 = " " * 12
    i4 = " " * 16
    return f"""    server {{
        listen {cfg.host}:{cfg.grpc_port}{ssl} http2;
{_tls_lines(cfg)}        set $dmfn_refused "";
{auth}        limit_conn dmfn_client {cfg.max_requests_per_client};
        limit_conn dmfn_total {cfg.max_requests};
        grpc_set_header Authorization "";
{_stamp_line(cfg, "grpc_set_header")}        error_page 401 @grpc_unauthorized;
        location @grpc_unauthorized {{
            set $dmfn_refused auth;
            default_type application/grpc;
{_grpc_error(GRPC_UNAUTHENTICATED, m["auth"], i3)}        }}
        error_page 495 496 @grpc_bad_cert;
        location @grpc_bad_cert {{
            set $dmfn_refused client_cert;
            default_type application/grpc;
{_grpc_error(GRPC_UNAUTHENTICATED, m["cert"], i3)}        }}
        error_page 413 @grpc_too_large;
        location @grpc_too_large {{
            default_type application/grpc;
{_grpc_error(GRPC_RESOURCE_EXHAUSTED, m["too_large"], i3)}        }}
        error_page 429 @grpc_too_many;
        location @grpc_too_many {{
            default_type application/grpc;
{_grpc_error(GRPC_RESOURCE_EXHAUSTED, m["too_many"], i3)}        }}
        error_page 502 504 @grpc_down;
        location @grpc_down {{
            default_type application/grpc;
{_grpc_error(GRPC_UNAVAILABLE, m["down"], i3)}        }}
        location ~ ^{methods}({ADMIN_GRPC_METHODS}) {{
            set $dmfn_refused admin_api;
            default_type application/grpc;
{_grpc_error(GRPC_PERMISSION_DENIED, m["denied"], i3)}        }}
        location ~ ^({methods}(ServerReady|ModelReady)|/grpc\\.health\\.v1\\.Health/\\w+)$ {{
            default_type application/grpc;
            if (!-f {cfg.ready_flag}) {{
{_grpc_error(GRPC_UNAVAILABLE, m["not_ready"], i4)}            }}
            grpc_connect_timeout {PROBE_TIMEOUT_S}s;
            grpc_read_timeout {PROBE_TIMEOUT_S}s;
            grpc_pass grpc://triton_grpc;
        }}
        location / {{
            grpc_pass grpc://triton_grpc;
        }}
    }}
"""


def _metrics_server(cfg: FrontDoorConfig) -> str:
    m = _messages(cfg)
    ssl = " ssl" if cfg.tls else ""
    auth = _auth_lines(cfg)
    return f"""    server {{
        listen {cfg.host}:{cfg.metrics_port}{ssl};
{_tls_lines(cfg)}        set $dmfn_refused "";
{auth}{_http_refusals(m)}        location = /metrics {{
            default_type text/plain;
            proxy_set_header Authorization "";
            proxy_pass http://unix:{cfg.metrics_socket}:/metrics;
        }}
        location / {{ return 404 {_json_error("only /metrics is served here")}; }}
    }}
"""


def render_nginx_conf(cfg: FrontDoorConfig) -> str:
    """The nginx configuration text of the front door (see the module docstring)."""
    run = cfg.run_dir
    syslog = f"syslog:server=unix:{cfg.log_socket},nohostname"
    public = "".join(f"        ~{p} 1;\n" for p in PUBLIC_PATHS)
    maps = f"""    map $uri $dmfn_public {{
{public}        default 0;
    }}
"""
    load_njs = ""
    if cfg.api_keys is not None:
        load_njs = f"load_module {NJS_MODULE};\n"
        maps += f"""    js_import dmfn_auth from {run / "auth.js"};
    js_set $dmfn_key_digest dmfn_auth.digest;
    map $dmfn_key_digest $dmfn_key_id {{
        default "";
        include {run / "keys.map"};
    }}
    map "$dmfn_public:$dmfn_key_id" $dmfn_unauthorized {{
        "0:" 1;
        default 0;
    }}
"""
    else:
        maps += """    map $host $dmfn_key_id {
        default "";
    }
"""
    if cfg.tls_client_ca is not None:
        maps += """    map "$dmfn_public:$ssl_client_verify" $dmfn_no_cert {
        "0:SUCCESS" 0;
        "~^0:" 1;
        default 0;
    }
"""
    return f"""# dmfn front door (rendered by dmfn.serving.frontdoor; do not edit)
{load_njs}{_user_line()}worker_processes {cfg.workers};
daemon off;
master_process on;
pid {run}/nginx.pid;
error_log {syslog},tag={ERROR_TAG} error;
worker_shutdown_timeout {max(1, round(cfg.drain_timeout_s))}s;

events {{
    worker_connections 4096;
}}

http {{
    server_tokens off;
    map_hash_bucket_size 128;  # the keys map: 64-character digests
    default_type application/json;
    client_max_body_size {cfg.max_body_bytes};
    client_body_buffer_size {cfg.body_buffer_bytes};
    client_header_timeout {cfg.header_timeout_s:g}s;
    client_body_timeout {cfg.body_timeout_s:g}s;
    keepalive_timeout 30s;
    send_timeout 60s;
    large_client_header_buffers 4 8k;
    client_body_temp_path {cfg.temp_dir}/client_body;
    proxy_temp_path {cfg.temp_dir}/proxy;
    fastcgi_temp_path {cfg.temp_dir}/fastcgi;
    uwsgi_temp_path {cfg.temp_dir}/uwsgi;
    scgi_temp_path {cfg.temp_dir}/scgi;
    proxy_request_buffering on;
    proxy_http_version 1.1;
    proxy_read_timeout 600s;
    proxy_send_timeout 600s;
    grpc_read_timeout 600s;
    grpc_send_timeout 600s;

{maps}{CALLER_MAP if cfg.audit_header else ""}    map $dmfn_key_id $dmfn_client {{
        "" $binary_remote_addr;
        default $dmfn_key_id;
    }}
    limit_conn_zone $dmfn_client zone=dmfn_client:10m;
    limit_conn_zone $server_port zone=dmfn_total:1m;
    limit_conn_status 429;
    limit_conn_log_level info;
    map $status $dmfn_refused_status {{
        413 too_large;
        414 uri_too_long;
        429 too_many;
        default "";
    }}
    map "$dmfn_refused$dmfn_refused_status" $dmfn_log_refusal {{
        "" 0;
        default 1;
    }}
    log_format dmfn_refusal escape=json '{{"reason":"$dmfn_refused$dmfn_refused_status",'
        '"status":"$status","method":"$request_method","uri":"$uri",'
        '"client":"$remote_addr","key":"$dmfn_key_id"}}';
    access_log {syslog},tag={REFUSAL_TAG} dmfn_refusal if=$dmfn_log_refusal;

    upstream triton_http {{
        server unix:{cfg.upstream_http};
        keepalive 64;
    }}
    upstream triton_grpc {{
        server unix:{cfg.upstream_grpc};
        keepalive 64;
    }}

{_http_server(cfg)}
{_grpc_server(cfg)}
{_metrics_server(cfg)}}}
"""


def _port_open(host: str, port: int) -> bool:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.settimeout(0.5)
        return sock.connect_ex((host, port)) == 0


class FrontDoor:
    """One nginx master process running :func:`render_nginx_conf` of ``cfg``, started by
    ``spawner`` (it dies with the service)."""

    def __init__(
        self, cfg: FrontDoorConfig, spawner: Spawner | None = None, nginx: Path | None = None
    ) -> None:
        self.cfg = cfg
        self.nginx = nginx or find_nginx()
        self.spawner = spawner
        self.process: subprocess.Popen | None = None

    @property
    def conf_path(self) -> Path:
        return self.cfg.run_dir / "nginx.conf"

    def _nginx(self, *args: str) -> list[str]:
        # -e: nginx's log before it reads its configuration; it would also keep writing there,
        # unrotated, beside the configuration's error_log. Start-up errors still reach the log
        # receiver once the configuration is read, and `nginx -t` reports its own.
        run = str(self.cfg.run_dir)
        return [str(self.nginx), "-p", run, "-e", "/dev/null", "-c", str(self.conf_path), *args]

    def _write_config(self) -> None:
        """Write the configuration (and the keys map) and have nginx check it."""
        if self.nginx is None:
            raise FrontDoorError(
                "nginx was not found: install it (`apt-get install nginx`; `make setup` does this "
                "as root)"
            )
        if self.cfg.api_keys is not None and njs_module() is None:
            raise FrontDoorError(
                f"API keys need nginx's JavaScript module ({NJS_MODULE}): install "
                "libnginx-mod-http-js (`make setup` does this as root)"
            )
        run = self.cfg.run_dir
        for name in ("client_body", "proxy", "fastcgi", "uwsgi", "scgi"):
            (self.cfg.temp_dir / name).mkdir(parents=True, exist_ok=True, mode=0o700)
        if self.cfg.api_keys is not None:
            (run / "auth.js").write_text(NJS_SCRIPT)
            (run / "keys.map").write_text(self.cfg.api_keys.nginx_map())
        self.conf_path.write_text(render_nginx_conf(self.cfg))
        test = subprocess.run(self._nginx("-t", "-q"), capture_output=True, text=True)
        if test.returncode != 0:
            raise FrontDoorError(f"nginx refused its configuration: {test.stderr.strip()}")

    def start(self, timeout_s: float = 15.0) -> None:
        """Start nginx and wait until all three ports accept connections from it."""
        self._write_config()
        popen = self.spawner.popen if self.spawner is not None else subprocess.Popen
        self.process = popen(
            self._nginx(),
            stdin=subprocess.DEVNULL,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
            start_new_session=True,
            preexec_fn=child_setup(),
        )
        host = "127.0.0.1" if self.cfg.host in ("0.0.0.0", "") else self.cfg.host
        ports = (self.cfg.http_port, self.cfg.grpc_port, self.cfg.metrics_port)
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                raise FrontDoorError(
                    f"nginx exited with code {self.process.returncode}: {self.log_tail()}"
                )
            if all(_port_open(host, port) for port in ports) and self._workers():
                return
            time.sleep(0.05)
        self.stop()
        raise FrontDoorError(f"nginx did not open its ports within {timeout_s:.0f} s")

    def log_tail(self, n_lines: int = 10) -> str:
        if self.cfg.log_file is None:
            return ""
        try:
            lines = self.cfg.log_file.read_text(errors="replace").splitlines()
        except OSError:
            return ""
        return "\n".join(lines[-n_lines:])

    def running(self) -> bool:
        return self.process is not None and self.process.poll() is None

    def kill_group(self) -> None:
        """SIGKILL nginx's process group: a killed master leaves its workers holding the ports."""
        process = self.process
        if process is None:
            return
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(process.pid, signal.SIGKILL)
        with contextlib.suppress(Exception):
            process.wait(timeout=5.0)

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
        """Switch to ``cfg`` (another upstream Triton, new keys) without dropping connections:
        new workers take new connections, old ones finish theirs. Returns once new workers run;
        on a refused configuration the old one stays in force."""
        if not self.running():
            raise FrontDoorError("the front door is not running")
        before = set(self._workers())
        previous = self.cfg
        self.cfg = cfg
        try:
            self._write_config()
        except FrontDoorError:
            self.cfg = previous
            with contextlib.suppress(FrontDoorError):
                self._write_config()
            raise
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
