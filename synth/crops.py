"""Small synthetic lesion crops: what a client sends for one study, without a whole chest.

For the checks of the export and serving path (shapes, numerics, load), never for training: the
cohort generator (:mod:`dmfn.synth.cohort`) makes the training data.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from dmfn.contract import schema as S
from dmfn.contract.study import Clinical, Study

#: CTC draws when no range is given: lognormal(2.3, 0.4) pg/ml, 99.98 % of them in 2.5-44.
CTC_LOG_MEAN, CTC_LOG_SD = 2.3, 0.4


def synthetic_crop(
    rng: np.random.Generator,
    shape: tuple[int, int, int] = (20, 40, 40),
    ctc_features: Sequence[str] = S.DEFAULT_CTC_FEATURES,
    ctc_range: tuple[float, float] | None = None,
    image_id: str = "",
) -> Study:
    """A (z, y, x) crop of ``shape`` voxels: soft tissue (40 HU) with a fat rim and a noisy
    ellipsoid lesion of random density spanning 40-70 % of the crop; spacing 1.5-3 mm between
    slices and 0.6-1 mm in plane; the CTC level uniform in ``ctc_range`` or lognormal; a random
    clinical record. int16 HU, uint8 mask."""
    spacing = (float(rng.uniform(1.5, 3.0)), *(2 * [float(rng.uniform(0.6, 1.0))]))
    axes = [np.arange(n, dtype=np.float32) * s for n, s in zip(shape, spacing, strict=True)]
    z, y, x = np.meshgrid(*axes, indexing="ij")
    centre = [a[-1] * rng.uniform(0.45, 0.55) for a in axes]
    radii = [
        max(a[-1] * rng.uniform(0.2, 0.35), 1.5 * s) for a, s in zip(axes, spacing, strict=True)
    ]
    inside = sum(((c - m) / r) ** 2 for c, m, r in zip((z, y, x), centre, radii, strict=True)) <= 1
    hu = rng.normal(40.0, 15.0, size=shape)
    rim = max(1, shape[2] // 6)
    hu[:, :, :rim] = rng.normal(-100.0, 10.0, size=(shape[0], shape[1], rim))
    hu[inside] = rng.normal(rng.uniform(-10.0, 90.0), 20.0, size=int(inside.sum()))
    if ctc_range is None:
        ctc = rng.lognormal(CTC_LOG_MEAN, CTC_LOG_SD, size=len(ctc_features))
    else:
        ctc = rng.uniform(*ctc_range, size=len(ctc_features))
    return Study(
        hu=np.clip(np.rint(hu), -1024, 3071).astype(np.int16),
        spacing_mm=spacing,
        mask=inside.astype(np.uint8),
        ctc={name: float(v) for name, v in zip(ctc_features, ctc, strict=True)},
        clinical=Clinical(
            float(round(rng.uniform(20, 80))),
            str(rng.choice(["M", "F"])),
            str(rng.choice(S.LOCATIONS)),
        ),
        image_id=image_id,
    )


def synthetic_crops(
    n: int,
    seed: int,
    shapes: Sequence[tuple[int, int, int]] = ((20, 40, 40),),
    ctc_features: Sequence[str] = S.DEFAULT_CTC_FEATURES,
    ctc_range: tuple[float, float] | None = None,
) -> list[Study]:
    """``n`` crops cycling through ``shapes``, reproducible from ``seed``."""
    rng = np.random.default_rng(seed)
    return [
        synthetic_crop(rng, shapes[i % len(shapes)], ctc_features, ctc_range, f"crop{i}")
        for i in range(n)
    ]
