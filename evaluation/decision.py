"""Decision curve analysis (Vickers & Elkin, Med Decis Making 2006): the net benefit of acting
on a score (e.g. surgery when the malignant probability reaches a threshold probability p_t)
against acting on every patient and on none.

At threshold probability ``p_t`` a clinician who acts when the score is at least ``p_t``
weighs a false positive as ``p_t / (1 - p_t)`` true positives, so::

    net benefit = TP / n - FP / n * p_t / (1 - p_t)

"Treat all" has TP = the positives and FP = the negatives; "treat none" has net benefit 0. A
model helps at ``p_t`` when its curve lies above both. The score must be a probability of the
positive class for ``p_t`` to mean what it says (a badly calibrated model's curve is lowered).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import numpy as np

from dmfn.contract.errors import InvalidInput

#: Threshold probabilities of the curve (the figure) and of the report's table.
CURVE_THRESHOLDS = np.round(np.arange(0.01, 0.991, 0.01), 2)
TABLE_THRESHOLDS: tuple[float, ...] = (0.05, 0.1, 0.2, 0.3, 0.5)


def _check(y: np.ndarray, thresholds: np.ndarray) -> None:
    if y.ndim != 1 or y.size == 0 or not np.isin(y, (0, 1)).all():
        raise InvalidInput("y", "must be a non-empty 1-D array of 0 / 1")
    if not ((thresholds > 0) & (thresholds < 1)).all():
        raise InvalidInput("thresholds", "threshold probabilities must lie in (0, 1)")


def net_benefit(
    y: np.ndarray, score: np.ndarray, thresholds: Sequence[float] | np.ndarray
) -> np.ndarray:
    """Net benefit of acting when ``score >= p_t``, for each ``p_t`` in ``thresholds``.

    ``y``: 0/1 truth (1 = positive), ``score``: the positive class's probability, one per
    patient."""
    y = np.asarray(y)
    score = np.asarray(score, dtype=np.float64)
    t = np.asarray(thresholds, dtype=np.float64)
    _check(y, t)
    if score.shape != y.shape:
        raise InvalidInput("score", f"must have one value per patient ({y.size}), got {score.size}")
    acted = score[None, :] >= t[:, None]
    tp = (acted & (y[None, :] == 1)).sum(axis=1)
    fp = (acted & (y[None, :] == 0)).sum(axis=1)
    return tp / y.size - fp / y.size * t / (1 - t)


def treat_all(y: np.ndarray, thresholds: Sequence[float] | np.ndarray) -> np.ndarray:
    """Net benefit of acting on every patient: prevalence - (1 - prevalence) p_t / (1 - p_t)."""
    y = np.asarray(y)
    t = np.asarray(thresholds, dtype=np.float64)
    _check(y, t)
    prevalence = float(y.mean())
    return prevalence - (1 - prevalence) * t / (1 - t)


def decision_curves(
    y: np.ndarray, scores: Mapping[str, np.ndarray], thresholds: Sequence[float] | np.ndarray
) -> dict[str, object]:
    """The curves of each scored system, treat all and treat none at ``thresholds`` (lists, for
    ``metrics.json``)."""
    t = np.asarray(thresholds, dtype=np.float64)
    return {
        "thresholds": t.tolist(),
        "systems": {name: net_benefit(y, s, t).tolist() for name, s in scores.items()},
        "treat_all": treat_all(y, t).tolist(),
        "treat_none": [0.0] * t.size,
        "n": int(np.asarray(y).size),
        "n_positive": int(np.asarray(y).sum()),
    }
