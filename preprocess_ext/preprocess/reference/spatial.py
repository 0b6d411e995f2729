"""Plain NumPy references of the spatial kernels (slow, obviously correct; for parity tests).

Axes (z, y, x); spacings in mm; no argument checking (the tests feed valid inputs).
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import numpy as np


def linear_kernel(t: np.ndarray) -> np.ndarray:
    """Triangle (tent) kernel: 1 - |t| on |t| < 1."""
    return np.maximum(0.0, 1.0 - np.abs(t))


def keys_kernel(t: np.ndarray, a: float = -0.5) -> np.ndarray:
    """Keys (1981) cubic convolution kernel, written out piecewise."""
    t = np.abs(t)
    near = (a + 2.0) * t**3 - (a + 3.0) * t**2 + 1.0
    far = a * t**3 - 5.0 * a * t**2 + 8.0 * a * t - 4.0 * a
    return np.where(t <= 1.0, near, np.where(t < 2.0, far, 0.0))


def interpolation_matrix(n_in: int, n_out: int, ratio: float, order: str) -> np.ndarray:
    """Dense (n_out, n_in) matrix: row j holds the weights of output j sampled at j * ratio.

    Sample positions are clamped to [0, n_in - 1] for linear; for cubic the four taps around
    the position read clamped indices (edge replication), so weights of taps past an edge fall
    on the edge voxel.
    """
    kernel, radius = (linear_kernel, 1) if order == "linear" else (keys_kernel, 2)
    mat = np.zeros((n_out, n_in))
    for j in range(n_out):
        p = j * ratio
        base = math.floor(p)
        for i in range(base - radius + 1, base + radius + 1):
            mat[j, min(max(i, 0), n_in - 1)] += kernel(np.asarray(p - i, dtype=float))
    return mat


def resample_isotropic(
    volume: np.ndarray, spacing_mm: Sequence[float], target_mm: float = 1.0, order: str = "linear"
) -> np.ndarray:
    """Separable resampling in float64: one dense interpolation matrix per axis."""
    out = np.asarray(volume, dtype=np.float64)
    for axis, s in enumerate(spacing_mm):
        n = out.shape[axis]
        m = max(1, math.floor(n * s / target_mm + 0.5))
        mat = interpolation_matrix(n, m, target_mm / s, order)
        out = np.moveaxis(np.tensordot(mat, out, axes=([1], [axis])), 0, axis)
    return out


def window(volume_hu: np.ndarray, level: float = 50.0, width: float = 350.0) -> np.ndarray:
    """(HU - (level - width/2)) / width, clipped to [0, 1]."""
    return np.clip((np.asarray(volume_hu, dtype=np.float64) - (level - width / 2)) / width, 0, 1)


def measure_lesion(mask: np.ndarray, spacing_mm: Sequence[float]) -> dict[str, float]:
    """Brute force over every pair of lesion pixels of the largest axial slice.

    Long axis ties are broken by the largest short axis, as in the fast version.
    """
    sz, sy, sx = spacing_mm
    m = np.asarray(mask) != 0
    areas = m.sum(axis=(1, 2))
    k = int(np.argmax(areas))
    zs = np.flatnonzero(areas)
    pts = np.argwhere(m[k]).astype(float) * [sy, sx]

    def width(u: np.ndarray) -> float:
        return math.hypot(u[0] * sy, u[1] * sx)

    default = np.array([1.0, 0.0] if sy >= sx else [0.0, 1.0])
    candidates = []  # (long axis, short axis) for every ordered pair of pixels
    for i in range(len(pts)):
        for j in range(len(pts)):
            d = pts[i] - pts[j]
            dist = math.hypot(*d)
            u = d / dist if dist > 0 else default
            perp = np.array([-u[1], u[0]])
            proj = pts @ perp
            candidates.append((dist + width(u), float(proj.max() - proj.min()) + width(perp)))
    long_mm = max(c[0] for c in candidates)
    short_mm = max(c[1] for c in candidates if c[0] >= long_mm - 1e-9)
    return {
        "volume_mm3": float(m.sum()) * sz * sy * sx,
        "max_axial_area_mm2": float(areas[k]) * sy * sx,
        "long_axis_mm": long_mm,
        "short_axis_mm": short_mm,
        "craniocaudal_mm": float(zs[-1] - zs[0] + 1) * sz,
    }


def sample_point(volume: np.ndarray, q: Sequence[float], fill: float) -> float:
    """Trilinear value at (z, y, x) in voxel units: `fill` outside [-0.5, n - 0.5], else clamped."""
    v = np.asarray(volume, dtype=np.float64)
    n = v.shape
    if any(not (-0.5 <= c <= s - 0.5) for c, s in zip(q, n, strict=True)):
        return fill
    c = [min(max(c, 0.0), s - 1) for c, s in zip(q, n, strict=True)]
    total = 0.0
    for corner in np.ndindex(2, 2, 2):
        weight, idx = 1.0, []
        for a in range(3):
            i0 = math.floor(c[a])
            f = c[a] - i0
            weight *= f if corner[a] else 1.0 - f
            idx.append(min(i0 + corner[a], n[a] - 1))
        total += weight * v[tuple(idx)]
    return total
