"""The ONE place where file axis orders and coordinate frames meet ours.

ITK, NIfTI and NRRD store voxels x-fastest and describe the grid in (x, y, z) order: a spacing
(sx, sy, sz) and a direction / affine whose columns belong to the file axes (i, j, k) = (x, y, z).
DICOM's ImageOrientationPatient lists the row (x) direction before the column (y) direction.
dmfn uses (z, y, x) for arrays, spacings and direction columns, and the LPS patient frame for
positions (see :mod:`dmfn.contract.study`). Every reversal and every RAS/LAS -> LPS flip happens here,
and so does the reorientation of every loaded volume to the axial layout the preprocessing assumes
(:func:`to_axial`).
"""

from __future__ import annotations

import dataclasses
import itertools
import logging
import math
from collections.abc import Sequence

import numpy as np

from dmfn.contract.study import (
    AXIAL_DIRECTION,
    DIRECTION_TOLERANCE,
    Study,
    VoxelGrid,
    check_direction,
)

log = logging.getLogger(__name__)

#: RAS (NIfTI, NRRD "right-anterior-superior") <-> LPS: negate x and y. Its own inverse.
RAS_TO_LPS = np.diag([-1.0, -1.0, 1.0])
#: NRRD ``space`` names -> matrix taking a vector in that space to LPS.
NRRD_SPACE_TO_LPS: dict[str, np.ndarray] = {
    "left-posterior-superior": np.eye(3),
    "right-anterior-superior": RAS_TO_LPS,
    "left-anterior-superior": np.diag([1.0, -1.0, 1.0]),
}
#: Largest mismatch, in voxels of the target grid, accepted when placing one grid on another.
GRID_TOLERANCE_VOXELS = 0.01
#: Largest angle (degrees) between an array axis and the patient axis it is taken for by
#: :func:`to_axial`. Scanners report axial series with direction cosines a fraction of a degree
#: off the patient axes (patient alignment, table tilt); a volume rotated further is oblique and
#: must be resampled onto an axial grid first: dmfn never interpolates to reorient.
AXIS_ALIGNMENT_TOLERANCE_DEG = 3.0


# --------------------------------------------------------------------------- axis reversal
def reverse_axes(array: np.ndarray) -> np.ndarray:
    """Swap the first and third axes: (x, y, z, ...) file order <-> (z, y, x, ...) ours.

    The same operation in both directions; returns a view (no copy).
    """
    if array.ndim < 3:
        raise ValueError(f"argument 'array': must have at least 3 axes, got shape {array.shape}")
    return np.swapaxes(array, 0, 2)


def grid_from_xyz_affine(affine_xyz_lps: np.ndarray, shape_xyz: Sequence[int]) -> VoxelGrid:
    """Our grid from a 4x4 map of file indices (i, j, k) = (x, y, z) to LPS mm.

    Columns of the 3x3 part are the file axes' steps; their lengths are the spacings. Sheared
    grids (non-orthogonal columns) raise ValueError naming ``affine``.
    """
    affine = np.asarray(affine_xyz_lps, dtype=np.float64)
    if affine.shape != (4, 4) or not np.isfinite(affine).all():
        raise ValueError(f"argument 'affine': must be a finite 4x4 matrix, got {affine.shape}")
    steps = affine[:3, :3]
    spacing_xyz = np.linalg.norm(steps, axis=0)
    if (spacing_xyz <= 0).any():
        raise ValueError(f"argument 'affine': an axis has zero length (spacing {spacing_xyz})")
    direction_xyz = steps / spacing_xyz[None, :]
    try:
        direction = check_direction(direction_xyz[:, ::-1], "affine")
    except ValueError as err:
        raise ValueError(
            f"argument 'affine': the voxel axes are not orthogonal (sheared or tilted grid), "
            f"which dmfn does not resample: {err}"
        ) from err
    return VoxelGrid(
        shape=tuple(int(s) for s in shape_xyz)[::-1],
        spacing_mm=tuple(spacing_xyz[::-1]),
        origin_lps_mm=tuple(affine[:3, 3]),
        direction=direction,
    )


def xyz_affine(grid: VoxelGrid) -> np.ndarray:
    """4x4 map of file indices (i, j, k) = (x, y, z) to LPS mm: the inverse of the above."""
    out = np.eye(4)
    out[:3, :3] = grid.affine[:3, :3][:, ::-1]
    out[:3, 3] = grid.origin_lps_mm
    return out


# --------------------------------------------------------------------------- NIfTI (RAS)
def grid_from_nifti_affine(affine_ras: np.ndarray, shape_xyz: Sequence[int]) -> VoxelGrid:
    """Our grid from a NIfTI affine (file index (i, j, k) -> RAS mm) and the file shape."""
    affine = np.array(affine_ras, dtype=np.float64)
    if affine.shape != (4, 4):
        raise ValueError(f"argument 'affine': must be 4x4, got {affine.shape}")
    affine[:3, :] = RAS_TO_LPS @ affine[:3, :]
    return grid_from_xyz_affine(affine, shape_xyz)


def nifti_affine(grid: VoxelGrid) -> np.ndarray:
    """The NIfTI affine (file index (i, j, k) = (x, y, z) -> RAS mm) of ``grid``."""
    out = xyz_affine(grid)
    out[:3, :] = RAS_TO_LPS @ out[:3, :]
    return out


# --------------------------------------------------------------------------- NRRD
def grid_from_nrrd(
    space: str, space_directions: np.ndarray, space_origin: Sequence[float], sizes: Sequence[int]
) -> VoxelGrid:
    """Our grid from NRRD fields of the three spatial axes in file order (x, y, z).

    ``space_directions`` holds one ROW per file axis (pynrrd's layout), in ``space`` coordinates.
    """
    key = str(space).lower()
    if key not in NRRD_SPACE_TO_LPS:
        raise ValueError(
            f"NRRD field 'space': must be one of {sorted(NRRD_SPACE_TO_LPS)}, got {space!r}"
        )
    to_lps = NRRD_SPACE_TO_LPS[key]
    rows = np.asarray(space_directions, dtype=np.float64)
    if rows.shape != (3, 3) or not np.isfinite(rows).all():
        raise ValueError(f"NRRD field 'space directions': must be three 3-vectors, got {rows}")
    affine = np.eye(4)
    affine[:3, :3] = to_lps @ rows.T
    affine[:3, 3] = to_lps @ np.asarray(space_origin, dtype=np.float64)
    return grid_from_xyz_affine(affine, sizes)


def nrrd_space_fields(grid: VoxelGrid) -> dict[str, object]:
    """NRRD header fields (LPS space) of ``grid`` for a 3D array stored in file order (x, y, z)."""
    affine = xyz_affine(grid)
    return {
        "space": "left-posterior-superior",
        "space directions": affine[:3, :3].T.copy(),
        "space origin": affine[:3, 3].copy(),
        "kinds": ["domain", "domain", "domain"],
    }


# --------------------------------------------------------------------------- DICOM
def iop_from_direction(direction: np.ndarray) -> list[float]:
    """DICOM ImageOrientationPatient: row (x axis) cosines then column (y axis) cosines."""
    d = check_direction(direction)
    return [float(v) for v in (*d[:, 2], *d[:, 1])]


def slice_normal(iop: Sequence[float]) -> np.ndarray:
    """Unit normal row x column of a DICOM ImageOrientationPatient (the z axis of our array)."""
    row, col = _iop_vectors(iop)
    normal = np.cross(row, col)
    return normal / np.linalg.norm(normal)


def direction_from_iop(iop: Sequence[float]) -> np.ndarray:
    """Our direction (columns z, y, x) for slices stacked along +row x column."""
    row, col = _iop_vectors(iop)
    return check_direction(
        np.column_stack([slice_normal(iop), col, row]), "ImageOrientationPatient"
    )


def _iop_vectors(iop: Sequence[float]) -> tuple[np.ndarray, np.ndarray]:
    values = np.asarray([float(v) for v in iop], dtype=np.float64)
    if values.shape != (6,) or not np.isfinite(values).all():
        raise ValueError(f"ImageOrientationPatient: must be 6 finite numbers, got {list(iop)}")
    row, col = values[:3], values[3:]
    norms = np.linalg.norm(row), np.linalg.norm(col)
    if min(norms) < 0.5:
        raise ValueError(
            f"ImageOrientationPatient: direction cosines must be unit vectors, got {values}"
        )
    return row / norms[0], col / norms[1]


# --------------------------------------------------------------------------- reorientation
def permute_flip(
    array: np.ndarray, source_axis: Sequence[int], flipped: Sequence[bool]
) -> np.ndarray:
    """Exact axis permutation and flips of a (z, y, x) array (a view, no interpolation).

    Output axis ``t`` is input axis ``source_axis[t]``, reversed where ``flipped[t]``.
    """
    out = np.transpose(array, tuple(int(a) for a in source_axis))
    for axis, flip in enumerate(flipped):
        if flip:
            out = np.flip(out, axis=axis)
    return out


def axial_axis_map(
    direction: np.ndarray, source: str = "argument 'direction'"
) -> tuple[tuple[int, int, int], tuple[bool, bool, bool], float]:
    """How to permute/flip an array of ``direction`` into the axial layout (:data:`AXIAL_DIRECTION`).

    Returns ``(source_axis, flipped, angle_deg)``: axial axis ``t`` (z superior, y posterior,
    x left) is array axis ``source_axis[t]``, reversed where ``flipped[t]``; ``angle_deg`` is the
    largest angle between an array axis and the patient axis it becomes. An oblique direction
    (an angle above :data:`AXIS_ALIGNMENT_TOLERANCE_DEG`) raises ValueError starting with ``source``.
    """
    d = check_direction(direction)
    cosines = AXIAL_DIRECTION.T @ d  # [axial axis t, array axis s]
    source_axis = np.abs(cosines).argmax(axis=1)
    best = np.abs(cosines[np.arange(3), source_axis])
    angle = math.degrees(math.acos(min(1.0, float(best.min()))))
    if angle > AXIS_ALIGNMENT_TOLERANCE_DEG or sorted(source_axis.tolist()) != [0, 1, 2]:
        raise ValueError(
            f"{source}: the volume is oblique (an array axis is {angle:.1f} degrees from the "
            f"nearest patient axis; at most {AXIS_ALIGNMENT_TOLERANCE_DEG:g} degrees are accepted, "
            f"direction {np.round(d, 4).tolist()}); dmfn reorients by exact axis permutation and "
            "flips only, never by interpolation: resample it onto an axial grid first (e.g. 3D "
            "Slicer: Resample Scalar/Vector/DWI Volume or Crop Volume with an axial ROI)"
        )
    flipped = cosines[np.arange(3), source_axis] < 0
    return (
        tuple(int(a) for a in source_axis),  # type: ignore[return-value]
        tuple(bool(f) for f in flipped),
        angle,
    )


def to_axial(study: Study, source: str = "argument 'study'") -> Study:
    """``study`` in the axial layout: axis 0 feet -> head, axis 1 anterior -> posterior, axis 2
    patient right -> left (:data:`dmfn.contract.study.AXIAL_DIRECTION`), as the preprocessing assumes.

    Exact: ``hu``, ``mask`` and ``bbox`` are permuted/flipped (no interpolation); ``spacing_mm``
    is permuted alike and ``origin_lps_mm`` becomes the LPS position of the new voxel [0, 0, 0]'s
    centre, so every voxel keeps its patient position. The direction becomes exactly
    :data:`AXIAL_DIRECTION` when the axes are aligned to float precision; a direction up to
    :data:`AXIS_ALIGNMENT_TOLERANCE_DEG` degrees off is permuted/flipped likewise and kept as it
    is (the true geometry, close to axial; a warning is logged). A study already axial is returned
    as it is (the same object). A more oblique direction raises ValueError (starting with
    ``source``): resample it onto an axial grid first (e.g. in 3D Slicer).
    """
    if not isinstance(study, Study):
        raise ValueError(f"argument 'study': must be a dmfn Study, got {type(study).__name__}")
    source_axis, flipped, angle = axial_axis_map(study.direction, source)
    direction = study.direction[:, source_axis] * np.where(flipped, -1.0, 1.0)[None, :]
    aligned = float(np.abs(direction - AXIAL_DIRECTION).max()) <= DIRECTION_TOLERANCE
    if aligned:
        direction = AXIAL_DIRECTION
    else:
        log.warning(
            "%s: direction is %.2f degrees off the patient axes (tolerance %g); treated as axial "
            "after an exact axis permutation/flip, its views are rotated by that angle",
            source,
            angle,
            AXIS_ALIGNMENT_TOLERANCE_DEG,
        )
    if source_axis == (0, 1, 2) and not any(flipped):
        unchanged = np.array_equal(study.direction, direction)
        return study if unchanged else dataclasses.replace(study, direction=direction)
    shape = study.shape
    first = [shape[s] - 1 if f else 0 for s, f in zip(source_axis, flipped, strict=True)]
    start = np.zeros(3)
    start[list(source_axis)] = first
    bbox = None
    if study.bbox is not None:
        lo, hi = study.bbox[:3], study.bbox[3:]
        new_lo, new_hi = [], []
        for s, f in zip(source_axis, flipped, strict=True):
            new_lo.append(shape[s] - hi[s] if f else lo[s])
            new_hi.append(shape[s] - lo[s] if f else hi[s])
        bbox = (*new_lo, *new_hi)
    return dataclasses.replace(
        study,
        hu=np.ascontiguousarray(permute_flip(study.hu, source_axis, flipped)),
        spacing_mm=tuple(study.spacing_mm[s] for s in source_axis),
        origin_lps_mm=tuple(float(v) for v in study.grid.index_to_lps(start)),
        direction=direction,
        mask=None
        if study.mask is None
        else np.ascontiguousarray(permute_flip(study.mask, source_axis, flipped)),
        bbox=bbox,
    )


# --------------------------------------------------------------------------- grid matching
def place_on_grid(
    array: np.ndarray,
    source: VoxelGrid,
    target: VoxelGrid,
    name: str = "mask",
    *,
    sub_box: bool = False,
) -> np.ndarray:
    """Put a (z, y, x) ``array`` on grid ``source`` exactly onto grid ``target`` (no interpolation).

    One rule for every mask file. ``source`` must be either

    * ``target`` itself up to an exact axis permutation/flip (e.g. a mask saved in another
      orientation): after undoing it, the same shape, spacing, direction and origin, every voxel
      centre within :data:`GRID_TOLERANCE_VOXELS` (in target voxels) of the target's; or
    * only when ``sub_box`` is True (files known to store cropped extents: 3D Slicer
      segmentations), a cropped box of ``target``'s voxels: the same spacing and direction up to
      an axis permutation/flip, its voxel centres on target voxel centres (same tolerance) and
      the whole box inside ``target``; target voxels outside the box are 0.

    The result may share memory with ``array`` where it covers ``target`` exactly (most masks:
    no copy of a CT-sized array).

    Anything else raises ValueError starting with ``name`` and describing both grids: another
    spacing, a rotation, a shift by a fraction of a voxel, a grid larger than ``target`` or
    reaching outside it, and, without ``sub_box``, any grid of another extent (e.g. one slice
    short of the image: almost surely the mask of another image).
    """
    if array.shape != source.shape:
        raise ValueError(f"{name}: shape {array.shape} differs from its grid {source.shape}")
    source_axis, flipped, start = _grid_map(source, target, name)
    moved = permute_flip(array, source_axis, flipped)
    _check_extent(start, moved.shape, target, name, sub_box)
    if moved.shape == tuple(target.shape) and not start.any():
        return np.ascontiguousarray(moved)
    out = np.zeros(target.shape, dtype=array.dtype)
    out[tuple(slice(int(a), int(a) + n) for a, n in zip(start, moved.shape, strict=True))] = moved
    return out


def _grid_map(
    source: VoxelGrid, target: VoxelGrid, name: str
) -> tuple[list[int], list[bool], np.ndarray]:
    """How ``source`` sits on ``target``: ``(source_axis, flipped, start)``.

    Target axis ``t`` is source axis ``source_axis[t]``, reversed where ``flipped[t]``; ``start``
    is the target index (z, y, x) of the reoriented source's voxel [0, 0, 0]. ValueError when the
    source voxel centres do not fall on target voxel centres (other spacing, rotation, shift).
    """
    # T: source index (z, y, x) -> target index (z, y, x).
    transform = np.linalg.inv(target.affine) @ source.affine
    linear = transform[:3, :3]
    perm = np.abs(linear).argmax(axis=0)  # target axis of each source axis
    signed = np.zeros((3, 3))
    signed[perm, np.arange(3)] = np.sign(linear[perm, np.arange(3)])
    offset = np.round(transform[:3, 3])
    corners = np.array(list(itertools.product(*[(0, n - 1) for n in source.shape])), float)
    exact = corners @ linear.T + transform[:3, 3]
    snapped = corners @ signed.T + offset
    mismatch = float(np.abs(exact - snapped).max())
    if sorted(perm.tolist()) != [0, 1, 2] or mismatch > GRID_TOLERANCE_VOXELS:
        raise ValueError(
            f"{name}: its voxel grid does not match the image's (voxel centres differ by up to "
            f"{mismatch:.3g} voxels, tolerance {GRID_TOLERANCE_VOXELS}; shape, spacing, origin "
            f"and direction must agree up to an axis flip/permutation): {name} {source!r} vs "
            f"image {target!r}"
        )
    source_axis = np.argsort(perm)  # source axis of each target axis
    flipped = [bool(signed[t, s] < 0) for t, s in enumerate(source_axis)]
    start = offset.astype(np.int64)
    for t_axis, s_axis in enumerate(source_axis):
        if flipped[t_axis]:
            start[t_axis] -= source.shape[s_axis] - 1
    return [int(a) for a in source_axis], flipped, start


def _check_extent(
    start: np.ndarray, shape: tuple[int, ...], target: VoxelGrid, name: str, sub_box: bool
) -> None:
    """Refuse a reoriented source box (target indices ``start`` .. ``start + shape - 1``, z, y, x)
    that is not ``target``'s whole extent (unless ``sub_box``) or that reaches outside it."""
    stop = start + np.asarray(shape)
    where = (
        f"it covers image voxels (z, y, x) {start.tolist()} to {(stop - 1).tolist()}, shape "
        f"{tuple(shape)}, of an image of shape {tuple(target.shape)}"
    )
    if not sub_box and (start.any() or tuple(shape) != tuple(target.shape)):
        raise ValueError(
            f"{name}: its voxel grid is not the image's: {where}. A mask file must be on the "
            "image's voxel grid (same shape, spacing, origin and direction up to an axis "
            "flip/permutation); only a 3D Slicer segmentation (.seg.nrrd) may be a cropped "
            "sub-box. Is it the mask of another image or series?"
        )
    if (start < 0).any() or (stop > np.asarray(target.shape)).any():
        raise ValueError(
            f"{name}: reaches outside the image: {where}; a cropped segmentation must lie "
            "entirely inside the image it belongs to"
        )
