"""The DMFN checkpoint: everything needed to rebuild, evaluate, export and serve a trained model.

One ``.pt`` file holding a plain dict (loaded with ``weights_only=True``, so a checkpoint from an
untrusted source cannot run code):

- ``format``: ``"dmfn-checkpoint/1"``
- ``model_config``: keyword arguments of :func:`dmfn.training.models.create_model`
- ``state_dict``: the weights, including the tabular standardisation buffers
- ``preprocess_params``: :class:`dmfn.preprocess.PreprocessParams` as a dict
- ``taxonomy_csv``: the taxonomy file text (class order = logit order)
- ``ctc_features``: names of the CTC features, in TABULAR order
- ``ctc_observed_range``: per CTC feature, the (min, max) seen in the training split; the served
  model accepts this range plus a margin (:class:`dmfn.contract.limits.InputLimits`)
- ``temperature``: the calibration temperature fitted on the validation split (probabilities are
  ``softmax(logits / T)``; 1 = uncalibrated), applied by the served model's postprocess
- ``metrics``, ``training`` (arguments, epoch, seed, ``date`` of training, ``synthetic``),
  ``versions`` (dmfn, torch, numpy)
- ``calibration`` (optional; absent in checkpoints written before it): the data from which
  ``dmfn export`` fits the conformal class sets and the OOD threshold at any coverage or
  false-alarm rate (:data:`CALIBRATION_FIELDS`; made by :mod:`dmfn.training.calibration`)
"""

from __future__ import annotations

import hashlib
import platform
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import torch

from dmfn import __version__
from dmfn.contract.errors import InvalidInput
from dmfn.contract.params import PreprocessParams
from dmfn.contract.predictions import Provenance
from dmfn.contract.server import ServerContract
from dmfn.contract.taxonomy import Taxonomy, parse_taxonomy
from dmfn.contract.uncertainty import (
    DEFAULT_COVERAGE,
    DEFAULT_FALSE_ALARM,
    Uncertainty,
    fit_uncertainty,
)

if TYPE_CHECKING:  # imported at run time only by build_model, as its create_model
    from dmfn.training.models import TwoInputModel

CHECKPOINT_FORMAT = "dmfn-checkpoint/1"
#: The keys of a checkpoint's ``calibration`` and what each holds (arrays are numpy in memory,
#: torch tensors in the file, so that it loads with ``weights_only``). Image level: the rows are
#: the images of the split, in manifest order, as the served model sees them one by one.
CALIBRATION_FIELDS: dict[str, str] = {
    "class_names": "list[str] [C]: the classes, in logit order",
    "val_probs": "float32 [N_val, C]: softmax(logits / temperature) of the validation images, "
    "the probabilities the served model gives",
    "val_labels": "int64 [N_val]: their classes (index into class_names)",
    "val_image_ids": "list[str] [N_val]",
    "val_patient_ids": "list[str] [N_val]: each validation image's patient",
    "train_ood_scores": "float32 [N_train]: energy score (dmfn.contract.ood, T = 1 on the raw "
    "logits) of the training images, without augmentation",
    "temperature": "float: the temperature val_probs were computed with (= the checkpoint's)",
    "ood_score": 'str: "energy"',
}
_CALIBRATION_ARRAYS = {
    "val_probs": np.float32,
    "val_labels": np.int64,
    "train_ood_scores": np.float32,
}


@dataclass
class Checkpoint:
    """A trained model with its preprocessing, taxonomy and provenance."""

    model_config: dict[str, Any]
    state_dict: dict[str, torch.Tensor]
    preprocess_params: PreprocessParams
    taxonomy: Taxonomy
    ctc_features: tuple[str, ...]
    #: Per CTC feature, (min, max) over the training split; None in a checkpoint that does not
    #: record it (``dmfn export --ctc-range`` then supplies it).
    ctc_observed_range: tuple[tuple[float, float], ...] | None = None
    #: Calibration temperature (fitted on validation; 1.0 = none).
    temperature: float = 1.0
    metrics: dict[str, Any] = field(default_factory=dict)
    training: dict[str, Any] = field(default_factory=dict)
    versions: dict[str, str] = field(default_factory=dict)
    #: Calibration data (:data:`CALIBRATION_FIELDS`); None in a checkpoint made before it
    #: (``scripts/add_calibration.py`` adds it).
    calibration: dict[str, Any] | None = None

    def contract(self) -> ServerContract:
        """What the served model publishes to clients, without input limits (``dmfn export``
        adds those): the ROI margin, the CTC feature names and the class names."""
        return ServerContract(
            self.preprocess_params.roi_margin_mm,
            tuple(self.ctc_features),
            tuple(self.taxonomy.names),
        )

    def uncertainty(
        self,
        coverage: float = DEFAULT_COVERAGE,
        method: str = "aps",
        false_alarm: float = DEFAULT_FALSE_ALARM,
    ) -> Uncertainty | None:
        """The class-set and OOD fits of this checkpoint's calibration data
        (:func:`dmfn.contract.uncertainty.fit_uncertainty`); None when it carries none (made
        before the field). The one fit of ``dmfn export`` and in-process prediction."""
        if self.calibration is None:
            return None
        return fit_uncertainty(
            self.calibration, self.taxonomy.names, self.taxonomy.malignant_mask,
            coverage=coverage, method=method, false_alarm=false_alarm,
        )  # fmt: skip

    @property
    def synthetic(self) -> bool:
        """Trained on synthetic data (unknown provenance counts as synthetic: a model card then
        warns rather than over-claims)."""
        return bool(self.training.get("synthetic", True))

    def build_model(self) -> TwoInputModel:
        """Rebuild the network from ``model_config`` and load the weights (eval mode)."""
        from dmfn.training.models import create_model

        model = create_model(**self.model_config)
        model.load_state_dict(self.state_dict)
        return model.eval()

    def save(self, path: str | Path) -> Path:
        path = Path(path)
        path.parent.mkdir(parents=True, exist_ok=True)
        payload = {
            "format": CHECKPOINT_FORMAT,
            "model_config": self.model_config,
            "state_dict": self.state_dict,
            "preprocess_params": self.preprocess_params.to_dict(),
            "taxonomy_csv": self.taxonomy.to_csv_text(),
            "taxonomy_source": self.taxonomy.source,
            "ctc_features": list(self.ctc_features),
            "ctc_observed_range": (
                None
                if self.ctc_observed_range is None
                else [[float(lo), float(hi)] for lo, hi in self.ctc_observed_range]
            ),
            "temperature": float(self.temperature),
            "metrics": self.metrics,
            "training": self.training,
            "versions": self.versions or current_versions(),
        }
        if self.calibration is not None:
            payload["calibration"] = calibration_payload(self.calibration)
        tmp = path.with_suffix(path.suffix + ".tmp")
        torch.save(payload, tmp)
        tmp.replace(path)  # atomic: a crash never leaves half a checkpoint
        return path


def current_versions() -> dict[str, str]:
    return {
        "dmfn": __version__,
        "torch": str(torch.__version__),
        "numpy": np.__version__,
        "python": platform.python_version(),
    }


def load_checkpoint(path: str | Path) -> Checkpoint:
    """Load a checkpoint written by :meth:`Checkpoint.save`; ValueError if it is not one."""
    path = Path(path)
    if path.is_dir():
        found = sorted(path.glob("seed_*/best.pt")) or sorted(path.glob("best.pt"))
        hint = f"; e.g. {found[0]}" if found else " (dmfn train writes OUT/seed_0/best.pt)"
        raise InvalidInput("checkpoint", f"{path} is a folder: give a checkpoint file{hint}")
    if not path.is_file():
        raise InvalidInput("checkpoint", f"file {path} does not exist")
    try:
        payload = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as err:  # torch raises several types for corrupt / foreign files
        # torch's own message suggests weights_only=False, which would run code from the file.
        raise ValueError(
            f"argument 'checkpoint': {path} is not a dmfn checkpoint (not readable as a "
            f"weights-only torch file: {type(err).__name__})"
        ) from err
    if not isinstance(payload, dict) or payload.get("format") != CHECKPOINT_FORMAT:
        raise ValueError(f"argument 'checkpoint': {path} is not a {CHECKPOINT_FORMAT} file")
    return Checkpoint(
        model_config=dict(payload["model_config"]),
        state_dict=payload["state_dict"],
        preprocess_params=PreprocessParams.from_dict(payload["preprocess_params"]),
        taxonomy=parse_taxonomy(
            payload["taxonomy_csv"], source=payload.get("taxonomy_source", str(path))
        ),
        ctc_features=tuple(payload["ctc_features"]),
        ctc_observed_range=_ranges(payload.get("ctc_observed_range")),
        temperature=float(payload.get("temperature", 1.0)),
        metrics=dict(payload.get("metrics", {})),
        training=dict(payload.get("training", {})),
        versions=dict(payload.get("versions", {})),
        calibration=_calibration_of(payload.get("calibration"), path),
    )


def check_calibration(calibration: dict[str, Any]) -> dict[str, Any]:
    """``calibration`` with its arrays as numpy of the stated dtypes, after checking its keys and
    shapes (InvalidInput naming ``calibration``)."""
    missing = sorted(set(CALIBRATION_FIELDS) - set(calibration))
    if missing:
        raise InvalidInput("calibration", f"lacks {missing}")
    out = dict(calibration)
    for key, dtype in _CALIBRATION_ARRAYS.items():
        value = out[key]
        if isinstance(value, torch.Tensor):
            value = value.numpy()
        out[key] = np.asarray(value).astype(dtype, copy=False)
    for key in ("class_names", "val_image_ids", "val_patient_ids"):
        out[key] = [str(v) for v in out[key]]
    n_val, n_classes = len(out["val_labels"]), len(out["class_names"])
    shapes = {
        "val_probs": (out["val_probs"].shape, (n_val, n_classes)),
        "val_labels": (out["val_labels"].shape, (n_val,)),
        "val_image_ids": ((len(out["val_image_ids"]),), (n_val,)),
        "val_patient_ids": ((len(out["val_patient_ids"]),), (n_val,)),
        "train_ood_scores": (out["train_ood_scores"].shape, (out["train_ood_scores"].size,)),
    }
    for key, (got, want) in shapes.items():
        if tuple(got) != want:
            raise InvalidInput("calibration", f"{key} has shape {tuple(got)}, expected {want}")
    if n_val and not (0 <= out["val_labels"].min() and out["val_labels"].max() < n_classes):
        raise InvalidInput("calibration", f"val_labels must be in [0, {n_classes})")
    out["temperature"] = float(out["temperature"])
    out["ood_score"] = str(out["ood_score"])
    return out


def calibration_payload(calibration: dict[str, Any]) -> dict[str, Any]:
    """``calibration`` as stored in the file: its arrays as torch tensors (``weights_only``)."""
    out = check_calibration(calibration)
    for key in _CALIBRATION_ARRAYS:
        out[key] = torch.from_numpy(np.ascontiguousarray(out[key]))
    return out


def _calibration_of(value: Any, path: Path) -> dict[str, Any] | None:
    if value is None:
        return None
    if not isinstance(value, dict):
        raise ValueError(f"argument 'checkpoint': {path} has a calibration that is not a dict")
    try:
        return check_calibration(value)
    except InvalidInput as err:
        raise ValueError(f"argument 'checkpoint': {path}: {err}") from None


def _ranges(value: Iterable[Sequence[float]] | None) -> tuple[tuple[float, float], ...] | None:
    """The recorded (low, high) of each CTC feature, as floats (None: not recorded)."""
    if value is None:
        return None
    return tuple((float(lo), float(hi)) for lo, hi in value)


def observed_range(columns: np.ndarray) -> tuple[tuple[float, float], ...]:
    """(min, max) of each column of a 2D array (rows = training images)."""
    columns = np.asarray(columns, dtype=np.float64)
    return tuple(
        (float(lo), float(hi)) for lo, hi in zip(columns.min(0), columns.max(0), strict=True)
    )


def file_sha256(path: str | Path) -> str:
    """Hex SHA-256 of a file (the identity of a checkpoint in provenance records)."""
    h = hashlib.sha256()
    with Path(path).open("rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def provenance(ckpt: Checkpoint, path: str | Path) -> Provenance:
    """Which model this is: the file's sha256, the training date, synthetic or not, the
    calibration temperature it applies and its kind (dmfn, cnn or tabular)."""
    return Provenance(
        file_sha256(path), str(ckpt.training.get("date", "")), ckpt.synthetic, ckpt.temperature,
        str(ckpt.model_config.get("kind", "")),
    )  # fmt: skip
