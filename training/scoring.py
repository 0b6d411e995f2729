"""Evaluation of a model on a split, at the patient level (a patient's probability is the mean of
its images'), and the predictions CSVs."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from dmfn.contract.predictions import PredictionRow, Provenance, write_predictions
from dmfn.contract.taxonomy import Taxonomy
from dmfn.evaluation import calibration, metrics
from dmfn.evaluation.analysis import bootstrap_multiclass
from dmfn.evaluation.proportions import proportion_ci
from dmfn.evaluation.roc import auc_delong

from .checkpoint import load_checkpoint, provenance
from .data import TrainingData
from .dataset import CohortTensors, patient_mean

#: Metrics reported per split in summary.json and the printed table (patient level).
SUMMARY_METRICS: tuple[str, ...] = (
    "binary_auc",
    "hand_till_auc",
    "macro_auc",
    "accuracy",
    "top3_accuracy",
)
#: Validation metric that selects the best epoch and drives early stopping.
MONITOR = "macro_auc"
EVAL_BATCH_SIZE = 64


@torch.no_grad()
def predict_images(model: nn.Module, tensors: CohortTensors, device: torch.device) -> torch.Tensor:
    """Image-level logits [N, C] (eval mode, batches of EVAL_BATCH_SIZE, on the CPU)."""
    model.eval()
    chunks = []
    for start in range(0, len(tensors), EVAL_BATCH_SIZE):
        sl = slice(start, start + EVAL_BATCH_SIZE)
        chunks.append(model(tensors.views[sl].to(device), tensors.tabular[sl].to(device)).cpu())
    return torch.cat(chunks).float()


def evaluate(
    model: nn.Module, tensors: CohortTensors, taxonomy: Taxonomy, device: torch.device
) -> tuple[np.ndarray, dict[str, float]]:
    """Patient-level probabilities [P, C] and metrics (plus the image-level ``loss``)."""
    logits = predict_images(model, tensors, device)
    loss = float(nn.functional.cross_entropy(logits, tensors.labels))
    probs = patient_mean(
        torch.softmax(logits.double(), 1), tensors.patient_index, tensors.n_patients
    )
    probs_np = probs.numpy()
    result = metrics.classification_summary(
        tensors.patient_labels.numpy(), probs_np, taxonomy.malignant_mask
    )
    result["loss"] = loss
    return probs_np, result


def _patient_probs(probs: np.ndarray, tensors: CohortTensors) -> np.ndarray:
    return patient_mean(torch.from_numpy(probs), tensors.patient_index, tensors.n_patients).numpy()


def with_intervals(
    labels: np.ndarray, probs: np.ndarray, malignant_mask: Sequence[bool], seed: int = 0
) -> dict[str, Any]:
    """Patient-level metrics of ``probs`` with their 95 % intervals (``ci``: DeLong for the
    binary AUC, a stratified bootstrap for Hand & Till and macro one-vs-rest, Wilson for the accuracies), the case
    count and the calibration error."""
    out: dict[str, Any] = metrics.classification_summary(labels, probs, malignant_mask)
    mask = np.asarray(malignant_mask, dtype=bool)
    ci: dict[str, list[float]] = {}
    malignant = mask[labels].astype(np.int64)
    if 0 < malignant.sum() < malignant.size:
        a = auc_delong(malignant, probs[:, mask].sum(axis=1))
        ci["binary_auc"] = [a.low, a.high]
    if np.unique(labels).size >= 2:
        boot = bootstrap_multiclass(labels, probs, 200, seed)
        ci["hand_till_auc"] = list(boot["hand_till"])
        ci["macro_ovr_auc"] = list(boot["macro_ovr"])
    top = np.argsort(-probs, axis=1, kind="stable")
    for key, right in (
        ("accuracy", top[:, 0] == labels),
        ("top3_accuracy", (top[:, :3] == labels[:, None]).any(axis=1)),
    ):
        p = proportion_ci(int(right.sum()), labels.size, "wilson")
        ci[key] = [p.low, p.high]
    out["ci"] = ci
    out["n_patients"] = int(labels.size)
    out["ece"] = calibration.expected_calibration_error(labels, probs)
    return out


def final_evaluation(
    best_path: Path, data: TrainingData, out_dir: Path, device: torch.device
) -> dict[str, Any]:
    """best.pt on validation and test: the calibration temperature fitted on the validation
    images (stored in best.pt, applied by the served model), patient-level metrics with
    intervals (stored in best.pt), and the predictions CSVs (image and patient rows, with the
    temperature applied, in the format of :mod:`dmfn.contract.predictions`)."""
    ckpt = load_checkpoint(best_path)
    model = ckpt.build_model().to(device)
    logits = {
        name: predict_images(model, tensors, device).double().numpy()
        for name, tensors in (("val", data.val), ("test", data.test))
        if tensors is not None
    }
    raw_val = softmax(logits["val"])
    ckpt.temperature = calibration.fit_temperature(data.val.labels.numpy(), raw_val)
    result: dict[str, Any] = {}
    image_probs = {}
    for name, split_logits in logits.items():
        tensors = data.val if name == "val" else data.test
        assert tensors is not None
        labels = tensors.patient_labels.numpy()
        image_probs[name] = softmax(split_logits, ckpt.temperature)
        patient = _patient_probs(image_probs[name], tensors)
        result[name] = with_intervals(labels, patient, data.taxonomy.malignant_mask)
        result[name]["ece_uncalibrated"] = calibration.expected_calibration_error(
            labels, _patient_probs(softmax(split_logits), tensors)
        )
        result[name]["loss"] = float(
            nn.functional.cross_entropy(torch.from_numpy(split_logits), tensors.labels)
        )
    ckpt.metrics = {**ckpt.metrics, **result}
    ckpt.save(best_path)
    source = provenance(ckpt, best_path)
    for name, probs in image_probs.items():
        tensors = data.val if name == "val" else data.test
        assert tensors is not None
        write_split_predictions(
            out_dir / f"predictions_{name}.csv", name, tensors, probs, data.taxonomy, source
        )
    return result


def softmax(logits: np.ndarray, temperature: float = 1.0) -> np.ndarray:
    """Row-wise ``softmax(logits / temperature)`` in float64."""
    z = logits / temperature
    z = z - z.max(axis=1, keepdims=True)
    e = np.exp(z)
    return e / e.sum(axis=1, keepdims=True)


def write_split_predictions(
    path: Path,
    split: str,
    tensors: CohortTensors,
    image_probs: np.ndarray,
    taxonomy: Taxonomy,
    source: Provenance,
) -> Path:
    """The predictions CSV of one split: image rows, then patient rows (image means)."""
    mask = np.asarray(taxonomy.malignant_mask, dtype=bool)
    names = taxonomy.names
    labels = tensors.labels.numpy()
    rows = [
        PredictionRow(
            "image", tensors.patient_ids[int(tensors.patient_index[i])],
            float(image_probs[i, mask].sum()), tuple(float(v) for v in image_probs[i]),
            tensors.image_ids[i], split, names[labels[i]],
        )
        for i in range(len(tensors))
    ]  # fmt: skip
    patient = _patient_probs(image_probs, tensors)
    patient_labels = tensors.patient_labels.numpy()
    rows += [
        PredictionRow(
            "patient", pid, float(patient[i, mask].sum()), tuple(float(v) for v in patient[i]),
            "", split, names[patient_labels[i]],
        )
        for i, pid in enumerate(tensors.patient_ids)
    ]  # fmt: skip
    return write_predictions(path, names, rows, source)
