"""The analysis of one system's predictions and the comparisons between systems, at the patient
level: every number of ``dmfn evaluate``'s report except the reader study and the cohort table.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

from dmfn.contract.errors import InvalidInput
from dmfn.contract.predictions import PredictionTable
from dmfn.contract.taxonomy import GROUPS, Taxonomy

from . import calibration, metrics
from .proportions import (
    diagnostic_metrics,
    mcnemar,
    proportion_ci,
    youden_threshold,
)
from .roc import auc_bootstrap, auc_delong, delong_paired

POSITIVES: tuple[str, ...] = ("malignant", "benign")
#: Below this many positives or negatives an AUC's interval is not reported: the report shows a
#: warning in its place (DeLong's and the bootstrap's intervals are unreliable there).
MIN_CASES_FOR_CI = 5


def too_few_for_ci(n_positive: int, n_negative: int) -> bool:
    """Whether an AUC on ``n_positive`` and ``n_negative`` cases gets a warning, not a CI."""
    return min(n_positive, n_negative) < MIN_CASES_FOR_CI


@dataclass(frozen=True)
class SystemScores:
    """One system's patient-level scores on the evaluated patients (in ``patient_ids`` order).

    ``malignant`` is 1 for a malignant patient; ``classes`` the true class index (None for a
    binary-only file or labels given as benign / malignant); ``probs`` [N, C] (None when the
    file is binary only); ``malignant_prob`` the score for malignancy.
    """

    name: str
    patient_ids: tuple[str, ...]
    malignant: np.ndarray
    malignant_prob: np.ndarray
    classes: np.ndarray | None
    probs: np.ndarray | None
    class_names: tuple[str, ...]

    def binary(self, positive: str) -> tuple[np.ndarray, np.ndarray]:
        """(0/1 truth, score) with ``positive`` ("malignant" or "benign") as the positive class."""
        if positive == "malignant":
            return self.malignant, self.malignant_prob
        return 1 - self.malignant, 1.0 - self.malignant_prob


def scores_of(
    table: PredictionTable,
    taxonomy: Taxonomy,
    name: str,
    split: str | None = None,
) -> SystemScores:
    """The patient-level scores of ``table`` (its rows of ``split`` when given and the file has a
    split column), with the truth from its ``label`` column: a class of ``taxonomy`` or
    benign / malignant. InvalidInput naming the file for unknown labels or missing truth."""
    rows = table.patient_rows()
    if split:
        with_split = [r for r in rows if r.split]
        if with_split:
            rows = [r for r in rows if r.split == split]
            if not rows:
                raise InvalidInput("split", f"{table.path}: no patient of split {split!r}")
    malignant: list[bool] = []
    classes: list[int | None] = []
    for r in rows:
        if not r.label:
            raise InvalidInput("label", f"{table.path}: patient {r.patient_id!r} has no label")
        if r.label in GROUPS:
            malignant.append(r.label == "malignant")
            classes.append(None)
            continue
        try:
            index = taxonomy.index(r.label)
        except ValueError:
            raise InvalidInput(
                "label",
                f"{table.path}: unknown class {r.label!r} of patient {r.patient_id!r} (a class of "
                f"the taxonomy, or benign / malignant)",
            ) from None
        malignant.append(bool(taxonomy.malignant_mask[index]))
        classes.append(index)
    full = not table.binary_only and all(c is not None for c in classes)
    if not table.binary_only and tuple(table.classes) != tuple(taxonomy.names):
        raise InvalidInput(
            "predictions",
            f"{table.path}: its classes {list(table.classes)[:4]}... differ from the taxonomy's",
        )
    return SystemScores(
        name=name,
        patient_ids=tuple(r.patient_id for r in rows),
        malignant=np.array(malignant, dtype=np.int64),
        malignant_prob=np.array([r.malignant_prob for r in rows]),
        classes=np.array(classes, dtype=np.int64) if full else None,
        probs=np.array([r.probs for r in rows]) if full else None,
        class_names=tuple(taxonomy.names),
    )


def align(systems: Sequence[SystemScores], files: Sequence[str]) -> list[SystemScores]:
    """The systems restricted to the same patients in the same order; InvalidInput naming the
    files when their patients differ."""
    first = systems[0]
    wanted = set(first.patient_ids)
    for s, f in zip(systems[1:], files[1:], strict=True):
        other = set(s.patient_ids)
        if other != wanted:
            only_a, only_b = sorted(wanted - other), sorted(other - wanted)
            raise InvalidInput(
                "compare",
                f"the patients of {files[0]} and {f} differ: {len(only_a)} only in the first "
                f"(e.g. {only_a[:3]}), {len(only_b)} only in the second (e.g. {only_b[:3]}); "
                "compare systems on the same patients",
            )
    out = [first]
    for s in systems[1:]:
        order = [s.patient_ids.index(p) for p in first.patient_ids]
        if not np.array_equal(s.malignant[order], first.malignant):
            raise InvalidInput("compare", f"{s.name}: its labels differ from {first.name}'s")
        out.append(
            SystemScores(
                s.name, first.patient_ids, s.malignant[order], s.malignant_prob[order],
                None if s.classes is None else s.classes[order],
                None if s.probs is None else s.probs[order], s.class_names,
            )
        )  # fmt: skip
    return out


def bootstrap_multiclass(
    labels: np.ndarray, probs: np.ndarray, n_boot: int, seed: int
) -> dict[str, tuple[float, float]]:
    """Percentile 95 % intervals of the Hand & Till and the macro one-vs-rest AUCs from the same
    stratified bootstrap (resampling within each class, so every class stays present)."""
    rng = np.random.default_rng(seed)
    groups = [np.flatnonzero(labels == c) for c in np.unique(labels)]
    hand_till, macro = [], []
    for _ in range(n_boot):
        idx = np.concatenate([g[rng.integers(0, g.size, g.size)] for g in groups])
        hand_till.append(metrics.hand_till_auc(labels[idx], probs[idx]))
        macro.append(metrics.macro_ovr_auc(labels[idx], probs[idx]))
    out = {}
    for name, values in (("hand_till", hand_till), ("macro_ovr", macro)):
        low, high = np.quantile(values, [0.025, 0.975])
        out[name] = (float(low), float(high))
    return out


def analyse(
    s: SystemScores,
    positive: str = "malignant",
    threshold: float | None = None,
    threshold_source: str = "given",
    ci_method: str = "wilson",
    n_boot: int = 1000,
    seed: int = 0,
) -> dict[str, object]:
    """Binary (ROC AUC with DeLong and bootstrap intervals; sensitivity, specificity, PPV, NPV,
    accuracy at the threshold), multi-class (Hand & Till with a bootstrap interval, macro and
    per-class one-vs-rest AUCs with DeLong intervals, top-1 / top-3 accuracy, the confusion
    matrix) and calibration. ``threshold`` None: the Youden threshold of these cases (said so)."""
    if positive not in POSITIVES:
        raise InvalidInput("positive", f"must be one of {POSITIVES}, got {positive!r}")
    y, score = s.binary(positive)
    if threshold is None:
        threshold, threshold_source = youden_threshold(y, score), "youden on the evaluated cases"
    out: dict[str, object] = {
        "n_patients": len(s.patient_ids),
        "n_malignant": int(s.malignant.sum()),
        "n_benign": int((1 - s.malignant).sum()),
        "binary": {
            "positive": positive,
            "auc": auc_delong(y, score).to_dict(),
            "auc_bootstrap": auc_bootstrap(y, score, n_boot, seed).to_dict(),
            "threshold": {"value": threshold, "chosen": threshold_source},
            "at_threshold": diagnostic_metrics(y, score, threshold, ci_method).to_dict(),
            "calibration": {
                **calibration.calibration_summary(y, score),
                "curve": calibration.binary_reliability(y, score, ci_method=ci_method),
            },
        },
    }
    if s.probs is not None and s.classes is not None:
        labels, probs = s.classes, s.probs
        per_class = {}
        for c in np.unique(labels):
            is_c = (labels == c).astype(np.int64)
            if 0 < is_c.sum() < is_c.size:
                auc = auc_delong(is_c, probs[:, c]).to_dict()
                n_c = int(is_c.sum())
                auc["too_few_for_ci"] = too_few_for_ci(n_c, is_c.size - n_c)
                per_class[s.class_names[c]] = auc
        top = np.argsort(-probs, axis=1, kind="stable")
        top1 = int((top[:, 0] == labels).sum())
        top3 = int((top[:, :3] == labels[:, None]).any(axis=1).sum())
        n = labels.size
        confusion = np.zeros((len(s.class_names),) * 2, dtype=np.int64)
        np.add.at(confusion, (labels, top[:, 0]), 1)
        boot = bootstrap_multiclass(labels, probs, max(200, n_boot // 5), seed)
        out["multiclass"] = {
            "classes_present": int(np.unique(labels).size),
            "hand_till_auc": {
                "auc": metrics.hand_till_auc(labels, probs),
                "ci_low": boot["hand_till"][0],
                "ci_high": boot["hand_till"][1],
                "ci_method": "stratified bootstrap",
            },
            "macro_ovr_auc": {
                "auc": float(np.mean([float(v["auc"]) for v in per_class.values()])),
                "ci_low": boot["macro_ovr"][0],
                "ci_high": boot["macro_ovr"][1],
                "ci_method": "stratified bootstrap",
            },
            "per_class_auc": per_class,
            "top1": proportion_ci(top1, n, ci_method).to_dict(),
            "top3": proportion_ci(top3, n, ci_method).to_dict(),
            "confusion": {"classes": list(s.class_names), "counts": confusion.tolist()},
        }
        out["calibration"] = {
            "ece": calibration.expected_calibration_error(labels, probs),
            "brier": calibration.brier_score(labels, probs),
            "reliability": calibration.reliability(labels, probs),
        }
    return out


def compare(
    a: SystemScores,
    b: SystemScores,
    positive: str,
    threshold_a: float,
    threshold_b: float,
) -> dict[str, object]:
    """Paired DeLong test of the binary AUCs and McNemar's test of the calls (each system at its
    own threshold) of two systems on the same patients."""
    y, score_a = a.binary(positive)
    _, score_b = b.binary(positive)
    right_a = (score_a >= threshold_a) == (y == 1)
    right_b = (score_b >= threshold_b) == (y == 1)
    return {
        "system_1": a.name,
        "system_2": b.name,
        "delong_paired": delong_paired(y, score_a, score_b).to_dict(),
        "mcnemar_calls": mcnemar(right_a, right_b).to_dict(),
    }


def finite_or_none(value: float) -> float | None:
    """JSON-friendly: NaN and infinities become None."""
    return value if isinstance(value, float) and math.isfinite(value) else None
