"""NIfTI / NRRD / 3D Slicer .seg.nrrd: orientation (checked against SimpleITK), masks, errors."""

from __future__ import annotations

from pathlib import Path

import nibabel as nib
import nrrd
import numpy as np
import pytest

from dmfn.client.io import (
    load_mask,
    load_nifti_volume,
    load_nrrd_volume,
    write_nifti_mask,
    write_nifti_volume,
    write_nrrd_mask,
)
from dmfn.contract.orientation import (
    grid_from_nifti_affine,
    grid_from_nrrd,
    nifti_affine,
    nrrd_space_fields,
    place_on_grid,
    reverse_axes,
)
from dmfn.contract.study import AXIAL_DIRECTION, Study, VoxelGrid

sitk = pytest.importorskip("SimpleITK")

SHAPE = (6, 7, 8)
SPACING = (2.5, 0.7, 0.8)
ORIGIN = (-10.0, 20.0, -30.0)


def _rotation(axis: tuple[float, float, float], degrees: float) -> np.ndarray:
    k = np.asarray(axis, float) / np.linalg.norm(axis)
    cross = np.array([[0, -k[2], k[1]], [k[2], 0, -k[0]], [-k[1], k[0], 0]])
    a = np.radians(degrees)
    return np.eye(3) + np.sin(a) * cross + (1 - np.cos(a)) * cross @ cross


#: An oblique direction with the x axis flipped (determinant -1).
OBLIQUE_FLIPPED = _rotation((1, -2, 0.5), 30) @ AXIAL_DIRECTION @ np.diag([1.0, 1.0, -1.0])
#: An axis-aligned direction that is not axial: array axes (z, y, x) point to patient
#: posterior, inferior and right (loaders reorient it exactly to AXIAL_DIRECTION).
PERMUTED_FLIPPED = np.array([[0.0, 0.0, -1.0], [1.0, 0.0, 0.0], [0.0, -1.0, 0.0]])


def _hu(seed: int = 0) -> np.ndarray:
    return np.random.default_rng(seed).integers(-1000, 2000, SHAPE).astype(np.int16)


def _mask() -> np.ndarray:
    mask = np.zeros(SHAPE, np.uint8)
    mask[1:4, 2:6, 1:5] = 1
    mask[2, 3, 6] = 1  # asymmetric, so any flip or transpose shows
    return mask


def _study(direction: np.ndarray | None = None) -> Study:
    return Study(np.zeros(SHAPE, np.int16), SPACING, ORIGIN, direction)


def _itk_direction(image: object) -> np.ndarray:
    return np.asarray(image.GetDirection()).reshape(3, 3)  # type: ignore[attr-defined]


# --------------------------------------------------------------------------- orientation
def test_reverse_axes_swaps_first_and_third() -> None:
    array = np.arange(24).reshape(2, 3, 4)
    assert reverse_axes(array).shape == (4, 3, 2)
    assert reverse_axes(array)[3, 1, 0] == array[0, 1, 3]
    np.testing.assert_array_equal(reverse_axes(reverse_axes(array)), array)
    with pytest.raises(ValueError, match="'array'"):
        reverse_axes(np.zeros((2, 2)))


@pytest.mark.parametrize("direction", [AXIAL_DIRECTION, OBLIQUE_FLIPPED])
def test_nifti_affine_round_trip(direction: np.ndarray) -> None:
    grid = VoxelGrid(SHAPE, SPACING, ORIGIN, direction)
    affine = nifti_affine(grid)
    # RAS: x and y of the LPS position are negated
    np.testing.assert_allclose(affine[:3, 3], [10.0, -20.0, -30.0])
    back = grid_from_nifti_affine(affine, SHAPE[::-1])
    assert back.shape == SHAPE
    np.testing.assert_allclose(back.spacing_mm, SPACING)
    np.testing.assert_allclose(back.origin_lps_mm, ORIGIN)
    np.testing.assert_allclose(back.direction, direction, atol=1e-12)


def test_nrrd_spaces_convert_to_lps() -> None:
    grid = VoxelGrid(SHAPE, SPACING, ORIGIN, OBLIQUE_FLIPPED)
    fields = nrrd_space_fields(grid)
    lps = grid_from_nrrd(
        "left-posterior-superior", fields["space directions"], fields["space origin"], SHAPE[::-1]
    )  # type: ignore[arg-type]
    flip = np.diag([-1.0, -1.0, 1.0])
    ras = grid_from_nrrd(
        "right-anterior-superior",
        fields["space directions"] @ flip,  # type: ignore[operator]
        flip @ fields["space origin"],  # type: ignore[operator]
        SHAPE[::-1],
    )
    for back in (lps, ras):
        np.testing.assert_allclose(back.affine, grid.affine, atol=1e-12)
    with pytest.raises(ValueError, match="'space'"):
        grid_from_nrrd("scanner-xyz", np.eye(3), (0, 0, 0), SHAPE)


def test_sheared_affine_is_refused() -> None:
    affine = np.eye(4)
    affine[0, 1] = 0.3
    with pytest.raises(ValueError, match="not orthogonal"):
        grid_from_nifti_affine(affine, (4, 4, 4))


# --------------------------------------------------------------------------- volumes vs SimpleITK
def _assert_like_itk_axial(study: Study, image: object) -> None:
    """``study`` equals SimpleITK's reading of ``image`` reoriented to LPS (= our axial layout)."""
    axial = sitk.DICOMOrient(image, "LPS")
    np.testing.assert_array_equal(study.hu, sitk.GetArrayFromImage(axial))
    np.testing.assert_allclose(study.origin_lps_mm, axial.GetOrigin(), atol=1e-4)
    np.testing.assert_allclose(study.spacing_mm, axial.GetSpacing()[::-1], rtol=1e-6)
    np.testing.assert_allclose(study.direction, AXIAL_DIRECTION, atol=1e-6)


@pytest.mark.parametrize("suffix", [".nii.gz", ".nii"])
@pytest.mark.parametrize("direction", [AXIAL_DIRECTION, PERMUTED_FLIPPED])
def test_nifti_volume_matches_simpleitk(tmp_path: Path, suffix: str, direction: np.ndarray) -> None:
    hu = _hu()
    path = write_nifti_volume(
        hu, SPACING, tmp_path / f"ct{suffix}", origin_lps_mm=ORIGIN, direction=direction
    )
    image = sitk.ReadImage(str(path))  # ITK reports LPS, (x, y, z) order
    np.testing.assert_array_equal(sitk.GetArrayFromImage(image), hu)
    np.testing.assert_allclose(image.GetOrigin(), ORIGIN, atol=1e-4)
    np.testing.assert_allclose(image.GetSpacing(), SPACING[::-1], rtol=1e-6)
    np.testing.assert_allclose(_itk_direction(image), direction[:, ::-1], atol=1e-6)
    study = load_nifti_volume(path)
    assert study.image_id == "ct" and study.hu.dtype == np.int16
    _assert_like_itk_axial(study, image)
    if direction is AXIAL_DIRECTION:
        np.testing.assert_array_equal(study.hu, hu)
        np.testing.assert_allclose(study.origin_lps_mm, ORIGIN, atol=1e-4)


@pytest.mark.parametrize("suffix", [".nii.gz", ".nrrd"])
def test_files_written_by_simpleitk_load_in_lps(tmp_path: Path, suffix: str) -> None:
    hu = _hu(1)
    image = sitk.GetImageFromArray(hu)
    image.SetSpacing(SPACING[::-1])
    image.SetOrigin(ORIGIN)
    image.SetDirection(PERMUTED_FLIPPED[:, ::-1].ravel().tolist())
    path = tmp_path / f"itk{suffix}"
    sitk.WriteImage(image, str(path))
    study = load_nifti_volume(path) if suffix == ".nii.gz" else load_nrrd_volume(path)
    _assert_like_itk_axial(study, image)


@pytest.mark.parametrize("suffix", [".nii.gz", ".nrrd"])
def test_oblique_volumes_are_refused(tmp_path: Path, suffix: str) -> None:
    image = sitk.GetImageFromArray(_hu(1))
    image.SetDirection(OBLIQUE_FLIPPED[:, ::-1].ravel().tolist())
    path = tmp_path / f"itk{suffix}"
    sitk.WriteImage(image, str(path))
    load = load_nifti_volume if suffix == ".nii.gz" else load_nrrd_volume
    with pytest.raises(ValueError, match=rf"file .*itk{suffix}: the volume is oblique"):
        load(path)


def test_nrrd_mask_matches_simpleitk(tmp_path: Path) -> None:
    path = write_nrrd_mask(
        _mask(), SPACING, tmp_path / "m.nrrd", origin_lps_mm=ORIGIN, direction=OBLIQUE_FLIPPED
    )
    image = sitk.ReadImage(str(path))
    np.testing.assert_array_equal(sitk.GetArrayFromImage(image), _mask())
    np.testing.assert_allclose(image.GetOrigin(), ORIGIN, atol=1e-9)
    np.testing.assert_allclose(_itk_direction(image), OBLIQUE_FLIPPED[:, ::-1], atol=1e-9)


def test_scaled_nifti_gives_float32_hu(tmp_path: Path) -> None:
    data = np.arange(np.prod(SHAPE), dtype=np.int16).reshape(SHAPE[::-1])
    img = nib.Nifti1Image(data, np.diag([-1.0, -1.0, 2.0, 1.0]))
    img.header.set_slope_inter(0.5, -1000.25)
    img.set_sform(img.affine, code=1)
    nib.save(img, tmp_path / "scaled.nii")
    study = load_nifti_volume(tmp_path / "scaled.nii")
    assert study.hu.dtype == np.float32
    np.testing.assert_allclose(study.hu, reverse_axes(data * 0.5 - 1000.25))
    np.testing.assert_allclose(study.spacing_mm, (2.0, 1.0, 1.0))
    np.testing.assert_allclose(study.direction, AXIAL_DIRECTION)


def test_bad_nifti_volumes(tmp_path: Path) -> None:
    img = nib.Nifti1Image(np.zeros((4, 4, 4), np.int16), np.eye(4))
    img.set_sform(None, code=0)
    img.set_qform(None, code=0)
    nib.save(img, tmp_path / "nocode.nii")
    with pytest.raises(ValueError, match="position in patient space is unknown"):
        load_nifti_volume(tmp_path / "nocode.nii")
    nib.save(nib.Nifti1Image(np.zeros((4, 4, 4, 2), np.int16), np.eye(4)), tmp_path / "t2.nii")
    with pytest.raises(ValueError, match="3D image"):
        load_nifti_volume(tmp_path / "t2.nii")
    nib.save(nib.Nifti1Image(np.zeros((4, 4, 4, 1), np.int16), np.eye(4)), tmp_path / "t1.nii")
    assert load_nifti_volume(tmp_path / "t1.nii").shape == (4, 4, 4)
    (tmp_path / "junk.nii").write_bytes(b"nonsense")
    with pytest.raises(ValueError, match=r"junk\.nii: cannot be read"):
        load_nifti_volume(tmp_path / "junk.nii")
    with pytest.raises(ValueError, match="not an existing file"):
        load_nifti_volume(tmp_path / "absent.nii")
    (tmp_path / "ct.mha").write_bytes(b"")
    with pytest.raises(ValueError, match="must end with"):
        load_nifti_volume(tmp_path / "ct.mha")


# --------------------------------------------------------------------------- masks
@pytest.mark.parametrize("writer", [write_nifti_mask, write_nrrd_mask])
@pytest.mark.parametrize("direction", [AXIAL_DIRECTION, OBLIQUE_FLIPPED])
def test_mask_round_trip(tmp_path: Path, writer: object, direction: np.ndarray) -> None:
    suffix = ".nii.gz" if writer is write_nifti_mask else ".nrrd"
    path = writer(
        _mask().astype(bool),
        SPACING,
        tmp_path / f"m{suffix}",
        origin_lps_mm=ORIGIN,
        direction=direction,
    )  # type: ignore[operator]
    out = load_mask(path, _study(direction))
    assert out.dtype == np.uint8
    np.testing.assert_array_equal(out, _mask())


@pytest.mark.parametrize("suffix", [".nii.gz", ".nrrd"])
def test_mask_saved_with_a_flipped_axis_lands_on_the_study_grid(
    tmp_path: Path, suffix: str
) -> None:
    study = _study(OBLIQUE_FLIPPED)
    flipped_direction = study.direction * np.array([1.0, -1.0, 1.0])  # rows run the other way
    origin = study.grid.index_to_lps([0, SHAPE[1] - 1, 0])  # the old last row is the new first
    writer = write_nifti_mask if suffix == ".nii.gz" else write_nrrd_mask
    path = writer(
        _mask()[:, ::-1, :],
        SPACING,
        tmp_path / f"m{suffix}",
        origin_lps_mm=origin,
        direction=flipped_direction,
    )
    np.testing.assert_array_equal(load_mask(path, study), _mask())


def test_mask_with_permuted_axes_lands_on_the_study_grid(tmp_path: Path) -> None:
    study = _study()
    order = [2, 0, 1]  # file axes are our (x, z, y)
    path = write_nifti_mask(
        np.ascontiguousarray(_mask().transpose(order)),
        np.asarray(SPACING)[order],
        tmp_path / "m.nii.gz",
        origin_lps_mm=ORIGIN,
        direction=AXIAL_DIRECTION[:, order],
    )
    np.testing.assert_array_equal(load_mask(path, study), _mask())


def _seg_fields(name: str = "lesion") -> dict[str, str]:
    return {"Segment0_ID": "Segment_1", "Segment0_Name": name, "Segment0_LabelValue": "1"}


@pytest.mark.parametrize("name", ["crop.seg.nrrd", "crop.nrrd"])
def test_cropped_slicer_segmentation_is_embedded(tmp_path: Path, name: str) -> None:
    """A 3D Slicer segmentation (.seg.nrrd, or Segment fields in the header) may be a sub-box."""
    study = _study(OBLIQUE_FLIPPED)
    grid = VoxelGrid((3, 4, 6), SPACING, study.grid.index_to_lps([1, 2, 1]), OBLIQUE_FLIPPED)
    box = _mask()[1:4, 2:6, 1:7]
    path = _write_seg(tmp_path / name, box[None], grid, _seg_fields(), layered=False)
    np.testing.assert_array_equal(load_mask(path, study), _mask())
    # also with a grid given directly instead of a study
    np.testing.assert_array_equal(load_mask(path, study.grid), _mask())


def test_seg_nrrd_name_alone_allows_a_sub_box(tmp_path: Path) -> None:
    study = _study(OBLIQUE_FLIPPED)
    origin = study.grid.index_to_lps([1, 2, 1])
    path = write_nrrd_mask(
        _mask()[1:4, 2:6, 1:7],
        SPACING,
        tmp_path / "crop.seg.nrrd",
        origin_lps_mm=origin,
        direction=OBLIQUE_FLIPPED,
    )
    np.testing.assert_array_equal(load_mask(path, study), _mask())


@pytest.mark.parametrize("suffix", [".nii.gz", ".nrrd"])
@pytest.mark.parametrize("lost", ["last", "first"])
def test_label_map_one_slice_short_is_refused(tmp_path: Path, suffix: str, lost: str) -> None:
    """Same spacing and direction, one slice fewer: a plain label map must be on the image's grid."""
    study = _study()
    mask = _mask()
    short = mask[:-1] if lost == "last" else mask[1:]
    origin = study.grid.index_to_lps([0 if lost == "last" else 1, 0, 0])
    writer = write_nifti_mask if suffix == ".nii.gz" else write_nrrd_mask
    path = writer(short, SPACING, tmp_path / f"m{suffix}", origin_lps_mm=origin)
    with pytest.raises(
        ValueError, match=r"voxel grid is not the image's.*shape \(5, 7, 8\)"
    ) as info:
        load_mask(path, study)
    assert str(path) in str(info.value) and ".seg.nrrd" in str(info.value)


def test_slicer_segmentation_one_slice_short_is_a_sub_box(tmp_path: Path) -> None:
    study = _study()
    path = _write_seg(tmp_path / "s.seg.nrrd", _mask()[:-1][None], study.grid, _seg_fields())
    np.testing.assert_array_equal(load_mask(path, study), _mask())


def test_sub_box_off_voxel_centres_is_refused(tmp_path: Path) -> None:
    study = _study()
    origin = study.grid.index_to_lps([1.0, 2.5, 1.0])  # half a voxel off along y
    grid = VoxelGrid((3, 4, 6), SPACING, origin)
    path = _write_seg(tmp_path / "s.seg.nrrd", _mask()[None, 1:4, 2:6, 1:7], grid, _seg_fields())
    with pytest.raises(ValueError, match="does not match the image's"):
        load_mask(path, study)


@pytest.mark.parametrize("name", ["big.nii.gz", "big.seg.nrrd"])
def test_mask_grid_reaching_outside_the_image_is_refused(tmp_path: Path, name: str) -> None:
    """A grid larger than the image is refused even when its voxels outside are all zero."""
    big = np.zeros((SHAPE[0] + 2, SHAPE[1], SHAPE[2] + 3), np.uint8)
    big[1:-1, :, 2:-1] = _mask()
    origin = _study().grid.index_to_lps([-1, 0, -2])
    writer = write_nifti_mask if name.endswith(".nii.gz") else write_nrrd_mask
    path = writer(big, SPACING, tmp_path / name, origin_lps_mm=origin)
    expected = "reaches outside the image" if name.endswith(".seg.nrrd") else "is not the image's"
    with pytest.raises(ValueError, match=expected):
        load_mask(path, _study())
    # a box overlapping the image edge (inside on one side, outside on the other) likewise
    origin = _study().grid.index_to_lps([3, 0, 0])
    edge = _mask()
    path = writer(edge, SPACING, tmp_path / name, origin_lps_mm=origin)
    with pytest.raises(ValueError, match=expected):
        load_mask(path, _study())


@pytest.mark.parametrize(
    ("spacing", "origin_shift_lps"),
    [(SPACING, (0.4, 0.0, 0.0)), ((2.5, 0.7, 0.81), (0.0, 0.0, 0.0)), ((2.0, 0.7, 0.8), (0, 0, 0))],
)
def test_mismatched_mask_grid_is_refused(
    tmp_path: Path, spacing: tuple, origin_shift_lps: tuple
) -> None:
    origin = np.asarray(ORIGIN) + origin_shift_lps
    path = write_nifti_mask(_mask(), spacing, tmp_path / "m.nii.gz", origin_lps_mm=origin)
    with pytest.raises(ValueError, match="does not match the image's"):
        load_mask(path, _study())


def test_rotated_mask_grid_is_refused(tmp_path: Path) -> None:
    path = write_nifti_mask(
        _mask(),
        SPACING,
        tmp_path / "m.nii.gz",
        origin_lps_mm=ORIGIN,
        direction=_rotation((0, 0, 1), 5) @ AXIAL_DIRECTION,
    )
    with pytest.raises(ValueError, match="does not match"):
        load_mask(path, _study())


def test_place_on_grid_checks_the_array_shape() -> None:
    grid = _study().grid
    with pytest.raises(ValueError, match="differs from its grid"):
        place_on_grid(np.zeros((2, 2, 2), np.uint8), grid, grid)


def test_label_maps_need_a_label_when_ambiguous(tmp_path: Path) -> None:
    labels = _mask().astype(np.int16) * 3
    labels[5, 0, 0] = 7
    path = tmp_path / "labels.nrrd"
    nrrd.write(
        str(path),
        np.asfortranarray(reverse_axes(labels)),
        nrrd_space_fields(_study().grid),
        index_order="F",
    )
    with pytest.raises(ValueError, match=r"several labels \[3, 7\]"):
        load_mask(path, _study())
    np.testing.assert_array_equal(load_mask(path, _study(), segment=3), _mask())
    with pytest.raises(ValueError, match="label 4 is not in"):
        load_mask(path, _study(), segment=4)
    with pytest.raises(ValueError, match="plain label map"):
        load_mask(path, _study(), segment="tumor")


def test_probability_and_empty_masks_are_refused(tmp_path: Path) -> None:
    affine = nifti_affine(_study().grid)
    nib.save(
        nib.Nifti1Image(reverse_axes(_mask() * 0.7).astype(np.float32), affine),
        tmp_path / "p.nii.gz",
    )
    with pytest.raises(ValueError, match="non-integer values"):
        load_mask(tmp_path / "p.nii.gz", _study())
    nib.save(nib.Nifti1Image(np.zeros(SHAPE[::-1], np.uint8), affine), tmp_path / "e.nii.gz")
    with pytest.raises(ValueError, match="has no voxel"):
        load_mask(tmp_path / "e.nii.gz", _study())


def test_nrrd_without_space_is_refused(tmp_path: Path) -> None:
    nrrd.write(
        str(tmp_path / "m.nrrd"), np.ones((3, 3, 3), np.uint8), {"spacings": [1.0, 1.0, 1.0]}
    )
    with pytest.raises(ValueError, match="'space' is missing"):
        load_mask(tmp_path / "m.nrrd", _study())


# --------------------------------------------------------------------------- 3D Slicer .seg.nrrd
def _write_seg(
    path: Path, layers: np.ndarray, grid: VoxelGrid, fields: dict[str, str], *, layered: bool = True
) -> Path:
    """A .seg.nrrd as 3D Slicer writes it: layers (L, z, y, x) -> file (L, x, y, z) + a list axis."""
    space = nrrd_space_fields(grid)
    if layered:
        data = np.transpose(layers, (0, 3, 2, 1))
        space["space directions"] = np.vstack([np.full(3, np.nan), space["space directions"]])  # type: ignore[list-item]
        space["kinds"] = ["list", "domain", "domain", "domain"]
    else:
        data = reverse_axes(layers[0])
    header = {"encoding": "gzip", **space, **fields}
    nrrd.write(str(path), np.asfortranarray(data), header, index_order="F")
    return path


def _two_segments() -> tuple[np.ndarray, np.ndarray]:
    tumor = _mask()
    node = np.zeros(SHAPE, np.uint8)
    node[4:6, 0:2, 5:8] = 1
    return tumor, node


@pytest.mark.parametrize("layered", [True, False])
def test_seg_nrrd_shared_layer_by_name(tmp_path: Path, layered: bool) -> None:
    tumor, node = _two_segments()
    fields = {
        "Segment0_ID": "Segment_1", "Segment0_Name": "tumor", "Segment0_Layer": "0", "Segment0_LabelValue": "1",
        "Segment1_ID": "Segment_2", "Segment1_Name": "lymph node", "Segment1_Layer": "0", "Segment1_LabelValue": "2",
    }  # fmt: skip
    path = _write_seg(
        tmp_path / "s.seg.nrrd", (tumor + 2 * node)[None], _study().grid, fields, layered=layered
    )
    np.testing.assert_array_equal(load_mask(path, _study(), segment="tumor"), tumor)
    np.testing.assert_array_equal(load_mask(path, _study(), segment="lymph node"), node)
    with pytest.raises(
        ValueError, match=r"2 segments, pick one by name \(\['tumor', 'lymph node'\]\)"
    ):
        load_mask(path, _study())
    with pytest.raises(ValueError, match=r"'cyst' is not a segment.*\['tumor', 'lymph node'\]"):
        load_mask(path, _study(), segment="cyst")


def test_seg_nrrd_overlapping_layers_cropped_and_oblique(tmp_path: Path) -> None:
    study = _study(OBLIQUE_FLIPPED)
    tumor, node = _two_segments()
    node[1:3, 2:4, 1:3] = 1  # overlaps the tumour: Slicer stores it in a second layer
    lo = (1, 0, 1)  # Slicer crops the labelmap to the segments' extent
    crop = (slice(1, 6), slice(0, 6), slice(1, 8))
    grid = VoxelGrid((5, 6, 7), SPACING, study.grid.index_to_lps(lo), OBLIQUE_FLIPPED)
    fields = {
        "Segment0_Name": "tumor", "Segment0_Layer": "0", "Segment0_LabelValue": "1",
        "Segment1_Name": "node", "Segment1_Layer": "1", "Segment1_LabelValue": "1",
        "Segmentation_ReferenceImageExtentOffset": "1 0 1",
    }  # fmt: skip
    layers = np.stack([tumor[crop], node[crop]])
    path = _write_seg(tmp_path / "s.seg.nrrd", layers, grid, fields)
    np.testing.assert_array_equal(load_mask(path, study, segment="tumor"), tumor)
    np.testing.assert_array_equal(load_mask(path, study, segment="node"), node)


def test_seg_nrrd_legacy_one_segment_per_layer(tmp_path: Path) -> None:
    tumor, node = _two_segments()
    fields = {"Segment0_Name": "tumor", "Segment1_Name": "node"}  # no Layer / LabelValue fields
    path = _write_seg(tmp_path / "old.seg.nrrd", np.stack([tumor, node]), _study().grid, fields)
    np.testing.assert_array_equal(load_mask(path, _study(), segment="node"), node)


def test_seg_nrrd_single_segment_needs_no_name(tmp_path: Path) -> None:
    fields = {"Segment0_Name": "tumor", "Segment0_LabelValue": "5"}
    path = _write_seg(
        tmp_path / "one.seg.nrrd", (_mask() * 5)[None], _study().grid, fields, layered=False
    )
    np.testing.assert_array_equal(load_mask(path, _study()), _mask())


def test_layered_nrrd_without_segment_fields_is_refused(tmp_path: Path) -> None:
    path = _write_seg(tmp_path / "x.nrrd", np.stack([_mask(), _mask()]), _study().grid, {})
    with pytest.raises(ValueError, match="2 layers but no SegmentN_Name"):
        load_mask(path, _study())


@pytest.mark.parametrize("kind", ["one stream", "two members", "scaled"])
def test_gzip_nifti_data_equals_nibabels(tmp_path: Path, kind: str) -> None:
    """The one-call ISA-L inflate gives nibabel's array; a multi-member or scaled file is read
    by nibabel itself (the values are the same either way)."""
    from dmfn.client.io.nifti import _inflated, _read_nifti

    labels = np.random.default_rng(3).integers(0, 4, (7, 5, 6)).astype(np.int16)
    img = nib.Nifti1Image(labels, np.diag([0.7, 0.7, 1.25, 1.0]))
    img.set_qform(img.affine, code=1)
    if kind == "scaled":
        img.header.set_slope_inter(2.0, 1.0)
    path = tmp_path / "m.nii.gz"
    nib.save(img, path)
    if kind == "two members":  # the same bytes as two gzip members
        import gzip

        raw = gzip.decompress(path.read_bytes())
        path.write_bytes(gzip.compress(raw[:500]) + gzip.compress(raw[500:]))
    loaded = nib.load(path)
    fast = _inflated(loaded, path)
    assert (fast is None) == (kind != "one stream")
    data, _ = _read_nifti(path)
    expected = np.asanyarray(nib.load(path).dataobj)
    np.testing.assert_array_equal(data, np.ascontiguousarray(expected.transpose(2, 1, 0)))
    assert data.dtype == expected.dtype


def test_gzip_nifti_reads_give_writable_arrays(tmp_path: Path) -> None:
    """The one-call inflate's bytes are read-only; the public readers still return arrays the
    caller may write, like every other reader."""
    from dmfn.client.io import load_mask, load_nifti_volume, write_nifti_volume

    study = _study()
    image = write_nifti_volume(study.hu, study.spacing_mm, tmp_path / "ct.nii.gz")
    mask = write_nifti_mask(_mask(), study.spacing_mm, tmp_path / "m.nii.gz")
    loaded = load_nifti_volume(image)
    assert loaded.hu.flags.writeable
    assert load_mask(mask, loaded).flags.writeable
