"""What a served model says about its own uncertainty, fitted once and stored with the model: the
conformal class sets (:mod:`dmfn.contract.conformal`, fitted on the validation split at the
coverage the operator chose) and the out-of-distribution flag (:mod:`dmfn.contract.ood`, its
threshold fitted on the training split at a stated false-alarm rate).

``dmfn export`` fits :class:`Uncertainty` from the calibration data a checkpoint carries
(validation probabilities and labels, training-split OOD scores) and writes it into the
repository (config parameter ``uncertainty``, the manifest, the model card); the served
``postprocess`` and in-process prediction apply the same object
(:class:`dmfn.contract.postprocess.Postprocessor`).
"""

from __future__ import annotations

import json
import logging
import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass

import numpy as np

from dmfn.contract.conformal import ConformalFit, fit_conformal
from dmfn.contract.errors import InvalidInput
from dmfn.contract.ood import OodFit, fit_ood

log = logging.getLogger(__name__)

#: The coverage of the class sets unless the operator chooses another (``dmfn export --coverage``).
DEFAULT_COVERAGE = 0.9
#: The OOD flag's false-alarm rate on the training split (``dmfn export --ood-false-alarm``).
DEFAULT_FALSE_ALARM = 0.05
#: The keys of a checkpoint's calibration data (training/calibration.py writes them).
CALIBRATION_KEYS = ("class_names", "val_probs", "val_labels", "train_ood_scores")


@dataclass(frozen=True)
class Uncertainty:
    """The fitted class-set thresholds and the OOD threshold of one model."""

    conformal: ConformalFit
    ood: OodFit

    def to_json(self) -> str:
        return json.dumps(
            {
                "conformal": json.loads(self.conformal.to_json()),
                "ood": json.loads(self.ood.to_json()),
            },
            sort_keys=True,
        )

    @classmethod
    def from_json(cls, text: str) -> Uncertainty:
        try:
            data = json.loads(text)
            return cls(
                ConformalFit.from_json(json.dumps(data["conformal"])),
                OodFit.from_json(json.dumps(data["ood"])),
            )
        except (ValueError, KeyError, TypeError) as err:
            raise InvalidInput("uncertainty", f"is not a stored uncertainty fit: {err}") from None

    def describe(self) -> str:
        """One line for people (the model card, ``dmfn export``'s output)."""
        c, o = self.conformal, self.ood
        return (
            f"class sets: {c.method.upper()} at {c.coverage:.0%} coverage, fitted on "
            f"{c.n_calibration} validation studies; OOD flag: {o.score} score above "
            f"{o.threshold:.3f}, {o.false_alarm:.0%} false alarms on the {o.n_train} training "
            "studies"
        )


def fit_uncertainty(
    calibration: Mapping[str, object],
    class_names: Sequence[str],
    malignant_mask: Sequence[bool],
    *,
    coverage: float = DEFAULT_COVERAGE,
    method: str = "aps",
    false_alarm: float = DEFAULT_FALSE_ALARM,
) -> Uncertainty:
    """:class:`Uncertainty` from a checkpoint's ``calibration`` data (:data:`CALIBRATION_KEYS`)
    for a model of ``class_names`` (logit order) whose malignant classes are ``malignant_mask``.

    InvalidInput names ``calibration`` when data are missing or for other classes, and the
    fitting functions' own arguments (``coverage``, ``false_alarm``, ``method``) when bad.
    """
    missing = [k for k in CALIBRATION_KEYS if k not in calibration]
    if missing:
        raise InvalidInput("calibration", f"lacks {missing}: retrain, or add it with "
                           "scripts/add_calibration.py")  # fmt: skip
    names = [str(n) for n in calibration["class_names"]]  # type: ignore[attr-defined]
    if names != list(class_names):
        raise InvalidInput(
            "calibration", f"is for classes {names}, not the model's {list(class_names)}"
        )
    probs = np.asarray(calibration["val_probs"], dtype=np.float64)
    labels = np.asarray(calibration["val_labels"], dtype=np.int64)
    conformal = fit_conformal(probs, labels, np.asarray(malignant_mask, bool), coverage, method)
    scores = np.asarray(calibration["train_ood_scores"], dtype=np.float64)
    return Uncertainty(conformal, fit_ood(scores, _feasible_false_alarm(false_alarm, scores.size)))


def _feasible_false_alarm(false_alarm: float, n: int) -> float:
    """``false_alarm``, or the smallest rate ``n`` training scores can give (1 / (n + 1), rounded
    up) when they are too few for it (a smoke-test cohort): said in a warning, and the fit
    records the rate it was made for."""
    if not isinstance(false_alarm, int | float) or not 0 < false_alarm < 1 or n < 1:
        return false_alarm  # fit_ood names the bad argument
    smallest = math.ceil(1e6 / (n + 1)) / 1e6
    if false_alarm >= smallest:
        return false_alarm
    log.warning(
        "the OOD flag: %d training scores cannot give a %g false-alarm rate; fitted for %g, "
        "the smallest they can (train on more studies for a lower rate)", n, false_alarm, smallest,
    )  # fmt: skip
    return smallest
