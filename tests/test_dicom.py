"""DICOM: the CT series writer and reader, checked against pydicom's real CT file and SimpleITK."""

from __future__ import annotations

import pickle
import re
import shutil
from pathlib import Path

import numpy as np
import pydicom
import pytest
from pydicom.data import get_testdata_file
from pydicom.encaps import encapsulate
from pydicom.pixels import apply_modality_lut
from pydicom.pixels.decoders.base import get_decoder
from pydicom.uid import JPEG2000MCLossless, generate_uid

from dmfn.client.io import (
    ArgumentError,
    DicomError,
    load_dicom_series,
    read_dicom_series,
    write_dicom_series,
)
from dmfn.contract.orientation import direction_from_iop, iop_from_direction, slice_normal
from dmfn.contract.study import AXIAL_DIRECTION

SPACING = (2.5, 0.7, 0.8)
ORIGIN = (-10.0, 20.0, -30.0)


def _hu(shape: tuple[int, int, int] = (5, 6, 7), seed: int = 0) -> np.ndarray:
    return np.random.default_rng(seed).integers(-1000, 2000, shape).astype(np.int16)


def _rotation(axis: tuple[float, float, float], degrees: float) -> np.ndarray:
    """Right-handed rotation matrix about ``axis`` (Rodrigues)."""
    k = np.asarray(axis, float) / np.linalg.norm(axis)
    cross = np.array([[0, -k[2], k[1]], [k[2], 0, -k[0]], [-k[1], k[0], 0]])
    a = np.radians(degrees)
    return np.eye(3) + np.sin(a) * cross + (1 - np.cos(a)) * cross @ cross


def _write(folder: Path, hu: np.ndarray | None = None, **kwargs: object) -> list[Path]:
    kwargs.setdefault("origin_lps_mm", ORIGIN)
    return write_dicom_series(_hu() if hu is None else hu, SPACING, folder, **kwargs)  # type: ignore[arg-type]


def _edit(path: Path, **attributes: object) -> None:
    ds = pydicom.dcmread(path)
    for keyword, value in attributes.items():
        setattr(ds, keyword, value)
    ds.save_as(path, enforce_file_format=True)


# --------------------------------------------------------------------------- real file
def test_pydicom_ct_small_loads_as_one_slice(tmp_path: Path) -> None:
    source = Path(get_testdata_file("CT_small.dcm"))  # type: ignore[arg-type]
    shutil.copy(source, tmp_path / source.name)
    study = load_dicom_series(tmp_path)
    ds = pydicom.dcmread(source)
    assert study.shape == (1, 128, 128) and study.hu.dtype == np.int16
    np.testing.assert_array_equal(study.hu[0], apply_modality_lut(ds.pixel_array, ds))
    # One slice has no position step: the z spacing is SliceThickness (5 mm), only then.
    np.testing.assert_allclose(study.spacing_mm, (5.0, 0.661468, 0.661468))
    np.testing.assert_allclose(study.origin_lps_mm, [float(v) for v in ds.ImagePositionPatient])
    np.testing.assert_allclose(study.direction, AXIAL_DIRECTION)
    assert study.image_id == ds.SeriesInstanceUID and study.patient_id == ds.PatientID


def test_one_slice_without_slice_thickness_is_refused(tmp_path: Path) -> None:
    path = tmp_path / "ct.dcm"
    shutil.copy(get_testdata_file("CT_small.dcm"), path)  # type: ignore[arg-type]
    ds = pydicom.dcmread(path)
    del ds.SliceThickness
    ds.save_as(path)
    with pytest.raises(DicomError, match=r"ct.dcm.*SliceThickness"):
        load_dicom_series(tmp_path)


# --------------------------------------------------------------------------- round trips
def test_round_trip_with_shuffled_names(tmp_path: Path) -> None:
    hu = _hu()
    paths = _write(tmp_path, hu, shuffle_names=True, uid_entropy="case-1", patient_id="P7")
    assert [p.name for p in paths] != sorted(p.name for p in paths)  # names do not follow z
    study = load_dicom_series(tmp_path)
    np.testing.assert_array_equal(study.hu, hu)
    assert study.hu.dtype == np.int16
    np.testing.assert_allclose(study.spacing_mm, SPACING, rtol=1e-9)
    np.testing.assert_allclose(study.origin_lps_mm, ORIGIN)
    np.testing.assert_allclose(study.direction, AXIAL_DIRECTION)
    assert study.patient_id == "P7"


def test_written_files_are_valid_ct_for_pydicom_and_gdcm(tmp_path: Path) -> None:
    sitk = pytest.importorskip("SimpleITK")
    hu = _hu((4, 6, 7))
    direction = _rotation((1, 2, 3), 25) @ AXIAL_DIRECTION
    paths = _write(tmp_path, hu, direction=direction)
    ds = pydicom.dcmread(paths[0])  # raises without the Part-10 preamble and meta
    assert ds.file_meta.TransferSyntaxUID == pydicom.uid.ExplicitVRLittleEndian
    assert ds.SOPClassUID == pydicom.uid.CTImageStorage and ds.Modality == "CT"
    assert ds.file_meta.MediaStorageSOPInstanceUID == ds.SOPInstanceUID
    assert [float(v) for v in ds.PixelSpacing] == [0.7, 0.8] and float(ds.SliceThickness) == 2.5
    assert [int(pydicom.dcmread(p).InstanceNumber) for p in paths] == [1, 2, 3, 4]
    reader = sitk.ImageSeriesReader()
    reader.SetFileNames(reader.GetGDCMSeriesFileNames(str(tmp_path)))
    image = reader.Execute()
    np.testing.assert_array_equal(sitk.GetArrayFromImage(image), hu)
    np.testing.assert_allclose(image.GetSpacing(), SPACING[::-1], rtol=1e-6)
    np.testing.assert_allclose(image.GetOrigin(), ORIGIN, atol=1e-5)
    # ITK direction: row-major 3x3 whose columns are the (x, y, z) axes: ours reversed.
    itk_direction = np.asarray(image.GetDirection()).reshape(3, 3)
    np.testing.assert_allclose(itk_direction, direction[:, ::-1], atol=1e-6)


def test_slightly_rotated_orientation_round_trip(tmp_path: Path) -> None:
    hu = _hu()
    direction = _rotation((0.3, -1, 0.5), 2) @ AXIAL_DIRECTION  # within the 3 degree tolerance
    _write(tmp_path, hu, direction=direction)
    study = load_dicom_series(tmp_path)
    np.testing.assert_array_equal(study.hu, hu)
    np.testing.assert_allclose(study.direction, direction, atol=1e-6)
    np.testing.assert_allclose(study.origin_lps_mm, ORIGIN, atol=1e-5)
    np.testing.assert_allclose(study.spacing_mm, SPACING, rtol=1e-6)


def test_oblique_orientation_is_refused(tmp_path: Path) -> None:
    _write(tmp_path, direction=_rotation((0.3, -1, 0.5), 35) @ AXIAL_DIRECTION)
    with pytest.raises(DicomError, match=r"is oblique .*resample it onto an axial grid"):
        load_dicom_series(tmp_path)


def test_left_handed_stack_comes_back_sorted_along_the_normal(tmp_path: Path) -> None:
    hu = _hu()
    head_to_feet = AXIAL_DIRECTION * np.array([-1.0, 1.0, 1.0])  # z column points inferior
    _write(tmp_path, hu, direction=head_to_feet)
    study = load_dicom_series(tmp_path)
    np.testing.assert_array_equal(study.hu, hu[::-1])
    np.testing.assert_allclose(study.direction, AXIAL_DIRECTION)
    top = np.asarray(ORIGIN) - [0, 0, (hu.shape[0] - 1) * SPACING[0]]
    np.testing.assert_allclose(study.origin_lps_mm, top)
    # the same voxel is at the same patient position either way
    k, j, i = 1, 2, 3
    written = np.asarray(ORIGIN) + head_to_feet @ (np.asarray(SPACING) * [k, j, i])
    read = study.grid.index_to_lps([hu.shape[0] - 1 - k, j, i])
    np.testing.assert_allclose(read, written, atol=1e-9)


@pytest.mark.parametrize(
    ("slope", "intercept", "dtype"),
    [(1.0, -1024.0, np.int16), (2.0, -1000.0, np.int16), (0.5, 0.25, np.float32)],
)
def test_rescale_slope_and_intercept(
    tmp_path: Path, slope: float, intercept: float, dtype: type
) -> None:
    raw = np.random.default_rng(3).integers(-2000, 2000, (3, 4, 5))
    hu = raw * slope + intercept  # exactly representable with this rescale
    _write(tmp_path, hu, rescale_slope=slope, rescale_intercept=intercept)
    ds = pydicom.dcmread(sorted(tmp_path.iterdir())[0])
    assert float(ds.RescaleSlope) == slope and float(ds.RescaleIntercept) == intercept
    study = load_dicom_series(tmp_path)
    assert study.hu.dtype == dtype
    np.testing.assert_array_equal(study.hu, hu)


def test_per_slice_rescale_is_applied_per_slice(tmp_path: Path) -> None:
    hu = _hu((3, 4, 5))
    paths = _write(tmp_path, hu)
    ds = pydicom.dcmread(paths[1])
    raw = ds.pixel_array.astype(np.int32)
    ds.RescaleIntercept = "-1000"  # same HU with another intercept: shift the stored values
    ds.PixelData = (raw - 24).astype("<i2").tobytes()
    ds.save_as(paths[1])
    np.testing.assert_array_equal(load_dicom_series(tmp_path).hu, hu)


def test_writer_uids_are_reproducible_with_entropy(tmp_path: Path) -> None:
    first = _write(tmp_path / "a", uid_entropy="seed-42", shuffle_names=True)
    second = _write(tmp_path / "b", uid_entropy="seed-42", shuffle_names=True)
    other = _write(tmp_path / "c")
    assert [p.name for p in first] == [p.name for p in second]
    assert all(a.read_bytes() == b.read_bytes() for a, b in zip(first, second, strict=True))
    uids = [pydicom.dcmread(p[0]).SeriesInstanceUID for p in (first, other)]
    assert uids[0] != uids[1]
    series_uid, study_uid = generate_uid(), generate_uid()
    paths = _write(tmp_path / "d", series_uid=series_uid, study_uid=study_uid)
    ds = pydicom.dcmread(paths[0])
    assert (ds.SeriesInstanceUID, ds.StudyInstanceUID) == (series_uid, study_uid)


def test_writer_records_sex_age_contrast_and_date(tmp_path: Path) -> None:
    paths = _write(
        tmp_path / "a",
        patient_sex="F",
        patient_age_years=54.9,
        contrast_agent="IOHEXOL",
        study_date="20240131",
    )
    ds = pydicom.dcmread(paths[0], stop_before_pixels=True)
    assert (ds.PatientSex, ds.PatientAge, ds.ContrastBolusAgent) == ("F", "054Y", "IOHEXOL")
    assert ds.StudyDate == ds.SeriesDate == "20240131"
    plain = pydicom.dcmread(_write(tmp_path / "b")[0], stop_before_pixels=True)
    assert plain.PatientSex == "" and plain.StudyDate == ""
    assert "PatientAge" not in plain and "ContrastBolusAgent" not in plain


def test_read_dicom_series_gives_the_series_reference(tmp_path: Path) -> None:
    """Headers without pixel data in file order (along the normal), SOP UID -> position."""
    left_handed = np.array([[0.0, 0.0, 1.0], [0.0, 1.0, 0.0], [-1.0, 0.0, 0.0]])
    paths = _write(tmp_path, _hu((4, 6, 7)), direction=left_handed, uid_entropy="ref")
    study, reference = read_dicom_series(tmp_path)
    np.testing.assert_array_equal(study.hu, load_dicom_series(tmp_path).hu)
    first = pydicom.dcmread(paths[0], stop_before_pixels=True)
    assert reference.series_uid == first.SeriesInstanceUID == study.image_id
    assert reference.study_uid == first.StudyInstanceUID
    assert reference.frame_of_reference_uid == first.FrameOfReferenceUID
    assert len(reference.headers) == len(reference.sop_positions) == 4
    assert all("PixelData" not in ds for ds in reference.headers)
    z = [float(ds.ImagePositionPatient[2]) for ds in reference.headers]
    assert z == sorted(z)  # sorted along row x column (+z), the reverse of the written order
    for ds in reference.headers:
        expected = tuple(float(v) for v in ds.ImagePositionPatient)
        assert reference.sop_positions[ds.SOPInstanceUID] == expected


def test_writer_gives_each_series_of_a_study_its_own_uids(tmp_path: Path) -> None:
    """Two series of one study from one entropy string: distinct series and SOP instance UIDs."""
    study_uid = generate_uid()
    first, second = (
        _write(tmp_path / str(n), uid_entropy="case", study_uid=study_uid, series_number=n)
        for n in (1, 2)
    )
    headers = [pydicom.dcmread(p, stop_before_pixels=True) for p in (*first, *second)]
    assert len({ds.SeriesInstanceUID for ds in headers}) == 2
    assert len({ds.SOPInstanceUID for ds in headers}) == len(headers)
    assert {p.name for p in first}.isdisjoint(p.name for p in second)


@pytest.mark.parametrize(
    ("kwargs", "argument"),
    [
        ({"hu": np.full((2, 3, 4), 40000.0)}, "'hu'.*int16"),
        ({"hu": np.zeros((3, 4))}, "'hu'"),
        ({"spacing_mm": (0, 1, 1)}, "'spacing_mm'"),
        ({"direction": np.ones((3, 3))}, "'direction'"),
        ({"rescale_slope": 0.0}, "'rescale_slope'"),
        ({"series_uid": "not a uid"}, "'series_uid'"),
        ({"patient_sex": "male"}, "'patient_sex'"),
        ({"patient_age_years": -1}, "'patient_age_years'"),
        ({"study_date": "2024-01-31"}, "'study_date'"),
    ],
)
def test_writer_refuses_bad_arguments(tmp_path: Path, kwargs: dict, argument: str) -> None:
    args = {"hu": _hu((2, 3, 4)), "spacing_mm": SPACING, **kwargs}
    with pytest.raises(ValueError, match=argument):
        write_dicom_series(args.pop("hu"), args.pop("spacing_mm"), tmp_path, **args)


# --------------------------------------------------------------------------- folder problems
def test_empty_or_missing_folder(tmp_path: Path) -> None:
    with pytest.raises(DicomError, match=r"no DICOM files"):
        load_dicom_series(tmp_path)
    (tmp_path / "notes.txt").write_text("not an image")
    with pytest.raises(DicomError, match=r"no DICOM files"):
        load_dicom_series(tmp_path)
    with pytest.raises(DicomError, match=r"not an existing directory"):
        load_dicom_series(tmp_path / "absent")


def test_two_series_need_a_choice(tmp_path: Path) -> None:
    hu_a, hu_b = _hu(seed=1), _hu((3, 6, 7), seed=2)
    uid_a, uid_b = generate_uid(), generate_uid()
    _write(tmp_path, hu_a, series_uid=uid_a, description="soft tissue")
    _write(tmp_path / "sub", hu_b, series_uid=uid_b, description="lung")
    with pytest.raises(DicomError, match=r"2 CT series") as info:
        load_dicom_series(tmp_path)
    message = str(info.value)
    assert uid_a in message and uid_b in message and "argument 'series_uid': required" in message
    assert isinstance(info.value, ArgumentError) and info.value.argument == "series_uid"
    assert info.value.named("--series-uid").startswith("--series-uid: required: ")
    copy = pickle.loads(pickle.dumps(info.value))  # crosses process boundaries intact
    assert type(copy) is type(info.value) and str(copy) == message
    assert "'soft tissue', 5 files" in message and "'lung', 3 files" in message
    np.testing.assert_array_equal(load_dicom_series(tmp_path, series_uid=uid_a).hu, hu_a)
    np.testing.assert_array_equal(load_dicom_series(tmp_path, series_uid=uid_b).hu, hu_b)
    with pytest.raises(DicomError, match=r"'series_uid'.*1.2.3.4 is not in"):
        load_dicom_series(tmp_path, series_uid="1.2.3.4")


def test_non_ct_modality_is_refused(tmp_path: Path) -> None:
    for path in _write(tmp_path / "mr", description="T1"):
        _edit(path, Modality="MR")
    with pytest.raises(DicomError, match=r"no CT series.*MR, 'T1'"):
        load_dicom_series(tmp_path / "mr")
    uid = pydicom.dcmread(next((tmp_path / "mr").iterdir())).SeriesInstanceUID
    with pytest.raises(DicomError, match=r"modality MR; only CT"):
        load_dicom_series(tmp_path, series_uid=uid)
    hu = _hu(seed=5)
    _write(tmp_path / "ct", hu)  # one CT series beside the MR one: that one is loaded
    np.testing.assert_array_equal(load_dicom_series(tmp_path).hu, hu)


def test_missing_slice_is_reported(tmp_path: Path) -> None:
    paths = _write(tmp_path)
    paths[2].unlink()
    with pytest.raises(DicomError, match=r"1 missing slice\(s\): step of 5 mm"):
        load_dicom_series(tmp_path)


def test_uneven_spacing_is_reported(tmp_path: Path) -> None:
    paths = _write(tmp_path)
    position = [float(v) for v in pydicom.dcmread(paths[2]).ImagePositionPatient]
    _edit(paths[2], ImagePositionPatient=[position[0], position[1], position[2] + 0.6])
    with pytest.raises(DicomError, match=r"uneven slice spacing"):
        load_dicom_series(tmp_path)


def test_duplicate_slice_is_reported(tmp_path: Path) -> None:
    paths = _write(tmp_path)
    copy = tmp_path / "copy.dcm"
    shutil.copy(paths[1], copy)
    _edit(copy, SOPInstanceUID=generate_uid())
    with pytest.raises(DicomError, match=r"same position"):
        load_dicom_series(tmp_path)


def test_gantry_tilt_is_refused(tmp_path: Path) -> None:
    paths = _write(tmp_path)
    shift = SPACING[0] * np.tan(np.radians(12))
    for k, path in enumerate(paths):
        x, y, z = (float(v) for v in pydicom.dcmread(path).ImagePositionPatient)
        _edit(path, ImagePositionPatient=[x, y + k * shift, z])
    with pytest.raises(DicomError, match=r"gantry tilt of 12.00 degrees"):
        load_dicom_series(tmp_path)


def test_mixed_orientations_are_refused(tmp_path: Path) -> None:
    paths = _write(tmp_path)
    _edit(
        paths[3],
        ImageOrientationPatient=iop_from_direction(_rotation((0, 0, 1), 10) @ AXIAL_DIRECTION),
    )
    with pytest.raises(DicomError, match=rf"mixed orientations.*{paths[3].name}"):
        load_dicom_series(tmp_path)


def test_truncated_file_is_reported_by_name(tmp_path: Path) -> None:
    paths = _write(tmp_path)
    data = paths[2].read_bytes()
    paths[2].write_bytes(data[: len(data) - 20])  # pixel data cut short
    with pytest.raises(DicomError, match=paths[2].name):
        load_dicom_series(tmp_path)
    paths[2].write_bytes(data[:300])  # header cut short
    with pytest.raises(DicomError, match=rf"{paths[2].name}: unreadable"):
        load_dicom_series(tmp_path)


def test_garbage_dcm_file_is_reported_by_name(tmp_path: Path) -> None:
    _write(tmp_path)
    (tmp_path / "broken.dcm").write_bytes(b"\x00\x01 this is not DICOM at all" * 3)
    with pytest.raises(DicomError, match=r"broken.dcm"):
        load_dicom_series(tmp_path)


def test_compressed_pixels_without_decoder_name_the_package(tmp_path: Path) -> None:
    """JPEG 2000 Part 2 multi-component (lossless) is a compressed syntax no pydicom plugin
    decodes (the installed JPEG 2000 decoders read Part 1 only): the error names the file,
    the syntax and what to install."""
    syntax = JPEG2000MCLossless
    with pytest.raises(NotImplementedError):
        get_decoder(syntax)
    paths = _write(tmp_path, _hu((1, 6, 7)))
    ds = pydicom.dcmread(paths[0])
    ds.file_meta.TransferSyntaxUID = syntax
    ds.PixelData = encapsulate([b"\xff\xd8 not really compressed \xff\xd9"])
    ds["PixelData"].VR = "OB"
    ds["PixelData"].is_undefined_length = True
    ds.save_as(paths[0], enforce_file_format=True)
    name = re.escape(syntax.name)
    with pytest.raises(DicomError, match=rf"{paths[0].name}.*{name}.*pip install pylibjpeg"):
        load_dicom_series(tmp_path)


# --------------------------------------------------------------------------- orientation helpers
def test_iop_conversions_reverse_the_axis_order() -> None:
    assert iop_from_direction(AXIAL_DIRECTION) == [1, 0, 0, 0, 1, 0]
    np.testing.assert_array_equal(direction_from_iop([1, 0, 0, 0, 1, 0]), AXIAL_DIRECTION)
    coronal = [1, 0, 0, 0, 0, -1]  # rows go left, columns go down (inferior)
    np.testing.assert_allclose(slice_normal(coronal), [0, 1, 0])
    direction = direction_from_iop(coronal)
    np.testing.assert_allclose(direction[:, 2], [1, 0, 0])
    np.testing.assert_allclose(direction[:, 1], [0, 0, -1])
    np.testing.assert_allclose(iop_from_direction(direction), coronal)
