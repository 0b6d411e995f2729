"""Helpers for the serving tests: a tiny trained checkpoint, its exported repository, request
builders for tritonclient (HTTP and gRPC) and the in-process PyTorch reference pipeline."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import torch

from dmfn.client import schema as S
from dmfn.client.taxonomy import load_taxonomy
from dmfn.preprocess import PreprocessParams
from dmfn.serving.config import ServingSettings
from dmfn.training.checkpoint import Checkpoint, load_checkpoint
from dmfn.training.export import (
    RawStudy,
    export,
    preprocess_batch,
    preprocess_studies,
    synthetic_study,
)
from dmfn.training.models.fusion import create_model
from dmfn.training.models.tabular import fit_standardisation

#: Small but real preprocessing: 64-pixel views; a voxel cap low enough to test cheaply.
TEST_PARAMS = PreprocessParams(view_size=64, max_voxels=2**20)
TINY_BACKBONE = "regnetx_tiny"


def make_studies(n: int, seed: int, n_ctc: int = 1) -> list[RawStudy]:
    rng = np.random.default_rng(seed)
    return [synthetic_study(rng, n_ctc) for _ in range(n)]


def make_tiny_checkpoint(
    path: Path, backbone: str = TINY_BACKBONE, steps: int = 3, seed: int = 0
) -> Path:
    """Train a tiny DMFN a few AdamW steps on synthetic preprocessed studies and save it."""
    torch.manual_seed(seed)
    taxonomy = load_taxonomy()
    views, tabular = preprocess_batch(make_studies(8, seed), TEST_PARAMS)
    labels = torch.from_numpy(np.arange(len(views)) % len(taxonomy))
    mean, std = fit_standardisation(tabular)
    model = create_model(
        "dmfn",
        backbone=backbone,
        n_classes=len(taxonomy),
        n_tabular=tabular.shape[1],
        tabular_mean=mean,
        tabular_std=std,
        embed_dim=32,
    )
    optimiser = torch.optim.AdamW(model.parameters(), lr=1e-3)
    model.train()
    losses = []
    for _ in range(steps):
        optimiser.zero_grad()
        loss = torch.nn.functional.cross_entropy(
            model(torch.from_numpy(views), torch.from_numpy(tabular)), labels
        )
        loss.backward()
        optimiser.step()
        losses.append(loss.item())
    model.eval()
    return Checkpoint(
        model_config=dict(model.config),
        state_dict={k: v.detach().clone() for k, v in model.state_dict().items()},
        preprocess_params=TEST_PARAMS,
        taxonomy=taxonomy,
        ctc_features=S.DEFAULT_CTC_FEATURES,
        metrics={"train_loss_last": losses[-1]},
        training={"synthetic": True, "steps": steps, "seed": seed},
        versions={"torch": str(torch.__version__), "numpy": np.__version__},
    ).save(path)


def export_repository(checkpoint: Path, out: Path, **settings: Any) -> tuple[Path, dict]:
    parity = export(checkpoint, out, ServingSettings(**settings), parity_studies=4)
    return out, parity


def reference_outputs(checkpoint: Path, studies: list[RawStudy]) -> dict[str, np.ndarray]:
    """The in-process PyTorch pipeline on ``studies``: preprocess_study -> model -> softmax.

    Returns probs [N, C], measurements [N, 5], the net's views / tabular / logits and, per
    class, malignant, labels, management.
    """
    ckpt = load_checkpoint(checkpoint)
    pre = preprocess_studies(studies, ckpt.preprocess_params)
    views = torch.from_numpy(np.stack([p.views for p in pre]))
    tabular = torch.from_numpy(np.stack([p.tabular for p in pre]))
    measurements = np.stack([p.measurements for p in pre])
    with torch.no_grad():
        logits = ckpt.build_model()(views, tabular)
    return {
        "views": views.numpy(),
        "tabular": tabular.numpy(),
        "logits": logits.numpy(),
        "probs": torch.softmax(logits.double(), dim=1).float().numpy(),
        "measurements": measurements,
        "malignant": np.array(ckpt.taxonomy.malignant_mask),
        "labels": np.array(ckpt.taxonomy.names),
        "management": np.array([c.management for c in ckpt.taxonomy.classes]),
    }


def study_arrays(studies: list[RawStudy]) -> dict[str, np.ndarray]:
    """Stack same-shape studies into request tensors with a leading batch axis."""
    return {
        S.CT_HU: np.stack([s.hu for s in studies]),
        S.SPACING_MM: np.stack([s.spacing_mm for s in studies]),
        S.ROI_MASK: np.stack([s.mask for s in studies]),
        S.CTC: np.stack([s.ctc for s in studies]),
        S.CLINICAL: np.stack([s.clinical for s in studies]),
    }


def infer_inputs(module: Any, arrays: dict[str, np.ndarray], dtypes: dict[str, str] | None = None):
    """tritonclient.http / tritonclient.grpc InferInput list; ``dtypes`` overrides wire dtypes."""
    spec = {t.name: t.dtype for t in S.Schema().request_inputs}
    spec.update(dtypes or {})
    inputs = []
    for name, array in arrays.items():
        item = module.InferInput(name, list(array.shape), spec[name])
        item.set_data_from_numpy(array)
        inputs.append(item)
    return inputs


def model_stats(client: Any, model: str) -> tuple[int, int]:
    """(inference_count, execution_count) of ``model`` from Triton's statistics (HTTP client)."""
    stats = client.get_inference_statistics(model)["model_stats"][0]
    return int(stats["inference_count"]), int(stats["execution_count"])
