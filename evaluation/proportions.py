"""Proportions with confidence intervals, the decision threshold, and McNemar's test, as R computes
them.

- :func:`proportion_ci`: Wilson's score interval (R ``prop.test(x, n, correct = FALSE)``) or the
  exact Clopper-Pearson interval (R ``binom.test(x, n)``).
- :func:`diagnostic_metrics`: sensitivity, specificity, PPV, NPV and accuracy of calls at a
  threshold (a case is positive when its score is >= the threshold), each with its interval.
- :func:`youden_threshold`: the threshold maximising sensitivity + specificity - 1
  (``pROC::coords(roc, "best", best.method = "youden")``: thresholds lie halfway between
  consecutive distinct scores).
- :func:`mcnemar`: McNemar's test on paired calls: the chi-square with continuity correction (R
  ``mcnemar.test``) and the exact binomial test on the discordant pairs (R ``binom.test``).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
from scipy import stats

from dmfn.contract.errors import InvalidInput

CI_METHODS: tuple[str, ...] = ("wilson", "clopper-pearson")


@dataclass(frozen=True)
class Proportion:
    """``successes`` of ``n`` with its interval (``method`` names it)."""

    successes: int
    n: int
    low: float
    high: float
    method: str

    @property
    def value(self) -> float:
        return self.successes / self.n if self.n else math.nan

    def to_dict(self) -> dict[str, float | int | str]:
        return {
            "value": self.value,
            "ci_low": self.low,
            "ci_high": self.high,
            "successes": self.successes,
            "n": self.n,
            "ci_method": self.method,
        }


def proportion_ci(
    successes: int, n: int, method: str = "wilson", level: float = 0.95
) -> Proportion:
    """The interval of ``successes / n``. With ``n == 0`` the value and bounds are NaN."""
    if method not in CI_METHODS:
        raise InvalidInput("ci_method", f"must be one of {CI_METHODS}, got {method!r}")
    x, n = int(successes), int(n)
    if not 0 <= x <= max(n, 0):
        raise InvalidInput("successes", f"must be in [0, n = {n}], got {x}")
    if n == 0:
        return Proportion(x, n, math.nan, math.nan, method)
    alpha = 1.0 - level
    if method == "clopper-pearson":
        low = 0.0 if x == 0 else float(stats.beta.ppf(alpha / 2, x, n - x + 1))
        high = 1.0 if x == n else float(stats.beta.ppf(1 - alpha / 2, x + 1, n - x))
        return Proportion(x, n, low, high, method)
    z = float(stats.norm.ppf(1 - alpha / 2))
    p = x / n
    centre = (p + z * z / (2 * n)) / (1 + z * z / n)
    half = z * math.sqrt(p * (1 - p) / n + z * z / (4 * n * n)) / (1 + z * z / n)
    # the bounds are exactly 0 at x = 0 and 1 at x = n; rounding would leave them 1e-17 off
    low = 0.0 if x == 0 else max(0.0, centre - half)
    high = 1.0 if x == n else min(1.0, centre + half)
    return Proportion(x, n, low, high, method)


@dataclass(frozen=True)
class Diagnostic:
    """Calls at one threshold: the 2x2 table and the five proportions with intervals."""

    threshold: float
    tp: int
    fp: int
    tn: int
    fn: int
    sensitivity: Proportion
    specificity: Proportion
    ppv: Proportion
    npv: Proportion
    accuracy: Proportion

    def to_dict(self) -> dict[str, object]:
        return {
            "threshold": self.threshold,
            "tp": self.tp,
            "fp": self.fp,
            "tn": self.tn,
            "fn": self.fn,
            **{
                name: getattr(self, name).to_dict()
                for name in ("sensitivity", "specificity", "ppv", "npv", "accuracy")
            },
        }


def diagnostic_from_calls(
    y_true: object, called_positive: object, method: str = "wilson", threshold: float = math.nan
) -> Diagnostic:
    """Sensitivity, specificity, PPV, NPV and accuracy of 0/1 calls against 0/1 truth."""
    y = np.asarray(y_true).astype(bool)
    c = np.asarray(called_positive).astype(bool)
    if y.shape != c.shape or y.ndim != 1:
        raise InvalidInput("calls", f"need one call per case: {c.shape} for {y.shape}")
    tp, fp = int((c & y).sum()), int((c & ~y).sum())
    tn, fn = int((~c & ~y).sum()), int((~c & y).sum())
    return Diagnostic(
        threshold, tp, fp, tn, fn,
        proportion_ci(tp, tp + fn, method),
        proportion_ci(tn, tn + fp, method),
        proportion_ci(tp, tp + fp, method),
        proportion_ci(tn, tn + fn, method),
        proportion_ci(tp + tn, y.size, method),
    )  # fmt: skip


def diagnostic_metrics(
    y_true: object, score: object, threshold: float, method: str = "wilson"
) -> Diagnostic:
    """:func:`diagnostic_from_calls` of the calls ``score >= threshold``."""
    s = np.asarray(score, dtype=np.float64)
    if not np.isfinite(s).all():
        raise InvalidInput("score", "must be finite (found NaN or Inf)")
    return diagnostic_from_calls(y_true, s >= threshold, method, float(threshold))


def youden_threshold(y_true: object, score: object) -> float:
    """The threshold of largest Youden index (sensitivity + specificity - 1); candidates lie
    halfway between consecutive distinct scores (and below / above all of them), as in pROC; the
    first of tied optima in increasing order of threshold."""
    from .roc import binary_inputs

    pos, neg = binary_inputs(y_true, score)
    values = np.unique(np.concatenate([pos, neg]))
    candidates = np.r_[-np.inf, (values[1:] + values[:-1]) / 2.0, np.inf]
    best, best_j = candidates[0], -np.inf
    for t in candidates:
        j = (pos >= t).mean() + (neg < t).mean() - 1.0
        if j > best_j + 1e-12:
            best, best_j = t, j
    return float(best)


@dataclass(frozen=True)
class McNemar:
    """McNemar's test on paired calls: discordant counts ``b`` (only the first right) and ``c``
    (only the second right), the corrected chi-square and its p, and the exact p."""

    b: int
    c: int
    chi2: float
    p_chi2: float
    p_exact: float

    def to_dict(self) -> dict[str, float | int]:
        return {"b": self.b, "c": self.c, "chi2": self.chi2, "p_chi2": self.p_chi2,
                "p_exact": self.p_exact}  # fmt: skip


def mcnemar(correct_1: object, correct_2: object) -> McNemar:
    """McNemar's test of two systems' correctness on the same cases (booleans, one per case).

    The chi-square is ``(|b - c| - 1)^2 / (b + c)`` (continuity-corrected, R ``mcnemar.test``,
    which leaves the correction out when ``b == c``);
    the exact p is R's ``binom.test(b, b + c)``. With no discordant pair both p are 1.
    """
    a1 = np.asarray(correct_1).astype(bool)
    a2 = np.asarray(correct_2).astype(bool)
    if a1.shape != a2.shape or a1.ndim != 1:
        raise InvalidInput("calls", f"must pair one call per case: {a1.shape} and {a2.shape}")
    b, c = int((a1 & ~a2).sum()), int((~a1 & a2).sum())
    if b + c == 0:
        return McNemar(b, c, 0.0, 1.0, 1.0)
    # R applies the continuity correction only when the table is not symmetric (b != c).
    correction = 1.0 if b != c else 0.0
    chi2 = (abs(b - c) - correction) ** 2 / (b + c)
    p_chi2 = float(stats.chi2.sf(chi2, 1))
    p_exact = float(stats.binomtest(b, b + c, 0.5).pvalue)
    return McNemar(b, c, chi2, p_chi2, p_exact)
