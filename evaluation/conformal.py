"""Conformal class sets in ``dmfn evaluate``: calibrated on the validation patients, judged on
the evaluated ones (docs/conformal.md). The sets are those the served model gives
(:mod:`dmfn.contract.conformal`): marginal APS and its class-conditional (Mondrian) variant side
by side, for the classes and for benign / malignant."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np

from dmfn.contract.conformal import (
    BINARY_CLASSES,
    aps_score_matrix,
    binary_sets_at,
    binary_thresholds,
    class_sets,
    conformal_rank,
    fit_conformal,
)

from .analysis import SystemScores
from .proportions import proportion_ci


def _threshold_list(values: Sequence[float]) -> list[float | None]:
    """Thresholds for JSON: +inf (always included) as None."""
    return [None if not np.isfinite(v) else float(v) for v in values]


def _summary(sets: np.ndarray, truth: np.ndarray, ci_method: str) -> dict[str, Any]:
    """Coverage with its interval, mean set size and the share of singletons of ``sets`` [N, C]
    against ``truth`` [N] (class indices)."""
    n = int(truth.size)
    covered = int(sets[np.arange(n), truth].sum())
    sizes = sets.sum(axis=1)
    return {
        "n": n,
        "coverage": proportion_ci(covered, n, ci_method).to_dict(),
        "mean_size": float(sizes.mean()) if n else float("nan"),
        "singletons": proportion_ci(int((sizes == 1).sum()), n, ci_method).to_dict(),
    }


def _per_class(
    sets: np.ndarray, truth: np.ndarray, names: Sequence[str], ci_method: str
) -> dict[str, dict[str, Any]]:
    """:func:`_summary` of the evaluated patients of each class present."""
    return {
        names[c]: _summary(sets[truth == c], truth[truth == c], ci_method)
        for c in range(len(names))
        if (truth == c).any()
    }


def min_calibration(coverage: float) -> int:
    """The fewest calibration cases that give a finite threshold at ``coverage`` (9 at 0.9)."""
    n = 1
    while conformal_rank(n, coverage) > n:
        n += 1
    return n


def _empty_before_rule(probs: np.ndarray, thresholds: np.ndarray) -> int:
    """How many sets the empty-set rule filled with the top class."""
    return int((~(aps_score_matrix(probs) <= thresholds[None, :]).any(axis=1)).sum())


def conformal_report(
    val: SystemScores,
    test: SystemScores,
    coverage: float,
    ci_method: str,
    fitted_on: str,
    malignant_mask: Sequence[bool],
) -> dict[str, Any]:
    """Coverage, mean size and singletons of the class sets (APS and Mondrian, overall and per
    class) and of the binary sets, fitted on ``val`` and judged on ``test`` (patient level)."""
    out: dict[str, Any] = {
        "coverage_target": coverage,
        "fitted_on": fitted_on,
        "n_calibration": len(val.patient_ids),
        "n_evaluated": len(test.patient_ids),
        # the expected coverage lies in [coverage, coverage + 1 / (n + 1)] when scores do not tie
        "expected_coverage_at_most": min(1.0, coverage + 1.0 / (len(val.patient_ids) + 1)),
        "min_calibration": min_calibration(coverage),
        "binary": {},
    }
    names = list(test.class_names)
    if (
        val.probs is not None
        and val.classes is not None
        and test.probs is not None
        and test.classes is not None
    ):
        out["classes"] = {}
        calibration_counts = np.bincount(val.classes, minlength=len(names))
        for method in ("aps", "mondrian"):
            fit = fit_conformal(
                val.probs, val.classes, np.array(malignant_mask, dtype=bool), coverage, method
            )
            sets = class_sets(fit, test.probs)  # the served sets
            thresholds = np.broadcast_to(np.array(fit.thresholds), (len(names),))
            entry = {
                **_summary(sets, test.classes, ci_method),
                "thresholds": _threshold_list(fit.thresholds),
                "empty_before_rule": _empty_before_rule(test.probs, thresholds),
                "per_class": _per_class(sets, test.classes, names, ci_method),
            }
            if method == "mondrian":
                entry["always_included"] = [
                    names[c] for c in range(len(names)) if not np.isfinite(thresholds[c])
                ]
                for name, d in entry["per_class"].items():
                    c = names.index(name)
                    d["threshold"] = _threshold_list([thresholds[c]])[0]
                    d["n_calibration"] = int(calibration_counts[c])
            out["classes"][method] = entry
    for method in ("aps", "mondrian"):
        # from the files' malignant_prob column (binary-only files have nothing else); the
        # served fit sums the class probabilities: the same numbers up to the CSV's rounding
        t = binary_thresholds(val.malignant_prob, val.malignant, coverage, method)
        sets = binary_sets_at(test.malignant_prob, t[0] if method == "aps" else t)
        truth = test.malignant.astype(np.int64)
        n = int(truth.size)
        only = {
            "benign_only": int((sets[:, 0] & ~sets[:, 1]).sum()),
            "malignant_only": int((~sets[:, 0] & sets[:, 1]).sum()),
            "both": int((sets[:, 0] & sets[:, 1]).sum()),
        }
        out["binary"][method] = {
            **_summary(sets, truth, ci_method),
            "thresholds": _threshold_list(t),
            "sets": {k: proportion_ci(v, n, ci_method).to_dict() for k, v in only.items()},
            "per_class": _per_class(sets, truth, BINARY_CLASSES, ci_method),
        }
    return out
