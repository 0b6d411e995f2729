"""Evaluation of a model on a split, at the patient level (a patient's probability is the mean of
its images'), and the predictions CSVs."""

from __future__ import annotations

import csv
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from dmfn.contract.taxonomy import Taxonomy
from dmfn.evaluation import metrics

from .checkpoint import load_checkpoint
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


def write_predictions(
    path: Path, tensors: CohortTensors, probs: np.ndarray, taxonomy: Taxonomy
) -> None:
    """Patient-level predictions CSV: patient_id, prob_<class>..., malignant_prob, label."""
    malignant = np.asarray(taxonomy.malignant_mask, dtype=bool)
    labels = tensors.patient_labels.numpy()
    with path.open("w", newline="") as handle:
        writer = csv.writer(handle)
        writer.writerow(
            ["patient_id", *(f"prob_{n}" for n in taxonomy.names), "malignant_prob", "label"]
        )
        for i, patient in enumerate(tensors.patient_ids):
            row = [f"{p:.6g}" for p in probs[i]]
            writer.writerow(
                [patient, *row, f"{probs[i, malignant].sum():.6g}", taxonomy.names[labels[i]]]
            )


def final_evaluation(
    best_path: Path, data: TrainingData, out_dir: Path, device: torch.device
) -> dict[str, Any]:
    """Evaluate best.pt on val and test, write the predictions CSVs, store the metrics in it."""
    ckpt = load_checkpoint(best_path)
    model = ckpt.build_model().to(device)
    result: dict[str, Any] = {}
    for name, tensors in (("val", data.val), ("test", data.test)):
        if tensors is None:
            continue
        probs, result[name] = evaluate(model, tensors, data.taxonomy, device)
        write_predictions(out_dir / f"predictions_{name}.csv", tensors, probs, data.taxonomy)
    ckpt.metrics = {**ckpt.metrics, **result}
    ckpt.save(best_path)
    return result
