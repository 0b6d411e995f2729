"""The wiring of the preprocessing chain and of the tabular standardisation, pinned against an
explicit composition of the public steps with non-default parameters.

Each parameter below differs from its default and from the value a careless change would put in
its place (a hard-coded k, the window 40/400, a zero view margin, linear instead of cubic, the PDE
after the resampling, mode and fidelity ignored), and ``test_every_parameter_changes_the_views``
proves that each of them changes the output, so the composition test fails on any such break.
"""

from __future__ import annotations

import dataclasses

import numpy as np
import pytest
import torch

from dmfn.contract.params import PreprocessParams
from dmfn.preprocess import (
    crop_roi,
    denoise_pde,
    measure_lesion,
    orthogonal_views,
    preprocess_study,
    resample_isotropic,
    window,
)
from dmfn.preprocess.pipeline import resample_mask

PARAMS = PreprocessParams(
    pde_k_hu=35.0,
    pde_dt=0.01,
    pde_iterations=7,
    pde_mode="2d",
    pde_fidelity=2.0,
    target_spacing_mm=1.3,
    interpolation="cubic",
    window_level_hu=30.0,
    window_width_hu=500.0,
    roi_margin_mm=7.0,
    view_size=48,
)
SPACING = (2.5, 0.8, 0.7)
#: Tolerance of the composition test; every parameter must move the views by 10x more.
ATOL = 1e-6


def _study(seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """A noisy 22 x 60 x 64 crop (HU) with an ellipsoid lesion of another density."""
    rng = np.random.default_rng(seed)
    shape = (22, 60, 64)
    z, y, x = np.meshgrid(*(np.arange(n, dtype=np.float32) for n in shape), indexing="ij")
    inside = (
        ((z - 10) * SPACING[0] / 9) ** 2
        + ((y - 31) * SPACING[1] / 12) ** 2
        + ((x - 30) * SPACING[2] / 10) ** 2
    ) <= 1
    hu = rng.normal(40.0, 25.0, size=shape)
    hu[:, :, :8] = rng.normal(-100.0, 15.0, size=(shape[0], shape[1], 8))
    hu[inside] += 45.0
    return np.rint(hu).astype(np.int16), inside.astype(np.uint8)


def explicit_chain(hu: np.ndarray, mask: np.ndarray, p: PreprocessParams):
    """The documented order, written out step by step with the public functions."""
    roi = crop_roi(hu, mask=mask, margin_mm=p.roi_margin_mm, spacing_mm=SPACING)
    denoised = denoise_pde(
        roi.volume.astype(np.float32),
        k=p.pde_k_hu,
        dt=p.pde_dt,
        iterations=p.pde_iterations,
        mode=p.pde_mode,
        fidelity=p.pde_fidelity,
        spacing_mm=SPACING if p.pde_spacing_aware else None,
    )
    iso = resample_isotropic(denoised, SPACING, p.target_spacing_mm, p.interpolation)
    iso_mask = resample_mask(roi.mask, SPACING, p.target_spacing_mm, p.max_voxels)
    windowed = window(iso, p.window_level_hu, p.window_width_hu)
    if p.lesion_only_views:
        windowed = np.where(iso_mask != 0, windowed, np.float32(0.0))
    measurements = measure_lesion(iso_mask, (p.target_spacing_mm,) * 3).as_array()
    views = orthogonal_views(
        windowed, iso_mask, p.view_size, margin_vox=p.roi_margin_mm / p.target_spacing_mm
    )
    return views, measurements


def _run(p: PreprocessParams, seed: int = 0):
    hu, mask = _study(seed)
    out = preprocess_study(hu, SPACING, mask, [12.5], [54, 0, 1, 0, 0], params=p)
    return out


@pytest.mark.parametrize("lesion_only", [True, False])
def test_preprocess_study_equals_the_explicit_chain(lesion_only: bool) -> None:
    hu, mask = _study()
    params = dataclasses.replace(PARAMS, lesion_only_views=lesion_only)
    views, measurements = explicit_chain(hu, mask, params)
    out = _run(params)
    assert out.views.shape == (3, PARAMS.view_size, PARAMS.view_size)
    np.testing.assert_allclose(out.views, views, rtol=0, atol=ATOL)
    np.testing.assert_allclose(out.measurements, measurements, rtol=1e-6)
    np.testing.assert_array_equal(out.tabular, np.float32([12.5, 54, 0, 1, 0, 0]))


#: One change per parameter, each to a value a careless edit could leave behind.
CHANGES = {
    "pde_k_hu": 20.0,
    "pde_dt": 0.0125,
    "pde_iterations": 20,
    "pde_mode": "3d",
    "pde_fidelity": 0.0,
    "pde_spacing_aware": False,
    "target_spacing_mm": 1.0,
    "interpolation": "linear",
    "window_level_hu": 40.0,
    "window_width_hu": 400.0,
    "roi_margin_mm": 0.0,
    "lesion_only_views": False,
}


@pytest.mark.parametrize("name", list(CHANGES))
def test_every_parameter_changes_the_views(name: str) -> None:
    """So the composition test above cannot pass with a parameter ignored or hard-coded."""
    base = _run(PARAMS).views
    changed = _run(dataclasses.replace(PARAMS, **{name: CHANGES[name]})).views
    assert np.abs(changed - base).max() > 10 * ATOL, name


def test_the_pde_runs_before_the_resampling() -> None:
    """Denoising after resampling (a plausible reordering) gives other views."""
    hu, mask = _study()
    p = PARAMS
    roi = crop_roi(hu, mask=mask, margin_mm=p.roi_margin_mm, spacing_mm=SPACING)
    iso = resample_isotropic(roi.volume.astype(np.float32), SPACING, p.target_spacing_mm, "cubic")
    swapped = denoise_pde(iso, k=p.pde_k_hu, dt=p.pde_dt, iterations=p.pde_iterations,
                          mode=p.pde_mode, fidelity=p.pde_fidelity,
                          spacing_mm=(p.target_spacing_mm,) * 3)  # fmt: skip
    iso_mask = resample_mask(roi.mask, SPACING, p.target_spacing_mm, p.max_voxels)
    views = orthogonal_views(
        window(swapped, p.window_level_hu, p.window_width_hu),
        iso_mask,
        p.view_size,
        margin_vox=p.roi_margin_mm / p.target_spacing_mm,
    )
    assert np.abs(views - _run(PARAMS).views).max() > 10 * ATOL


def test_the_tabular_branch_standardises_its_input() -> None:
    """A model with training statistics (mean, std) gives the same output on raw rows as the
    same weights with mean 0 / std 1 give on rows standardised by hand."""
    from dmfn.training.models import create_model

    torch.manual_seed(0)
    mean = [12.0, 55.0, 0.5, 0.3, 0.5, 0.2]
    std = [6.0, 12.0, 0.5, 0.45, 0.5, 0.4]
    kwargs = dict(backbone="regnetx_tiny", n_classes=20, n_tabular=6, embed_dim=16)
    model = create_model("dmfn", tabular_mean=mean, tabular_std=std, **kwargs).eval()
    plain = create_model("dmfn", tabular_mean=[0.0] * 6, tabular_std=[1.0] * 6, **kwargs).eval()
    state = {k: v for k, v in model.state_dict().items() if "standardise" not in k}
    plain.load_state_dict(state, strict=False)
    views = torch.rand(3, 3, 64, 64)
    raw = torch.tensor([[30.0, 70, 1, 1, 0, 0], [2.0, 20, 0, 0, 1, 0], [15.0, 50, 1, 0, 0, 1]])
    by_hand = (raw - torch.tensor(mean)) / torch.tensor(std)
    with torch.no_grad():
        torch.testing.assert_close(model(views, raw), plain(views, by_hand))
        assert not torch.allclose(model(views, raw), plain(views, raw), atol=1e-4)
