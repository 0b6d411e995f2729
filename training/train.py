"""``dmfn train``: train the DMFN fusion model or its CT-only / tabular-only baselines.

Run as ``dmfn train ...``, ``python -m dmfn.training.train ...`` or, for several processes
(DDP, gloo backend), ``torchrun --nproc-per-node 2 -m dmfn.training.train ...``.

For each seed K (``--seed``, ``--seed + 1``, ... ``--seeds`` of them) it writes ``OUT/seed_K/``:
``best.pt`` (the checkpoint of the epoch with the best validation macro AUC; format in
:mod:`dmfn.training.checkpoint`), ``last.pt`` (the state to ``--resume`` from), ``log.csv`` (one
row per epoch), ``tensorboard/`` (the same scalars) and ``predictions_val.csv`` /
``predictions_test.csv`` (patient level: ``patient_id``, ``prob_<class>`` for every class,
``malignant_prob``, ``label``). ``OUT/summary.json`` holds every seed's metrics and their mean and
SD (sample SD, n - 1); the same table is printed at the end.

Patient level: a patient's probability is the mean of its images' probabilities; all metrics are
computed on patients. Randomness (initialisation, shuffling, augmentation, dropout) is derived
from the seed, the epoch and the process rank, so a run is reproducible for a seed and a resumed
run continues exactly as an uninterrupted one would.
"""

from __future__ import annotations

import json
import logging
import shutil
import sys
import time
from typing import Any

import torch.distributed as torch_dist

from dmfn.contract.errors import InvalidInput

from .cli import build_parser, main, parse_args
from .config import TrainConfig
from .data import TrainingData, prepare_data
from .distributed import setup_distributed
from .loop import train_seed
from .scoring import MONITOR
from .summary import format_table, summarise, to_json

log = logging.getLogger("dmfn.train")

__all__ = ["MONITOR", "TrainConfig", "build_parser", "format_table", "main", "parse_args", "run"]


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
    data = prepare_data(args, dist)
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
    for k in range(args.seeds):
        seed = args.seed + k
        started = time.perf_counter()
        result = train_seed(args, data, seed, args.out / f"seed_{seed}", dist)
        result["seconds"] = time.perf_counter() - started
        runs.append(result)
    summary: dict[str, Any] = {}
    if dist.is_main:
        summary = summarise(runs, args)
        path = args.out / "summary.json"
        path.write_text(json.dumps(to_json(summary), indent=2) + "\n")
    if dist.enabled:
        torch_dist.destroy_process_group()
    return summary


def _claim_output(args: TrainConfig) -> None:
    """Refuse a non-empty ``--out`` (two runs would mix) unless ``--resume`` continues the run
    there or ``--force`` replaces it (its seed folders and summary are removed)."""
    out = args.out
    if not out.is_dir() or not any(out.iterdir()) or args.resume:
        return
    if not args.force:
        raise InvalidInput(
            "out",
            f"{out} is not empty (another run?); pass {{resume}} to continue the run there or "
            "{force} to replace it",
            mentions={"resume": "resume=True", "force": "force=True"},
        )
    for path in out.glob("seed_*"):
        if path.is_dir():
            shutil.rmtree(path)
    (out / "summary.json").unlink(missing_ok=True)


def _report_cohort(data: TrainingData) -> None:
    for name in ("train", "val", "test"):
        tensors = getattr(data, name)
        if tensors is not None:
            log.info("%s: %d images of %d patients", name, len(tensors), tensors.n_patients)


if __name__ == "__main__":
    sys.exit(main())
