"""Calibration: expected calibration error, Brier score, the reliability curve, and temperature
scaling (one temperature T for all classes: ``softmax(log p / T)``, fitted on validation by
minimising the negative log-likelihood; T > 1 softens over-confident probabilities)."""

from __future__ import annotations

import numpy as np
from scipy import optimize

from dmfn.contract.errors import InvalidInput

DEFAULT_BINS = 10
#: Probabilities are clipped to [EPS, 1] before their logarithm.
EPS = 1e-12


def _check(labels: object, probs: object) -> tuple[np.ndarray, np.ndarray]:
    y = np.asarray(labels, dtype=np.int64)
    p = np.asarray(probs, dtype=np.float64)
    if p.ndim != 2 or y.shape != (p.shape[0],) or p.shape[0] == 0:
        raise InvalidInput("probs", f"need [N, C] probabilities for N labels, got {p.shape}")
    if not np.isfinite(p).all():
        raise InvalidInput("probs", "must be finite (found NaN or Inf)")
    return y, p


def expected_calibration_error(labels: object, probs: object, bins: int = DEFAULT_BINS) -> float:
    """ECE of the top-label confidence: the case-weighted mean |accuracy - confidence| over
    ``bins`` equal-width confidence bins."""
    y, p = _check(labels, probs)
    confidence = p.max(axis=1)
    correct = (p.argmax(axis=1) == y).astype(float)
    edges = np.linspace(0.0, 1.0, bins + 1)
    which = np.clip(np.digitize(confidence, edges[1:-1], right=True), 0, bins - 1)
    ece = 0.0
    for b in range(bins):
        inside = which == b
        if inside.any():
            ece += inside.mean() * abs(correct[inside].mean() - confidence[inside].mean())
    return float(ece)


def reliability(
    labels: object, probs: object, bins: int = DEFAULT_BINS
) -> list[dict[str, float | int]]:
    """Per confidence bin: its range, case count, mean confidence and accuracy (for the plot)."""
    y, p = _check(labels, probs)
    confidence = p.max(axis=1)
    correct = (p.argmax(axis=1) == y).astype(float)
    edges = np.linspace(0.0, 1.0, bins + 1)
    which = np.clip(np.digitize(confidence, edges[1:-1], right=True), 0, bins - 1)
    out = []
    for b in range(bins):
        inside = which == b
        out.append(
            {
                "low": float(edges[b]),
                "high": float(edges[b + 1]),
                "n": int(inside.sum()),
                "confidence": float(confidence[inside].mean()) if inside.any() else float("nan"),
                "accuracy": float(correct[inside].mean()) if inside.any() else float("nan"),
            }
        )
    return out


def brier_score(labels: object, probs: object) -> float:
    """Multi-class Brier score: the mean over cases of the squared distance between the
    probability vector and the one-hot truth (0 = perfect, 2 = worst)."""
    y, p = _check(labels, probs)
    onehot = np.zeros_like(p)
    onehot[np.arange(y.size), y] = 1.0
    return float(((p - onehot) ** 2).sum(axis=1).mean())


def apply_temperature(probs: object, temperature: float) -> np.ndarray:
    """``softmax(log p / T)`` row-wise (probabilities in, probabilities out)."""
    if not temperature > 0:
        raise InvalidInput("temperature", f"must be > 0, got {temperature!r}")
    logp = np.log(np.clip(np.asarray(probs, dtype=np.float64), EPS, 1.0)) / temperature
    logp -= logp.max(axis=1, keepdims=True)
    e = np.exp(logp)
    return e / e.sum(axis=1, keepdims=True)


def fit_temperature(labels: object, probs: object) -> float:
    """The temperature in [0.05, 20] minimising the negative log-likelihood of ``labels`` under
    :func:`apply_temperature` (bounded scalar search on log T)."""
    y, p = _check(labels, probs)

    def nll(log_t: float) -> float:
        q = apply_temperature(p, float(np.exp(log_t)))
        return float(-np.log(np.clip(q[np.arange(y.size), y], EPS, 1.0)).mean())

    result = optimize.minimize_scalar(nll, bounds=(np.log(0.05), np.log(20.0)), method="bounded")
    return float(np.exp(result.x))
