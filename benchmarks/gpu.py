"""GPU benchmark (not a test): the CuPy kernels against their peers on the same machine, one run.

    python benchmarks/gpu.py [--quick] [--out results.json]

1. PDE 3D: effective bandwidth (8 bytes per voxel per iteration: one read and one write of the
   volume) of the CUDA kernel against the device-to-device copy bandwidth measured in the same run
   (bytes read + written). Target: >= 0.5x the copy.
2. A 300x512x512 study preprocessed end to end (the lesion box spans the whole study, so every
   stage runs on every voxel: the worst case): preprocess_study with backend "cupy" (the host ->
   device upload of the int16 HU included) against the C++ kernels on all this machine's CPU
   cores. Target: >= 20x.

Needs CuPy and a CUDA GPU; elsewhere it says why and exits 2. Timings: the best of repeats
after a warm-up (NVRTC compiles at the first call), GPU work timed with the device synchronised.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
from _common import best_time

from dmfn.contract.params import PreprocessParams
from dmfn.preprocess import denoise_pde, preprocess_study
from dmfn.preprocess.gpu import cupy_unavailable_reason, to_host

PDE_TARGET = 0.5
E2E_TARGET = 20.0


def _seconds(run: Callable[[], Any], repeats: int, sync: Callable[[], None]) -> float:
    """Best wall time of ``repeats`` runs after one warm-up, the device synchronised each time."""
    run()
    sync()
    seconds, _ = best_time(lambda: (run(), sync()), repeats)
    return seconds


def copy_bandwidth_gbs(cp: Any, n_bytes: int, sync: Callable[[], None]) -> float:
    """Device-to-device copy, bytes read + written per second, in GB/s."""
    a = cp.ones(n_bytes // 4, dtype=cp.float32)
    b = cp.empty_like(a)
    seconds = _seconds(lambda: cp.copyto(b, a), 20, sync)
    return 2 * a.nbytes / seconds / 1e9


def pde_bandwidth(cp: Any, shape: tuple[int, int, int], iterations: int, sync) -> dict[str, float]:
    rng = np.random.default_rng(0)
    volume = cp.asarray(rng.normal(40, 30, shape).astype(np.float32))
    kwargs = dict(k=30.0, dt=0.01, iterations=iterations, mode="3d", spacing_mm=(1.0, 0.8, 0.8))
    seconds = _seconds(lambda: denoise_pde(volume, backend="cupy", **kwargs), 5, sync)
    voxels = int(np.prod(shape))
    return {
        "seconds": seconds,
        "effective_gbs": 8 * voxels * iterations / seconds / 1e9,
        "gvoxel_updates_per_s": voxels * iterations / seconds / 1e9,
    }


def full_study(shape: tuple[int, int, int]) -> tuple[np.ndarray, np.ndarray]:
    """int16 HU with a soft-tissue lesion, and a mask whose box is the whole study."""
    rng = np.random.default_rng(1)
    hu = rng.normal(-600, 200, shape).astype(np.int16)
    z, y, x = (s // 2 for s in shape)
    hu[z - 20 : z + 20, y - 40 : y + 40, x - 40 : x + 40] = 40
    mask = np.zeros(shape, np.uint8)
    mask[z - 20 : z + 20, y - 40 : y + 40, x - 40 : x + 40] = 1
    mask[0, 0, 0] = mask[-1, -1, -1] = 1  # the box spans the whole study
    return hu, mask


def end_to_end(cp: Any, shape: tuple[int, int, int], sync) -> dict[str, float]:
    hu, mask = full_study(shape)
    spacing = (1.0, 0.7, 0.7)
    params = PreprocessParams(max_voxels=2**30)
    args = (hu, spacing, mask, [12.0], [60, 1, 0, 1, 0])
    gpu_s = _seconds(lambda: preprocess_study(*args, params=params, backend="cupy"), 5, sync)
    cpu_s = _seconds(lambda: preprocess_study(*args, params=params), 2, lambda: None)
    gpu = preprocess_study(*args, params=params, backend="cupy")
    cpu = preprocess_study(*args, params=params)
    diff = float(np.abs(to_host(gpu.views) - cpu.views).max())
    return {
        "gpu_seconds": gpu_s,
        "cpu_seconds": cpu_s,
        "speedup": cpu_s / gpu_s,
        "max_abs_view_difference": diff,
        "cpu_threads": os.cpu_count() or 1,
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--quick", action="store_true", help="smaller volumes (a fast look)")
    parser.add_argument("--out", type=Path, help="also write the numbers as JSON here")
    args = parser.parse_args(argv)
    reason = cupy_unavailable_reason()
    if reason is not None:
        print(f"benchmarks/gpu.py: no GPU backend here: {reason}", file=sys.stderr)
        return 2
    import cupy as cp

    def sync() -> None:
        cp.cuda.Device().synchronize()

    name = cp.cuda.runtime.getDeviceProperties(cp.cuda.Device().id)["name"].decode()
    pde_shape = (64, 256, 256) if args.quick else (300, 512, 512)
    study_shape = (100, 512, 512) if args.quick else (300, 512, 512)
    copy_gbs = copy_bandwidth_gbs(cp, 1 << 30, sync)
    pde = pde_bandwidth(cp, pde_shape, 20, sync)
    e2e = end_to_end(cp, study_shape, sync)
    ratio = pde["effective_gbs"] / copy_gbs
    print(f"== GPU: {name} ==")
    print(f"device-to-device copy: {copy_gbs:,.0f} GB/s (read + write)")
    print(
        f"PDE 3D {pde_shape}, 20 iterations: {pde['seconds'] * 1e3:.1f} ms, "
        f"{pde['effective_gbs']:,.0f} GB/s effective = {ratio:.2f}x copy "
        f"(target >= {PDE_TARGET}x: {'met' if ratio >= PDE_TARGET else 'NOT met'})"
    )
    print(
        f"end to end {study_shape} study: CuPy {e2e['gpu_seconds'] * 1e3:.1f} ms, "
        f"C++ on {e2e['cpu_threads']} CPU threads {e2e['cpu_seconds'] * 1e3:.0f} ms = "
        f"{e2e['speedup']:.1f}x (target >= {E2E_TARGET}x: "
        f"{'met' if e2e['speedup'] >= E2E_TARGET else 'NOT met'}); "
        f"max view difference {e2e['max_abs_view_difference']:.2g}"
    )
    if args.out is not None:
        result = {"device": name, "copy_gbs": copy_gbs, "pde": pde, "pde_vs_copy": ratio}
        args.out.write_text(json.dumps({**result, "end_to_end": e2e}, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
