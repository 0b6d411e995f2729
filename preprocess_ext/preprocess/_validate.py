"""Argument checks shared by every preprocessing function.

Policy (documented in docs/preprocessing.md, "Inputs"): any real numeric dtype (int16 HU,
float64, ...) is converted to a C-contiguous float32 copy; float32 C-contiguous input is used
without copying. bool, complex, object and string arrays are refused. NaN/Inf, empty arrays,
wrong ndim and outputs above the voxel cap raise ``ValueError`` naming the argument and the rule.
"""

from __future__ import annotations

import math
import os
from collections.abc import Sequence
from typing import Any

import numpy as np

from dmfn.contract.errors import InvalidInput
from dmfn.preprocess import _core

from .gpu import is_device_array

#: Largest number of voxels any kernel may allocate for one output (float32: 4 bytes each).
#: 2**28 voxels = 1 GiB. Override with the environment variable DMFN_MAX_VOXELS or max_voxels=.
DEFAULT_MAX_VOXELS = 2**28


def max_voxels(override: int | None = None) -> int:
    """The voxel cap in force: ``override``, else ``$DMFN_MAX_VOXELS``, else the default."""
    if override is not None:
        if int(override) <= 0:
            raise InvalidInput("max_voxels", f"must be positive, got {override}")
        return int(override)
    env = os.environ.get("DMFN_MAX_VOXELS")
    if not env:
        return DEFAULT_MAX_VOXELS
    try:
        value = int(env)
    except ValueError:
        value = 0
    if value <= 0:
        raise ValueError(
            f"environment variable DMFN_MAX_VOXELS: must be a positive integer, got {env!r}"
        )
    return value


def check_voxel_cap(shape: Sequence[int], argument: str, cap: int | None = None) -> None:
    """Refuse an output of ``shape`` with more voxels than the cap."""
    n = math.prod(int(s) for s in shape)
    limit = max_voxels(cap)
    if n > limit:
        raise InvalidInput(
            argument,
            f"output shape {tuple(shape)} has {n} voxels, above the cap of "
            f"{limit} (set max_voxels= or DMFN_MAX_VOXELS to raise it)",
        )


def _array_module(value: object, argument: str, backend: str) -> tuple[Any, Any]:
    """numpy for backend "cpu" (a numpy.ndarray required), cupy for "cupy" (numpy is uploaded)."""
    if backend == "cupy":
        from .gpu import cupy_module, to_device

        return cupy_module(), to_device(value, argument)
    if not isinstance(value, np.ndarray):
        hint = " (a cupy array needs backend='cupy')" if is_device_array(value) else ""
        raise InvalidInput(argument, f"must be a numpy.ndarray, got {type(value).__name__}{hint}")
    return np, value


def as_volume(
    volume: object,
    argument: str = "volume",
    ndims: tuple[int, ...] = (2, 3),
    finite: bool = True,
    cap: int | None = None,
    backend: str = "cpu",
    convert: bool = True,
) -> Any:
    """Return ``volume`` as a C-contiguous float32 array after checking dtype, ndim and values
    (a numpy array for backend "cpu", a cupy array on the current device for "cupy").

    ``convert=False`` checks the same things but returns the array as given, for a caller that
    converts only the part it uses (the pipeline converts the ROI crop, not the whole study).
    """
    xp, array = _array_module(volume, argument, backend)
    if array.dtype.kind not in "iuf":
        raise InvalidInput(
            argument, f"dtype must be a real integer or float type, got {array.dtype}"
        )
    if array.ndim not in ndims:
        want = " or ".join(f"{d}D" for d in ndims)
        raise InvalidInput(argument, f"must be {want} (z, y, x), got ndim={array.ndim}")
    if array.size == 0:
        raise InvalidInput(argument, f"must not be empty, got shape {array.shape}")
    check_voxel_cap(array.shape, argument, cap)
    out = xp.ascontiguousarray(array, dtype=np.float32) if convert else array
    # Integer HU cannot hold NaN/Inf: only float arrays need the pass over every voxel.
    if finite and out.dtype.kind == "f" and not _all_finite(xp, out):
        raise InvalidInput(argument, "must contain only finite values (found NaN/Inf)")
    return out


def _all_finite(xp: Any, values: Any) -> bool:
    """No NaN and no Inf in a float array: the C++ check (one parallel read, no temporary) for
    C-contiguous float32 host arrays, the array module's isfinite otherwise."""
    if (
        xp is np
        and isinstance(values, np.ndarray)
        and values.dtype == np.float32
        and values.flags.c_contiguous
    ):
        return bool(_core.all_finite(values))
    return bool(xp.isfinite(values).all())


def as_mask(
    mask: object,
    shape: tuple[int, ...],
    argument: str = "mask",
    backend: str = "cpu",
    convert: bool = True,
    check_empty: bool = True,
) -> Any:
    """Return a binary mask of ``shape`` as C-contiguous uint8 (nonzero = lesion), a numpy array
    for backend "cpu", a cupy array for "cupy". ``convert=False`` checks the same things and
    returns the mask as given (nonzero = lesion), for a caller that converts only its crop.
    ``check_empty=False`` leaves the emptiness check to a caller that runs
    :func:`dmfn.contract.roi.mask_bbox` next (it raises the same error; one pass over a whole
    study's mask fewer)."""
    xp, array = _array_module(mask, argument, backend)
    if array.dtype.kind not in "biuf":
        raise InvalidInput(argument, f"dtype must be bool or numeric, got {array.dtype}")
    if array.shape != tuple(shape):
        raise InvalidInput(
            argument, f"shape {array.shape} must equal the volume's shape {tuple(shape)}"
        )
    if array.dtype.kind == "f" and not _all_finite(xp, array):
        raise InvalidInput(argument, "must contain only finite values (found NaN/Inf)")
    out = xp.ascontiguousarray(array != 0, dtype=np.uint8) if convert else array
    if check_empty and not bool(out.any()):
        raise InvalidInput(argument, "is empty (no nonzero voxel)")
    return out


def as_spacing(spacing_mm: object, ndim: int, argument: str = "spacing_mm") -> tuple[float, ...]:
    """Return the voxel spacing in mm, (z, y, x) order, as positive finite floats."""
    try:
        values = tuple(float(s) for s in np.asarray(spacing_mm, dtype=np.float64).ravel())
    except (TypeError, ValueError) as err:
        raise InvalidInput(argument, f"must be {ndim} numbers in mm, got {spacing_mm!r}") from err
    if len(values) != ndim:
        raise InvalidInput(argument, f"must have {ndim} values (z, y, x order), got {len(values)}")
    if not all(math.isfinite(s) and s > 0 for s in values):
        raise InvalidInput(argument, f"every spacing must be finite and > 0 mm, got {values}")
    return values


def as_positive(value: float, argument: str) -> float:
    """A finite, strictly positive float."""
    v = float(value)
    if not (math.isfinite(v) and v > 0):
        raise InvalidInput(argument, f"must be finite and > 0, got {value!r}")
    return v
