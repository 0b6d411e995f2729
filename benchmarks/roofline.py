"""The PDE and the resampling against both roofs of this machine, measured in the same run.

Roofs (printed, with the copy bandwidth, so a figure from one machine can be read on another):

- compute: a C++ microbenchmark compiled here with the system compiler (``g++ -O3
  -march=native``; NumPy cannot reach the FMA units): per thread, 12 independent chains of
  vector FMAs (``_mm512_fmadd_ps`` and, separately, 256-bit ``_mm256_fmadd_ps``: GCC's
  ``-march=native`` auto-vectorises the kernels at 256 bits on most Intel CPUs), one thread per
  core (std::thread), 2 flops per lane per FMA; and the vector division rate (12 independent
  ``div_ps`` chains), because the PDE's flux has one division per voxel and a divider is far
  slower than an FMA port. The project's extension exposes no such probe, so the source is
  here (:data:`MICROBENCH`), compiled into ``build/roofline_microbench`` on first use.
- memory: ``np.copyto`` of 512 MiB of float32 (read + write bytes per second; larger than any
  cache), and of arrays the size of the benchmarked volumes (their working sets may sit in a
  large shared L3).

The PDE's cost, counted from ``preprocess_ext/src/kernel_math.hpp`` (``laplacian``,
``pde_flux``, ``pde_step``) per voxel per iteration, no data term (``pde_fidelity`` = 0, the
default):

- Laplacian, per axis ``w * ((m - c) + (p - c))``: 2 subtractions + 1 addition + 1
  multiplication, and 1 addition per axis beyond the first: 3D 4 * 3 + 2 = 14 flops, 2D 4 * 2 +
  1 = 9. It runs twice (on u, then on g).
- flux ``L * k2 / (k2 + L * L)``: 2 multiplications, 1 addition, 1 division = 4 flops.
- step ``u - dt * Lap g``: 1 multiplication + 1 subtraction = 2 flops.
- total: 3D 34 flops, 2D 24 flops, of which ONE division (counted as 1 flop); no exp, no sqrt
  (the diffusivity 1 / (1 + (s/k)^2) is rational). As issued instructions on the FMA ports,
  with multiply-adds fused: Laplacian 3D 12 (9 sub/add, 1 mul, 2 FMA), 2D 8; flux 2 + the
  division; step 1: 3D 27 + 1 division, 2D 19 + 1 division.
- bytes: one read and one write of u per iteration, 8 B/voxel (the g planes live in a ring of
  three plane buffers in cache); temporal blocking with T iterations per pass moves 8 / T B.

The compute bound of an iteration is then max(FMA-port instructions / (lanes x FMA
instructions per second), divisions / vector divisions per second) per voxel, at the vector
width the compiler used; the memory bound 8 B (or 8 / T B) at the copy bandwidth. Resampling
(``resample_isotropic`` linear) is memory-bound by design: its traffic bound is one read of the
input and one write of the output at the copy bandwidth; its flops (separable, about 3 x (2
mul + 1 add) per output voxel) are shown against the compute roof too.

    .venv/bin/python benchmarks/roofline.py [--quick] [--out FILE]
"""

from __future__ import annotations

import argparse
import datetime
import hashlib
import json
import math
import os
import subprocess
from pathlib import Path

import numpy as np
from _common import best_time

from dmfn.preprocess import denoise_pde, pde_stability_bound, resample_isotropic
from dmfn.preprocess.pde import default_temporal_block
from dmfn.preprocess.spatial import isotropic_shape

ROOT = Path(__file__).resolve().parents[1]
BUILD = ROOT / "build" / "roofline_microbench"

#: Per voxel per iteration, from kernel_math.hpp (see the module docstring).
PDE_FLOPS = {"3d": 34, "2d": 24}
PDE_PORT_OPS = {"3d": 27, "2d": 19}  # FMA-port instructions (add/sub/mul/FMA), per lane
PDE_DIVS = 1
PDE_BYTES = 8
#: The realistic crop: a 10 cm lesion + 10 mm margin at 1.25 x 0.7 x 0.7 mm, (z, y, x).
CROP_SHAPE = (96, 172, 172)
LARGE_SHAPE = (120, 512, 512)
SPACING_MM = (1.25, 0.7, 0.7)
K_HU, ITERATIONS = 30.0, 20

MICROBENCH = r"""
#include <immintrin.h>
#include <algorithm>
#include <chrono>
#include <cstring>
#include <cstdio>
#include <cstdlib>
#include <thread>
#include <vector>
// Peak rates: vector FMA (512- and 256-bit) and vector division, 12 independent chains each.
template <class V, class F, class I> double rate(int threads, long iters, F op, I init) {
  std::vector<std::thread> pool; std::vector<float> sink(threads);
  auto t0 = std::chrono::steady_clock::now();
  for (int t = 0; t < threads; ++t) pool.emplace_back([&, t] {
    V a[12]; for (int i = 0; i < 12; ++i) a[i] = init(1.0f + 1e-3f * (i + t));
    for (long k = 0; k < iters; ++k)
      for (int i = 0; i < 12; ++i) a[i] = op(a[i]);
    float s = 0; for (int i = 0; i < 12; ++i) { float b[16]; std::memcpy(b, &a[i], sizeof(V)); s += b[0]; }
    sink[t] = s; });
  for (auto& th : pool) th.join();
  double dt = std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
  float s = 0; for (float v : sink) s += v; if (s == 12345.f) std::puts("");
  return threads * iters * 12.0 / dt;  // vector instructions per second
}
int main(int argc, char** argv) {
  int threads = std::atoi(argv[1]); long n = std::atol(argv[2]);
  const __m512 m5 = _mm512_set1_ps(0.9999999f), c5 = _mm512_set1_ps(1e-7f);
  const __m256 m2 = _mm256_set1_ps(0.9999999f), c2 = _mm256_set1_ps(1e-7f);
  double best512 = 0, best256 = 0, bestdiv512 = 0, bestdiv256 = 0;
  for (int r = 0; r < 3; ++r) {
    best512 = std::max(best512, rate<__m512>(threads, n, [&](__m512 a) { return _mm512_fmadd_ps(a, m5, c5); }, [](float v) { return _mm512_set1_ps(v); }));
    best256 = std::max(best256, rate<__m256>(threads, n, [&](__m256 a) { return _mm256_fmadd_ps(a, m2, c2); }, [](float v) { return _mm256_set1_ps(v); }));
    bestdiv512 = std::max(bestdiv512, rate<__m512>(threads, n / 8, [&](__m512 a) { return _mm512_div_ps(m5, a); }, [](float v) { return _mm512_set1_ps(v); }));
    bestdiv256 = std::max(bestdiv256, rate<__m256>(threads, n / 8, [&](__m256 a) { return _mm256_div_ps(m2, a); }, [](float v) { return _mm256_set1_ps(v); }));
  }
  std::printf("{\"threads\": %d, \"fma512_per_s\": %.6e, \"fma256_per_s\": %.6e, "
              "\"div512_per_s\": %.6e, \"div256_per_s\": %.6e}\n",
              threads, best512, best256, bestdiv512, bestdiv256);
}
"""


def microbench(threads: int, iterations: int = 20_000_000) -> dict:
    """Vector FMA and division instructions per second on ``threads`` threads (compiled once)."""
    digest = hashlib.sha256(MICROBENCH.encode()).hexdigest()[:12]
    exe = BUILD / f"microbench_{digest}"
    if not exe.exists():
        BUILD.mkdir(parents=True, exist_ok=True)
        src = BUILD / f"microbench_{digest}.cpp"
        src.write_text(MICROBENCH)
        subprocess.run(["g++", "-O3", "-march=native", "-std=c++17", "-pthread", str(src), "-o",
                        str(exe)], check=True)  # fmt: skip
    out = subprocess.run([str(exe), str(threads), str(iterations)], check=True,
                         capture_output=True, text=True)  # fmt: skip
    return json.loads(out.stdout)


def copy_gb_s(nbytes: int, repeats: int) -> float:
    """np.copyto of ``nbytes`` of float32: (read + write) bytes per second, GB/s."""
    src = np.ones(nbytes // 4, np.float32)
    dst = np.empty_like(src)
    seconds, _ = best_time(lambda: np.copyto(dst, src), repeats)
    return 2 * src.nbytes / seconds / 1e9


def phantom(shape: tuple[int, int, int]) -> np.ndarray:
    rng = np.random.default_rng(0)
    grids = np.ogrid[tuple(slice(0, n) for n in shape)]
    r2 = sum(((g - (n - 1) / 2) / (0.45 * n)) ** 2 for g, n in zip(grids, shape, strict=True))
    return (np.where(r2 <= 1.0, 40.0, -1000.0) + rng.normal(0, 15, shape)).astype(np.float32)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--quick", action="store_true", help="fewer repeats")
    ap.add_argument("--out", type=Path)
    args = ap.parse_args(argv)
    repeats = 3 if args.quick else 5
    cores = len(os.sched_getaffinity(0))

    mb_all, mb_one = microbench(cores), microbench(1)
    roofs = {
        "fma512_gflops": mb_all["fma512_per_s"] * 16 * 2 / 1e9,
        "fma256_gflops": mb_all["fma256_per_s"] * 8 * 2 / 1e9,
        "fma512_gflops_1thread": mb_one["fma512_per_s"] * 16 * 2 / 1e9,
        "div256_g_lanes_per_s": mb_all["div256_per_s"] * 8 / 1e9,
        "div512_g_lanes_per_s": mb_all["div512_per_s"] * 16 / 1e9,
        "copy_512mib_gb_s": copy_gb_s(512 << 20, repeats),
    }
    cpu = next((line.split(":", 1)[1].strip() for line in Path("/proc/cpuinfo").read_text().splitlines() if line.startswith("model name")), "?")  # fmt: skip
    report = {"date": datetime.datetime.now().isoformat(timespec="seconds"), "cpu": cpu,
              "cores": cores, "load_avg": os.getloadavg(), "roofs": roofs, "rows": []}  # fmt: skip
    print(f"rooflines, {cpu}, {cores} cores, load {os.getloadavg()[0]:.1f}, {report['date']}")
    print(f"  FMA peak, {cores} threads: {roofs['fma512_gflops']:.0f} GFLOP/s at 512 bits, "
          f"{roofs['fma256_gflops']:.0f} at 256 bits ({roofs['fma512_gflops_1thread']:.0f} on one "
          f"thread, 512 bits)")  # fmt: skip
    print(f"  division: {roofs['div256_g_lanes_per_s']:.1f} G lanes/s at 256 bits, "
          f"{roofs['div512_g_lanes_per_s']:.1f} at 512 bits")  # fmt: skip
    print(
        f"  copy bandwidth (np.copyto 512 MiB, read + write): {roofs['copy_512mib_gb_s']:.1f} GB/s"
    )

    rows = report["rows"]
    for shape in (CROP_SHAPE, LARGE_SHAPE):
        vol = phantom(shape)
        bw = copy_gb_s(vol.nbytes, repeats)
        vox_it = vol.size * ITERATIONS
        for mode in ("2d", "3d"):
            dt = 0.9 * pde_stability_bound(mode)
            blocks = (None, 1, 2, 3) if mode == "3d" else (None, 1)
            for block in blocks:
                seconds, _ = best_time(
                    lambda m=mode, b=block, v=vol, d=dt: denoise_pde(v, K_HU, d, ITERATIONS, m,
                                                        spacing_mm=SPACING_MM, temporal_block=b),
                    repeats,
                )  # fmt: skip
                t_used = default_temporal_block(shape) if block is None else block
                # compute bound at 256 bits (what GCC emits here) and at 512 bits
                ops_rate256 = mb_all["fma256_per_s"] * 8
                div_rate256 = roofs["div256_g_lanes_per_s"] * 1e9
                compute_s = vox_it * max(PDE_PORT_OPS[mode] / ops_rate256, PDE_DIVS / div_rate256)
                memory_s = vox_it * PDE_BYTES / (bw * 1e9)
                memory_s_dram = vox_it * PDE_BYTES / (roofs["copy_512mib_gb_s"] * 1e9)
                rows.append({
                    "kernel": f"PDE {mode}", "shape": list(shape),
                    "T": f"{t_used}" + (" (default)" if block is None else ""),
                    "seconds": seconds, "gflops": PDE_FLOPS[mode] * vox_it / seconds / 1e9,
                    "eff_gb_s": PDE_BYTES * vox_it / seconds / 1e9, "copy_same_size_gb_s": bw,
                    "compute_bound_s": compute_s, "memory_bound_s": memory_s,
                    "memory_bound_dram_s": memory_s_dram,
                    "of_compute_roof": compute_s / seconds, "of_memory_roof": memory_s / seconds,
                })  # fmt: skip
        out_shape = isotropic_shape(shape, SPACING_MM, 1.0)
        seconds, _ = best_time(lambda v=vol: resample_isotropic(v, SPACING_MM, 1.0, "linear"), repeats)  # fmt: skip
        out_vox = math.prod(out_shape)
        nbytes = vol.nbytes + 4 * out_vox
        flops = 9 * out_vox  # 3 separable passes of (2 mul + 1 add), counted on the output
        rows.append({
            "kernel": "resample linear -> 1 mm", "shape": list(shape), "T": "-",
            "seconds": seconds, "gflops": flops / seconds / 1e9, "eff_gb_s": nbytes / seconds / 1e9,
            "copy_same_size_gb_s": bw,
            "compute_bound_s": flops / (roofs["fma256_gflops"] * 1e9),
            "memory_bound_s": nbytes / (bw * 1e9),
            "memory_bound_dram_s": nbytes / (roofs["copy_512mib_gb_s"] * 1e9),
            "of_compute_roof": flops / (roofs["fma256_gflops"] * 1e9) / seconds,
            "of_memory_roof": nbytes / (bw * 1e9) / seconds,
        })  # fmt: skip
    print(format_table(report))
    if args.out:
        args.out.write_text(json.dumps(report, indent=2))
        print(f"wrote {args.out}")
    return 0


def format_table(report: dict) -> str:
    head = (f"{'kernel':<24} {'shape':<15} {'T':<12} {'ms':>8} {'GFLOP/s':>8} {'eff GB/s':>8} "
            f"{'copy GB/s':>9} {'compute roof ms':>15} {'memory roof ms':>14} "
            f"{'of compute':>10} {'of memory':>9}")  # fmt: skip
    lines = [head, "-" * len(head)]
    for r in report["rows"]:
        shape = "x".join(map(str, r["shape"]))
        lines.append(
            f"{r['kernel']:<24} {shape:<15} {r['T']:<12} {r['seconds'] * 1e3:>8.1f} "
            f"{r['gflops']:>8.1f} {r['eff_gb_s']:>8.1f} {r['copy_same_size_gb_s']:>9.1f} "
            f"{r['compute_bound_s'] * 1e3:>15.1f} {r['memory_bound_s'] * 1e3:>14.1f} "
            f"{r['of_compute_roof']:>10.2f} {r['of_memory_roof']:>9.2f}"
        )
    lines.append("memory roof: copy of an array of the volume's size (cache-resident where it "
                 "fits); compute roof of the PDE: FMA-port instructions at 256 bits or the "
                 "divisions, whichever is slower")  # fmt: skip
    return "\n".join(lines)


if __name__ == "__main__":
    raise SystemExit(main())
