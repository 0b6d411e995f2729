"""The out-of-distribution flag: an energy score on the net's logits and a threshold fitted on the
training split at a stated false-alarm rate.

Energy (Liu et al., NeurIPS 2020): ``E(x) = -T * logsumexp(logits / T)``. A study the net has
seen the like of gets large logits for some class, so a low (very negative) energy; higher means
more unusual. The score uses only the logits, so the served ``postprocess`` computes it without
touching the net's graph. We use T = 1 on the raw logits (before the calibration temperature):
the threshold is fitted on the same raw scores.

Threshold: the conformal upper quantile of the training scores, the ``k``-th smallest of the
``n`` scores with ``k = ceil((n + 1) * (1 - false_alarm))``; a study is flagged when its score is
strictly above it. For a new score exchangeable with the training scores (no ties) the flag's
probability is ``(n + 1 - k) / (n + 1)``, at most ``false_alarm`` and more than
``false_alarm - 1 / (n + 1)``. Training scores come from the data the net was fitted on, so they
are lower than a held-out study's: the false-alarm rate on new in-distribution studies is higher
than the stated rate (docs/ood.md measures it).
"""

from __future__ import annotations

import json
import math
from dataclasses import asdict, dataclass

import numpy as np

from dmfn.contract.errors import InvalidInput

#: The score names :class:`OodFit` knows.
SCORES: tuple[str, ...] = ("energy",)


def _logits(logits: np.ndarray, name: str = "logits") -> np.ndarray:
    """``logits`` as float64 [N, C] (C >= 1), finite; InvalidInput naming ``name`` otherwise."""
    array = np.asarray(logits)
    if array.ndim != 2 or array.shape[1] < 1:
        raise InvalidInput(name, f"must be [N, C] with C >= 1, got shape {array.shape}")
    if not np.issubdtype(array.dtype, np.number) or np.issubdtype(array.dtype, np.complexfloating):
        raise InvalidInput(name, f"must be real numbers, got dtype {array.dtype}")
    array = array.astype(np.float64)
    if not np.isfinite(array).all():
        raise InvalidInput(name, "must be finite (found NaN or infinity)")
    return array


def energy_score(logits: np.ndarray, temperature: float = 1.0) -> np.ndarray:
    """Energy of each row of ``logits`` [N, C]: ``-T * logsumexp(logits / T)`` as float64 [N]
    (higher = more unusual), computed stably."""
    if (
        not (isinstance(temperature, int | float) and math.isfinite(temperature))
        or temperature <= 0
    ):
        raise InvalidInput("temperature", f"must be a finite number > 0, got {temperature!r}")
    z = _logits(logits) / float(temperature)
    top = z.max(axis=1)
    return -float(temperature) * (top + np.log(np.exp(z - top[:, None]).sum(axis=1)))


def _false_alarm(false_alarm: float) -> float:
    if not isinstance(false_alarm, int | float) or not 0.0 < float(false_alarm) < 1.0:
        raise InvalidInput("false_alarm", f"must be a number in (0, 1), got {false_alarm!r}")
    return float(false_alarm)


def fit_ood_threshold(train_scores: np.ndarray, false_alarm: float = 0.05) -> float:
    """The threshold above which a score is flagged: the ``ceil((n + 1)(1 - false_alarm))``-th
    smallest of the ``n`` training scores (the module's docstring says why this quantile).

    InvalidInput names ``train_scores`` (not 1-D, not finite, or too few: ``n`` must be at least
    ``ceil(1 / false_alarm) - 1``, else no training score is high enough) or ``false_alarm``."""
    alpha = _false_alarm(false_alarm)
    scores = np.asarray(train_scores)
    if scores.ndim != 1 or not np.issubdtype(scores.dtype, np.number):
        raise InvalidInput("train_scores", f"must be a 1-D array of numbers, got {scores.shape}")
    scores = scores.astype(np.float64)
    if not np.isfinite(scores).all():
        raise InvalidInput("train_scores", "must be finite (found NaN or infinity)")
    n = scores.size
    k = math.ceil((n + 1) * (1.0 - alpha) - 1e-9)  # the 1e-9: (n + 1)(1 - a) exact in decimal
    if k > n:
        raise InvalidInput(
            "train_scores",
            f"{n} scores cannot give a {alpha:g} false-alarm rate (needs at least "
            f"{math.ceil(1.0 / alpha - 1.0 - 1e-9)})",
        )
    return float(np.sort(scores)[k - 1])


@dataclass(frozen=True)
class OodFit:
    """A fitted OOD flag: ``score`` (``"energy"``), the ``threshold`` (flag when the score is
    above it), the ``false_alarm`` rate it was fitted for and the ``n_train`` training scores it
    was fitted on."""

    score: str
    threshold: float
    false_alarm: float
    n_train: int

    def __post_init__(self) -> None:
        if self.score not in SCORES:
            raise InvalidInput("score", f"must be one of {list(SCORES)}, got {self.score!r}")
        if not isinstance(self.threshold, int | float) or not math.isfinite(self.threshold):
            raise InvalidInput("threshold", f"must be a finite number, got {self.threshold!r}")
        _false_alarm(self.false_alarm)
        if not isinstance(self.n_train, int) or isinstance(self.n_train, bool) or self.n_train < 1:
            raise InvalidInput("n_train", f"must be an integer >= 1, got {self.n_train!r}")

    def to_json(self) -> str:
        return json.dumps(asdict(self), sort_keys=True)

    @classmethod
    def from_json(cls, text: str) -> OodFit:
        """The fit :meth:`to_json` wrote; InvalidInput naming ``ood`` for anything else."""
        try:
            data = json.loads(text)
            if not isinstance(data, dict) or set(data) != {
                "score", "threshold", "false_alarm", "n_train",
            }:  # fmt: skip
                raise ValueError(f"keys must be score, threshold, false_alarm, n_train: {data!r}")
            return cls(
                str(data["score"]), float(data["threshold"]), float(data["false_alarm"]),
                int(data["n_train"]),
            )  # fmt: skip
        except InvalidInput:
            raise
        except (ValueError, TypeError) as err:
            raise InvalidInput("ood", f"is not a stored OOD fit: {err}") from None


def fit_ood(train_scores: np.ndarray, false_alarm: float = 0.05) -> OodFit:
    """:class:`OodFit` of energy scores of the training split (:func:`fit_ood_threshold`)."""
    threshold = fit_ood_threshold(train_scores, false_alarm)
    return OodFit("energy", threshold, float(false_alarm), int(np.asarray(train_scores).size))


def ood_flags(fit: OodFit, logits: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(scores float32 [N], flags bool [N]) of ``logits`` [N, C]: the energy score, and whether
    it is above ``fit.threshold``. The comparison is made on the float32 score (the served
    value), so a client comparing OOD_SCORE with the threshold gets OOD_FLAG."""
    if not isinstance(fit, OodFit):
        raise InvalidInput("fit", f"must be an OodFit, got {type(fit).__name__}")
    scores = energy_score(logits).astype(np.float32)
    return scores, scores.astype(np.float64) > fit.threshold


__all__ = ["SCORES", "OodFit", "energy_score", "fit_ood", "fit_ood_threshold", "ood_flags"]
