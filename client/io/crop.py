"""Partial reads: which part of a file a crop of the axial layout needs, and the cropped study.

A loader that reads only what a crop needs works in two frames: the box is found on the study's
axial grid (where :func:`dmfn.contract.roi.roi_box` puts it, exactly as
:func:`dmfn.contract.wire.crop_study` does), and the file is read in its own (z, y, x) layout,
which :func:`dmfn.contract.orientation.to_axial` permutes and flips. :func:`source_box` maps the
first to the second; :func:`crop_study` cuts an axial study to a box with its geometry exact.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence

import numpy as np

from dmfn.contract.orientation import axial_axis_map
from dmfn.contract.roi import mask_bbox, roi_box
from dmfn.contract.study import Study, VoxelGrid

#: A half-open box per axis (z, y, x), as slices with explicit start and stop.
Box = tuple[slice, slice, slice]


def crop_box(mask: np.ndarray, grid: VoxelGrid, margin_mm: float) -> Box:
    """The box :func:`dmfn.contract.wire.crop_study` sends for ``mask`` (axial layout) on
    ``grid``: the lesion's box grown by ``margin_mm`` per side, clamped to the grid."""
    lo, hi = mask_bbox(mask)
    box = roi_box(lo, hi, grid.shape, margin_mm, grid.spacing_mm)
    return (box[0], box[1], box[2])


def axial_grid(grid: VoxelGrid, source: str = "image") -> VoxelGrid:
    """``grid`` (a file's (z, y, x) layout) as :func:`~dmfn.contract.orientation.to_axial` lays
    out its volume: the grid of the study the full read returns."""
    source_axis, flipped, _ = axial_axis_map(np.asarray(grid.direction), source)
    direction = np.asarray(grid.direction)[:, source_axis] * np.where(flipped, -1.0, 1.0)[None, :]
    start = np.zeros(3)
    for s, f in zip(source_axis, flipped, strict=True):
        start[s] = grid.shape[s] - 1 if f else 0
    return VoxelGrid(
        shape=tuple(grid.shape[s] for s in source_axis),
        spacing_mm=tuple(grid.spacing_mm[s] for s in source_axis),
        origin_lps_mm=tuple(float(v) for v in grid.index_to_lps(start)),
        direction=direction,
    )


def source_box(box: Sequence[slice], grid: VoxelGrid, source: str = "image") -> Box:
    """The box of a file's (z, y, x) layout (``grid``) that holds the axial-layout ``box``.

    Axial axis ``t`` is file axis ``source_axis[t]``, reversed where ``flipped[t]``
    (:func:`~dmfn.contract.orientation.axial_axis_map`); a reversed axis maps ``[a, b)`` to
    ``[n - b, n - a)``. A coronal or sagittal series therefore crops its slice axis by the
    axial box's y or x range.
    """
    source_axis, flipped, _ = axial_axis_map(np.asarray(grid.direction), source)
    out: list[slice] = [slice(0, n) for n in grid.shape]
    for t, (s, f) in enumerate(zip(source_axis, flipped, strict=True)):
        n = grid.shape[s]
        a, b = int(box[t].start), int(box[t].stop)
        out[s] = slice(n - b, n - a) if f else slice(a, b)
    return (out[0], out[1], out[2])


def box_origin(grid: VoxelGrid, box: Sequence[slice]) -> tuple[float, float, float]:
    """LPS position (mm) of voxel ``(box[0].start, box[1].start, box[2].start)`` of ``grid``."""
    x, y, z = (float(v) for v in grid.index_to_lps([b.start for b in box]))
    return (x, y, z)


def crop_study(study: Study, box: Sequence[slice]) -> Study:
    """``study`` cut to ``box`` (its own axes): the same spacing and direction, the origin moved
    to the box's first voxel, the mask (if any) cut alike. The arrays are copies, so the full
    volume can be freed."""
    if study.bbox is not None:
        raise ValueError("argument 'study': crop a study with a mask, not a bbox")
    key = tuple(box)
    return dataclasses.replace(
        study,
        hu=np.ascontiguousarray(study.hu[key]),
        origin_lps_mm=box_origin(study.grid, box),
        mask=None if study.mask is None else np.ascontiguousarray(study.mask[key]),
    )
