"""What the truthful health checks of `dmfn serve` cost: CPU time of the whole service with the
canary on (one small study through the pipeline every second, the default) and off, side by
side in one run, on the committed demo model, idle and under a closed-loop load.

Prints, per setting: CPU seconds the service's processes used per wall second (supervisor,
nginx, Triton and its workers, from /proc), the canary's round trip, and the throughput of 4
clients sending studies in a loop. Not a test: run it by hand (about a minute)::

    .venv/bin/python benchmarks/health_cost.py [--seconds 15]
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
import threading
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "tests"))


def _cpu_seconds(pid: int) -> float:
    """utime + stime of ``pid`` and its descendants (living ones, plus reaped children)."""
    from dmfn.serving.processes import processes

    tick = os.sysconf("SC_CLK_TCK")
    children: dict[int, list[int]] = {}
    for proc in processes():
        children.setdefault(proc.ppid, []).append(proc.pid)
    total, todo = 0.0, [pid]
    while todo:
        current = todo.pop()
        todo += children.get(current, [])
        try:
            fields = Path(f"/proc/{current}/stat").read_text().rsplit(")", 1)[1].split()
            total += sum(int(x) for x in fields[11:15]) / tick  # utime stime cutime cstime
        except (OSError, IndexError, ValueError):
            pass
    return total


def _load(service, seconds: float, threads: int = 4) -> float:
    """Requests per second of ``threads`` closed-loop clients over ``seconds``."""
    import tritonclient.http as httpclient
    from serving_utils import infer_inputs, make_studies, study_arrays

    arrays = study_arrays(make_studies(1, 5))
    done = [0] * threads
    stop = time.monotonic() + seconds

    def run(i: int) -> None:
        client = httpclient.InferenceServerClient(service.http_url, network_timeout=60)
        while time.monotonic() < stop:
            client.infer("dmfn_pipeline", infer_inputs(httpclient, arrays))
            done[i] += 1
        client.close()

    workers = [threading.Thread(target=run, args=(i,)) for i in range(threads)]
    for w in workers:
        w.start()
    for w in workers:
        w.join()
    return sum(done) / seconds


def measure(repo: Path, logs: Path, canary: float | None, seconds: float) -> dict:
    from service_utils import service_config

    from dmfn.serving.service import DmfnService

    service = DmfnService(service_config(repo, logs, canary_interval_s=canary))
    service.start()
    try:
        time.sleep(2.0)
        own = os.getpid()
        c0, t0 = _cpu_seconds(own), time.monotonic()
        time.sleep(seconds)
        idle = (_cpu_seconds(own) - c0) / (time.monotonic() - t0)
        rate = _load(service, seconds)
        return {
            "canary": "off" if canary is None else f"every {canary:g} s",
            "idle_cpu": idle,
            "canary_ms": (service.supervisor.last_canary_s or 0.0) * 1000,
            "rps": rate,
        }
    finally:
        service.shutdown()


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--seconds", type=float, default=15.0)
    args = parser.parse_args()
    from dmfn.resources import demo_checkpoint
    from dmfn.serving.config import ServingSettings
    from dmfn.training.export import export

    with tempfile.TemporaryDirectory(prefix="dmfn-health-") as tmp:
        repo = Path(tmp) / "repo"
        export(demo_checkpoint(), repo, ServingSettings(), parity_studies=2)
        rows = [
            measure(repo, Path(tmp) / f"logs{i}", canary, args.seconds)
            for i, canary in enumerate((None, 1.0, None, 1.0))  # interleaved: drift shows
        ]
    print(
        f"{'canary':12} {'idle CPU (cores)':>17} {'canary round trip':>18} {'4 clients, req/s':>17}"
    )
    for r in rows:
        print(
            f"{r['canary']:12} {r['idle_cpu']:>17.4f} {r['canary_ms']:>15.1f} ms {r['rps']:>17.1f}"
        )
    return 0


if __name__ == "__main__":
    sys.exit(main())
