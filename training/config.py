"""The typed configuration of ``dmfn train``: :class:`TrainConfig`, built once by the command
line (:mod:`dmfn.training.cli`) and passed to everything below; it checks its own values."""

from __future__ import annotations

import dataclasses
import json
import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from dmfn.contract.errors import InvalidInput
from dmfn.contract.params import PreprocessParams
from dmfn.contract.schema import DEFAULT_CTC_FEATURES
from dmfn.contract.taxonomy import DEFAULT_GROUPING, GROUPINGS

from .models import DEFAULT_BACKBONE, DEFAULT_FUSION, FUSION_KINDS, MODEL_KINDS, list_backbones

LOSS_KINDS: tuple[str, ...] = ("ce", "neutral-ce")
CLASS_WEIGHT_SCHEMES: tuple[str, ...] = ("none", "inverse", "sqrt-inverse", "effective")
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
#: Resume keys of the dmfn model only, with the value a last.pt that lacks one continues as.
DMFN_RESUME_DEFAULTS: dict[str, Any] = {
    "fusion": DEFAULT_FUSION,
    "aux_weight": 0.0,
    "init_ct": None,
    "init_tabular": None,
    "freeze_experts": False,
}
#: ``dmfn train`` defaults of the fusion options (create_model's own default stays "concat").
CLI_FUSION = DEFAULT_FUSION
CLI_AUX_WEIGHT = 0.0


@dataclass(frozen=True)
class TrainConfig:
    """Everything one ``dmfn train`` run is told (units: epochs, images, seconds; lr per step).

    Field names are the option names without ``--`` (``batch_size`` is ``--batch-size``);
    :data:`dmfn.training.cli.FLAGS` maps each to its flag for error messages.
    """

    manifest: Path
    out: Path
    cache_dir: Path | None = None
    params: PreprocessParams = field(default_factory=PreprocessParams)
    taxonomy: Path | None = None
    grouping: str = DEFAULT_GROUPING
    ctc_features: tuple[str, ...] = DEFAULT_CTC_FEATURES
    workers: int = 2
    model: str = "dmfn"
    backbone: str = DEFAULT_BACKBONE
    fusion: str = CLI_FUSION
    aux_weight: float = CLI_AUX_WEIGHT
    init_ct: Path | None = None
    init_tabular: Path | None = None
    freeze_experts: bool = False
    epochs: int = 30
    batch_size: int = 32
    lr: float = 1e-3
    weight_decay: float = 0.05
    loss: str = "neutral-ce"
    label_smoothing: float = 0.1
    nce_alpha: float = 0.3
    class_weights: str = "none"
    patience: int = 8
    augment: bool = True
    seeds: int = 1
    seed: int = 0
    #: K >= 2: K-fold cross-validation on the train and val patients (0: the manifest's split).
    folds: int = 0
    resume: bool = False
    overwrite: bool = False
    device: str = "cpu"
    progress: bool = True

    def __post_init__(self) -> None:
        for name in ("manifest", "out", "cache_dir", "taxonomy", "init_ct", "init_tabular"):
            value = getattr(self, name)
            if value is not None and not isinstance(value, Path):
                object.__setattr__(self, name, Path(value))
        if isinstance(self.ctc_features, str):
            names = tuple(f.strip() for f in self.ctc_features.split(",") if f.strip())
            object.__setattr__(self, "ctc_features", names)
        _validate(self)

    def record(self) -> dict[str, Any]:
        """Plain JSON-able values (stored in checkpoints and summary.json)."""
        out: dict[str, Any] = {}
        for f in sorted(dataclasses.fields(self), key=lambda f: f.name):
            value = getattr(self, f.name)
            if isinstance(value, Path):
                value = str(value)
            elif isinstance(value, PreprocessParams):
                value = value.to_dict()
            elif isinstance(value, tuple):
                value = list(value)
            out[f.name] = value
        return out


def _check(condition: bool, name: str, rule: str, value: object) -> None:
    if not condition:
        raise InvalidInput(name, f"{rule}, got {value!r}")


def _validate(c: TrainConfig) -> None:
    _check(c.grouping in GROUPINGS, "grouping", f"must be one of {tuple(GROUPINGS)}", c.grouping)
    _check(c.model in MODEL_KINDS, "model", f"must be one of {MODEL_KINDS}", c.model)
    if c.model != "tabular":
        known = list_backbones()
        _check(
            c.backbone in known,
            "backbone",
            f"unknown backbone; known: {', '.join(known)}",
            c.backbone,
        )
    _check(c.fusion in FUSION_KINDS, "fusion", f"must be one of {FUSION_KINDS}", c.fusion)
    _check(
        math.isfinite(c.aux_weight) and c.aux_weight >= 0,
        "aux_weight",
        "must be finite and >= 0",
        c.aux_weight,
    )
    _check(c.loss in LOSS_KINDS, "loss", f"must be one of {LOSS_KINDS}", c.loss)
    composing = c.init_ct is not None or c.init_tabular is not None
    if composing:
        _check(c.model == "dmfn", "init_ct", "composes a dmfn model (--model dmfn)", c.model)
        _check(
            c.init_ct is not None and c.init_tabular is not None,
            "init_ct",
            "needs both --init-ct (a cnn run) and --init-tabular (a tabular run)",
            (c.init_ct, c.init_tabular),
        )
        _check(c.fusion == "experts", "fusion", "must be experts to compose experts", c.fusion)
    _check(
        not c.freeze_experts or composing,
        "freeze_experts",
        "needs --init-ct and --init-tabular",
        c.freeze_experts,
    )
    # 0 epochs: the composed experts are only validated (the post-hoc product, as a model)
    _check(c.epochs >= (0 if composing else 1), "epochs", "must be >= 1", c.epochs)
    _check(c.batch_size >= 2, "batch_size", "must be >= 2 (batch norm)", c.batch_size)
    _check(math.isfinite(c.lr) and c.lr > 0, "lr", "must be > 0", c.lr)
    _check(c.weight_decay >= 0, "weight_decay", "must be >= 0", c.weight_decay)
    _check(0 <= c.label_smoothing < 1, "label_smoothing", "must be in [0, 1)", c.label_smoothing)
    _check(0 <= c.nce_alpha < 1, "nce_alpha", "must be in [0, 1)", c.nce_alpha)
    _check(c.patience >= 0, "patience", "must be >= 0", c.patience)
    _check(c.seeds >= 1, "seeds", "must be >= 1", c.seeds)
    _check(
        c.folds == 0 or c.folds >= 2, "folds", "must be 0 (no cross-validation) or >= 2", c.folds
    )
    _check(
        c.folds == 0 or c.seeds == 1,
        "seeds",
        "must be 1 with --folds (each fold trains seed --seed once)",
        c.seeds,
    )
    _check(c.seed >= 0, "seed", "must be >= 0", c.seed)
    _check(c.workers >= 0, "workers", "must be >= 0", c.workers)
    _check(bool(c.ctc_features), "ctc_features", "must name at least one column", c.ctc_features)
    _check(isinstance(c.params, PreprocessParams), "params", "must be PreprocessParams", c.params)
    _check(
        c.device == "cpu" or c.device.startswith("cuda"),
        "device",
        "must be cpu or cuda[:N]",
        c.device,
    )
    if c.device.startswith("cuda") and not torch.cuda.is_available():
        raise InvalidInput("device", f"{c.device} requested but CUDA is not available")


def parse_params(value: str | None) -> PreprocessParams:
    if value is None:
        return PreprocessParams()
    path = Path(value)
    text = path.read_text() if path.is_file() else value
    try:
        data = json.loads(text)
    except json.JSONDecodeError as err:
        raise InvalidInput(
            "params", f"must be a JSON file or a JSON object, got {value!r} ({err})"
        ) from None
    if not isinstance(data, dict):
        raise InvalidInput("params", f"must be a JSON object, got {type(data).__name__}")
    return PreprocessParams.from_dict(data)
