"""The CuPy backend of the preprocessing kernels (``backend="cupy"``).

The CUDA sources live in ``preprocess_ext/cuda/*.cu`` (installed as ``dmfn/preprocess/cuda``);
their per-voxel math is ``kernel_math.hpp``, the header the C++ CPU kernels compile too, so the CPU
tests check the math the GPU runs. They are compiled at first use by NVRTC through
:class:`cupy.RawModule` (cached by CuPy on disk) and launched here: this module adds only the
launch geometry and the ping-pong of the PDE's buffers.

CuPy is an optional extra (``pip install cupy-cuda13x``; ``cupy-cuda12x`` on CUDA 12 drivers).
Without it, or without a CUDA device, everything else works and :func:`cupy_unavailable_reason`
(and the error of any ``backend="cupy"`` call) says why the GPU backend is unavailable.

Arrays: cupy in, cupy out, float32 C-contiguous, axes (z, y, x).
"""

from __future__ import annotations

import functools
import hashlib
from pathlib import Path
from typing import Any

import numpy as np

from dmfn.contract.errors import InvalidInput
from dmfn.preprocess import _core

#: The preprocessing backends: the C++ extension (NumPy arrays) and the CUDA kernels (CuPy arrays).
BACKENDS: tuple[str, ...] = ("cpu", "cupy")
#: The CUDA sources and the kernels each defines.
CUDA_KERNELS: dict[str, tuple[str, ...]] = {
    "pde.cu": ("pde_iteration_3d", "pde_iteration_2d"),
    "resample.cu": ("resample_linear", "resample_cubic"),
    "window.cu": ("window_hu",),
    "views.cu": ("sample_planes",),
}
#: The header of the shared per-voxel math (CPU and CUDA).
KERNEL_MATH_HEADER = "kernel_math.hpp"
#: Output tile of the PDE kernel (its block shape) and the z planes one block marches through.
_PDE_TILE = (32, 8)
_PDE_Z_CHUNK = 16
_THREADS = 256


class BackendUnavailable(RuntimeError):
    """``backend="cupy"`` was asked for where CuPy or a CUDA device is missing."""


def check_backend(backend: object) -> str:
    """``backend`` if it is one of :data:`BACKENDS`, else InvalidInput naming it."""
    if backend not in BACKENDS:
        raise InvalidInput("backend", f"must be one of {BACKENDS}, got {backend!r}")
    return backend


def is_device_array(value: object) -> bool:
    """True for a CuPy array (checked by module name: CuPy need not be installed)."""
    return type(value).__module__.split(".")[0] == "cupy"


@functools.cache
def cupy_unavailable_reason() -> str | None:
    """None when CuPy is importable and sees a CUDA device, else why the backend is unavailable.

    Asked once per process: every cupy-backend call goes through :func:`cupy_module`."""
    try:
        import cupy
    except ImportError as err:
        return (
            f"CuPy is not installed ({err}); install the GPU extra: pip install cupy-cuda13x "
            "(CUDA 13 drivers) or cupy-cuda12x"
        )
    try:
        count = cupy.cuda.runtime.getDeviceCount()
    except Exception as err:  # CUDARuntimeError without a driver, and others
        return f"CuPy cannot reach a CUDA device: {type(err).__name__}: {err}"
    return None if count > 0 else "CuPy sees no CUDA device"


def cupy_module() -> Any:
    """The ``cupy`` module, or BackendUnavailable saying why not."""
    reason = cupy_unavailable_reason()
    if reason is not None:
        raise BackendUnavailable(f"backend 'cupy' is unavailable: {reason}")
    import cupy

    return cupy


def cuda_source_dir() -> tuple[Path, Path]:
    """(folder of the ``.cu`` files, folder of ``kernel_math.hpp``): the installed copy
    (``dmfn/preprocess/cuda``, both in one folder) or the source tree (``preprocess_ext/cuda``
    and ``preprocess_ext/src``)."""
    here = Path(__file__).resolve().parent
    installed = here / "cuda"
    if (installed / KERNEL_MATH_HEADER).is_file():
        return installed, installed
    tree = here.parent
    if (tree / "cuda" / "pde.cu").is_file() and (tree / "src" / KERNEL_MATH_HEADER).is_file():
        return tree / "cuda", tree / "src"
    raise FileNotFoundError(
        f"the CUDA sources are missing: neither {installed} nor {tree / 'cuda'} holds them"
    )


def _kernel(source: str, name: str) -> Any:
    """A compiled kernel of one ``.cu`` file for the current device (NVRTC; cached per process
    and device, and by CuPy on disk)."""
    return _compiled(source, name, cupy_module().cuda.Device().id)


@functools.cache
def _compiled(source: str, name: str, device: int) -> Any:
    cp = cupy_module()
    sources, _ = cuda_source_dir()
    with cp.cuda.Device(device):
        module = cp.RawModule(code=(sources / source).read_text(), options=nvrtc_options())
        return module.get_function(name)


def nvrtc_options() -> tuple[str, ...]:
    """The NVRTC options every kernel is compiled with (also by tests/test_gpu.py)."""
    _, include = cuda_source_dir()
    header = (include / KERNEL_MATH_HEADER).read_bytes()
    return (
        "-std=c++17",
        f"-I{include}",
        # CuPy's disk cache keys on the source text and the options, not on included files: the
        # header's hash makes an edit of the shared math recompile every kernel.
        f"-DDMFN_KERNEL_MATH_SHA={hashlib.sha256(header).hexdigest()[:16]}",
        # One definition of the PDE tile, here and in pde.cu.
        f"-DDMFN_PDE_TX={_PDE_TILE[0]}",
        f"-DDMFN_PDE_TY={_PDE_TILE[1]}",
    )


def _grid(n: int) -> tuple[int]:
    """A 1D grid-stride launch for n items (capped: the kernels loop)."""
    return (max(1, min((n + _THREADS - 1) // _THREADS, 65535)),)


def to_device(value: object, argument: str) -> Any:
    """``value`` as a CuPy array (NumPy arrays are uploaded), or InvalidInput naming it."""
    cp = cupy_module()
    if is_device_array(value):
        return value
    if isinstance(value, np.ndarray):
        return cp.asarray(value)
    raise InvalidInput(argument, f"must be a numpy or cupy array, got {type(value).__name__}")


def pde_denoise(
    volume: Any,
    k: float,
    dt: float,
    iterations: int,
    three_d: bool,
    fidelity: float,
    spacing_zyx: tuple[float, float, float],
) -> Any:
    """The PDE of :func:`dmfn.preprocess.denoise_pde` on a float32 (z, y, x) or (y, x) CuPy array
    (already validated); the weights and stencil exactly as the C++ kernel. Returns a new array."""
    cp = cupy_module()
    u0 = volume.reshape((1, *volume.shape)) if volume.ndim == 2 else volume
    nz, ny, nx = u0.shape
    if iterations == 0:
        return volume.copy()
    stencil = (spacing_zyx[1], spacing_zyx[2], *((spacing_zyx[0],) if three_d else ()))
    h_min = min(stencil)
    weights = [np.float32((h_min / h) * (h_min / h)) for h in spacing_zyx]  # as the C++ kernel
    if not three_d:
        weights[0] = np.float32(0.0)
    kernel = _kernel("pde.cu", "pde_iteration_3d" if three_d else "pde_iteration_2d")
    tx, ty = _PDE_TILE
    grid = ((nx + tx - 1) // tx, (ny + ty - 1) // ty, (nz + _PDE_Z_CHUNK - 1) // _PDE_Z_CHUNK)
    # Ping-pong so that the last iteration writes `out`.
    out = cp.empty_like(u0)
    other = cp.empty_like(u0) if iterations > 1 else out
    targets = [out, other] if iterations % 2 == 1 else [other, out]
    src = u0
    scalars = (
        np.int64(nz),
        np.int64(ny),
        np.int64(nx),
        np.int64(_PDE_Z_CHUNK),
        np.float32(k * k),
        np.float32(dt),
        np.float32(dt * fidelity),
        *weights,
    )
    for it in range(iterations):
        dst = targets[it % 2]
        kernel(grid, (tx, ty, 1), (src, dst, u0, *scalars))
        src = dst
    return out.reshape(volume.shape)


def resample(
    volume: Any, out_shape: tuple[int, int, int], ratio: tuple[float, float, float], order: int
) -> Any:
    """Separable resampling of a float32 CuPy volume (2D: (y, x) with out_shape[0] == 1), one
    pass per axis with the C++ kernel's taps and order (see dmfn.preprocess.resample_isotropic)."""
    cp = cupy_module()
    cur = volume.reshape((1, *volume.shape)) if volume.ndim == 2 else volume
    kernel = _kernel("resample.cu", "resample_linear" if order == 1 else "resample_cubic")
    # The C++ kernel's pass order, asked of the C++ itself (one source of truth).
    axes = _core.resample_axes(cur.shape, out_shape, ratio)
    if not axes:
        cur = cur.copy()
    for a in axes:
        shape = list(cur.shape)
        outer, n, inner = int(np.prod(shape[:a])), shape[a], int(np.prod(shape[a + 1 :]))
        shape[a] = out_shape[a]
        nxt = cp.empty(tuple(shape), dtype=cp.float32)
        args = (np.int64(outer), np.int64(n), np.int64(out_shape[a]), np.int64(inner))
        kernel(_grid(nxt.size), (_THREADS,), (cur, nxt, *args, np.float64(ratio[a])))
        cur = nxt
    return cur.reshape(out_shape[1:]) if volume.ndim == 2 else cur


def window(volume: Any, level: float, width: float) -> Any:
    """HU in [level - width/2, level + width/2] -> [0, 1], clipped (a new float32 array)."""
    cp = cupy_module()
    out = cp.empty_like(volume)
    lo, inv_width = np.float32(level - width / 2.0), np.float32(1.0 / width)
    _kernel("window.cu", "window_hu")(
        _grid(volume.size), (_THREADS,), (volume, out, np.int64(volume.size), lo, inv_width)
    )
    return out


def sample_planes(
    volume: Any,
    origin: np.ndarray,
    row_step: np.ndarray,
    col_step: np.ndarray,
    size: int,
    fill: float,
) -> Any:
    """Planes ``origin[p] + r row_step[p] + c col_step[p]`` (voxel index units, (z, y, x)) of a
    float32 (z, y, x) CuPy volume, trilinear, ``size x size`` each: (planes, size, size)."""
    cp = cupy_module()
    planes = origin.shape[0]
    out = cp.empty((planes, size, size), dtype=cp.float32)
    geometry = [
        cp.asarray(np.ascontiguousarray(a, dtype=np.float64)) for a in (origin, row_step, col_step)
    ]
    nz, ny, nx = volume.shape
    _kernel("views.cu", "sample_planes")(
        _grid(out.size),
        (_THREADS,),
        (
            volume,
            np.int64(nz),
            np.int64(ny),
            np.int64(nx),
            *geometry,
            np.int64(planes),
            np.int64(size),
            np.float32(fill),
            out,
        ),
    )
    return out


def to_host(value: Any) -> np.ndarray:
    """A NumPy copy of a CuPy array (NumPy arrays pass through)."""
    return value.get() if is_device_array(value) else np.asarray(value)
