"""The cost budget of one study: every stage of dmfn.preprocess.preprocess_study timed alone.

Two studies, both 300x512x512 int16 HU at (1.0, 0.7, 0.7) mm with a 40 mm soft-tissue lesion:

- ROI: the chain as served, on the lesion box plus the 10 mm margin;
- full study: a mask whose box spans the whole study (the worst case: every stage on every voxel).

Stages, in the pipeline's order and with its own internal functions: validate + crop, PDE (default
parameters), resample the volume, resample the mask, window, measurements, views. Each is the best
of ``repeats`` runs; the total is compared with one call of preprocess_study.
"""

from __future__ import annotations

import numpy as np
from _common import best_time

from dmfn.contract.params import PreprocessParams
from dmfn.contract.roi import mask_bbox, roi_box
from dmfn.preprocess import preprocess_study
from dmfn.preprocess._validate import as_mask, as_volume
from dmfn.preprocess.pde import PdeArguments, _denoise
from dmfn.preprocess.pipeline import _resample_mask
from dmfn.preprocess.spatial import _lesion_box, _measure, _resample, _views, _window

SHAPE = (300, 512, 512)
SPACING_MM = (1.0, 0.7, 0.7)


def study(full: bool) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(0)
    hu = rng.normal(-700, 150, SHAPE).astype(np.int16)
    zz, yy, xx = np.ogrid[: SHAPE[0], : SHAPE[1], : SHAPE[2]]
    c = (150, 256, 230)
    r2 = (
        ((zz - c[0]) * 1.0 / 20) ** 2
        + ((yy - c[1]) * 0.7 / 20) ** 2
        + ((xx - c[2]) * 0.7 / 20) ** 2
    )
    lesion = r2 <= 1.0
    hu[lesion] = rng.normal(40, 25, int(lesion.sum())).astype(np.int16)
    mask = lesion.astype(np.uint8)
    if full:
        mask[0, 0, 0] = mask[-1, -1, -1] = 1
    return hu, mask


def budget(
    name: str, hu: np.ndarray, mask: np.ndarray, params: PreprocessParams, repeats: int
) -> dict:
    """One study's stages, each timed alone (best of ``repeats``), and one whole call."""
    spacing, target, cap = SPACING_MM, params.target_spacing_mm, params.max_voxels
    times: dict[str, float] = {}

    def crop() -> tuple[np.ndarray, np.ndarray]:  # as preprocess_study: convert only the crop
        volume = as_volume(hu, "hu", ndims=(3,), cap=cap, convert=False)
        lesion = as_mask(mask, volume.shape, convert=False, check_empty=False)
        box = roi_box(*mask_bbox(lesion), volume.shape, params.roi_margin_mm, spacing)
        roi = np.ascontiguousarray(volume[box], dtype=np.float32)
        return roi, np.ascontiguousarray(lesion[box] != 0, dtype=np.uint8)

    times["validate + crop"], (roi, roi_mask) = best_time(crop, repeats)
    pde = PdeArguments(
        roi, params.pde_k_hu, params.pde_dt, params.pde_iterations, params.pde_mode,
        params.pde_fidelity, spacing if params.pde_spacing_aware else None,
    )  # fmt: skip
    times["PDE"], denoised = best_time(lambda: _denoise(pde), repeats)
    times["resample volume"], iso = best_time(
        lambda: _resample(denoised, spacing, target, params.interpolation, cap), repeats
    )
    times["resample mask"], iso_mask = best_time(
        lambda: _resample_mask(roi_mask, spacing, target, cap), repeats
    )
    level, width = params.window_level_hu, params.window_width_hu
    times["window"], windowed = best_time(lambda: _window(iso, level, width), repeats)
    times["measurements"], _ = best_time(lambda: _measure(iso_mask, (target,) * 3), repeats)
    margin = params.roi_margin_mm / target
    times["views"], _ = best_time(
        lambda: _views(windowed, *_lesion_box(iso_mask), params.view_size, margin, 0.0), repeats
    )
    args = (hu, spacing, mask, [12.0], [60, 1, 0, 1, 0])
    whole, _ = best_time(lambda: preprocess_study(*args, params=params), repeats)
    return {"study": name, "crop_shape": roi.shape, "stages": times, "whole": whole}


def run(repeats: int = 2) -> list[dict]:
    params = PreprocessParams(max_voxels=2**30)
    return [
        budget(name, *study(full), params, repeats)
        for name, full in (("ROI (lesion box + 10 mm)", False), ("full study (box = study)", True))
    ]


def format_table(rows: list[dict]) -> str:
    lines = []
    for r in rows:
        total = sum(r["stages"].values())
        lines.append(f"{r['study']}: crop {r['crop_shape']} voxels (z, y, x)")
        for stage, seconds in r["stages"].items():
            lines.append(f"  {stage:<18} {seconds * 1e3:>9.1f} ms  {100 * seconds / total:>5.1f} %")
        lines.append(f"  {'sum of stages':<18} {total * 1e3:>9.1f} ms")
        lines.append(f"  {'preprocess_study':<18} {r['whole'] * 1e3:>9.1f} ms (one call)")
    return "\n".join(lines)


if __name__ == "__main__":
    print(format_table(run()))
