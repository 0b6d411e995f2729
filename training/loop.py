"""One seed of training: epochs, early stopping on the validation metric, best/last checkpoints,
resume, the epoch log (log.csv, TensorBoard); best.pt gets the calibration data
(:mod:`dmfn.training.calibration`) of its own train and val splits (in a ``--folds`` run: the
fold's training folds and its validation fold)."""

from __future__ import annotations

import csv
import json
import logging
import math
import time
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import torch
import torch.distributed as torch_dist
from torch import nn
from tqdm import tqdm

from . import losses
from .augment import AugmentParams, augment_views
from .calibration import check_stored_temperature, store_calibration
from .checkpoint import Checkpoint, current_versions, load_checkpoint, observed_range
from .config import DMFN_RESUME_DEFAULTS, RESUME_KEYS, TrainConfig
from .data import TrainingData
from .dataset import CohortTensors
from .distributed import SINGLE_PROCESS, Distributed, derived_seed
from .experts import EXPERT_MODULES, compose_experts, expert_checkpoint, freeze_experts
from .models import TwoInputModel, create_model, fit_standardisation
from .scoring import MONITOR, SUMMARY_METRICS, evaluate, final_evaluation

log = logging.getLogger("dmfn.train")

LOG_COLUMNS: tuple[str, ...] = (
    "epoch",
    "lr",
    "train_loss",
    "val_loss",
    *(f"val_{m}" for m in SUMMARY_METRICS),
    "seconds",
)


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


def _make_loss(args: TrainConfig, train: CohortTensors, n_classes: int):
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


def _fingerprint(args: TrainConfig) -> dict[str, Any]:
    record = args.record()
    keys = (*RESUME_KEYS, *(DMFN_RESUME_DEFAULTS if args.model == "dmfn" else ()))
    return {k: record[k] for k in keys} | {"params": args.params.digest()}


def _model_options(args: TrainConfig, labels: torch.Tensor, n_classes: int) -> dict[str, Any]:
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

    def __init__(self, model: TwoInputModel) -> None:
        super().__init__()
        self.model = model

    def forward(self, views: torch.Tensor, tabular: torch.Tensor) -> tuple[torch.Tensor, ...]:
        fused, unimodal = self.model.forward_with_aux(views, tabular)
        return (fused, *unimodal)


def _checkpoint(
    model: TwoInputModel,
    data: TrainingData,
    args: TrainConfig,
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
        ctc_observed_range=observed_range(
            data.train.tabular[:, : len(args.ctc_features)].cpu().numpy()
        ),
        metrics=metrics_,
        training={
            "seed": seed,
            "args": args.record(),
            "synthetic": _is_synthetic_cohort(Path(args.manifest)),
            "date": datetime.now(UTC).isoformat(timespec="seconds"),
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


@dataclass
class _SeedRun:
    """What the epochs of one seed share: the model (and its DDP / auxiliary wrapper for
    training), the optimiser and schedule, the loss, the state and the output files."""

    args: TrainConfig
    data: TrainingData
    seed: int
    out_dir: Path
    dist: Distributed
    device: torch.device
    model: TwoInputModel
    train_model: nn.Module
    optimiser: torch.optim.Optimizer
    scheduler: torch.optim.lr_scheduler.LRScheduler
    loss_fn: Any
    aux_weight: float
    state: RunState

    @property
    def last_path(self) -> Path:
        return self.out_dir / "last.pt"

    @property
    def best_path(self) -> Path:
        return self.out_dir / "best.pt"


def _start(
    args: TrainConfig, data: TrainingData, seed: int, out_dir: Path, dist: Distributed
) -> _SeedRun:
    """The model, optimiser and schedule of a seed, restored from last.pt with ``--resume``."""
    device = torch.device(args.device)
    n_classes = len(data.taxonomy)
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
    if args.init_ct is not None and args.init_tabular is not None:
        composed = compose_experts(
            model,
            expert_checkpoint(args.init_ct, seed, "init_ct"),
            expert_checkpoint(args.init_tabular, seed, "init_tabular"),
            list(data.taxonomy.names),
            args.params.digest(),
        )
        log.info(
            "seed %d: composed from %s and %s", seed, composed["init_ct"], composed["init_tabular"]
        )
        if args.freeze_experts:
            log.info("seed %d: experts frozen, %d parameters to train", seed, freeze_experts(model))
    trainable = [p for p in model.parameters() if p.requires_grad]
    optimiser = torch.optim.AdamW(trainable, lr=args.lr, weight_decay=args.weight_decay)
    steps_per_epoch = len(_batches(len(data.train), args.batch_size, 0, dist))
    scheduler = torch.optim.lr_scheduler.CosineAnnealingLR(
        optimiser, T_max=max(args.epochs, 1) * steps_per_epoch
    )
    state = RunState()
    last_path = out_dir / "last.pt"
    if args.resume and last_path.is_file():
        state = _restore(last_path, args, model, optimiser, scheduler)
        log.info("seed %d: resuming after epoch %d from %s", seed, state.epoch, last_path)
    if dist.is_main:
        out_dir.mkdir(parents=True, exist_ok=True)
    aux_weight = args.aux_weight if args.model == "dmfn" else 0.0
    train_model: nn.Module = _WithAuxiliary(model) if aux_weight > 0 else model
    if dist.enabled:
        train_model = nn.parallel.DistributedDataParallel(train_model)
    return _SeedRun(
        args, data, seed, out_dir, dist, device, model, train_model, optimiser, scheduler,
        _make_loss(args, data.train, n_classes), aux_weight, state,
    )  # fmt: skip


def _train_epoch(run: _SeedRun, epoch: int) -> float:
    """One pass over this rank's batches; returns the mean training loss per image."""
    args, data, dist = run.args, run.data, run.dist
    run.train_model.train()
    if args.freeze_experts:  # frozen experts keep their batch-norm statistics and no dropout
        for name in EXPERT_MODULES:
            getattr(run.model, name).eval()
    torch.manual_seed(derived_seed(run.seed, epoch, dist.rank, 1))  # dropout etc.
    aug_gen = torch.Generator().manual_seed(derived_seed(run.seed, epoch, dist.rank, 2))
    augment = AugmentParams()
    total, count = 0.0, 0
    order_seed = derived_seed(run.seed, epoch, 0, 3)
    for idx in _batches(len(data.train), args.batch_size, order_seed, dist):
        views, tab = data.train.views[idx], data.train.tabular[idx]
        target = data.train.labels[idx].to(run.device)
        copies = 2 if args.loss == "neutral-ce" else 1
        views = views.repeat(copies, 1, 1, 1)
        if args.augment and args.model != "tabular":  # the tabular model ignores views
            views = augment_views(views, aug_gen, augment)
        output = run.train_model(views.to(run.device), tab.repeat(copies, 1).to(run.device))
        if run.aux_weight > 0:
            loss = losses.with_auxiliary(run.loss_fn, output[0], output[1:], target, run.aux_weight)
        else:
            loss = run.loss_fn(output, target)
        run.optimiser.zero_grad(set_to_none=True)
        loss.backward()
        run.optimiser.step()
        run.scheduler.step()
        total += float(loss.detach()) * len(idx)
        count += len(idx)
    return total / max(count, 1)


def _validate_epoch(run: _SeedRun, epoch: int) -> dict[str, float]:
    """Main process: validation metrics; best.pt if they improved; the early-stopping count."""
    args, state = run.args, run.state
    _, val = evaluate(run.model, run.data.val, run.data.taxonomy, run.device)
    state.epoch = epoch
    if val[MONITOR] > state.best_metric:
        state.best_metric, state.best_epoch, state.bad_epochs = val[MONITOR], epoch, 0
        # the value that selected this epoch (before calibration; best.pt's metrics are final)
        training = {"epoch": epoch, "monitor": MONITOR, "monitor_value": val[MONITOR]}
        _checkpoint(run.model, run.data, args, run.seed, {"val": val}, training).save(run.best_path)
    else:
        state.bad_epochs += 1
    if epoch >= args.epochs or (args.patience and state.bad_epochs >= args.patience):
        state.finished = True
    return val


def train_seed(
    args: TrainConfig,
    data: TrainingData,
    seed: int,
    out_dir: Path,
    dist: Distributed = SINGLE_PROCESS,
) -> dict[str, Any]:
    """Train (or resume) one seed into ``out_dir``; returns its patient-level val/test metrics.

    Only the main process writes files and evaluates; it broadcasts the stop decision.
    """
    run = _start(args, data, seed, out_dir, dist)
    state = run.state
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
    composed = args.init_ct is not None
    if composed and dist.is_main and state.epoch == 0 and not state.finished:
        # epoch 0: the composed experts before any training are a candidate like any epoch
        val = _validate_epoch(run, 0)
        log.info(
            "seed %d epoch 0 (the composed experts, untrained): val %s %.4f",
            seed, MONITOR, val[MONITOR],
        )  # fmt: skip
    if dist.enabled and composed:
        stop0 = torch.tensor([float(state.finished)])
        torch_dist.broadcast(stop0, src=0)
        state.finished = bool(stop0[0])
    while not state.finished and state.epoch < args.epochs:
        epoch = state.epoch + 1
        started = time.perf_counter()
        train_loss = _train_epoch(run, epoch)
        stop = torch.zeros(1)
        if dist.is_main:
            val = _validate_epoch(run, epoch)
            row = {
                "epoch": epoch,
                "lr": run.optimiser.param_groups[0]["lr"],
                "train_loss": train_loss,
                "val_loss": val["loss"],
                **{f"val_{m}": val[m] for m in SUMMARY_METRICS},
                "seconds": time.perf_counter() - started,
            }
            csv_log.append(row)  # type: ignore[union-attr]
            for key, value in row.items():
                if key != "epoch":
                    writer.add_scalar(key.replace("_", "/", 1), value, epoch)  # type: ignore[union-attr]
            _save_last(
                run.last_path, run.model, data, args, seed, run.optimiser, run.scheduler, state
            )
            bar.set_postfix(loss=f"{train_loss:.3f}", val_auc=f"{val[MONITOR]:.3f}")
            log.info(
                "seed %d epoch %d/%d: train loss %.4f, val loss %.4f, val %s %.4f%s (%.1f s)",
                seed, epoch, args.epochs, train_loss, val["loss"], MONITOR, val[MONITOR],
                " (best)" if state.best_epoch == epoch else "", row["seconds"],
            )  # fmt: skip
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
        how = (
            f"stopped early at {state.epoch}/{args.epochs} ({args.patience} epochs without "
            "improvement)"
            if state.epoch < args.epochs
            else f"ran all {args.epochs} epochs"
        )
        log.info(
            "seed %d: %s; best epoch %d (val %s %.4f)",
            seed, how, state.best_epoch, MONITOR, state.best_metric,
        )  # fmt: skip
        # the calibration data first (they fit the temperature as final_evaluation then does)
        store_calibration(run.best_path, data, run.device)
        result = final_evaluation(run.best_path, data, out_dir, run.device)
        check_stored_temperature(run.best_path)
        result.update(seed=seed, best_epoch=state.best_epoch, epochs_run=state.epoch)
    dist.barrier()
    return result


def _save_last(
    path: Path,
    model: TwoInputModel,
    data: TrainingData,
    args: TrainConfig,
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
    args: TrainConfig,
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
