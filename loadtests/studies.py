"""Synthetic lesion crops of varied sizes for the load tests, generated once per run (no torch,
no C++ extension: only what the client itself needs).

Each study is what ``dmfn predict`` sends for a real scan: the lesion box plus margin, int16 HU,
(z, y, x) spacing in mm, a lesion mask, the CTC level and the clinical facts.
"""

from __future__ import annotations

import numpy as np

from dmfn.contract import schema as S
from dmfn.contract.study import Clinical, Study

#: Crop sizes (z, y, x) in voxels, from a small node to a large anterior mass.
SHAPES = ((16, 40, 40), (24, 64, 64), (28, 96, 96), (40, 128, 128))


def make_study(rng: np.random.Generator, shape: tuple[int, int, int], ctc_range) -> Study:
    """One crop: soft tissue with a fat rim and an ellipsoid lesion filling about half of it."""
    spacing = (float(rng.choice([1.25, 2.0, 2.5, 3.0])), *(2 * [float(rng.uniform(0.6, 0.9))]))
    axes = [np.arange(n, dtype=np.float32) * s for n, s in zip(shape, spacing, strict=True)]
    z, y, x = np.meshgrid(*axes, indexing="ij")
    centre = [a[-1] / 2 for a in axes]
    radii = [
        max(a[-1] * rng.uniform(0.25, 0.4), 2.5 * s) for a, s in zip(axes, spacing, strict=True)
    ]
    inside = ((z - centre[0]) / radii[0]) ** 2 + ((y - centre[1]) / radii[1]) ** 2 + (
        (x - centre[2]) / radii[2]
    ) ** 2 <= 1.0
    hu = rng.normal(40.0, 15.0, size=shape)
    hu[:, :, : shape[2] // 8] = rng.normal(-100.0, 10.0, size=(shape[0], shape[1], shape[2] // 8))
    hu[inside] = rng.normal(rng.uniform(-10.0, 90.0), 20.0, size=int(inside.sum()))
    lo, hi = ctc_range
    return Study(
        hu=np.clip(np.rint(hu), -1024, 3071).astype(np.int16),
        spacing_mm=spacing,
        mask=inside.astype(np.uint8),
        ctc={
            S.DEFAULT_CTC_FEATURES[0]: float(
                rng.uniform(lo + 0.1 * (hi - lo), lo + 0.6 * (hi - lo))
            )
        },
        clinical=Clinical(
            float(rng.integers(20, 85)), str(rng.choice(["M", "F"])), str(rng.choice(S.LOCATIONS))
        ),
        image_id=f"load-{shape[0]}x{shape[1]}x{shape[2]}",
    )


def make_studies(n: int, seed: int, ctc_range=(0.0, 40.0)) -> list[Study]:
    """``n`` studies cycling through :data:`SHAPES`."""
    rng = np.random.default_rng(seed)
    return [make_study(rng, SHAPES[i % len(SHAPES)], ctc_range) for i in range(n)]
