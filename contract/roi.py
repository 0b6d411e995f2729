"""The lesion box: which voxels of a study leave the client, and which the server crops again.

Pure NumPy (no C++ extension, no torch), so the client SDK and :func:`dmfn.preprocess.crop_roi`
share one definition. Axes (z, y, x) (or (y, x) for 2D); boxes are half-open voxel indices.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import numpy as np

from dmfn.contract.errors import InvalidInput

#: Relative slack when converting a margin in mm to whole voxels (10 mm at 1 mm = 10 voxels, not 11).
MARGIN_ROUNDING_SLACK = 1e-6


def mask_bbox(mask: np.ndarray) -> tuple[tuple[int, ...], tuple[int, ...]]:
    """First and one-past-last index per axis of the nonzero voxels of a non-empty mask.

    A device (CuPy) mask is reduced on the device; only its per-axis projections come to the host.
    An empty mask raises InvalidInput naming ``mask`` (so callers need no emptiness pass of their
    own: the first projection is one).
    """
    lo, hi = [], []
    for axis in range(mask.ndim):
        other = tuple(a for a in range(mask.ndim) if a != axis)
        projection = mask.any(axis=other)
        hits = np.flatnonzero(projection.get() if hasattr(projection, "get") else projection)
        if hits.size:
            # Later axes only need the slab between the hits: one pass over the whole mask
            # (the first axis), then passes over ever smaller slabs.
            slab = [slice(None)] * mask.ndim
            slab[axis] = slice(int(hits[0]), int(hits[-1]) + 1)
            mask = mask[tuple(slab)]
        if hits.size == 0:
            raise InvalidInput("mask", "is empty (no nonzero voxel)")
        lo.append(int(hits[0]))
        hi.append(int(hits[-1]) + 1)
    return tuple(lo), tuple(hi)


def check_bbox(
    bbox: object, shape: tuple[int, ...], name: str = "bbox", *, owner: str = "argument"
) -> tuple[tuple[int, ...], tuple[int, ...]]:
    """Validate a half-open voxel box ``(z0, y0, x0, z1, y1, x1)`` (or ``(y0, x0, y1, x1)`` in 2D).

    The one box check of dmfn (the Study field, the SDK and :func:`dmfn.preprocess.crop_roi`).
    The values must be integers (an integer array or a sequence of ints) with
    ``0 <= start < stop <= size`` on every axis of ``shape``. Returns ``(start, stop)``, each a
    tuple of ints in (z, y, x) order; ValueError naming ``owner`` ``name`` and the rule otherwise.
    """
    nd = len(shape)
    try:
        values = np.asarray(bbox)
        ok = values.shape == (2 * nd,) and values.dtype.kind in "iu"
    except (TypeError, ValueError):
        ok = False
    if not ok:
        raise ValueError(
            f"{owner} '{name}': must be {2 * nd} integers, half-open voxel indices "
            f"(z0, y0, x0, z1, y1, x1) for 3D or (y0, x0, y1, x1) for 2D, got {bbox!r}"
        )
    lo = tuple(int(v) for v in values[:nd])
    hi = tuple(int(v) for v in values[nd:])
    if not all(0 <= a < b <= n for a, b, n in zip(lo, hi, shape, strict=True)):
        raise ValueError(
            f"{owner} '{name}': need 0 <= start < stop <= size on every axis of shape {shape} "
            f"(half-open voxel box inside the image), got start {lo}, stop {hi}"
        )
    return lo, hi


def roi_box(
    lo: Sequence[int],
    hi: Sequence[int],
    shape: Sequence[int],
    margin_mm: float,
    spacing_mm: Sequence[float],
) -> tuple[slice, ...]:
    """The lesion box ``[lo, hi)`` grown by ``margin_mm`` per side, clamped to ``shape``.

    The margin becomes ``ceil(margin_mm / spacing)`` voxels per axis, so cropping a crop again
    with the same margin and spacing returns it unchanged.
    """
    margin = float(margin_mm)
    if not (math.isfinite(margin) and margin >= 0):
        raise ValueError(f"argument 'margin_mm': must be finite and >= 0 mm, got {margin_mm!r}")
    grow = [math.ceil(margin / s - MARGIN_ROUNDING_SLACK) for s in spacing_mm]
    return tuple(
        slice(max(0, a - g), min(n, b + g)) for a, b, g, n in zip(lo, hi, grow, shape, strict=True)
    )
