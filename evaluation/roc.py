"""Binary ROC analysis as R pROC computes it: the curve, the AUC with its DeLong variance and 95 %
confidence interval, DeLong's tests between two curves, and a stratified bootstrap interval.

Conventions (those of ``pROC::roc(response, predictor, levels = c(negative, positive),
direction = "<")``): a higher score means "more likely positive"; the AUC is the Mann-Whitney
statistic, a tie between a positive and a negative counting 0.5.

DeLong et al. (Biometrics 1988): with ``psi(x, y) = 1 if x > y, 0.5 if x == y, else 0`` over a
positive case's score ``x`` and a negative case's score ``y``, the structural components are
``V10_i = mean_j psi(x_i, y_j)`` (one per positive) and ``V01_j = mean_i psi(x_i, y_j)`` (one per
negative); ``var(AUC) = var(V10) / m + var(V01) / n`` with sample variances (n - 1) and m, n the
numbers of positives and negatives. They are computed here from mid-ranks (Sun and Xu, IEEE SPL
2014), in O((m + n) log(m + n)), as pROC does.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
from scipy import stats

from dmfn.contract.errors import InvalidInput

#: Two-sided 95 %: the normal quantile pROC uses (qnorm(0.975)).
Z_95 = float(stats.norm.ppf(0.975))


def _midranks(values: np.ndarray) -> np.ndarray:
    """1-based mid-ranks of ``values`` (ties share the mean of the ranks they span)."""
    order = np.argsort(values, kind="mergesort")
    sorted_values = values[order]
    starts = np.flatnonzero(np.r_[True, sorted_values[1:] != sorted_values[:-1]])
    ends = np.r_[starts[1:], sorted_values.size]
    ranks = np.empty(values.size)
    ranks[order] = np.repeat((starts + ends + 1) / 2.0, ends - starts)
    return ranks


def binary_inputs(
    y_true: object, score: object, name: str = "score"
) -> tuple[np.ndarray, np.ndarray]:
    """(positive scores, negative scores) of 0/1 labels and finite scores; InvalidInput naming
    the rule when a class is missing, a score is not finite or the lengths differ."""
    y = np.asarray(y_true)
    s = np.asarray(score, dtype=np.float64)
    if y.ndim != 1 or s.shape != y.shape:
        raise InvalidInput(name, f"needs one score per case: {s.shape} scores for {y.shape} labels")
    if not np.isfinite(s).all():
        raise InvalidInput(name, f"must be finite; {int((~np.isfinite(s)).sum())} are NaN or Inf")
    if not np.isin(y, (0, 1)).all():
        raise InvalidInput("labels", "must be 0 (negative) or 1 (positive)")
    pos, neg = s[y == 1], s[y == 0]
    if pos.size == 0 or neg.size == 0:
        raise InvalidInput(
            "labels",
            f"an AUC needs both classes; got {pos.size} positive and {neg.size} negative cases",
        )
    return pos, neg


@dataclass(frozen=True)
class Components:
    """DeLong structural components of one curve: ``v10`` per positive, ``v01`` per negative."""

    auc: float
    v10: np.ndarray
    v01: np.ndarray


def delong_components(pos: np.ndarray, neg: np.ndarray) -> Components:
    """The AUC and the structural components of scores of positives ``pos`` and negatives
    ``neg`` (ties count 0.5)."""
    m, n = pos.size, neg.size
    all_ranks = _midranks(np.concatenate([pos, neg]))
    pos_ranks = _midranks(pos)
    neg_ranks = _midranks(neg)
    # For a positive: how many negatives lie below it (ties 0.5) = its rank among all minus its
    # rank among positives; likewise for a negative, the positives above it.
    v10 = (all_ranks[:m] - pos_ranks) / n
    v01 = 1.0 - (all_ranks[m:] - neg_ranks) / m
    auc = float(v10.mean())
    return Components(auc, v10, v01)


def delong_variance(c: Components) -> float:
    """DeLong's variance of the AUC (0 when a class has a single case: pROC gives 0 there too)."""
    m, n = c.v10.size, c.v01.size
    s10 = float(np.var(c.v10, ddof=1)) if m > 1 else 0.0
    s01 = float(np.var(c.v01, ddof=1)) if n > 1 else 0.0
    return s10 / m + s01 / n


@dataclass(frozen=True)
class AucEstimate:
    """An AUC with its 95 % interval (``method``: "delong" or "bootstrap") and the case counts."""

    auc: float
    low: float
    high: float
    method: str
    n_positive: int
    n_negative: int
    variance: float = math.nan

    def to_dict(self) -> dict[str, float | int | str]:
        return {
            "auc": self.auc,
            "ci_low": self.low,
            "ci_high": self.high,
            "ci_method": self.method,
            "n_positive": self.n_positive,
            "n_negative": self.n_negative,
        }


def auc_delong(y_true: object, score: object, level: float = 0.95) -> AucEstimate:
    """AUC with the DeLong interval: ``pROC::ci.auc(roc, method = "delong")`` (the interval
    ``auc +- z * sqrt(var)``, clipped to [0, 1])."""
    pos, neg = binary_inputs(y_true, score)
    c = delong_components(pos, neg)
    var = delong_variance(c)
    half = float(stats.norm.ppf(0.5 + level / 2.0)) * math.sqrt(var)
    return AucEstimate(
        c.auc, max(0.0, c.auc - half), min(1.0, c.auc + half), "delong", pos.size, neg.size, var
    )


@dataclass(frozen=True)
class DelongTest:
    """DeLong's test of the difference between two AUCs: ``z`` and the two-sided ``p``."""

    auc_1: float
    auc_2: float
    z: float
    p: float
    paired: bool
    n_cases: int
    #: Degrees of freedom of the unpaired test's t statistic (None: the paired test's z).
    df: float | None = None

    @property
    def difference(self) -> float:
        return self.auc_1 - self.auc_2

    def to_dict(self) -> dict[str, float | bool | int | None]:
        return {
            "auc_1": self.auc_1,
            "auc_2": self.auc_2,
            "difference": self.difference,
            "z": self.z,
            "p": self.p,
            "paired": self.paired,
            "n_cases": self.n_cases,
            "df": self.df,
        }


def _z_test(diff: float, var: float) -> tuple[float, float]:
    if var <= 0:
        return (0.0, 1.0) if diff == 0 else (math.copysign(math.inf, diff), 0.0)
    z = diff / math.sqrt(var)
    return z, float(2.0 * stats.norm.sf(abs(z)))


def auc_covariance(y_true: object, scores: object) -> tuple[np.ndarray, np.ndarray]:
    """The AUCs [K] of ``scores`` [K, N] (K scores of the same N cases) and their DeLong
    covariance [K, K] (``pROC::var`` on the diagonal, ``pROC::cov(roc_a, roc_b, method =
    "delong")`` off it)."""
    rows = np.atleast_2d(np.asarray(scores, dtype=np.float64))
    parts = [delong_components(*binary_inputs(y_true, row, f"scores[{k}]"))
             for k, row in enumerate(rows)]  # fmt: skip
    m, n = parts[0].v10.size, parts[0].v01.size
    k = len(parts)
    s10 = np.cov(np.vstack([c.v10 for c in parts])).reshape(k, k) if m > 1 else np.zeros((k, k))
    s01 = np.cov(np.vstack([c.v01 for c in parts])).reshape(k, k) if n > 1 else np.zeros((k, k))
    return np.array([c.auc for c in parts]), s10 / m + s01 / n


def delong_contrast(y_true: object, scores: object, weights: object) -> tuple[float, float]:
    """``weights @ AUCs`` of ``scores`` [K, N] on the same cases and its DeLong variance
    (e.g. weights (1, -1/R, ..., -1/R): a model's AUC minus the mean AUC of R readers)."""
    aucs, cov = auc_covariance(y_true, scores)
    w = np.asarray(weights, dtype=np.float64)
    if w.shape != aucs.shape:
        raise InvalidInput("weights", f"need one weight per score: {w.shape} for {aucs.shape}")
    return float(w @ aucs), float(w @ cov @ w)


def delong_paired(y_true: object, score_1: object, score_2: object) -> DelongTest:
    """Two scores of the same cases: ``pROC::roc.test(roc1, roc2, method = "delong",
    paired = TRUE)``. The variance of the difference uses the covariance of the two curves'
    structural components. A score may be a 0/1 call (pROC takes a binary predictor too: its
    AUC is (sensitivity + specificity) / 2)."""
    pos_1, neg_1 = binary_inputs(y_true, score_1, "score_1")
    binary_inputs(y_true, score_2, "score_2")
    scores = np.vstack([np.asarray(score_1, np.float64), np.asarray(score_2, np.float64)])
    aucs, cov = auc_covariance(y_true, scores)
    contrast = np.array([1.0, -1.0])
    z, p = _z_test(float(aucs[0] - aucs[1]), float(contrast @ cov @ contrast))
    return DelongTest(float(aucs[0]), float(aucs[1]), z, p, True, pos_1.size + neg_1.size)


def delong_against_mean(y_true: object, score: object, others: object) -> DelongTest:
    """A score's AUC against the mean AUC of ``others`` [R, N] on the same cases (a model
    against a group of readers, readers fixed): DeLong's z of the contrast (1, -1/R, ...,
    -1/R). With one other score it is :func:`delong_paired`."""
    rows = np.atleast_2d(np.asarray(others, dtype=np.float64))
    weights = np.r_[1.0, np.full(rows.shape[0], -1.0 / rows.shape[0])]
    aucs, cov = auc_covariance(y_true, np.vstack([np.asarray(score, dtype=np.float64), rows]))
    diff, var = float(weights @ aucs), float(weights @ cov @ weights)
    z, p = _z_test(diff, var)
    y = np.asarray(y_true)
    return DelongTest(float(aucs[0]), float(aucs[1:].mean()), z, p, True, int(y.size))


def auc_mean_delong(y_true: object, scores: object, level: float = 0.95) -> AucEstimate:
    """The mean AUC of ``scores`` [R, N] on the same cases (a group of readers) with the DeLong
    interval of the mean (the readers' covariance included; the interval clipped to [0, 1])."""
    rows = np.atleast_2d(np.asarray(scores, dtype=np.float64))
    pos, neg = binary_inputs(y_true, rows[0])
    auc, var = delong_contrast(y_true, rows, np.full(rows.shape[0], 1.0 / rows.shape[0]))
    half = float(stats.norm.ppf(0.5 + level / 2.0)) * math.sqrt(max(var, 0.0))
    return AucEstimate(
        auc, max(0.0, auc - half), min(1.0, auc + half), "delong", pos.size, neg.size, var
    )


def delong_unpaired(
    y_true_1: object, score_1: object, y_true_2: object, score_2: object
) -> DelongTest:
    """Two curves on different cases: ``pROC::roc.test(roc1, roc2, method = "delong",
    paired = FALSE)``: the independent variances add, and, as in pROC, the statistic is referred
    to a t distribution with Welch-Satterthwaite degrees of freedom."""
    a = auc_delong(y_true_1, score_1)
    b = auc_delong(y_true_2, score_2)
    var = a.variance + b.variance
    n_a, n_b = a.n_positive + a.n_negative, b.n_positive + b.n_negative
    diff = a.auc - b.auc
    if var <= 0:
        t, p = _z_test(diff, var)
        return DelongTest(a.auc, b.auc, t, p, False, n_a + n_b)
    t = diff / math.sqrt(var)
    df = var**2 / (a.variance**2 / (n_a - 1) + b.variance**2 / (n_b - 1))
    p = float(2.0 * stats.t.sf(abs(t), df))
    return DelongTest(a.auc, b.auc, t, p, False, n_a + n_b, df)


def auc_bootstrap(
    y_true: object,
    score: object,
    n_boot: int = 2000,
    seed: int = 0,
    level: float = 0.95,
) -> AucEstimate:
    """AUC with a stratified percentile bootstrap interval (positives and negatives resampled
    separately, as ``pROC::ci.auc(method = "bootstrap", stratified = TRUE)``); reproducible from
    ``seed``."""
    pos, neg = binary_inputs(y_true, score)
    if n_boot < 100:
        raise InvalidInput("n_boot", f"must be >= 100 replicates, got {n_boot}")
    rng = np.random.default_rng(seed)
    aucs = np.empty(n_boot)
    for b in range(n_boot):
        aucs[b] = delong_components(
            pos[rng.integers(0, pos.size, pos.size)], neg[rng.integers(0, neg.size, neg.size)]
        ).auc
    alpha = (1.0 - level) / 2.0
    low, high = np.quantile(aucs, [alpha, 1.0 - alpha])
    auc = delong_components(pos, neg).auc
    return AucEstimate(auc, float(low), float(high), "bootstrap", pos.size, neg.size)


@dataclass(frozen=True)
class RocCurve:
    """Points of the empirical ROC curve, from the highest threshold down: false positive rate
    (1 - specificity), true positive rate (sensitivity), and the threshold of each point (a case
    is called positive when its score is >= the threshold)."""

    fpr: np.ndarray
    tpr: np.ndarray
    thresholds: np.ndarray


def roc_curve(y_true: object, score: object) -> RocCurve:
    """The empirical ROC curve (every distinct score is a threshold), from (0, 0) to (1, 1)."""
    pos, neg = binary_inputs(y_true, score)
    thresholds = np.unique(np.concatenate([pos, neg]))[::-1]
    tpr = np.array([(pos >= t).mean() for t in thresholds])
    fpr = np.array([(neg >= t).mean() for t in thresholds])
    return RocCurve(np.r_[0.0, fpr], np.r_[0.0, tpr], np.r_[np.inf, thresholds])
