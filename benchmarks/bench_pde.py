"""Benchmark of the fourth-order PDE denoising: C++ kernel vs the NumPy reference vs memory copy.

Everything is measured in one process run on the same machine:

- copy: ``np.copyto`` of a float32 array of the benchmark shape; its bandwidth counts one read and
  one write per voxel (8 bytes).
- C++ kernel (``dmfn.preprocess.denoise_pde``), 3D and 2D modes, default threads and 1 thread,
  on anisotropic voxels ``SPACING_MM`` (the spacing-aware Laplacian; its cost does not depend on
  the spacing's values). Effective bandwidth counts 8 bytes per voxel per iteration (one read +
  one write of the volume); "of copy" is that bandwidth over the copy's, the target being >= 0.5
  (docs/preprocessing.md).
- NumPy reference (``dmfn.preprocess.reference.pde``): too slow for the full volume, so it runs
  on a sub-volume (the first ``REFERENCE_PLANES`` axial planes) for ``REFERENCE_ITERATIONS``
  iterations and its time is scaled per voxel-iteration to the benchmark's volume and iterations.

- temporal blocking: the 3D kernel with ``temporal_block`` T = 1 (plain), 2, 3, 4, 6 iterations per
  pass over memory, on all threads, alone and with a competing CPU-bound process on core 0 (the
  normal state inside Triton, where preprocess workers and the net share the cores).

Each timing is the best of ``repeats`` runs. Usage: ``python benchmarks/bench_pde.py``.
"""

from __future__ import annotations

import multiprocessing
import os
from collections.abc import Iterator
from contextlib import contextmanager

import numpy as np
from _common import best_time

from dmfn.preprocess import _core as _preprocess
from dmfn.preprocess import denoise_pde, pde_stability_bound
from dmfn.preprocess.reference import pde as reference

#: Axial planes and iterations of the NumPy reference run (scaled per voxel-iteration).
REFERENCE_PLANES = 12
REFERENCE_ITERATIONS = 2
#: Bytes moved per voxel per iteration for the effective bandwidth (float32 read + write).
BYTES_PER_VOXEL = 8
K_HU = 30.0
#: Voxel spacing (z, y, x) of the benchmark volume, mm: thick slices, as in many crops.
SPACING_MM = (2.5, 0.7, 0.7)


def _phantom(shape: tuple[int, ...], seed: int = 0) -> np.ndarray:
    """Air (-1000 HU) around a soft-tissue ellipsoid (40 HU) with Gaussian noise (SD 25 HU)."""
    rng = np.random.default_rng(seed)
    grids = np.ogrid[tuple(slice(0, n) for n in shape)]
    r2 = sum(((g - (n - 1) / 2) / (0.45 * n)) ** 2 for g, n in zip(grids, shape, strict=True))
    hu = np.where(r2 <= 1.0, 40.0, -1000.0)
    return (hu + rng.normal(0.0, 25.0, shape)).astype(np.float32)


#: Iterations per pass over memory compared (1 = the plain kernel).
BLOCKS = (1, 2, 3, 4, 6)


def _spin() -> None:
    os.sched_setaffinity(0, {0})
    while True:
        pass


@contextmanager
def competing_process(active: bool) -> Iterator[None]:
    """A CPU-bound process pinned to core 0 while the block runs (nothing when not active)."""
    if not active:
        yield
        return
    spinner = multiprocessing.get_context("fork").Process(target=_spin, daemon=True)
    spinner.start()
    try:
        yield
    finally:
        spinner.terminate()
        spinner.join()


def _dt(mode: str) -> float:
    return 0.9 * pde_stability_bound(mode)


def run(
    shape: tuple[int, int, int] = (120, 512, 512), iterations: int = 10, repeats: int = 3
) -> list[dict]:
    """Time copy, the C++ kernel and the NumPy reference on ``shape`` (z, y, x) voxels.

    Returns one dict per row: name, threads, seconds (for ``iterations`` iterations over the
    whole volume; extrapolated for the reference), voxel_updates_per_s, effective_gb_s,
    copy_gb_s, fraction_of_copy, ratio_vs_numpy (reference seconds / row seconds, same mode) and
    a note.
    """
    volume = _phantom(shape)
    voxel_iterations = volume.size * iterations
    copy_target = np.empty_like(volume)
    copy_s, _ = best_time(lambda: np.copyto(copy_target, volume), max(repeats, 5))
    copy_gb_s = BYTES_PER_VOXEL * volume.size / copy_s / 1e9

    sub = np.ascontiguousarray(volume[:REFERENCE_PLANES])
    reference_s = {}
    for mode in ("3d", "2d"):
        t, _ = best_time(
            lambda m=mode: reference.denoise_pde(
                sub, K_HU, _dt(m), REFERENCE_ITERATIONS, m, spacing_mm=SPACING_MM
            ),
            1,
        )
        reference_s[mode] = t / (sub.size * REFERENCE_ITERATIONS) * voxel_iterations

    def row(name: str, threads: int | None, seconds: float, mode: str | None, note: str) -> dict:
        bandwidth = BYTES_PER_VOXEL * voxel_iterations / seconds / 1e9
        return {
            "name": name,
            "threads": threads,
            "seconds": seconds,
            "voxel_updates_per_s": voxel_iterations / seconds,
            "effective_gb_s": bandwidth,
            "copy_gb_s": copy_gb_s,
            "fraction_of_copy": bandwidth / copy_gb_s,
            "ratio_vs_numpy": reference_s[mode] / seconds if mode else float("nan"),
            "note": note,
        }

    default_threads = os.cpu_count() if _preprocess.openmp else 1
    rows = [
        row(
            "copy (np.copyto, 8 B/voxel)",
            1,
            copy_s * iterations,
            None,
            f"one copy {copy_s * 1e3:.1f} ms, x{iterations} for comparison",
        )
    ]
    for mode in ("3d", "2d"):
        for threads in (None, 1):
            seconds, _ = best_time(
                lambda m=mode, t=threads: denoise_pde(
                    volume, K_HU, _dt(m), iterations, m, spacing_mm=SPACING_MM, threads=t
                ),
                repeats,
            )
            rows.append(
                row(
                    f"C++ pde {mode}",
                    default_threads if threads is None else threads,
                    seconds,
                    mode,
                    "threads=None (OpenMP default)" if threads is None else "",
                )
            )
    for busy in (False, True):
        with competing_process(busy):
            for block in BLOCKS:
                seconds, _ = best_time(
                    lambda b=block: denoise_pde(
                        volume, K_HU, _dt("3d"), iterations, "3d", spacing_mm=SPACING_MM,
                        temporal_block=b,
                    ),
                    repeats,
                )  # fmt: skip
                note = "busy loop on core 0" if busy else ""
                rows.append(row(f"C++ pde 3d, T={block}", default_threads, seconds, "3d", note))
    for mode in ("3d", "2d"):
        rows.append(
            row(
                f"NumPy reference {mode}",
                1,
                reference_s[mode],
                mode,
                f"timed on {sub.shape} x {REFERENCE_ITERATIONS} it, scaled per voxel-iteration",
            )
        )
    return rows


def format_table(rows: list[dict]) -> str:
    """The rows as a fixed-width text table."""
    header = (
        f"{'name':<28} {'thr':>3} {'seconds':>9} {'Gvox/s':>8} {'eff GB/s':>9} "
        f"{'copy GB/s':>9} {'of copy':>7} {'x NumPy':>8}  note"
    )
    lines = [header, "-" * len(header)]
    for r in rows:
        lines.append(
            f"{r['name']:<28} {r['threads']!s:>3} {r['seconds']:>9.3f} "
            f"{r['voxel_updates_per_s'] / 1e9:>8.3f} {r['effective_gb_s']:>9.2f} "
            f"{r['copy_gb_s']:>9.2f} {r['fraction_of_copy']:>7.2f} {r['ratio_vs_numpy']:>8.1f}  "
            f"{r['note']}"
        )
    return "\n".join(lines)


if __name__ == "__main__":
    shape = (120, 512, 512)
    iterations = 10
    print(
        f"PDE denoising benchmark, shape (z, y, x) = {shape} at {SPACING_MM} mm, "
        f"{iterations} iterations"
    )
    print(format_table(run(shape, iterations)))
