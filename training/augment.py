"""Anatomy-respecting augmentation of the three orthogonal views, batch-wise and seeded.

Each view of each case gets its own small in-plane rotation and shift (bilinear resampling, edge
values continue past the border), then each case gets an intensity jitter (gain and offset on the
windowed [0, 1] scale) and additive Gaussian noise. There are no flips: left and right are not
interchangeable in the mediastinum (the aortic arch is on the left), nor are head and feet.

All randomness comes from the ``torch.Generator`` passed in, so a seed fixes the result.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass

import torch
import torch.nn.functional as F


@dataclass(frozen=True)
class AugmentParams:
    """Augmentation strengths. Angles in degrees, shifts as a fraction of the view side,
    intensities on the windowed [0, 1] scale (1.0 = the 350 HU window width)."""

    max_rotation_deg: float = 10.0
    max_shift_fraction: float = 0.05
    gain_jitter: float = 0.10
    offset_jitter: float = 0.05
    noise_sd: float = 0.02

    def __post_init__(self) -> None:
        for name, value in asdict(self).items():
            if not (math.isfinite(value) and value >= 0):
                raise ValueError(f"argument '{name}': must be a finite number >= 0, got {value}")
        if self.max_rotation_deg > 45:
            raise ValueError(
                f"argument 'max_rotation_deg': must be <= 45 (small rotations only), "
                f"got {self.max_rotation_deg}"
            )
        if self.max_shift_fraction > 0.5:
            raise ValueError(
                f"argument 'max_shift_fraction': must be <= 0.5, got {self.max_shift_fraction}"
            )
        if self.gain_jitter >= 1:
            raise ValueError(f"argument 'gain_jitter': must be < 1, got {self.gain_jitter}")


def _uniform(shape: tuple[int, ...], bound: float, generator: torch.Generator) -> torch.Tensor:
    """Samples from U(-bound, bound) on the CPU generator (device independent)."""
    return (torch.rand(shape, generator=generator, dtype=torch.float64) * 2 - 1) * bound


def augment_views(
    views: torch.Tensor, generator: torch.Generator, params: AugmentParams = AugmentParams()
) -> torch.Tensor:
    """Return an augmented copy of ``views`` fp32 [B, V, S, S] (V views, e.g. axial, coronal,
    sagittal); ``generator`` is a CPU ``torch.Generator`` that supplies every random number."""
    if not isinstance(views, torch.Tensor) or views.ndim != 4 or views.shape[-1] != views.shape[-2]:
        shape = tuple(views.shape) if isinstance(views, torch.Tensor) else type(views).__name__
        raise ValueError(f"argument 'views': must be a tensor [B, V, S, S], got {shape}")
    if not views.is_floating_point():
        raise ValueError(f"argument 'views': must be floating point, got {views.dtype}")
    b, v, s, _ = views.shape
    n = b * v
    angle = _uniform((n,), math.radians(params.max_rotation_deg), generator)
    # affine_grid works in normalised coordinates [-1, 1], so a shift of f * S pixels is 2 f.
    shift = _uniform((n, 2), 2 * params.max_shift_fraction, generator)
    gain = 1 + _uniform((b, 1, 1, 1), params.gain_jitter, generator)
    offset = _uniform((b, 1, 1, 1), params.offset_jitter, generator)
    noise = torch.randn((b, v, s, s), generator=generator, dtype=torch.float32) * params.noise_sd

    cos, sin = torch.cos(angle), torch.sin(angle)
    theta = torch.stack(
        [torch.stack([cos, -sin, shift[:, 0]], 1), torch.stack([sin, cos, shift[:, 1]], 1)], 1
    ).to(device=views.device, dtype=views.dtype)
    flat = views.reshape(n, 1, s, s)
    grid = F.affine_grid(theta, [n, 1, s, s], align_corners=False)
    moved = F.grid_sample(
        flat, grid, mode="bilinear", padding_mode="border", align_corners=False
    ).reshape(b, v, s, s)
    device, dtype = views.device, views.dtype
    return (
        moved * gain.to(device=device, dtype=dtype)
        + offset.to(device=device, dtype=dtype)
        + noise.to(device=device, dtype=dtype)
    )
