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

import argparse
import csv
import json
import logging
import math
import os
import sys
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.distributed as torch_dist
from torch import nn
from tqdm import tqdm

from dmfn.client.manifest import Manifest, read_manifest
from dmfn.contract.params import PreprocessParams
from dmfn.contract.schema import DEFAULT_CTC_FEATURES
from dmfn.contract.taxonomy import Taxonomy, load_taxonomy

from . import losses, metrics
from .augment import AugmentParams, augment_views
from .checkpoint import Checkpoint, current_versions, load_checkpoint, observed_range
from .dataset import CohortTensors, build_cache, load_split, patient_mean
from .models import (
    DEFAULT_BACKBONE,
    DEFAULT_FUSION,
    FUSION_KINDS,
    MODEL_KINDS,
    create_model,
    fit_standardisation,
    list_backbones,
)

log = logging.getLogger("dmfn.train")

#: Default CT backbone: small enough for a demo-cohort run well under 15 minutes on 2 CPU cores.
LOSS_KINDS: tuple[str, ...] = ("ce", "neutral-ce")
#: Metrics reported per split in summary.json and the printed table (patient level).
SUMMARY_METRICS: tuple[str, ...] = (
    "binary_auc",
    "hand_till_auc",
    "macro_auc",
    "accuracy",
    "top3_accuracy",
)
#: Validation metric that selects the best epoch and drives early stopping.
MONITOR = "macro_auc"
EVAL_BATCH_SIZE = 64
LOG_COLUMNS: tuple[str, ...] = (
    "epoch",
    "lr",
    "train_loss",
    "val_loss",
    *(f"val_{m}" for m in SUMMARY_METRICS),
    "seconds",
)
#: Training arguments that must match for ``--resume`` to continue a run.
RESUME_KEYS: tuple[str, ...] = (
    "model",
    "backbone",
    "epochs",
    "batch_size",
    "lr",
    "weight_decay",
    "loss",
    "label_smoothing",
    "nce_alpha",
    "class_weights",
    "augment",
    "ctc_features",
)
#: Resume keys of the dmfn model only, with the value every run before these options had (a
#: last.pt written then lacks them and continues as that value).
DMFN_RESUME_DEFAULTS: dict[str, Any] = {"fusion": DEFAULT_FUSION, "aux_weight": 0.0}
#: ``dmfn train`` defaults of the fusion options (create_model's own default stays "concat").
CLI_FUSION = DEFAULT_FUSION
CLI_AUX_WEIGHT = 0.0


# --------------------------------------------------------------------------- command line
class _HelpFormatter(argparse.HelpFormatter):
    """Appends "(default: X)" to options whose default is a value (not None and not a flag)."""

    def _get_help_string(self, action: argparse.Action) -> str:
        text = action.help or ""
        default = action.default
        if default is None or isinstance(default, bool) or default is argparse.SUPPRESS:
            return text
        return text if "default" in text else f"{text} (default: %(default)s)"


def build_parser() -> argparse.ArgumentParser:
    """The ``dmfn train`` argument parser (every option documented in ``--help``)."""
    p = argparse.ArgumentParser(
        prog="dmfn train",
        description=(
            "Train the DMFN fusion model (CT views + CTC + clinical) or a baseline on a cohort "
            "manifest, with patient-level validation, early stopping and N seeds."
        ),
        formatter_class=_HelpFormatter,
        epilog=(
            "Writes OUT/seed_K/{best.pt, last.pt, log.csv, tensorboard/, predictions_val.csv, "
            "predictions_test.csv} and OUT/summary.json. Several processes (DDP, gloo): "
            "torchrun --nproc-per-node N -m dmfn.training.train ..."
        ),
    )
    io = p.add_argument_group("data and output")
    io.add_argument(
        "--manifest",
        required=True,
        type=Path,
        help="cohort manifest CSV (from `dmfn synth` or your own; see dmfn.client.manifest)",
    )
    io.add_argument("--out", required=True, type=Path, help="output folder (seed_K/, summary.json)")
    io.add_argument(
        "--cache-dir",
        type=Path,
        default=None,
        help="preprocessing cache folder (default: MANIFEST_DIR/.dmfn_cache; shared between runs)",
    )
    io.add_argument(
        "--params",
        default=None,
        help="preprocessing parameters: a JSON file or a JSON object literal "
        "(PreprocessParams fields; default: the built-in defaults)",
    )
    io.add_argument(
        "--taxonomy", type=Path, default=None, help="taxonomy CSV (default: the paper's 20 classes)"
    )
    io.add_argument(
        "--ctc-features",
        default=",".join(DEFAULT_CTC_FEATURES),
        help="comma-separated CTC columns of the manifest, in TABULAR order",
    )
    io.add_argument(
        "--workers", type=int, default=2, help="processes that build the preprocessing cache"
    )
    m = p.add_argument_group("model")
    m.add_argument(
        "--model",
        default="dmfn",
        help=f"one of {', '.join(MODEL_KINDS)}: fusion, CT-only CNN, tabular-only MLP",
    )
    m.add_argument(
        "--backbone",
        default=DEFAULT_BACKBONE,
        help="CT backbone (see dmfn.training.models.list_backbones(); ignored by --model tabular)",
    )
    m.add_argument(
        "--fusion",
        default=CLI_FUSION,
        help=f"dmfn only, one of {', '.join(FUSION_KINDS)}: concat = embeddings concatenated -> "
        "MLP (the paper's); sum = late fusion, CT-head logits + tabular-head logits + a bias "
        "that starts at -log(training class frequency) (a learned product of experts that "
        "counts the prior once); hybrid = both summed",
    )
    m.add_argument(
        "--aux-weight",
        type=float,
        default=CLI_AUX_WEIGHT,
        help="dmfn only: weight W >= 0 of the auxiliary unimodal losses; the loss becomes "
        "L(fused) + W * (L(CT head) + L(tabular head)), each branch also trained on its own "
        "logits (against modality imbalance); 0 = off. Unimodal heads are unused at inference",
    )
    o = p.add_argument_group("optimisation")
    o.add_argument("--epochs", type=int, default=30, help="maximum number of epochs")
    o.add_argument(
        "--batch-size", type=int, default=32, help="images per step (all processes together)"
    )
    o.add_argument("--lr", type=float, default=1e-3, help="AdamW peak learning rate (cosine decay)")
    o.add_argument("--weight-decay", type=float, default=0.05, help="AdamW weight decay")
    o.add_argument(
        "--loss",
        default="neutral-ce",
        help="neutral-ce (the paper's loss, DESIGN.md's reading: two augmented views of each "
        "image, consistency-tempered target) or ce (cross-entropy)",
    )
    o.add_argument("--label-smoothing", type=float, default=0.1, help="label smoothing in [0, 1)")
    o.add_argument(
        "--nce-alpha", type=float, default=0.3, help="neutral-ce mixing weight a in [0, 1)"
    )
    o.add_argument(
        "--class-weights",
        default="none",
        help="class weighting of the loss from training counts: none, or a scheme of "
        "dmfn.training.losses.class_weights_from_counts (e.g. inverse, inverse_sqrt)",
    )
    o.add_argument(
        "--patience",
        type=int,
        default=8,
        help="stop after this many epochs without a better validation macro AUC (0: never)",
    )
    o.add_argument(
        "--no-augment",
        dest="augment",
        action="store_false",
        help="switch off augmentation (rotation, shift, intensity jitter, noise)",
    )
    r = p.add_argument_group("runs")
    r.add_argument("--seeds", type=int, default=1, help="number of seeds (runs) to train")
    r.add_argument("--seed", type=int, default=0, help="first seed; runs use seed, seed+1, ...")
    r.add_argument(
        "--resume",
        action="store_true",
        help="continue each seed from OUT/seed_K/last.pt where it exists (finished seeds are "
        "only re-evaluated); the training options must be the same as before",
    )
    r.add_argument("--device", default="cpu", help="torch device: cpu or cuda[:N]")
    r.add_argument("--no-progress", dest="progress", action="store_false", help="no tqdm bars")
    return p


def parse_args(argv: Sequence[str]) -> argparse.Namespace:
    """Parse and validate ``dmfn train`` arguments; bad values raise ValueError naming them."""
    args = build_parser().parse_args(list(argv))
    _validate_args(args)
    return args


def _check(condition: bool, option: str, rule: str, value: object) -> None:
    if not condition:
        raise ValueError(f"argument '{option}': {rule}, got {value!r}")


def _validate_args(args: argparse.Namespace) -> None:
    _check(args.model in MODEL_KINDS, "--model", f"must be one of {MODEL_KINDS}", args.model)
    if args.model != "tabular":
        known = list_backbones()
        _check(
            args.backbone in known,
            "--backbone",
            f"unknown backbone; known: {', '.join(known)}",
            args.backbone,
        )
    _check(args.fusion in FUSION_KINDS, "--fusion", f"must be one of {FUSION_KINDS}", args.fusion)
    _check(
        math.isfinite(args.aux_weight) and args.aux_weight >= 0,
        "--aux-weight",
        "must be finite and >= 0",
        args.aux_weight,
    )
    _check(args.loss in LOSS_KINDS, "--loss", f"must be one of {LOSS_KINDS}", args.loss)
    _check(args.epochs >= 1, "--epochs", "must be >= 1", args.epochs)
    _check(args.batch_size >= 2, "--batch-size", "must be >= 2 (batch norm)", args.batch_size)
    _check(math.isfinite(args.lr) and args.lr > 0, "--lr", "must be > 0", args.lr)
    _check(args.weight_decay >= 0, "--weight-decay", "must be >= 0", args.weight_decay)
    _check(
        0 <= args.label_smoothing < 1,
        "--label-smoothing",
        "must be in [0, 1)",
        args.label_smoothing,
    )
    _check(0 <= args.nce_alpha < 1, "--nce-alpha", "must be in [0, 1)", args.nce_alpha)
    _check(args.patience >= 0, "--patience", "must be >= 0", args.patience)
    _check(args.seeds >= 1, "--seeds", "must be >= 1", args.seeds)
    _check(args.seed >= 0, "--seed", "must be >= 0", args.seed)
    _check(args.workers >= 0, "--workers", "must be >= 0", args.workers)
    features = tuple(f.strip() for f in args.ctc_features.split(",") if f.strip())
    _check(bool(features), "--ctc-features", "must name at least one column", args.ctc_features)
    args.ctc_features = features
    _check(
        args.device == "cpu" or args.device.startswith("cuda"),
        "--device",
        "must be cpu or cuda[:N]",
        args.device,
    )
    if args.device.startswith("cuda") and not torch.cuda.is_available():
        raise ValueError(f"argument '--device': {args.device} requested but CUDA is not available")
    args.params = _parse_params(args.params)


def _parse_params(value: str | None) -> PreprocessParams:
    if value is None:
        return PreprocessParams()
    path = Path(value)
    text = path.read_text() if path.is_file() else value
    try:
        data = json.loads(text)
    except json.JSONDecodeError as err:
        raise ValueError(
            f"argument '--params': must be a JSON file or a JSON object, got {value!r} ({err})"
        ) from None
    if not isinstance(data, dict):
        raise ValueError(f"argument '--params': must be a JSON object, got {type(data).__name__}")
    return PreprocessParams.from_dict(data)


def _args_record(args: argparse.Namespace) -> dict[str, Any]:
    """The arguments as plain JSON-able values (stored in checkpoints and summary.json)."""
    out: dict[str, Any] = {}
    for key, value in sorted(vars(args).items()):
        if isinstance(value, Path):
            value = str(value)
        elif isinstance(value, PreprocessParams):
            value = value.to_dict()
        elif isinstance(value, tuple):
            value = list(value)
        out[key] = value
    return out


# --------------------------------------------------------------------------- processes
@dataclass(frozen=True)
class Distributed:
    """Process group facts: ``rank`` of ``world_size`` (1 = a plain single process)."""

    rank: int = 0
    world_size: int = 1

    @property
    def enabled(self) -> bool:
        return self.world_size > 1

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    def barrier(self) -> None:
        if self.enabled:
            torch_dist.barrier()


def setup_distributed() -> Distributed:
    """Join the torchrun process group (gloo) when ``WORLD_SIZE`` > 1, else a single process."""
    world_size = int(os.environ.get("WORLD_SIZE", "1"))
    if world_size <= 1:
        return Distributed()
    if not torch_dist.is_initialized():
        torch_dist.init_process_group(backend="gloo")
    return Distributed(rank=torch_dist.get_rank(), world_size=torch_dist.get_world_size())


def derived_seed(*parts: int) -> int:
    """A 63-bit seed derived from integers (seed, epoch, rank, stream) by NumPy's SeedSequence."""
    return int(np.random.SeedSequence(list(parts)).generate_state(2, np.uint64)[0] >> np.uint64(1))


# --------------------------------------------------------------------------- data
@dataclass
class TrainingData:
    """The validated cohort, preprocessed and stacked per split (``test`` may be None)."""

    manifest: Manifest
    taxonomy: Taxonomy
    params: PreprocessParams
    train: CohortTensors
    val: CohortTensors
    test: CohortTensors | None


def prepare_data(args: argparse.Namespace, dist: Distributed = Distributed()) -> TrainingData:
    """Read the manifest, build the preprocessing cache (main process first) and load splits."""
    taxonomy = load_taxonomy(args.taxonomy)
    manifest = read_manifest(args.manifest, taxonomy, args.ctc_features)
    cache_dir = args.cache_dir or manifest.path.resolve().parent / ".dmfn_cache"
    files = None
    if dist.is_main:
        files = build_cache(manifest, args.params, cache_dir, args.workers, args.progress)
    dist.barrier()
    if files is None:  # the other ranks find every entry built by the main process
        files = build_cache(manifest, args.params, cache_dir, 0, progress=False)
    splits = {name: load_split(manifest, name, files) for name in ("train", "val", "test")}
    for name in ("train", "val"):
        tensors = splits[name]
        if tensors is None:
            raise ValueError(f"manifest {manifest.path}: split {name!r} has no images")
        n_classes = int(torch.unique(tensors.labels).numel())
        if n_classes < 2:
            raise ValueError(
                f"manifest {manifest.path}: split {name!r} needs at least 2 classes, has {n_classes}"
            )
    return TrainingData(
        manifest, taxonomy, args.params, splits["train"], splits["val"], splits["test"]
    )  # type: ignore[arg-type]


# --------------------------------------------------------------------------- evaluation
@torch.no_grad()
def predict_images(model: nn.Module, tensors: CohortTensors, device: torch.device) -> torch.Tensor:
    """Image-level logits [N, C] (eval mode, batches of EVAL_BATCH_SIZE, on the CPU)."""
    model.eval()
    chunks = []
    for start in range(0, len(tensors), EVAL_BATCH_SIZE):
        sl = slice(start, start + EVAL_BATCH_SIZE)
        chunks.append(model(tensors.views[sl].to(device), tensors.tabular[sl].to(device)).cpu())
    return torch.cat(chunks).float()


def evaluate(
    model: nn.Module, tensors: CohortTensors, taxonomy: Taxonomy, device: torch.device
) -> tuple[np.ndarray, dict[str, float]]:
    """Patient-level probabilities [P, C] and metrics (plus the image-level ``loss``)."""
    logits = predict_images(model, tensors, device)
    loss = float(nn.functional.cross_entropy(logits, tensors.labels))
    probs = patient_mean(
        torch.softmax(logits.double(), 1), tensors.patient_index, tensors.n_patients
    )
    probs_np = probs.numpy()
    result = metrics.classification_summary(
        tensors.patient_labels.numpy(), probs_np, taxonomy.malignant_mask
    )
    result["loss"] = loss
    return probs_np, result


def write_predictions(
    path: Path, tensors: CohortTensors, probs: np.ndarray, taxonomy: Taxonomy
) -> None:
    """Patient-level predictions CSV: patient_id, prob_<class>..., malignant_prob, label."""
    malignant = np.asarray(taxonomy.malignant_mask, dtype=bool)
    labels = tensors.patient_labels.numpy()
    with path.open("w", newline="") as handle:
        writer = csv.writer(handle)
        writer.writerow(
            ["patient_id", *(f"prob_{n}" for n in taxonomy.names), "malignant_prob", "label"]
        )
        for i, patient in enumerate(tensors.patient_ids):
            row = [f"{p:.6g}" for p in probs[i]]
            writer.writerow(
                [patient, *row, f"{probs[i, malignant].sum():.6g}", taxonomy.names[labels[i]]]
            )


# --------------------------------------------------------------------------- one seed
@dataclass
class RunState:
    """What ``last.pt`` stores to resume a seed."""

    epoch: int = 0
    best_metric: float = -math.inf
    best_epoch: int = 0
    bad_epochs: int = 0
    finished: bool = False


class _CsvLog:
    """log.csv, rewritten on resume to the rows of the epochs already done."""

    def __init__(self, path: Path, keep_epochs: int) -> None:
        self.path = path
        rows: list[dict[str, str]] = []
        if keep_epochs and path.is_file():
            with path.open(newline="") as handle:
                rows = [r for r in csv.DictReader(handle) if int(r["epoch"]) <= keep_epochs]
        with path.open("w", newline="") as handle:
            writer = csv.DictWriter(handle, fieldnames=LOG_COLUMNS)
            writer.writeheader()
            writer.writerows(rows)

    def append(self, row: dict[str, float]) -> None:
        with self.path.open("a", newline="") as handle:
            csv.DictWriter(handle, fieldnames=LOG_COLUMNS).writerow(
                {k: (f"{row[k]:.6g}" if k != "epoch" else int(row[k])) for k in LOG_COLUMNS}
            )


def _batches(n: int, batch_size: int, seed: int, dist: Distributed) -> list[torch.Tensor]:
    """This rank's index batches of one epoch: one shuffled order shared by all ranks, split
    rank-wise; incomplete last batches are dropped (each epoch reshuffles, so none is lost for
    good), except when there are fewer images than one batch."""
    order = torch.randperm(n, generator=torch.Generator().manual_seed(seed))
    per_rank = batch_size // dist.world_size
    steps = max(1, n // batch_size)
    if n < batch_size:  # a tiny cohort: one step with what there is
        per_rank = max(1, n // dist.world_size)
    return [
        order[
            (s * dist.world_size + dist.rank) * per_rank : (s * dist.world_size + dist.rank + 1)
            * per_rank
        ]
        for s in range(steps)
    ]


def _make_loss(args: argparse.Namespace, train: CohortTensors, n_classes: int):
    class_weight = None
    if args.class_weights != "none":
        counts = torch.bincount(train.labels, minlength=n_classes)
        try:
            class_weight = losses.class_weights_from_counts(counts, scheme=args.class_weights)
        except ValueError as err:
            raise ValueError(f"argument '--class-weights': {err}") from None

    def loss_fn(logits: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        if args.loss == "neutral-ce":
            first, second = logits.chunk(2)
            return losses.neutral_cross_entropy(
                first,
                second,
                target,
                alpha=args.nce_alpha,
                label_smoothing=args.label_smoothing,
                class_weight=class_weight,
            )
        return losses.cross_entropy(
            logits, target, label_smoothing=args.label_smoothing, class_weight=class_weight
        )

    return loss_fn


def _fingerprint(args: argparse.Namespace) -> dict[str, Any]:
    record = _args_record(args)
    keys = (*RESUME_KEYS, *(DMFN_RESUME_DEFAULTS if args.model == "dmfn" else ()))
    return {k: record[k] for k in keys} | {"params": args.params.digest()}


def _model_options(
    args: argparse.Namespace, labels: torch.Tensor, n_classes: int
) -> dict[str, Any]:
    """create_model keywords of the fusion options: dmfn only (the baselines ignore them). A
    sum/hybrid fusion starts its bias at -log of the training-image class frequencies (add-one
    smoothed, so that a class absent from training has a finite prior)."""
    if args.model != "dmfn":
        return {}
    options: dict[str, Any] = {"fusion": args.fusion, "aux_heads": args.aux_weight > 0}
    if args.fusion != "concat":
        counts = torch.bincount(labels, minlength=n_classes).double() + 1.0
        options["class_prior"] = (counts / counts.sum()).tolist()
    return options


class _WithAuxiliary(nn.Module):
    """Training-time view of a dmfn model whose ``forward`` returns the flat tuple (fused logits,
    *unimodal logits) of ``forward_with_aux``; DDP wraps this module, so that it sees the
    auxiliary heads' computation."""

    def __init__(self, model: nn.Module) -> None:
        super().__init__()
        self.model = model

    def forward(self, views: torch.Tensor, tabular: torch.Tensor) -> tuple[torch.Tensor, ...]:
        fused, unimodal = self.model.forward_with_aux(views, tabular)
        return (fused, *unimodal)


def _checkpoint(
    model: nn.Module,
    data: TrainingData,
    args: argparse.Namespace,
    seed: int,
    metrics_: dict[str, Any],
    training: dict[str, Any],
) -> Checkpoint:
    return Checkpoint(
        model_config=dict(model.config),
        state_dict={k: v.detach().cpu().clone() for k, v in model.state_dict().items()},
        preprocess_params=data.params,
        taxonomy=data.taxonomy,
        ctc_features=tuple(args.ctc_features),
        ctc_observed_range=observed_range(data.train.tabular[:, : len(args.ctc_features)]),
        metrics=metrics_,
        training={
            "seed": seed,
            "args": _args_record(args),
            "synthetic": _is_synthetic_cohort(Path(args.manifest)),
            **training,
        },
        versions=current_versions(),
    )


def _is_synthetic_cohort(manifest: Path) -> bool:
    """True when the manifest was written by ``dmfn synth`` (its cohort.json lies beside it)."""
    info = manifest.parent / "cohort.json"
    try:
        return "generator" in json.loads(info.read_text())
    except (OSError, ValueError):
        return False


def train_seed(
    args: argparse.Namespace,
    data: TrainingData,
    seed: int,
    out_dir: Path,
    dist: Distributed = Distributed(),
) -> dict[str, Any]:
    """Train (or resume) one seed into ``out_dir``; returns its patient-level val/test metrics.

    Only the main process writes files and evaluates; it broadcasts the stop decision.
    """
    device = torch.device(args.device)
    taxonomy = data.taxonomy
    n_classes = len(taxonomy)
    torch.manual_seed(derived_seed(seed, 0, 0, 0))  # initial weights: the same on every rank
    mean, std = fit_standardisation(data.train.tabular)  # over the training images
    model = create_model(
        args.model,
        backbone=args.backbone,
        n_classes=n_classes,
        n_tabular=data.train.tabular.shape[1],
        tabular_mean=mean,
        tabular_std=std,
        **_model_options(args, data.train.labels, n_classes),
    ).to(device)
    optimiser = torch.optim.AdamW(model.parameters(), lr=args.lr, weight_decay=args.weight_decay)
    steps_per_epoch = len(_batches(len(data.train), args.batch_size, 0, dist))
    scheduler = torch.optim.lr_scheduler.CosineAnnealingLR(
        optimiser, T_max=args.epochs * steps_per_epoch
    )
    state = RunState()
    last_path, best_path = out_dir / "last.pt", out_dir / "best.pt"
    if args.resume and last_path.is_file():
        state = _restore(last_path, args, model, optimiser, scheduler)
        log.info("seed %d: resuming after epoch %d from %s", seed, state.epoch, last_path)
    if dist.is_main:
        out_dir.mkdir(parents=True, exist_ok=True)
    aux_weight = args.aux_weight if args.model == "dmfn" else 0.0
    train_model: nn.Module = _WithAuxiliary(model) if aux_weight > 0 else model
    if dist.enabled:
        train_model = nn.parallel.DistributedDataParallel(train_model)
    loss_fn = _make_loss(args, data.train, n_classes)
    augment = AugmentParams()

    writer = csv_log = None
    if dist.is_main and not state.finished:
        from torch.utils.tensorboard import SummaryWriter

        writer = SummaryWriter(str(out_dir / "tensorboard"), purge_step=state.epoch + 1)
        csv_log = _CsvLog(out_dir / "log.csv", state.epoch)
    bar = tqdm(
        total=args.epochs,
        initial=state.epoch,
        desc=f"{args.model} seed {seed}",
        unit="epoch",
        disable=not (args.progress and dist.is_main) or state.finished,
    )
    while not state.finished and state.epoch < args.epochs:
        epoch = state.epoch + 1
        started = time.perf_counter()
        train_model.train()
        torch.manual_seed(derived_seed(seed, epoch, dist.rank, 1))  # dropout etc.
        aug_gen = torch.Generator().manual_seed(derived_seed(seed, epoch, dist.rank, 2))
        total, count = 0.0, 0
        for idx in _batches(
            len(data.train), args.batch_size, derived_seed(seed, epoch, 0, 3), dist
        ):
            views, tab = data.train.views[idx], data.train.tabular[idx]
            target = data.train.labels[idx].to(device)
            copies = 2 if args.loss == "neutral-ce" else 1
            views = views.repeat(copies, 1, 1, 1)
            if args.augment and args.model != "tabular":  # the tabular model ignores views
                views = augment_views(views, aug_gen, augment)
            output = train_model(views.to(device), tab.repeat(copies, 1).to(device))
            if aux_weight > 0:
                loss = losses.with_auxiliary(loss_fn, output[0], output[1:], target, aux_weight)
            else:
                loss = loss_fn(output, target)
            optimiser.zero_grad(set_to_none=True)
            loss.backward()
            optimiser.step()
            scheduler.step()
            total += float(loss.detach()) * len(idx)
            count += len(idx)
        stop = torch.zeros(1)
        if dist.is_main:
            _, val = evaluate(model, data.val, taxonomy, device)
            state.epoch = epoch
            improved = val[MONITOR] > state.best_metric
            if improved:
                state.best_metric, state.best_epoch, state.bad_epochs = val[MONITOR], epoch, 0
                ckpt = _checkpoint(
                    model, data, args, seed, {"val": val}, {"epoch": epoch, "monitor": MONITOR}
                )
                ckpt.save(best_path)
            else:
                state.bad_epochs += 1
            if epoch >= args.epochs or (args.patience and state.bad_epochs >= args.patience):
                state.finished = True
            row = {
                "epoch": epoch,
                "lr": optimiser.param_groups[0]["lr"],
                "train_loss": total / max(count, 1),
                "val_loss": val["loss"],
                **{f"val_{m}": val[m] for m in SUMMARY_METRICS},
                "seconds": time.perf_counter() - started,
            }
            csv_log.append(row)  # type: ignore[union-attr]
            for key, value in row.items():
                if key != "epoch":
                    writer.add_scalar(key.replace("_", "/", 1), value, epoch)  # type: ignore[union-attr]
            _save_last(last_path, model, data, args, seed, optimiser, scheduler, state)
            bar.set_postfix(loss=f"{row['train_loss']:.3f}", val_auc=f"{val[MONITOR]:.3f}")
            stop[0] = float(state.finished)
        if dist.enabled:
            torch_dist.broadcast(stop, src=0)
            state.epoch, state.finished = epoch, bool(stop[0])
        bar.update()
    bar.close()
    if writer is not None:
        writer.close()
    result: dict[str, Any] = {}
    if dist.is_main:
        result = _final_evaluation(best_path, data, out_dir, device)
        result.update(seed=seed, best_epoch=state.best_epoch, epochs_run=state.epoch)
    dist.barrier()
    return result


def _save_last(
    path: Path,
    model: nn.Module,
    data: TrainingData,
    args: argparse.Namespace,
    seed: int,
    optimiser: torch.optim.Optimizer,
    scheduler: Any,
    state: RunState,
) -> None:
    training = {
        "epoch": state.epoch,
        "resume": {
            "fingerprint": _fingerprint(args),
            "optimizer": optimiser.state_dict(),
            "scheduler": scheduler.state_dict(),
            "best_metric": state.best_metric,
            "best_epoch": state.best_epoch,
            "bad_epochs": state.bad_epochs,
            "finished": state.finished,
        },
    }
    _checkpoint(model, data, args, seed, {}, training).save(path)


def _restore(
    path: Path,
    args: argparse.Namespace,
    model: nn.Module,
    optimiser: torch.optim.Optimizer,
    scheduler: Any,
) -> RunState:
    ckpt = load_checkpoint(path)
    saved = ckpt.training.get("resume")
    if not isinstance(saved, dict):
        raise ValueError(f"argument '--resume': {path} holds no resume state")
    now = _fingerprint(args)
    before = DMFN_RESUME_DEFAULTS | saved["fingerprint"]
    changed = sorted(k for k in now if before.get(k) != now[k])
    if changed:
        raise ValueError(
            f"argument '--resume': {path} was trained with different {changed}; use the same "
            "options or another --out"
        )
    model.load_state_dict(ckpt.state_dict)
    optimiser.load_state_dict(saved["optimizer"])
    scheduler.load_state_dict(saved["scheduler"])
    return RunState(
        epoch=int(ckpt.training["epoch"]),
        best_metric=float(saved["best_metric"]),
        best_epoch=int(saved["best_epoch"]),
        bad_epochs=int(saved["bad_epochs"]),
        finished=bool(saved["finished"]),
    )


def _final_evaluation(
    best_path: Path, data: TrainingData, out_dir: Path, device: torch.device
) -> dict[str, Any]:
    """Evaluate best.pt on val and test, write the predictions CSVs, store the metrics in it."""
    ckpt = load_checkpoint(best_path)
    model = ckpt.build_model().to(device)
    result: dict[str, Any] = {}
    for name, tensors in (("val", data.val), ("test", data.test)):
        if tensors is None:
            continue
        probs, result[name] = evaluate(model, tensors, data.taxonomy, device)
        write_predictions(out_dir / f"predictions_{name}.csv", tensors, probs, data.taxonomy)
    ckpt.metrics = {**ckpt.metrics, **result}
    ckpt.save(best_path)
    return result


# --------------------------------------------------------------------------- summary
def summarise(runs: list[dict[str, Any]], args: argparse.Namespace) -> dict[str, Any]:
    """Mean and sample SD (n - 1; 0 for one seed) over seeds of each split's metrics."""
    mean: dict[str, float] = {}
    sd: dict[str, float] = {}
    for split in ("val", "test"):
        for metric in SUMMARY_METRICS:
            values = [r[split][metric] for r in runs if split in r]
            if not values:
                continue
            key = f"{split}_{metric}"
            mean[key] = float(np.mean(values))
            sd[key] = float(np.std(values, ddof=1)) if len(values) > 1 else 0.0
    return {
        "model": args.model,
        "backbone": None if args.model == "tabular" else args.backbone,
        **({"fusion": args.fusion, "aux_weight": args.aux_weight} if args.model == "dmfn" else {}),
        "seeds": [r["seed"] for r in runs],
        "monitor": f"val_{MONITOR}",
        "level": "patient",
        "note": "results on synthetic data are pipeline checks, never clinical claims",
        "mean": mean,
        "sd": sd,
        "runs": runs,
        "args": _args_record(args),
        "versions": current_versions(),
    }


def format_table(summary: dict[str, Any]) -> str:
    """The summary as a text table: one row per metric, mean ± SD and the per-seed values."""
    seeds = summary["seeds"]
    head = f"{'metric':<22}{'mean ± SD':>18}  " + "  ".join(f"{'seed ' + str(s):>8}" for s in seeds)
    fusion = (
        f", fusion {summary['fusion']}, aux weight {summary['aux_weight']:g}"
        if "fusion" in summary
        else ""
    )
    lines = [f"{summary['model']} (backbone {summary['backbone']}{fusion}), patient level", head]
    for key, mean in summary["mean"].items():
        split, metric = key.split("_", 1)
        values = [r.get(split, {}).get(metric, float("nan")) for r in summary["runs"]]
        cells = "  ".join(f"{v:>8.4f}" for v in values)
        lines.append(f"{key:<22}{mean:>9.4f} ± {summary['sd'][key]:<6.4f}  {cells}")
    return "\n".join(lines)


def _to_json(value: Any) -> Any:
    if isinstance(value, float) and not math.isfinite(value):
        return None
    if isinstance(value, dict):
        return {k: _to_json(v) for k, v in value.items()}
    if isinstance(value, list):
        return [_to_json(v) for v in value]
    return value


def run(args: argparse.Namespace) -> dict[str, Any]:
    """Train every seed of a validated argument set; returns the summary (main process)."""
    dist = setup_distributed()
    if args.batch_size % dist.world_size:
        raise ValueError(
            f"argument '--batch-size': must be divisible by the {dist.world_size} processes, "
            f"got {args.batch_size}"
        )
    data = prepare_data(args, dist)
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
        path.write_text(json.dumps(_to_json(summary), indent=2) + "\n")
    if dist.enabled:
        torch_dist.destroy_process_group()
    return summary


def main(argv: list[str] | None = None) -> int:
    """``dmfn train`` entry point; returns the exit status (2 on a bad argument or input)."""
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    try:
        args = parse_args(sys.argv[1:] if argv is None else argv)
        summary = run(args)
    except ValueError as err:
        print(f"dmfn train: error: {err}", file=sys.stderr)
        return 2
    if summary:
        print(format_table(summary))
        print(f"summary: {args.out / 'summary.json'}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
