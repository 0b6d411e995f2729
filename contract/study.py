"""The Study type: one CT image (HU volume and its patient-space geometry), an optional lesion
mask or box, the CTC blood features and the clinical facts of the patient.

Geometry conventions (the same as DICOM's patient coordinate system, LPS):

- ``hu[k, j, i]`` is indexed (z, y, x): ``k`` the slice, ``j`` the row, ``i`` the column.
- ``spacing_mm`` is (z, y, x) in mm: slice step, row step (distance between rows), column step.
- ``origin_lps_mm`` is (x, y, z) in mm: the LPS position (x to the patient's Left, y to Posterior,
  z to Superior) of the centre of voxel ``[0, 0, 0]``, as DICOM ImagePositionPatient.
- ``direction`` is a 3x3 matrix whose COLUMNS are the unit vectors of the array axes in array
  order (z, y, x), each written in LPS components (x, y, z) like the origin: column 0 is the
  direction in which the slice index k grows, column 1 the direction in which the row index j
  grows (DICOM ImageOrientationPatient[3:6]), column 2 the direction in which the column index i
  grows (ImageOrientationPatient[0:3]).

So the LPS position (mm) of the centre of voxel (k, j, i) is
``origin_lps_mm + direction @ (spacing_mm * (k, j, i))``; :attr:`VoxelGrid.affine` is that map as a
4x4 matrix. A plain axial scan (x to the patient's left, y posterior, z from feet to head) has
:data:`AXIAL_DIRECTION`, the anti-diagonal ``[[0, 0, 1], [0, 1, 0], [1, 0, 0]]``; it is the
default when no direction is given. (It is ITK's identity direction with the columns reversed.)

The preprocessing (crop, views, measurements) assumes this axial layout: axis 0 feet -> head,
axis 1 anterior -> posterior, axis 2 patient right -> left. Every loader of :mod:`dmfn.client.io`
(``load_dicom_series``, ``load_nifti_volume``, ``load_nrrd_volume``, ``load_image``) therefore
returns its study in that layout, permuting/flipping the voxels exactly (no interpolation) with
:func:`dmfn.contract.orientation.to_axial`, and refuses oblique volumes. A Study built by hand may
have any direction: the SDK's ``build_request`` reorients it the same way before sending it.
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import cast

import numpy as np

from dmfn.contract.roi import check_bbox
from dmfn.contract.schema import (
    AGE_RANGE_YEARS,
    DEFAULT_CTC_FEATURES,
    LOCATIONS,
    SEXES,
    clinical_vector,
)

#: Largest deviation from orthonormality accepted in a direction matrix (|D^T D - I|, max entry).
#: DICOM stores direction cosines as decimal strings, NIfTI as float32: both stay far below this.
DIRECTION_TOLERANCE = 1e-4
HU_DTYPES = (np.dtype(np.int16), np.dtype(np.float32))
#: Direction of a plain axial scan: k -> +z (superior), j -> +y (posterior), i -> +x (left).
AXIAL_DIRECTION = np.array([[0.0, 0.0, 1.0], [0.0, 1.0, 0.0], [1.0, 0.0, 0.0]])
AXIAL_DIRECTION.setflags(write=False)


# --------------------------------------------------------------------------- field checks
def check_triple(
    value: object, name: str, *, positive: bool = False, owner: str = "argument"
) -> tuple[float, float, float]:
    """Three finite floats (and > 0 when ``positive``); ValueError naming ``name`` otherwise."""
    rule = "3 finite numbers" + (" > 0" if positive else "")
    try:
        values = tuple(float(v) for v in np.asarray(value, dtype=np.float64).ravel())
    except (TypeError, ValueError) as err:
        raise ValueError(f"{owner} '{name}': must be {rule}, got {value!r}") from err
    if len(values) != 3 or not all(math.isfinite(v) and (v > 0 or not positive) for v in values):
        raise ValueError(f"{owner} '{name}': must be {rule}, got {value!r}")
    return values


def check_direction(
    value: object, name: str = "direction", *, owner: str = "argument"
) -> np.ndarray:
    """A read-only 3x3 float64 orthonormal matrix (columns = unit LPS vectors of axes z, y, x).

    ``None`` gives :data:`AXIAL_DIRECTION`. Reflections (determinant -1) are allowed: a file may store any
    axis flipped. Non-orthonormal matrices (shear, gantry tilt, scaled columns) are refused.
    """
    if value is None:
        out = AXIAL_DIRECTION.copy()
    else:
        try:
            out = np.array(value, dtype=np.float64)
        except (TypeError, ValueError) as err:
            raise ValueError(f"{owner} '{name}': must be a 3x3 matrix, got {value!r}") from err
        if out.shape != (3, 3) or not np.isfinite(out).all():
            raise ValueError(
                f"{owner} '{name}': must be a finite 3x3 matrix, got shape {out.shape}"
            )
        error = float(np.abs(out.T @ out - np.eye(3)).max())
        if error > DIRECTION_TOLERANCE:
            raise ValueError(
                f"{owner} '{name}': columns must be orthonormal unit LPS vectors of the axes "
                f"(z, y, x) (|D^T D - I| = {error:.3g} > {DIRECTION_TOLERANCE}), got {out.tolist()}"
            )
    out.setflags(write=False)
    return out


def check_hu(value: object, name: str = "hu", *, owner: str = "argument") -> np.ndarray:
    """A non-empty 3D (z, y, x) int16 or finite float32 HU array (C-contiguous; not copied if so)."""
    if not isinstance(value, np.ndarray):
        raise ValueError(f"{owner} '{name}': must be a numpy.ndarray, got {type(value).__name__}")
    if value.ndim != 3 or value.size == 0:
        raise ValueError(
            f"{owner} '{name}': must be a non-empty 3D array (z, y, x), got shape {value.shape}"
        )
    if value.dtype not in HU_DTYPES:
        raise ValueError(
            f"{owner} '{name}': dtype must be int16 or float32 (HU), got {value.dtype} "
            "(convert with .astype(numpy.int16) or .astype(numpy.float32))"
        )
    if value.dtype.kind == "f" and not np.isfinite(value).all():
        raise ValueError(f"{owner} '{name}': must contain only finite HU values (found NaN/Inf)")
    return np.ascontiguousarray(value)


def check_mask(
    value: object, shape: tuple[int, ...], name: str = "mask", *, owner: str = "argument"
) -> np.ndarray:
    """A binary uint8 (z, y, x) mask of ``shape`` with values {0, 1} and at least one 1.

    ``bool`` masks are converted to uint8; other dtypes are refused.
    """
    if not isinstance(value, np.ndarray):
        raise ValueError(f"{owner} '{name}': must be a numpy.ndarray, got {type(value).__name__}")
    if value.dtype not in (np.dtype(np.uint8), np.dtype(np.bool_)):
        raise ValueError(f"{owner} '{name}': dtype must be uint8 (or bool), got {value.dtype}")
    if value.shape != tuple(shape):
        raise ValueError(
            f"{owner} '{name}': shape {value.shape} must equal the image shape {tuple(shape)}"
        )
    out = np.ascontiguousarray(value, dtype=np.uint8)
    if out.max() > 1:
        raise ValueError(f"{owner} '{name}': values must be 0 or 1, found {int(out.max())}")
    if not out.any():
        raise ValueError(f"{owner} '{name}': is empty (no voxel is 1)")
    return out


def hu_from_values(values: np.ndarray) -> np.ndarray:
    """The HU dtype policy of the loaders: int16 when every value is an integer inside the int16
    range (no information lost), else float32. Non-finite values are left for :func:`check_hu`.
    """
    info = np.iinfo(np.int16)
    if values.dtype.kind in "iu" or (
        values.dtype.kind == "f" and np.isfinite(values).all() and (values == np.rint(values)).all()
    ):
        if values.size == 0 or (values.min() >= info.min and values.max() <= info.max):
            return np.ascontiguousarray(values, dtype=np.int16)
    return np.ascontiguousarray(values, dtype=np.float32)


# --------------------------------------------------------------------------- geometry
@dataclass(frozen=True, eq=False)
class VoxelGrid:
    """The patient-space geometry of a (z, y, x) voxel array (conventions: module docstring).

    ``shape`` (z, y, x) voxels; ``spacing_mm`` (z, y, x) mm; ``origin_lps_mm`` (x, y, z) LPS mm of
    voxel [0, 0, 0]'s centre; ``direction`` 3x3, columns = unit LPS vectors of axes (z, y, x)
    (None = :data:`AXIAL_DIRECTION`).
    """

    shape: tuple[int, int, int]
    spacing_mm: tuple[float, float, float]
    origin_lps_mm: tuple[float, float, float] = (0.0, 0.0, 0.0)
    direction: np.ndarray | None = None

    def __post_init__(self) -> None:
        shape = tuple(int(s) for s in self.shape)
        if len(shape) != 3 or min(shape) < 1:
            raise ValueError(f"field 'shape': must be 3 positive voxel counts, got {self.shape}")
        object.__setattr__(self, "shape", shape)
        spacing = check_triple(self.spacing_mm, "spacing_mm", positive=True, owner="field")
        object.__setattr__(self, "spacing_mm", spacing)
        origin = check_triple(self.origin_lps_mm, "origin_lps_mm", owner="field")
        object.__setattr__(self, "origin_lps_mm", origin)
        object.__setattr__(self, "direction", check_direction(self.direction, owner="field"))

    @property
    def affine(self) -> np.ndarray:
        """4x4 map from voxel index (k, j, i, 1) in (z, y, x) order to LPS (x, y, z, 1) in mm."""
        out = np.eye(4)
        out[:3, :3] = self.direction * np.asarray(self.spacing_mm)[None, :]
        out[:3, 3] = self.origin_lps_mm
        return out

    def index_to_lps(self, index_zyx: object) -> np.ndarray:
        """LPS positions (x, y, z) mm of voxel indices given as (..., 3) in (z, y, x) order."""
        idx = np.asarray(index_zyx, dtype=np.float64)
        return idx @ self.affine[:3, :3].T + self.affine[:3, 3]

    def lps_to_index(self, points_lps: object) -> np.ndarray:
        """Fractional voxel indices (..., 3) in (z, y, x) order of LPS points (x, y, z) mm."""
        pts = np.asarray(points_lps, dtype=np.float64) - self.affine[:3, 3]
        return pts @ np.linalg.inv(self.affine[:3, :3]).T

    def __repr__(self) -> str:
        rounded = np.round(np.asarray(self.direction), 4).tolist()
        return (
            f"VoxelGrid(shape={self.shape}, spacing_mm={_fmt(self.spacing_mm)}, "
            f"origin_lps_mm={_fmt(self.origin_lps_mm)}, direction={rounded})"
        )


def _fmt(values: Sequence[float]) -> str:
    return "(" + ", ".join(f"{v:.6g}" for v in values) + ")"


# --------------------------------------------------------------------------- clinical record
@dataclass(frozen=True)
class Clinical:
    """Clinical facts: age in years (``schema.AGE_RANGE_YEARS``, inclusive), sex "M"/"F", lesion
    compartment (anterior/middle/posterior)."""

    age_years: float
    sex: str
    location: str

    def __post_init__(self) -> None:
        try:
            age = float(self.age_years)
        except (TypeError, ValueError) as err:
            raise ValueError(
                f"field 'age_years': must be a number, got {self.age_years!r}"
            ) from err
        low, high = AGE_RANGE_YEARS
        if not (math.isfinite(age) and low <= age <= high):
            raise ValueError(
                f"field 'age_years': must be finite and in [{low:g}, {high:g}] years, "
                f"got {self.age_years!r}"
            )
        object.__setattr__(self, "age_years", age)
        if self.sex not in SEXES:
            raise ValueError(f"field 'sex': must be one of {SEXES}, got {self.sex!r}")
        if self.location not in LOCATIONS:
            raise ValueError(f"field 'location': must be one of {LOCATIONS}, got {self.location!r}")

    def as_array(self) -> np.ndarray:
        """fp32[5] in ``dmfn.contract.schema.CLINICAL_FIELDS`` order (age, sex_male, one-hot x3)."""
        return clinical_vector(self.age_years, self.sex, self.location)


# --------------------------------------------------------------------------- the study
@dataclass(frozen=True, eq=False)
class Study:
    """One CT image of one patient plus its non-image data; validated on construction.

    Fields (axis and coordinate conventions: see the module docstring):
        hu: int16 or float32 array (z, y, x) in HU. Not copied when already C-contiguous.
        spacing_mm: (z, y, x) voxel spacing in mm, each > 0.
        origin_lps_mm: (x, y, z) LPS position in mm of the centre of voxel [0, 0, 0].
        direction: 3x3, columns = unit LPS vectors of the array axes (z, y, x); None = axial
            (:data:`AXIAL_DIRECTION`).
        mask: uint8 (z, y, x) lesion mask with values {0, 1} (bool is converted), or None.
        bbox: half-open voxel box (z0, y0, x0, z1, y1, x1) around the lesion, or None.
        ctc: named CTC features (the paper's: "ctc_level_pg_ml", CTC level in pg/ml); may be empty.
        clinical: :class:`Clinical` or None (images-only studies, e.g. straight from a loader).
        patient_id, image_id: identifiers (several images may share one patient).
        study_uid: the DICOM StudyInstanceUID of the image ("" when not from DICOM); like the
            other identifiers it stays on the client (audit trail, DICOM SR), never sent.
        label: the lesion class name (taxonomy) when known, else None.

    Any bad field raises ValueError naming the field and the rule.
    """

    hu: np.ndarray
    spacing_mm: tuple[float, float, float]
    origin_lps_mm: tuple[float, float, float] = (0.0, 0.0, 0.0)
    direction: np.ndarray | None = None
    mask: np.ndarray | None = None
    bbox: tuple[int, int, int, int, int, int] | None = None
    ctc: Mapping[str, float] = field(default_factory=dict)
    clinical: Clinical | None = None
    patient_id: str = "ANON"
    image_id: str = ""
    label: str | None = None
    study_uid: str = ""

    def __post_init__(self) -> None:
        hu = check_hu(self.hu, owner="field")
        grid = VoxelGrid(hu.shape, self.spacing_mm, self.origin_lps_mm, self.direction)  # type: ignore[arg-type]
        object.__setattr__(self, "hu", hu)
        object.__setattr__(self, "spacing_mm", grid.spacing_mm)
        object.__setattr__(self, "origin_lps_mm", grid.origin_lps_mm)
        object.__setattr__(self, "direction", grid.direction)
        if self.mask is not None:
            object.__setattr__(self, "mask", check_mask(self.mask, hu.shape, owner="field"))
        if self.bbox is not None:
            lo, hi = check_bbox(self.bbox, hu.shape, owner="field")
            object.__setattr__(self, "bbox", (*lo, *hi))
        object.__setattr__(self, "ctc", _check_ctc(self.ctc))
        if self.clinical is not None and not isinstance(self.clinical, Clinical):
            raise ValueError(
                f"field 'clinical': must be a Clinical or None, got {type(self.clinical).__name__}"
            )
        for name in ("patient_id", "image_id", "study_uid"):
            if not isinstance(getattr(self, name), str):
                raise ValueError(f"field '{name}': must be a str, got {getattr(self, name)!r}")
        if self.label is not None and not (isinstance(self.label, str) and self.label):
            raise ValueError(f"field 'label': must be a non-empty str or None, got {self.label!r}")

    # ------------------------------------------------------------------ derived
    @property
    def shape(self) -> tuple[int, int, int]:
        """Voxel counts (z, y, x)."""
        return self.hu.shape  # type: ignore[return-value]

    @property
    def grid(self) -> VoxelGrid:
        """The geometry of ``hu`` (shape, spacing, origin, direction)."""
        return VoxelGrid(self.shape, self.spacing_mm, self.origin_lps_mm, self.direction)

    def ctc_array(self, features: Sequence[str] = DEFAULT_CTC_FEATURES) -> np.ndarray:
        """fp32[K]: the CTC features named in ``features``, in that order.

        Raises ValueError naming a feature the study lacks (and listing those it has).
        """
        if isinstance(features, str) or len(features) == 0:
            raise ValueError(
                f"argument 'features': must be a non-empty sequence of names, got {features!r}"
            )
        missing = [f for f in features if f not in self.ctc]
        if missing:
            raise ValueError(
                f"argument 'features': study {self.image_id!r} has no CTC feature "
                f"{', '.join(repr(m) for m in missing)} (available: {sorted(self.ctc) or 'none'})"
            )
        return np.asarray([self.ctc[f] for f in features], dtype=np.float32)

    def clinical_array(self) -> np.ndarray:
        """fp32[5] clinical vector (see :meth:`Clinical.as_array`); ValueError when not set."""
        if self.clinical is None:
            raise ValueError(f"field 'clinical': study {self.image_id!r} has no clinical record")
        return self.clinical.as_array()

    # ------------------------------------------------------------------ copies
    def with_mask(self, mask: np.ndarray | None) -> Study:
        """A copy with ``mask`` (uint8/bool (z, y, x), values {0, 1}) or without a mask (None)."""
        return dataclasses.replace(self, mask=mask)

    def with_bbox(self, bbox: Sequence[int] | None) -> Study:
        """A copy with the half-open voxel box (z0, y0, x0, z1, y1, x1), or None."""
        box = None if bbox is None else cast(tuple[int, int, int, int, int, int], tuple(bbox))
        return dataclasses.replace(self, bbox=box)

    def __repr__(self) -> str:
        mask = "None" if self.mask is None else f"<{int(self.mask.sum())} voxels>"
        direction = "axial" if np.allclose(np.asarray(self.direction), AXIAL_DIRECTION) else "other"
        return (
            f"Study(patient_id={self.patient_id!r}, image_id={self.image_id!r}, "
            f"hu=<{self.hu.dtype} {self.shape}>, spacing_mm={_fmt(self.spacing_mm)}, "
            f"origin_lps_mm={_fmt(self.origin_lps_mm)}, direction={direction}, mask={mask}, "
            f"bbox={self.bbox}, ctc={dict(self.ctc)}, clinical={self.clinical}, label={self.label!r})"
        )


def _check_ctc(value: object) -> dict[str, float]:
    if not isinstance(value, Mapping):
        raise ValueError(
            f"field 'ctc': must be a mapping of feature name -> number, got {type(value).__name__}"
        )
    out: dict[str, float] = {}
    for key, raw in value.items():
        if not (isinstance(key, str) and key):
            raise ValueError(f"field 'ctc': feature names must be non-empty str, got {key!r}")
        try:
            number = float(raw)
        except (TypeError, ValueError) as err:
            raise ValueError(f"field 'ctc': feature {key!r} must be a number, got {raw!r}") from err
        if not math.isfinite(number):
            raise ValueError(f"field 'ctc': feature {key!r} must be finite, got {raw!r}")
        out[key] = number
    return out
