"""How well the OOD flag (dmfn.contract.ood: energy on the logits, threshold fitted on the
training split) tells studies that are out of distribution by construction from the
in-distribution test split. Writes OUT/ood.json and OUT/ood.md (the tables of docs/ood.md).

    .venv/bin/python scripts/ood_eval.py --cohort data/demo --checkpoint models/dmfn_demo.pt \\
        --nocontrast data/demo_nocontrast --holdout schwannoma --out runs/ood

Kinds (image level: each image is one served request):
- ``unseen class``: a model trained (``dmfn train``, the demo model's options, ``--epochs``) on
  the cohort without the train and val images of ``--holdout``; that class's test images
  against the other test images, with that model's own threshold;
- ``no contrast``: the test images of the same cohort rendered with ``dmfn synth --contrast none``
  (``--nocontrast``, same preset and seed);
- ``noise SD N HU``: the test images with white Gaussian noise of SD N HU added (training images
  carry 8-32 HU);
- ``ROI off the lesion``: the test images with the lesion mask moved sideways (x) by its own width
  plus 15 mm, onto whatever lies beside the lesion (a wrong or misplaced segmentation).

AUROC (OOD positive) with DeLong intervals (the OOD and in-distribution images are treated as
independent samples, although the transformed images are copies of the test images); the
false-alarm rate on the in-distribution test images and the flagged share of each kind at the
threshold fitted on the training split, with Wilson intervals.
"""

from __future__ import annotations

import argparse
import csv
import dataclasses
import json
import logging
import subprocess
import sys
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch

from dmfn.client.manifest import Manifest, ManifestRow, load_row_study, read_manifest
from dmfn.contract.ood import OodFit, energy_score, fit_ood
from dmfn.contract.study import Study
from dmfn.contract.wire import build_request
from dmfn.evaluation.proportions import proportion_ci
from dmfn.evaluation.roc import auc_delong
from dmfn.preprocess import preprocess_request
from dmfn.training.calibration import collect_calibration
from dmfn.training.checkpoint import Checkpoint, load_checkpoint
from dmfn.training.dataset import build_cache, load_tensors
from dmfn.training.scoring import predict_images

log = logging.getLogger("ood_eval")
ROI_SHIFT_MARGIN_MM = 15.0


def _cohort(checkpoint: Checkpoint, folder: Path, workers: int) -> tuple[Manifest, list[Path]]:
    manifest = read_manifest(folder / "manifest.csv", checkpoint.taxonomy, checkpoint.ctc_features)
    test = dataclasses.replace(manifest, rows=manifest.split("test"))
    files = build_cache(test, checkpoint.preprocess_params, folder / ".dmfn_cache", workers, False)
    return test, files


def _row_scores(
    model: torch.nn.Module, rows: Sequence[ManifestRow], files: Sequence[Path]
) -> np.ndarray:
    logits = predict_images(model, load_tensors(rows, files), torch.device("cpu"))
    return energy_score(logits.numpy()).astype(np.float32)


@torch.no_grad()
def _study_scores(
    checkpoint: Checkpoint, model: torch.nn.Module, studies: Sequence[Study]
) -> np.ndarray:
    """Energy of each study through the served preprocessing (build_request + preprocess)."""
    contract = checkpoint.contract()
    scores = []
    for study in studies:
        (pre,) = preprocess_request(build_request(study, contract), checkpoint.preprocess_params)
        logits = model(torch.from_numpy(pre.views[None]), torch.from_numpy(pre.tabular[None]))
        scores.append(energy_score(logits.numpy())[0])
    return np.asarray(scores, dtype=np.float32)


def _add_noise(sd_hu: float, seed: int) -> Callable[[Study, int], Study | None]:
    def transform(study: Study, index: int) -> Study:
        rng = np.random.default_rng([seed, index])
        hu = study.hu.astype(np.float32) + rng.normal(0.0, sd_hu, study.hu.shape).astype(np.float32)
        return dataclasses.replace(study, hu=np.clip(np.rint(hu), -1024, 3071).astype(np.int16))

    return transform


def _move_roi(study: Study, index: int) -> Study | None:
    """The mask moved along x by its width + ROI_SHIFT_MARGIN_MM (toward the side with room);
    None when neither side has room in the volume."""
    mask = study.mask
    assert mask is not None
    xs = np.flatnonzero(mask.any(axis=(0, 1)))
    width = int(xs[-1] - xs[0] + 1)
    shift = width + int(np.ceil(ROI_SHIFT_MARGIN_MM / study.spacing_mm[2]))
    for step in (shift, -shift):
        if 0 <= xs[0] + step and xs[-1] + step < mask.shape[2]:
            moved = np.zeros_like(mask)
            lo, hi = xs[0], xs[-1] + 1
            moved[:, :, lo + step : hi + step] = mask[:, :, lo:hi]
            return dataclasses.replace(study, mask=moved, bbox=None)
    return None


def _kind(name: str, ood: np.ndarray, ind: np.ndarray, fit: OodFit, note: str) -> dict[str, Any]:
    labels = np.r_[np.ones(ood.size), np.zeros(ind.size)].astype(np.int64)
    auc = auc_delong(labels, np.r_[ood, ind].astype(np.float64))
    flagged = proportion_ci(int((ood > fit.threshold).sum()), int(ood.size), "wilson")
    return {
        "kind": name,
        "n_ood": int(ood.size),
        "n_in_distribution": int(ind.size),
        "auroc": [auc.auc, auc.low, auc.high],
        "flagged": [flagged.successes / max(flagged.n, 1), flagged.low, flagged.high],
        "median_score_ood": float(np.median(ood)),
        "median_score_in_distribution": float(np.median(ind)),
        "note": note,
    }


def _false_alarm(ind: np.ndarray, fit: OodFit) -> dict[str, Any]:
    p = proportion_ci(int((ind > fit.threshold).sum()), int(ind.size), "wilson")
    return {
        "rate": p.successes / p.n,
        "low": p.low,
        "high": p.high,
        "n": p.n,
        "flagged": p.successes,
    }


def _train_without(
    cohort: Path, label: str, out: Path, epochs: int, workers: int
) -> tuple[Path, float]:
    """``dmfn train`` (the demo model's options) on the cohort without ``label``'s train and val
    rows; returns best.pt and the seconds it took."""
    out.mkdir(parents=True, exist_ok=True)
    manifest = out / "manifest.csv"
    with (cohort / "manifest.csv").open(newline="") as src:
        reader = csv.DictReader(src)
        rows = [r for r in reader if not (r["label"] == label and r["split"] in ("train", "val"))]
        fields = list(reader.fieldnames or [])
    for row in rows:  # absolute paths: the manifest lives in another folder
        for key in ("image_path", "mask_path", "seg_path"):
            if row.get(key):
                row[key] = str((cohort / row[key]).resolve())
    with manifest.open("w", newline="") as dst:
        writer = csv.DictWriter(dst, fieldnames=fields, lineterminator="\n")
        writer.writeheader()
        writer.writerows(rows)
    started = time.perf_counter()
    subprocess.run(
        [sys.executable, "-m", "dmfn.training.cli", "--manifest", str(manifest),
         "--out", str(out / "run"), "--model", "dmfn", "--seeds", "1", "--seed", "0",
         "--epochs", str(epochs), "--cache-dir", str(cohort / ".dmfn_cache"),
         "--workers", str(workers), "--no-progress", "--overwrite"],
        check=True,
    )  # fmt: skip
    return out / "run" / "seed_0" / "best.pt", time.perf_counter() - started


def evaluate(args: argparse.Namespace) -> dict[str, Any]:
    started = time.perf_counter()
    checkpoint = load_checkpoint(args.checkpoint)
    model = checkpoint.build_model()
    calibration = checkpoint.calibration or collect_calibration(
        args.checkpoint, args.cohort / "manifest.csv", args.workers
    )
    fit = fit_ood(calibration["train_ood_scores"], args.false_alarm)
    test, files = _cohort(checkpoint, args.cohort, args.workers)
    ind = _row_scores(model, test.rows, files)
    report: dict[str, Any] = {
        "checkpoint": str(args.checkpoint),
        "cohort": str(args.cohort),
        "fit": json.loads(fit.to_json()),
        "false_alarm_test": _false_alarm(ind, fit),
        "kinds": [],
    }
    kinds = report["kinds"]
    if args.nocontrast is not None:
        nc_test, nc_files = _cohort(checkpoint, args.nocontrast, args.workers)
        if [r.image_id for r in nc_test.rows] != [r.image_id for r in test.rows]:
            raise SystemExit("--nocontrast: not the same test images as --cohort (preset, seed?)")
        kinds.append(_kind("no contrast", _row_scores(model, nc_test.rows, nc_files), ind, fit,
                           "the same test patients rendered with dmfn synth --contrast none"))  # fmt: skip
    studies = [load_row_study(r, checkpoint.ctc_features) for r in test.rows]
    transforms: list[tuple[str, Callable[[Study, int], Study | None], str]] = [
        (f"noise SD {sd:g} HU", _add_noise(sd, 0), "white Gaussian noise added to the test images")
        for sd in args.noise_sd
    ]
    transforms.append(("ROI off the lesion", _move_roi, "the lesion mask moved beside the lesion"))
    for name, transform, note in transforms:
        changed = [transform(s, i) for i, s in enumerate(studies)]
        kept = [s for s in changed if s is not None]
        note += (
            f" ({len(changed) - len(kept)} images without room skipped)"
            if len(kept) < len(changed)
            else ""
        )
        kinds.append(_kind(name, _study_scores(checkpoint, model, kept), ind, fit, note))
        log.info("%s: AUROC %.3f", name, kinds[-1]["auroc"][0])
    report["holdout"] = []
    for label in args.holdout:
        best, seconds = _train_without(
            args.cohort, label, args.out / f"without_{label}", args.epochs, args.workers
        )
        held = load_checkpoint(best)
        assert held.calibration is not None  # dmfn train stores it
        held_fit = fit_ood(held.calibration["train_ood_scores"], args.false_alarm)
        scores = _row_scores(held.build_model(), test.rows, files)
        is_label = np.array([r.label == label for r in test.rows])
        entry = _kind(f"unseen class ({label})", scores[is_label], scores[~is_label], held_fit,
                      f"a model trained without {label} ({args.epochs} epochs, {seconds:.0f} s)")  # fmt: skip
        entry["false_alarm_test"] = _false_alarm(scores[~is_label], held_fit)
        entry["fit"] = json.loads(held_fit.to_json())
        entry["test_metrics_without_class"] = {
            k: held.metrics.get("test", {}).get(k) for k in ("binary_auc", "hand_till_auc")
        }
        kinds.append(entry)
        report["holdout"].append(label)
    report["seconds"] = time.perf_counter() - started
    return report


def markdown(report: dict[str, Any]) -> str:
    fa = report["false_alarm_test"]
    fit = report["fit"]
    lines = [
        f"Threshold {fit['threshold']:.3f} (energy; fitted on {fit['n_train']} training images for "
        f"{fit['false_alarm']:.0%} false alarms). In-distribution test: {fa['flagged']} of {fa['n']} "
        f"images flagged, false-alarm rate **{fa['rate']:.3f}** [{fa['low']:.3f}, {fa['high']:.3f}] "
        "(Wilson 95 %).",
        "",
        "| OOD kind | OOD images | in-distribution images | AUROC [DeLong 95 %] | flagged at the threshold [Wilson 95 %] | median energy OOD / in-dist. |",
        "|---|---|---|---|---|---|",
    ]
    for k in report["kinds"]:
        a, f = k["auroc"], k["flagged"]
        lines.append(
            f"| {k['kind']} | {k['n_ood']} | {k['n_in_distribution']} | {a[0]:.3f} [{a[1]:.3f}, "
            f"{a[2]:.3f}] | {f[0]:.3f} [{f[1]:.3f}, {f[2]:.3f}] | {k['median_score_ood']:.2f} / "
            f"{k['median_score_in_distribution']:.2f} |"
        )
    for k in report["kinds"]:
        if "false_alarm_test" in k:
            h = k["false_alarm_test"]
            lines += ["", f"{k['kind']}: {k['note']}; its threshold {k['fit']['threshold']:.3f}, "
                      f"false-alarm rate on its other test images {h['rate']:.3f} "
                      f"[{h['low']:.3f}, {h['high']:.3f}] ({h['flagged']} of {h['n']})."]  # fmt: skip
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--cohort", type=Path, required=True, help="the model's cohort folder")
    parser.add_argument("--checkpoint", type=Path, required=True)
    parser.add_argument(
        "--nocontrast", type=Path, default=None, help="the cohort with --contrast none"
    )
    parser.add_argument("--holdout", nargs="*", default=[], help="classes to train without")
    parser.add_argument("--epochs", type=int, default=30, help="epochs of the held-out models (30)")
    parser.add_argument("--noise-sd", type=float, nargs="*", default=[50.0, 100.0, 200.0])
    parser.add_argument("--false-alarm", type=float, default=0.05)
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--out", type=Path, required=True)
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    args.out.mkdir(parents=True, exist_ok=True)
    report = evaluate(args)
    (args.out / "ood.json").write_text(json.dumps(report, indent=2) + "\n")
    (args.out / "ood.md").write_text(markdown(report))
    print(markdown(report))
    return 0


if __name__ == "__main__":
    sys.exit(main())
