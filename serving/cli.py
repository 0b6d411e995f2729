"""``dmfn serve``: the options -> :class:`~dmfn.serving.service.DmfnService`, run until Ctrl-C /
SIGTERM, then drained and stopped; the banner and the exit status (0 a clean stop, 1 the server
failed, 2 a usage error)."""

from __future__ import annotations

import argparse
import logging
import signal
import sys
from pathlib import Path

from .auth import KeysFileError
from .config import MODEL_NAMES
from .frontdoor import FrontDoorError
from .logs import DEFAULT_MAX_BYTES
from .service import LOOPBACK, DmfnService, ServiceConfig, ServiceEvent
from .triton import PortInUseError, TritonError

log = logging.getLogger("dmfn.serve")

EXIT_OK = 0
EXIT_SERVER = 1
EXIT_USAGE = 2


def build_parser() -> argparse.ArgumentParser:
    """The ``dmfn serve`` argument parser."""
    d = ServiceConfig.__dataclass_fields__
    parser = argparse.ArgumentParser(
        prog="dmfn serve",
        description=(
            "Serve a model repository written by `dmfn export` with a real Triton Inference "
            f"Server ({', '.join(MODEL_NAMES)}). Triton listens only on unix sockets in a "
            "private folder; an nginx front door on the public ports checks API keys and client "
            "certificates, refuses oversized bodies before reading them, buffers bodies, limits "
            "requests per client, refuses the admin APIs (model loading, shared memory, trace, "
            "logging) and answers readiness truthfully. A supervisor replaces dead or stuck "
            "workers and restarts Triton or nginx if they exit. Runs until Ctrl-C or SIGTERM, "
            "then drains: no new connections, requests in flight finish within --drain-timeout "
            "seconds. SIGHUP reloads the API keys. Refuses to run as root without --allow-root. "
            "Exit status: 0 after a clean stop, 1 when the server failed, 2 for a usage error. "
            "A hospital setup (service user, TLS, keys): docs/deploy.md."
        ),
    )
    parser.add_argument(
        "--repository",
        "--model-repository",
        type=Path,
        default=Path("build/model_repository"),
        help="model repository folder written by `dmfn export` (default: build/model_repository)",
    )
    parser.add_argument(
        "--tritonserver",
        type=Path,
        default=None,
        help="tritonserver binary (default: the one bundled in the nvidia-pytriton wheel; in "
        "NGC's container: /opt/tritonserver/bin/tritonserver)",
    )
    net = parser.add_argument_group("network and security")
    net.add_argument(
        "--host",
        default="127.0.0.1",
        help="address the three public ports bind to (default 127.0.0.1, this machine only). "
        "To serve other machines, use --tls-cert/--tls-key and --api-keys or --tls-client-ca",
    )
    net.add_argument("--http-port", type=int, default=8000, help="HTTP/REST port (8000)")
    net.add_argument("--grpc-port", type=int, default=8001, help="gRPC port (8001)")
    net.add_argument(
        "--metrics-port",
        type=int,
        default=8002,
        help="Prometheus port (8002): same TLS, keys and client certificates as the others",
    )
    net.add_argument(
        "--tls-cert",
        type=Path,
        default=None,
        help="PEM certificate: HTTPS, gRPC over TLS and HTTPS metrics (with --tls-key)",
    )
    net.add_argument("--tls-key", type=Path, default=None, help="PEM private key of --tls-cert")
    net.add_argument(
        "--tls-client-ca",
        type=Path,
        default=None,
        help="PEM of the authority that signs client certificates: mutual TLS, every request "
        "needs a client certificate it signed (needs --tls-cert)",
    )
    net.add_argument(
        "--api-keys",
        type=Path,
        default=None,
        help="keys file written by `dmfn keys new`: every request but the health checks needs "
        "'Authorization: Bearer KEY'. Re-read when it changes or on SIGHUP",
    )
    net.add_argument(
        "--max-requests-per-client",
        type=int,
        default=d["max_requests_per_client"].default,
        help="requests in flight per client (its key's name, else its address); beyond: 429 / "
        f"RESOURCE_EXHAUSTED ({d['max_requests_per_client'].default})",
    )
    net.add_argument(
        "--max-requests",
        type=int,
        default=d["max_requests"].default,
        help=f"requests in flight in all ({d['max_requests'].default})",
    )
    net.add_argument(
        "--allow-root",
        action="store_true",
        help="run as root (refused otherwise: the front door and the workers parse what "
        "clients send). Meant for containers where root is the only user",
    )
    health = parser.add_argument_group("health and repairs")
    health.add_argument(
        "--drain-timeout",
        type=float,
        default=d["drain_timeout_s"].default,
        help="seconds requests in flight get to finish after SIGTERM/Ctrl-C "
        f"({d['drain_timeout_s'].default:g})",
    )
    health.add_argument(
        "--canary-interval",
        type=float,
        default=d["canary_interval_s"].default,
        help="seconds between health-check requests through the pipeline; a stuck pipeline "
        "turns readiness false within this plus --stall-timeout; 0 = only at start and repairs "
        f"({d['canary_interval_s'].default:g})",
    )
    health.add_argument(
        "--stall-timeout",
        type=float,
        default=d["stall_timeout_s"].default,
        help="seconds a health-check request may go unanswered, while no other request "
        f"completes either, before readiness turns false ({d['stall_timeout_s'].default:g})",
    )
    health.add_argument(
        "--repair-after",
        type=float,
        default=d["repair_after_s"].default,
        help="seconds a stalled pipeline or a stopped worker may last before Triton is "
        f"replaced ({d['repair_after_s'].default:g})",
    )
    health.add_argument(
        "--max-restarts",
        type=int,
        default=d["max_restarts"].default,
        help="replacements of Triton in a row, each after it served less than "
        f"{d['stable_after_s'].default:g} s, before dmfn serve gives up and exits with status 1 "
        f"(a crash loop; a single failure after a stable run does not count) "
        f"({d['max_restarts'].default})",
    )
    health.add_argument(
        "--ready-timeout",
        type=float,
        default=d["ready_timeout_s"].default,
        help="seconds to wait for the server to become ready before giving up "
        f"({d['ready_timeout_s'].default:g})",
    )
    logs = parser.add_argument_group("logs")
    logs.add_argument(
        "--log-dir",
        type=Path,
        default=None,
        help="folder for triton.log and front_door.log (refused requests, errors; never a key); "
        "default: Triton's log on the terminal, the front door's in the run folder",
    )
    logs.add_argument(
        "--log-max-mb",
        type=float,
        default=DEFAULT_MAX_BYTES / 2**20,
        help="size at which a log is rotated, MiB "
        f"({DEFAULT_MAX_BYTES / 2**20:g}); lines are cut at 1 KiB (4 KiB for Triton)",
    )
    logs.add_argument(
        "--log-backups",
        type=int,
        default=d["log_backups"].default,
        help=f"rotated files kept per log ({d['log_backups'].default})",
    )
    logs.add_argument(
        "--log-verbose", type=int, default=0, help="Triton's --log-verbose level (0 = off)"
    )
    logs.add_argument(
        "--audit-log",
        default=None,
        metavar="PATH|off",
        help="the audit trail: one JSON line per study the pipeline answered or refused "
        "(caller, request id, outcome, top class; no identifier), rotated by size "
        "($DMFN_AUDIT_MAX_BYTES, $DMFN_AUDIT_BACKUPS); 'off' for none; default: audit.jsonl "
        "in --log-dir, else ~/.local/state/dmfn/server-audit.jsonl",
    )
    return parser


def banner(service: DmfnService) -> str:
    """What a ready server prints: its addresses, model, limits and authentication."""
    c = service.config
    scheme = service.scheme
    lines = [
        f"dmfn serve: ready after {service.ready_seconds:.1f} s, serving {', '.join(MODEL_NAMES)} "
        f"from {c.repository}",
        f"  HTTP    {scheme}://{service.http_url}   (readiness: {scheme}://{service.http_url}"
        "/v2/health/ready)",
        f"  gRPC    {service.grpc_url}{' (TLS)' if c.tls_cert else ''}",
        f"  metrics {service.metrics_url}",
    ]
    model = service.provenance
    if model is not None:
        trained = model.get("model_trained") or "date unknown"
        synthetic = {"true": ", SYNTHETIC training data", "false": ""}.get(
            model.get("model_synthetic", ""), ", training data unknown"
        )
        lines.append(
            f"  model   sha256 {model.get('model_sha256') or 'unknown'}, trained {trained}{synthetic}"
        )
    if service.limits is not None:
        lines.append(
            f"  front door: bodies up to {service.limits.max_body_bytes() / 2**20:.1f} MiB, "
            f"{c.max_requests_per_client} requests in flight per client, {c.max_requests} in all; "
            "admin APIs closed; readiness false while a worker is stuck or replaced, or on drain"
        )
    auth = []
    if service.api_keys is not None:
        auth.append(f"{len(service.api_keys.entries)} API key(s) from {c.api_keys}")
    if c.tls_client_ca is not None:
        auth.append(f"client certificates signed by {c.tls_client_ca}")
    lines.append("  authentication: " + (" and ".join(auth) if auth else "none"))
    if service.front_door_log is not None:
        lines.append(f"  front-door log: {service.front_door_log}")
    audit = (service.audit_env or {}).get("DMFN_AUDIT_LOG")
    lines.append(f"  audit trail: {audit or 'off'}")
    if c.host not in LOOPBACK and (c.tls_cert is None or not auth):
        missing = " and ".join(
            w for w, off in (("TLS", c.tls_cert is None), ("authentication", not auth)) if off
        )
        lines.append(f"  WARNING: reachable from the network without {missing}; see docs/deploy.md")
    lines.append("Press Ctrl-C to stop.")
    return "\n".join(lines)


def _print_event(event: ServiceEvent) -> None:
    print(f"dmfn serve: {event.message}", file=sys.stderr, flush=True)


def main(argv: list[str] | None = None) -> int:
    """Entry point of ``dmfn serve``; returns the process exit code."""
    args = build_parser().parse_args(argv)
    logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(name)s: %(message)s")
    # the service's events are printed once, by _print_event; its logger keeps only errors
    logging.getLogger("dmfn.serve").setLevel(logging.ERROR)
    try:
        config = ServiceConfig(
            repository=args.repository,
            host=args.host,
            http_port=args.http_port,
            grpc_port=args.grpc_port,
            metrics_port=args.metrics_port,
            tritonserver=args.tritonserver,
            log_dir=args.log_dir,
            log_max_bytes=int(args.log_max_mb * 2**20),
            log_backups=args.log_backups,
            log_verbose=args.log_verbose,
            tls_cert=args.tls_cert,
            tls_key=args.tls_key,
            tls_client_ca=args.tls_client_ca,
            audit_log=None if args.audit_log in (None, "off") else Path(args.audit_log),
            audit=args.audit_log != "off",
            api_keys=args.api_keys,
            max_requests_per_client=args.max_requests_per_client,
            max_requests=args.max_requests,
            drain_timeout_s=args.drain_timeout,
            canary_interval_s=args.canary_interval or None,
            stall_timeout_s=args.stall_timeout,
            repair_after_s=args.repair_after,
            max_restarts=args.max_restarts,
            ready_timeout_s=args.ready_timeout,
            allow_root=args.allow_root,
        )
    except ValueError as err:
        print(f"dmfn serve: {err}", file=sys.stderr)
        return EXIT_USAGE
    service = DmfnService(config)
    service.on_event(_print_event)
    stop_signals = (signal.SIGTERM, signal.SIGINT)
    previous = {s: signal.getsignal(s) for s in stop_signals}

    def on_signal(signum: int, frame: object) -> None:
        print(
            f"dmfn serve: {signal.Signals(signum).name}: draining (at most "
            f"{config.drain_timeout_s:g} s) ...",
            file=sys.stderr,
            flush=True,
        )
        service.request_stop()

    def on_hangup(signum: int, frame: object) -> None:
        service.supervisor.reload_requested = True

    for s in stop_signals:
        signal.signal(s, on_signal)
    previous[signal.SIGHUP] = signal.signal(signal.SIGHUP, on_hangup)
    try:
        try:
            service.start()
        except (PortInUseError, ValueError, KeysFileError) as err:
            print(f"dmfn serve: {err}", file=sys.stderr)
            return EXIT_USAGE
        except (TritonError, FrontDoorError) as err:
            print(f"dmfn serve: {err}", file=sys.stderr)
            return EXIT_SERVER
        if service.failure is None and not service.stopping:
            print(banner(service), flush=True)
        service.wait()
        code = service.shutdown()
        if service.failure is not None:
            print(f"dmfn serve: failed: {service.failure}", file=sys.stderr)
        else:
            print(f"dmfn serve: stopped (exit code {code})", file=sys.stderr)
        return code
    finally:
        for s, handler in previous.items():
            signal.signal(s, handler)


if __name__ == "__main__":
    sys.exit(main())
