"""The served check on a GPU host (run by scripts/gpu_check.sh): export the demo model with
``--device gpu`` (preprocess KIND_GPU with the CuPy kernels; the net on the ``--target`` runtime),
start Triton on it, send synthetic studies through DmfnClient, and compare the served
probabilities with the in-process pipeline (C++ preprocessing, PyTorch FP32): within --tolerance.

    python scripts/gpu_served_check.py [--target cpu|onnxruntime|tensorrt] [--out result.json]

Exit 0 when every probability agrees, 1 when not, 2 when the server cannot run here (the reason
is printed: no GPU build of tritonserver, no CuPy, ...).
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

from dmfn.client.sdk import DmfnClient
from dmfn.resources import demo_checkpoint
from dmfn.serving.config import ServingSettings
from dmfn.serving.triton import TritonServer, free_ports
from dmfn.synth.crops import synthetic_crops
from dmfn.training.export import export
from dmfn.training.inference import LocalPredictor


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--target", default="cpu", choices=("cpu", "onnxruntime", "tensorrt"))
    parser.add_argument(
        "--device", default="gpu", choices=("gpu", "cpu"), help="cpu: the same check on a CPU host"
    )
    parser.add_argument("--studies", type=int, default=16)
    parser.add_argument("--tolerance", type=float, default=1e-3)
    parser.add_argument("--out", type=Path)
    args = parser.parse_args(argv)
    checkpoint = demo_checkpoint()
    result: dict[str, object] = {"target": args.target, "device": args.device}
    with tempfile.TemporaryDirectory(prefix="dmfn-gpu-") as tmp:
        repo = Path(tmp) / "repo"
        settings = ServingSettings(target=args.target, device=args.device)
        result["export_parity"] = export(checkpoint, repo, settings, parity_studies=4)
        http, grpc, metrics = free_ports(3)
        server = TritonServer(
            repo, http_port=http, grpc_port=grpc, metrics_port=metrics, log_path=Path(tmp) / "log"
        )
        try:
            server.start()
            result["ready_seconds"] = server.wait_ready(timeout_s=180)
        except Exception as err:  # the reason goes into the result, the log tail too
            log = (Path(tmp) / "log").read_text(errors="replace")[-4000:]
            result.update(served="not run", reason=f"{type(err).__name__}: {err}", log_tail=log)
            print(json.dumps(result, indent=2, default=str))
            if args.out:
                args.out.write_text(json.dumps(result, indent=2, default=str))
            server.stop()
            return 2
        try:
            studies = synthetic_crops(args.studies, seed=7)
            local = LocalPredictor(checkpoint)
            with DmfnClient(server.http_url) as client:
                start = time.perf_counter()
                served = [client.predict(s) for s in studies]
                result["served_ms_per_study"] = (time.perf_counter() - start) * 1e3 / len(studies)
            expected = [local.predict(s) for s in studies]
            diff = max(
                float(
                    np.abs(
                        np.array(list(a.probs.values())) - np.array(list(b.probs.values()))
                    ).max()
                )
                for a, b in zip(served, expected, strict=True)
            )
        finally:
            server.stop()
    result.update(served="ok", studies=args.studies, max_abs_prob_difference=diff)
    result["within_tolerance"] = diff <= args.tolerance
    print(json.dumps(result, indent=2, default=str))
    if args.out:
        args.out.write_text(json.dumps(result, indent=2, default=str))
    return 0 if diff <= args.tolerance else 1


if __name__ == "__main__":
    sys.exit(main())
