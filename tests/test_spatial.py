"""Spatial kernels: resampling, window, ROI crop, lesion measurements, orthogonal views."""

from __future__ import annotations

import math

import numpy as np
import pytest
import SimpleITK as sitk
from hypothesis import given, settings
from hypothesis import strategies as st
from scipy import ndimage

from dmfn.contract.schema import MEASUREMENT_FIELDS
from dmfn.preprocess import (
    LesionMeasurements,
    crop_roi,
    measure_lesion,
    orthogonal_views,
    resample_isotropic,
    window,
)
from dmfn.preprocess import _core as _preprocess
from dmfn.preprocess.reference import spatial as ref
from dmfn.preprocess.spatial import RoiCrop, isotropic_shape

ORDERS = ("linear", "cubic")


def _rng(seed: int = 0) -> np.random.Generator:
    return np.random.default_rng(seed)


def _ellipsoid(shape, centre, semi_axes) -> np.ndarray:
    grids = np.meshgrid(*[np.arange(n) for n in shape], indexing="ij")
    r2 = sum(((g - c) / a) ** 2 for g, c, a in zip(grids, centre, semi_axes, strict=True))
    return (r2 <= 1.0).astype(np.uint8)


# --------------------------------------------------------------------------- resampling


@pytest.mark.parametrize("order", ORDERS)
@pytest.mark.parametrize(
    ("shape", "spacing"),
    [
        ((7, 9, 11), (2.5, 0.7, 1.3)),  # z last: y, x and z fused through the plane ring
        ((7, 9, 11), (2.5, 1.0, 0.7)),  # z last after one in-plane pass (x)
        ((41, 9, 11), (2.5, 0.7, 0.8)),  # z last, many output planes over the threads
        ((3, 9, 11), (0.9, 0.7, 1.0)),  # y, then z (z grows least), fused
        ((4, 9, 11), (1.0, 0.7, 1.3)),  # z unchanged: the fused passes write the output
        ((6, 9, 11), (0.6, 2.0, 0.7)),  # z, then x, then y (no fusion)
        ((5, 6, 4), (0.4, 1.0, 3.0)),
        ((1, 8, 5), (2.0, 0.6, 1.7)),
        ((2, 2, 2), (3.0, 0.5, 1.0)),
        ((1, 1, 1), (5.0, 5.0, 5.0)),
        ((9, 13), (0.7, 1.6)),
        ((1, 2), (0.3, 2.2)),
    ],
)
def test_resample_matches_reference(order, shape, spacing):
    vol = _rng().normal(0.0, 1.0, shape).astype(np.float32)
    got = resample_isotropic(vol, spacing, 1.0, order)
    want = ref.resample_isotropic(vol, spacing, 1.0, order)
    assert got.dtype == np.float32
    assert got.shape == want.shape == isotropic_shape(shape, spacing, 1.0)
    np.testing.assert_allclose(got, want, rtol=0, atol=1e-4)


def test_resample_output_size_rule():
    assert isotropic_shape((120, 512, 512), (2.5, 0.7, 0.7), 1.0) == (300, 358, 358)
    assert isotropic_shape((3, 1, 5), (0.1, 0.2, 0.3), 1.0) == (1, 1, 2)  # at least 1
    assert isotropic_shape((5,), (0.5,), 1.0) == (3,)  # 2.5 rounds half up


@pytest.mark.parametrize("shape", [(6, 10, 12), (1, 7, 9), (2, 5, 3), (8, 13)])
def test_linear_matches_map_coordinates(shape):
    """Linear = scipy map_coordinates(order=1) on the grid i * s_out / s_in, edge clamped."""
    spacing = (2.5, 0.7, 1.2)[-len(shape) :]
    vol = _rng(1).uniform(-1000, 2600, shape).astype(np.float32)
    got = resample_isotropic(vol, spacing, 1.0)
    axes = [np.arange(m) * (1.0 / s) for m, s in zip(got.shape, spacing, strict=True)]
    coords = np.stack(np.meshgrid(*axes, indexing="ij"))
    want = ndimage.map_coordinates(vol.astype(np.float64), coords, order=1, mode="nearest")
    np.testing.assert_allclose(got, want, rtol=0, atol=3600 * 2e-7)


@pytest.mark.parametrize(
    ("shape", "spacing"),
    [((12, 40, 36), (2.5, 0.7, 0.7)), ((5, 9, 17), (1.25, 1.5, 0.6)), ((1, 10, 10), (1, 0.8, 0.8))],
)
def test_linear_matches_simpleitk_inside_extent(shape, spacing):
    vol = _rng(2).uniform(-1000, 2600, shape).astype(np.float32)
    got = resample_isotropic(vol, spacing, 1.0)
    img = sitk.GetImageFromArray(vol)
    img.SetSpacing(tuple(float(s) for s in spacing[::-1]))  # ITK order (x, y, z)
    f = sitk.ResampleImageFilter()
    f.SetOutputSpacing((1.0, 1.0, 1.0))
    f.SetSize([int(n) for n in got.shape[::-1]])
    f.SetOutputOrigin(img.GetOrigin())
    f.SetOutputDirection(img.GetDirection())
    f.SetInterpolator(sitk.sitkLinear)
    want = sitk.GetArrayFromImage(f.Execute(img))
    # Inside the extent: sample positions at or before the last voxel centre on every axis.
    inside = tuple(
        slice(0, math.floor((n - 1) * s + 1e-9) + 1) for n, s in zip(shape, spacing, strict=True)
    )
    assert got[inside].size > 0
    # float32 rounding of values up to 2600 (ulp 2.4e-4), three separable passes.
    np.testing.assert_allclose(got[inside], want[inside], rtol=0, atol=1e-3)
    assert np.median(np.abs(got[inside] - want[inside])) < 1e-4


def test_resample_clamps_past_last_centre():
    vol = np.arange(4, dtype=np.float32)[None, None, :] * np.ones((1, 1, 1), np.float32)
    out = resample_isotropic(vol, (1.0, 1.0, 2.0), 1.0)  # 8 samples at 0, 0.5, ..., 3.5
    np.testing.assert_allclose(out[0, 0], [0, 0.5, 1, 1.5, 2, 2.5, 3, 3], atol=1e-6)


@pytest.mark.parametrize("order", ORDERS)
def test_cubic_and_linear_reproduce_linear_ramps(order):
    z, y, x = np.mgrid[:6, :7, :8].astype(np.float32)
    vol = 3 * z - 2 * y + 0.5 * x
    spacing = (1.5, 0.8, 1.25)
    out = resample_isotropic(vol, spacing, 1.0, order)
    gz, gy, gx = np.meshgrid(
        *[np.arange(m) / s for m, s in zip(out.shape, spacing, strict=True)], indexing="ij"
    )
    want = 3 * gz - 2 * gy + 0.5 * gx
    # Where every tap lies inside the volume (cubic taps past an edge read the edge voxel).
    lo, hi = (0, 0) if order == "linear" else (1, 1)
    inside = (gz >= lo) & (gz <= 5 - hi) & (gy >= lo) & (gy <= 6 - hi) & (gx >= lo) & (gx <= 7 - hi)
    assert inside.sum() > 20
    np.testing.assert_allclose(out[inside], want[inside], atol=1e-4)


_spacing = st.floats(0.3, 4.0, allow_nan=False)
_small_shape = st.tuples(st.integers(1, 6), st.integers(1, 6), st.integers(1, 6))


@settings(max_examples=40, deadline=None)
@given(shape=_small_shape, target=_spacing, order=st.sampled_from(ORDERS), seed=st.integers(0, 99))
def test_spacing_equal_to_target_is_identity(shape, target, order, seed):
    vol = _rng(seed).normal(0, 500, shape).astype(np.float32)
    out = resample_isotropic(vol, (target,) * 3, target, order)
    np.testing.assert_array_equal(out, vol)


@settings(max_examples=40, deadline=None)
@given(
    shape=_small_shape,
    spacing=st.tuples(_spacing, _spacing, _spacing),
    value=st.floats(-2000, 3000, allow_nan=False),
    order=st.sampled_from(ORDERS),
)
def test_constant_volume_unchanged_by_resampling(shape, spacing, value, order):
    vol = np.full(shape, value, np.float32)
    out = resample_isotropic(vol, spacing, 1.0, order)
    np.testing.assert_allclose(out, value, rtol=1e-6, atol=1e-4)


@settings(max_examples=25, deadline=None)
@given(shape=_small_shape, value=st.floats(0, 1, allow_nan=False), seed=st.integers(0, 99))
def test_constant_volume_unchanged_by_views(shape, value, seed):
    vol = np.full(shape, value, np.float32)
    centroid = _rng(seed).uniform(0, 1, 3) * (np.array(shape) - 1)
    views = orthogonal_views(vol, centroid, size=8, fill=-1.0)
    inside = views != -1.0  # the square field of view may reach past a non-square plane
    assert inside.any() or min(shape) == 1  # a one-voxel-thin plane can fall between samples
    np.testing.assert_allclose(views[inside], value, atol=1e-6)


@pytest.mark.parametrize("bad", [0.0, -1.0, float("nan"), float("inf")])
def test_resample_refuses_bad_spacing(bad):
    with pytest.raises(ValueError, match="spacing_mm"):
        resample_isotropic(np.zeros((2, 2, 2), np.float32), (1.0, bad, 1.0))
    with pytest.raises(ValueError, match="target_mm"):
        resample_isotropic(np.zeros((2, 2, 2), np.float32), (1.0, 1.0, 1.0), bad)


def test_resample_refuses_bad_inputs():
    ok = np.zeros((3, 3, 3), np.float32)
    with pytest.raises(ValueError, match=r"volume.*ndim=1"):
        resample_isotropic(np.zeros(5, np.float32), (1.0,))
    with pytest.raises(ValueError, match=r"volume.*ndim=4"):
        resample_isotropic(np.zeros((2, 2, 2, 2), np.float32), (1.0,) * 4)
    with pytest.raises(ValueError, match=r"spacing_mm.*3 values"):
        resample_isotropic(ok, (1.0, 1.0))
    for dtype in (bool, np.complex64, object):
        with pytest.raises(ValueError, match=r"volume.*dtype"):
            resample_isotropic(np.zeros((3, 3, 3), dtype), (1.0, 1.0, 1.0))
    for bad in (np.nan, np.inf):
        vol = ok.copy()
        vol[1, 1, 1] = bad
        with pytest.raises(ValueError, match=r"volume.*finite"):
            resample_isotropic(vol, (1.0, 1.0, 1.0))
    with pytest.raises(ValueError, match=r"volume.*empty"):
        resample_isotropic(np.zeros((0, 3, 3), np.float32), (1.0, 1.0, 1.0))
    with pytest.raises(ValueError, match="order"):
        resample_isotropic(ok, (1.0, 1.0, 1.0), 1.0, "nearest")
    with pytest.raises(ValueError, match="volume"):
        resample_isotropic([[1.0, 2.0]], (1.0, 1.0))


def test_resample_voxel_cap():
    vol = np.zeros((4, 4, 4), np.float32)
    with pytest.raises(ValueError, match=r"target_mm.*cap of 1000"):
        resample_isotropic(vol, (1.0, 1.0, 1.0), 0.25, max_voxels=1000)
    assert resample_isotropic(vol, (1.0, 1.0, 1.0), 0.5, max_voxels=512).shape == (8, 8, 8)


def test_resample_converts_int_and_noncontiguous():
    vol = _rng(3).integers(-1000, 2000, (8, 10, 12)).astype(np.int16)
    spacing = (2.0, 0.9, 1.1)
    want = resample_isotropic(vol.astype(np.float32), spacing)
    np.testing.assert_array_equal(resample_isotropic(vol, spacing), want)
    big = np.zeros((8, 10, 24), np.float64)
    big[:, :, ::2] = vol
    strided = big[:, :, ::2]
    assert not strided.flags.c_contiguous
    np.testing.assert_array_equal(resample_isotropic(strided, spacing), want)
    fortran = np.asfortranarray(vol)
    np.testing.assert_array_equal(resample_isotropic(fortran, spacing), want)


def test_extension_validates_its_own_arguments():
    vol = np.zeros((2, 2, 2), np.float32)
    with pytest.raises(ValueError, match="order"):
        _preprocess.resample(vol, (2, 2, 2), (1.0, 1.0, 1.0), 2)
    with pytest.raises(ValueError, match="ratio"):
        _preprocess.resample(vol, (2, 2, 2), (1.0, 0.0, 1.0), 1)
    with pytest.raises(ValueError, match="out_shape"):
        _preprocess.resample(vol, (2, 0, 2), (1.0, 1.0, 1.0), 1)


# --------------------------------------------------------------------------- window


def test_window_matches_reference_and_keeps_input():
    vol = _rng(4).integers(-1200, 1500, (5, 6, 7)).astype(np.int16)
    before = vol.copy()
    out = window(vol, 50.0, 350.0)
    assert out.dtype == np.float32 and out.shape == vol.shape
    np.testing.assert_allclose(out, ref.window(vol, 50.0, 350.0), atol=1e-6)
    assert out.min() == 0.0 and out.max() == 1.0
    np.testing.assert_array_equal(vol, before)
    f32 = vol.astype(np.float32)
    window(f32)
    np.testing.assert_array_equal(f32, before)


def test_window_end_points_and_errors():
    out = window(np.array([[-125.0, 50.0, 225.0, 1e4]]), 50.0, 350.0)
    np.testing.assert_allclose(out, [[0.0, 0.5, 1.0, 1.0]], atol=1e-7)
    with pytest.raises(ValueError, match="width"):
        window(np.zeros((2, 2)), 50.0, 0.0)
    with pytest.raises(ValueError, match="level"):
        window(np.zeros((2, 2)), float("nan"))
    with pytest.raises(ValueError, match=r"volume_hu.*finite"):
        window(np.array([[np.nan, 0.0]]))


# --------------------------------------------------------------------------- ROI crop


def test_crop_by_mask_with_margin_and_clamp():
    vol = np.arange(20 * 30 * 40, dtype=np.int16).reshape(20, 30, 40)
    mask = np.zeros(vol.shape, np.uint8)
    mask[2:5, 10:14, 30:38] = 1
    roi = crop_roi(vol, mask=mask, margin_mm=3.0, spacing_mm=(2.0, 0.7, 1.0))
    # margin: ceil(3/2) = 2, ceil(3/0.7) = 5, ceil(3/1) = 3 voxels; x clamps at 40.
    assert roi.offset_zyx == (0, 5, 27)
    assert roi.volume.shape == (7, 14, 13)
    assert roi.volume.dtype == np.int16 and roi.volume.flags.c_contiguous
    np.testing.assert_array_equal(roi.volume, vol[roi.slices])
    np.testing.assert_array_equal(roi.mask, mask[roi.slices])
    assert roi.mask.sum() == mask.sum()


def test_crop_is_idempotent():
    vol = _rng(5).normal(0, 1, (30, 40, 50)).astype(np.float32)
    mask = _ellipsoid(vol.shape, (15, 20, 25), (4, 6, 5))
    spacing = (2.5, 0.7, 0.7)
    once = crop_roi(vol, mask=mask, margin_mm=10.0, spacing_mm=spacing)
    twice = crop_roi(once.volume, mask=once.mask, margin_mm=10.0, spacing_mm=spacing)
    assert twice.offset_zyx == (0, 0, 0)
    np.testing.assert_array_equal(twice.volume, once.volume)


def test_crop_by_bbox_and_2d():
    vol = np.ones((10, 12), np.float32)
    roi = crop_roi(vol, bbox=(2, 3, 5, 6), margin_mm=1.0, spacing_mm=(1.0, 1.0))
    assert isinstance(roi, RoiCrop) and roi.mask is None
    assert roi.offset_zyx == (1, 2) and roi.volume.shape == (5, 5)
    roi0 = crop_roi(np.ones((4, 5, 6)), bbox=(1, 1, 1, 2, 2, 2), margin_mm=0.0)
    assert roi0.volume.shape == (1, 1, 1)


def test_crop_refuses_bad_arguments():
    vol = np.zeros((4, 5, 6), np.float32)
    mask = np.zeros_like(vol, np.uint8)
    mask[1, 1, 1] = 1
    with pytest.raises(ValueError, match="exactly one"):
        crop_roi(vol)
    with pytest.raises(ValueError, match="exactly one"):
        crop_roi(vol, mask=mask, bbox=(0, 0, 0, 1, 1, 1))
    with pytest.raises(ValueError, match="bbox"):
        crop_roi(vol, bbox=(0, 0, 0, 5, 1, 1))
    with pytest.raises(ValueError, match="bbox"):
        crop_roi(vol, bbox=(0, 0, 0, 1, 1))
    with pytest.raises(ValueError, match="bbox"):
        crop_roi(vol, bbox=(0.5, 0, 0, 1, 1, 1))
    with pytest.raises(ValueError, match=r"mask.*empty"):
        crop_roi(vol, mask=np.zeros_like(mask))
    with pytest.raises(ValueError, match=r"mask.*shape"):
        crop_roi(vol, mask=mask[:, :, :3])
    with pytest.raises(ValueError, match="margin_mm"):
        crop_roi(vol, mask=mask, margin_mm=-1.0)
    with pytest.raises(ValueError, match="spacing_mm"):
        crop_roi(vol, mask=mask, spacing_mm=(1.0, 0.0, 1.0))
    with pytest.raises(ValueError, match=r"volume.*ndim=1"):
        crop_roi(np.zeros(4), bbox=(0, 1))
    with pytest.raises(ValueError, match=r"volume.*dtype"):
        crop_roi(vol.astype(np.complex64), mask=mask)


# --------------------------------------------------------------------------- measurements


def test_sphere_measurements():
    r = 12.3
    mask = _ellipsoid((40, 40, 40), (20, 20, 20), (r, r, r))
    m = measure_lesion(mask, (1.0, 1.0, 1.0))
    assert m.volume_mm3 == pytest.approx(4 / 3 * math.pi * r**3, rel=0.01)
    assert m.max_axial_area_mm2 == pytest.approx(math.pi * r**2, rel=0.02)
    for length in (m.long_axis_mm, m.short_axis_mm, m.craniocaudal_mm):
        assert abs(length - 2 * r) <= 1.0


def test_ellipse_axes_anisotropic_spacing():
    """Ellipse of semi-axes 14.2 mm (x) and 6.3 mm (y) drawn on 0.5 x 0.8 mm pixels."""
    sy, sx = 0.5, 0.8
    a_mm, b_mm = 14.2, 6.3
    y, x = np.mgrid[:60, :60]
    ell = ((((x - 30) * sx) / a_mm) ** 2 + (((y - 30) * sy) / b_mm) ** 2 <= 1).astype(np.uint8)
    mask = np.stack([np.zeros_like(ell), ell, ell, np.zeros_like(ell)])
    m = measure_lesion(mask, (2.0, sy, sx))
    # Within one voxel (its larger in-plane side): the digitised long axis may tilt slightly.
    assert abs(m.long_axis_mm - 2 * a_mm) <= max(sy, sx)
    assert abs(m.short_axis_mm - 2 * b_mm) <= max(sy, sx)
    assert m.craniocaudal_mm == 4.0
    assert m.volume_mm3 == pytest.approx(2 * math.pi * a_mm * b_mm * 2.0, rel=0.02)


def test_rotated_ellipse_axes():
    theta = math.radians(30)
    y, x = np.mgrid[:80, :80] - 40.0
    u = x * math.cos(theta) + y * math.sin(theta)
    v = -x * math.sin(theta) + y * math.cos(theta)
    ell = ((u / 25.4) ** 2 + (v / 9.7) ** 2 <= 1).astype(np.uint8)[None]
    m = measure_lesion(ell, (1.0, 1.0, 1.0))
    assert abs(m.long_axis_mm - 2 * 25.4) <= 1.0
    assert abs(m.short_axis_mm - 2 * 9.7) <= 1.0


@pytest.mark.parametrize("seed", range(6))
def test_measurements_match_brute_force(seed):
    rng = _rng(seed)
    mask = (rng.uniform(size=(3, 9, 8)) > 0.6).astype(np.uint8)
    mask[1, 4, 4] = 1
    spacing = (1.5, float(rng.uniform(0.4, 1.5)), float(rng.uniform(0.4, 1.5)))
    got = measure_lesion(mask, spacing)
    want = ref.measure_lesion(mask, spacing)
    for name in MEASUREMENT_FIELDS:
        assert getattr(got, name) == pytest.approx(want[name], abs=1e-9), name


def test_single_voxel_and_as_array():
    mask = np.zeros((3, 3, 3), bool)
    mask[1, 1, 1] = True
    m = measure_lesion(mask, (2.0, 0.5, 0.8))
    assert m == LesionMeasurements(0.8, 0.4, 0.8, 0.5, 2.0)
    arr = m.as_array()
    assert arr.dtype == np.float32 and arr.shape == (len(MEASUREMENT_FIELDS),)
    np.testing.assert_allclose(arr, [getattr(m, f) for f in MEASUREMENT_FIELDS])


def test_measure_refuses_bad_masks():
    with pytest.raises(ValueError, match=r"mask.*empty"):
        measure_lesion(np.zeros((2, 3, 3), np.uint8), (1, 1, 1))
    with pytest.raises(ValueError, match=r"mask.*ndim=2"):
        measure_lesion(np.ones((3, 3), np.uint8), (1, 1))
    with pytest.raises(ValueError, match=r"mask.*dtype"):
        measure_lesion(np.ones((1, 2, 2), np.complex64), (1, 1, 1))
    with pytest.raises(ValueError, match="spacing_mm"):
        measure_lesion(np.ones((1, 2, 2), np.uint8), (1, -1, 1))


# --------------------------------------------------------------------------- views


def test_sample_planes_matches_reference():
    rng = _rng(6)
    vol = rng.normal(0, 1, (4, 5, 6)).astype(np.float32)
    origin = rng.uniform(-1.5, 6, (2, 3))
    row_step = rng.uniform(-0.7, 0.7, (2, 3))
    col_step = rng.uniform(-0.7, 0.7, (2, 3))
    got = _preprocess.sample_planes(vol, origin, row_step, col_step, 7, -3.0)
    assert got.shape == (2, 7, 7)
    for p in range(2):
        for r in range(7):
            for c in range(7):
                q = origin[p] + r * row_step[p] + c * col_step[p]
                assert got[p, r, c] == pytest.approx(ref.sample_point(vol, q, -3.0), abs=1e-5)
    assert (got == -3.0).any() and (got != -3.0).any()


def test_views_centred_on_lesion():
    vol = np.zeros((40, 50, 60), np.float32)
    mask = _ellipsoid(vol.shape, (12, 30, 20), (4, 6, 5))
    vol[mask > 0] = 1.0
    views = orthogonal_views(vol, mask, size=32)
    assert views.shape == (3, 32, 32) and views.dtype == np.float32
    # The FOV covers exactly the lesion box: centre bright, the lesion touches the frame.
    for v in views:
        assert v[15:17, 15:17].min() == pytest.approx(1.0)
        assert v.max() == pytest.approx(1.0)
    assert views[0, 16, 0] > 0.0 or views[0, 0, 16] > 0.0
    # With a margin the lesion shrinks towards the centre and the corners are background.
    wide = orthogonal_views(vol, mask, size=32, margin_vox=10.0)
    assert (wide[:, 0, 0] == 0).all() and (wide[:, 16, 16] == 1).all()
    assert (wide > 0.5).sum() < (views > 0.5).sum()


def test_views_channel_order_and_fill():
    vol = np.zeros((9, 9, 9), np.float32)
    vol[4, 4, :] = 1.0  # a line along x: seen in axial and coronal, a dot in sagittal
    views = orthogonal_views(vol, (4.0, 4.0, 4.0), size=9)
    assert views[0].sum() == pytest.approx(9.0) and views[0][4].sum() == pytest.approx(9.0)
    assert views[1].sum() == pytest.approx(9.0) and views[1][4].sum() == pytest.approx(9.0)
    assert views[2].sum() == pytest.approx(1.0) and views[2][4, 4] == pytest.approx(1.0)
    # An off-centre centroid reaches past the volume: those samples take the fill value.
    off = orthogonal_views(np.ones((9, 9, 9), np.float32), (0.0, 8.0, 2.0), size=16, fill=-1.0)
    assert (off == -1.0).any() and (off == 1.0).any()
    assert set(np.unique(off)) <= {-1.0, 1.0}


def test_views_refuse_bad_arguments():
    vol = np.zeros((5, 5, 5), np.float32)
    with pytest.raises(ValueError, match="mask_or_centroid"):
        orthogonal_views(vol, (1.0, 2.0))
    with pytest.raises(ValueError, match="mask_or_centroid"):
        orthogonal_views(vol, (1.0, 9.0, 2.0))
    with pytest.raises(ValueError, match=r"mask_or_centroid.*empty"):
        orthogonal_views(vol, np.zeros((5, 5, 5), np.uint8))
    with pytest.raises(ValueError, match=r"mask_or_centroid.*shape"):
        orthogonal_views(vol, np.ones((5, 5, 4), np.uint8))
    with pytest.raises(ValueError, match="size"):
        orthogonal_views(vol, (2.0, 2.0, 2.0), size=1)
    with pytest.raises(ValueError, match=r"size.*cap"):
        orthogonal_views(vol, (2.0, 2.0, 2.0), size=2**15)
    with pytest.raises(ValueError, match=r"volume.*ndim=2"):
        orthogonal_views(vol[0], (2.0, 2.0, 2.0))
    with pytest.raises(ValueError, match="margin_vox"):
        orthogonal_views(vol, (2.0, 2.0, 2.0), margin_vox=-1.0)


def test_the_resampling_pass_order_is_the_kernels_own() -> None:
    """_core.resample_axes is the order the C++ kernel runs (and the CUDA launcher asks for):
    shrinking axes first, ties in axis order (the contiguous x gather last), identities skipped."""
    from dmfn.preprocess import _core

    # Thick slices to 1 mm: z grows (last); y and x shrink alike (y before x).
    assert _core.resample_axes((120, 512, 512), (300, 358, 358), (0.4, 1.0 / 0.7, 1.0 / 0.7)) == [
        1,
        2,
        0,
    ]
    assert _core.resample_axes((10, 20, 30), (10, 20, 30), (1.0, 1.0, 1.0)) == []
    assert _core.resample_axes((10, 20, 30), (10, 40, 15), (1.0, 0.5, 2.0)) == [2, 1]
    # Same size but another ratio is not the identity.
    assert _core.resample_axes((10, 20, 30), (10, 20, 30), (1.0, 1.0, 0.9)) == [2]
