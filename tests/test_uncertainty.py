"""The fits stored with a model (contract/uncertainty.py) and how postprocess applies them."""

from __future__ import annotations

import logging

import numpy as np
import pytest

from dmfn.contract import schema as S
from dmfn.contract.conformal import class_sets
from dmfn.contract.errors import InvalidInput
from dmfn.contract.ood import ood_flags
from dmfn.contract.postprocess import Postprocessor, softmax
from dmfn.contract.taxonomy import load_taxonomy
from dmfn.contract.uncertainty import Uncertainty, fit_uncertainty

TAX = load_taxonomy()
C = len(TAX)


def _calibration(n_val: int = 200, n_train: int = 100, seed: int = 0) -> dict:
    rng = np.random.default_rng(seed)
    logits = rng.normal(0, 2, (n_val, C))
    return {
        "class_names": list(TAX.names),
        "val_probs": softmax(logits, 1.0),
        "val_labels": rng.integers(0, C, n_val),
        "train_ood_scores": rng.normal(-3, 0.5, n_train).astype(np.float32),
    }


def test_a_fit_round_trips_and_says_what_it_is() -> None:
    fit = fit_uncertainty(_calibration(), TAX.names, TAX.malignant_mask, coverage=0.8)
    assert Uncertainty.from_json(fit.to_json()) == fit
    assert fit.conformal.coverage == 0.8 and fit.conformal.n_calibration == 200
    assert fit.ood.false_alarm == 0.05 and fit.ood.n_train == 100
    assert "APS at 80% coverage" in fit.describe()
    with pytest.raises(InvalidInput) as err:
        Uncertainty.from_json("{}")
    assert err.value.name == "uncertainty"


def test_calibration_of_other_classes_or_missing_is_refused() -> None:
    data = _calibration()
    with pytest.raises(InvalidInput, match="not the model's") as err:
        fit_uncertainty(data, TAX.names[::-1], TAX.malignant_mask)
    assert err.value.name == "calibration"
    del data["train_ood_scores"]
    with pytest.raises(InvalidInput, match="add_calibration"):
        fit_uncertainty(data, TAX.names, TAX.malignant_mask)


def test_too_few_training_scores_fit_the_smallest_rate_they_can_and_say_so(caplog) -> None:
    with caplog.at_level(logging.WARNING, logger="dmfn.contract.uncertainty"):
        fit = fit_uncertainty(_calibration(n_train=16), TAX.names, TAX.malignant_mask)
    assert fit.ood.false_alarm == pytest.approx(1 / 17, abs=1e-6)
    assert any("cannot give a 0.05 false-alarm rate" in r.message for r in caplog.records)


def test_postprocess_emits_the_sets_most_probable_first_and_the_flag() -> None:
    fit = fit_uncertainty(_calibration(), TAX.names, TAX.malignant_mask)
    post = Postprocessor.of(TAX, 1.3, uncertainty=fit)
    logits = np.random.default_rng(5).normal(0, 3, (6, C)).astype(np.float32)
    out = post(logits, np.zeros((6, 5), np.float32))
    probs = out[S.PROBS]
    members = class_sets(fit.conformal, probs)
    scores, flags = ood_flags(fit.ood, logits)
    for row in range(6):
        names = [v.decode() for v in out[S.CLASS_SET][row] if v]
        assert set(names) == {TAX.names[k] for k in np.flatnonzero(members[row])}
        p = [probs[row, TAX.index(n)] for n in names]
        assert p == sorted(p, reverse=True) and names[0] == TAX.names[int(probs[row].argmax())]
        binary = [v.decode() for v in out[S.BINARY_SET][row] if v]
        assert binary and set(binary) <= {"benign", "malignant"}
    np.testing.assert_array_equal(out[S.OOD_FLAG][:, 0], flags)
    np.testing.assert_array_equal(out[S.OOD_SCORE][:, 0], scores)
    bare = Postprocessor.of(TAX)(logits, np.zeros((6, 5), np.float32))
    assert not bare[S.CLASS_SET].any() and not bare[S.OOD_FLAG].any()
