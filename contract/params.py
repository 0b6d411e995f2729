"""The preprocessing parameter object shared by training and serving.

It is stored in every checkpoint and in the Triton model repository, so that the server runs
exactly the preprocessing the model was trained with (no train/serve skew).
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import math
from dataclasses import dataclass
from typing import Any, Literal

PARAMS_VERSION = 1
#: Side of each of the three orthogonal views, pixels (the model's input size).
DEFAULT_VIEW_SIZE = 128

#: Explicit-Euler stability bounds on dt of the fourth-order PDE: 2 / (largest eigenvalue of
#: Lap^2) = 2 / (4 dim)^2. Measured: unstable modes appear at 0.0315 in 2D and 0.014 in 3D.
STABILITY_BOUND = {"3d": 1.0 / 72.0, "2d": 1.0 / 32.0}
_FLOAT_FIELDS = (
    "pde_k_hu",
    "pde_dt",
    "pde_fidelity",
    "target_spacing_mm",
    "window_level_hu",
    "window_width_hu",
    "roi_margin_mm",
)
_INT_FIELDS = ("pde_iterations", "view_size", "max_voxels", "version")


@dataclass(frozen=True)
class PreprocessParams:
    """All parameters of :func:`dmfn.preprocess.preprocess_study`, in the order they are applied.

    Units: HU for intensities, mm for lengths. Defaults follow docs/architecture.md and the paper
    (WL 50 / WW 350, 1 mm isotropic voxels).
    """

    #: Fourth-order PDE (You-Kaveh) edge threshold k in HU; iterations; explicit-Euler step
    #: (3D bound 1/72); "3d" (7-point) or "2d" (5-point per axial slice); fidelity lambda.
    pde_k_hu: float = 20.0
    pde_dt: float = 0.0125
    pde_iterations: int = 20
    pde_mode: Literal["3d", "2d"] = "3d"
    pde_fidelity: float = 0.0
    #: Isotropic output spacing in mm and the interpolation order.
    target_spacing_mm: float = 1.0
    interpolation: Literal["linear", "cubic"] = "linear"
    #: Soft-tissue window (the paper's WL 50 / WW 350), mapped to [0, 1].
    window_level_hu: float = 50.0
    window_width_hu: float = 350.0
    #: Margin around the lesion box in mm (client crop and server ROI).
    roi_margin_mm: float = 10.0
    #: Side S of each of the three orthogonal views, pixels.
    view_size: int = DEFAULT_VIEW_SIZE
    #: Upper bound on voxels of any intermediate volume (guards memory on the server).
    max_voxels: int = 2**26
    version: int = PARAMS_VERSION

    def __post_init__(self) -> None:
        if self.pde_mode not in ("3d", "2d"):
            raise ValueError(f"argument 'pde_mode': must be '3d' or '2d', got {self.pde_mode!r}")
        if self.interpolation not in ("linear", "cubic"):
            raise ValueError(
                f"argument 'interpolation': must be 'linear' or 'cubic', got {self.interpolation!r}"
            )
        for name in _FLOAT_FIELDS:
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int | float):
                raise ValueError(f"argument '{name}': must be a number, got {value!r}")
            if not math.isfinite(value):
                raise ValueError(f"argument '{name}': must be finite, got {value!r}")
        for name in _INT_FIELDS:
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int):
                raise ValueError(f"argument '{name}': must be an integer, got {value!r}")
        for name in ("pde_k_hu", "pde_dt", "target_spacing_mm", "window_width_hu", "max_voxels"):
            if not getattr(self, name) > 0:
                raise ValueError(f"argument '{name}': must be > 0, got {getattr(self, name)!r}")
        for name in ("pde_iterations", "roi_margin_mm", "pde_fidelity"):
            if getattr(self, name) < 0:
                raise ValueError(f"argument '{name}': must be >= 0, got {getattr(self, name)!r}")
        bound = STABILITY_BOUND[self.pde_mode]
        if self.pde_dt > bound:
            raise ValueError(
                f"argument 'pde_dt': must be <= {bound:.6g} (explicit-scheme stability bound of "
                f"mode {self.pde_mode!r}), got {self.pde_dt!r}"
            )
        if self.view_size < 8:
            raise ValueError(f"argument 'view_size': must be >= 8 pixels, got {self.view_size}")

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    def to_json(self) -> str:
        return json.dumps(self.to_dict(), sort_keys=True, indent=2)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> PreprocessParams:
        known = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(data) - known)
        if unknown:
            raise ValueError(f"argument 'params': unknown preprocessing parameters {unknown}")
        if data.get("version", PARAMS_VERSION) != PARAMS_VERSION:
            raise ValueError(
                f"argument 'params': version {data['version']} is not supported "
                f"(this dmfn reads version {PARAMS_VERSION})"
            )
        return cls(**data)

    @classmethod
    def from_json(cls, text: str) -> PreprocessParams:
        return cls.from_dict(json.loads(text))

    def digest(self) -> str:
        """A stable SHA-256 of the parameters (used as a cache key)."""
        return hashlib.sha256(self.to_json().encode()).hexdigest()
