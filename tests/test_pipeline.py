"""preprocess_study: the whole chain, its outputs and the bad inputs it refuses."""

from __future__ import annotations

import dataclasses

import numpy as np
import pytest

from dmfn.contract.params import PreprocessParams
from dmfn.contract.schema import CLINICAL_FIELDS, MEASUREMENT_FIELDS, Schema
from dmfn.preprocess import (
    PreprocessedStudy,
    crop_roi,
    denoise_pde,
    measure_lesion,
    preprocess_study,
    resample_isotropic,
)
from dmfn.preprocess.pipeline import resample_mask

SPACING = (2.5, 0.7, 0.7)
CTC = np.array([7.5], np.float32)
CLINICAL = np.array([61.0, 1.0, 0.0, 1.0, 0.0], np.float32)
FAST = PreprocessParams(pde_iterations=0, view_size=32)
#: Small PDE run so that the chain with denoising stays fast.
WITH_PDE = PreprocessParams(pde_iterations=3, view_size=32)


def _study(seed: int = 0, shape=(16, 48, 52)) -> tuple[np.ndarray, np.ndarray]:
    """A noisy soft-tissue ellipsoid in fat, as int16 HU, with its mask."""
    rng = np.random.default_rng(seed)
    grids = np.meshgrid(*[np.arange(n) for n in shape], indexing="ij")
    centre = tuple(n / 2 for n in shape)
    semi = (0.2 * shape[0], 0.24 * shape[1], 0.18 * shape[2])
    r2 = sum(((g - c) / a) ** 2 for g, c, a in zip(grids, centre, semi, strict=True))
    mask = (r2 <= 1).astype(np.uint8)
    hu = np.where(mask > 0, 45.0, -90.0) + rng.normal(0, 15, shape)
    return hu.astype(np.int16), mask


@pytest.mark.parametrize("params", [FAST, WITH_PDE], ids=["no-pde", "pde"])
def test_outputs_match_schema(params):
    hu, mask = _study()
    out = preprocess_study(hu, SPACING, mask, CTC, CLINICAL, params)
    assert isinstance(out, PreprocessedStudy)
    schema = Schema(n_ctc=1, view_size=params.view_size)
    for spec, arr in zip(
        schema.preprocess_outputs, (out.views, out.tabular, out.measurements), strict=True
    ):
        assert arr.dtype == spec.numpy_dtype and arr.shape == spec.dims, spec.name
    assert 0.0 <= out.views.min() and out.views.max() <= 1.0
    np.testing.assert_array_equal(out.tabular, np.concatenate([CTC, CLINICAL]))
    assert len(out.measurements) == len(MEASUREMENT_FIELDS)
    # The lesion (45 HU -> 0.54 in the window) sits at the centre of every view.
    c = params.view_size // 2
    assert (out.views[:, c - 1 : c + 1, c - 1 : c + 1] > 0.4).all()


def test_default_params_run_the_pde():
    hu, mask = _study(1)
    out = preprocess_study(hu, SPACING, mask, CTC, CLINICAL)
    assert out.views.shape == (3, 128, 128)
    assert out.measurements[0] > 0


def test_deterministic():
    hu, mask = _study(2)
    a = preprocess_study(hu, SPACING, mask, CTC, CLINICAL, WITH_PDE)
    b = preprocess_study(hu.copy(), SPACING, mask.copy(), CTC, CLINICAL, WITH_PDE)
    for field in dataclasses.fields(PreprocessedStudy):
        np.testing.assert_array_equal(getattr(a, field.name), getattr(b, field.name))


def test_chain_order_and_measurements():
    """The measurements are those of the mask resampled like the volume, on 1 mm voxels."""
    hu, mask = _study(3)
    out = preprocess_study(hu, SPACING, mask, CTC, CLINICAL, FAST)
    roi = crop_roi(hu, mask=mask, margin_mm=FAST.roi_margin_mm, spacing_mm=SPACING)
    iso_mask = resample_mask(roi.mask, SPACING, 1.0, FAST.max_voxels)
    np.testing.assert_allclose(out.measurements, measure_lesion(iso_mask, (1, 1, 1)).as_array())
    # Physical size is preserved: volume within 5 % of the native mask's.
    native = mask.sum() * np.prod(SPACING)
    assert out.measurements[0] == pytest.approx(native, rel=0.05)


def test_pde_runs_before_resampling():
    """With the PDE on, the views differ from the undenoised chain (the PDE is in the chain)."""
    hu, mask = _study(4)
    plain = preprocess_study(hu, SPACING, mask, CTC, CLINICAL, FAST)
    smooth = preprocess_study(hu, SPACING, mask, CTC, CLINICAL, WITH_PDE)
    assert not np.array_equal(plain.views, smooth.views)
    roi = crop_roi(hu, mask=mask, margin_mm=10.0, spacing_mm=SPACING)
    den = denoise_pde(roi.volume.astype(np.float32), k=20.0, dt=0.0125, iterations=3)
    assert resample_isotropic(den, SPACING).std() < resample_isotropic(roi.volume, SPACING).std()


def test_client_crop_is_idempotent():
    hu, mask = _study(5)
    roi = crop_roi(hu, mask=mask, margin_mm=FAST.roi_margin_mm, spacing_mm=SPACING)
    full = preprocess_study(hu, SPACING, mask, CTC, CLINICAL, FAST)
    cropped = preprocess_study(roi.volume, SPACING, roi.mask, CTC, CLINICAL, FAST)
    np.testing.assert_array_equal(full.views, cropped.views)
    np.testing.assert_array_equal(full.measurements, cropped.measurements)


def test_thin_lesion_never_vanishes():
    """A lesion thinner than half a target voxel keeps the voxel nearest its centroid."""
    mask = np.zeros((3, 10, 10), np.uint8)
    mask[1, 5, 5] = 1
    iso = resample_mask(mask, (1.0, 0.3, 0.3), 1.0, 2**20)
    assert iso.sum() == 1 and iso[1, 2, 2] == 1
    hu = np.zeros(mask.shape, np.int16)
    out = preprocess_study(hu, (1.0, 0.3, 0.3), mask, CTC, CLINICAL, FAST)
    assert out.measurements[0] == pytest.approx(1.0)


def test_float_and_noncontiguous_inputs_are_converted():
    hu, mask = _study(6)
    ref = preprocess_study(hu, SPACING, mask, CTC, CLINICAL, FAST)
    as_float = preprocess_study(
        hu.astype(np.float64), SPACING, mask.astype(bool), CTC, CLINICAL, FAST
    )
    np.testing.assert_array_equal(ref.views, as_float.views)
    wide = np.zeros((16, 48, 104), np.int16)
    wide[:, :, ::2] = hu
    strided = preprocess_study(wide[:, :, ::2], list(SPACING), mask, [7.5], CLINICAL.tolist(), FAST)
    np.testing.assert_array_equal(ref.views, strided.views)


# --------------------------------------------------------------------------- bad inputs


def _call(**changes):
    hu, mask = _study(7, shape=(8, 24, 24))
    params = changes.pop("params", FAST)
    args = {"hu": hu, "spacing_mm": SPACING, "mask": mask, "ctc": CTC, "clinical": CLINICAL}
    args.update(changes)
    return preprocess_study(**args, params=params)


def _nan_hu():
    hu = _study(7, shape=(8, 24, 24))[0].astype(np.float32)
    hu[0, 0, 0] = np.nan
    return hu


@pytest.mark.parametrize(
    ("changes", "pattern"),
    [
        ({"hu": np.zeros((24, 24), np.int16)}, "hu.*ndim=2"),
        ({"hu": np.zeros((1, 8, 24, 24), np.int16)}, "hu.*ndim=4"),
        ({"hu": np.zeros((8, 24, 24), bool)}, "hu.*dtype"),
        ({"hu": np.zeros((8, 24, 24), np.complex64)}, "hu.*dtype"),
        ({"hu": np.zeros((8, 24, 24), object)}, "hu.*dtype"),
        ({"hu": [[[0]]]}, "hu.*numpy"),
        ({"hu": "nan"}, "hu"),
        ({"spacing_mm": (2.5, 0.0, 0.7)}, "spacing_mm"),
        ({"spacing_mm": (2.5, -0.7, 0.7)}, "spacing_mm"),
        ({"spacing_mm": (2.5, 0.7)}, "spacing_mm"),
        ({"spacing_mm": (2.5, np.inf, 0.7)}, "spacing_mm"),
        ({"mask": np.zeros((8, 24, 24), np.uint8)}, "mask.*empty"),
        ({"mask": np.ones((8, 24, 23), np.uint8)}, "mask.*shape"),
        ({"mask": np.ones((8, 24, 24), np.complex64)}, "mask.*dtype"),
        ({"ctc": np.array([np.nan], np.float32)}, "ctc.*finite"),
        ({"ctc": np.zeros((0,), np.float32)}, "ctc"),
        ({"ctc": np.zeros((1, 1), np.float32)}, "ctc"),
        ({"ctc": np.array(["a"])}, "ctc.*dtype"),
        ({"clinical": CLINICAL[:4]}, "clinical.*5 values"),
        ({"clinical": np.array([130, 1, 0, 1, 0], np.float32)}, "clinical.*age_years"),
        ({"clinical": np.array([-1, 1, 0, 1, 0], np.float32)}, "clinical.*age_years"),
        ({"clinical": np.array([50, 0.5, 0, 1, 0], np.float32)}, "clinical.*sex_male"),
        ({"clinical": np.array([50, 1, 1, 1, 0], np.float32)}, "clinical.*one-hot"),
        ({"clinical": np.array([50, 1, 0, 0, 0], np.float32)}, "clinical.*one-hot"),
        ({"clinical": np.array([50, 1, 0.5, 0.5, 0], np.float32)}, "clinical.*one-hot"),
        ({"clinical": np.array([np.nan, 1, 0, 1, 0], np.float32)}, "clinical.*finite"),
        ({"params": {"view_size": 32}}, "params"),
    ],
)
def test_bad_inputs_name_the_argument(changes, pattern):
    with pytest.raises(ValueError, match=pattern):
        _call(**changes)


def test_an_empty_mask_is_refused_by_name_in_every_dtype():
    """The emptiness check is mask_bbox's (one pass over the mask, not two): still InvalidInput
    naming 'mask', for bool, float and integer masks alike."""
    from dmfn.contract.errors import InvalidInput

    for dtype in (bool, np.float32, np.int16, np.uint8):
        with pytest.raises(InvalidInput, match=r"argument 'mask': is empty") as caught:
            _call(mask=np.zeros((8, 24, 24), dtype))
        assert caught.value.name == "mask"


def test_nan_and_inf_in_hu_are_refused():
    with pytest.raises(ValueError, match=r"hu.*finite"):
        _call(hu=_nan_hu())
    hu = _study(7, shape=(8, 24, 24))[0].astype(np.float64)
    hu[3, 4, 5] = -np.inf
    with pytest.raises(ValueError, match=r"hu.*finite"):
        _call(hu=hu)


def test_voxel_cap():
    # The 8x24x24 input fits a cap of 5000 voxels; its 1 mm resampling (20x17x17) does not.
    small_cap = dataclasses.replace(FAST, max_voxels=5000)
    with pytest.raises(ValueError, match=r"hu.*cap of 5000"):
        _call(params=small_cap)
    with pytest.raises(ValueError, match=r"hu.*cap of 1000"):
        _call(params=dataclasses.replace(FAST, max_voxels=1000))


def test_clinical_layout_is_the_schemas():
    assert CLINICAL_FIELDS[:2] == ("age_years", "sex_male") and len(CLINICAL_FIELDS) == 5


def test_tabular_measurements_append_the_lesion_size_in_mm() -> None:
    from dmfn.contract.schema import TABULAR_MEASUREMENT_FIELDS, Schema, tabular_measurements

    rng = np.random.default_rng(3)
    hu = rng.normal(40, 10, (20, 48, 48)).astype(np.float32)
    mask = np.zeros(hu.shape, np.uint8)
    mask[6:14, 14:34, 16:30] = 1
    base = PreprocessParams(view_size=32)
    plain = preprocess_study(hu, (2.0, 0.8, 0.8), mask, [12.0], [50, 1, 1, 0, 0], params=base)
    params = dataclasses.replace(base, tabular_measurements=True)
    sized = preprocess_study(hu, (2.0, 0.8, 0.8), mask, [12.0], [50, 1, 1, 0, 0], params=params)
    assert sized.tabular.shape == (plain.tabular.size + len(TABULAR_MEASUREMENT_FIELDS),)
    np.testing.assert_array_equal(sized.tabular[: plain.tabular.size], plain.tabular)
    np.testing.assert_allclose(
        sized.tabular[plain.tabular.size :], tabular_measurements(sized.measurements)
    )
    np.testing.assert_array_equal(sized.views, plain.views)
    diameter = sized.tabular[plain.tabular.size]
    assert diameter == pytest.approx((6 * sized.measurements[0] / np.pi) ** (1 / 3), rel=1e-5)
    assert Schema(n_ctc=1, measurement_features=True).n_tabular == plain.tabular.size + 3
    # a parameter set made before the option has the same JSON (and cache key) as before
    assert "tabular_measurements" not in base.to_dict()
    assert PreprocessParams.from_json(params.to_json()) == params
