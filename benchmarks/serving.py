"""Serving benchmark: the Triton ensemble against the in-process floor and a FastAPI peer.

In one run, on the same exported model and the same synthetic studies (ROI crops as the client
SDK sends them: int16 HU, spacing, mask, CTC, clinical), driven by the same closed-loop client
(N threads, each sends a request, waits for the answer, sends the next) at each concurrency:

(a) floor: the server's own work called in-process (no server, no serialisation):
    ``preprocess_request`` on the request's wire tensors (decode, limits, ``preprocess_study``),
    ONNX Runtime, and the ``Postprocessor`` with the exported model's class sets and OOD fit;
    each thread runs the kernels with the OpenMP thread count of the serving settings (1, the
    fastest on ROI crops, as the preprocess model does) and ONNX Runtime does not busy-wait.
    (Before 2026-12-07 the floor was ``preprocess_study`` + ONNX Runtime only: less work than the
    server does, so its gap to Triton included the wire decode and the postprocess.)
(b) triton: the ``dmfn_pipeline`` ensemble on the bundled Triton (HTTP, binary tensors), repository
    written by ``dmfn export --target cpu`` with the default serving settings;
(c) fastapi: what a user might write instead: a plain FastAPI app on uvicorn (one process, an
    async endpoint that runs the work in the threadpool), the same ``preprocess_study`` call and
    the PyTorch model in eager mode (``torch.no_grad``), binary request body (``.npz``), JSON
    response with the same outputs (probabilities, top-3, malignant probability, measurements).
    Its process runs with OMP_NUM_THREADS=1 (``--fastapi-omp-threads``), its best setting here.

(d) triton-before (``--before``): the same Triton repository with the serving settings dmfn used
    before the latency work (5 ms net and 1 ms preprocess batching delays), so the gain is
    measured side by side.

Prints throughput (requests/s) and p50/p95/p99 latency (ms) per system and concurrency, failed
requests, where the time goes inside Triton (per model: queue and compute per request, from
Triton's statistics API), the net's mean batch, and the targets, for every backbone of
``--backbones``:

- Triton's p50 at concurrency 1 within 3 ms of the floor's;
- Triton's best throughput at least 0.9x the floor's best (issue 25);
- Triton at least FastAPI at every concurrency;
- no failed request.

Results on synthetic data; this measures speed only. Run it on a quiet machine (``uptime``)::

    .venv/bin/python benchmarks/serving.py [--duration 10] [--backbones regnetx_tiny,regnety_400mf]
"""

import argparse
import http.client
import io
import json
import os
import subprocess
import sys
import tempfile
import threading
import time
import urllib.request
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from dmfn.client.sdk import infer_inputs
from dmfn.contract import schema as S
from dmfn.contract.params import PreprocessParams
from dmfn.preprocess import preprocess_request, preprocess_study
from dmfn.preprocess.threads import set_openmp_threads

#: preprocess_study's arguments, in order (what the in-process floor and FastAPI receive).
RAW_NAMES = ("hu", "spacing_mm", "mask", "ctc", "clinical")
RESPONSE_NAMES = [t.name for t in S.Schema().response_outputs]
CPUS = len(os.sched_getaffinity(0))


# --------------------------------------------------------------------------- model and data
def make_checkpoint(path: Path, backbone: str, params: PreprocessParams, seed: int = 0) -> Path:
    """An untrained DMFN with ``backbone`` (speed does not depend on the weights)."""
    import torch

    from dmfn.contract.taxonomy import load_taxonomy
    from dmfn.training.checkpoint import Checkpoint
    from dmfn.training.untrained import untrained_model

    torch.manual_seed(seed)
    taxonomy = load_taxonomy()
    rng = np.random.default_rng(seed)
    tabular = rng.normal(size=(16, len(S.CLINICAL_FIELDS) + 1))
    model = untrained_model("dmfn", backbone, len(taxonomy), tabular.astype(np.float32)).eval()
    # calibration data drawn at random: the served class sets and OOD flag cost the same
    # whatever their thresholds (dmfn export needs them since the class sets exist)
    n_val, n_classes = 64, len(taxonomy)
    calibration = {
        "class_names": list(taxonomy.names),
        "val_probs": rng.dirichlet(np.ones(n_classes), n_val).astype(np.float32),
        "val_labels": rng.integers(0, n_classes, n_val),
        "val_image_ids": [f"v{k}" for k in range(n_val)],
        "val_patient_ids": [f"p{k}" for k in range(n_val)],
        "train_ood_scores": rng.normal(-3.0, 1.0, 256).astype(np.float32),
        "temperature": 1.0,
        "ood_score": "energy",
    }
    return Checkpoint(
        model_config=dict(model.config),
        state_dict=model.state_dict(),
        preprocess_params=params,
        taxonomy=taxonomy,
        ctc_features=S.DEFAULT_CTC_FEATURES,
        ctc_observed_range=((1.0, 45.0),),  # synthetic_crop's CTC draws
        metrics={},
        training={"synthetic": True, "benchmark": "untrained weights"},
        versions={"torch": str(torch.__version__)},
        calibration=calibration,
    ).save(path)


@dataclass(frozen=True)
class BenchRequest:
    """One study: ``raw`` = preprocess_study's arguments (:data:`RAW_NAMES`), for the in-process
    floor and FastAPI; ``wire`` = the Triton request tensors of the same study."""

    raw: dict[str, np.ndarray]
    wire: dict[str, np.ndarray]


def make_requests(n: int, seed: int, shape: tuple[int, int, int], contract) -> list[BenchRequest]:
    """``n`` synthetic ROI crops (:mod:`dmfn.synth.crops`): the SDK's request of each, and the
    same crop as preprocess_study's arguments."""
    from dmfn.contract.wire import build_request, crop_study
    from dmfn.synth.crops import synthetic_crops

    out = []
    for s in synthetic_crops(n, seed, shapes=(shape,)):
        hu, mask = crop_study(s, contract)
        values = (hu, np.float32(s.spacing_mm), mask, s.ctc_array(), s.clinical_array())
        raw = dict(zip(RAW_NAMES, values, strict=True))
        out.append(BenchRequest(raw, build_request(s, contract)))
    return out


# --------------------------------------------------------------------------- the three systems
class Floor:
    """(a) preprocess_study + ONNX Runtime in this process."""

    def __init__(
        self,
        onnx_path: Path,
        checkpoint: Path,
        intra_op_threads: int,
        omp_threads: int,
    ) -> None:
        import onnxruntime as ort

        from dmfn.contract.management import load_management
        from dmfn.contract.postprocess import Postprocessor
        from dmfn.contract.uncertainty import DEFAULT_COVERAGE, DEFAULT_FALSE_ALARM
        from dmfn.training.checkpoint import load_checkpoint

        ckpt = load_checkpoint(checkpoint)
        contract = ckpt.contract()
        self.limits, self.ctc_names = contract.limits, tuple(contract.ctc_features)
        uncertainty = ckpt.uncertainty(DEFAULT_COVERAGE, "aps", DEFAULT_FALSE_ALARM)
        self.postprocess = Postprocessor.of(
            ckpt.taxonomy, ckpt.temperature, load_management(None), uncertainty
        )

        options = ort.SessionOptions()
        options.intra_op_num_threads = intra_op_threads
        options.inter_op_num_threads = 1
        options.add_session_config_entry("session.intra_op.allow_spinning", "0")
        self.session = ort.InferenceSession(
            str(onnx_path), sess_options=options, providers=["CPUExecutionProvider"]
        )
        self.params = ckpt.preprocess_params
        self.omp_threads = omp_threads

    def setup(self, concurrency: int) -> None:
        pass

    def thread_init(self) -> None:
        set_openmp_threads(self.omp_threads)

    def __call__(self, request: BenchRequest) -> None:
        (p,) = preprocess_request(request.wire, self.params, self.limits, self.ctc_names)
        (logits,) = self.session.run(
            [S.LOGITS], {S.VIEWS: p.views[None], S.TABULAR: p.tabular[None]}
        )
        self.postprocess(logits, p.measurements[None])

    def close(self) -> None:
        pass


class TritonCaller:
    """(b) the ensemble over HTTP or gRPC (one tritonclient client per thread: the HTTP one is
    gevent-based and must not be shared across threads)."""

    def __init__(self, url: str, protocol: str = "http") -> None:
        self.url = url
        self.local = threading.local()
        if protocol == "http":
            import tritonclient.http as module
        else:
            import tritonclient.grpc as module
        self.module = module
        self.protocol = protocol

    def setup(self, concurrency: int) -> None:
        pass

    def thread_init(self) -> None:
        if self.protocol == "http":
            self.local.client = self.module.InferenceServerClient(self.url, network_timeout=120)
        else:
            self.local.client = self.module.InferenceServerClient(self.url)

    def __call__(self, request: BenchRequest) -> None:
        inputs = infer_inputs(self.module, request.wire)
        outputs = [self.module.InferRequestedOutput(n) for n in RESPONSE_NAMES]
        result = self.local.client.infer(S.PIPELINE_MODEL, inputs, outputs=outputs)
        if result.as_numpy(S.PROBS) is None:
            raise RuntimeError("response without PROBS")

    def thread_close(self) -> None:
        self.local.client.close()


class FastApiCaller:
    """(c) POST /predict with an .npz body over a keep-alive connection per thread."""

    def __init__(self, port: int) -> None:
        self.port = port
        self.local = threading.local()

    def setup(self, concurrency: int) -> None:
        pass

    def thread_init(self) -> None:
        self.local.conn = http.client.HTTPConnection("127.0.0.1", self.port, timeout=120)

    def __call__(self, request: BenchRequest) -> None:
        buffer = io.BytesIO()
        np.savez(buffer, **request.raw)
        self.local.conn.request(
            "POST",
            "/predict",
            body=buffer.getvalue(),
            headers={"Content-Type": "application/octet-stream"},
        )
        response = self.local.conn.getresponse()
        body = response.read()
        if response.status != 200:
            raise RuntimeError(f"HTTP {response.status}: {body[:200]!r}")
        if "probs" not in json.loads(body):
            raise RuntimeError("response without probs")

    def thread_close(self) -> None:
        self.local.conn.close()


# --------------------------------------------------------------------------- the FastAPI peer
def create_fastapi_app(checkpoint: Path):
    """A plain FastAPI app: preprocess_study + the PyTorch model in eager mode."""
    import torch
    from fastapi import FastAPI, HTTPException, Request
    from starlette.concurrency import run_in_threadpool

    from dmfn.training.checkpoint import load_checkpoint

    ckpt = load_checkpoint(checkpoint)
    model = ckpt.build_model().eval()
    params = ckpt.preprocess_params
    names = ckpt.taxonomy.names
    malignant = np.array(ckpt.taxonomy.malignant_mask)
    app = FastAPI()

    def infer(body: bytes) -> dict:
        arrays = np.load(io.BytesIO(body))
        p = preprocess_study(*(arrays[n] for n in RAW_NAMES), params=params)
        with torch.no_grad():
            logits = model(torch.from_numpy(p.views[None]), torch.from_numpy(p.tabular[None]))
            probs = torch.softmax(logits.double(), dim=1)[0].numpy()
        top = np.argsort(-probs, kind="stable")[: S.TOP_K]
        return {
            "probs": probs.tolist(),
            "top3": [[names[i], float(probs[i])] for i in top],
            "malignant_prob": float(probs[malignant].sum()),
            "measurements": p.measurements.tolist(),
        }

    @app.get("/health")
    def health() -> dict:
        return {"ok": True}

    @app.post("/predict")
    async def predict(request: Request) -> dict:
        body = await request.body()
        try:
            return await run_in_threadpool(infer, body)
        except ValueError as err:
            raise HTTPException(status_code=400, detail=str(err)) from err

    return app


def serve_fastapi(checkpoint: Path, port: int) -> None:
    import uvicorn

    uvicorn.run(create_fastapi_app(checkpoint), host="127.0.0.1", port=port, log_level="warning")


def _wait_http(url: str, process: subprocess.Popen, timeout_s: float = 120.0) -> None:
    t0 = time.monotonic()
    while time.monotonic() - t0 < timeout_s:
        if process.poll() is not None:
            raise RuntimeError(f"the FastAPI server exited with code {process.returncode}")
        try:
            with urllib.request.urlopen(url, timeout=2) as response:
                if response.status == 200:
                    return
        except OSError:
            time.sleep(0.2)
    raise RuntimeError(f"{url} not ready after {timeout_s} s")


# --------------------------------------------------------------------------- closed loop
@dataclass(frozen=True)
class Result:
    system: str
    concurrency: int
    completed: int
    failed: int
    seconds: float
    latencies_ms: np.ndarray

    @property
    def throughput(self) -> float:
        return self.completed / self.seconds

    def percentile(self, q: float) -> float:
        return (
            float(np.percentile(self.latencies_ms, q)) if self.latencies_ms.size else float("nan")
        )


def closed_loop(
    system: str,
    caller,
    requests: Sequence[BenchRequest],
    concurrency: int,
    duration_s: float,
    warmup_s: float,
) -> Result:
    """``concurrency`` threads send requests back to back for warmup + duration seconds; only
    requests started and finished inside the measured window count."""
    caller.setup(concurrency)
    barrier = threading.Barrier(concurrency + 1)
    lock = threading.Lock()
    latencies: list[float] = []
    failures: list[str] = []
    window: dict[str, float] = {}

    def worker(index: int) -> None:
        caller.thread_init()
        try:
            barrier.wait()
            i = index
            while True:
                start = time.perf_counter()
                if start >= window["end"]:
                    return
                try:
                    caller(requests[i % len(requests)])
                    ok = True
                except Exception as err:  # counted and reported, the loop goes on
                    ok = False
                    with lock:
                        failures.append(repr(err))
                stop = time.perf_counter()
                if start >= window["start"] and stop <= window["end"] and ok:
                    with lock:
                        latencies.append((stop - start) * 1e3)
                i += concurrency
        finally:
            closer = getattr(caller, "thread_close", None)
            if closer is not None:
                closer()

    threads = [threading.Thread(target=worker, args=(n,), daemon=True) for n in range(concurrency)]
    for thread in threads:
        thread.start()
    now = time.perf_counter()
    window["start"] = now + warmup_s
    window["end"] = now + warmup_s + duration_s
    barrier.wait()
    for thread in threads:
        thread.join()
    if failures:
        print(f"  {system} c={concurrency}: {len(failures)} failures, first: {failures[0]}")
    return Result(
        system, concurrency, len(latencies), len(failures), duration_s, np.asarray(latencies)
    )


# --------------------------------------------------------------------------- main
def _stats(url: str) -> dict[str, dict[str, int]]:
    """Per model: inference and execution counts and the cumulative queue / compute ns."""
    import tritonclient.http as httpclient

    client = httpclient.InferenceServerClient(url)
    try:
        out = {}
        for stats in client.get_inference_statistics()["model_stats"]:
            inference = stats["inference_stats"]
            out[stats["name"]] = {
                "inferences": int(stats["inference_count"]),
                "executions": int(stats["execution_count"]),
                "queue_ns": int(inference["queue"]["ns"]),
                "compute_ns": sum(
                    int(inference[k]["ns"])
                    for k in ("compute_input", "compute_infer", "compute_output")
                ),
                "success": int(inference["success"]["count"]),
                "success_ns": int(inference["success"]["ns"]),
            }
        return out
    finally:
        client.close()


def stage_report(before: dict, after: dict) -> str:
    """Per model between two statistics snapshots: requests, mean batch, queue and compute ms
    per request; the ensemble's total is the server-side time of a request."""
    parts = []
    for name in (S.PREPROCESS_MODEL, S.NET_MODEL, S.POSTPROCESS_MODEL, S.PIPELINE_MODEL):
        if name not in after:
            continue
        d = {k: after[name][k] - before.get(name, {}).get(k, 0) for k in after[name]}
        n = max(d["success"], 1)
        if name == S.PIPELINE_MODEL:
            parts.append(f"server total {d['success_ns'] / n / 1e6:.2f}")
            continue
        parts.append(
            f"{name} queue {d['queue_ns'] / n / 1e6:.2f} compute {d['compute_ns'] / n / 1e6:.2f}"
            + (
                f" batch {d['inferences'] / max(d['executions'], 1):.1f}"
                if name == S.NET_MODEL
                else ""
            )
        )
    return "; ".join(parts) + " (ms per request)"


def print_table(results: list[Result]) -> None:
    header = f"{'system':<13} {'conc':>4} {'req/s':>8} {'p50 ms':>8} {'p95 ms':>8} {'p99 ms':>8} {'done':>6} {'failed':>6}"
    print(header)
    print("-" * len(header))
    for r in results:
        print(
            f"{r.system:<13} {r.concurrency:>4} {r.throughput:>8.1f} {r.percentile(50):>8.1f} "
            f"{r.percentile(95):>8.1f} {r.percentile(99):>8.1f} {r.completed:>6} {r.failed:>6}"
        )


#: The serving settings dmfn used before the latency work (for --before).
BEFORE = {"max_queue_delay_us": 5000, "preprocess_max_queue_delay_us": 1000}


def run_triton(system, repo, requests, concurrencies, args, tmp) -> list[Result]:
    """Serve the repository ``repo`` and drive it at each concurrency, printing where the time
    goes inside Triton."""
    from dmfn.serving.service import DmfnService, ServiceConfig
    from dmfn.serving.triton import free_ports

    http_port, grpc_port, metrics_port = free_ports(3)
    config = ServiceConfig(
        repo, http_port=http_port, grpc_port=grpc_port, metrics_port=metrics_port,
        log_dir=tmp / f"{system}_logs", canary_interval_s=None, allow_root=os.geteuid() == 0,
    )  # fmt: skip
    out = []
    with DmfnService(config) as server:
        for c in concurrencies:
            before = _stats(server.http_url)
            url = server.http_url if args.protocol == "http" else server.grpc_url
            out.append(
                closed_loop(system, TritonCaller(url, args.protocol), requests, c, args.duration,
                            args.warmup)
            )  # fmt: skip
            print(f"  {system} c={c}: {stage_report(before, _stats(server.http_url))}")
    return out


def check_targets(results: list[Result]) -> list[str]:
    """The issue's targets, one line each, ``MEETS`` or ``MISSES`` with the numbers."""
    by = {(r.system, r.concurrency): r for r in results}
    lines = []
    if ("triton", 1) in by and ("floor", 1) in by:
        gap = by[("triton", 1)].percentile(50) - by[("floor", 1)].percentile(50)
        lines.append(f"p50 at c=1: triton - floor = {gap:+.1f} ms (target <= 3 ms: "
                     f"{'MEETS' if gap <= 3.0 else 'MISSES'})")  # fmt: skip
    best = {
        system: max(r.throughput for r in results if r.system == system)
        for system in {r.system for r in results}
    }
    if "triton" in best and "floor" in best:
        ratio = best["triton"] / best["floor"]
        lines.append(f"best throughput: triton {best['triton']:.0f} / floor {best['floor']:.0f} "
                     f"req/s = {ratio:.2f} (target >= 0.9: {'MEETS' if ratio >= 0.9 else 'MISSES'})")  # fmt: skip
    ratios = [
        (c, by[("triton", c)].throughput / by[("fastapi", c)].throughput)
        for (system, c) in by if system == "triton" and ("fastapi", c) in by
    ]  # fmt: skip
    if ratios:
        worst = min(r for _, r in ratios)
        lines.append("triton / fastapi throughput: " + ", ".join(f"c={c} {r:.2f}" for c, r in ratios)
                     + f" (target >= 1 everywhere: {'MEETS' if worst >= 1 else 'MISSES'})")  # fmt: skip
    failed = sum(r.failed for r in results)
    lines.append(f"failed requests: {failed} (target 0: {'MEETS' if failed == 0 else 'MISSES'})")
    return lines


def bench_backbone(backbone: str, args, concurrencies, systems) -> list[Result]:
    from dmfn.serving.config import ServingSettings
    from dmfn.serving.triton import free_ports
    from dmfn.training.checkpoint import load_checkpoint
    from dmfn.training.export import export

    shape = tuple(int(v) for v in args.shape.split(","))
    params = PreprocessParams()
    settings = ServingSettings()
    print(
        f"\n=== backbone {backbone}: {CPUS} CPUs, load average {os.getloadavg()[0]:.2f}; views "
        f"{params.view_size} px, crops {shape}, {args.studies} studies, {args.duration:g} s per point"
    )
    results: list[Result] = []
    with tempfile.TemporaryDirectory(prefix="dmfn-bench-") as tmp:
        tmp = Path(tmp)
        checkpoint = make_checkpoint(tmp / "model.pt", backbone, params)
        repo = tmp / "repo"
        export(checkpoint, repo, settings, parity_studies=2)
        requests = make_requests(
            args.studies, seed=1, shape=shape, contract=load_checkpoint(checkpoint).contract()
        )
        if "floor" in systems:
            floor = Floor(
                repo / "dmfn" / "1" / "model.onnx", checkpoint, settings.intra_op_threads,
                settings.preprocess_openmp_threads,
            )  # fmt: skip
            for c in concurrencies:
                results.append(closed_loop("floor", floor, requests, c, args.duration, args.warmup))
        if "triton" in systems:
            results += run_triton("triton", repo, requests, concurrencies, args, tmp)
        if args.before:
            import dataclasses

            old = tmp / "repo_before"
            export(checkpoint, old, dataclasses.replace(settings, **BEFORE), parity_studies=2)
            results += run_triton("triton-before", old, requests, concurrencies, args, tmp)
        if "fastapi" in systems:
            (port,) = free_ports(1)
            env = dict(os.environ)
            if args.fastapi_omp_threads:
                env["OMP_NUM_THREADS"] = str(args.fastapi_omp_threads)
            process = subprocess.Popen(
                [sys.executable, __file__, "--serve-fastapi", str(checkpoint), str(port)], env=env
            )
            try:
                _wait_http(f"http://127.0.0.1:{port}/health", process)
                for c in concurrencies:
                    results.append(
                        closed_loop(
                            "fastapi", FastApiCaller(port), requests, c, args.duration, args.warmup
                        )
                    )
            finally:
                process.terminate()
                process.wait(timeout=30)
    print()
    print_table(results)
    print()
    for line in check_targets(results):
        print(f"{backbone}: {line}")
    return results


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--duration", type=float, default=10.0, help="seconds measured per point")
    parser.add_argument("--warmup", type=float, default=2.0, help="seconds before measuring")
    parser.add_argument("--concurrency", default="1,4,16", help="comma-separated (1,4,16)")
    parser.add_argument(
        "--backbones", default="regnetx_tiny,regnety_400mf",
        help="CT backbones, comma-separated (regnetx_tiny, the default model's, and "
        "regnety_400mf, a paper-scale one)",
    )  # fmt: skip
    parser.add_argument("--studies", type=int, default=32, help="distinct synthetic studies")
    parser.add_argument(
        "--shape", default="24,64,64", help="ROI crop shape z,y,x in voxels (24,64,64)"
    )
    parser.add_argument(
        "--fastapi-omp-threads",
        type=int,
        default=1,
        help="OMP_NUM_THREADS of the FastAPI process (torch and the C++ kernels; 0 = library "
        "defaults). Default 1: with the defaults two OpenMP runtimes (torch's and the "
        "kernels') spin against each other and the peer answers in ~700 ms at concurrency 1",
    )
    parser.add_argument(
        "--protocol", choices=("http", "grpc"), default="http", help="Triton client protocol"
    )
    parser.add_argument("--systems", default="floor,triton,fastapi", help="which to run")
    parser.add_argument(
        "--before", action="store_true",
        help="also run Triton with the serving settings used before the latency work",
    )  # fmt: skip
    parser.add_argument(
        "--serve-fastapi", nargs=2, metavar=("CHECKPOINT", "PORT"), help=argparse.SUPPRESS
    )
    args = parser.parse_args(argv)
    if args.serve_fastapi:
        serve_fastapi(Path(args.serve_fastapi[0]), int(args.serve_fastapi[1]))
        return 0
    concurrencies = [int(c) for c in args.concurrency.split(",")]
    systems = args.systems.split(",")
    failed = 0
    for backbone in args.backbones.split(","):
        failed += sum(r.failed for r in bench_backbone(backbone, args, concurrencies, systems))
    return 0 if failed == 0 else 1


if __name__ == "__main__":
    sys.exit(main())
