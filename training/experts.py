"""Compose a dmfn model from separately trained experts (``dmfn train --init-ct RUN
--init-tabular RUN``): two-stage training against modality imbalance.

Trained jointly, the CT branch dominates and the fused model extracts less than the product of a
separately trained CNN and tabular model would (docs/training.md). Stage one trains each expert
alone (``--model cnn``, ``--model tabular``); stage two builds a dmfn model whose CT branch and CT
head are the CNN's, whose tabular branch and head are the tabular model's, fused by ``experts``
(``w_ct * ct_logits + w_tab * tab_logits + bias``): the weights start at each expert's inverse
calibration temperature (fitted on validation when it was trained) and the bias at ``-log prior``,
so at epoch 0 the model IS the post-hoc product of the two calibrated experts. Training then
fine-tunes it (or, with ``--freeze-experts``, only the weights and the bias); epoch 0 is
validated like any epoch, so fine-tuning is kept only where validation says it helps.
"""

from __future__ import annotations

from pathlib import Path

import torch
from torch import nn

from dmfn.contract.errors import InvalidInput

from .checkpoint import Checkpoint, load_checkpoint
from .models import DMFN, CNNBaseline, TabularBaseline, TwoInputModel

#: Modules of an experts-fused dmfn model that hold the experts (frozen by --freeze-experts).
EXPERT_MODULES = ("ct", "ct_head", "tabular", "tab_head")


def expert_checkpoint(path: Path, seed: int, argument: str) -> Path:
    """The checkpoint of ``path``: a ``.pt`` file, or a ``dmfn train`` output folder, whose
    ``seed_<seed>/best.pt`` is taken (so seed K of the composition uses seed K of each expert)."""
    if path.is_dir():
        candidate = path / f"seed_{seed}" / "best.pt"
        if not candidate.is_file():
            raise InvalidInput(argument, f"{candidate} does not exist (train seed {seed} first)")
        return candidate
    if not path.is_file():
        raise InvalidInput(argument, f"{path} is neither a checkpoint nor a training folder")
    return path


def _check(
    expert: Checkpoint, kind: str, argument: str, model: TwoInputModel, names: list[str]
) -> None:
    kind_of = expert.model_config.get("kind")
    if kind_of != kind:
        raise InvalidInput(argument, f"must be a {kind!r} model, got {kind_of!r}")
    if list(expert.taxonomy.names) != names:
        raise InvalidInput(argument, "its classes differ from this run's taxonomy")
    config = model.config
    if kind == "cnn" and expert.model_config.get("backbone") != config["backbone"]:
        raise InvalidInput(
            argument,
            f"backbone {expert.model_config.get('backbone')!r} differs from --backbone "
            f"{config['backbone']!r}",
        )
    if int(expert.model_config.get("embed_dim", 0)) != int(config["embed_dim"]):
        raise InvalidInput(argument, "its embedding width differs from this model's")


def compose_experts(
    model: TwoInputModel,
    ct_path: Path,
    tabular_path: Path,
    class_names: list[str],
    preprocess_digest: str,
) -> dict[str, object]:
    """Load the CNN at ``ct_path`` and the tabular model at ``tabular_path`` into ``model`` (a
    dmfn model with fusion "experts"); returns what was composed, for the record."""
    if not isinstance(model, DMFN) or model.expert_weights is None:
        raise InvalidInput("init_ct", "composing experts needs --fusion experts")
    cnn = load_checkpoint(ct_path)
    tab = load_checkpoint(tabular_path)
    _check(cnn, "cnn", "init_ct", model, class_names)
    _check(tab, "tabular", "init_tabular", model, class_names)
    if cnn.preprocess_params.digest() != preprocess_digest:
        raise InvalidInput("init_ct", "it was trained with other preprocessing parameters")
    cnn_model, tab_model = cnn.build_model(), tab.build_model()
    # _check saw their kinds; the heads exist in every fusion that composes experts
    assert isinstance(cnn_model, CNNBaseline) and isinstance(tab_model, TabularBaseline)
    assert model.ct_head is not None and model.tab_head is not None
    model.ct.load_state_dict(cnn_model.ct.state_dict())
    model.ct_head.load_state_dict(cnn_model.head.state_dict())
    model.tabular.load_state_dict(tab_model.tabular.state_dict())
    model.tab_head.load_state_dict(tab_model.head.state_dict())
    with torch.no_grad():
        weights = torch.tensor([1.0 / cnn.temperature, 1.0 / tab.temperature])
        model.expert_weights.copy_(weights)
    return {
        "init_ct": str(ct_path),
        "init_tabular": str(tabular_path),
        "expert_weights_start": weights.tolist(),
    }


def freeze_experts(model: nn.Module) -> int:
    """Stop the gradients of the experts' modules; returns the number of parameters left to
    train (the fusion weights and bias)."""
    for name in EXPERT_MODULES:
        for p in getattr(model, name).parameters():
            p.requires_grad_(False)
    return sum(p.numel() for p in model.parameters() if p.requires_grad)
