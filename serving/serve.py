"""``dmfn serve``: run the dmfn inference service (Triton behind its front door, supervised)
until Ctrl-C / SIGTERM, then drain and stop. See :mod:`dmfn.serving.service`."""

from __future__ import annotations

import argparse
import logging
import signal
import sys
from pathlib import Path

from .config import MODEL_NAMES
from .frontdoor import FrontDoorError
from .service import DmfnService, ServiceConfig, ServiceEvent
from .triton import PortInUseError, TritonError

log = logging.getLogger("dmfn.serve")

EXIT_OK = 0
EXIT_SERVER = 1
EXIT_USAGE = 2


def build_parser() -> argparse.ArgumentParser:
    d = ServiceConfig.__dataclass_fields__
    parser = argparse.ArgumentParser(
        prog="dmfn serve",
        description=(
            "Serve a model repository written by `dmfn export` with a real Triton Inference "
            f"Server ({', '.join(MODEL_NAMES)}). Triton listens on loopback only; an nginx front "
            "door on the public ports refuses oversized bodies before reading them, refuses the "
            "admin APIs (model loading, shared memory, trace, logging) and answers readiness "
            "truthfully. A supervisor replaces dead workers and restarts Triton if it exits. "
            "Runs until Ctrl-C or SIGTERM, then drains: no new connections, requests in flight "
            "finish within --drain-timeout seconds. Exit status: 0 after a clean stop, 1 when "
            "the server failed, 2 for a usage error."
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
    parser.add_argument(
        "--host",
        default="127.0.0.1",
        help="address the public endpoints bind to (default 127.0.0.1, this machine only). To "
        "serve other machines, use --tls-cert/--tls-key, or a reverse proxy with "
        "authentication (docs/deploy.md)",
    )
    parser.add_argument("--http-port", type=int, default=8000, help="HTTP/REST port (8000)")
    parser.add_argument("--grpc-port", type=int, default=8001, help="gRPC port (8001)")
    parser.add_argument("--metrics-port", type=int, default=8002, help="Prometheus port (8002)")
    parser.add_argument(
        "--tls-cert",
        type=Path,
        default=None,
        help="PEM certificate: serve HTTPS and gRPC over TLS (with --tls-key)",
    )
    parser.add_argument("--tls-key", type=Path, default=None, help="PEM private key of --tls-cert")
    parser.add_argument(
        "--drain-timeout",
        type=float,
        default=d["drain_timeout_s"].default,
        help="seconds requests in flight get to finish after SIGTERM/Ctrl-C "
        f"({d['drain_timeout_s'].default:g})",
    )
    parser.add_argument(
        "--canary-interval",
        type=float,
        default=d["canary_interval_s"].default,
        help="seconds between health-check requests through the pipeline; 0 = only after a "
        f"repair ({d['canary_interval_s'].default:g})",
    )
    parser.add_argument(
        "--max-restarts",
        type=int,
        default=d["max_restarts"].default,
        help="times Triton is restarted after it exits on its own, within "
        f"{d['restart_window_s'].default:g} s, before dmfn serve gives up and exits with status 1 "
        f"({d['max_restarts'].default})",
    )
    parser.add_argument(
        "--no-front-door",
        action="store_true",
        help="let Triton listen on the public ports itself, without nginx (then bodies are not "
        "limited before Triton reads them and readiness is Triton's own); admin APIs stay locked",
    )
    parser.add_argument(
        "--ready-timeout",
        type=float,
        default=d["ready_timeout_s"].default,
        help="seconds to wait for the server to become ready before giving up "
        f"({d['ready_timeout_s'].default:g})",
    )
    parser.add_argument(
        "--log-file",
        type=Path,
        default=None,
        help="write Triton's log to this file instead of the terminal",
    )
    parser.add_argument(
        "--log-verbose", type=int, default=0, help="Triton's --log-verbose level (0 = off)"
    )
    return parser


def banner(service: DmfnService) -> str:
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
    if c.front_door and service.limits is not None:
        lines.append(
            f"  front door: request bodies up to {service.limits.max_body_bytes() / 2**20:.1f} "
            "MiB; admin APIs closed; readiness false while a worker is replaced or on drain"
        )
    else:
        lines.append("  no front door: Triton listens on the public ports itself")
    if c.host not in ("127.0.0.1", "localhost", "::1") and c.tls_cert is None:
        lines.append(
            "  WARNING: reachable from the network without TLS or authentication; see "
            "docs/deploy.md"
        )
    lines.append("Press Ctrl-C to stop.")
    return "\n".join(lines)


def _print_event(event: ServiceEvent) -> None:
    print(f"dmfn serve: {event.message}", file=sys.stderr, flush=True)


def main(argv: list[str] | None = None) -> int:
    """Entry point of ``dmfn serve``; returns the process exit code."""
    args = build_parser().parse_args(argv)
    logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(name)s: %(message)s")
    try:
        config = ServiceConfig(
            repository=args.repository,
            host=args.host,
            http_port=args.http_port,
            grpc_port=args.grpc_port,
            metrics_port=args.metrics_port,
            tritonserver=args.tritonserver,
            log_path=args.log_file,
            log_verbose=args.log_verbose,
            front_door=not args.no_front_door,
            tls_cert=args.tls_cert,
            tls_key=args.tls_key,
            drain_timeout_s=args.drain_timeout,
            canary_interval_s=args.canary_interval or None,
            max_restarts=args.max_restarts,
            ready_timeout_s=args.ready_timeout,
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

    for s in stop_signals:
        signal.signal(s, on_signal)
    try:
        try:
            service.start()
        except (PortInUseError, ValueError) as err:
            print(f"dmfn serve: {err}", file=sys.stderr)
            return EXIT_USAGE
        except (TritonError, FrontDoorError) as err:
            print(f"dmfn serve: {err}", file=sys.stderr)
            return EXIT_SERVER
        if service.failure is None and not service._stop.is_set():
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
