"""Training every seed of one ``dmfn train`` run: :func:`run`, the API of ``dmfn train`` (its
command line: :mod:`dmfn.training.cli`; several processes, DDP with the gloo backend:
``torchrun --nproc-per-node 2 -m dmfn.training.cli ...``).

For each seed K (``seed``, ``seed + 1``, ... ``seeds`` of them) it writes ``OUT/seed_K/``:
``best.pt`` (the checkpoint of the epoch with the best validation macro AUC; format in
:mod:`dmfn.training.checkpoint`), ``last.pt`` (the state to resume from), ``log.csv`` (one
row per epoch), ``tensorboard/`` (the same scalars) and ``predictions_val.csv`` /
``predictions_test.csv`` (patient level: ``patient_id``, ``prob_<class>`` for every class,
``malignant_prob``, ``label``). ``OUT/summary.json`` holds every seed's metrics and their mean and
SD (sample SD, n - 1).

Patient level: a patient's probability is the mean of its images' probabilities; all metrics are
computed on patients. Randomness (initialisation, shuffling, augmentation, dropout) is derived
from the seed, the epoch and the process rank, so a run is reproducible for a seed and a resumed
run continues exactly as an uninterrupted one would.
"""

from __future__ import annotations

import dataclasses
import json
import logging
import shutil
import time
from pathlib import Path
from typing import Any

import torch.distributed as torch_dist

from dmfn.contract.errors import InvalidInput
from dmfn.contract.predictions import PredictionRow, Provenance, read_predictions, write_predictions

from .config import TrainConfig
from .data import TrainingData, prepare_cohort, training_data
from .distributed import setup_distributed
from .loop import train_seed
from .scoring import MONITOR
from .summary import summarise, to_json

log = logging.getLogger("dmfn.train")
#: The out-of-fold predictions of a ``--folds`` run, in its output folder.
OUT_OF_FOLD = "predictions_oof.csv"

__all__ = ["MONITOR", "TrainConfig", "run"]


def run(args: TrainConfig) -> dict[str, Any]:
    """Train every seed of a validated argument set; returns the summary (main process)."""
    dist = setup_distributed()
    if args.batch_size % dist.world_size:
        raise InvalidInput(
            "batch_size",
            f"must be divisible by the {dist.world_size} processes, got {args.batch_size}",
        )
    if dist.is_main:
        _claim_output(args)
    cohort = prepare_cohort(args, dist)
    data = training_data(cohort, args.folds, 0, args.seed)
    if dist.is_main:
        _report_cohort(data)
        if args.loss == "neutral-ce":
            log.info(
                "train loss: neutral cross-entropy of two augmented views of each image against "
                "a target mixed with the model's own prediction (a = %g): on another scale than "
                "the validation loss, a plain cross-entropy per image",
                args.nce_alpha,
            )
    runs = []
    if args.folds:
        for fold in range(args.folds):
            if fold:
                data = training_data(cohort, args.folds, fold, args.seed)
            log.info("fold %d of %d: %d patients validate, %d train", fold + 1, args.folds,
                     data.val.n_patients, data.train.n_patients)  # fmt: skip
            started = time.perf_counter()
            result = train_seed(args, data, args.seed, args.out / f"fold_{fold}", dist)
            result["seconds"] = time.perf_counter() - started
            result["fold"] = fold
            runs.append(result)
    for k in range(0 if args.folds else args.seeds):
        seed = args.seed + k
        started = time.perf_counter()
        result = train_seed(args, data, seed, args.out / f"seed_{seed}", dist)
        result["seconds"] = time.perf_counter() - started
        runs.append(result)
    summary: dict[str, Any] = {}
    if dist.is_main:
        if args.folds:
            path = write_out_of_fold(args.out, args.folds)
            log.info("out-of-fold predictions of every train and val patient: %s", path)
        summary = summarise(runs, args)
        path = args.out / "summary.json"
        path.write_text(json.dumps(to_json(summary), indent=2) + "\n")
    if dist.enabled:
        torch_dist.destroy_process_group()
    return summary


def _claim_output(args: TrainConfig) -> None:
    """Refuse a non-empty ``out`` (two runs would mix) unless ``resume`` continues the run
    there or ``overwrite`` replaces it (its seed folders and summary are removed)."""
    out = args.out
    if not out.is_dir() or not any(out.iterdir()) or args.resume:
        return
    if not args.overwrite:
        raise InvalidInput(
            "out",
            f"{out} is not empty (another run?); pass {{resume}} to continue the run there or "
            "{overwrite} to replace it",
            mentions={"resume": "resume=True", "overwrite": "overwrite=True"},
        )
    for path in [*out.glob("seed_*"), *out.glob("fold_*")]:
        if path.is_dir():
            shutil.rmtree(path)
    (out / "summary.json").unlink(missing_ok=True)
    (out / OUT_OF_FOLD).unlink(missing_ok=True)


def write_out_of_fold(out: Path, folds: int) -> Path:
    """``out/predictions_oof.csv``: each fold's validation predictions (``fold_K/
    predictions_val.csv``) in one file, with the fold recorded on each row (split ``val``:
    every prediction is of a patient its model did not train on)."""
    tables = [read_predictions(out / f"fold_{k}" / "predictions_val.csv") for k in range(folds)]
    rows: list[PredictionRow] = [
        dataclasses.replace(r, fold=str(k)) for k, table in enumerate(tables) for r in table.rows
    ]
    # one model per fold, so no single sha256, date or temperature made this file
    first = tables[0].provenance
    provenance = Provenance("", "", first.synthetic, None, first.name)
    return write_predictions(out / OUT_OF_FOLD, tables[0].classes, rows, provenance, overwrite=True)


def _report_cohort(data: TrainingData) -> None:
    for name in ("train", "val", "test"):
        tensors = getattr(data, name)
        if tensors is not None:
            log.info("%s: %d images of %d patients", name, len(tensors), tensors.n_patients)
