"""The main job, end to end, on the embedded default: :func:`run_demo`, the API of ``dmfn demo``
(its command line: :mod:`dmfn.demo_cli`).

synthetic patients (DICOM + NIfTI) -> a DMFN checkpoint (the committed demo model, or one trained
here with --train) -> ONNX export checked against PyTorch -> Triton model repository -> a real
Triton server on 127.0.0.1 -> a study sent through the client SDK -> the prediction -> stop.
"""

from __future__ import annotations

import os
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import numpy as np
import torch

from dmfn.client.manifest import read_manifest
from dmfn.client.predict import format_prediction
from dmfn.client.reports import clinical_used, mask_reference
from dmfn.client.sdk import PROTOCOLS, DmfnClient
from dmfn.client.sr import write_prediction_sr
from dmfn.client.study_files import read_study_files
from dmfn.contract.csvfile import csv_rows
from dmfn.contract.errors import InvalidInput
from dmfn.contract.wire import build_request
from dmfn.preprocess import preprocess_request
from dmfn.resources import demo_checkpoint
from dmfn.serving.config import ServingSettings
from dmfn.serving.service import DmfnService, ServiceConfig
from dmfn.serving.triton import free_ports
from dmfn.synth import generate_cohort
from dmfn.training.checkpoint import Checkpoint, load_checkpoint
from dmfn.training.config import TrainConfig
from dmfn.training.export import export
from dmfn.training.scoring import softmax
from dmfn.training.summary import format_table
from dmfn.training.train import run as run_training


@contextmanager
def _step(title: str, timings: dict[str, float]) -> Iterator[None]:
    print(f"\n== {title}", flush=True)
    start = time.perf_counter()
    yield
    timings[title] = time.perf_counter() - start
    print(f"   ({timings[title]:.1f} s)", flush=True)


def _root_allowed() -> bool:
    """The demo runs its short-lived loopback service as root where it is run as root (CI, a
    container), and says so; `dmfn serve` itself refuses root without --allow-root."""
    if os.geteuid() != 0:
        return False
    print("   (running as root: allowed for this demo; `dmfn serve` needs --allow-root for it)")
    return True


def run_demo(
    out: Path,
    *,
    checkpoint: Path | None = None,
    train: bool = False,
    patients: int = 4,
    seed: int = 2026,
    protocol: str = "http",
) -> int:
    """The demo in folder ``out`` (its cohort, repository and server logs are replaced on every
    run): ``patients`` synthetic patients from ``seed``, ``checkpoint`` (default: the committed
    demo model) or one trained here (``train``), served and asked over ``protocol``. Prints each
    step; returns the exit status (0 when the served probabilities are finite).

    ValueError naming the argument for a bad one; ExportError, TritonError or DmfnServerError
    when a step fails.
    """
    if patients < 3:
        raise InvalidInput("patients", f"must be >= 3, got {patients}")
    if train and checkpoint is not None:
        raise InvalidInput("train", "give {train} or {checkpoint}, not both",
                           mentions={"train": "train=True", "checkpoint": "checkpoint"})  # fmt: skip
    if protocol not in PROTOCOLS:
        raise InvalidInput("protocol", f"must be one of {PROTOCOLS}, got {protocol!r}")

    if not train:
        load_checkpoint(checkpoint or demo_checkpoint())  # fail fast on a bad file
    workdir = Path(out).resolve()
    workdir.mkdir(parents=True, exist_ok=True)
    timings: dict[str, float] = {}
    total = time.perf_counter()
    print("dmfn demo — synthetic data: a pipeline check, not a clinical result.")

    with _step(f"1. synthetic cohort: {patients} patients (DICOM + NIfTI)", timings):
        manifest_path = generate_cohort(
            workdir / "cohort",
            preset="demo",
            seed=seed,
            n_patients=patients,
            readers_per_group=0,  # a reader study of a few patients means nothing
            overwrite=True,
        )
        print(f"   {manifest_path}")

    checkpoint = checkpoint or demo_checkpoint()
    if train:
        with _step("2. train a small DMFN on a tiny cohort (--train)", timings):
            train_dir = workdir / "train"
            train_cohort = generate_cohort(
                workdir / "train_cohort", preset="tiny", seed=0, workers=2, overwrite=True
            )
            config = TrainConfig(
                manifest=train_cohort, out=train_dir, epochs=8, seeds=1, progress=False,
                overwrite=True,
            )  # fmt: skip
            print(format_table(run_training(config)))
            checkpoint = train_dir / "seed_0" / "best.pt"
    else:
        print(f"\n== 2. model: {checkpoint}")
    if not checkpoint.is_file():
        raise InvalidInput("checkpoint", f"{checkpoint} does not exist (try {{train}})",
                           mentions={"train": "train=True"})  # fmt: skip
    ckpt = load_checkpoint(checkpoint)
    print(
        f"   {ckpt.model_config.get('kind')} / {ckpt.model_config.get('backbone')}, "
        f"{len(ckpt.taxonomy)} classes, trained on {'synthetic' if ckpt.training.get('synthetic', True) else 'real'} data"
    )

    repository = workdir / "model_repository"
    with _step("3. export: ONNX checked against PyTorch -> Triton repository", timings):
        # Parity on the cohort's own studies, preprocessed exactly as the server will.
        parity = export(
            checkpoint, repository, ServingSettings(), parity_manifest=manifest_path, overwrite=True
        )
        print(f"   {repository}")
        print(f"   parity on {patients} synthetic studies of step 1")
        print(
            f"   ONNX Runtime vs PyTorch, max |logit difference|: {parity['onnxruntime_vs_torch_max_abs_logit']:.2e}"
        )

    manifest = read_manifest(manifest_path, ckpt.taxonomy)
    row = manifest.rows[0]
    # The lesion as the DICOM SEG that dmfn synth writes beside the NIfTI mask (the same voxels).
    seg_path = _seg_path(manifest_path, row.image_id)
    files = read_study_files(
        row.image_path, seg_path, dict(zip(ckpt.ctc_features, row.ctc, strict=True)),
        row.clinical, image_id=row.image_id, label=row.label,
    )  # fmt: skip
    study = files.study
    z, y, x = study.hu.shape
    print(
        f"\n   study {row.image_id}: {z}x{y}x{x} voxels at "
        f"{'x'.join(f'{s:.2f}' for s in study.spacing_mm)} mm, CTC {row.ctc[0]:.1f} pg/ml, "
        f"{row.age_years:.0f} y, {row.sex}, {row.location}; lesion mask: DICOM SEG {seg_path.name}"
    )

    with _step(
        "4. preprocessing in-process (the request the client sends, as the server reads it)",
        timings,
    ):
        params = ckpt.preprocess_params
        start = time.perf_counter()
        (pre,) = preprocess_request(build_request(study, ckpt.contract()), params)
        took = time.perf_counter() - start
        print(
            f"   PDE denoise ({params.pde_iterations} it, k={params.pde_k_hu:g} HU) -> "
            f"{params.target_spacing_mm:g} mm resampling -> WL{params.window_level_hu:g}/"
            f"WW{params.window_width_hu:g} -> views {tuple(pre.views.shape)}: {took * 1000:.0f} ms"
        )

    http, grpc, metrics = free_ports(3)
    with _step("5. Triton: start, predict, stop", timings):
        server = DmfnService(
            ServiceConfig(
                repository, http_port=http, grpc_port=grpc, metrics_port=metrics,
                log_dir=workdir / "logs", allow_root=_root_allowed(),
            )
        )  # fmt: skip
        with server:
            print(
                f"   ready in {server.ready_seconds:.1f} s: http {server.http_url}, grpc {server.grpc_url}"
            )
            url = server.http_url if protocol == "http" else server.grpc_url
            with DmfnClient(url=url, protocol=protocol) as client:
                start = time.perf_counter()
                prediction = client.predict(study)
                latency = time.perf_counter() - start
            print(f"   prediction ({protocol}, {latency * 1000:.0f} ms round trip):")
            print(f"   true label (synthetic): {row.label} ({row.group})")
            print(format_prediction(prediction, indent="   "))
            served = np.array([prediction.probs[name] for name in ckpt.taxonomy.names])
            # The same study through the checkpoint in PyTorch, in this process: no train/serve skew.
            local = _torch_probs(ckpt, pre.views, pre.tabular)
            print(
                f"   served PROBS vs in-process PyTorch: max |difference| {np.abs(served - local).max():.1e}"
            )
            sr_path = workdir / "reports" / f"{row.image_id}_sr.dcm"
            write_prediction_sr(
                prediction, files.series.headers if files.series else [], sr_path,
                mask=mask_reference(files, seg_path),
                clinical_used=clinical_used(study, "synthetic manifest", "synthetic manifest",
                                            "synthetic manifest"),
                overwrite=True,
            )  # fmt: skip
            print(f"   DICOM SR of this prediction (TID 1500): {sr_path}  (read it: dsrdump)")
            print(f"   server logs: {server.config.log_dir}/triton.log, front_door.log")
        print("   server stopped")

    print(f"\ndone in {time.perf_counter() - total:.0f} s")
    return 0 if np.isfinite(served).all() else 1


def _seg_path(manifest: Path, image_id: str) -> Path:
    """The DICOM SEG that ``dmfn synth`` wrote for ``image_id`` (the manifest's ``seg_path``)."""
    with csv_rows(manifest, "manifest", ("image_id", "seg_path")) as (_, rows):
        for _, row in rows:
            if row["image_id"] == image_id and row["seg_path"]:
                return manifest.parent / row["seg_path"]
    raise InvalidInput("manifest", f"{manifest} has no seg_path for image {image_id!r}")


def _torch_probs(ckpt: Checkpoint, views: np.ndarray, tabular: np.ndarray) -> np.ndarray:
    with torch.no_grad():
        logits = ckpt.build_model()(torch.from_numpy(views[None]), torch.from_numpy(tabular[None]))
    # The served postprocess divides by the checkpoint's calibration temperature: so does this.
    return softmax(logits.numpy().astype(np.float64), ckpt.temperature)[0]


__all__ = ["run_demo"]
