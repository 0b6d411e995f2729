"""What a training run decides, checked from its own outputs: which epoch becomes best.pt, when it
stops early, what the --seeds summary says; the README's main job (dmfn demo) on the committed
model; the packaged taxonomy against the paper's Table 2 (a verbatim copy in tests/data)."""

from __future__ import annotations

import csv
import json
import math
import re
from pathlib import Path

import numpy as np
import pytest

from dmfn.training import cli as train_cli
from dmfn.training.checkpoint import load_checkpoint
from dmfn.training.scoring import MONITOR

HERE = Path(__file__).parent
FAST = [
    "--params", '{"view_size": 32, "pde_iterations": 2}', "--backbone", "regnetx_tiny",
    "--batch-size", "8", "--workers", "2", "--no-progress", "--no-augment",
]  # fmt: skip


def _log(path: Path) -> list[dict[str, str]]:
    with path.open(newline="") as handle:
        return list(csv.DictReader(handle))


@pytest.fixture(scope="module")
def cohort(tmp_path_factory) -> Path:
    from dmfn.synth.cohort import generate_cohort

    return generate_cohort(tmp_path_factory.mktemp("tiny") / "cohort", "tiny", seed=1, workers=2)


@pytest.mark.slow
def test_best_pt_is_the_best_validation_epoch_of_the_log(cohort, tmp_path):
    out = tmp_path / "run"
    argv = ["--manifest", str(cohort), "--out", str(out), "--epochs", "5", "--lr", "3e-3"]
    assert train_cli.main([*argv, "--patience", "0", *FAST]) == 0
    log = _log(out / "seed_0" / "log.csv")
    scores = [float(r[f"val_{MONITOR}"]) for r in log]
    best_epoch = int(log[int(np.argmax(scores))]["epoch"])  # first of equal bests
    ckpt = load_checkpoint(out / "seed_0" / "best.pt")
    assert ckpt.training["epoch"] == best_epoch
    summary = json.loads((out / "summary.json").read_text())
    assert summary["runs"][0]["best_epoch"] == best_epoch
    assert ckpt.training["monitor_value"] == pytest.approx(max(scores), abs=1e-6)  # log: 6 d.p.


@pytest.mark.slow
def test_early_stopping_at_the_default_patience(cohort, tmp_path):
    """The tabular model (no batch norm, whose running statistics move even without learning)
    with a learning rate too small to change any ranking never improves on validation after
    epoch 1, so the run stops after 1 + patience epochs (the default patience)."""
    patience = train_cli.build_parser().get_default("patience")
    out = tmp_path / "run"
    argv = ["--manifest", str(cohort), "--out", str(out), "--epochs", str(patience + 5)]
    assert train_cli.main([*argv, "--model", "tabular", "--lr", "1e-12", *FAST]) == 0
    log = _log(out / "seed_0" / "log.csv")
    assert [int(r["epoch"]) for r in log] == list(range(1, patience + 2))
    summary = json.loads((out / "summary.json").read_text())
    assert summary["runs"][0]["best_epoch"] == 1
    assert summary["runs"][0]["epochs_run"] == patience + 1


@pytest.mark.slow
def test_seeds_summary_is_the_mean_and_sample_sd_of_the_runs(cohort, tmp_path):
    out = tmp_path / "run"
    argv = ["--manifest", str(cohort), "--out", str(out), "--epochs", "2", "--seeds", "2"]
    assert train_cli.main([*argv, "--patience", "0", *FAST]) == 0
    summary = json.loads((out / "summary.json").read_text())
    assert summary["seeds"] == [0, 1]
    # each seed's own record: the metrics stored in its best.pt
    per_seed = [load_checkpoint(out / f"seed_{s}" / "best.pt").metrics for s in (0, 1)]
    for split in ("val", "test"):
        for metric in ("binary_auc", "hand_till_auc", "macro_auc"):
            values = [m[split][metric] for m in per_seed]
            key = f"{split}_{metric}"
            assert summary["mean"][key] == pytest.approx(np.mean(values))
            assert summary["sd"][key] == pytest.approx(np.std(values, ddof=1))


@pytest.mark.slow
def test_dmfn_demo_serves_the_committed_model(tmp_path, capsys):
    """The README's main job: the committed checkpoint, exported, served, one prediction."""
    from dmfn import demo_cli

    assert demo_cli.main(["--out", str(tmp_path / "demo"), "--patients", "3"]) == 0
    out = capsys.readouterr().out
    assert "served PROBS vs in-process PyTorch: max |difference|" in out
    difference = float(out.split("max |difference|")[1].split()[0])
    assert difference < 1e-5
    assert "malignant probability" in out


def test_packaged_taxonomy_equals_the_papers_table_2() -> None:
    from dmfn.contract.taxonomy import load_taxonomy

    with (HERE / "data" / "paper_table2.csv").open(newline="") as handle:
        table = list(csv.DictReader(handle))
    taxonomy = load_taxonomy()
    assert taxonomy.names == [row["class"] for row in table]
    for cls, row in zip(taxonomy.classes, table, strict=True):
        assert cls.group == row["group"], cls.name
        assert (cls.n_train, cls.n_val, cls.n_test) == (
            int(row["n_train"]),
            int(row["n_val"]),
            int(row["n_test"]),
        ), cls.name
        assert math.isclose(cls.ctc_mean_pg_ml, float(row["ctc_mean_pg_ml"])), cls.name
        assert math.isclose(cls.ctc_sd_pg_ml, float(row["ctc_sd_pg_ml"])), cls.name


@pytest.mark.slow
def test_composed_experts_are_the_calibrated_product_at_epoch_0(cohort, tmp_path):
    """Two-stage training: a cnn and a tabular run, then dmfn --fusion experts composed from
    them. With 0 epochs the model is the post-hoc product of the two calibrated experts (the
    prior counted once); --freeze-experts trains only the fusion weights and bias."""
    import torch

    base = ["--manifest", str(cohort), "--epochs", "2", "--lr", "3e-3", *FAST]
    assert train_cli.main([*base, "--model", "cnn", "--out", str(tmp_path / "cnn")]) == 0
    assert train_cli.main([*base, "--model", "tabular", "--out", str(tmp_path / "tab")]) == 0
    composed = ["--manifest", str(cohort), *FAST, "--model", "dmfn", "--fusion", "experts",
                "--init-ct", str(tmp_path / "cnn"), "--init-tabular", str(tmp_path / "tab")]  # fmt: skip
    assert train_cli.main([*composed, "--epochs", "0", "--out", str(tmp_path / "product")]) == 0
    best = load_checkpoint(tmp_path / "product" / "seed_0" / "best.pt")
    assert best.training["epoch"] == 0
    cnn = load_checkpoint(tmp_path / "cnn" / "seed_0" / "best.pt")
    tab = load_checkpoint(tmp_path / "tab" / "seed_0" / "best.pt")
    torch.manual_seed(0)
    views = torch.rand(4, 3, 32, 32)
    tabular = torch.tensor([[12.0, 55.0, 1.0, 1.0, 0.0, 0.0]] * 4) + torch.rand(4, 6)
    model, ct_model, tab_model = best.build_model(), cnn.build_model(), tab.build_model()
    with torch.no_grad():
        got = model(views, tabular)
        want = (
            ct_model(views, tabular) / cnn.temperature + tab_model(views, tabular) / tab.temperature
        )
        want = want + model.fusion_bias
    assert torch.allclose(got, want, atol=1e-5)
    prior = model.fusion_bias.detach()
    assert float(prior.mean()) == pytest.approx(0.0, abs=1e-5)  # -log prior, centred

    argv = [*composed, "--freeze-experts", "--epochs", "1", "--out", str(tmp_path / "frozen")]
    assert train_cli.main(argv) == 0
    frozen = load_checkpoint(tmp_path / "frozen" / "seed_0" / "best.pt").build_model()
    for mine, theirs in ((frozen.ct, ct_model.ct), (frozen.tabular, tab_model.tabular)):
        for (name, a), b in zip(
            mine.state_dict().items(), theirs.state_dict().values(), strict=True
        ):
            assert torch.equal(a, b), name  # weights and batch-norm statistics untouched


@pytest.mark.slow
def test_a_model_with_measurement_features_trains_exports_and_predicts(cohort, tmp_path):
    """--tabular-measurements: the preprocessing appends the lesion size to TABULAR; the model,
    the exported repository and in-process prediction all take the wider row."""
    from dmfn.client.manifest import load_row_study, read_manifest
    from dmfn.serving.config import ServingSettings
    from dmfn.training.export import export
    from dmfn.training.inference import LocalPredictor

    out = tmp_path / "run"
    argv = ["--manifest", str(cohort), "--out", str(out), "--epochs", "1", "--tabular-measurements"]
    assert train_cli.main([*argv, *FAST]) == 0
    best = out / "seed_0" / "best.pt"
    ckpt = load_checkpoint(best)
    assert ckpt.preprocess_params.tabular_measurements
    assert ckpt.model_config["n_tabular"] == 1 + 5 + 3
    repo = tmp_path / "repo"
    export(best, repo, ServingSettings(), parity_studies=2, parity_manifest=cohort)
    assert "dims: [ 9 ]" in (repo / "preprocess" / "config.pbtxt").read_text()
    row = read_manifest(cohort, ckpt.taxonomy, ckpt.ctc_features).rows[0]
    prediction = LocalPredictor(best).predict(load_row_study(row, ckpt.ctc_features))
    assert sum(prediction.probs.values()) == pytest.approx(1.0, abs=1e-5)


@pytest.mark.slow
def test_folds_predict_every_train_and_val_patient_once_out_of_fold(cohort, tmp_path):
    """dmfn train --folds 5: class-stratified folds of the train and val patients; each fold's
    model validates on its fold; predictions_oof.csv holds every train and val patient exactly
    once (with its fold), no test patient; dmfn evaluate reads it and says so."""
    from dmfn.client.manifest import read_manifest
    from dmfn.contract.predictions import read_predictions
    from dmfn.contract.taxonomy import load_taxonomy
    from dmfn.evaluation.cli import main as evaluate_main
    from dmfn.training.checkpoint import load_checkpoint
    from dmfn.training.data import assign_folds

    out = tmp_path / "cv"
    argv = ["--manifest", str(cohort), "--out", str(out), "--epochs", "1", "--folds", "5"]
    assert train_cli.main([*argv, *FAST]) == 0
    manifest = read_manifest(cohort, load_taxonomy())
    pool = {r.patient_id for r in manifest.rows if r.split in ("train", "val")}
    test = {r.patient_id for r in manifest.rows if r.split == "test"}
    oof = read_predictions(out / "predictions_oof.csv")
    patients = [r for r in oof.rows if r.level == "patient"]
    assert sorted(r.patient_id for r in patients) == sorted(pool)  # each exactly once
    assert not {r.patient_id for r in oof.rows} & test
    of = assign_folds(manifest, 5, 0)
    assert {r.patient_id: int(r.fold) for r in patients} == {p: of[p] for p in pool}
    for k in range(5):
        val = read_predictions(out / f"fold_{k}" / "predictions_val.csv")
        assert {r.patient_id for r in val.rows} == {p for p in pool if of[p] == k}
        assert (out / f"fold_{k}" / "best.pt").is_file()
        # each fold's best.pt carries the calibration data of its own split: its validation
        # fold's images and its training folds' OOD scores
        calibration = load_checkpoint(out / f"fold_{k}" / "best.pt").calibration
        assert calibration is not None
        assert set(calibration["val_patient_ids"]) == {p for p in pool if of[p] == k}
        n_train = sum(
            1 for r in manifest.rows if r.split in ("train", "val") and of[r.patient_id] != k
        )
        assert calibration["train_ood_scores"].shape == (n_train,)
    summary = json.loads((out / "summary.json").read_text())
    assert summary["folds"] == [0, 1, 2, 3, 4]
    report = tmp_path / "report"
    code = evaluate_main(["--predictions", str(out / "predictions_oof.csv"), "--threshold", "0.5",
                          "--bootstrap", "100", "--out", str(report)])  # fmt: skip
    assert code == 0
    result = json.loads((report / "metrics.json").read_text())
    assert result["cross_validation"]["folds"] == ["0", "1", "2", "3", "4"]
    assert next(iter(result["systems"].values()))["n_patients"] == len(pool)


@pytest.mark.slow
def test_folds_are_refused_before_any_preprocessing_when_too_many(cohort, tmp_path, capsys):
    argv = ["--manifest", str(cohort), "--out", str(tmp_path / "cv"), "--folds", "500",
            "--cache-dir", str(tmp_path / "cache")]  # fmt: skip
    assert train_cli.main(argv) == 2
    err = capsys.readouterr().err
    assert "--folds: manifest" in err and "cannot make 500 folds of at least 2 classes" in err
    assert not (tmp_path / "cache").exists()  # refused before the cache was built
    # a manifest without validation patients: refused before the cache too
    no_val = cohort.parent / "no_val.csv"
    no_val.write_text(re.sub(r",val$", ",train", cohort.read_text(), flags=re.MULTILINE))
    argv = ["--manifest", str(no_val), "--out", str(tmp_path / "run"),
            "--cache-dir", str(tmp_path / "cache")]  # fmt: skip
    assert train_cli.main(argv) == 2
    assert "split 'val' has no images" in capsys.readouterr().err
    assert not (tmp_path / "cache").exists()
