"""Placement check: how much of a lesion the chest phantom leaves visible.

A lesion is painted over the thoracic cavity's tissues only (lung, mediastinal fat), and the
heart, great vessels, airways, oesophagus and skeleton are painted after it (see
:func:`anatomy.render_chest`). A lesion placed over those organs or outside the cavity is therefore
partly or wholly hidden. This module measures the fraction of a lesion's volume that survives
the full render, on a small axis-aligned patient-frame grid around the lesion, so that a
placement can be validated without rendering whole images. Coordinates are patient mm (x, y, z)
as in :mod:`anatomy`; arrays are (z, y, x).
"""

from __future__ import annotations

import math

import numpy as np

from dmfn.synth.anatomy import (
    CAVITY_LABELS,
    LESION,
    Canvas,
    ChestAnatomy,
    Grid,
    make_grid,
    render_chest,
)

#: Least fraction of a lesion's volume that must stay visible (not hidden by organs painted
#: after it, not outside the thoracic cavity) for a placement to be accepted.
MIN_VISIBLE_FRACTION = 0.7
#: Samples across the longest side of the check grid, and the limits of its spacing (mm).
CHECK_SAMPLES = 48
CHECK_SPACING_MM = (0.5, 3.0)


def check_grid(center_mm: np.ndarray, half_extent_mm: np.ndarray) -> Grid:
    """Axis-aligned patient-frame grid covering ``center_mm`` +- ``half_extent_mm`` (x, y, z mm).

    Isotropic spacing: the box's longest side over :data:`CHECK_SAMPLES`, clipped to
    :data:`CHECK_SPACING_MM`. The grid is centred on ``center_mm`` (a sample sits on it).
    """
    center = np.asarray(center_mm, np.float64)
    ext = np.asarray(half_extent_mm, np.float64)
    if center.shape != (3,) or ext.shape != (3,) or not np.all(ext > 0):
        raise ValueError(
            "arguments 'center_mm', 'half_extent_mm': need 3 values (x, y, z mm), "
            f"half-extents > 0, got {center_mm!r}, {half_extent_mm!r}"
        )
    h = float(np.clip(2.0 * ext.max() / CHECK_SAMPLES, *CHECK_SPACING_MM))
    axes = []
    for c, e in zip(center, ext, strict=True):
        k = math.ceil(e / h)
        axes.append(c + h * np.arange(-k, k + 1))
    return make_grid(axes[0], axes[1], axes[2], 0.0, np.zeros(3))


def surviving_fraction(anatomy: ChestAnatomy, grid: Grid, inside: np.ndarray) -> float:
    """Fraction of the lesion samples ``inside`` that are still lesion after the full render.

    ``anatomy`` is the chest as rendered with this lesion (its mass effect applied), ``grid``
    any sampling grid (e.g. :func:`check_grid`) and ``inside`` the lesion's occupancy on it
    (bool, the grid's (z, y, x) shape). The lesion is painted where the phantom paints it
    (over cavity tissues, before the organs); 0.0 when ``inside`` is empty.
    """
    inside = np.asarray(inside)
    if inside.dtype != bool or inside.shape != grid.shape:
        raise ValueError(
            f"argument 'inside': must be a bool array of the grid's shape {grid.shape}, "
            f"got {inside.dtype} {inside.shape}"
        )
    total = int(np.count_nonzero(inside))
    if total == 0:
        return 0.0
    everywhere = (slice(None), slice(None), slice(None))

    def paint(cv: Canvas) -> None:
        cv.paint((everywhere, inside), 0.0, LESION, only=CAVITY_LABELS)

    canvas = render_chest(anatomy, grid, paint)
    return int(np.count_nonzero(canvas.label == LESION)) / total
