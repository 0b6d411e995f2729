"""Synthetic lesion crops of varied sizes for the load tests, generated once per run: what
``dmfn predict`` sends for a real scan (the lesion box plus margin, int16 HU, spacing, mask, CTC
and clinical facts). Made by :mod:`dmfn.synth.crops`."""

from __future__ import annotations

from dmfn.contract.study import Study
from dmfn.synth.crops import synthetic_crops

#: Crop sizes (z, y, x) in voxels, from a small node to a large anterior mass.
SHAPES = ((16, 40, 40), (24, 64, 64), (28, 96, 96), (40, 128, 128))


def make_studies(n: int, seed: int, ctc_range=(0.0, 40.0)) -> list[Study]:
    """``n`` studies cycling through :data:`SHAPES`, CTC levels in the lower 10-60 % of
    ``ctc_range`` (well inside what the model accepts)."""
    lo, hi = ctc_range
    inside = (lo + 0.1 * (hi - lo), lo + 0.6 * (hi - lo))
    return synthetic_crops(n, seed, shapes=SHAPES, ctc_range=inside)
