"""Spatial preprocessing: isotropic resampling, windowing, ROI crop, lesion measurements, views.

Axes are (z, y, x) everywhere (a 2D image is (y, x)); spacings are in mm in the same order;
intensities in HU. The kernels run in the C++ extension :mod:`dmfn.preprocess._core` (OpenMP, GIL
released); :mod:`dmfn.preprocess.reference.spatial` holds plain NumPy references of each.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Literal

import numpy as np

from dmfn.contract.errors import InvalidInput
from dmfn.contract.params import DEFAULT_VIEW_SIZE
from dmfn.contract.roi import check_bbox, mask_bbox, roi_box
from dmfn.contract.schema import MEASUREMENT_FIELDS
from dmfn.preprocess import _core as _preprocess

from . import gpu
from ._validate import as_mask, as_positive, as_spacing, as_volume, check_voxel_cap
from .gpu import check_backend, is_device_array

#: Interpolation order name -> kernel id of the C++ extension (1 = linear, 3 = Keys cubic).
_KERNELS = {"linear": 1, "cubic": 3}

#: Two candidate long axes within this many mm are a tie (float noise on a pixel lattice).
_TIE_MM = 1e-9


def isotropic_shape(
    shape: Sequence[int], spacing_mm: Sequence[float], target_mm: float
) -> tuple[int, ...]:
    """Output size per axis of :func:`resample_isotropic`: ``round(n * s_in / s_out)``, >= 1.

    Halves round up (``floor(x + 0.5)``).
    """
    return tuple(
        max(1, math.floor(n * s / target_mm + 0.5)) for n, s in zip(shape, spacing_mm, strict=True)
    )


def resample_isotropic(
    volume: np.ndarray,
    spacing_mm: Sequence[float],
    target_mm: float = 1.0,
    order: Literal["linear", "cubic"] = "linear",
    *,
    max_voxels: int | None = None,
    backend: str = "cpu",
) -> np.ndarray:
    """Resample a (z, y, x) volume (or a (y, x) image) to isotropic voxels of ``target_mm`` mm.

    Grid (docs/architecture.md): the same origin (the first voxel centre); output size
    ``round(n * s_in / target_mm)`` per axis (at least 1, see :func:`isotropic_shape`); output
    voxel ``i`` of an axis samples the input at index position ``i * target_mm / s_in``.

    ``order="linear"`` is trilinear (bilinear in 2D) interpolation. Inside the input's extent it
    equals SimpleITK's ``ResampleImageFilter`` (identity transform, same origin and direction, that
    output size, ``sitkLinear``) to float32 rounding. Past the last voxel centre the edge value is
    used (clamp); SimpleITK instead fills samples more than half a voxel outside with 0.

    ``order="cubic"`` is Keys cubic convolution with a = -0.5 (Catmull-Rom: interpolating,
    exact for quadratics, 4 taps per axis) with the same edge clamp; it may overshoot at sharp
    edges (no clipping to the input range).

    Args:
        volume: 2D (y, x) or 3D (z, y, x) array of a real dtype; converted to float32 (copied
            when not C-contiguous float32). bool, complex and object arrays are refused.
        spacing_mm: voxel spacing in mm, one per axis, (z, y, x) order.
        target_mm: isotropic output spacing in mm.
        order: ``"linear"`` or ``"cubic"``.
        max_voxels: cap on input and output voxels (default: ``$DMFN_MAX_VOXELS`` or 2**28).
        backend: "cpu" (C++ kernel, numpy) or "cupy" (CUDA kernel, numpy or cupy in, cupy out;
            the same taps and weights from one header).

    Returns:
        float32 array of the output shape, same ndim as ``volume``.

    Raises:
        ValueError: a bad argument (named in the message), or an output above the voxel cap
            (named ``target_mm``).
    """
    vol = as_volume(volume, "volume", cap=max_voxels, backend=check_backend(backend))
    spacing = as_spacing(spacing_mm, vol.ndim)
    target = as_positive(target_mm, "target_mm")
    if order not in _KERNELS:
        raise InvalidInput("order", f"must be 'linear' or 'cubic', got {order!r}")
    return _resample(vol, spacing, target, order, max_voxels)


def _resample(
    vol: np.ndarray,
    spacing: tuple[float, ...],
    target: float,
    order: str,
    max_voxels: int | None,
) -> np.ndarray:
    """:func:`resample_isotropic` on already valid arguments (float32 C-contiguous volume)."""
    out_shape = isotropic_shape(vol.shape, spacing, target)
    check_voxel_cap(out_shape, "target_mm", max_voxels)
    z, y, x = (1,) * (3 - vol.ndim) + out_shape
    rz, ry, rx = (1.0,) * (3 - vol.ndim) + tuple(target / s for s in spacing)
    shape3, ratio3 = (z, y, x), (rz, ry, rx)
    if is_device_array(vol):
        return gpu.resample(vol, shape3, ratio3, _KERNELS[order])
    return _preprocess.resample(vol, shape3, ratio3, _KERNELS[order])


def window(
    volume_hu: np.ndarray, level: float = 50.0, width: float = 350.0, *, backend: str = "cpu"
) -> np.ndarray:
    """Map HU in ``[level - width/2, level + width/2]`` linearly to [0, 1], clipping outside.

    Defaults are the paper's soft-tissue window (WL 50 HU, WW 350 HU). ``volume_hu`` is 2D (y, x)
    or 3D (z, y, x) of a real dtype (converted to float32); the input is never modified.
    Returns a new float32 array of the same shape (a cupy array for ``backend="cupy"``).
    """
    vol = as_volume(volume_hu, "volume_hu", backend=check_backend(backend))
    lvl = float(level)
    if not math.isfinite(lvl):
        raise InvalidInput("level", f"must be finite HU, got {level!r}")
    return _window(vol, lvl, as_positive(width, "width"))


def _window(vol: np.ndarray, lvl: float, wid: float) -> np.ndarray:
    """:func:`window` on already valid arguments (float32 C-contiguous volume)."""
    if is_device_array(vol):
        return gpu.window(vol, lvl, wid)
    return _preprocess.window(vol, lvl, wid)


@dataclass(frozen=True)
class RoiCrop:
    """A region of interest cut from a volume by :func:`crop_roi`.

    Attributes:
        volume: the cropped volume (same dtype as the input, C-contiguous copy).
        mask: the mask cropped with the same box (uint8, 1 = lesion), or None when cropped by bbox.
        offset_zyx: index of the crop's first voxel in the input, (z, y, x) ((y, x) for 2D).

    ``roi.slices`` crops any other array of the input's shape with the same box:
    ``other[roi.slices]``.
    """

    volume: np.ndarray
    mask: np.ndarray | None
    offset_zyx: tuple[int, ...]

    @property
    def slices(self) -> tuple[slice, ...]:
        """The box as slices of the input, (z, y, x) order."""
        return tuple(
            slice(o, o + n) for o, n in zip(self.offset_zyx, self.volume.shape, strict=True)
        )


def crop_roi(
    volume: np.ndarray,
    mask: np.ndarray | None = None,
    bbox: Sequence[int] | None = None,
    margin_mm: float = 10.0,
    spacing_mm: Sequence[float] = (1.0, 1.0, 1.0),
) -> RoiCrop:
    """Crop the box around a lesion, grown by ``margin_mm`` on each side, clamped to the volume.

    Give exactly one of ``mask`` (the box of its nonzero voxels) or ``bbox`` (half-open voxel
    indices ``(z0, y0, x0, z1, y1, x1)``; ``(y0, x0, y1, x1)`` for 2D). The margin becomes
    ``ceil(margin_mm / spacing)`` voxels per axis. Cropping a crop again with the same margin and
    spacing returns it unchanged (the client may crop before sending).

    Args:
        volume: 2D (y, x) or 3D (z, y, x) array of a real dtype (kept; int16 HU stays int16).
        mask: lesion mask of the volume's shape (nonzero = lesion), bool or numeric.
        bbox: lesion box instead of a mask.
        margin_mm: margin in mm, >= 0.
        spacing_mm: voxel spacing in mm, (z, y, x) order (2 values for 2D).

    Returns:
        :class:`RoiCrop` with the cropped volume, the mask cropped with the same box (None for
        ``bbox``) and the (z, y, x) offset of the box.
    """
    if not isinstance(volume, np.ndarray) or volume.ndim not in (2, 3):
        got = f"ndim={volume.ndim}" if isinstance(volume, np.ndarray) else type(volume).__name__
        raise InvalidInput("volume", f"must be a 2D (y, x) or 3D (z, y, x) array, got {got}")
    if (mask is None) == (bbox is None):
        raise ValueError("arguments 'mask', 'bbox': give exactly one of them")
    spacing = as_spacing(spacing_mm, volume.ndim)
    if mask is not None:
        mask_u8 = as_mask(mask, volume.shape, check_empty=False)
        lo, hi = mask_bbox(mask_u8)  # raises for an empty mask
    else:
        mask_u8 = None
        lo, hi = check_bbox(bbox, volume.shape)
    box = roi_box(lo, hi, volume.shape, margin_mm, spacing)
    start = tuple(b.start for b in box)
    cropped = np.ascontiguousarray(volume[box])
    as_volume(cropped, "volume", finite=False)  # dtype rules of every kernel, on the crop only
    return RoiCrop(
        volume=cropped,
        mask=None if mask_u8 is None else np.ascontiguousarray(mask_u8[box]),
        offset_zyx=start,
    )


@dataclass(frozen=True)
class LesionMeasurements:
    """Size of a lesion from its mask (mm units; see :func:`measure_lesion` for definitions)."""

    volume_mm3: float
    max_axial_area_mm2: float
    long_axis_mm: float
    short_axis_mm: float
    craniocaudal_mm: float

    def as_array(self) -> np.ndarray:
        """float32[5] in :data:`dmfn.contract.schema.MEASUREMENT_FIELDS` order."""
        return np.array([getattr(self, f) for f in MEASUREMENT_FIELDS], dtype=np.float32)


def _width_along(unit_yx: np.ndarray, spacing_yx: tuple[float, float]) -> np.ndarray:
    """Width in mm of one voxel along unit directions (..., 2) (the voxel as an ellipse)."""
    return np.hypot(unit_yx[..., 0] * spacing_yx[0], unit_yx[..., 1] * spacing_yx[1])


def _axes_in_slice(slice_mask: np.ndarray, spacing_yx: tuple[float, float]) -> tuple[float, float]:
    """Long and short axis (mm) of the lesion pixels of one axial slice (see measure_lesion)."""
    rows = np.flatnonzero(slice_mask.any(axis=1))
    sub = slice_mask[rows]
    first = sub.argmax(axis=1)
    last = sub.shape[1] - 1 - sub[:, ::-1].argmax(axis=1)
    # The extreme points of every row hold the convex hull, hence every Feret extremum.
    pts = np.concatenate([np.stack([rows, first], axis=1), np.stack([rows, last], axis=1)]).astype(
        np.float64
    ) * np.asarray(spacing_yx)
    diff = pts[:, None, :] - pts[None, :, :]
    dist = np.hypot(diff[..., 0], diff[..., 1])
    # A single-pixel lesion has no direction: measure along the wider pixel side.
    default_dir = np.array([1.0, 0.0] if spacing_yx[0] >= spacing_yx[1] else [0.0, 1.0])
    with np.errstate(invalid="ignore", divide="ignore"):
        unit = np.where(dist[..., None] > 0, diff / dist[..., None], default_dir)
    length = dist + _width_along(unit, spacing_yx)
    longest = float(length.max())
    # Ties (common on a pixel lattice): the pair whose perpendicular extent is largest.
    ties = np.argwhere(length >= longest - _TIE_MM)
    u = unit[ties[:, 0], ties[:, 1]]
    perp = np.stack([-u[:, 1], u[:, 0]], axis=1)
    proj = pts @ perp.T
    short = proj.max(axis=0) - proj.min(axis=0) + _width_along(perp, spacing_yx)
    return longest, float(short.max())


def measure_lesion(mask: np.ndarray, spacing_mm: Sequence[float]) -> LesionMeasurements:
    """RECIST-style measurements of a lesion mask (z, y, x) with voxel spacing in mm.

    Definitions (voxels are counted whole; lengths run between voxel centres plus one voxel
    width along the measured line, so n voxels in a row measure n spacings, as the
    craniocaudal extent does; for a digitised smooth shape this is within one voxel of the truth):

    - ``volume_mm3``: voxel count x voxel volume.
    - ``max_axial_area_mm2``: largest per-slice voxel count x in-plane pixel area.
    - ``long_axis_mm``: in the axial slice of largest area (the first if tied), the largest
      distance between two lesion pixel centres plus the pixel width along that line (the pixel
      taken as an ellipse of axes (s_y, s_x)).
    - ``short_axis_mm``: in that slice, the lesion's extent perpendicular to the long axis (the
      spread of the pixel centres projected on the perpendicular, plus the pixel width along it);
      when several pixel pairs tie for the long axis, the largest such extent.
    - ``craniocaudal_mm``: (last slice - first slice + 1) x s_z over slices holding the lesion.

    Args:
        mask: 3D (z, y, x) array, nonzero = lesion (bool or numeric); must not be empty.
        spacing_mm: voxel spacing in mm, (z, y, x).

    Raises:
        ValueError: wrong ndim or dtype, NaN/Inf, empty mask, bad spacing (argument named).
    """
    if not isinstance(mask, np.ndarray) or mask.ndim != 3:
        got = f"ndim={mask.ndim}" if isinstance(mask, np.ndarray) else type(mask).__name__
        raise InvalidInput("mask", f"must be a 3D (z, y, x) array, got {got}")
    return _measure(as_mask(mask, mask.shape), as_spacing(spacing_mm, 3))


def _measure(m: np.ndarray, spacing: tuple[float, ...]) -> LesionMeasurements:
    """:func:`measure_lesion` of a valid non-empty uint8 mask and spacing. A cupy mask is
    counted on the device; only its per-slice counts and its largest slice reach the host."""
    sz, sy, sx = spacing
    if is_device_array(m):
        per_slice = gpu.to_host((m != 0).sum(axis=(1, 2)))
    else:
        per_slice = np.count_nonzero(m, axis=(1, 2))
    k = int(np.argmax(per_slice))
    z_hits = np.flatnonzero(per_slice)
    long_mm, short_mm = _axes_in_slice(gpu.to_host(m[k]), (sy, sx))
    return LesionMeasurements(
        volume_mm3=float(per_slice.sum()) * sz * sy * sx,
        max_axial_area_mm2=float(per_slice[k]) * sy * sx,
        long_axis_mm=long_mm,
        short_axis_mm=short_mm,
        craniocaudal_mm=float(z_hits[-1] - z_hits[0] + 1) * sz,
    )


#: View channels: the axis each plane holds fixed, and its (row, column) axes, (z, y, x) = 0, 1, 2.
VIEW_PLANES: tuple[tuple[str, int, tuple[int, int]], ...] = (
    ("axial", 0, (1, 2)),
    ("coronal", 1, (0, 2)),
    ("sagittal", 2, (0, 1)),
)


def _centre_and_box(
    mask_or_centroid: object, shape: tuple[int, ...]
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Centre (z, y, x) in voxels and the inclusive index box (lo, hi) the views must cover."""
    if isinstance(mask_or_centroid, np.ndarray) and mask_or_centroid.ndim == 3:
        return _lesion_box(as_mask(mask_or_centroid, shape, "mask_or_centroid"))
    if is_device_array(mask_or_centroid):
        return _lesion_box(as_mask(mask_or_centroid, shape, "mask_or_centroid", backend="cupy"))
    try:
        centre = np.asarray(mask_or_centroid, dtype=np.float64).ravel()
    except (TypeError, ValueError) as err:
        raise InvalidInput(
            "mask_or_centroid", "must be a 3D mask or a (z, y, x) centroid in voxels"
        ) from err
    n = np.array(shape, float)
    if centre.shape != (3,) or not (np.all(centre >= -0.5) and np.all(centre <= n - 0.5)):
        raise InvalidInput(
            "mask_or_centroid",
            "a centroid must be 3 finite (z, y, x) voxel positions "
            f"inside the volume's extent [-0.5, n - 0.5] for shape {shape}, got {mask_or_centroid!r}",
        )
    return centre, np.zeros(3), n - 1.0


def orthogonal_views(
    volume: np.ndarray,
    mask_or_centroid: np.ndarray | Sequence[float],
    size: int = DEFAULT_VIEW_SIZE,
    *,
    margin_vox: float = 0.0,
    fill: float = 0.0,
    max_voxels: int | None = None,
    backend: str = "cpu",
) -> np.ndarray:
    """Axial, coronal and sagittal planes through the lesion centroid, each ``size x size``.

    The volume should have isotropic voxels (the pipeline resamples first): the views work in
    voxel units. Plane geometry:

    - centre: the centroid of the mask's voxels (or the given (z, y, x) centroid in voxels);
      each plane's fixed coordinate is rounded to the nearest slice, so sampling is bilinear;
    - field of view: a square centred on the centroid covering the ROI box (the mask's bounding
      box, voxel edges included; the whole volume for a centroid) in both in-plane axes, grown
      by ``margin_vox`` voxels on each side; ``size`` samples at pixel centres across it.

    Channels: 0 = axial (fixed z; rows y, columns x), 1 = coronal (fixed y; rows z, columns x),
    2 = sagittal (fixed x; rows z, columns y); rows and columns run in increasing index order.
    Samples outside the volume's voxel extent get ``fill`` (default 0.0: the bottom of the
    window, as air after :func:`window`); within the outer half voxel the edge value is used.
    ``max_voxels`` caps the input and the output (default: ``$DMFN_MAX_VOXELS`` or 2**28).
    ``backend="cupy"`` samples on the GPU (a mask is reduced there too; only its centroid and box
    reach the host).

    Returns:
        float32 array (3, size, size) (a cupy array for ``backend="cupy"``).
    """
    vol = as_volume(volume, "volume", ndims=(3,), cap=max_voxels, backend=check_backend(backend))
    if isinstance(size, bool) or not isinstance(size, int | np.integer) or size < 2:
        raise InvalidInput("size", f"must be an integer >= 2 pixels, got {size!r}")
    check_voxel_cap((3, size, size), "size", max_voxels)
    margin = float(margin_vox)
    if not (math.isfinite(margin) and margin >= 0):
        raise InvalidInput("margin_vox", f"must be finite and >= 0, got {margin_vox!r}")
    if not math.isfinite(float(fill)):
        raise InvalidInput("fill", f"must be finite, got {fill!r}")
    centre, lo, hi = _centre_and_box(mask_or_centroid, vol.shape)
    return _views(vol, centre, lo, hi, int(size), margin, float(fill))


def _lesion_box(mask: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Centre (z, y, x) and inclusive index box of a valid non-empty uint8 mask (numpy or cupy:
    reduced where it lives)."""
    centre = np.array([float(c.mean()) for c in mask.nonzero()])
    lo, hi = mask_bbox(mask)
    return centre, np.array(lo, float), np.array(hi, float) - 1.0


def _views(
    vol: np.ndarray,
    centre: np.ndarray,
    lo: np.ndarray,
    hi: np.ndarray,
    size: int,
    margin: float,
    fill: float,
) -> np.ndarray:
    """:func:`orthogonal_views` on already valid arguments."""
    # Half-side per axis covering the box's voxel edges from the centre.
    reach = np.maximum(centre - (lo - 0.5), (hi + 0.5) - centre) + margin
    origin, row_step, col_step = np.zeros((3, 3)), np.zeros((3, 3)), np.zeros((3, 3))
    for p, (_, fixed, (r_ax, c_ax)) in enumerate(VIEW_PLANES):
        half = max(reach[r_ax], reach[c_ax])
        step = 2.0 * half / size
        origin[p] = centre
        origin[p, fixed] = np.clip(np.floor(centre[fixed] + 0.5), 0, vol.shape[fixed] - 1)
        origin[p, [r_ax, c_ax]] = centre[[r_ax, c_ax]] - half + step / 2.0
        row_step[p, r_ax] = step
        col_step[p, c_ax] = step
    if is_device_array(vol):
        return gpu.sample_planes(vol, origin, row_step, col_step, size, fill)
    return _preprocess.sample_planes(vol, origin, row_step, col_step, size, fill)
