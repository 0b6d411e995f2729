"""Fourth-order PDE denoising (You & Kaveh, IEEE TIP 2000) of CT volumes in HU.

The PDE is ``u_t = -Lap(c(|Lap u|) Lap u)`` with ``c(s) = 1 / (1 + (s/k)^2)``, discretised with
the 7-point (``mode="3d"``) or 5-point per axial slice (``mode="2d"``) Laplacian in physical
units expressed on the finest spacing ``h_min`` of the stencil's axes::

    Lap u = sum_a w_a (u[a-1] - 2 u + u[a+1]),   w_a = (h_min / h_a)^2   (= h_min^2 Lap_mm u)

with Neumann boundaries whose ghost voxel equals the boundary voxel (``numpy.pad(mode="edge")``)
for both Laplacians, and explicit Euler steps::

    g = c(|Lap u|) Lap u
    u <- u - dt * Lap(g) + dt * fidelity * (u0 - u)

So ``k`` is in HU per h_min^2 and ``dt`` in units of h_min^4 (the physical step is
``dt * h_min^4`` mm^4). This normalisation keeps the scheme's behaviour on isotropic voxels of
any size equal to the unit-grid scheme (``spacing_mm=None``), keeps ``k`` at the same multiple of
the per-voxel noise's Laplacian, and makes the stability bound
``dt <= 1 / (8 (sum_a w_a)^2)`` (:func:`dmfn.contract.params.pde_stability_bound`, re-exported
here) at least its isotropic value
(1/72 in 3D, 1/32 in 2D) for every spacing, so one default dt is stable for all studies.

Without fidelity the mean is conserved (to float32 rounding). The kernel runs in the C++
extension (float32, OpenMP, GIL released); :mod:`dmfn.preprocess.reference.pde` is the NumPy
reference of the same definition.
"""

from __future__ import annotations

import math
import operator
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

from dmfn.contract.errors import InvalidInput
from dmfn.contract.params import STABILITY_BOUND, PdeMode, pde_stability_bound
from dmfn.preprocess import _core as _preprocess

from . import gpu
from ._validate import as_positive, as_spacing, as_volume
from .gpu import check_backend, is_device_array

#: Iterations per pass over memory of the C++ kernel (temporal blocking, see
#: preprocess_ext/src/pde.cpp) for volumes whose planes do not fit in cache; 1 is the plain
#: kernel (one pass per iteration). Chosen by measurement (benchmarks/bench_pde.py prints the
#: sweep; docs/preprocessing.md).
DEFAULT_TEMPORAL_BLOCK = 2
#: Bytes of the plain kernel's working set (three u and three g float32 planes) above which the
#: default is blocking. Below it the plain kernel already runs from the per-core cache and
#: blocking only adds its halo work: measured 5-10 % slower on 96x96 and 160x160 ROI planes, one
#: thread; faster from 256x256 planes up.
BLOCKING_MIN_WORKING_SET_BYTES = 1 << 20


def default_temporal_block(shape: Sequence[int]) -> int:
    """The temporal block :func:`denoise_pde` uses for a volume of ``shape`` ((z,) y, x)."""
    plane_bytes = 4 * int(shape[-1]) * int(shape[-2])
    return DEFAULT_TEMPORAL_BLOCK if 6 * plane_bytes > BLOCKING_MIN_WORKING_SET_BYTES else 1


def _check_mode(mode: object) -> PdeMode:
    if mode not in STABILITY_BOUND:
        raise InvalidInput("mode", f"must be '3d' or '2d', got {mode!r}")
    return mode


@dataclass(frozen=True)
class PdeArguments:
    """Validated arguments of :func:`denoise_pde` (shared with the NumPy reference)."""

    volume: np.ndarray  # C-contiguous float32, (y, x) or (z, y, x), HU (a cupy array on the GPU)
    k: float  # edge threshold, HU per h_min^2
    dt: float  # units of h_min^4
    iterations: int
    mode: PdeMode
    fidelity: float
    #: Voxel spacing in mm, one per axis of ``volume``; None: the unit voxel grid.
    spacing_mm: tuple[float, ...] | None = None


def validate_pde_arguments(
    volume: object,
    k: float,
    dt: float,
    iterations: int,
    mode: object = "3d",
    fidelity: float = 0.0,
    max_voxels: int | None = None,
    spacing_mm: Sequence[float] | None = None,
    backend: str = "cpu",
) -> PdeArguments:
    """Check every argument of :func:`denoise_pde`; raise ValueError naming the bad one."""
    mode = _check_mode(mode)
    backend = check_backend(backend)
    k = as_positive(k, "k")
    dt_value = float(dt)
    if not (math.isfinite(dt_value) and dt_value > 0):
        raise InvalidInput("dt", f"must be finite and > 0, got {dt!r}")
    u = as_volume(volume, "volume", ndims=(2, 3), cap=max_voxels, backend=backend)
    spacing = None if spacing_mm is None else as_spacing(spacing_mm, u.ndim)
    bound = pde_stability_bound(mode, spacing)
    if dt_value > bound:
        where = "isotropic voxels" if spacing is None else f"spacing {spacing} mm"
        raise InvalidInput(
            "dt",
            f"{dt_value} is above the explicit-scheme stability bound "
            f"{bound} (1/{1 / bound:.4g}) for mode {mode!r} on {where}",
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
    return PdeArguments(u, k, dt_value, n_iter, mode, lam, spacing)


def denoise_pde(
    volume: np.ndarray,
    k: float,
    dt: float,
    iterations: int,
    mode: PdeMode = "3d",
    fidelity: float = 0.0,
    *,
    spacing_mm: Sequence[float] | None = None,
    threads: int | None = None,
    max_voxels: int | None = None,
    backend: str = "cpu",
    temporal_block: int | None = None,
) -> np.ndarray:
    """Denoise a CT image with the fourth-order You-Kaveh PDE.

    Args:
        volume: HU values, 2D (y, x) (one axial slice) or 3D (z, y, x). Any real dtype is
            accepted and converted to a C-contiguous float32 copy (int16 HU and float64 included;
            float32 C-contiguous input is used without copying); non-contiguous arrays are
            converted. bool, complex and object arrays, NaN/Inf, empty arrays and other ndims
            raise ValueError.
        k: edge threshold of the diffusivity c(s) = 1 / (1 + (s/k)^2), > 0, compared with
            |Lap u| in HU per h_min^2 (h_min the finest spacing of the stencil's axes; HU per
            voxel^2 on the unit grid).
        dt: explicit-Euler time step in units of h_min^4, 0 < dt <=
            ``pde_stability_bound(mode, spacing_mm)`` (1/72 for "3d", 1/32 for "2d" on
            isotropic voxels; larger on anisotropic ones).
        iterations: number of Euler steps (integer >= 0; 0 returns a float32 copy).
        mode: "3d": 7-point Laplacian over (z, y, x); "2d": 5-point Laplacian in every axial
            (y, x) slice, the z slices independent.
        fidelity: lambda >= 0 of the data term dt * lambda * (u0 - u); 0 conserves the mean.
        spacing_mm: voxel spacing in mm, one per axis of ``volume`` ((z, y, x) or (y, x));
            each axis' second difference is weighted by (h_min / h_a)^2, i.e. the Laplacian
            is in physical units. None: the unit voxel grid (every weight 1), which equals any
            isotropic spacing.
        threads: OpenMP threads (>= 1); None uses the OpenMP default. The plain kernel splits z
            into one slab per thread (at most z-size threads do work); the blocked kernel hands
            out tiles of y rows.
        max_voxels: voxel cap for the input/output (default: DMFN_MAX_VOXELS or 2**28).
        temporal_block: iterations the C++ kernel advances per pass over memory (>= 1; None:
            :func:`default_temporal_block` of the shape; 1: the plain kernel, one pass per
            iteration). The result is the same to float32 rounding (tests: within 1e-5 HU).
        backend: "cpu" (the C++ kernel, numpy arrays) or "cupy" (the CUDA kernel on the current
            device: numpy or cupy in, cupy out; ``threads`` is ignored). Both run one scheme
            whose per-voxel math is one header (kernel_math.hpp).

    Returns:
        The denoised image, float32, same shape and axis order as ``volume``, in HU.
    """
    for name, value in (("threads", threads), ("temporal_block", temporal_block)):
        if value is not None and (
            isinstance(value, bool) or not isinstance(value, int | np.integer) or value < 1
        ):
            raise InvalidInput(name, f"must be None or an integer >= 1, got {value!r}")
    args = validate_pde_arguments(
        volume, k, dt, iterations, mode, fidelity, max_voxels, spacing_mm, backend
    )
    block = None if temporal_block is None else int(temporal_block)
    return _denoise(args, 0 if threads is None else int(threads), block)


def _denoise(args: PdeArguments, threads: int = 0, block: int | None = None) -> np.ndarray:
    """:func:`denoise_pde` on already valid arguments (``threads`` 0: the OpenMP default;
    ``block`` iterations per pass of the C++ kernel, None: :func:`default_temporal_block`)."""
    if block is None:
        block = default_temporal_block(args.volume.shape)
    spacing = (1.0,) * args.volume.ndim if args.spacing_mm is None else args.spacing_mm
    # The kernel takes (z, y, x); a 2D (y, x) image has no z axis, so it runs the 2D stencil
    # (the z term of a single plane vanishes anyway) and the z spacing is not used.
    three_d = args.mode == "3d" and args.volume.ndim == 3
    sz, sy, sx = (spacing[0], *spacing) if args.volume.ndim == 2 else spacing
    spacing_zyx = (sz, sy, sx)
    if is_device_array(args.volume):
        return gpu.pde_denoise(
            args.volume, args.k, args.dt, args.iterations, three_d, args.fidelity, spacing_zyx
        )
    return _preprocess.pde_denoise(
        args.volume, args.k, args.dt, args.iterations, three_d, args.fidelity, spacing_zyx,
        threads, block,
    )  # fmt: skip
