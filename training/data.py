"""The cohort of a training run: the manifest read and its splits checked, the preprocessing
cache built, the splits stacked as tensors; for ``--folds K`` the train and val patients
re-split into K class-stratified folds (each fold validates once, the others train)."""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from dmfn.client.manifest import Manifest, ManifestRow, read_manifest
from dmfn.contract.errors import InvalidInput
from dmfn.contract.params import PreprocessParams
from dmfn.contract.taxonomy import Taxonomy, load_taxonomy

from .config import TrainConfig
from .dataset import CohortTensors, build_cache, load_split
from .distributed import SINGLE_PROCESS, Distributed

#: The manifest splits that cross-validation pools and re-splits; ``test`` stays out of it.
CV_POOL: tuple[str, ...] = ("train", "val")


@dataclass
class TrainingData:
    """The validated cohort, preprocessed and stacked per split (``test`` may be None);
    ``fold`` is the validation fold of a cross-validation run (None otherwise)."""

    manifest: Manifest
    taxonomy: Taxonomy
    params: PreprocessParams
    train: CohortTensors
    val: CohortTensors
    test: CohortTensors | None
    fold: int | None = None


@dataclass
class Cohort:
    """The manifest with its preprocessing cache (``files`` aligned with its rows)."""

    manifest: Manifest
    taxonomy: Taxonomy
    params: PreprocessParams
    files: Sequence[Path]


def prepare_cohort(args: TrainConfig, dist: Distributed = SINGLE_PROCESS) -> Cohort:
    """Read the manifest, check its splits (before any preprocessing: a bad split costs
    nothing), then build the preprocessing cache (main process first)."""
    taxonomy = load_taxonomy(args.taxonomy, grouping=args.grouping)
    manifest = read_manifest(args.manifest, taxonomy, args.ctc_features)
    if args.folds:
        assign_folds(manifest, args.folds, args.seed)  # refuses a pool too small to split
    else:
        for name in CV_POOL:
            _check_rows(manifest, manifest.split(name), name)
    cache_dir = args.cache_dir or manifest.path.resolve().parent / ".dmfn_cache"
    files = None
    if dist.is_main:
        files = build_cache(manifest, args.params, cache_dir, args.workers, args.progress)
    dist.barrier()
    if files is None:  # the other ranks find every entry built by the main process
        files = build_cache(manifest, args.params, cache_dir, 0, progress=False)
    return Cohort(manifest, taxonomy, args.params, files)


def training_data(cohort: Cohort, folds: int = 0, fold: int = 0, seed: int = 0) -> TrainingData:
    """The tensors of the manifest's splits, or (``folds`` >= 2) of fold ``fold``: its patients
    validate, the rest of the train and val patients train; ``test`` is the manifest's."""
    manifest = cohort.manifest
    if folds:
        of = assign_folds(manifest, folds, seed)
        rows = tuple(
            dataclasses.replace(r, split="val" if of[r.patient_id] == fold else "train")
            if r.split in CV_POOL
            else r
            for r in manifest.rows
        )
        manifest = dataclasses.replace(manifest, rows=rows)
    splits = {name: load_split(manifest, name, cohort.files) for name in ("train", "val", "test")}
    train, val = (_required(splits[name], name, manifest) for name in CV_POOL)
    return TrainingData(
        manifest, cohort.taxonomy, cohort.params, train, val, splits["test"],
        fold if folds else None,
    )  # fmt: skip


def prepare_data(args: TrainConfig, dist: Distributed = SINGLE_PROCESS) -> TrainingData:
    """The cohort of a run with the manifest's own train / val split."""
    return training_data(prepare_cohort(args, dist))


def assign_folds(manifest: Manifest, folds: int, seed: int) -> dict[str, int]:
    """Patient -> fold (0 .. folds - 1) for the train and val patients: class-stratified (the
    patients sorted by class, shuffled within it by ``seed``, dealt to the folds in turn, so
    each class is spread as evenly as it can be). Every image of a patient is in its fold.
    InvalidInput when a fold would validate fewer than 2 classes."""
    label_of: dict[str, str] = {}
    for r in manifest.rows:
        if r.split in CV_POOL:
            label_of.setdefault(r.patient_id, r.label or "")
    rng = np.random.default_rng(seed)
    by_class: dict[str, list[str]] = {}
    for pid, label in label_of.items():
        by_class.setdefault(label, []).append(pid)
    order: list[str] = []
    for label in sorted(by_class):
        patients = sorted(by_class[label])
        order += [patients[i] for i in rng.permutation(len(patients))]
    of = {pid: i % folds for i, pid in enumerate(order)}
    for k in range(folds):
        classes = {label_of[p] for p, f in of.items() if f == k}
        if len(classes) < 2:
            raise InvalidInput(
                "folds",
                f"manifest {manifest.path}: {len(label_of)} train and val patients cannot make "
                f"{folds} folds of at least 2 classes each (fold {k} has {len(classes)}); give "
                "fewer folds",
            )
    return of


def _check_split(manifest: Manifest, name: str, n_images: int, n_classes: int) -> None:
    """Split ``name`` of the manifest must hold images of at least 2 classes."""
    if not n_images:
        raise ValueError(f"manifest {manifest.path}: split {name!r} has no images")
    if n_classes < 2:
        raise ValueError(
            f"manifest {manifest.path}: split {name!r} needs at least 2 classes, has {n_classes}"
        )


def _check_rows(manifest: Manifest, rows: Sequence[ManifestRow], name: str) -> None:
    """:func:`_check_split` on the manifest's rows, before any preprocessing."""
    _check_split(manifest, name, len(rows), len({r.label for r in rows}))


def _required(tensors: CohortTensors | None, name: str, manifest: Manifest) -> CohortTensors:
    """The tensors of split ``name`` (:func:`_check_split` on them: a fold's split too)."""
    n_classes = 0 if tensors is None else int(torch.unique(tensors.labels).numel())
    _check_split(manifest, name, 0 if tensors is None else len(tensors), n_classes)
    assert tensors is not None
    return tensors
