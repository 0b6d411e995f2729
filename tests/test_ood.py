"""The OOD flag (contract/ood.py) and the calibration data stored with a checkpoint
(training/checkpoint.py, training/calibration.py, scripts/add_calibration.py)."""

from __future__ import annotations

import math
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from dmfn.contract.errors import InvalidInput
from dmfn.contract.ood import OodFit, energy_score, fit_ood, fit_ood_threshold, ood_flags

ROOT = Path(__file__).resolve().parents[1]


# --------------------------------------------------------------------------- the score
def test_energy_is_minus_t_logsumexp_of_logits_over_t() -> None:
    rng = np.random.default_rng(0)
    logits = rng.normal(0.0, 3.0, (7, 5))
    for t in (1.0, 0.5, 2.5):
        direct = np.array([-t * math.log(sum(math.exp(v / t) for v in row)) for row in logits])
        np.testing.assert_allclose(energy_score(logits, t), direct, rtol=1e-12)
    # stable where exp overflows: -max - log(sum exp(z - max))
    big = np.array([[1000.0, 999.0], [-1000.0, -1000.0]])
    np.testing.assert_allclose(
        energy_score(big), [-(1000.0 + math.log1p(math.exp(-1.0))), 1000.0 - math.log(2.0)]
    )
    # a confident row has lower energy than a flat row of the same mean
    assert (
        energy_score(np.array([[6.0, 0.0, 0.0]]))[0] < energy_score(np.array([[2.0, 2.0, 2.0]]))[0]
    )


@pytest.mark.parametrize(
    ("logits", "temperature", "name"),
    [
        (np.zeros(3), 1.0, "logits"),
        (np.zeros((2, 0)), 1.0, "logits"),
        (np.array([[0.0, np.nan]]), 1.0, "logits"),
        (np.zeros((2, 3)), 0.0, "temperature"),
        (np.zeros((2, 3)), math.inf, "temperature"),
    ],
)
def test_energy_refuses_bad_arguments_by_name(logits, temperature, name) -> None:
    with pytest.raises(InvalidInput) as err:
        energy_score(logits, temperature)
    assert err.value.name == name


# --------------------------------------------------------------------------- the threshold
def test_threshold_is_the_conformal_upper_quantile() -> None:
    scores = np.random.default_rng(1).permutation(np.arange(1.0, 100.0))  # 1 .. 99
    # k = ceil((99 + 1) * 0.95) = 95: the 95th smallest
    assert fit_ood_threshold(scores, 0.05) == 95.0
    assert fit_ood_threshold(scores, 0.10) == 90.0
    assert fit_ood_threshold(np.arange(19.0), 0.05) == 18.0  # n = 19: the largest
    with pytest.raises(InvalidInput) as err:
        fit_ood_threshold(np.arange(18.0), 0.05)  # 18 < 1 / 0.05 - 1
    assert err.value.name == "train_scores"
    for bad in (0.0, 1.0, -0.1, "0.05"):
        with pytest.raises(InvalidInput) as err:
            fit_ood_threshold(scores, bad)  # type: ignore[arg-type]
        assert err.value.name == "false_alarm"
    for bad_scores in (np.zeros((3, 3)), np.array([0.0, np.inf] * 20)):
        with pytest.raises(InvalidInput) as err:
            fit_ood_threshold(bad_scores, 0.05)
        assert err.value.name == "train_scores"


def test_false_alarm_on_exchangeable_data_is_the_stated_rate() -> None:
    """n = 39 training scores and one new score, all i.i.d.: the flag's probability is
    (n + 1 - k) / (n + 1) = 4 / 40 = 0.10 exactly for false_alarm 0.10 (and for 0.08: k = 37,
    3 / 40 = 0.075 <= 0.08)."""
    rng = np.random.default_rng(2)
    trials = 20000
    data = rng.standard_normal((trials, 40))
    for alpha, expected in ((0.10, 0.10), (0.08, 0.075)):
        flagged = np.mean(
            [row[39] > fit_ood_threshold(row[:39], alpha) for row in data[: trials // 2]]
        )
        se = math.sqrt(expected * (1 - expected) / (trials // 2))
        assert abs(flagged - expected) < 4 * se, (alpha, flagged)
        assert expected <= alpha


def test_fit_round_trips_through_json_and_flags_above_the_threshold() -> None:
    train = energy_score(np.random.default_rng(3).normal(0.0, 2.0, (200, 20)))
    fit = fit_ood(train, 0.05)
    assert fit == OodFit("energy", fit.threshold, 0.05, 200)
    assert OodFit.from_json(fit.to_json()) == fit
    logits = np.random.default_rng(4).normal(0.0, 2.0, (50, 20)).astype(np.float32)
    scores, flags = ood_flags(fit, logits)
    assert (
        scores.dtype == np.float32 and flags.dtype == bool and scores.shape == flags.shape == (50,)
    )
    np.testing.assert_allclose(scores, energy_score(logits), rtol=1e-6)
    np.testing.assert_array_equal(flags, scores > fit.threshold)
    assert 0 < flags.sum() < 50
    for text in ("{}", "[1]", "not json", '{"score": "mahalanobis", "threshold": 1, '
                 '"false_alarm": 0.05, "n_train": 3}'):  # fmt: skip
        with pytest.raises(InvalidInput) as err:
            OodFit.from_json(text)
        assert err.value.name in ("ood", "score")
    with pytest.raises(InvalidInput) as err:
        OodFit("energy", math.nan, 0.05, 3)
    assert err.value.name == "threshold"
    with pytest.raises(InvalidInput) as err:
        ood_flags(fit, np.zeros(20))
    assert err.value.name == "logits"


# --------------------------------------------------------------------------- the checkpoint field
def _calibration(n_val: int = 6, n_train: int = 9, n_classes: int = 20) -> dict:
    rng = np.random.default_rng(5)
    probs = rng.dirichlet(np.ones(n_classes), n_val).astype(np.float32)
    return {
        "class_names": [f"c{i}" for i in range(n_classes)],
        "val_probs": probs,
        "val_labels": np.arange(n_val) % n_classes,
        "val_image_ids": [f"i{i}" for i in range(n_val)],
        "val_patient_ids": [f"p{i // 2}" for i in range(n_val)],
        "train_ood_scores": rng.normal(-3.0, 1.0, n_train).astype(np.float32),
        "temperature": 1.3,
        "ood_score": "energy",
    }


def test_checkpoint_stores_and_loads_the_calibration_field(tiny_checkpoint: Path, tmp_path) -> None:
    from dmfn.training.checkpoint import load_checkpoint

    ckpt = load_checkpoint(tiny_checkpoint)
    ckpt.calibration = _calibration()
    loaded = load_checkpoint(ckpt.save(tmp_path / "with.pt"))
    assert loaded.calibration is not None
    for key, value in _calibration().items():
        got = loaded.calibration[key]
        if isinstance(value, np.ndarray):
            assert got.dtype == (np.int64 if key == "val_labels" else np.float32)
            np.testing.assert_array_equal(got, value)
        else:
            assert got == value
    bad = _calibration()
    bad["val_probs"] = bad["val_probs"][:, :3]
    ckpt.calibration = bad
    with pytest.raises(InvalidInput) as err:
        ckpt.save(tmp_path / "bad.pt")
    assert err.value.name == "calibration"


def test_a_demo_model_file_without_calibration_still_loads(tmp_path: Path) -> None:
    """The demo model as committed before the field (the payload without ``calibration``)."""
    import torch

    from dmfn.resources import demo_checkpoint
    from dmfn.training.checkpoint import load_checkpoint

    payload = torch.load(demo_checkpoint(), map_location="cpu", weights_only=True)
    payload.pop("calibration", None)
    torch.save(payload, tmp_path / "old.pt")
    assert load_checkpoint(tmp_path / "old.pt").calibration is None


# --------------------------------------------------------------------------- collect_calibration
@pytest.fixture(scope="module")
def small_cohort(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Six patients of the tiny preset (rendered: ~10 s)."""
    from dmfn.synth.cohort import generate_cohort

    folder = tmp_path_factory.mktemp("ood_cohort")
    return generate_cohort(folder / "c", "tiny", seed=3, n_patients=6, readers_per_group=0)


@pytest.mark.slow
def test_collect_calibration_is_the_served_probabilities_and_train_energies(
    tiny_checkpoint: Path, small_cohort: Path, tmp_path: Path
) -> None:
    import torch

    from dmfn.client.manifest import load_row_study, read_manifest
    from dmfn.contract.wire import build_request
    from dmfn.preprocess import preprocess_request
    from dmfn.training.calibration import collect_calibration
    from dmfn.training.checkpoint import file_sha256, load_checkpoint

    ckpt = load_checkpoint(tiny_checkpoint)
    got = collect_calibration(tiny_checkpoint, small_cohort)
    manifest = read_manifest(small_cohort, ckpt.taxonomy, ckpt.ctc_features)
    model = ckpt.build_model()

    def logits_of(split: str) -> np.ndarray:
        out = []
        for row in manifest.split(split):
            study = load_row_study(row, ckpt.ctc_features)
            (pre,) = preprocess_request(
                build_request(study, ckpt.contract()), ckpt.preprocess_params
            )
            with torch.no_grad():
                out.append(
                    model(torch.from_numpy(pre.views[None]), torch.from_numpy(pre.tabular[None]))[
                        0
                    ].numpy()
                )
        return np.stack(out)

    val_logits = logits_of("val")
    z = val_logits.astype(np.float64) / ckpt.temperature
    expected = np.exp(z - z.max(1, keepdims=True))
    expected /= expected.sum(1, keepdims=True)
    assert got["val_probs"].dtype == np.float32 and got["val_probs"].shape == expected.shape
    np.testing.assert_allclose(got["val_probs"], expected, atol=1e-5)
    assert got["val_labels"].tolist() == [r.label_index for r in manifest.split("val")]
    assert got["val_image_ids"] == [r.image_id for r in manifest.split("val")]
    assert got["class_names"] == list(ckpt.taxonomy.names)
    assert got["temperature"] == ckpt.temperature
    np.testing.assert_allclose(got["train_ood_scores"], energy_score(logits_of("train")), atol=1e-4)

    # the script writes it into a copy made without the field (as before it existed), every
    # other entry unchanged, and prints both sha256

    copy = tmp_path / "copy.pt"
    payload = torch.load(tiny_checkpoint, weights_only=True)
    payload.pop("calibration", None)
    torch.save(payload, copy)
    before = file_sha256(copy)
    run = subprocess.run(
        [sys.executable, str(ROOT / "scripts" / "add_calibration.py"), str(copy), str(small_cohort)],
        capture_output=True, text=True, check=True,
    )  # fmt: skip
    assert before in run.stdout and file_sha256(copy) in run.stdout and before != file_sha256(copy)
    added = load_checkpoint(copy)
    assert added.calibration is not None
    np.testing.assert_array_equal(added.calibration["val_probs"], got["val_probs"])
    assert added.temperature == ckpt.temperature and added.versions == ckpt.versions
    again = subprocess.run(
        [sys.executable, str(ROOT / "scripts" / "add_calibration.py"), str(copy), str(small_cohort)],
        capture_output=True, text=True,
    )  # fmt: skip
    assert again.returncode == 2 and "--overwrite" in again.stderr
