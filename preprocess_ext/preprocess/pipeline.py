"""The whole preprocessing chain of one study, shared by training and the Triton preprocess model.

Order (docs/architecture.md): validate -> crop ROI + margin -> PDE denoise -> isotropic resample (volume and
mask) -> window -> lesion measurements -> three orthogonal views. Axes (z, y, x), spacing in mm,
intensities in HU.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass

import numpy as np

from dmfn.contract import schema as S
from dmfn.contract.errors import InvalidInput
from dmfn.contract.limits import InputLimits
from dmfn.contract.params import PreprocessParams
from dmfn.contract.roi import mask_bbox, roi_box
from dmfn.contract.schema import (
    AGE_RANGE_YEARS,
    CLINICAL_FIELDS,
    LOCATION_SLICE,
    tabular_measurements,
)
from dmfn.contract.wire import batch_size, decode_item, where_in_batch

from . import gpu
from ._validate import as_mask, as_spacing, as_volume, check_voxel_cap
from .gpu import check_backend
from .pde import PdeArguments, _denoise
from .spatial import _lesion_box, _measure, _resample, _views, _window, isotropic_shape

#: A resampled mask voxel belongs to the lesion when its linear interpolation is >= this.
MASK_THRESHOLD = 0.5
#: preprocess_study's argument -> the request tensor that carries it (to name it in errors).
ARGUMENT_TO_TENSOR: dict[str, str] = {
    "hu": S.CT_HU,
    "spacing_mm": S.SPACING_MM,
    "mask": S.ROI_MASK,
    "ctc": S.CTC,
    "clinical": S.CLINICAL,
}


@dataclass(frozen=True)
class PreprocessedStudy:
    """The model inputs of one study (see :mod:`dmfn.contract.schema`).

    Attributes:
        views: float32 (3, S, S): axial, coronal, sagittal windowed views in [0, 1].
        tabular: float32 (K + 5,): the CTC features, then the clinical fields; (K + 8,) with
            ``params.tabular_measurements``, then ``schema.TABULAR_MEASUREMENT_FIELDS`` (mm).
        measurements: float32 (5,) in ``MEASUREMENT_FIELDS`` order (mm, mm^2, mm^3).
    """

    views: np.ndarray
    tabular: np.ndarray
    measurements: np.ndarray


def _as_vector(value: object, argument: str, length: int | None = None) -> np.ndarray:
    """A finite 1D float32 vector (of ``length`` values when given)."""
    if not isinstance(value, np.ndarray | Sequence) or isinstance(value, str | bytes):
        raise InvalidInput(argument, f"must be a 1D array, got {type(value).__name__}")
    arr = np.asarray(value)
    if arr.dtype.kind not in "iuf":
        raise InvalidInput(argument, f"dtype must be a real integer or float type, got {arr.dtype}")
    if arr.ndim != 1 or arr.size == 0 or (length is not None and arr.size != length):
        want = f"{length} values" if length is not None else "a non-empty 1D vector"
        raise InvalidInput(argument, f"must be {want}, got shape {arr.shape}")
    out = arr.astype(np.float32)
    if not np.isfinite(out).all():
        raise InvalidInput(argument, "must contain only finite values (found NaN/Inf)")
    return out


def validate_clinical(clinical: object) -> np.ndarray:
    """CLINICAL fp32[5] (``schema.CLINICAL_FIELDS``): age in ``schema.AGE_RANGE_YEARS`` (years,
    inclusive), sex_male 0/1, location one-hot."""
    vec = _as_vector(clinical, "clinical", len(CLINICAL_FIELDS))
    age, sex = float(vec[0]), float(vec[1])
    if not AGE_RANGE_YEARS[0] <= age <= AGE_RANGE_YEARS[1]:
        raise InvalidInput(
            "clinical", f"{CLINICAL_FIELDS[0]} must be within {AGE_RANGE_YEARS} years, got {age}"
        )
    if sex not in (0.0, 1.0):
        raise InvalidInput("clinical", f"{CLINICAL_FIELDS[1]} must be 0 or 1, got {sex}")
    location = vec[LOCATION_SLICE]
    if not (np.isin(location, (0.0, 1.0)).all() and location.sum() == 1.0):
        raise InvalidInput(
            "clinical",
            f"{', '.join(CLINICAL_FIELDS[LOCATION_SLICE])} must be a "
            f"one-hot (0/1 values summing to 1), got {location.tolist()}",
        )
    return vec


def resample_mask(
    mask: np.ndarray, spacing_mm: Sequence[float], target_mm: float, max_voxels: int
) -> np.ndarray:
    """Resample a binary (z, y, x) mask like the volume: linear as float, then >= 0.5.

    If nothing reaches the threshold (a lesion thinner than the new voxels), the output voxel
    nearest the original mask's centroid is kept so that the mask never becomes empty.
    Returns uint8.
    """
    lesion = as_mask(mask, np.shape(mask))
    return _resample_mask(lesion, as_spacing(spacing_mm, 3), float(target_mm), max_voxels)


def _resample_mask(
    lesion: np.ndarray, spacing_mm: tuple[float, ...], target_mm: float, max_voxels: int
) -> np.ndarray:
    """:func:`resample_mask` of a valid non-empty uint8 mask."""
    prob = _resample(lesion.astype(np.float32), spacing_mm, target_mm, "linear", max_voxels)
    out = np.empty(prob.shape, np.uint8)
    np.greater_equal(prob, MASK_THRESHOLD, out=out.view(bool))  # one pass, no bool temporary
    if not bool(out.any()):
        centroid = np.array([float(c.mean()) for c in lesion.nonzero()])
        idx = np.floor(centroid * np.asarray(spacing_mm) / target_mm + 0.5).astype(np.int64)
        out[tuple(np.clip(idx, 0, np.array(out.shape) - 1))] = 1
    return out


def preprocess_study(
    hu: np.ndarray,
    spacing_mm: Sequence[float],
    mask: np.ndarray,
    ctc: np.ndarray | Sequence[float],
    clinical: np.ndarray | Sequence[float],
    params: PreprocessParams | None = None,
    *,
    backend: str = "cpu",
) -> PreprocessedStudy:
    """Turn one study into the model inputs (the chain of docs/architecture.md, in this order).

    1. validate every argument (ValueError naming it);
    2. crop the lesion box + ``params.roi_margin_mm`` (idempotent on a client-side crop);
    3. :func:`~dmfn.preprocess.denoise_pde` with ``params.pde_*`` on the study's voxel spacing
       (the unit voxel grid if not ``params.pde_spacing_aware``; skipped at 0 iterations);
    4. :func:`resample_isotropic` to ``params.target_spacing_mm`` with ``params.interpolation``;
       the mask by :func:`resample_mask`;
    5. :func:`window` with ``params.window_level_hu`` / ``params.window_width_hu``;
    6. :func:`measure_lesion` on the resampled mask (appended to the tabular row as
       ``schema.TABULAR_MEASUREMENT_FIELDS`` when ``params.tabular_measurements``);
    7. :func:`orthogonal_views` of ``params.view_size`` through the lesion centroid, covering
       the lesion box + margin, filled with 0 outside the crop; with
       ``params.lesion_only_views`` (the default) 0 outside the lesion mask too.

    Args:
        hu: CT volume (z, y, x) in HU, int16 or any real dtype (converted to float32); bool,
            complex and object arrays are refused; non-contiguous arrays are copied.
        spacing_mm: voxel spacing (z, y, x) in mm.
        mask: lesion mask of ``hu``'s shape, nonzero = lesion (uint8 on the wire; bool/numeric
            accepted), must not be empty.
        ctc: CTC features fp32[K] (finite).
        clinical: fp32[5] as ``schema.CLINICAL_FIELDS``.
        params: preprocessing parameters (default :class:`PreprocessParams()`); every
            intermediate volume is capped at ``params.max_voxels``.
        backend: "cpu" (the C++ kernels) or "cupy": the whole chain on the current CUDA device
            (``hu`` and ``mask`` numpy or cupy; ``views`` comes back as a cupy array, ready for
            the net through DLPack). Only the lesion box, centroid, per-slice counts and largest
            slice of the mask reach the host (for the crop, the view geometry and the RECIST
            measurements); the CT voxels never do.
    """
    params = PreprocessParams() if params is None else params
    if not isinstance(params, PreprocessParams):
        raise InvalidInput("params", f"must be a PreprocessParams, got {type(params).__name__}")
    cap = params.max_voxels
    backend = check_backend(backend)
    # Checked whole, converted to float32 only where it is used: the ROI crop.
    volume = as_volume(hu, "hu", ndims=(3,), cap=cap, backend=backend, convert=False)
    spacing = as_spacing(spacing_mm, 3)
    lesion = as_mask(mask, volume.shape, backend=backend, convert=False, check_empty=False)
    tabular = np.concatenate([_as_vector(ctc, "ctc"), validate_clinical(clinical)])

    # Everything is valid from here on (the parameters checked themselves when made): the
    # steps below call the kernels' unchecked cores, once each.
    box = roi_box(*mask_bbox(lesion), volume.shape, params.roi_margin_mm, spacing)
    xp = gpu.cupy_module() if backend == "cupy" else np
    roi_volume = xp.ascontiguousarray(volume[box], dtype=np.float32)
    roi_mask = xp.ascontiguousarray(lesion[box] != 0, dtype=np.uint8)
    target = params.target_spacing_mm
    # Refuse before any heavy work if the resampled crop would exceed the cap.
    check_voxel_cap(isotropic_shape(roi_volume.shape, spacing, target), "hu", cap)
    denoised = roi_volume
    if params.pde_iterations > 0:
        pde = PdeArguments(
            roi_volume, params.pde_k_hu, params.pde_dt, params.pde_iterations,
            params.pde_mode, params.pde_fidelity,
            spacing if params.pde_spacing_aware else None,
        )  # fmt: skip
        denoised = _denoise(pde)
    iso = _resample(denoised, spacing, target, params.interpolation, cap)
    iso_mask = _resample_mask(roi_mask, spacing, target, cap)
    windowed = _window(iso, params.window_level_hu, params.window_width_hu)
    if params.lesion_only_views:
        windowed *= iso_mask  # 0 outside the lesion: no surrounding tissue, no compartment
    measurements = _measure(iso_mask, (target,) * 3).as_array()
    margin = params.roi_margin_mm / target
    views = _views(windowed, *_lesion_box(iso_mask), params.view_size, margin, 0.0)
    if params.tabular_measurements:
        tabular = np.concatenate([tabular, tabular_measurements(measurements)])
    return PreprocessedStudy(views=views, tabular=tabular, measurements=measurements)


def preprocess_request(
    arrays: Mapping[str, np.ndarray],
    params: PreprocessParams,
    limits: InputLimits | None = None,
    ctc_names: Sequence[str] | None = None,
    *,
    backend: str = "cpu",
) -> list[PreprocessedStudy]:
    """The server's preprocessing of one request (the wire tensors of :mod:`dmfn.contract.wire`,
    batch axis first): each study decoded, checked against ``limits`` when given (the served
    model's input limits; training and the export check pass none), then
    :func:`preprocess_study`. The one path from request bytes to model inputs, used by the Triton
    ``preprocess`` model, training, the export check and the demo. ``backend="cupy"``: every
    study runs on the current CUDA device (views come back as cupy arrays).

    Raises:
        InvalidInput: naming the request tensor (``kind="input"``) and, in a request of several
            studies, which study.
    """
    batch = batch_size(arrays)
    out = []
    for i in range(batch):
        try:
            study = decode_item(arrays, i, limits, params.max_voxels)
            if limits is not None:
                limits.check_values(
                    study.spacing_mm, study.ctc, study.clinical, study.mask, ctc_names
                )
            out.append(
                preprocess_study(
                    study.hu,
                    study.spacing_mm,
                    study.mask,
                    study.ctc,
                    study.clinical,
                    params=params,
                    backend=backend,
                )
            )
        except InvalidInput as err:
            tensor = err.name if err.kind == "input" else ARGUMENT_TO_TENSOR.get(err.name)
            if tensor is None:
                raise
            raise InvalidInput(tensor, where_in_batch(i, batch) + err.rule, "input") from None
    return out
