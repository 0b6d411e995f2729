"""``dmfn serve``: run Triton Inference Server on a dmfn model repository until Ctrl-C / SIGTERM."""

from __future__ import annotations

import argparse
import logging
import signal
import sys
import time
from pathlib import Path

from .config import MODEL_NAMES
from .triton import PortInUseError, TritonError, TritonServer

log = logging.getLogger("dmfn.serve")

EXIT_USAGE = 2
EXIT_SERVER = 1


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="dmfn serve",
        description=(
            "Start a real Triton Inference Server on a model repository written by `dmfn export`, "
            f"loading only {', '.join(MODEL_NAMES)} (explicit model control). Waits until the "
            "server is ready, prints the endpoints and runs until Ctrl-C or SIGTERM, then shuts "
            "the server down cleanly."
        ),
    )
    parser.add_argument(
        "--repository",
        "--model-repository",
        type=Path,
        default=Path("build/model_repository"),
        help="model repository folder written by `dmfn export` (default: build/model_repository, "
        "where `dmfn export` writes by default)",
    )
    parser.add_argument(
        "--tritonserver",
        type=Path,
        default=None,
        help="tritonserver binary to run (default: the one bundled in the nvidia-pytriton wheel; "
        "in NGC's container: /opt/tritonserver/bin/tritonserver)",
    )
    parser.add_argument(
        "--host",
        default="127.0.0.1",
        help="address the HTTP, gRPC and metrics endpoints bind to (default 127.0.0.1, this "
        "machine only; 0.0.0.0 exposes them to the network)",
    )
    parser.add_argument("--http-port", type=int, default=8000, help="HTTP/REST port (8000)")
    parser.add_argument("--grpc-port", type=int, default=8001, help="gRPC port (8001)")
    parser.add_argument("--metrics-port", type=int, default=8002, help="Prometheus port (8002)")
    parser.add_argument(
        "--ready-timeout",
        type=float,
        default=180.0,
        help="seconds to wait for the server to become ready before giving up (180)",
    )
    parser.add_argument(
        "--log-file",
        type=Path,
        default=None,
        help="write the server's log to this file instead of the terminal",
    )
    parser.add_argument(
        "--log-verbose", type=int, default=0, help="Triton's --log-verbose level (0 = off)"
    )
    return parser


def _raise_interrupt(signum: int, frame: object) -> None:
    raise KeyboardInterrupt(signal.Signals(signum).name)


def main(argv: list[str] | None = None) -> int:
    """Entry point of ``dmfn serve``; returns the process exit code."""
    args = build_parser().parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    server: TritonServer | None = None
    previous = signal.signal(signal.SIGTERM, _raise_interrupt)
    try:
        try:
            server = TritonServer(
                repository=args.repository,
                host=args.host,
                http_port=args.http_port,
                grpc_port=args.grpc_port,
                metrics_port=args.metrics_port,
                tritonserver=args.tritonserver,
                log_path=args.log_file,
                log_verbose=args.log_verbose,
            )
            server.start()
            seconds = server.wait_ready(args.ready_timeout)
        except PortInUseError as err:
            print(f"dmfn serve: {err}", file=sys.stderr)
            return EXIT_USAGE
        except ValueError as err:
            print(f"dmfn serve: {err}", file=sys.stderr)
            return EXIT_USAGE
        except TritonError as err:
            print(f"dmfn serve: {err}", file=sys.stderr)
            return EXIT_SERVER
        print(
            f"Triton is ready after {seconds:.1f} s, serving {', '.join(server.models)} from "
            f"{args.repository}\n"
            f"  HTTP    http://{server.http_url}   (e.g. curl http://{server.http_url}/v2/health/ready)\n"
            f"  gRPC    {server.grpc_url}\n"
            f"  metrics {server.metrics_url}\n"
            "Press Ctrl-C to stop.",
            flush=True,
        )
        while server.process is not None and server.process.poll() is None:
            time.sleep(0.5)
        code = server.process.returncode if server.process is not None else None
        print(f"dmfn serve: tritonserver exited on its own (code {code})", file=sys.stderr)
        return EXIT_SERVER
    except KeyboardInterrupt:
        if server is None:
            return 0
        print("dmfn serve: shutting down Triton ...", file=sys.stderr, flush=True)
        code = server.stop()
        print(f"dmfn serve: stopped (exit code {code})", file=sys.stderr)
        return 0
    finally:
        if server is not None:
            server.stop()
        signal.signal(signal.SIGTERM, previous)
