"""Classification metrics used while training: small, exact, NumPy only.

- :func:`binary_auc`: the area under the ROC curve as the Mann-Whitney statistic, a tie between a
  positive and a negative counting 0.5 (what R pROC's ``auc`` returns for the same data).
- :func:`macro_ovr_auc`: mean over classes of the one-vs-rest binary AUC.
- :func:`hand_till_auc`: Hand & Till (2001) multi-class AUC, the mean over class pairs of
  ``(A(i|j) + A(j|i)) / 2`` computed on the cases of the two classes only, with column ``i`` of the
  probability matrix scoring class ``i`` (as R pROC's ``multiclass.roc`` with a matrix predictor).
- :func:`accuracy`, :func:`top_k_accuracy`.

Inputs: ``labels`` int [N] class indices in ``[0, C)``; ``probs`` float [N, C] (one row per case,
any scores that are larger for the more likely class). Classes without cases are left out of the
multi-class AUCs (they have no defined AUC). The statistics module of ``dmfn evaluate`` extends
these (DeLong confidence intervals); keep every AUC definition in this one module.
"""

from __future__ import annotations

from itertools import combinations

import numpy as np


def _as_labels(labels: object, argument: str = "labels") -> np.ndarray:
    arr = np.asarray(labels)
    if arr.ndim != 1 or arr.size == 0:
        raise ValueError(f"argument '{argument}': must be a non-empty 1D array, got {arr.shape}")
    if arr.dtype.kind == "b":
        arr = arr.astype(np.int64)
    if arr.dtype.kind == "f":
        if not np.all(np.isfinite(arr)) or not np.all(arr == np.round(arr)):
            raise ValueError(f"argument '{argument}': must hold integer class indices")
        arr = arr.astype(np.int64)
    if arr.dtype.kind not in "iu":
        raise ValueError(f"argument '{argument}': must hold integer class indices, got {arr.dtype}")
    if arr.min() < 0:
        raise ValueError(f"argument '{argument}': class indices must be >= 0, got {arr.min()}")
    return arr.astype(np.int64)


def _as_scores(scores: object, n: int, ndim: int, argument: str) -> np.ndarray:
    arr = np.asarray(scores, dtype=np.float64)
    if arr.ndim != ndim or arr.shape[0] != n:
        raise ValueError(
            f"argument '{argument}': must be a {ndim}D array with {n} rows, got shape {arr.shape}"
        )
    if not np.all(np.isfinite(arr)):
        raise ValueError(f"argument '{argument}': must be finite (found NaN or Inf)")
    return arr


def _as_probs(labels: np.ndarray, probs: object) -> np.ndarray:
    arr = _as_scores(probs, labels.size, 2, "probs")
    if labels.max() >= arr.shape[1]:
        raise ValueError(
            f"argument 'labels': class index {labels.max()} out of range for {arr.shape[1]} "
            "probability columns"
        )
    return arr


def _mann_whitney_auc(pos: np.ndarray, neg: np.ndarray) -> float:
    """P(score_pos > score_neg) + 0.5 P(equal), from mid-ranks of the pooled scores (exact)."""
    pooled = np.concatenate([pos, neg])
    order = np.argsort(pooled, kind="mergesort")
    sorted_scores = pooled[order]
    # Mid-ranks: every run of equal scores gets the mean of the ranks it spans (1-based).
    starts = np.flatnonzero(np.r_[True, sorted_scores[1:] != sorted_scores[:-1]])
    ends = np.r_[starts[1:], sorted_scores.size]
    midranks = np.repeat((starts + ends + 1) / 2.0, ends - starts)
    ranks = np.empty_like(midranks)
    ranks[order] = midranks
    n_pos, n_neg = pos.size, neg.size
    u = ranks[:n_pos].sum() - n_pos * (n_pos + 1) / 2.0
    return float(u / (n_pos * n_neg))


def binary_auc(y_true: object, score: object) -> float:
    """ROC AUC of ``score`` for ``y_true`` (1 = positive, 0 = negative); ties count 0.5.

    ValueError when ``y_true`` is not 0/1 or lacks either class (the AUC is undefined then).
    """
    y = _as_labels(y_true, "y_true")
    s = _as_scores(score, y.size, 1, "score")
    if y.max() > 1:
        raise ValueError("argument 'y_true': must hold 0 (negative) and 1 (positive) only")
    pos, neg = s[y == 1], s[y == 0]
    if pos.size == 0 or neg.size == 0:
        raise ValueError(
            "argument 'y_true': needs at least one positive and one negative case, got "
            f"{pos.size} positive and {neg.size} negative"
        )
    return _mann_whitney_auc(pos, neg)


def per_class_ovr_auc(labels: object, probs: object) -> dict[int, float]:
    """One-vs-rest AUC of column ``c`` for every class ``c`` that has cases and non-cases."""
    y = _as_labels(labels)
    p = _as_probs(y, probs)
    out: dict[int, float] = {}
    for c in np.unique(y):
        is_c = y == c
        if is_c.all():
            continue
        out[int(c)] = _mann_whitney_auc(p[is_c, c], p[~is_c, c])
    return out


def macro_ovr_auc(labels: object, probs: object) -> float:
    """Unweighted mean of the one-vs-rest AUCs of the classes present in ``labels``.

    ValueError when fewer than two classes are present.
    """
    per_class = per_class_ovr_auc(labels, probs)
    if len(per_class) < 2:
        raise ValueError("argument 'labels': a multi-class AUC needs at least two classes present")
    return float(np.mean(list(per_class.values())))


def hand_till_auc(labels: object, probs: object) -> float:
    """Hand & Till multi-class AUC over the classes present in ``labels`` (R pROC multiclass.roc).

    For each pair (i, j): ``A(i|j)`` = AUC of ``probs[:, i]`` separating class i from class j on
    the cases of classes i and j; the pair's value is ``(A(i|j) + A(j|i)) / 2``; the result is the
    mean over pairs. ValueError when fewer than two classes are present.
    """
    y = _as_labels(labels)
    p = _as_probs(y, probs)
    present = np.unique(y)
    if present.size < 2:
        raise ValueError("argument 'labels': a multi-class AUC needs at least two classes present")
    pair_aucs = []
    for i, j in combinations(present, 2):
        in_i, in_j = y == i, y == j
        a_ij = _mann_whitney_auc(p[in_i, i], p[in_j, i])
        a_ji = _mann_whitney_auc(p[in_j, j], p[in_i, j])
        pair_aucs.append((a_ij + a_ji) / 2.0)
    return float(np.mean(pair_aucs))


def accuracy(labels: object, probs: object) -> float:
    """Fraction of cases whose highest-scoring class is the true class (ties: lowest index)."""
    y = _as_labels(labels)
    p = _as_probs(y, probs)
    return float(np.mean(np.argmax(p, axis=1) == y))


def top_k_accuracy(labels: object, probs: object, k: int = 3) -> float:
    """Fraction of cases whose true class is among the ``k`` highest scores (stable order)."""
    y = _as_labels(labels)
    p = _as_probs(y, probs)
    if not 1 <= k <= p.shape[1]:
        raise ValueError(f"argument 'k': must be in [1, {p.shape[1]}], got {k}")
    top = np.argsort(-p, axis=1, kind="stable")[:, :k]
    return float(np.mean(np.any(top == y[:, None], axis=1)))


def classification_summary(
    labels: object, probs: object, malignant_mask: object, k: int = 3
) -> dict[str, float]:
    """All training metrics at once; ``malignant_mask`` bool [C] marks the malignant classes.

    The binary (benign vs malignant) score is the summed probability of the malignant classes.
    A metric that is undefined on these cases (e.g. only benign cases) is NaN.
    """
    y = _as_labels(labels)
    p = _as_probs(y, probs)
    mask = np.asarray(malignant_mask, dtype=bool)
    if mask.shape != (p.shape[1],):
        raise ValueError(
            f"argument 'malignant_mask': must have one entry per class ({p.shape[1]}), "
            f"got shape {mask.shape}"
        )
    out: dict[str, float] = {
        "accuracy": accuracy(y, p),
        "top3_accuracy": top_k_accuracy(y, p, min(k, p.shape[1])),
    }
    y_malignant = mask[y].astype(np.int64)
    score_malignant = p[:, mask].sum(axis=1)
    for name, fn, args in (
        ("binary_auc", binary_auc, (y_malignant, score_malignant)),
        ("macro_auc", macro_ovr_auc, (y, p)),
        ("hand_till_auc", hand_till_auc, (y, p)),
    ):
        try:
            out[name] = fn(*args)
        except ValueError:
            out[name] = float("nan")
    return out
