"""Reorientation to the axial layout: dmfn.contract.orientation.to_axial and every loader.

Axial layout (dmfn.contract.study.AXIAL_DIRECTION): axis 0 feet -> head, axis 1 anterior ->
posterior, axis 2 patient right -> left. Checked against SimpleITK's DICOMOrient(image, "LPS").
"""

from __future__ import annotations

import itertools
import logging
from pathlib import Path

import nibabel as nib
import nrrd
import numpy as np
import pytest

from dmfn.client.io import load_image, load_mask, write_dicom_series
from dmfn.contract.orientation import AXIS_ALIGNMENT_TOLERANCE_DEG, to_axial
from dmfn.contract.roi import mask_bbox
from dmfn.contract.study import AXIAL_DIRECTION, Study

sitk = pytest.importorskip("SimpleITK")

SHAPE = (5, 6, 7)
SPACING = (2.5, 0.8, 0.7)
ORIGIN = (-100.0, -120.0, 50.0)
#: LPS unit vector of each axial array axis (z, y, x).
AXIS_LPS = AXIAL_DIRECTION.T


def _phantom() -> tuple[np.ndarray, np.ndarray]:
    hu = np.random.default_rng(7).integers(-1000, 2000, SHAPE).astype(np.int16)
    mask = np.zeros(SHAPE, np.uint8)
    mask[1:4, 2:5, 1:4] = 1
    mask[2, 3, 5] = 1  # asymmetric: any flip or transpose shows
    return hu, mask


def _rotation(axis: tuple[float, float, float], degrees: float) -> np.ndarray:
    k = np.asarray(axis, float) / np.linalg.norm(axis)
    cross = np.array([[0, -k[2], k[1]], [k[2], 0, -k[0]], [-k[1], k[0], 0]])
    a = np.radians(degrees)
    return np.eye(3) + np.sin(a) * cross + (1 - np.cos(a)) * cross @ cross


def _relayout(
    array: np.ndarray, axes: tuple[int, int, int], flips: tuple[bool, bool, bool]
) -> tuple[np.ndarray, tuple[float, ...], tuple[float, ...], np.ndarray]:
    """The axial phantom stored with array axis m = axial axis ``axes[m]``, reversed where
    ``flips[m]``: (array, spacing_mm, origin_lps_mm, direction) of that storage."""
    out = np.transpose(array, axes)
    for m, flip in enumerate(flips):
        if flip:
            out = np.flip(out, axis=m)
    spacing = tuple(SPACING[a] for a in axes)
    direction = np.column_stack(
        [AXIS_LPS[a] * (-1.0 if f else 1.0) for a, f in zip(axes, flips, strict=True)]
    )
    first = np.zeros(3)  # axial index of the stored voxel [0, 0, 0]
    for a, f in zip(axes, flips, strict=True):
        first[a] = SHAPE[a] - 1 if f else 0
    origin = np.asarray(ORIGIN) + AXIAL_DIRECTION @ (first * SPACING)
    return np.ascontiguousarray(out), spacing, tuple(origin), direction


SIGNED_PERMUTATIONS = [
    (axes, flips)
    for axes in itertools.permutations(range(3))
    for flips in itertools.product((False, True), repeat=3)
]


# --------------------------------------------------------------------------- to_axial
@pytest.mark.parametrize(("axes", "flips"), SIGNED_PERMUTATIONS)
def test_every_axis_aligned_layout_becomes_axial(axes: tuple, flips: tuple) -> None:
    hu, mask = _phantom()
    data, spacing, origin, direction = _relayout(hu, axes, flips)
    stored_mask = _relayout(mask, axes, flips)[0]
    lo, hi = mask_bbox(stored_mask)
    study = Study(data, spacing, origin, direction, mask=stored_mask, bbox=(*lo, *hi), image_id="p")
    axial = to_axial(study)
    np.testing.assert_array_equal(axial.hu, hu)
    np.testing.assert_array_equal(axial.mask, mask)
    lo, hi = mask_bbox(mask)
    assert axial.bbox == (*lo, *hi)
    np.testing.assert_allclose(axial.spacing_mm, SPACING)
    np.testing.assert_allclose(axial.origin_lps_mm, ORIGIN, atol=1e-9)
    np.testing.assert_array_equal(axial.direction, AXIAL_DIRECTION)
    assert axial.image_id == "p" and axial.hu.flags.c_contiguous
    # SimpleITK's DICOMOrient to "LPS" (ITK identity direction = our axial) agrees
    image = sitk.GetImageFromArray(data)
    image.SetSpacing(spacing[::-1])
    image.SetOrigin(origin)
    image.SetDirection(direction[:, ::-1].ravel().tolist())
    reference = sitk.DICOMOrient(image, "LPS")
    np.testing.assert_array_equal(sitk.GetArrayFromImage(reference), axial.hu)
    np.testing.assert_allclose(reference.GetOrigin(), axial.origin_lps_mm, atol=1e-9)
    np.testing.assert_allclose(reference.GetSpacing(), axial.spacing_mm[::-1])


def test_every_voxel_keeps_its_patient_position() -> None:
    hu, _ = _phantom()
    data, spacing, origin, direction = _relayout(hu, (2, 0, 1), (True, False, True))
    study = Study(data, spacing, origin, direction)
    axial = to_axial(study)
    for index in itertools.product(*[(0, n - 1) for n in data.shape]):
        point = study.grid.index_to_lps(index)
        new = np.rint(axial.grid.lps_to_index(point)).astype(int)
        np.testing.assert_allclose(axial.grid.index_to_lps(new), point, atol=1e-9)
        assert axial.hu[tuple(new)] == data[index]


def test_an_axial_study_is_returned_as_it_is() -> None:
    hu, mask = _phantom()
    study = Study(hu, SPACING, ORIGIN, mask=mask)
    assert to_axial(study) is study


def test_a_slightly_rotated_study_is_permuted_and_keeps_its_true_direction(
    caplog: pytest.LogCaptureFixture,
) -> None:
    hu, _ = _phantom()
    data, spacing, origin, direction = _relayout(hu, (0, 2, 1), (False, True, False))
    tilted = _rotation((1, 1, 0), 2.0) @ direction
    with caplog.at_level(logging.WARNING, logger="dmfn.contract.orientation"):
        axial = to_axial(Study(data, spacing, origin, tilted))
    assert "2.00 degrees" in caplog.text
    np.testing.assert_array_equal(axial.hu, hu)
    np.testing.assert_allclose(axial.spacing_mm, SPACING)
    expected = _rotation((1, 1, 0), 2.0) @ AXIAL_DIRECTION
    np.testing.assert_allclose(axial.direction, expected, atol=1e-12)


@pytest.mark.parametrize("degrees", [AXIS_ALIGNMENT_TOLERANCE_DEG + 0.5, 20.0, 45.0])
def test_an_oblique_study_is_refused(degrees: float) -> None:
    hu, _ = _phantom()
    oblique = _rotation((0.2, 1, 0.3), degrees) @ AXIAL_DIRECTION
    with pytest.raises(ValueError, match=r"argument 'study': the volume is oblique.*resample"):
        to_axial(Study(hu, SPACING, ORIGIN, oblique))
    with pytest.raises(ValueError, match="argument 'study': must be a dmfn Study"):
        to_axial(hu)  # type: ignore[arg-type]


# --------------------------------------------------------------------------- loaders
def _write_ras_nifti(array: np.ndarray, path: Path) -> Path:
    """The phantom as most NIfTI tools write it: file axes (i, j, k) toward patient right,
    anterior, superior, affine diag(0.7, 0.8, 2.5) in RAS (written here without dmfn)."""
    data = np.ascontiguousarray(np.transpose(array, (2, 1, 0))[::-1, ::-1, :])
    nx, ny = SHAPE[2], SHAPE[1]
    corner_lps = np.asarray(ORIGIN) + np.array([(nx - 1) * SPACING[2], (ny - 1) * SPACING[1], 0])
    affine = np.diag([SPACING[2], SPACING[1], SPACING[0], 1.0])
    affine[:3, 3] = corner_lps * [-1.0, -1.0, 1.0]  # LPS -> RAS
    img = nib.Nifti1Image(data, affine)
    img.set_qform(affine, code=1)
    img.set_sform(affine, code=1)
    nib.save(img, path)
    return path


def _write_permuted_nrrd(array: np.ndarray, path: Path) -> Path:
    """The phantom in an RAS-space NRRD whose file axes are (z reversed, x, y reversed)."""
    data = np.transpose(array[::-1, ::-1, :], (0, 2, 1))  # file index (a0, a1, a2)
    nz, ny = SHAPE[0], SHAPE[1]
    corner_lps = np.asarray(ORIGIN) + np.array([0, (ny - 1) * SPACING[1], (nz - 1) * SPACING[0]])
    header = {
        "space": "right-anterior-superior",
        "space directions": np.array(
            [[0.0, 0.0, -SPACING[0]], [-SPACING[2], 0.0, 0.0], [0.0, SPACING[1], 0.0]]
        ),  # rows: file axes in RAS
        "space origin": corner_lps * [-1.0, -1.0, 1.0],
        "kinds": ["domain"] * 3,
        "encoding": "gzip",
    }
    nrrd.write(str(path), np.asfortranarray(data), header, index_order="F")
    return path


def _write_sagittal_dicom(hu: np.ndarray, folder: Path) -> Path:
    """The phantom as a sagittal series: slices toward the patient's right, rows head -> feet,
    columns anterior -> posterior (ImageOrientationPatient 0\\1\\0\\0\\0\\-1)."""
    data, spacing, origin, direction = _relayout(hu, (2, 0, 1), (True, True, False))
    np.testing.assert_allclose(direction[:, 2], [0, 1, 0])  # row cosines: posterior
    np.testing.assert_allclose(direction[:, 1], [0, 0, -1])  # column cosines: inferior
    write_dicom_series(data, spacing, folder, origin_lps_mm=origin, direction=direction)
    return folder


def test_the_same_phantom_loads_identically_from_every_format(tmp_path: Path) -> None:
    hu, mask = _phantom()
    axial_dicom = tmp_path / "axial"
    write_dicom_series(hu, SPACING, axial_dicom, origin_lps_mm=ORIGIN)
    files = {
        "axial LPS DICOM": axial_dicom,
        "sagittal DICOM": _write_sagittal_dicom(hu, tmp_path / "sagittal"),
        "RAS NIfTI": _write_ras_nifti(hu, tmp_path / "ct.nii.gz"),
        "permuted RAS NRRD": _write_permuted_nrrd(hu, tmp_path / "ct.nrrd"),
    }
    assert np.allclose(nib.load(files["RAS NIfTI"]).affine[:3, :3], np.diag([0.7, 0.8, 2.5]))
    masks = [
        _write_ras_nifti(mask, tmp_path / "mask.nii.gz"),
        _write_permuted_nrrd(mask, tmp_path / "mask.nrrd"),
    ]
    for name, path in files.items():
        study = load_image(path)
        np.testing.assert_array_equal(study.hu, hu, err_msg=name)
        np.testing.assert_allclose(study.spacing_mm, SPACING, rtol=1e-6, err_msg=name)
        np.testing.assert_allclose(study.origin_lps_mm, ORIGIN, atol=1e-4, err_msg=name)
        np.testing.assert_allclose(study.direction, AXIAL_DIRECTION, atol=1e-6, err_msg=name)
        for mask_path in masks:  # masks in any layout map onto the loaded study's grid
            np.testing.assert_array_equal(load_mask(mask_path, like=study), mask, err_msg=name)


def test_oblique_files_are_refused_by_the_loaders(tmp_path: Path) -> None:
    hu, _ = _phantom()
    oblique = _rotation((1, 0, 0), 15) @ AXIAL_DIRECTION
    write_dicom_series(hu, SPACING, tmp_path / "dicom", origin_lps_mm=ORIGIN, direction=oblique)
    with pytest.raises(ValueError, match=r"series in .*dicom: the volume is oblique"):
        load_image(tmp_path / "dicom")
    image = sitk.GetImageFromArray(hu)
    image.SetSpacing(SPACING[::-1])
    image.SetDirection(oblique[:, ::-1].ravel().tolist())
    for suffix in (".nii.gz", ".nrrd"):
        sitk.WriteImage(image, str(tmp_path / f"ct{suffix}"))
        with pytest.raises(ValueError, match=rf"file .*ct{suffix}: the volume is oblique"):
            load_image(tmp_path / f"ct{suffix}")


def test_load_image_dispatches_and_names_bad_paths(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match=r"argument 'path'.*neither a DICOM series folder"):
        load_image(tmp_path / "absent.nii.gz")
    (tmp_path / "ct.mha").write_bytes(b"")
    with pytest.raises(ValueError, match=r"argument 'path'.*must end with"):
        load_image(tmp_path / "ct.mha")
