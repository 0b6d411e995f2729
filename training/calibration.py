"""The calibration data a checkpoint carries (its ``calibration`` field, format in
:data:`dmfn.training.checkpoint.CALIBRATION_FIELDS`): the validation images' served
probabilities and labels, from which ``dmfn export`` fits the conformal class sets, and the
training images' OOD scores, from which it fits the OOD threshold.

``dmfn train`` stores it in every ``best.pt`` (:func:`store_calibration`, before the final
evaluation: the temperature fitted here is the one ``final_evaluation`` fits from the same
logits, and :func:`check_stored_temperature` proves it afterwards). A checkpoint made before
gets it from its cohort's manifest: :func:`collect_calibration` (``scripts/add_calibration.py``).
"""

from __future__ import annotations

import dataclasses
from pathlib import Path
from typing import Any

import numpy as np
import torch

from dmfn.client.manifest import read_manifest
from dmfn.contract.errors import InvalidInput
from dmfn.contract.ood import energy_score
from dmfn.contract.taxonomy import Taxonomy
from dmfn.evaluation.calibration import fit_temperature

from .checkpoint import Checkpoint, check_calibration, load_checkpoint
from .data import TrainingData
from .dataset import CohortTensors, build_cache, load_split
from .scoring import predict_images, softmax

#: The manifest splits the calibration data come from.
SPLITS: tuple[str, ...] = ("train", "val")


def served_probs(logits: np.ndarray, temperature: float) -> np.ndarray:
    """float32 ``softmax(logits / temperature)`` computed in float64, as the served postprocess
    computes PROBS."""
    return softmax(np.asarray(logits, dtype=np.float64), temperature).astype(np.float32)


def calibration_data(
    model: torch.nn.Module,
    taxonomy: Taxonomy,
    temperature: float,
    train: CohortTensors,
    val: CohortTensors,
    device: torch.device | str = "cpu",
) -> dict[str, Any]:
    """The ``calibration`` field of a model (eval mode, no augmentation) on its splits."""
    val_logits = predict_images(model, val, torch.device(device)).numpy()
    train_logits = predict_images(model, train, torch.device(device)).numpy()
    return check_calibration(
        {
            "class_names": list(taxonomy.names),
            "val_probs": served_probs(val_logits, temperature),
            "val_labels": val.labels.numpy().astype(np.int64),
            "val_image_ids": list(val.image_ids),
            "val_patient_ids": [val.patient_ids[int(i)] for i in val.patient_index],
            "train_ood_scores": energy_score(train_logits).astype(np.float32),
            "temperature": float(temperature),
            "ood_score": "energy",
        }
    )


def store_calibration(best_path: Path, data: TrainingData, device: torch.device) -> Checkpoint:
    """Fit the temperature on the validation images exactly as the final evaluation does
    (:func:`dmfn.training.scoring.final_evaluation`: the same logits, the same fit) and store it
    with the calibration data in ``best_path``."""
    ckpt = load_checkpoint(best_path)
    model = ckpt.build_model().to(device)
    raw_val = softmax(predict_images(model, data.val, device).double().numpy())
    ckpt.temperature = fit_temperature(data.val.labels.numpy(), raw_val)
    ckpt.calibration = calibration_data(
        model, data.taxonomy, ckpt.temperature, data.train, data.val, device
    )
    ckpt.save(best_path)
    return ckpt


def check_stored_temperature(best_path: Path) -> None:
    """RuntimeError unless ``best_path``'s calibration data were computed with its temperature
    (the final evaluation refits it; a change there that gave another value would otherwise
    leave probabilities of another temperature in the checkpoint)."""
    ckpt = load_checkpoint(best_path)
    if ckpt.calibration is None or ckpt.calibration["temperature"] != ckpt.temperature:
        raise RuntimeError(
            f"{best_path}: the calibration data's temperature "
            f"{None if ckpt.calibration is None else ckpt.calibration['temperature']} is not the "
            f"checkpoint's {ckpt.temperature}"
        )


def collect_calibration(
    checkpoint_path: str | Path, manifest_path: str | Path, workers: int = 1
) -> dict[str, Any]:
    """The ``calibration`` field of an existing checkpoint, from the train and val rows of the
    manifest of the cohort it was trained on (preprocessed with the checkpoint's parameters, in
    the manifest folder's ``.dmfn_cache``, reused when ``dmfn train`` built it), with the
    checkpoint's stored temperature. The checkpoint is not modified.

    InvalidInput names ``manifest`` when it lacks a train or val image."""
    ckpt = load_checkpoint(checkpoint_path)
    manifest = read_manifest(manifest_path, ckpt.taxonomy, list(ckpt.ctc_features))
    manifest = dataclasses.replace(
        manifest, rows=tuple(r for r in manifest.rows if r.split in SPLITS)
    )
    files = build_cache(
        manifest,
        ckpt.preprocess_params,
        manifest.path.resolve().parent / ".dmfn_cache",
        workers,
        progress=False,
    )
    splits = {name: load_split(manifest, name, files) for name in SPLITS}
    for name, tensors in splits.items():
        if tensors is None:
            raise InvalidInput("manifest", f"{manifest_path} has no {name!r} images")
    train, val = splits["train"], splits["val"]
    assert train is not None and val is not None
    model = ckpt.build_model()
    return calibration_data(model, ckpt.taxonomy, ckpt.temperature, train, val)


__all__ = [
    "SPLITS",
    "calibration_data",
    "check_stored_temperature",
    "collect_calibration",
    "served_probs",
    "store_calibration",
]
