"""dmfn.training: augmentation, dataset cache, training loop, checkpoints, `dmfn train`, DDP.

The end-to-end tests (marked slow: the shared fixture generates and preprocesses the `tiny`
synthetic cohort, ~30 s) train on it with small views (32 px) and a tiny backbone, so that a
training run itself takes seconds on a CPU.
"""

from __future__ import annotations

import argparse
import csv
import json
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from dmfn.client.manifest import read_manifest
from dmfn.contract.predictions import header
from dmfn.contract.taxonomy import load_taxonomy
from dmfn.evaluation import metrics
from dmfn.training import cli as train_cli
from dmfn.training import config as train_config
from dmfn.training import loop, scoring, train
from dmfn.training.augment import AugmentParams, augment_views
from dmfn.training.checkpoint import load_checkpoint
from dmfn.training.data import prepare_data
from dmfn.training.dataset import build_cache, cache_key, patient_mean
from dmfn.training.summary import format_table

PARAMS = '{"view_size": 32, "pde_iterations": 2}'
FAST = [
    "--params",
    PARAMS,
    "--backbone",
    "regnetx_tiny",
    "--batch-size",
    "8",
    "--workers",
    "2",
    "--no-progress",
]


# --------------------------------------------------------------------------- augmentation
def test_augment_is_seeded_and_keeps_shape():
    views = torch.rand(4, 3, 24, 24)
    a = augment_views(views, torch.Generator().manual_seed(1))
    b = augment_views(views, torch.Generator().manual_seed(1))
    c = augment_views(views, torch.Generator().manual_seed(2))
    assert a.shape == views.shape and a.dtype == views.dtype
    assert torch.equal(a, b) and not torch.equal(a, c)


def test_augment_without_strength_is_identity():
    views = torch.rand(2, 3, 16, 16)
    none = AugmentParams(0, 0, 0, 0, 0)
    out = augment_views(views, torch.Generator().manual_seed(0), none)
    torch.testing.assert_close(out, views, atol=1e-5, rtol=0)


def test_augment_never_flips():
    """A bright left half stays on the left after any allowed rotation/shift."""
    views = torch.zeros(64, 3, 32, 32)
    views[..., :16] = 1.0
    out = augment_views(views, torch.Generator().manual_seed(0), AugmentParams(noise_sd=0))
    left, right = out[..., 4:12].mean((-1, -2)), out[..., 20:28].mean((-1, -2))
    assert bool((left > right + 0.5).all())


@pytest.mark.parametrize(
    ("kwargs", "name"),
    [({"max_rotation_deg": 90}, "max_rotation_deg"), ({"noise_sd": -1}, "noise_sd")],
)
def test_augment_bad_params(kwargs, name):
    with pytest.raises(ValueError, match=f"argument '{name}'"):
        AugmentParams(**kwargs)
    with pytest.raises(ValueError, match="argument 'views'"):
        augment_views(torch.rand(3, 8, 8), torch.Generator())


def test_patient_mean_averages_images():
    values = torch.tensor([[1.0, 0.0], [0.0, 1.0], [0.2, 0.8]])
    out = patient_mean(values, torch.tensor([0, 0, 1]), 2)
    torch.testing.assert_close(out, torch.tensor([[0.5, 0.5], [0.2, 0.8]]))


# --------------------------------------------------------------------------- tiny cohort
@pytest.fixture(scope="module")
def cohort(tmp_path_factory) -> Path:
    """The tiny synthetic cohort (30 patients), generated once for this module."""
    from dmfn.synth.cohort import generate_cohort

    folder = tmp_path_factory.mktemp("tiny")
    return generate_cohort(folder / "cohort", "tiny", seed=0, workers=2)


@pytest.fixture(scope="module")
def trained(cohort, tmp_path_factory) -> tuple[Path, dict]:
    """One short fusion run (3 epochs); also keeps a copy of last.pt after epoch 1."""
    out = tmp_path_factory.mktemp("run")
    saved = out / "after_epoch_1.pt"
    original = loop._save_last

    def save_and_keep(path, model, data, args, seed, optimiser, scheduler, state):
        original(path, model, data, args, seed, optimiser, scheduler, state)
        if state.epoch == 1:
            shutil.copy(path, saved)
            shutil.copy(path.with_name("best.pt"), out / "best_after_epoch_1.pt")

    argv = ["--manifest", str(cohort), "--out", str(out / "a"), "--epochs", "3", "--lr", "3e-3"]
    argv += ["--no-augment", "--patience", "0", *FAST]
    loop._save_last = save_and_keep
    try:
        summary = train.run(train_cli.parse_args(argv))
    finally:
        loop._save_last = original
    return out, {"summary": summary, "argv": argv}


def _log(path: Path) -> list[dict[str, str]]:
    with path.open(newline="") as handle:
        return list(csv.DictReader(handle))


@pytest.mark.slow
def test_cache_is_reused_and_keyed_by_inputs(cohort, tmp_path):
    manifest = read_manifest(cohort, load_taxonomy())
    params = train_config.parse_params(PARAMS)
    rows = manifest.rows[:2]
    sub = type(manifest)(manifest.path, rows, manifest.taxonomy, manifest.ctc_features)
    first = build_cache(sub, params, tmp_path, workers=0, progress=False)
    stamps = [p.stat().st_mtime_ns for p in first]
    again = build_cache(sub, params, tmp_path, workers=0, progress=False)
    assert again == first and [p.stat().st_mtime_ns for p in again] == stamps
    other = train_config.parse_params('{"view_size": 24, "pde_iterations": 2}')
    assert cache_key(rows[0], other) != cache_key(rows[0], params)
    with np.load(first[0]) as entry:
        assert entry["views"].shape == (3, 32, 32) and entry["tabular"].shape == (6,)
    os.utime(rows[0].mask_path, ns=(1, 1))  # any change of an input file misses the cache
    assert cache_key(rows[0], params) != first[0].stem


@pytest.mark.slow
def test_a_failing_image_names_manifest_line_and_image(cohort, tmp_path):
    with cohort.open(newline="") as handle:
        rows = list(csv.DictReader(handle))
    ids = [r["patient_id"] for r in rows]
    twice = next(p for p in ids if ids.count(p) > 1)
    first, second = (dict(r) for r in rows if r["patient_id"] == twice)
    second["mask_path"] = first["mask_path"]  # a mask on another acquisition's grid
    broken = cohort.parent / "wrong_mask.csv"
    with broken.open("w", newline="") as handle:
        writer = csv.DictWriter(handle, fieldnames=list(rows[0]))
        writer.writeheader()
        writer.writerows([first, second])
    manifest = read_manifest(broken, load_taxonomy())
    message = rf"wrong_mask.csv line 3 \(image '{second['image_id']}'\)"
    with pytest.raises(ValueError, match=message):
        build_cache(
            manifest, train_config.parse_params(PARAMS), tmp_path, workers=0, progress=False
        )


@pytest.mark.slow
def test_tiny_run_lowers_the_loss_and_writes_outputs(trained, cohort):
    out, info = trained
    seed_dir = out / "a" / "seed_0"
    for name in ("best.pt", "last.pt", "log.csv", "predictions_val.csv", "predictions_test.csv"):
        assert (seed_dir / name).is_file(), name
    assert any((seed_dir / "tensorboard").iterdir())
    log = _log(seed_dir / "log.csv")
    assert [int(r["epoch"]) for r in log] == [1, 2, 3]
    assert float(log[-1]["train_loss"]) < float(log[0]["train_loss"])
    summary = json.loads((out / "a" / "summary.json").read_text())
    assert summary["seeds"] == [0] and summary["level"] == "patient"
    for key in ("val_binary_auc", "val_hand_till_auc", "test_macro_auc"):
        assert 0.0 <= summary["mean"][key] <= 1.0
    table = format_table(info["summary"])
    assert "binary_auc" in table and "95 % CI" in table
    assert "± 0.0000" not in table  # one seed: intervals over patients, not an SD over seeds


@pytest.mark.slow
def test_predictions_are_patient_level_without_leaks(trained, cohort):
    out, _ = trained
    taxonomy = load_taxonomy()
    manifest = read_manifest(cohort, taxonomy)
    seen: dict[str, set[str]] = {}
    for split in ("val", "test"):
        with (out / "a" / "seed_0" / f"predictions_{split}.csv").open(newline="") as handle:
            every = list(csv.DictReader(handle))
        assert list(every[0]) == header(taxonomy.names)  # the one predictions format
        rows = [r for r in every if r["level"] == "patient"]
        images = [r for r in every if r["level"] == "image"]
        assert {r["image_id"] for r in images} == {r.image_id for r in manifest.split(split)}
        assert {r["split"] for r in every} == {split}
        assert every[0]["model_sha256"] and every[0]["model_synthetic"] == "true"
        seen[split] = {r["patient_id"] for r in rows}
        assert seen[split] == set(manifest.patients(split))
        for r in rows:
            probs = np.array([float(r[f"prob_{n}"]) for n in taxonomy.names])
            assert probs.sum() == pytest.approx(1.0, abs=1e-4)
            malignant = probs[np.array(taxonomy.malignant_mask)].sum()
            assert float(r["malignant_prob"]) == pytest.approx(malignant, abs=1e-4)
    assert not seen["val"] & seen["test"]
    assert not set(manifest.patients("train")) & (seen["val"] | seen["test"])


@pytest.mark.slow
def test_checkpoint_round_trip_gives_identical_outputs(trained, cohort):
    out, info = trained
    ckpt = load_checkpoint(out / "a" / "seed_0" / "best.pt")
    assert ckpt.preprocess_params == train_config.parse_params(PARAMS)
    assert ckpt.taxonomy.names == load_taxonomy().names
    assert ckpt.ctc_features == ("ctc_level_pg_ml",)
    assert ckpt.training["seed"] == 0 and "val" in ckpt.metrics and "test" in ckpt.metrics
    assert set(ckpt.versions) >= {"dmfn", "torch", "numpy"}
    model = ckpt.build_model()
    resaved = ckpt.save(out / "copy.pt")
    again = load_checkpoint(resaved).build_model()
    views, tabular = torch.rand(5, 3, 32, 32), torch.rand(5, 6) * 20
    with torch.no_grad():
        assert torch.equal(model(views, tabular), again(views, tabular))
    # The stored metrics equal a fresh evaluation of the reloaded model on the cached tensors.
    # (with the calibration temperature fitted on validation, as the served model applies it)
    args = train_cli.parse_args(info["argv"])
    data = prepare_data(args)
    logits = scoring.predict_images(model, data.val, torch.device("cpu")).double().numpy()
    probs = scoring._patient_probs(scoring.softmax(logits, ckpt.temperature), data.val)
    val = metrics.classification_summary(
        data.val.patient_labels.numpy(), probs, data.taxonomy.malignant_mask
    )
    assert val["macro_auc"] == pytest.approx(ckpt.metrics["val"]["macro_auc"], abs=1e-12)
    assert ckpt.temperature > 0 and "ci" in ckpt.metrics["val"]


@pytest.mark.slow
def test_resume_continues_exactly_like_an_uninterrupted_run(trained):
    """Deterministic for a seed: a run resumed after epoch 1 ends with the same weights."""
    out, info = trained
    resumed = out / "b"
    (resumed / "seed_0").mkdir(parents=True)
    shutil.copy(out / "after_epoch_1.pt", resumed / "seed_0" / "last.pt")
    shutil.copy(out / "best_after_epoch_1.pt", resumed / "seed_0" / "best.pt")
    argv = [*info["argv"], "--resume"]
    argv[argv.index("--out") + 1] = str(resumed)
    train.run(train_cli.parse_args(argv))
    full = load_checkpoint(out / "a" / "seed_0" / "last.pt").state_dict
    cont = load_checkpoint(resumed / "seed_0" / "last.pt").state_dict
    for key in full:
        assert torch.equal(full[key], cont[key]), key
    a, b = _log(out / "a" / "seed_0" / "log.csv"), _log(resumed / "seed_0" / "log.csv")
    assert [r["train_loss"] for r in a[1:]] == [r["train_loss"] for r in b]
    changed = [*argv, "--lr", "1e-2"]
    with pytest.raises(ValueError, match=r"different \['lr'\]"):
        train.run(train_cli.parse_args(changed))


# --------------------------------------------------------------------------- fusion options
def test_fusion_options_reach_only_the_dmfn_model(tmp_path):
    base = ["--manifest", str(tmp_path / "m.csv"), "--out", str(tmp_path)]
    labels = torch.tensor([0, 0, 0, 2])  # class 1 absent from training: add-one smoothing
    fused = train_cli.parse_args([*base, "--fusion", "hybrid", "--aux-weight", "0.25"])
    options = loop._model_options(fused, labels, 3)
    assert options.pop("class_prior") == pytest.approx([4 / 7, 1 / 7, 2 / 7])
    assert options == {"fusion": "hybrid", "aux_heads": True}
    plain = train_cli.parse_args([*base, "--fusion", "concat", "--aux-weight", "0"])
    assert loop._model_options(plain, labels, 3) == {"fusion": "concat", "aux_heads": False}
    for model in ("cnn", "tabular"):  # the baselines ignore the options (also in the fingerprint)
        args = train_cli.parse_args(
            [*base, "--model", model, "--fusion", "sum", "--aux-weight", "1"]
        )
        assert loop._model_options(args, labels, 3) == {}
        assert not {"fusion", "aux_weight"} & set(loop._fingerprint(args))
    assert {"fusion", "aux_weight"} <= set(loop._fingerprint(fused))


@pytest.mark.slow
def test_sum_fusion_with_aux_losses_trains_and_rebuilds(cohort, tmp_path):
    argv = ["--manifest", str(cohort), "--out", str(tmp_path), "--epochs", "2", "--lr", "3e-3"]
    argv += ["--no-augment", "--patience", "0", "--fusion", "sum", "--aux-weight", "0.5", *FAST]
    summary = train.run(train_cli.parse_args(argv))
    assert (summary["fusion"], summary["aux_weight"]) == ("sum", 0.5)
    assert "fusion sum, aux weight 0.5" in format_table(summary)
    log = _log(tmp_path / "seed_0" / "log.csv")
    assert all(np.isfinite(float(r["train_loss"])) for r in log)
    ckpt = load_checkpoint(tmp_path / "seed_0" / "best.pt")
    assert (ckpt.model_config["fusion"], ckpt.model_config["aux_heads"]) == ("sum", True)
    model = ckpt.build_model()
    with torch.no_grad():
        logits = model(torch.rand(3, 3, 32, 32), torch.rand(3, 6) * 20)
    assert logits.shape == (3, len(load_taxonomy())) and bool(torch.isfinite(logits).all())


@pytest.mark.slow
def test_resume_accepts_a_last_pt_from_before_the_fusion_options(trained, tmp_path):
    """A last.pt whose fingerprint lacks fusion/aux_weight continues as concat without aux."""
    out, info = trained
    ckpt = load_checkpoint(out / "after_epoch_1.pt")
    for key in ("fusion", "aux_weight"):
        del ckpt.training["resume"]["fingerprint"][key]
    legacy = ckpt.save(tmp_path / "last.pt")

    def restore(*extra: str) -> loop.RunState:
        model = ckpt.build_model()
        optimiser = torch.optim.AdamW(model.parameters())
        scheduler = torch.optim.lr_scheduler.CosineAnnealingLR(optimiser, T_max=10)
        args = train_cli.parse_args([*info["argv"], *extra])
        return loop._restore(legacy, args, model, optimiser, scheduler)

    assert restore("--fusion", "concat", "--aux-weight", "0").epoch == 1
    with pytest.raises(ValueError, match=r"different \['aux_weight', 'fusion'\]"):
        restore("--fusion", "sum", "--aux-weight", "0.5")


# --------------------------------------------------------------------------- bad inputs
def test_unknown_backbone_model_and_options(tmp_path):
    """Bad options are refused with the flag and the rule (as `dmfn train` prints them)."""
    from dmfn.contract.errors import in_flags
    from dmfn.training.cli import FLAGS

    base = ["--manifest", str(tmp_path / "m.csv"), "--out", str(tmp_path)]
    cases = [
        (["--backbone", "resnet9000"], "--backbone: unknown backbone; known: .*regnetx"),
        (["--model", "svm"], "--model: must be one of"),
        (["--loss", "focal"], "--loss: must be one of"),
        (["--epochs", "0"], "--epochs: must be >= 1"),
        (["--label-smoothing", "1"], "--label-smoothing: must be in"),
        (["--params", '{"view_size": 2}'], "argument 'view_size'"),
        (["--params", "{nope"], "--params: must be a JSON file"),
        (["--fusion", "product"], "--fusion: must be one of"),
        (["--aux-weight", "-1"], "--aux-weight: must be finite and >= 0"),
        (["--aux-weight", "nan"], "--aux-weight: must be finite"),
    ]
    for extra, message in cases:
        with pytest.raises(ValueError) as err:
            train_cli.parse_args(base + extra)
        assert re.search(message, in_flags(err.value, FLAGS)), (extra, str(err.value))


@pytest.mark.slow
def test_main_reports_bad_manifests_clearly(tmp_path, cohort, capsys):
    with cohort.open(newline="") as handle:
        rows = list(csv.DictReader(handle))
    columns = [c for c in rows[0] if c != "label"]
    broken = cohort.parent / "no_label.csv"
    with broken.open("w", newline="") as handle:
        writer = csv.DictWriter(handle, fieldnames=columns, extrasaction="ignore")
        writer.writeheader()
        writer.writerows(rows)
    status = train_cli.main(["--manifest", str(broken), "--out", str(tmp_path), *FAST])
    assert status == 2
    assert "missing required columns ['label']" in capsys.readouterr().err

    taxonomy = tmp_path / "taxonomy.csv"
    taxonomy.write_text(
        "class,group,management\nx,benign,surgery\ny,malignant,surgery\nz,benign,follow-up\n"
    )
    out = tmp_path / "run"
    argv = ["--manifest", str(cohort), "--out", str(out), "--taxonomy", str(taxonomy), *FAST]
    with pytest.raises(
        ValueError, match=r"line 2, column 'label': label .* is not in the taxonomy"
    ):
        train.run(train_cli.parse_args(argv))


def test_help_explains_every_option(capsys):
    with pytest.raises(SystemExit) as exit_info:
        train_cli.main(["--help"])
    assert exit_info.value.code == 0
    text = capsys.readouterr().out
    parser = train_cli.build_parser()
    for action in parser._actions:
        if action.help == argparse.SUPPRESS:  # a renamed flag's old spelling, hidden
            continue
        for option in action.option_strings:
            assert option in text
        assert action.help, action.option_strings


# --------------------------------------------------------------------------- DDP
@pytest.mark.slow
@pytest.mark.parametrize("options", [[], ["--fusion", "sum", "--aux-weight", "0.5"]])
def test_torchrun_two_processes_gloo(cohort, tmp_path, options):
    out = tmp_path / "ddp"
    cmd = [
        sys.executable,
        "-m",
        "torch.distributed.run",
        "--nproc-per-node",
        "2",
        "--standalone",
        "-m",
        "dmfn.training.cli",
        "--manifest",
        str(cohort),
        "--out",
        str(out),
        "--epochs",
        "2",
        *FAST,
        *options,
    ]
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    done = subprocess.run(cmd, capture_output=True, text=True, timeout=600, env=env, check=False)
    assert done.returncode == 0, done.stderr[-3000:]
    assert (out / "summary.json").is_file()
    log = _log(out / "seed_0" / "log.csv")
    assert [int(r["epoch"]) for r in log] == [1, 2]
    ckpt = load_checkpoint(out / "seed_0" / "best.pt")
    assert ckpt.training["args"]["model"] == "dmfn"
    assert ckpt.model_config["fusion"] == ("sum" if options else "concat")
    assert "DDP" not in json.dumps(ckpt.model_config)
    assert not any(k.startswith("module.") for k in ckpt.state_dict)


@pytest.mark.slow
def test_a_non_empty_out_is_refused_unless_resumed_or_overwritten(trained, cohort, capsys):
    out, info = trained
    argv = [a if a != str(out / "a") else str(out / "a") for a in info["argv"]]
    assert train_cli.main(argv) == 2
    err = capsys.readouterr().err
    assert "--out:" in err and "pass --resume to continue the run there or --overwrite" in err


@pytest.mark.slow
def test_best_pt_carries_the_calibration_data_of_its_final_evaluation(trained, cohort):
    """best.pt's calibration: the validation images' probabilities at the checkpoint's own
    temperature (those of predictions_val.csv's image rows) and the training images' energy."""
    from dmfn.contract.ood import energy_score
    from dmfn.contract.predictions import read_predictions
    from dmfn.training.checkpoint import load_checkpoint
    from dmfn.training.data import prepare_data
    from dmfn.training.scoring import predict_images

    out, info = trained
    best = load_checkpoint(out / "a" / "seed_0" / "best.pt")
    calibration = best.calibration
    assert calibration is not None and calibration["temperature"] == best.temperature
    assert calibration["class_names"] == list(best.taxonomy.names)
    table = read_predictions(out / "a" / "seed_0" / "predictions_val.csv")
    images = {r.image_id: r.probs for r in table.rows if r.level == "image"}
    assert list(images) == calibration["val_image_ids"]
    np.testing.assert_allclose(calibration["val_probs"], np.array(list(images.values())), atol=1e-5)
    data = prepare_data(train_cli.parse_args(info["argv"]))
    assert calibration["val_labels"].tolist() == data.val.labels.tolist()
    logits = predict_images(best.build_model(), data.train, torch.device("cpu")).numpy()
    np.testing.assert_allclose(calibration["train_ood_scores"], energy_score(logits), rtol=1e-5)
