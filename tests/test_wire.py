"""The wire format and the input limits: what a request may hold, checked before any array is
built from it (no server here)."""

from __future__ import annotations

import math

import numpy as np
import pytest

from dmfn.contract import schema as S
from dmfn.contract.errors import InvalidInput
from dmfn.contract.limits import InputLimits, widen_range
from dmfn.contract.server import ServerContract
from dmfn.contract.wire import decode_checked, decode_item, decode_request, encode_study

LIMITS = InputLimits(ctc_ranges=((0.0, 40.0),), max_study_voxels=10_000, max_axis_voxels=64)


def _study(shape=(6, 10, 12), seed=0):
    rng = np.random.default_rng(seed)
    hu = rng.integers(-1000, 3000, size=shape).astype(np.int16)
    mask = np.zeros(shape, np.uint8)
    mask[1:4, 2:7, 3:9] = 1
    return hu, mask


def test_every_request_tensor_has_fixed_dims() -> None:
    """No client-chosen dimension reaches a backend: Triton checks fixed dims exactly."""
    for spec in S.Schema().request_inputs:
        assert all(d > 0 for d in spec.dims), spec


@pytest.mark.parametrize("shape", [(1, 2, 3), (6, 10, 12), (7, 1, 13), (2, 2, 2)])
def test_encode_decode_round_trip(shape) -> None:
    hu, mask = _study(shape)
    mask[...] = 0
    mask.flat[:: max(1, mask.size // 3)] = 1
    arrays = encode_study(hu, mask, (2.5, 0.7, 0.7), [12.5], [54, 0, 1, 0, 0])
    assert arrays[S.CT_HU].dtype == np.object_ and arrays[S.CT_HU].shape == (1, 1)
    assert len(arrays[S.ROI_MASK][0, 0]) == math.ceil(hu.size / 8)
    study = decode_item(arrays, 0, LIMITS)
    np.testing.assert_array_equal(study.hu, hu)
    np.testing.assert_array_equal(study.mask, mask)
    np.testing.assert_array_equal(study.spacing_mm, np.float32([2.5, 0.7, 0.7]))
    assert study.ctc.tolist() == [12.5] and study.clinical[0] == 54


#: A (z, y, x) = (2, 2, 3) mask, 12 voxels, lesion at 4 of them. C order numbers the voxels
#: i = 6 z + 3 y + x; the documented order is numpy.packbits' "big": voxel 8 k + j is bit 7 - j
#: of byte k (voxel 0 is the first byte's most significant bit, 0x80), and the last byte's 4
#: unused low bits are 0.
#:   voxel 0 = (0, 0, 0) -> byte 0, 0x80     voxel 5 = (0, 1, 2) -> byte 0, 0x04
#:   voxel 1 = (0, 0, 1) -> byte 0, 0x40     voxel 9 = (1, 1, 0) -> byte 1, 0x40
#: so the bytes are 0xC4 0x40 (in the other bit order they would be 0x23 0x02).
GOLDEN_MASK_SHAPE = (2, 2, 3)
GOLDEN_MASK_VOXELS = ((0, 0, 0), (0, 0, 1), (0, 1, 2), (1, 1, 0))
GOLDEN_ROI_MASK = b"\xc4\x40"


def test_roi_mask_bytes_match_the_documented_bit_order() -> None:
    """Golden bytes: the encoder writes, and the decoder reads, the literal ROI_MASK above (a
    bit order flipped on both sides would still round-trip, and fail here)."""
    mask = np.zeros(GOLDEN_MASK_SHAPE, np.uint8)
    for voxel in GOLDEN_MASK_VOXELS:
        mask[voxel] = 1
    mask[1, 1, 0] = 7  # any nonzero value is lesion
    hu = np.zeros(GOLDEN_MASK_SHAPE, np.int16)
    arrays = encode_study(hu, mask, (1.0, 1.0, 1.0), [12.5], [54, 0, 1, 0, 0])
    assert arrays[S.ROI_MASK][0, 0] == GOLDEN_ROI_MASK

    literal = dict(arrays)
    literal[S.ROI_MASK] = np.array([[GOLDEN_ROI_MASK]], dtype=np.object_)
    decoded = decode_item(literal, 0, LIMITS).mask
    expected = np.zeros(GOLDEN_MASK_SHAPE, np.uint8)
    for voxel in GOLDEN_MASK_VOXELS:
        expected[voxel] = 1
    np.testing.assert_array_equal(decoded, expected)


def test_batched_requests_decode_each_study() -> None:
    a, b = (
        encode_study(*_study((4, 5, 6)), (1, 1, 1), [3], [50, 1, 1, 0, 0]),
        encode_study(*_study((6, 10, 12), 1), (1, 1, 1), [5], [60, 0, 0, 1, 0]),
    )
    batch = {k: np.concatenate([a[k], b[k]]) for k in a}
    studies = decode_request(batch, LIMITS)
    assert [s.hu.shape for s in studies] == [(4, 5, 6), (6, 10, 12)]


@pytest.mark.parametrize(
    "shape, rule",
    [
        ((4294967296, 4294967296, 1), "every axis must be 1..64"),
        ((2**62, 2**62, 2**62), "every axis must be 1..64"),
        ((0, 5, 5), "every axis must be 1..64"),
        ((-1, 5, 5), "every axis must be 1..64"),
        ((64, 64, 64), "above this server's limit of 10,000 voxels"),
    ],
)
def test_overflowing_or_huge_shapes_are_refused_before_any_allocation(shape, rule) -> None:
    arrays = encode_study(*_study(), (1, 1, 1), [3], [50, 1, 1, 0, 0])
    arrays[S.VOLUME_SHAPE] = np.array([shape], np.int64)
    arrays[S.CT_HU][0, 0] = b""  # the overflow attack sends no data
    with pytest.raises(InvalidInput, match=rule) as err:
        decode_item(arrays, 0, LIMITS)
    assert err.value.name == S.VOLUME_SHAPE and str(err.value).startswith("input 'VOLUME_SHAPE'")


@pytest.mark.parametrize("tensor", [S.CT_HU, S.ROI_MASK])
@pytest.mark.parametrize("change", [-1, 1])
def test_buffer_length_must_match_the_shape(tensor: str, change: int) -> None:
    arrays = encode_study(*_study(), (1, 1, 1), [3], [50, 1, 1, 0, 0])
    data = arrays[tensor][0, 0]
    arrays[tensor][0, 0] = data[:change] if change < 0 else data + b"\0"
    with pytest.raises(InvalidInput, match="bytes but VOLUME_SHAPE") as err:
        decode_item(arrays, 0, LIMITS)
    assert err.value.name == tensor


def test_a_non_bytes_element_is_refused() -> None:
    arrays = encode_study(*_study(), (1, 1, 1), [3], [50, 1, 1, 0, 0])
    arrays[S.CT_HU] = np.array([[12]], np.object_)
    with pytest.raises(InvalidInput, match="one BYTES element"):
        decode_item(arrays, 0, LIMITS)


@pytest.mark.parametrize(
    "spacing, ctc, age, tensor, rule",
    [
        ((1e-30, 1, 1), 3, 50, S.SPACING_MM, r"within 0.1..10 mm"),
        ((np.nan, 1, 1), 3, 50, S.SPACING_MM, r"within 0.1..10 mm"),
        ((1, 1, 11), 3, 50, S.SPACING_MM, r"within 0.1..10 mm"),
        ((1, 1, 1), 1e30, 50, S.CTC, r"= 1e\+30 is outside the range this model accepts \[0, 40\]"),
        ((1, 1, 1), -5, 50, S.CTC, r"outside the range"),
        ((1, 1, 1), 1300, 50, S.CTC, r"check the unit: the paper's CTC level is in pg/ml"),
        ((1, 1, 1), np.nan, 50, S.CTC, r"outside the range"),
        ((1, 1, 1), 3, 121, S.CLINICAL, r"age_years must be within 0..120 years"),
        ((1, 1, 1), 3, -1, S.CLINICAL, r"age_years must be within 0..120 years"),
    ],
)
def test_implausible_values_name_the_field_and_range(spacing, ctc, age, tensor, rule) -> None:
    arrays = encode_study(*_study(), spacing, [ctc], [age, 1, 1, 0, 0])
    with pytest.raises(InvalidInput, match=rule) as err:
        decode_checked(arrays, 0, LIMITS, ("ctc_level_pg_ml",))
    assert err.value.name == tensor


@pytest.mark.parametrize(
    "box, spans", [((slice(2, 3), slice(0, 5), slice(0, 5)), r"\(1, 5, 5\)"), (None, "empty")]
)
def test_a_lesion_of_one_voxel_on_an_axis_is_refused(box, spans) -> None:
    hu, _ = _study()
    mask = np.zeros_like(hu, np.uint8)
    if box is not None:
        mask[box] = 1
    arrays = encode_study(hu, mask, (1, 1, 1), [3], [50, 1, 1, 0, 0])
    with pytest.raises(InvalidInput, match=f"at least 2 voxels on every axis.*{spans}"):
        decode_checked(arrays, 0, LIMITS)


def test_the_bad_study_of_a_batch_is_named() -> None:
    good = encode_study(*_study(), (1, 1, 1), [3], [50, 1, 1, 0, 0])
    bad = encode_study(*_study(), (1, 1, 1), [300], [50, 1, 1, 0, 0])
    batch = {k: np.concatenate([good[k], bad[k]]) for k in good}
    with pytest.raises(InvalidInput, match=r"^input 'CTC': study 2 of 2: "):
        decode_request(batch, LIMITS)


def test_widen_range_adds_half_the_width_and_keeps_levels_non_negative() -> None:
    assert widen_range(1.75, 29.3) == pytest.approx((0.0, 29.3 + 0.5 * 27.55))
    assert widen_range(10.0, 20.0) == pytest.approx((5.0, 25.0))
    assert widen_range(-3.0, 1.0, floor=None) == pytest.approx((-5.0, 3.0))
    lo, hi = widen_range(5.0, 5.0)  # one value seen: still a usable range around it
    assert lo < 5.0 < hi


def test_limits_round_trip_through_the_published_contract() -> None:
    contract = ServerContract(10.0, ("ctc_level_pg_ml",), tuple(f"c{i}" for i in range(3)), LIMITS)
    parsed = ServerContract.from_parameters(contract.to_parameters())
    assert parsed.limits == LIMITS
    text = "\n".join(LIMITS.describe(["ctc_level_pg_ml"]))
    assert "CTC ctc_level_pg_ml: 0 .. 40" in text and "0.1 .. 10 mm" in text


@pytest.mark.parametrize(
    "kwargs, name",
    [
        ({"ctc_ranges": ()}, "ctc_ranges"),
        ({"ctc_ranges": ((5, 1),)}, "ctc_ranges"),
        ({"ctc_ranges": ((0, 1),), "max_study_voxels": 0}, "max_study_voxels"),
        ({"ctc_ranges": ((0, 1),), "spacing_mm": (0, 1)}, "spacing_mm"),
    ],
)
def test_limits_refuse_bad_settings(kwargs, name) -> None:
    with pytest.raises(InvalidInput) as err:
        InputLimits(**kwargs)
    assert err.value.name == name


def test_contract_refuses_limits_of_another_ctc_width() -> None:
    with pytest.raises(ValueError, match="2 CTC ranges for 1 CTC features"):
        ServerContract(10.0, ("a",), ("x", "y", "z"), InputLimits(((0, 1), (0, 2))))


def test_the_largest_valid_request_fits_the_body_limit() -> None:
    side = round(LIMITS.max_study_voxels ** (1 / 3))
    hu = np.zeros((side, side, side), np.int16)
    arrays = encode_study(hu, np.ones_like(hu), (1, 1, 1), [3], [50, 1, 1, 0, 0])
    payload = sum(len(a[0, 0]) if a.dtype == np.object_ else a.nbytes for a in arrays.values())
    assert payload < LIMITS.max_body_bytes()
