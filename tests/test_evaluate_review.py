"""What a statistical reviewer checks in `dmfn evaluate`: thresholds chosen on validation
patients only, the 2x2 table, decision curves against a hand computation, the calibration of
the malignant probability, subgroups in their natural order with a rule for small ones, and
figures whose titles say the split and n."""

from __future__ import annotations

import csv
import json
from html import escape as html_escape
from pathlib import Path

import numpy as np
import pytest

from dmfn.contract.predictions import PredictionRow, Provenance, write_predictions
from dmfn.contract.taxonomy import load_taxonomy
from dmfn.evaluation.cli import main
from dmfn.evaluation.proportions import youden_threshold

TAXONOMY = load_taxonomy()
MALIGNANT = np.array(TAXONOMY.malignant_mask)


def _rows(split: str, n: int, seed: int, strength: float = 2.0) -> list[PredictionRow]:
    rng = np.random.default_rng(seed)
    rows = []
    for i in range(n):
        label = TAXONOMY.names[i % len(TAXONOMY)]
        logits = rng.normal(0, 1, len(TAXONOMY))
        logits[TAXONOMY.index(label)] += strength
        probs = np.exp(logits) / np.exp(logits).sum()
        rows.append(
            PredictionRow("patient", f"{split}{i:03d}", float(probs[MALIGNANT].sum()),
                          tuple(float(v) for v in probs), "", split, label)
        )  # fmt: skip
    return rows


@pytest.fixture(scope="module")
def three_splits(tmp_path_factory) -> Path:
    """One predictions file holding train, val and test patients (as `dmfn predict --out` on a
    whole manifest writes it)."""
    folder = tmp_path_factory.mktemp("splits")
    rows = [*_rows("train", 100, 1), *_rows("val", 60, 2, 1.0), *_rows("test", 80, 3)]
    prov = Provenance("cd" * 32, "2026-12-01T00:00:00+00:00", True)
    return write_predictions(folder / "all.csv", TAXONOMY.names, rows, prov)


def _val_youden(path: Path) -> float:
    from dmfn.contract.predictions import read_predictions

    rows = [r for r in read_predictions(path).patient_rows() if r.split == "val"]
    y = np.array([TAXONOMY.malignant_mask[TAXONOMY.index(r.label)] for r in rows], dtype=int)
    return youden_threshold(y, np.array([r.malignant_prob for r in rows]))


def test_the_threshold_comes_from_the_val_split_alone(three_splits, tmp_path) -> None:
    """The same file as --predictions and --validation: Youden on its 60 val patients only
    (before, all 240 patients, test included, chose it), and the report says so."""
    out = tmp_path / "report"
    argv = ["--predictions", str(three_splits), "--validation", str(three_splits),
            "--bootstrap", "100", "--out", str(out)]  # fmt: skip
    assert main(argv) == 0
    result = json.loads((out / "metrics.json").read_text())
    threshold = result["systems"]["all"]["binary"]["threshold"]
    assert threshold["value"] == pytest.approx(_val_youden(three_splits), abs=1e-12)
    assert (threshold["split"], threshold["n"]) == ("val", 60)
    assert threshold["chosen"] == "youden on the val split of all.csv (n 60)"
    assert result["systems"]["all"]["n_patients"] == 80  # the test split is evaluated
    fitted = result["systems"]["all"]["calibration"]["temperature_fitted_on_validation"]
    assert fitted["fitted_on"] == "the val split of all.csv (n 60)"
    assert "youden on the val split of all.csv (n 60)" in (out / "report.html").read_text()


def test_validation_without_a_val_split_is_refused_naming_its_splits(
    three_splits, tmp_path, capsys
) -> None:
    from dmfn.contract.predictions import read_predictions

    test_only = write_predictions(
        tmp_path / "test_only.csv", TAXONOMY.names,
        [r for r in read_predictions(three_splits).rows if r.split == "test"],
    )  # fmt: skip
    argv = ["--predictions", str(three_splits), "--validation", str(test_only),
            "--out", str(tmp_path / "out")]  # fmt: skip
    assert main(argv) == 2
    err = capsys.readouterr().err
    assert f"--validation: {test_only}: no patient of the 'val' split (its splits: test)" in err


def test_a_threshold_chosen_on_the_evaluated_patients_is_refused(
    three_splits, tmp_path, capsys
) -> None:
    argv = ["--predictions", str(three_splits), "--validation", str(three_splits),
            "--split", "val", "--out", str(tmp_path / "out")]  # fmt: skip
    assert main(argv) == 2
    err = capsys.readouterr().err
    assert "60 patient(s) of the val split of all.csv are also evaluated" in err
    assert "--split" in err and "--threshold" in err
    # with a threshold given, evaluating the validation split is allowed (and said)
    argv += ["--threshold", "0.5", "--bootstrap", "100"]
    assert main(argv) == 0


# --------------------------------------------------------------------------- the report
@pytest.fixture(scope="module")
def report(three_splits, tmp_path_factory) -> Path:
    """A full report on the test split of ``three_splits`` with a manifest (subgroups)."""
    from dmfn.client.manifest import MANIFEST_COLUMNS
    from dmfn.contract.predictions import read_predictions

    folder = tmp_path_factory.mktemp("report")
    manifest = folder / "manifest.csv"
    rows = read_predictions(three_splits).patient_rows()
    with manifest.open("w", newline="") as handle:
        writer = csv.DictWriter(handle, fieldnames=MANIFEST_COLUMNS)
        writer.writeheader()
        for i, r in enumerate(rows):
            writer.writerow({
                "patient_id": r.patient_id, "image_id": f"{r.patient_id}_1",
                "image_path": f"images/{r.patient_id}", "mask_path": f"masks/{r.patient_id}.nii.gz",
                "ctc_level_pg_ml": 5 + i % 20, "age_years": (25, 45, 70)[i % 3],
                "sex": "MF"[i % 2], "location": ("anterior", "middle", "posterior")[i % 3],
                "label": r.label, "split": r.split,
                "group": "malignant" if TAXONOMY.malignant_mask[TAXONOMY.index(r.label)] else "benign",
            })  # fmt: skip
    out = folder / "out"
    argv = ["--predictions", str(three_splits), "--manifest", str(manifest), "--bootstrap", "100",
            "--out", str(out)]  # fmt: skip
    assert main(argv) == 0
    return out


def _test_split(path: Path) -> tuple[np.ndarray, np.ndarray]:
    from dmfn.contract.predictions import read_predictions

    rows = [r for r in read_predictions(path).patient_rows() if r.split == "test"]
    y = np.array([TAXONOMY.malignant_mask[TAXONOMY.index(r.label)] for r in rows], dtype=int)
    return y, np.array([r.malignant_prob for r in rows])


def test_net_benefit_equals_the_hand_computation(three_splits, report) -> None:
    """Net benefit at 5 threshold probabilities, counted by hand from the test split."""
    y, p = _test_split(three_splits)
    table = json.loads((report / "metrics.json").read_text())["decision_curve"]["table"]
    assert table["thresholds"] == [0.05, 0.1, 0.2, 0.3, 0.5]
    n = y.size
    for k, t in enumerate(table["thresholds"]):
        tp = sum(1 for yi, pi in zip(y, p, strict=True) if pi >= t and yi == 1)
        fp = sum(1 for yi, pi in zip(y, p, strict=True) if pi >= t and yi == 0)
        assert table["systems"]["all"][k] == pytest.approx(tp / n - fp / n * t / (1 - t), abs=1e-12)
        prevalence = y.mean()
        assert table["treat_all"][k] == pytest.approx(prevalence - (1 - prevalence) * t / (1 - t))
    assert table["treat_none"] == [0.0] * 5
    md = (report / "report.md").read_text()
    assert "Decision curve: net benefit" in md and "treat all as malignant" in md


def test_the_two_by_two_table_adds_up(three_splits, report) -> None:
    result = json.loads((report / "metrics.json").read_text())
    b = result["systems"]["all"]["binary"]
    y, p = _test_split(three_splits)
    called = p >= b["threshold"]["value"]
    tp, fn = int((called & (y == 1)).sum()), int((~called & (y == 1)).sum())
    fp, tn = int((called & (y == 0)).sum()), int((~called & (y == 0)).sum())
    md = (report / "report.md").read_text()
    assert f"| malignant | {tp} (true positive) | {fn} (false negative) | {tp + fn} |" in md
    assert f"| benign | {fp} (false positive) | {tn} (true negative) | {fp + tn} |" in md
    assert f"| total | {tp + fp} | {fn + tn} | {y.size} |" in md


def test_the_malignant_probability_has_a_calibration_curve_with_counts(three_splits, report):
    y, p = _test_split(three_splits)
    cal = json.loads((report / "metrics.json").read_text())["systems"]["all"]["binary"][
        "calibration"
    ]
    curve = cal["curve"]
    assert len(curve) == 10 and sum(b["n"] for b in curve) == y.size
    assert sum(b["positives"] for b in curve) == y.sum()
    for b in curve:
        if b["n"]:
            assert b["ci_low"] <= b["observed"] <= b["ci_high"]
    assert cal["mean_predicted"] == pytest.approx(p.mean()) and cal["observed"] == y.mean()
    assert np.isfinite(cal["slope"]) and np.isfinite(cal["intercept"])


def test_subgroups_in_natural_order_with_the_small_ones_warned(report) -> None:
    result = json.loads((report / "metrics.json").read_text())
    groups = result["subgroups"]
    assert list(groups["age"]) == ["<40", "40-59", ">=60"]
    assert list(groups["location"]) == ["anterior", "middle", "posterior"]
    assert list(groups["sex"]) == ["M", "F"]
    for levels in groups.values():
        for a in levels.values():
            assert a["too_few_for_ci"] == (min(a["n_positive"], a["n_negative"]) < 5)
    per_class = result["systems"]["all"]["multiclass"]["per_class_auc"]
    few = [c for c, a in per_class.items() if a["n_positive"] < 5]
    assert few and all(per_class[c]["too_few_for_ci"] for c in few)
    md = (report / "report.md").read_text()
    assert "too few patients for a CI" in md and "is shown without an interval" in md


def test_every_figure_says_its_split_and_n_and_has_a_caption(report) -> None:
    from PIL import Image

    from dmfn.evaluation.figures import FIGURE_CAPTIONS

    result = json.loads((report / "metrics.json").read_text())
    assert set(result["figures"]) >= {"roc", "calibration_binary", "decision_curve", "subgroups"}
    for name in result["figures"].values():
        title = Image.open(report / name).text["Title"]
        assert "test split, n = 80 patients" in title, (name, title)
    html = (report / "report.html").read_text()
    for key in result["figures"]:
        assert html_escape(FIGURE_CAPTIONS[key]) in html
    assert "all: model sha256 " + "cd" * 32 + "; trained 2026-12-01T00:00:00+00:00" in html


# --------------------------------------------------------------------------- exclusions
def test_a_failed_study_is_an_exclusion_with_its_reason(three_splits, report, tmp_path) -> None:
    """One test study recorded as failed (status 'failed', its error): the flow shows it,
    its reason is kept, and n drops by one everywhere."""
    from dmfn.contract.predictions import FailedStudy, read_predictions

    table = read_predictions(three_splits)
    gone = next(r for r in table.rows if r.split == "test")
    reason = "argument 'mask': masks/x.nii.gz is empty (no lesion voxel)"
    failed = write_predictions(
        tmp_path / "with_failure.csv", TAXONOMY.names, [r for r in table.rows if r is not gone],
        table.provenance,
        failures=[FailedStudy(gone.patient_id, f"{gone.patient_id}_1", "test", gone.label, reason)],
    )  # fmt: skip
    again = read_predictions(failed)
    assert [f.error for f in again.failures] == [reason] and len(again.rows) == len(table.rows) - 1
    out = tmp_path / "out"
    manifest = report.parent / "manifest.csv"
    argv = ["--predictions", str(failed), "--manifest", str(manifest), "--bootstrap", "100",
            "--out", str(out)]  # fmt: skip
    assert main(argv) == 0
    result = json.loads((out / "metrics.json").read_text())
    flow = result["flow"]
    assert flow["manifest"] == {"patients": 80, "images": 80}
    assert flow["predicted"] == {"patients": 79, "images": 79}
    assert flow["excluded"]["images"] == 1 and flow["excluded"]["reasons"] == {reason: 1}
    assert flow["analysed"] == {"patients": 79}
    system = result["systems"]["with_failure"]
    assert system["n_patients"] == 79
    assert system["binary"]["auc"]["n_positive"] + system["binary"]["auc"]["n_negative"] == 79
    assert "n = 79 patients" in _png_title(out / "roc.png")
    md = (out / "report.md").read_text()
    assert "Flow of patients (STARD)" in md and reason in md
    assert "the manifest holds 80 patient(s) of this split; 79 were analysed" in md


def _png_title(png: Path) -> str:
    from PIL import Image

    return Image.open(png).text["Title"]


@pytest.mark.slow
def test_a_study_that_fails_in_predict_is_reported_by_evaluate(tiny_checkpoint, tmp_path) -> None:
    """dmfn predict --checkpoint --manifest --out on a synthetic cohort where one study's mask
    is not on its image grid: its row carries the reason; dmfn evaluate --manifest shows it in
    the flow, and the analysed n drops by the patients left without any prediction,
    everywhere."""
    from dmfn.client.io import write_nifti_mask
    from dmfn.client.manifest import read_manifest
    from dmfn.contract.predictions import read_predictions
    from dmfn.predict_cli import main as predict_main
    from dmfn.synth import generate_cohort

    manifest = generate_cohort(tmp_path / "cohort", "demo", seed=5, n_patients=14,
                               readers_per_group=0, appearance="easy")  # fmt: skip
    # every patient in one evaluated split, so that both classes are surely in it
    text = manifest.read_text().splitlines()
    column = text[0].split(",").index("split")
    rows = [line.split(",") for line in text[1:]]
    for r in rows:
        r[column] = "test"
    manifest.write_text("\n".join([text[0], *(",".join(r) for r in rows)]) + "\n")
    cohort = read_manifest(manifest, TAXONOMY)
    single = [r for r in cohort.rows if sum(x.patient_id == r.patient_id for x in cohort.rows) == 1]
    broken = single[0]
    write_nifti_mask(np.ones((4, 4, 4), np.uint8), (1.0, 1.0, 1.0), broken.mask_path)
    out = tmp_path / "predictions.csv"
    code = predict_main(["--checkpoint", str(tiny_checkpoint), "--manifest", str(manifest),
                         "--out", str(out)])  # fmt: skip
    assert code != 0  # one study failed, and the exit status says so
    table = read_predictions(out)
    # the tiny checkpoint's voxel cap may refuse a large study too: both are exclusions
    failure = next(f for f in table.failures if f.image_id == broken.image_id)
    assert failure.patient_id == broken.patient_id and failure.split == "test"
    assert "its voxel grid does not match the image's" in failure.error
    assert failure.label == broken.label
    n_patients = len({r.patient_id for r in cohort.rows})
    predicted = {r.patient_id for r in table.rows}
    n_analysed = len(predicted)
    assert broken.patient_id not in predicted and n_analysed < n_patients
    report = tmp_path / "report"
    argv = ["--predictions", str(out), "--manifest", str(manifest), "--threshold", "0.5",
            "--bootstrap", "100", "--out", str(report)]  # fmt: skip
    assert main(argv) == 0
    result = json.loads((report / "metrics.json").read_text())
    flow = result["flow"]
    assert flow["manifest"]["patients"] == n_patients
    assert flow["excluded"]["images"] == len(table.failures)
    assert flow["excluded"]["reasons"][failure.error] == 1
    assert flow["analysed"]["patients"] == n_analysed
    assert next(iter(result["systems"].values()))["n_patients"] == n_analysed
    for name in result["figures"].values():
        assert f"n = {n_analysed} patients" in _png_title(report / name), name


def test_one_temperature_story(three_splits, tmp_path) -> None:
    """The temperature stored with the model (recorded in the file) beside evaluate's refit,
    each with its ECE on the evaluated patients, and the served one named."""
    from dmfn.contract.predictions import read_predictions
    from dmfn.evaluation import calibration

    table = read_predictions(three_splits)
    prov = Provenance("cd" * 32, "2026-12-01T00:00:00+00:00", True, 1.5)
    path = write_predictions(tmp_path / "t.csv", TAXONOMY.names, table.rows, prov)
    assert read_predictions(path).provenance.temperature == 1.5
    out = tmp_path / "out"
    assert main(["--predictions", str(path), "--bootstrap", "100", "--out", str(out)]) == 0
    cal = json.loads((out / "metrics.json").read_text())["systems"]["t"]["calibration"]
    assert cal["stored_temperature"] == 1.5
    test = [r for r in table.patient_rows() if r.split == "test"]
    labels = np.array([TAXONOMY.index(r.label) for r in test])
    raw = calibration.apply_temperature(np.array([r.probs for r in test]), 1 / 1.5)
    assert cal["ece_without_temperature"] == pytest.approx(
        calibration.expected_calibration_error(labels, raw), abs=1e-12
    )
    fitted = cal["temperature_fitted_on_validation"]
    assert fitted["fitted_on"] == "the val split of the same file (n 60)"
    md = (out / "report.md").read_text()
    assert "stored with the model at training" in md and "the served model keeps" in md
    assert f"{1.5 * fitted['temperature']:.3f} (x {fitted['temperature']:.3f})" in md


def test_systems_are_named_after_their_models(three_splits, tmp_path) -> None:
    """Files that record their model's kind give the systems its name, not a run folder's."""
    from dmfn.contract.predictions import read_predictions
    from dmfn.evaluation.report import system_names

    rows = read_predictions(three_splits).rows
    paths = []
    for run, kind in (("demo", "dmfn"), ("demo_cnn", "cnn")):
        prov = Provenance("cd" * 32, "2026-12-01", True, 1.0, kind)
        paths.append(write_predictions(tmp_path / run / "seed_0" / "predictions_test.csv",
                                       TAXONOMY.names, rows, prov))  # fmt: skip
    tables = [read_predictions(p) for p in paths]
    assert system_names(tables) == ["dmfn", "cnn"]
    assert system_names(tables, ["a", "b"]) == ["a", "b"]
    same = [read_predictions(paths[0]), read_predictions(paths[0])]  # one kind twice: folders
    assert system_names(same) == ["predictions_test (1)", "predictions_test (2)"]


# --------------------------------------------------------------------------- conformal sets
def test_conformal_sets_are_calibrated_on_val_and_judged_on_test(three_splits, tmp_path) -> None:
    """The report's conformal section: fitted on the file's 60 val patients, judged on its 80
    test patients, the numbers those of contract.conformal's sets; APS and Mondrian side by
    side, per class, and the binary sets."""
    from dmfn.contract import conformal as cf
    from dmfn.contract.predictions import read_predictions

    out = tmp_path / "out"
    argv = ["--predictions", str(three_splits), "--coverage", "0.8", "--bootstrap", "100",
            "--out", str(out)]  # fmt: skip
    assert main(argv) == 0
    conf = json.loads((out / "metrics.json").read_text())["conformal"]
    assert conf["computed"] and conf["coverage_target"] == 0.8
    assert conf["n_calibration"] == 60 and conf["n_evaluated"] == 80
    assert conf["fitted_on"] == "the val split of the same file (n 60)"

    rows = read_predictions(three_splits).patient_rows()
    val = [r for r in rows if r.split == "val"]
    test = [r for r in rows if r.split == "test"]
    labels = np.array([TAXONOMY.index(r.label) for r in test])
    probs = np.array([r.probs for r in test])
    for method in ("aps", "mondrian"):
        fit = cf.fit_conformal(np.array([r.probs for r in val]),
                               np.array([TAXONOMY.index(r.label) for r in val]), MALIGNANT,
                               0.8, method)  # fmt: skip
        sets = cf.class_sets(fit, probs)
        c = conf["classes"][method]
        assert c["coverage"]["successes"] == int(sets[np.arange(80), labels].sum())
        assert c["coverage"]["n"] == 80 and c["coverage"]["ci_method"] == "wilson"
        assert c["mean_size"] == pytest.approx(sets.sum(axis=1).mean(), abs=1e-12)
        assert c["singletons"]["successes"] == int((sets.sum(axis=1) == 1).sum())
        assert sum(d["n"] for d in c["per_class"].values()) == 80
        assert c["thresholds"] == [None if np.isinf(t) else t for t in fit.thresholds]
    # 60 val patients over 20 classes: 3 each, fewer than the 4 that 0.8 needs: all "always"
    assert conf["min_calibration"] == 4
    assert len(conf["classes"]["mondrian"]["always_included"]) == 20
    m = np.array([r.malignant_prob for r in test])
    y = MALIGNANT[labels].astype(int)
    t = cf.binary_thresholds([r.malignant_prob for r in val],
                             [MALIGNANT[TAXONOMY.index(r.label)] for r in val], 0.8)  # fmt: skip
    b = cf.binary_sets_at(m, t[0])
    binary = conf["binary"]["aps"]
    assert binary["coverage"]["successes"] == int(b[np.arange(80), y].sum())
    assert binary["sets"]["both"]["successes"] == int(b.all(axis=1).sum())
    assert (
        sum(binary["sets"][k]["successes"] for k in ("benign_only", "malignant_only", "both")) == 80
    )
    md = (out / "report.md").read_text()
    assert "## Conformal class sets at 0.80 coverage (first system)" in md
    assert (
        "| class | patients | APS coverage [CI] |" in md and "| method | threshold | {benign}" in md
    )


def test_conformal_sets_without_validation_patients(cohort_test_only, tmp_path, capsys) -> None:
    """No val split: the section says why; --coverage asked for is refused naming the flags;
    a coverage outside (0, 1) is refused before the long work."""
    out = tmp_path / "out"
    assert main(["--predictions", str(cohort_test_only), "--bootstrap", "100",
                 "--out", str(out)]) == 0  # fmt: skip
    conf = json.loads((out / "metrics.json").read_text())["conformal"]
    assert not conf["computed"] and "no validation patients" in conf["reason"]
    assert "Not computed: no validation patients" in (out / "report.md").read_text()
    for coverage, words in (("0.9", "--validation"), ("1.5", "(0, 1)")):
        capsys.readouterr()
        argv = ["--predictions", str(cohort_test_only), "--coverage", coverage, "--bootstrap",
                "100", "--out", str(tmp_path / f"o{coverage}")]  # fmt: skip
        assert main(argv) == 2
        err = capsys.readouterr().err
        assert err.startswith("dmfn evaluate: --coverage: ") and words in err, err


@pytest.fixture(scope="module")
def cohort_test_only(tmp_path_factory) -> Path:
    folder = tmp_path_factory.mktemp("test_only")
    prov = Provenance("cd" * 32, "2026-12-01T00:00:00+00:00", True)
    return write_predictions(folder / "test.csv", TAXONOMY.names, _rows("test", 40, 4), prov)
