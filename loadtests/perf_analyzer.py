"""Triton's own perf_analyzer on ``dmfn_pipeline`` with realistic studies, at concurrency 1 to 16:
the cross-check of the Locust numbers (``loadtests/run.sh``).

The binary comes from the tritonclient 2.50.0 wheel (later wheels ship none or need a newer glibc)
with libcudart from the nvidia-cuda-runtime-cu12 wheel and Debian's libb64-0d; the first run
downloads the two wheels from PyPI into ``build/perf_analyzer/`` (``--tools``) and, as root,
installs libb64-0d with apt. With no ``--url`` it exports the demo model and starts its own
``dmfn serve``, like run.sh. The studies are the load test's (``loadtests/studies.py``), sent as
``dmfn predict`` would (``build_request``), written as perf_analyzer input data (base64).

Writes ``DIR/perf_<concurrency>.csv`` (perf_analyzer's own report) and ``DIR/summary.json``:
per concurrency the throughput (inferences/s), p50 / p90 / p99 latency (ms) and the server-side
split (queue and compute per model, from Triton's statistics as perf_analyzer reports them).
"""

from __future__ import annotations

import argparse
import base64
import csv
import json
import os
import shutil
import struct
import subprocess
import sys
import tempfile
import zipfile
from pathlib import Path

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent
sys.path.insert(0, str(HERE))

TRITONCLIENT_WHEEL = "tritonclient==2.50.0"
CUDART_WHEEL = "nvidia-cuda-runtime-cu12"
CONCURRENCY = (1, 2, 4, 8, 16)


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="loadtests/perf_analyzer.sh", description=__doc__.split("\n")[0]
    )
    p.add_argument("--url", default=None, help="host:port (HTTP) of a running server")
    p.add_argument("--concurrency", default=",".join(map(str, CONCURRENCY)),
                   help="comma-separated concurrency levels (1,2,4,8,16)")  # fmt: skip
    p.add_argument("--seconds", type=float, default=6.0, help="measurement window per level (6)")
    p.add_argument("--studies", type=int, default=8, help="distinct studies sent in turn (8)")
    p.add_argument("--checkpoint", type=Path, default=ROOT / "models" / "dmfn_demo.pt")
    p.add_argument("--tools", type=Path, default=ROOT / "build" / "perf_analyzer",
                   help="where the perf_analyzer binary and libcudart are unpacked")  # fmt: skip
    p.add_argument("--out", type=Path, required=True, help="folder for the reports")
    return p


def _pip_download(requirement: str, folder: Path) -> Path:
    subprocess.run(
        [sys.executable, "-m", "pip", "download", "--no-deps", "--only-binary=:all:",
         "--platform", "manylinux2014_x86_64", "-q", "-d", str(folder), requirement],
        check=True, stderr=subprocess.DEVNULL,
    )  # fmt: skip
    name = requirement.split("=")[0].replace("-", "_")
    return next(folder.glob(f"{name}-*.whl"))


def ensure_tools(tools: Path) -> tuple[Path, dict[str, str]]:
    """The perf_analyzer binary and the environment it runs in (unpacked on first use)."""
    binary = tools / "perf_analyzer"
    libs = tools / "lib"
    if not binary.is_file():
        tools.mkdir(parents=True, exist_ok=True)
        with tempfile.TemporaryDirectory() as tmp:
            wheel = _pip_download(TRITONCLIENT_WHEEL, Path(tmp))
            with zipfile.ZipFile(wheel) as z:
                member = next(n for n in z.namelist() if n.endswith("/bin/perf_analyzer"))
                binary.write_bytes(z.read(member))
            binary.chmod(0o755)
            cudart = _pip_download(CUDART_WHEEL, Path(tmp))
            libs.mkdir(exist_ok=True)
            with zipfile.ZipFile(cudart) as z:
                member = next(n for n in z.namelist() if n.endswith("/libcudart.so.12"))
                (libs / "libcudart.so.12").write_bytes(z.read(member))
    if not Path("/usr/lib/x86_64-linux-gnu/libb64.so.0d").exists():
        if os.geteuid() == 0:
            subprocess.run(["apt-get", "install", "-y", "-q", "libb64-0d"], check=False,
                           stdout=subprocess.DEVNULL)  # fmt: skip
        else:
            raise SystemExit(
                "perf_analyzer.sh: needs the Debian package libb64-0d (apt-get install)"
            )
    env = dict(os.environ)
    env["LD_LIBRARY_PATH"] = f"{libs}:{env.get('LD_LIBRARY_PATH', '')}"
    return binary, env


def _bytes_tensor(values: list[bytes]) -> bytes:
    """Triton's serialisation of a BYTES tensor: each element as a 4-byte length, then bytes."""
    return b"".join(struct.pack("<I", len(v)) + v for v in values)


def input_data(n: int, contract) -> dict:
    """perf_analyzer's JSON input data: ``n`` studies in turn, each tensor base64-encoded."""
    from studies import make_studies

    from dmfn.contract import schema as S
    from dmfn.contract.wire import build_request

    limits = contract.limits.ctc_ranges[0] if contract.limits is not None else (0.0, 40.0)
    rows = []
    for study in make_studies(n, seed=7, ctc_range=limits):
        arrays = build_request(study, contract)
        row = {}
        for spec in S.Schema().request_inputs:
            array = arrays[spec.name]
            if spec.dtype == "BYTES":
                raw = _bytes_tensor([bytes(v) for v in array.reshape(-1)])
            else:
                raw = array.astype(spec.numpy_dtype).tobytes()
            row[spec.name] = {"b64": base64.b64encode(raw).decode(), "shape": list(array.shape[1:])}
        rows.append(row)
    return {"data": rows}


def _summary_row(path: Path) -> dict[str, float]:
    with path.open() as f:
        row = next(csv.DictReader(f))
    us = {k: float(v) for k, v in row.items() if k and v and k != "Concurrency"}
    return {
        "throughput": us.get("Inferences/Second", 0.0),
        "p50_ms": us.get("p50 latency", 0.0) / 1000,
        "p90_ms": us.get("p90 latency", 0.0) / 1000,
        "p99_ms": us.get("p99 latency", 0.0) / 1000,
        "server_queue_ms": us.get("Server Queue", 0.0) / 1000,
        "server_compute_ms": (
            us.get("Server Compute Input", 0.0) + us.get("Server Compute Infer", 0.0)
            + us.get("Server Compute Output", 0.0)
        ) / 1000,
        "client_send_recv_ms": (us.get("Client Send", 0.0) + us.get("Client Recv", 0.0)) / 1000,
    }  # fmt: skip


def main(argv: list[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    args.out.mkdir(parents=True, exist_ok=True)
    binary, env = ensure_tools(args.tools)
    from run import _start_server

    from dmfn.client.sdk import DmfnClient

    server = None
    workdir = Path(tempfile.mkdtemp(prefix="dmfn-perf-"))
    try:
        url = args.url
        if url is None:
            server, url = _start_server(args.checkpoint, workdir, "http")
        with DmfnClient(url, "http") as client:
            contract = client.contract
        data = args.out / "input_data.json"
        data.write_text(json.dumps(input_data(args.studies, contract)))
        results = {}
        for level in (int(c) for c in args.concurrency.split(",")):
            report = args.out / f"perf_{level}.csv"
            command = [
                str(binary), "-m", "dmfn_pipeline", "-u", url, "-i", "http",
                "--input-data", str(data), "--concurrency-range", f"{level}:{level}",
                "--measurement-interval", str(int(args.seconds * 1000)),
                "--percentile", "50", "-f", str(report), "--verbose-csv",
            ]  # fmt: skip
            done = subprocess.run(command, env=env, capture_output=True, text=True)
            if done.returncode != 0:
                print(done.stdout[-2000:], done.stderr[-2000:], file=sys.stderr)
                return 1
            results[level] = _summary_row(report)
            r = results[level]
            print(f"concurrency {level:>2}: {r['throughput']:7.1f} inferences/s, p50 "
                  f"{r['p50_ms']:6.1f} ms, p99 {r['p99_ms']:6.1f} ms")  # fmt: skip
        (args.out / "summary.json").write_text(json.dumps(results, indent=2) + "\n")
    finally:
        if server is not None:
            server.terminate()
            server.wait(timeout=60)
        shutil.rmtree(workdir, ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
