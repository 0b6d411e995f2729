"""Helpers for the serving tests: a tiny trained checkpoint, its exported repository, request
builders for tritonclient (HTTP and gRPC) and the in-process PyTorch reference pipeline."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import torch

from dmfn.client.sdk import infer_inputs  # noqa: F401  (re-exported for the tests)
from dmfn.contract import schema as S
from dmfn.contract.management import load_management
from dmfn.contract.ood import energy_score
from dmfn.contract.params import PreprocessParams
from dmfn.contract.postprocess import softmax
from dmfn.contract.server import ServerContract
from dmfn.contract.study import Study
from dmfn.contract.taxonomy import load_taxonomy
from dmfn.contract.wire import build_request
from dmfn.preprocess import preprocess_request
from dmfn.serving.config import ServingSettings
from dmfn.synth.crops import synthetic_crops
from dmfn.training.checkpoint import Checkpoint, load_checkpoint
from dmfn.training.export import export
from dmfn.training.untrained import untrained_model

#: Small but real preprocessing: 64-pixel views; a voxel cap low enough to test cheaply.
TEST_PARAMS = PreprocessParams(view_size=64, max_voxels=2**20)
TINY_BACKBONE = "regnetx_tiny"
#: CTC range (pg/ml) recorded in the tiny checkpoint: where synthetic_crop's lognormal(2.3, 0.4)
#: draws fall (its 0.01 % and 99.99 % quantiles are 2.5 and 44), so every test study is accepted.
SYNTHETIC_CTC_RANGE = ((1.0, 45.0),)
#: Calibration temperature recorded in the tiny checkpoint. Not 1 on purpose: at T = 1 a served
#: postprocess that ignored the temperature gave the same PROBS, so no served-vs-PyTorch
#: test could notice. The tiny net's logits span about 0.3, so dividing them by 1.7 moves its
#: probabilities by about 3e-3, some 30 times the parity tolerance (1e-4); above 1, as the
#: temperatures fitted to over-confident nets are.
TINY_TEMPERATURE = 1.7
#: The tiny model's contract without limits (for building requests in-process).
CONTRACT = ServerContract(
    TEST_PARAMS.roi_margin_mm, S.DEFAULT_CTC_FEATURES, tuple(load_taxonomy().names)
)


def make_studies(n: int, seed: int) -> list[Study]:
    """``n`` synthetic lesion crops (:func:`dmfn.synth.crops.synthetic_crops`)."""
    return synthetic_crops(n, seed)


def inputs_of(studies: list[Study], params: PreprocessParams = TEST_PARAMS):
    """VIEWS [N, 3, S, S] and TABULAR [N, K+5] of ``studies`` as the server computes them, plus
    the measurements [N, 5]: their requests through :func:`dmfn.preprocess.preprocess_request`."""
    pre = [preprocess_request(build_request(s, CONTRACT), params)[0] for s in studies]
    return (
        np.stack([p.views for p in pre]),
        np.stack([p.tabular for p in pre]),
        np.stack([p.measurements for p in pre]),
    )


def make_tiny_checkpoint(
    path: Path, backbone: str = TINY_BACKBONE, steps: int = 3, seed: int = 0
) -> Path:
    """Train a tiny DMFN a few AdamW steps on synthetic preprocessed studies and save it (with
    the calibration temperature :data:`TINY_TEMPERATURE`)."""
    torch.manual_seed(seed)
    taxonomy = load_taxonomy()
    views, tabular, _ = inputs_of(make_studies(8, seed))
    labels = torch.from_numpy(np.arange(len(views)) % len(taxonomy))
    model = untrained_model("dmfn", backbone, len(taxonomy), tabular, embed_dim=32)
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
    # The class sets and the OOD flag are fitted from this (contract/uncertainty.py): the
    # probabilities of other synthetic studies as its "validation" split, and energy scores of
    # 24 more as its "training" split (its 8 training studies are too few for a 5 % threshold);
    # computed by the model, as dmfn train does.
    val_views, val_tabular, _ = inputs_of(make_studies(24, seed + 1))
    train_views, train_tabular, _ = inputs_of(make_studies(24, seed + 2))
    with torch.no_grad():
        val_logits = model(torch.from_numpy(val_views), torch.from_numpy(val_tabular)).numpy()
        train_logits = model(torch.from_numpy(train_views), torch.from_numpy(train_tabular)).numpy()
    n_val = len(val_views)
    calibration = {
        "class_names": list(taxonomy.names),
        "val_probs": softmax(val_logits, TINY_TEMPERATURE),
        "val_labels": (np.arange(n_val) % len(taxonomy)).astype(np.int64),
        "val_image_ids": [f"val_{i}" for i in range(n_val)],
        "val_patient_ids": [f"val_{i}" for i in range(n_val)],
        "train_ood_scores": energy_score(train_logits).astype(np.float32),
        "temperature": TINY_TEMPERATURE,
        "ood_score": "energy",
    }
    return Checkpoint(
        model_config=dict(model.config),
        state_dict={k: v.detach().clone() for k, v in model.state_dict().items()},
        preprocess_params=TEST_PARAMS,
        taxonomy=taxonomy,
        ctc_features=S.DEFAULT_CTC_FEATURES,
        ctc_observed_range=SYNTHETIC_CTC_RANGE,
        temperature=TINY_TEMPERATURE,
        metrics={"train_loss_last": losses[-1]},
        training={"synthetic": True, "steps": steps, "seed": seed},
        versions={"torch": str(torch.__version__), "numpy": np.__version__},
        calibration=calibration,
    ).save(path)


def export_repository(checkpoint: Path, out: Path, **settings: Any) -> tuple[Path, dict]:
    parity = export(checkpoint, out, ServingSettings(**settings), parity_studies=4)
    return out, parity


def reference_outputs(checkpoint: Path, studies: list[Study]) -> dict[str, np.ndarray]:
    """The in-process PyTorch pipeline on ``studies``: request -> preprocess_request -> model ->
    ``softmax(logits / T)``, T the checkpoint's calibration temperature.

    Returns probs [N, C], measurements [N, 5], the net's views / tabular / logits, per class
    malignant and labels, and per study the management the default policy suggests.
    """
    ckpt = load_checkpoint(checkpoint)
    return reference_from_inputs(ckpt, *inputs_of(studies, ckpt.preprocess_params))


def reference_from_inputs(
    ckpt: Checkpoint, views_np: np.ndarray, tabular_np: np.ndarray, measurements: np.ndarray
) -> dict[str, np.ndarray]:
    """:func:`reference_outputs` from already preprocessed inputs."""
    views, tabular = torch.from_numpy(views_np), torch.from_numpy(tabular_np)
    with torch.no_grad():
        logits = ckpt.build_model()(views, tabular)
    # the calibration temperature, as the served postprocess must apply it (computed here with
    # torch, not with dmfn.contract.postprocess, so that a change there cannot hide)
    probs = torch.softmax(logits.double() / ckpt.temperature, dim=1).float().numpy()
    return {
        "views": views.numpy(),
        "tabular": tabular.numpy(),
        "logits": logits.numpy(),
        "probs": probs,
        "measurements": measurements,
        "malignant": np.array(ckpt.taxonomy.malignant_mask),
        "labels": np.array(ckpt.taxonomy.names),
        "management": np.array(load_management().suggest(probs, ckpt.taxonomy.names)),
    }


def study_arrays(studies: list[Study]) -> dict[str, np.ndarray]:
    """The wire tensors of ``studies`` (:func:`dmfn.contract.wire.build_request`, what the SDK
    sends), one batch row each (the studies may differ in shape)."""
    encoded = [build_request(s, CONTRACT) for s in studies]
    return {name: np.concatenate([e[name] for e in encoded]) for name in encoded[0]}


def model_stats(client: Any, model: str) -> tuple[int, int]:
    """(inference_count, execution_count) of ``model`` from Triton's statistics (HTTP client)."""
    stats = client.get_inference_statistics(model)["model_stats"][0]
    return int(stats["inference_count"]), int(stats["execution_count"])
