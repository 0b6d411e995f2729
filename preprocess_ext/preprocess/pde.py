"""Fourth-order PDE denoising (You & Kaveh, IEEE TIP 2000) of CT volumes in HU.

The PDE is ``u_t = -Lap(c(|Lap u|) Lap u)`` with ``c(s) = 1 / (1 + (s/k)^2)``, discretised with
the 7-point (``mode="3d"``) or 5-point per axial slice (``mode="2d"``) Laplacian on the unit voxel
grid, Neumann boundaries whose ghost voxel equals the boundary voxel (``numpy.pad(mode="edge")``)
for both Laplacians, and explicit Euler steps::

    g = c(|Lap u|) Lap u
    u <- u - dt * Lap(g) + dt * fidelity * (u0 - u)

Without fidelity the mean is conserved (to float32 rounding). The kernel runs in the C++
extension (float32, OpenMP, GIL released); :mod:`dmfn.preprocess.reference.pde` is the NumPy
reference of the same definition.
"""

from __future__ import annotations

import math
import operator
from dataclasses import dataclass
from typing import Literal

import numpy as np

from dmfn.contract.errors import InvalidInput
from dmfn.contract.params import STABILITY_BOUND
from dmfn.preprocess import _core as _preprocess

from ._validate import as_positive, as_volume

PdeMode = Literal["3d", "2d"]


def _check_mode(mode: object) -> PdeMode:
    if mode not in STABILITY_BOUND:
        raise InvalidInput("mode", f"must be '3d' or '2d', got {mode!r}")
    return mode  # type: ignore[return-value]


def pde_stability_bound(mode: PdeMode = "3d") -> float:
    """The largest stable explicit-Euler step dt: 1/72 for ``"3d"``, 1/32 for ``"2d"``."""
    return STABILITY_BOUND[_check_mode(mode)]


@dataclass(frozen=True)
class PdeArguments:
    """Validated arguments of :func:`denoise_pde` (shared with the NumPy reference)."""

    volume: np.ndarray  # C-contiguous float32, (y, x) or (z, y, x), HU
    k: float  # edge threshold, HU
    dt: float
    iterations: int
    mode: PdeMode
    fidelity: float


def validate_pde_arguments(
    volume: object,
    k: float,
    dt: float,
    iterations: int,
    mode: object = "3d",
    fidelity: float = 0.0,
    max_voxels: int | None = None,
) -> PdeArguments:
    """Check every argument of :func:`denoise_pde`; raise ValueError naming the bad one."""
    mode = _check_mode(mode)
    k = as_positive(k, "k")
    dt_value = float(dt)
    bound = STABILITY_BOUND[mode]
    if not (math.isfinite(dt_value) and dt_value > 0):
        raise InvalidInput("dt", f"must be finite and > 0, got {dt!r}")
    if dt_value > bound:
        raise InvalidInput(
            "dt",
            f"{dt_value} is above the explicit-scheme stability bound "
            f"{bound} (1/{round(1 / bound)}) for mode {mode!r}",
        )
    if isinstance(iterations, bool | np.bool_):
        raise InvalidInput("iterations", f"must be an integer >= 0, got {iterations!r}")
    try:
        n_iter = operator.index(iterations)
    except TypeError as err:
        raise InvalidInput("iterations", f"must be an integer >= 0, got {iterations!r}") from err
    if n_iter < 0:
        raise InvalidInput("iterations", f"must be an integer >= 0, got {n_iter}")
    lam = float(fidelity)
    if not (math.isfinite(lam) and lam >= 0):
        raise InvalidInput("fidelity", f"must be finite and >= 0, got {fidelity!r}")
    u = as_volume(volume, "volume", ndims=(2, 3), cap=max_voxels)
    return PdeArguments(u, k, dt_value, n_iter, mode, lam)


def denoise_pde(
    volume: np.ndarray,
    k: float,
    dt: float,
    iterations: int,
    mode: PdeMode = "3d",
    fidelity: float = 0.0,
    *,
    threads: int | None = None,
    max_voxels: int | None = None,
) -> np.ndarray:
    """Denoise a CT image with the fourth-order You-Kaveh PDE.

    Args:
        volume: HU values, 2D (y, x) (one axial slice) or 3D (z, y, x). Any real dtype is
            accepted and converted to a C-contiguous float32 copy (int16 HU and float64 included;
            float32 C-contiguous input is used without copying); non-contiguous arrays are
            converted. bool, complex and object arrays, NaN/Inf, empty arrays and other ndims
            raise ValueError.
        k: edge threshold of the diffusivity c(s) = 1 / (1 + (s/k)^2), in HU (> 0), compared
            with |Lap u| (HU per voxel^2).
        dt: explicit-Euler time step, 0 < dt <= :func:`pde_stability_bound` (1/72 for "3d",
            1/32 for "2d").
        iterations: number of Euler steps (integer >= 0; 0 returns a float32 copy).
        mode: "3d": 7-point Laplacian over (z, y, x); "2d": 5-point Laplacian in every axial
            (y, x) slice, the z slices independent.
        fidelity: lambda >= 0 of the data term dt * lambda * (u0 - u); 0 conserves the mean.
        threads: OpenMP threads (>= 1); None uses the OpenMP default. The z axis is split into
            one slab per thread, so at most z-size threads do work.
        max_voxels: voxel cap for the input/output (default: DMFN_MAX_VOXELS or 2**28).

    Returns:
        The denoised image, float32, same shape and axis order as ``volume``, in HU.
    """
    if threads is not None and (
        isinstance(threads, bool) or not isinstance(threads, int | np.integer) or threads < 1
    ):
        raise InvalidInput("threads", f"must be None or an integer >= 1, got {threads!r}")
    args = validate_pde_arguments(volume, k, dt, iterations, mode, fidelity, max_voxels)
    return _denoise(args, 0 if threads is None else int(threads))


def _denoise(args: PdeArguments, threads: int = 0) -> np.ndarray:
    """:func:`denoise_pde` on already valid arguments (``threads`` 0: the OpenMP default)."""
    return _preprocess.pde_denoise(
        args.volume, args.k, args.dt, args.iterations, args.mode == "3d", args.fidelity, threads
    )
