"""Preprocessing benchmark (not a test): the C++ kernels against their peers, side by side in one run.

    .venv/bin/python benchmarks/preprocess.py [--quick]

1. Fourth-order PDE (3D): speed vs the NumPy reference, voxel-updates/s and effective GB/s (8 bytes
   per voxel per iteration) against this machine's copy bandwidth measured in the same run.
2. Isotropic resampling of 120x512x512 at (2.5, 0.7, 0.7) mm to 1 mm: ours (linear, cubic) vs
   SimpleITK ResampleImageFilter (linear, B-spline), torch trilinear interpolate, scipy zoom.
3. The cost budget of one study (bench_stages.py): every stage of preprocess_study timed alone,
   for a realistic ROI and for a full 300x512x512 study.

Targets on the 2-core development machine: PDE >= 30x the NumPy reference and >= 0.5x the copy
bandwidth; linear resampling faster than torch's trilinear interpolate while giving SimpleITK's values.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

import bench_pde
import bench_resample
import bench_stages


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument(
        "--quick", action="store_true", help="smaller PDE volume (60x256x256) for a fast look"
    )
    args = parser.parse_args(argv)
    shape = (60, 256, 256) if args.quick else (120, 512, 512)
    print(f"== PDE denoising (3D), volume {shape} ==")
    print(bench_pde.format_table(bench_pde.run(shape=shape)))
    print("\n== Isotropic resampling, 120x512x512 at (2.5, 0.7, 0.7) mm -> 1 mm ==")
    print(bench_resample.format_table(bench_resample.run()))
    print("\n== Cost per study, stage by stage (300x512x512 at (1.0, 0.7, 0.7) mm) ==")
    print(bench_stages.format_table(bench_stages.run()))
    return 0


if __name__ == "__main__":
    sys.exit(main())
