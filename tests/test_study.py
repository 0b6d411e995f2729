"""The Study type: validation of every field, derived arrays, geometry, copies and repr."""

from __future__ import annotations

import dataclasses

import numpy as np
import pytest

from dmfn.contract.schema import CLINICAL_FIELDS, DEFAULT_CTC_FEATURES
from dmfn.contract.study import AXIAL_DIRECTION, Clinical, Study, VoxelGrid, hu_from_values

SHAPE = (4, 5, 6)


def _study(**overrides: object) -> Study:
    fields: dict[str, object] = {
        "hu": np.zeros(SHAPE, dtype=np.int16),
        "spacing_mm": (2.5, 0.7, 0.8),
        "origin_lps_mm": (-10.0, 20.0, -30.0),
        "ctc": {"ctc_level_pg_ml": 12.5},
        "clinical": Clinical(age_years=55, sex="F", location="anterior"),
        "patient_id": "P001",
        "image_id": "P001-CT1",
        "label": "thymoma",
    }
    fields.update(overrides)
    return Study(**fields)  # type: ignore[arg-type]


def _mask() -> np.ndarray:
    mask = np.zeros(SHAPE, dtype=np.uint8)
    mask[1:3, 2:4, 1:5] = 1
    return mask


def test_valid_study_normalises_fields() -> None:
    study = _study(spacing_mm=[2.5, 0.7, 0.8], origin_lps_mm=np.array([-10, 20, -30]))
    assert study.shape == SHAPE
    assert study.spacing_mm == (2.5, 0.7, 0.8)
    assert study.origin_lps_mm == (-10.0, 20.0, -30.0)
    np.testing.assert_array_equal(study.direction, AXIAL_DIRECTION)
    assert study.mask is None and study.bbox is None


def test_images_only_study_has_no_clinical_and_no_ctc() -> None:
    study = Study(np.zeros(SHAPE, np.float32), (1, 1, 1))
    assert study.clinical is None and dict(study.ctc) == {}
    with pytest.raises(ValueError, match=r"'clinical'"):
        study.clinical_array()
    with pytest.raises(ValueError, match=r"ctc_level_pg_ml"):
        study.ctc_array()


@pytest.mark.parametrize(
    ("hu", "rule"),
    [
        ([[[0]]], "numpy.ndarray"),
        (np.zeros((4, 5), np.int16), "3D"),
        (np.zeros((0, 5, 6), np.int16), "non-empty"),
        (np.zeros(SHAPE, np.int32), "int16 or float32"),
        (np.zeros(SHAPE, np.float64), "int16 or float32"),
        (np.full(SHAPE, np.nan, np.float32), "finite"),
    ],
)
def test_bad_hu_names_the_field(hu: object, rule: str) -> None:
    with pytest.raises(ValueError, match=rf"'hu'.*{rule}"):
        _study(hu=hu)


@pytest.mark.parametrize("spacing", [(0, 1, 1), (1, -1, 1), (1, 1), (1, 1, np.nan), "abc"])
def test_bad_spacing_names_the_field(spacing: object) -> None:
    with pytest.raises(ValueError, match=r"'spacing_mm'.*> 0"):
        _study(spacing_mm=spacing)


def test_bad_origin_names_the_field() -> None:
    with pytest.raises(ValueError, match=r"'origin_lps_mm'"):
        _study(origin_lps_mm=(0, np.inf, 0))


def test_direction_must_be_orthonormal_but_may_be_flipped() -> None:
    with pytest.raises(ValueError, match=r"'direction'.*orthonormal"):
        _study(direction=2 * AXIAL_DIRECTION)
    with pytest.raises(ValueError, match=r"'direction'.*3x3"):
        _study(direction=np.eye(2))
    flipped = AXIAL_DIRECTION * np.array([-1.0, 1.0, 1.0])  # z from head to feet
    study = _study(direction=flipped)
    np.testing.assert_array_equal(study.direction, flipped)
    assert not study.direction.flags.writeable


def test_mask_is_validated_and_bool_is_converted() -> None:
    study = _study(mask=_mask().astype(bool))
    assert study.mask is not None and study.mask.dtype == np.uint8
    np.testing.assert_array_equal(study.mask, _mask())
    with pytest.raises(ValueError, match=r"'mask'.*shape"):
        _study(mask=np.ones((4, 5, 5), np.uint8))
    with pytest.raises(ValueError, match=r"'mask'.*0 or 1"):
        _study(mask=_mask() * 2)
    with pytest.raises(ValueError, match=r"'mask'.*empty"):
        _study(mask=np.zeros(SHAPE, np.uint8))
    with pytest.raises(ValueError, match=r"'mask'.*uint8"):
        _study(mask=_mask().astype(np.float32))


@pytest.mark.parametrize(
    "bbox",
    [
        (0, 0, 0, 5, 5, 6),
        (1, 0, 0, 1, 5, 6),
        (-1, 0, 0, 4, 5, 6),
        (0, 0, 0, 4, 5),
        (0, 0, 0.5, 4, 5, 6),
    ],
)
def test_bad_bbox_names_the_field(bbox: tuple) -> None:
    with pytest.raises(ValueError, match=r"'bbox'"):
        _study(bbox=bbox)


def test_bbox_is_half_open_and_may_cover_the_image() -> None:
    assert _study(bbox=np.array([0, 0, 0, 4, 5, 6])).bbox == (0, 0, 0, 4, 5, 6)


def test_ctc_array_follows_the_requested_order() -> None:
    study = _study(ctc={"b": 2, "ctc_level_pg_ml": 9.5, "a": 1.0})
    np.testing.assert_array_equal(study.ctc_array(), np.array([9.5], np.float32))
    out = study.ctc_array(("a", "b", "ctc_level_pg_ml"))
    assert out.dtype == np.float32
    np.testing.assert_array_equal(out, [1.0, 2.0, 9.5])
    assert DEFAULT_CTC_FEATURES == ("ctc_level_pg_ml",)


def test_ctc_array_names_a_missing_feature() -> None:
    with pytest.raises(ValueError, match=r"'nlr'.*available: \['ctc_level_pg_ml'\]"):
        _study().ctc_array(("ctc_level_pg_ml", "nlr"))
    with pytest.raises(ValueError, match=r"'features'"):
        _study().ctc_array("ctc_level_pg_ml")


@pytest.mark.parametrize(
    ("ctc", "rule"), [({"x": np.nan}, "finite"), ({"": 1.0}, "non-empty"), ({"x": "a"}, "number")]
)
def test_bad_ctc_names_the_field(ctc: dict, rule: str) -> None:
    with pytest.raises(ValueError, match=rf"'ctc'.*{rule}"):
        _study(ctc=ctc)


def test_clinical_array_layout_matches_the_schema() -> None:
    assert CLINICAL_FIELDS[:2] == ("age_years", "sex_male")
    out = Clinical(age_years=61.5, sex="M", location="posterior").as_array()
    assert out.dtype == np.float32 and out.shape == (len(CLINICAL_FIELDS),)
    np.testing.assert_array_equal(out, [61.5, 1, 0, 0, 1])
    np.testing.assert_array_equal(_study().clinical_array(), [55, 0, 1, 0, 0])


@pytest.mark.parametrize(
    ("kwargs", "field"),
    [
        ({"age_years": -1, "sex": "M", "location": "middle"}, "age_years"),
        ({"age_years": float("nan"), "sex": "M", "location": "middle"}, "age_years"),
        ({"age_years": 40, "sex": "male", "location": "middle"}, "sex"),
        ({"age_years": 40, "sex": "F", "location": "superior"}, "location"),
    ],
)
def test_bad_clinical_names_the_field(kwargs: dict, field: str) -> None:
    with pytest.raises(ValueError, match=rf"'{field}'"):
        Clinical(**kwargs)


def test_other_fields_are_checked() -> None:
    with pytest.raises(ValueError, match=r"'clinical'"):
        _study(clinical={"age_years": 3})
    with pytest.raises(ValueError, match=r"'patient_id'"):
        _study(patient_id=17)
    with pytest.raises(ValueError, match=r"'label'"):
        _study(label="")


def test_with_mask_and_with_bbox_return_validated_copies() -> None:
    study = _study()
    masked = study.with_mask(_mask())
    assert study.mask is None and masked.mask is not None
    assert masked.hu is study.hu  # the volume is shared, not copied
    assert masked.with_mask(None).mask is None
    with pytest.raises(ValueError, match=r"'mask'"):
        study.with_mask(np.zeros(SHAPE, np.uint8))
    assert study.with_bbox([0, 1, 2, 3, 4, 5]).bbox == (0, 1, 2, 3, 4, 5)
    with pytest.raises(ValueError, match=r"'bbox'"):
        study.with_bbox([0, 1, 2, 3, 4, 9])


def test_study_is_frozen() -> None:
    with pytest.raises(dataclasses.FrozenInstanceError):
        _study().label = "lymphoma"  # type: ignore[misc]


def test_repr_does_not_dump_arrays() -> None:
    text = repr(_study(hu=np.arange(np.prod(SHAPE), dtype=np.int16).reshape(SHAPE), mask=_mask()))
    assert "int16 (4, 5, 6)" in text and "16 voxels" in text and "P001-CT1" in text
    assert "[[" not in text and "array(" not in text and len(text) < 500


def test_axial_grid_maps_indices_to_lps() -> None:
    grid = _study().grid
    assert isinstance(grid, VoxelGrid)
    # voxel (k, j, i) of an axial scan lies at origin + (i*sx, j*sy, k*sz) in LPS (x, y, z).
    np.testing.assert_allclose(grid.index_to_lps([3, 2, 1]), [-10 + 0.8, 20 + 1.4, -30 + 7.5])
    np.testing.assert_allclose(grid.affine[:3, 3], [-10, 20, -30])


def test_grid_index_round_trip_with_oblique_direction() -> None:
    angle = np.radians(20)
    rotation = np.array(
        [[np.cos(angle), -np.sin(angle), 0], [np.sin(angle), np.cos(angle), 0], [0, 0, 1]]
    )
    grid = VoxelGrid((3, 4, 5), (2.0, 0.5, 0.6), (1, 2, 3), rotation @ AXIAL_DIRECTION)
    index = np.array([[0, 0, 0], [2, 3, 4], [1.5, 0.25, 3]])
    np.testing.assert_allclose(grid.lps_to_index(grid.index_to_lps(index)), index, atol=1e-12)
    step = grid.index_to_lps([0, 0, 1]) - grid.index_to_lps([0, 0, 0])
    np.testing.assert_allclose(np.linalg.norm(step), 0.6)


def test_hu_from_values_keeps_int16_only_when_lossless() -> None:
    assert hu_from_values(np.array([[-1024.0, 3071.0]])).dtype == np.int16
    assert hu_from_values(np.array([[-1024, 40000]], np.int32)).dtype == np.float32
    assert hu_from_values(np.array([[0.5, 1.0]])).dtype == np.float32
    np.testing.assert_array_equal(hu_from_values(np.array([[0.5, 1.0]])), [[0.5, 1.0]])
