"""Calibration: expected calibration error, Brier score, the reliability curve, and temperature
scaling (one temperature T for all classes: ``softmax(log p / T)``, fitted on validation by
minimising the negative log-likelihood; T > 1 softens over-confident probabilities)."""

from __future__ import annotations

import numpy as np
from scipy import optimize, special

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


def _bins(values: np.ndarray, bins: int) -> tuple[np.ndarray, np.ndarray]:
    """The ``bins + 1`` edges of equal-width bins over [0, 1] and the bin of each value (a value
    on an inner edge belongs to the lower bin)."""
    edges = np.linspace(0.0, 1.0, bins + 1)
    return edges, np.clip(np.digitize(values, edges[1:-1], right=True), 0, bins - 1)


def expected_calibration_error(labels: object, probs: object, bins: int = DEFAULT_BINS) -> float:
    """ECE of the top-label confidence: the case-weighted mean |accuracy - confidence| over
    ``bins`` equal-width confidence bins."""
    y, p = _check(labels, probs)
    confidence = p.max(axis=1)
    correct = (p.argmax(axis=1) == y).astype(float)
    _, which = _bins(confidence, bins)
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
    edges, which = _bins(confidence, bins)
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


# --------------------------------------------------------------------------- binary
def _check_binary(y: object, p: object) -> tuple[np.ndarray, np.ndarray]:
    truth = np.asarray(y)
    prob = np.asarray(p, dtype=np.float64)
    if truth.ndim != 1 or truth.shape != prob.shape or truth.size == 0:
        raise InvalidInput(
            "p", f"need one probability per case, got {prob.shape} for {truth.shape}"
        )
    if not np.isin(truth, (0, 1)).all():
        raise InvalidInput("y", "must be 0 / 1")
    if not (np.isfinite(prob).all() and (prob >= 0).all() and (prob <= 1).all()):
        raise InvalidInput("p", "must be probabilities in [0, 1]")
    return truth.astype(np.int64), prob


def binary_reliability(
    y: object, p: object, bins: int = DEFAULT_BINS, ci_method: str = "wilson"
) -> list[dict[str, float | int]]:
    """The calibration curve of a binary probability (e.g. the malignant probability): per
    equal-width bin of ``p``, its range, case count, mean predicted probability, the observed
    share of positives with its 95 % interval (``ci_method``), and the positives and
    negatives in it (for the histogram under the curve)."""
    from .proportions import proportion_ci

    truth, prob = _check_binary(y, p)
    edges, which = _bins(prob, bins)
    out = []
    for b in range(bins):
        inside = which == b
        k, n = int(truth[inside].sum()), int(inside.sum())
        observed = proportion_ci(k, n, ci_method)
        out.append({
            "low": float(edges[b]), "high": float(edges[b + 1]), "n": n,
            "predicted": float(prob[inside].mean()) if n else float("nan"),
            "observed": observed.value, "ci_low": observed.low, "ci_high": observed.high,
            "positives": k, "negatives": n - k,
        })  # fmt: skip
    return out


def _logit(p: np.ndarray) -> np.ndarray:
    q = np.clip(p, 1e-6, 1 - 1e-6)
    return np.log(q / (1 - q))


def _logistic_fit(y: np.ndarray, x: np.ndarray | None, offset: np.ndarray) -> np.ndarray:
    """Maximum-likelihood coefficients of ``logit P(y) = a + b x + offset`` (b absent when ``x``
    is None) by Newton-Raphson, as R's ``glm(family = binomial)`` fits them."""
    design = np.ones((y.size, 1)) if x is None else np.column_stack([np.ones(y.size), x])
    beta = np.zeros(design.shape[1])
    for _ in range(100):
        mu = special.expit(design @ beta + offset)
        w = np.maximum(mu * (1 - mu), 1e-12)
        step = np.linalg.solve(design.T @ (design * w[:, None]), design.T @ (y - mu))
        beta = beta + step
        if np.abs(step).max() < 1e-10 * (1 + np.abs(beta).max()):
            return beta
    return np.full(design.shape[1], np.nan)  # no maximum: separated data


def calibration_summary(y: object, p: object) -> dict[str, float]:
    """Weak calibration of a binary probability (Van Calster et al., J Clin Epidemiol 2016):
    the calibration slope (``logit P(y) = a + b logit p``; 1 is ideal, < 1 means too extreme),
    the calibration intercept with the slope fixed at 1 (calibration-in-the-large; 0 is
    ideal, > 0 means underestimated risk), the mean predicted probability, the observed
    prevalence and the Brier score. Slopes are undefined (NaN) when one class is absent."""
    truth, prob = _check_binary(y, p)
    lp = _logit(prob)
    both = 0 < truth.sum() < truth.size
    slope = _logistic_fit(truth, lp, np.zeros(truth.size))[1] if both else float("nan")
    intercept = _logistic_fit(truth, None, lp)[0] if both else float("nan")
    return {
        "slope": float(slope),
        "intercept": float(intercept),
        "mean_predicted": float(prob.mean()),
        "observed": float(truth.mean()),
        "brier": float(((prob - truth) ** 2).mean()),
    }
