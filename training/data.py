"""The cohort of a training run: the manifest read, the preprocessing cache built, the splits
stacked as tensors."""

from __future__ import annotations

from dataclasses import dataclass

import torch

from dmfn.client.manifest import Manifest, read_manifest
from dmfn.contract.params import PreprocessParams
from dmfn.contract.taxonomy import Taxonomy, load_taxonomy

from .config import TrainConfig
from .dataset import CohortTensors, build_cache, load_split
from .distributed import SINGLE_PROCESS, Distributed


@dataclass
class TrainingData:
    """The validated cohort, preprocessed and stacked per split (``test`` may be None)."""

    manifest: Manifest
    taxonomy: Taxonomy
    params: PreprocessParams
    train: CohortTensors
    val: CohortTensors
    test: CohortTensors | None


def prepare_data(args: TrainConfig, dist: Distributed = SINGLE_PROCESS) -> TrainingData:
    """Read the manifest, build the preprocessing cache (main process first) and load splits."""
    taxonomy = load_taxonomy(args.taxonomy, grouping=args.grouping)
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
