"""Run the Locust load test headless against a dmfn server and write ``DIR/summary.json``.

With no ``--url`` it exports the committed demo model, starts its own ``dmfn serve`` on free
ports, and stops it afterwards. It warms the server up, records the resident memory of the server's
whole process tree (supervisor, nginx, Triton, its workers) after the warm-up and every few
seconds during the run (``DIR/rss.csv``), then runs Locust for ``--duration`` seconds.

Exit status: 0 when every good request succeeded, every malformed one was refused and the server
was ready at the end; 1 otherwise; 2 for a usage error.
"""

from __future__ import annotations

import argparse
import csv
import json
import os
import signal
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="loadtests/run.sh",
        description="Locust load test of dmfn_pipeline (see loadtests/README.md).",
    )
    p.add_argument("--users", type=int, default=8, help="concurrent clients (8)")
    p.add_argument("--duration", type=float, default=60.0, help="seconds of load (60)")
    p.add_argument("--url", default=None, help="host:port of a running server (default: start one)")
    p.add_argument("--protocol", choices=("http", "grpc"), default="http")
    p.add_argument(
        "--malformed", type=float, default=0.05, help="share of malformed requests (0.05)"
    )
    p.add_argument(
        "--warmup", type=int, default=40, help="good requests before memory is read (40)"
    )
    p.add_argument(
        "--checkpoint",
        type=Path,
        default=ROOT / "models" / "dmfn_demo.pt",
        help="model served when no --url is given (the committed demo model)",
    )
    p.add_argument(
        "--server-pid", type=int, default=None, help="pid of the server to measure (with --url)"
    )
    p.add_argument(
        "--secure",
        action="store_true",
        help="the server it starts serves TLS, needs a client certificate and an API key (a "
        "throwaway certificate authority and key are made for the run); the clients use them",
    )
    p.add_argument("--out", type=Path, required=True, help="folder for the reports")
    return p


def tree_rss_mb(pid: int | None) -> float | None:
    if pid is None:
        return None
    from dmfn.serving.processes import tree_rss_bytes

    value = tree_rss_bytes(pid)
    return round(value / 2**20, 1) if value else None


def rss_by_process_mb(pid: int | None) -> dict[str, float] | None:
    if pid is None:
        return None
    from dmfn.serving.processes import tree_rss

    return {k: round(v / 2**20, 1) for k, v in sorted(tree_rss(pid).items())}


def _ready(url: str, protocol: str, tls: dict[str, str]) -> bool:
    """The server's readiness as a client sees it (server and dmfn_pipeline ready)."""
    from dmfn.client.sdk import DmfnClient

    with DmfnClient(url, protocol, timeout_s=10, **tls) as client:
        return client.is_ready()


def _secure(workdir: Path) -> tuple[list[str], dict[str, str], str]:
    """A throwaway CA, server and client certificates and one API key: (dmfn serve options,
    the clients' TLS arguments, the key)."""
    from dmfn.serving.auth import ApiKeys, key_digest, new_key, write_keys
    from dmfn.serving.testpki import make_test_pki

    pki = make_test_pki(workdir / "pki")
    key = new_key()
    write_keys(workdir / "keys", ApiKeys((("loadtest", key_digest(key)),)))
    serve = [
        "--tls-cert", str(pki["server.pem"]), "--tls-key", str(pki["server.key"]),
        "--tls-client-ca", str(pki["ca.pem"]), "--api-keys", str(workdir / "keys"),
    ]  # fmt: skip
    tls = {
        "ca_cert": str(pki["ca.pem"]),
        "client_cert": str(pki["client.pem"]),
        "client_key": str(pki["client.key"]),
    }
    return serve, tls, key


def _start_server(
    checkpoint: Path, workdir: Path, protocol: str, extra: list[str]
) -> tuple[subprocess.Popen, str]:
    from dmfn.serving.triton import free_ports

    repo = workdir / "repo"
    dmfn = [sys.executable, "-m", "dmfn.cli"]
    subprocess.run(
        [*dmfn, "export", "--checkpoint", str(checkpoint), "--out", str(repo)],
        check=True,
        stdout=subprocess.DEVNULL,
    )
    http, grpc, metrics = free_ports(3)
    server = subprocess.Popen(
        [
            *dmfn, "serve", "--repository", str(repo), "--http-port", str(http),
            "--grpc-port", str(grpc), "--metrics-port", str(metrics),
            "--log-dir", str(workdir / "logs"), *extra,
            *(["--allow-root"] if os.geteuid() == 0 else []),
        ],
        stdout=subprocess.PIPE,
        text=True,
    )  # fmt: skip
    line = server.stdout.readline()
    if "ready after" not in line:
        server.kill()
        raise SystemExit(f"run.sh: the server did not start: {line.strip()}")
    threading.Thread(target=server.stdout.read, daemon=True).start()  # keep the pipe drained
    return server, f"127.0.0.1:{http if protocol == 'http' else grpc}"


def _locust(
    args: argparse.Namespace, url: str, seconds: float, prefix: str, tls: dict[str, str]
) -> int:
    """Run the locustfile headless for ``seconds``; its reports go to ``DIR/<prefix>*``."""
    command = [
        sys.executable, "-m", "locust", "-f", str(HERE / "locustfile.py"), "--headless",
        "-u", str(args.users), "-r", str(args.users), "-t", f"{seconds:g}s", "--host", url,
        "--protocol", args.protocol, "--malformed", str(args.malformed),
        "--csv", str(args.out / prefix), "--only-summary", "--stop-timeout", "30",
        "--loglevel", "WARNING",
    ]  # fmt: skip
    for name, path in tls.items():
        command += [f"--{name.replace('_', '-')}", path]
    env = dict(os.environ)
    if args.api_key:
        env["DMFN_API_KEY"] = args.api_key  # the SDK reads it; never on a command line
    if prefix == "locust":
        command += ["--html", str(args.out / "report.html")]
    else:
        command += ["--skip-log"]
    return subprocess.run(
        command, cwd=ROOT, stdout=subprocess.DEVNULL if prefix != "locust" else None, env=env
    ).returncode


def _stats(path: Path) -> dict[str, dict[str, str]]:
    with path.open() as f:
        return {row["Name"]: row for row in csv.DictReader(f)}


def main(argv: list[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    if args.users < 1 or args.duration <= 0 or not 0 <= args.malformed <= 1:
        print(
            "run.sh: --users >= 1, --duration > 0 and 0 <= --malformed <= 1 are required",
            file=sys.stderr,
        )
        return 2
    args.out.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(prefix="dmfn-load-") as tmp:
        server, pid, url = None, args.server_pid, args.url
        serve_options: list[str] = []
        tls: dict[str, str] = {}
        args.api_key = None
        if args.secure:
            if url is not None:
                print("run.sh: --secure starts its own server: drop --url", file=sys.stderr)
                return 2
            serve_options, tls, args.api_key = _secure(Path(tmp))
        if url is None:
            server, url = _start_server(args.checkpoint, Path(tmp), args.protocol, serve_options)
            pid = server.pid
        try:
            if args.warmup > 0:
                _locust(args, url, args.warmup, "warmup", tls)
            rss_start = tree_rss_mb(pid)
            by_process_start = rss_by_process_mb(pid)
            samples: list[tuple[float, float | None]] = []
            stop = threading.Event()

            def sample() -> None:
                t0 = time.monotonic()
                while not stop.wait(5.0):
                    samples.append((round(time.monotonic() - t0, 1), tree_rss_mb(pid)))

            sampler = threading.Thread(target=sample, daemon=True)
            sampler.start()
            locust_code = _locust(args, url, args.duration, "locust", tls)
            stop.set()
            sampler.join()
            rss_end = tree_rss_mb(pid)
            by_process_end = rss_by_process_mb(pid)
            ready = _ready(url, args.protocol, {**tls, "api_key": args.api_key} if tls else {})
        finally:
            if server is not None:
                server.send_signal(signal.SIGTERM)
                server.wait(timeout=120)
    with (args.out / "rss.csv").open("w") as f:
        f.write("seconds,rss_mb\n" + "".join(f"{t},{v}\n" for t, v in samples))
    stats = _stats(args.out / "locust_stats.csv")
    good = stats.get("predict", {})
    bad = stats.get("malformed", {})
    summary = {
        "users": args.users,
        "duration_s": args.duration,
        "protocol": args.protocol,
        "secure": args.secure,
        "malformed_share": args.malformed,
        "good_requests": int(good.get("Request Count", 0)),
        "good_failures": int(good.get("Failure Count", 0)),
        "malformed_requests": int(bad.get("Request Count", 0)),
        "malformed_refused": int(bad.get("Request Count", 0)) - int(bad.get("Failure Count", 0)),
        "p50_ms": float(good.get("50%", "nan")),
        "p95_ms": float(good.get("95%", "nan")),
        "p99_ms": float(good.get("99%", "nan")),
        "rps": round(float(good.get("Requests/s", "nan")), 2),
        "rss_start_mb": rss_start,
        "rss_end_mb": rss_end,
        "rss_growth": round(rss_end / rss_start - 1.0, 4) if rss_start and rss_end else None,
        "ready_at_end": ready,
        "rss_start_by_process_mb": by_process_start,
        "rss_end_by_process_mb": by_process_end,
        "locust_exit_code": locust_code,
    }
    (args.out / "summary.json").write_text(json.dumps(summary, indent=2) + "\n")
    print(json.dumps(summary, indent=2))
    ok = (
        summary["good_failures"] == 0
        and summary["good_requests"] > 0
        and summary["malformed_refused"] == summary["malformed_requests"]
        and ready
    )
    return 0 if ok else 1


if __name__ == "__main__":
    os.environ.setdefault("PYTHONUNBUFFERED", "1")
    sys.exit(main())
