"""The preprocessing parameter object shared by training and serving.

It is stored in every checkpoint and in the Triton model repository, so that the server runs
exactly the preprocessing the model was trained with (no train/serve skew).
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import math
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, Literal

from .errors import InvalidInput

#: Version 2 added ``pde_spacing_aware`` and changed the PDE defaults (docs/preprocessing.md);
#: version 3 added ``lesion_only_views`` (on by default).
PARAMS_VERSION = 3
#: What an older parameter set meant for the fields later versions added or re-defaulted: a
#: stored set of that version lacks them and gets these values (the behaviour it was made with).
#: Version 1 (the unit-grid PDE) is refused: retrain and re-export such a model.
_OLDER_VERSION_DEFAULTS: dict[int, dict[str, Any]] = {2: {"lesion_only_views": False}}
#: Side of each of the three orthogonal views, pixels (the model's input size).
DEFAULT_VIEW_SIZE = 128


#: The PDE's stencil: 7-point in 3D, or 5-point on each slice in 2D.
PdeMode = Literal["3d", "2d"]


def pde_stability_bound(mode: PdeMode = "3d", spacing_mm: Sequence[float] | None = None) -> float:
    """The largest stable explicit-Euler step dt of the PDE (in units of h_min^4) for voxels of
    ``spacing_mm``.

    The Laplacian is ``Lap u = sum_a w_a (u[a-1] - 2 u + u[a+1])`` with ``w_a = (h_min / h_a)^2``
    over the stencil's axes a (z, y, x in ``"3d"``; y, x in ``"2d"``), h_a the spacing in mm and
    h_min the smallest of them. Its largest eigenvalue (in magnitude) is ``4 sum_a w_a``, so
    linearised at c = 1 the step ``u <- u - dt Lap^2 u`` is stable for::

        dt <= 2 / (4 sum_a w_a)^2 = 1 / (8 (sum_a w_a)^2)

    In physical units (``dt_mm4 = dt h_min^4``, ``Lap`` in HU/mm^2) this is
    ``dt_mm4 <= 1 / (8 (sum_a 1 / h_a^2)^2)``: it scales with h_min^4. As every w_a <= 1 and the
    finest axis has w = 1, the normalised bound lies between ``1 / (8 D^2)`` (isotropic voxels:
    1/72 in 3D, 1/32 in 2D, D the number of stencil axes) and 1/8; so one dt at or below the
    isotropic bound is stable for every spacing. ``spacing_mm`` (z, y, x) or (y, x) in mm; None
    means isotropic voxels (the worst case). A 2D mode uses the last two spacings.

    Raises InvalidInput (a ValueError) naming ``mode`` or ``spacing_mm``.
    """
    if mode not in ("3d", "2d"):
        raise InvalidInput("mode", f"must be '3d' or '2d', got {mode!r}")
    if spacing_mm is None:
        spacing: tuple[float, ...] = (1.0,) * (3 if mode == "3d" else 2)
    else:
        try:
            spacing = tuple(float(h) for h in spacing_mm)
        except (TypeError, ValueError) as err:
            raise InvalidInput("spacing_mm", f"must be numbers in mm, got {spacing_mm!r}") from err
        if len(spacing) not in (2, 3):
            raise InvalidInput("spacing_mm", f"must have 2 or 3 values, got {len(spacing)}")
        if not all(math.isfinite(h) and h > 0 for h in spacing):
            raise InvalidInput(
                "spacing_mm", f"every spacing must be finite and > 0 mm, got {spacing}"
            )
        if mode == "2d":
            spacing = spacing[-2:]
    h_min = min(spacing)
    weight_sum = sum((h_min / h) ** 2 for h in spacing)
    return 1.0 / (8.0 * weight_sum**2)


#: The bound of each mode on isotropic voxels: the smallest over all spacings, so a dt at or
#: below it is stable for every spacing (:func:`pde_stability_bound`). Measured on the unit grid:
#: unstable modes appear at dt = 0.0315 in 2D and 0.014 in 3D.
STABILITY_BOUND = {"3d": pde_stability_bound("3d"), "2d": pde_stability_bound("2d")}
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

    #: Fourth-order PDE (You-Kaveh): edge threshold k in HU per h_min^2 (h_min the finest voxel
    #: spacing of the stencil); iterations; explicit-Euler step in units of h_min^4 (at most
    #: STABILITY_BOUND[mode], which is stable for every spacing; the default is 0.8 of the 2D
    #: bound, above the 3D one, so "3d" needs a pde_dt <= 1/72 too); "2d" (5-point per axial
    #: slice) or "3d" (7-point); fidelity lambda. The paper gives no values: these were chosen
    #: by measurement on a CT-like phantom, benchmarks/pde_defaults.py (docs/preprocessing.md).
    pde_k_hu: float = 30.0
    pde_dt: float = 0.025
    pde_iterations: int = 20
    pde_mode: PdeMode = "2d"
    pde_fidelity: float = 0.0
    #: True: the Laplacian weighs each axis by (h_min / h_a)^2 (physical units, the voxel
    #: spacing of the study); False: the unit voxel grid (version 1's behaviour).
    pde_spacing_aware: bool = True
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
    #: True: the views show the lesion only (0 outside the resampled mask), as the paper's
    #: methods extract the lesion "based on the segmentation mask"; the surrounding tissue, and
    #: with it the compartment, is then not in the image. False: the lesion box + margin.
    lesion_only_views: bool = True
    #: Upper bound on voxels of any intermediate volume (guards memory on the server).
    max_voxels: int = 2**26
    version: int = PARAMS_VERSION
    #: Append the lesion-size features (schema.TABULAR_MEASUREMENT_FIELDS, from the mask after
    #: resampling) to TABULAR, so the tabular branch sees the lesion's size. Written to JSON only
    #: when true, so parameter sets (and cache keys) made before it existed stay the same.
    tabular_measurements: bool = False

    def __post_init__(self) -> None:
        if self.pde_mode not in ("3d", "2d"):
            raise ValueError(f"argument 'pde_mode': must be '3d' or '2d', got {self.pde_mode!r}")
        if not isinstance(self.tabular_measurements, bool):
            raise ValueError(
                "argument 'tabular_measurements': must be true or false, got "
                f"{self.tabular_measurements!r}"
            )
        if not isinstance(self.lesion_only_views, bool):
            raise ValueError(
                f"argument 'lesion_only_views': must be true or false, got {self.lesion_only_views!r}"
            )
        if not isinstance(self.pde_spacing_aware, bool):
            raise ValueError(
                f"argument 'pde_spacing_aware': must be true or false, got {self.pde_spacing_aware!r}"
            )
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
                f"mode {self.pde_mode!r} on isotropic voxels, the smallest over all spacings), "
                f"got {self.pde_dt!r}"
                + (" (the default pde_dt is for mode '2d')" if self.pde_dt == _DEFAULT_DT else "")
            )
        if self.view_size < 8:
            raise ValueError(f"argument 'view_size': must be >= 8 pixels, got {self.view_size}")

    def to_dict(self) -> dict[str, Any]:
        out = dataclasses.asdict(self)
        for name, default in _OMITTED_AT_DEFAULT.items():
            if out[name] == default:
                del out[name]
        return out

    def to_json(self) -> str:
        return json.dumps(self.to_dict(), sort_keys=True, indent=2)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> PreprocessParams:
        """Parameters from a dict; missing fields take the defaults of the dict's ``version``
        (the current one when absent). A version-2 dict (as stored with older checkpoints and
        model repositories) is read with that version's meaning (e.g. ``lesion_only_views``
        False: the views show the lesion box with its margin) and returned as the equivalent
        current-version parameters."""
        known = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(data) - known)
        if unknown:
            raise ValueError(f"argument 'params': unknown preprocessing parameters {unknown}")
        version = data.get("version", PARAMS_VERSION)
        if version in _OLDER_VERSION_DEFAULTS:
            data = {**_OLDER_VERSION_DEFAULTS[version], **data, "version": PARAMS_VERSION}
        elif version != PARAMS_VERSION:
            readable = ", ".join(map(str, [*sorted(_OLDER_VERSION_DEFAULTS), PARAMS_VERSION]))
            raise ValueError(
                f"argument 'params': preprocessing parameters of version {version!r} are not "
                f"supported (this dmfn reads versions {readable}); train the model again with "
                "this dmfn, then export it again"
            )
        return cls(**data)

    @classmethod
    def from_json(cls, text: str) -> PreprocessParams:
        return cls.from_dict(json.loads(text))

    def digest(self) -> str:
        """A stable SHA-256 of the parameters (used as a cache key)."""
        return hashlib.sha256(self.to_json().encode()).hexdigest()


_DEFAULT_DT = PreprocessParams.pde_dt
#: Fields added within a version, left out of to_dict at their default (stable digests).
_OMITTED_AT_DEFAULT: dict[str, Any] = {"tabular_measurements": False}
