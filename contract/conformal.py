"""Conformal class sets: split-conformal adaptive prediction sets (APS), not randomised, so that
the same probabilities always give the same set (docs/conformal.md).

- The score of class ``y`` for a case with probabilities ``p`` [C]: ``s(p, y)``, the total
  probability of the classes ranked at or above ``y`` (ranked by probability, a tie to the lower
  class index first, ``y`` itself included) (:func:`aps_score_matrix`, :func:`aps_scores`).
- Calibration: the ``ceil((n + 1) * coverage)``-th smallest score of the true classes of ``n``
  calibration cases (:func:`conformal_threshold`); +inf when ``n`` is too small for it
  (``n < coverage / (1 - coverage)``, e.g. fewer than 9 cases at 0.9).
- The set: the classes with ``s(p, y) <= threshold`` (a prefix of the ranking). **Empty-set
  rule:** a set that would be empty (the top class's probability alone is above the threshold)
  holds the top class instead. It happens in :func:`aps_sets`, which every caller uses, and it
  only adds coverage.
- Mondrian (class-conditional): one threshold per class, fitted on the calibration cases of that
  class (:func:`mondrian_thresholds`); a class with too few of them (none included) gets +inf:
  it is **always included**, which keeps its coverage guarantee (no fallback to the marginal
  threshold, which would not).
- The binary task: the same split-conformal machinery on ``[1 - malignant_prob,
  malignant_prob]`` with the labels benign (0) / malignant (1), giving {benign}, {malignant} or
  both (:func:`binary_sets`), but with the score ``1 - p(true group)`` (LAC) instead of APS's.
  On two classes non-randomised APS is degenerate: the runner-up's score is always 1, so the
  threshold either is below 1 and every set is {top group}, or reaches 1 and every set is
  both, whatever the case (on the demo model: every test patient "uncertain"). With LAC a group
  is in the set iff its probability is at least ``1 - threshold``: a confident case gets one
  group, an unsure one both (the empty-set rule as above; a tie at 0.5 keeps benign).

Probabilities are taken as float64 whatever their dtype (float32 values convert exactly, so a
float32 array gives the set of the same values in float64). Guarantee: with calibration and test
cases exchangeable, P(true class in the set) >= coverage on average over calibration sets; it is
marginal (over cases, not per class, unless Mondrian, nor per patient).
"""

from __future__ import annotations

import json
import math
from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass
from typing import Any

import numpy as np

from .errors import InvalidInput

METHODS: tuple[str, ...] = ("aps", "mondrian")
DEFAULT_COVERAGE = 0.9
#: The two classes of the binary sets, in column order.
BINARY_CLASSES: tuple[str, ...] = ("benign", "malignant")
#: (n + 1) * coverage within this of an integer is taken as that integer: in floats 0.7 * 10 is
#: 7.000000000000001, whose ceiling would ask one calibration case too many.
RANK_TOLERANCE = 1e-9
#: Probabilities may exceed 1 by this much (a float32 softmax can give 1.0000001).
PROB_TOLERANCE = 1e-5


def check_coverage(coverage: object, name: str = "coverage") -> float:
    """``coverage`` as a float in (0, 1); InvalidInput naming ``name`` otherwise."""
    if isinstance(coverage, bool) or not isinstance(coverage, int | float | np.floating):
        raise InvalidInput(name, f"must be a number in (0, 1), got {coverage!r}")
    value = float(coverage)
    if not 0.0 < value < 1.0:
        raise InvalidInput(name, f"must be in (0, 1) (e.g. 0.9), got {value}")
    return value


def _probs(probs: object, name: str, min_classes: int = 2) -> np.ndarray:
    """``probs`` as float64 [N, C] with C >= ``min_classes``, finite, within [0, 1]."""
    try:
        p = np.asarray(probs, dtype=np.float64)
    except (TypeError, ValueError):
        raise InvalidInput(name, "must be an array of probabilities [N, C]") from None
    if p.ndim != 2 or p.shape[1] < min_classes:
        raise InvalidInput(
            name, f"must be [N, C] with C >= {min_classes} classes, got shape {p.shape}"
        )
    if not np.isfinite(p).all():
        raise InvalidInput(name, f"holds {int((~np.isfinite(p)).sum())} non-finite value(s)")
    if p.size and (p.min() < 0.0 or p.max() > 1.0 + PROB_TOLERANCE):
        raise InvalidInput(name, f"must lie in [0, 1], got {p.min():.6g} .. {p.max():.6g}")
    return p


def _labels(labels: object, n: int, n_classes: int, name: str) -> np.ndarray:
    """``labels`` as int64 [n], each a class index in [0, n_classes)."""
    y = np.asarray(labels)
    if y.ndim != 1 or y.shape[0] != n:
        raise InvalidInput(name, f"must be [N] with N = {n} (one per row), got shape {y.shape}")
    if y.size and (y.dtype.kind not in "iu"):
        raise InvalidInput(name, f"must hold integer class indices, got dtype {y.dtype}")
    y = y.astype(np.int64)
    if y.size and (y.min() < 0 or y.max() >= n_classes):
        raise InvalidInput(
            name, f"class indices must be in [0, {n_classes}), got {y.min()} .. {y.max()}"
        )
    return y


def _ranking(p: np.ndarray) -> np.ndarray:
    """[N, C] class indices from the most probable down; a tie goes to the lower index first."""
    return np.argsort(-p, axis=1, kind="stable")


def _score_matrix(p: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(s(p, y) for every y [N, C], the ranking [N, C]) of checked float64 probabilities."""
    order = _ranking(p)
    cumulative = np.cumsum(np.take_along_axis(p, order, axis=1), axis=1)
    scores = np.empty_like(p)
    np.put_along_axis(scores, order, cumulative, axis=1)
    return scores, order


def aps_score_matrix(probs: object) -> np.ndarray:
    """s(p, y) for every case and every class [N, C]: the total probability of the classes ranked
    at or above y (by probability, a tie to the lower index first, y included)."""
    return _score_matrix(_probs(probs, "probs"))[0]


def aps_scores(probs: object, labels: object) -> np.ndarray:
    """The nonconformity score of each case's true class [N] (``labels`` [N]: class indices)."""
    p = _probs(probs, "probs")
    y = _labels(labels, p.shape[0], p.shape[1], "labels")
    return _score_matrix(p)[0][np.arange(p.shape[0]), y]


def conformal_rank(n: int, coverage: float) -> int:
    """k = ceil((n + 1) * coverage): the rank (1-based) of the calibration score that is the
    threshold; above ``n`` when ``n`` is too small."""
    return math.ceil((n + 1) * check_coverage(coverage) - RANK_TOLERANCE)


def conformal_threshold(scores: object, coverage: float) -> float:
    """The ceil((n + 1) * coverage)-th smallest of ``n`` calibration scores [n]: with exchangeable
    cases, a new case's score is at most this with probability >= coverage. +inf when ``n`` is
    too small (k > n: every class is then in every set)."""
    s = np.asarray(scores, dtype=np.float64)
    if s.ndim != 1:
        raise InvalidInput("scores", f"must be [n], got shape {s.shape}")
    if not np.isfinite(s).all():
        raise InvalidInput("scores", f"holds {int((~np.isfinite(s)).sum())} non-finite value(s)")
    k = conformal_rank(s.size, coverage)
    if k > s.size:
        return math.inf
    return float(np.partition(s, k - 1)[k - 1])


def mondrian_thresholds(
    scores: object, labels: object, n_classes: int, coverage: float
) -> np.ndarray:
    """One threshold per class [n_classes]: :func:`conformal_threshold` of the scores of that
    class's calibration cases; +inf (always included) for a class with too few or none."""
    s = np.asarray(scores, dtype=np.float64)
    if s.ndim != 1:
        raise InvalidInput("scores", f"must be [n], got shape {s.shape}")
    y = _labels(labels, s.size, n_classes, "labels")
    return np.array([conformal_threshold(s[y == c], coverage) for c in range(n_classes)])


def _thresholds(threshold: object, n_classes: int) -> np.ndarray:
    """A threshold (a number, or one per class [C]) as float64 [C]; NaN refused, inf allowed."""
    t = np.asarray(threshold, dtype=np.float64)
    if t.ndim == 0:
        t = np.full(n_classes, float(t))
    if t.shape != (n_classes,):
        raise InvalidInput(
            "threshold", f"must be a number or one per class ({n_classes}), got shape {t.shape}"
        )
    if np.isnan(t).any():
        raise InvalidInput("threshold", "must not be NaN (+inf means: always included)")
    return t


def aps_sets(probs: object, threshold: object) -> np.ndarray:
    """The class sets [N, C] (bool): class y is in the set of a case iff s(p, y) <= the threshold
    (of class y, for one threshold per class). A set that would be empty holds the top class."""
    p = _probs(probs, "probs")
    scores, order = _score_matrix(p)
    member = scores <= _thresholds(threshold, p.shape[1])[None, :]
    empty = ~member.any(axis=1)
    member[empty, order[empty, 0]] = True
    return member


def binary_probs(malignant_prob: object) -> np.ndarray:
    """[N, 2]: (1 - malignant_prob, malignant_prob), the columns of :data:`BINARY_CLASSES`."""
    try:
        m = np.asarray(malignant_prob, dtype=np.float64)
    except (TypeError, ValueError):
        raise InvalidInput("malignant_prob", "must be an array of probabilities [N]") from None
    if m.ndim != 1:
        raise InvalidInput("malignant_prob", f"must be [N], got shape {m.shape}")
    _probs(m[:, None], "malignant_prob", min_classes=1)  # finite, within [0, 1]
    m = np.clip(m, 0.0, 1.0)
    return np.stack([1.0 - m, m], axis=1)


def binary_scores(malignant_prob: object, malignant: object) -> np.ndarray:
    """The binary task's score of each case's true group [N]: 1 - its probability (LAC);
    ``malignant`` [N]: 1 for a malignant case."""
    p = binary_probs(malignant_prob)
    y = _labels(np.asarray(malignant).astype(np.int64), p.shape[0], 2, "malignant")
    return 1.0 - p[np.arange(p.shape[0]), y]


def binary_thresholds(
    malignant_prob: object, malignant: object, coverage: float, method: str = "aps"
) -> tuple[float, ...]:
    """The binary task's thresholds from calibration cases (``malignant`` [N]: 1 for a malignant
    case): one for ``"aps"`` (marginal), (benign, malignant) for ``"mondrian"``."""
    scores = binary_scores(malignant_prob, malignant)
    if method == "aps":
        return (conformal_threshold(scores, coverage),)
    if method == "mondrian":
        y = np.asarray(malignant).astype(np.int64)
        return tuple(float(t) for t in mondrian_thresholds(scores, y, 2, coverage))
    raise InvalidInput("method", f"must be one of {METHODS}, got {method!r}")


def binary_sets_at(malignant_prob: object, threshold: object) -> np.ndarray:
    """The binary sets [N, 2] (bool; columns benign, malignant): a group is in the set iff
    1 - its probability <= the threshold (its own, for two); an empty set holds the more
    probable group (benign at 0.5)."""
    p = binary_probs(malignant_prob)
    member = 1.0 - p <= _thresholds(threshold, 2)[None, :]
    empty = ~member.any(axis=1)
    member[empty, _ranking(p[empty])[:, 0]] = True
    return member


def _fit(p: np.ndarray, y: np.ndarray, coverage: float, method: str) -> tuple[float, ...]:
    scores = _score_matrix(p)[0][np.arange(p.shape[0]), y]
    if method == "aps":
        return (conformal_threshold(scores, coverage),)
    if method == "mondrian":
        return tuple(float(t) for t in mondrian_thresholds(scores, y, p.shape[1], coverage))
    raise InvalidInput("method", f"must be one of {METHODS}, got {method!r}")


@dataclass(frozen=True)
class ConformalFit:
    """What the served postprocess needs to make the sets: ``method`` ("aps": one threshold;
    "mondrian": one per class), the target ``coverage``, the class ``thresholds`` (+inf: always
    included), the binary ones (aps: one; mondrian: benign, malignant) and the number of
    calibration cases. Stored as JSON (:meth:`to_json`; +inf written as null)."""

    method: str
    coverage: float
    thresholds: tuple[float, ...]
    binary_thresholds: tuple[float, ...]
    n_calibration: int

    def __post_init__(self) -> None:
        if self.method not in METHODS:
            raise InvalidInput("method", f"must be one of {METHODS}, got {self.method!r}")
        check_coverage(self.coverage)
        want = (1, 1) if self.method == "aps" else (None, 2)
        for name, values, n in (
            ("thresholds", self.thresholds, want[0]),
            ("binary_thresholds", self.binary_thresholds, want[1]),
        ):
            if not isinstance(values, tuple) or not values:
                raise InvalidInput(name, f"must be a non-empty tuple, got {values!r}")
            if n is not None and len(values) != n:
                raise InvalidInput(name, f"{self.method}: must hold {n}, got {len(values)}")
            if any(not isinstance(v, float | int) or math.isnan(v) for v in values):
                raise InvalidInput(name, f"must be numbers (+inf: always included), got {values}")
        if self.method == "mondrian" and len(self.thresholds) < 2:
            raise InvalidInput("thresholds", "mondrian: one per class (at least 2)")
        if isinstance(self.n_calibration, bool) or not isinstance(self.n_calibration, int):
            raise InvalidInput("n_calibration", f"must be an integer, got {self.n_calibration!r}")
        if self.n_calibration < 0:
            raise InvalidInput("n_calibration", f"must be >= 0, got {self.n_calibration}")

    def to_dict(self) -> dict[str, Any]:
        out = asdict(self)
        for key in ("thresholds", "binary_thresholds"):
            out[key] = [None if math.isinf(v) else float(v) for v in out[key]]
        return out

    def to_json(self) -> str:
        return json.dumps(self.to_dict(), sort_keys=True, allow_nan=False)

    @classmethod
    def from_dict(cls, data: object) -> ConformalFit:
        if not isinstance(data, Mapping):
            raise InvalidInput("conformal", f"must be a JSON object, got {type(data).__name__}")
        fields = set(cls.__dataclass_fields__)
        if set(data) != fields:
            raise InvalidInput(
                "conformal",
                f"keys must be {sorted(fields)}; missing {sorted(fields - set(data))}, unknown "
                f"{sorted(set(data) - fields)}",
            )
        values = dict(data)
        for key in ("thresholds", "binary_thresholds"):
            if not isinstance(values[key], Sequence) or isinstance(values[key], str):
                raise InvalidInput(key, f"must be a list, got {values[key]!r}")
            values[key] = tuple(math.inf if v is None else v for v in values[key])
        return cls(**values)

    @classmethod
    def from_json(cls, text: str) -> ConformalFit:
        try:
            data = json.loads(text)
        except json.JSONDecodeError as err:
            raise InvalidInput("conformal", f"not valid JSON ({err})") from None
        return cls.from_dict(data)


def fit_conformal(
    val_probs: object,
    val_labels: object,
    malignant_mask: object,
    coverage: float = DEFAULT_COVERAGE,
    method: str = "aps",
) -> ConformalFit:
    """Calibrate on validation cases: ``val_probs`` [N, C] (the served, temperature-scaled
    probabilities), ``val_labels`` [N] (class indices), ``malignant_mask`` [C] (bool). The
    binary thresholds use the malignant probability ``val_probs[:, malignant_mask].sum(1)``."""
    coverage = check_coverage(coverage)
    if method not in METHODS:
        raise InvalidInput("method", f"must be one of {METHODS}, got {method!r}")
    p = _probs(val_probs, "val_probs")
    if p.shape[0] == 0:
        raise InvalidInput("val_probs", "holds no calibration case")
    y = _labels(val_labels, p.shape[0], p.shape[1], "val_labels")
    mask = np.asarray(malignant_mask)
    if mask.shape != (p.shape[1],) or mask.dtype != np.bool_:
        raise InvalidInput(
            "malignant_mask",
            f"must be bool [C] with C = {p.shape[1]}, got {mask.dtype} {mask.shape}",
        )
    malignant_prob = p[:, mask].sum(axis=1)
    return ConformalFit(
        method=method,
        coverage=coverage,
        thresholds=_fit(p, y, coverage, method),
        binary_thresholds=binary_thresholds(malignant_prob, mask[y], coverage, method),
        n_calibration=int(p.shape[0]),
    )


def class_sets(fit: ConformalFit, probs: object) -> np.ndarray:
    """The class sets [N, C] (bool) of ``probs`` [N, C] under ``fit`` (:func:`aps_sets`)."""
    p = _probs(probs, "probs")
    if fit.method == "mondrian" and len(fit.thresholds) != p.shape[1]:
        raise InvalidInput(
            "probs", f"has {p.shape[1]} classes; the fit has {len(fit.thresholds)} thresholds"
        )
    threshold = fit.thresholds[0] if fit.method == "aps" else fit.thresholds
    return aps_sets(p, threshold)


def binary_sets(fit: ConformalFit, malignant_prob: object) -> np.ndarray:
    """The binary sets [N, 2] (bool; columns benign, malignant) of ``malignant_prob`` [N] under
    ``fit`` (:func:`binary_sets_at`)."""
    threshold = fit.binary_thresholds[0] if fit.method == "aps" else fit.binary_thresholds
    return binary_sets_at(malignant_prob, threshold)
