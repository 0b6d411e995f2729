"""The GPU path: the CUDA sources compile (nvcc for sm_80 and sm_90; NVRTC, which CuPy uses), the
per-voxel math lives in one header, the CuPy backend says why it is unavailable, and, on a GPU,
every CuPy kernel equals the C++ kernel within 1e-3 HU (``-m gpu``; skipped with the reason
elsewhere). scripts/gpu_check.sh runs these on a GPU host."""

from __future__ import annotations

import ctypes
import ctypes.util
import glob
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from dmfn.contract.errors import InvalidInput
from dmfn.contract.params import PreprocessParams
from dmfn.preprocess import (
    denoise_pde,
    orthogonal_views,
    preprocess_study,
    resample_isotropic,
    window,
)
from dmfn.preprocess.gpu import (
    CUDA_KERNELS,
    KERNEL_MATH_HEADER,
    BackendUnavailable,
    cuda_source_dir,
    cupy_unavailable_reason,
    nvrtc_options,
    to_host,
)

ROOT = Path(__file__).resolve().parents[1]
SOURCES, INCLUDE = cuda_source_dir()
CU_FILES = sorted(CUDA_KERNELS)
NVCC = shutil.which("nvcc") or (
    "/usr/local/cuda/bin/nvcc" if os.access("/usr/local/cuda/bin/nvcc", os.X_OK) else None
)
GPU_REASON = cupy_unavailable_reason()
gpu = pytest.mark.skipif(GPU_REASON is not None, reason=f"no GPU backend: {GPU_REASON}")


def test_every_cuda_source_is_listed_and_includes_the_shared_math() -> None:
    assert sorted(p.name for p in SOURCES.glob("*.cu")) == CU_FILES
    for name in CU_FILES:
        text = (SOURCES / name).read_text()
        assert f'#include "{KERNEL_MATH_HEADER}"' in text, name
        for kernel in CUDA_KERNELS[name]:
            assert re.search(rf'extern "C" __global__ .*\b{kernel}\(', text, re.S), (name, kernel)
    for cpp in ("pde.cpp", "resample.cpp", "geometry.cpp", "window.cpp"):
        assert "math::" in (ROOT / "preprocess_ext/src" / cpp).read_text(), cpp


@pytest.mark.parametrize(
    "formula",
    [
        r"k2\s*/\s*\(k2\s*\+",  # the diffusivity flux
        r"\(a \+ 2\.0\) \* t",  # Keys cubic weights
        r"\* inv_width",  # the window
        r"1\.0f - f\[2\]",  # trilinear sampling
    ],
)
def test_kernel_math_is_written_once(formula: str) -> None:
    """Each per-voxel formula appears in the shared header and in no kernel file."""
    files = [*ROOT.glob("preprocess_ext/src/*.[ch]pp"), *SOURCES.glob("*.cu")]
    hits = [f.name for f in files if re.search(formula, f.read_text())]
    assert hits == [KERNEL_MATH_HEADER], hits


@pytest.mark.parametrize("arch", ["sm_80", "sm_90"])
@pytest.mark.parametrize("source", CU_FILES)
def test_cuda_source_compiles_with_nvcc(source: str, arch: str, tmp_path: Path) -> None:
    if NVCC is None:
        pytest.skip("nvcc is not installed here (it is at /usr/local/cuda on the dev machines)")
    out = tmp_path / f"{source}.{arch}.cubin"
    cmd = [NVCC, "-std=c++17", f"-arch={arch}", "-cubin", f"-I{INCLUDE}", str(SOURCES / source)]
    result = subprocess.run([*cmd, "-o", str(out)], capture_output=True, text=True, check=False)
    assert result.returncode == 0, result.stderr
    assert out.stat().st_size > 0


def _find_nvrtc() -> str | None:
    """libnvrtc from the nvidia-cuda-nvrtc wheel (requirements/lock.txt), CUDA, or the system."""
    roots = [Path(p) for p in sys.path if p]
    candidates = [str(f) for r in roots for f in r.glob("nvidia/cu1*/lib/libnvrtc.so.*")]
    candidates += sorted(glob.glob("/usr/local/cuda/lib64/libnvrtc.so*"))
    found = ctypes.util.find_library("nvrtc")
    candidates += [found] if found else []
    return next((c for c in candidates if "builtins" not in c), None)


@pytest.mark.parametrize("source", CU_FILES)
def test_cuda_source_compiles_with_nvrtc(source: str) -> None:
    """What CuPy's RawModule does at run time: NVRTC, no host standard library."""
    path = _find_nvrtc()
    if path is None:
        pytest.skip("libnvrtc not found (pip install nvidia-cuda-nvrtc; make setup installs it)")
    lib = ctypes.CDLL(path)
    prog = ctypes.c_void_p()
    code = (SOURCES / source).read_bytes()
    assert lib.nvrtcCreateProgram(ctypes.byref(prog), code, source.encode(), 0, None, None) == 0
    options = [o.encode() for o in (*nvrtc_options(), "--gpu-architecture=compute_90")]
    status = lib.nvrtcCompileProgram(prog, len(options), (ctypes.c_char_p * len(options))(*options))
    size = ctypes.c_size_t()
    lib.nvrtcGetProgramLogSize(prog, ctypes.byref(size))
    log = ctypes.create_string_buffer(size.value)
    lib.nvrtcGetProgramLog(prog, log)
    lib.nvrtcDestroyProgram(ctypes.byref(prog))
    assert status == 0, log.value.decode()


def test_unknown_backend_is_named() -> None:
    volume = np.zeros((4, 5, 6), np.float32)
    with pytest.raises(InvalidInput, match="backend"):
        denoise_pde(volume, 30.0, 0.01, 1, backend="gpu")
    with pytest.raises(InvalidInput, match="backend"):
        window(volume, backend="cuda")


def test_cupy_array_on_the_cpu_backend_is_refused_with_a_hint() -> None:
    class FakeDevice:  # what a cupy array looks like to the CPU backend's type check
        __module__ = "cupy._core.core"

    with pytest.raises(InvalidInput, match="backend='cupy'"):
        resample_isotropic(FakeDevice(), (1.0, 1.0, 1.0))  # type: ignore[arg-type]


def test_without_a_gpu_the_cupy_backend_says_why() -> None:
    if GPU_REASON is None:
        pytest.skip("a GPU backend is available here; the unavailable path is not reachable")
    print(f"cupy backend unavailable here: {GPU_REASON}")
    volume = np.zeros((4, 5, 6), np.float32)
    with pytest.raises(BackendUnavailable, match="backend 'cupy' is unavailable: "):
        denoise_pde(volume, 30.0, 0.01, 1, backend="cupy")
    with pytest.raises(BackendUnavailable, match=re.escape(GPU_REASON)):
        preprocess_study(
            np.zeros((4, 8, 8), np.int16), (2.0, 1.0, 1.0), np.ones((4, 8, 8), np.uint8),
            [10.0], [50, 1, 1, 0, 0], backend="cupy",
        )  # fmt: skip
    # The CPU path is unaffected.
    assert window(volume).dtype == np.float32


# --- on a GPU: CuPy against the C++ kernels, every kernel -------------------------------------

SHAPES = [(1, 1, 1), (1, 7, 5), (2, 3, 5), (3, 1, 13), (17, 31, 37), (40, 67, 70)]


def _volume(shape: tuple[int, ...], seed: int = 0) -> np.ndarray:
    rng = np.random.default_rng(seed)
    base = rng.normal(40.0, 30.0, shape)
    base[tuple(slice(s // 3, max(s // 3 + 1, 2 * s // 3)) for s in shape)] += 300.0  # an edge
    return base.astype(np.float32)


@gpu
@pytest.mark.gpu
@pytest.mark.parametrize("shape", SHAPES)
@pytest.mark.parametrize("mode", ["3d", "2d"])
@pytest.mark.parametrize("fidelity", [0.0, 0.05])
def test_pde_cupy_equals_cpp(shape: tuple[int, ...], mode: str, fidelity: float) -> None:
    volume = _volume(shape)
    kwargs = dict(
        k=30.0, dt=0.01, iterations=7, mode=mode, fidelity=fidelity, spacing_mm=(2.5, 0.7, 0.8)
    )
    cpu = denoise_pde(volume, **kwargs)
    dev = to_host(denoise_pde(volume, backend="cupy", **kwargs))
    np.testing.assert_allclose(dev, cpu, rtol=0, atol=1e-3)


@gpu
@pytest.mark.gpu
@pytest.mark.parametrize("shape", SHAPES)
@pytest.mark.parametrize("order", ["linear", "cubic"])
def test_resample_cupy_equals_cpp(shape: tuple[int, ...], order: str) -> None:
    volume = _volume(shape, 1)
    for spacing in [(2.5, 0.7, 0.7), (1.0, 1.3, 0.9), (1.0, 1.0, 1.0)]:
        cpu = resample_isotropic(volume, spacing, 1.0, order)
        dev = to_host(resample_isotropic(volume, spacing, 1.0, order, backend="cupy"))
        assert dev.shape == cpu.shape
        np.testing.assert_allclose(dev, cpu, rtol=0, atol=1e-3)
    image = volume[0]
    np.testing.assert_allclose(
        to_host(resample_isotropic(image, (0.7, 0.8), 1.0, order, backend="cupy")),
        resample_isotropic(image, (0.7, 0.8), 1.0, order), rtol=0, atol=1e-3,
    )  # fmt: skip


@gpu
@pytest.mark.gpu
@pytest.mark.parametrize("shape", SHAPES)
def test_window_and_views_cupy_equal_cpp(shape: tuple[int, ...]) -> None:
    volume = _volume(shape, 2)
    np.testing.assert_allclose(to_host(window(volume, backend="cupy")), window(volume), atol=1e-6)
    mask = np.zeros(shape, np.uint8)
    mask[tuple(slice(s // 4, s // 4 + max(1, s // 2)) for s in shape)] = 1
    for size in (2, 17, 64):
        cpu = orthogonal_views(volume, mask, size, margin_vox=2.0)
        dev = to_host(orthogonal_views(volume, mask, size, margin_vox=2.0, backend="cupy"))
        np.testing.assert_allclose(dev, cpu, rtol=0, atol=1e-3)


@gpu
@pytest.mark.gpu
@pytest.mark.parametrize("shape", [(24, 64, 64), (9, 40, 31)])
def test_preprocess_study_on_the_device_equals_cpu(shape: tuple[int, ...]) -> None:
    rng = np.random.default_rng(3)
    hu = rng.normal(30, 40, shape).astype(np.int16)
    mask = np.zeros(shape, np.uint8)
    mask[3:7, 10:25, 8:20] = 1
    params = PreprocessParams()
    # Spacings whose resampling weights are never exactly 0.5 (no ties at the mask threshold).
    args = (hu, (2.3, 0.77, 0.83), mask, [12.0], [55, 1, 0, 1, 0])
    cpu = preprocess_study(*args, params=params)
    dev = preprocess_study(*args, params=params, backend="cupy")
    assert type(dev.views).__module__.startswith("cupy")
    np.testing.assert_allclose(to_host(dev.views), cpu.views, rtol=0, atol=1e-4)
    np.testing.assert_array_equal(dev.tabular, cpu.tabular)
    np.testing.assert_allclose(dev.measurements, cpu.measurements, rtol=1e-6)
