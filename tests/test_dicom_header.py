"""The fast DICOM header reader and the native pixel read against pydicom, file kind by file kind.

:func:`~dmfn.client.io.dicom_header.scan_header` must give the same record as pydicom
(:meth:`SliceHeader.from_dataset`) wherever it reads a file, and decline (None) wherever it does
not; the native pixel read of :mod:`dmfn.client.io.dicom` must equal pydicom's ``pixel_array``
after ``apply_modality_lut``, bit for bit.
"""

from __future__ import annotations

import struct
from pathlib import Path

import numpy as np
import pydicom
import pytest
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.pixels import apply_modality_lut
from pydicom.sequence import Sequence
from pydicom.uid import (
    JPEG2000,
    CTImageStorage,
    ExplicitVRBigEndian,
    ExplicitVRLittleEndian,
    ImplicitVRLittleEndian,
    JPEG2000Lossless,
    RLELossless,
    generate_uid,
)

from dmfn.client.io import dicom as dicom_module
from dmfn.client.io import j2k, load_dicom_series
from dmfn.client.io.dicom_header import HEAD_BYTES, SliceHeader, scan_header


def _slice(
    rows: int = 6,
    columns: int = 5,
    *,
    bits_stored: int = 16,
    signed: bool = True,
    slope: str | None = "1",
    intercept: str | None = "-1024",
    z: float = 0.0,
    seed: int = 0,
) -> Dataset:
    """A small CT slice whose stored values fill every allocated bit (also the unused ones)."""
    ds = Dataset()
    ds.file_meta = FileMetaDataset()
    ds.file_meta.MediaStorageSOPClassUID = CTImageStorage
    ds.file_meta.MediaStorageSOPInstanceUID = generate_uid()
    ds.file_meta.TransferSyntaxUID = ExplicitVRLittleEndian
    ds.SpecificCharacterSet = "ISO_IR 100"
    ds.SOPClassUID = CTImageStorage
    ds.SOPInstanceUID = ds.file_meta.MediaStorageSOPInstanceUID
    ds.Modality = "CT"
    ds.SeriesDescription = "  chest  "
    ds.PatientID = "P 1 "
    ds.SliceThickness = "1.25"
    ds.StudyInstanceUID = "1.2.3"
    ds.SeriesInstanceUID = "1.2.3.4"
    ds.FrameOfReferenceUID = "1.2.3.5"
    ds.ImagePositionPatient = [" -12.5", "3.0e1", f"{z}"]
    ds.ImageOrientationPatient = [1, 0, 0, 0, 1, 0]
    ds.PixelSpacing = ["0.703125", "0.703125"]
    ds.SamplesPerPixel = 1
    ds.PhotometricInterpretation = "MONOCHROME2"
    ds.Rows, ds.Columns = rows, columns
    ds.BitsAllocated, ds.BitsStored, ds.HighBit = 16, bits_stored, bits_stored - 1
    ds.PixelRepresentation = int(signed)
    if slope is not None:
        ds.RescaleSlope = slope
    if intercept is not None:
        ds.RescaleIntercept = intercept
    values = np.random.default_rng(seed).integers(0, 2**16, (rows, columns), dtype=np.uint16)
    ds.PixelData = values.astype("<u2").tobytes()
    return ds


def _save(ds: Dataset, path: Path, *, implicit: bool = False) -> Path:
    if implicit:
        ds.file_meta.TransferSyntaxUID = ImplicitVRLittleEndian
    ds.save_as(path, implicit_vr=implicit, little_endian=True, enforce_file_format=True)
    return path


def _pydicom_record(path: Path) -> SliceHeader:
    return SliceHeader.from_dataset(path, pydicom.dcmread(path, stop_before_pixels=True))


def _assert_same_record(path: Path) -> SliceHeader:
    fast = scan_header(path)
    assert fast is not None, f"{path.name}: the fast reader declined"
    slow = _pydicom_record(path)
    assert fast.values == slow.values
    assert (fast.transfer_syntax, fast.media_sop_class) == (
        slow.transfer_syntax,
        slow.media_sop_class,
    )
    assert fast.has_pixel_data is True
    return fast


@pytest.mark.parametrize("implicit", [False, True], ids=["explicit", "implicit"])
def test_scan_equals_pydicom_on_plain_and_sequence_headers(tmp_path: Path, implicit: bool) -> None:
    """Values, padding, multi-valued DS; sequences of defined and undefined length (nested,
    with undefined-length items) before the kept tags are skipped exactly."""
    ds = _slice()
    inner = Dataset()
    inner.CodeValue, inner.CodingSchemeDesignator, inner.CodeMeaning = "1", "DCM", "x"
    item = Dataset()
    item.ReferencedSOPInstanceUID = "1.2.9"
    item.PurposeOfReferenceCodeSequence = Sequence([inner])
    ds.ReferencedImageSequence = Sequence([item, item])  # (0008,1140): before most kept tags
    ds["ReferencedImageSequence"].is_undefined_length = True
    for each in ds.ReferencedImageSequence:
        each.is_undefined_length_sequence_item = True
    ds.add_new(0x00091010, "LO", "private value")
    fast = _assert_same_record(_save(ds, tmp_path / "a.dcm", implicit=implicit))
    assert fast.values["ImagePositionPatient"] == (-12.5, 30.0, 0.0)
    assert fast.values["PatientID"] == "P 1"
    assert fast.pixel_offset is not None and fast.pixel_length == 6 * 5 * 2


def test_scan_equals_pydicom_on_compressed_files(tmp_path: Path) -> None:
    """Encapsulated pixel data: the record, and no native offset."""
    ds = _slice(rows=8, columns=8)
    ds.compress(RLELossless, encoding_plugin="pydicom")
    fast = _assert_same_record(_save(ds, tmp_path / "rle.dcm"))
    assert fast.transfer_syntax == RLELossless and fast.pixel_length is None


def test_scan_declines_what_it_does_not_walk(tmp_path: Path) -> None:
    """Big endian, a non-ASCII character set, no preamble, a header longer than HEAD_BYTES:
    None, and the series still loads (through pydicom) exactly."""
    big = _slice()
    big.file_meta.TransferSyntaxUID = ExplicitVRBigEndian
    big.save_as(tmp_path / "big.dcm", implicit_vr=False, little_endian=False)
    assert scan_header(tmp_path / "big.dcm") is None
    utf = _slice()
    utf.SpecificCharacterSet = "ISO_IR 192"
    utf.PatientID = "Zoë"
    assert scan_header(_save(utf, tmp_path / "utf.dcm")) is None
    bare = _slice()
    bare.save_as(tmp_path / "bare.dcm", implicit_vr=False, little_endian=True)
    assert scan_header(tmp_path / "bare.dcm") is None  # no preamble, no "DICM"
    long = _slice()
    long.add_new(0x00091020, "OB", b"\0" * HEAD_BYTES)  # a private blob before PixelSpacing
    assert scan_header(_save(long, tmp_path / "long.dcm")) is None


def test_a_series_read_partly_by_pydicom_loads_the_same(tmp_path: Path) -> None:
    """Files the fast reader declines load through pydicom into the same volume."""
    fast_dir, mixed_dir = tmp_path / "fast", tmp_path / "mixed"
    fast_dir.mkdir()
    mixed_dir.mkdir()
    for k in range(4):
        _save(_slice(z=1.25 * k, seed=k), fast_dir / f"{k}.dcm")
        ds = _slice(z=1.25 * k, seed=k)
        if k % 2:
            ds.add_new(0x00091020, "OB", b"\0" * HEAD_BYTES)
        _save(ds, mixed_dir / f"{k}.dcm")
    declined = [scan_header(p) is None for p in sorted(mixed_dir.iterdir())]
    assert declined == [False, True, False, True]
    fast, mixed = load_dicom_series(fast_dir), load_dicom_series(mixed_dir)
    np.testing.assert_array_equal(fast.hu, mixed.hu)
    assert (fast.spacing_mm, fast.origin_lps_mm) == (mixed.spacing_mm, mixed.origin_lps_mm)
    np.testing.assert_array_equal(fast.direction, mixed.direction)


@pytest.mark.parametrize(
    ("bits_stored", "signed", "slope", "intercept"),
    [
        (16, True, "1", "-1024"),
        (12, True, "1", "-1024"),  # the unused high bits hold noise: sign-extended away
        (12, False, "1", "-1024"),  # ... cleared
        (16, False, "0.5", "-1024.25"),  # fractional HU: float32
        (16, True, None, None),  # no rescale: stored values
        (16, True, "2", None),  # only one of the two: stored values, as pydicom
    ],
)
@pytest.mark.parametrize("implicit", [False, True], ids=["explicit", "implicit"])
def test_native_read_equals_pydicom(
    tmp_path: Path,
    bits_stored: int,
    signed: bool,
    slope: str | None,
    intercept: str | None,
    implicit: bool,
) -> None:
    path = _save(
        _slice(9, 7, bits_stored=bits_stored, signed=signed, slope=slope, intercept=intercept),
        tmp_path / "s.dcm",
        implicit=implicit,
    )
    header = scan_header(path)
    assert header is not None and dicom_module._native_dtype(header) is not None
    ds = pydicom.dcmread(path)
    expected = np.asarray(apply_modality_lut(ds.pixel_array, ds))
    for rows, columns in [(slice(0, 9), slice(0, 7)), (slice(2, 6), slice(1, 4))]:
        got = dicom_module._read_slice(header, rows, columns)
        assert got.dtype == expected.dtype
        np.testing.assert_array_equal(got, expected[rows, columns])


def test_short_pixel_data_and_modality_lut_go_through_pydicom(tmp_path: Path) -> None:
    """A modality LUT sequence or pixel data shorter than declared: not read natively."""
    lut = _slice()
    item = Dataset()
    item.LUTDescriptor = [4, 0, 16]
    item.add_new(0x00283006, "US", [0, 10, 20, 30])  # LUTData
    item.ModalityLUTType = "HU"
    lut.ModalityLUTSequence = Sequence([item])
    header = scan_header(_save(lut, tmp_path / "lut.dcm"))
    assert header is not None and dicom_module._native_dtype(header) is None
    short = _slice()
    short.PixelData = short.PixelData[:-2]
    header = scan_header(_save(short, tmp_path / "short.dcm"))
    assert header is not None and dicom_module._native_dtype(header) is None


needs_j2k = pytest.mark.skipif(
    not j2k.available(),
    reason="dmfn.client.io._j2k_region was not built (no libopenjp2-7-dev at `make setup`)",
)


@needs_j2k
@pytest.mark.parametrize(
    ("bits_stored", "signed", "lossy"),
    [
        (16, True, False),
        (12, True, False),
        (16, False, False),
        (12, False, False),
        (16, True, True),
    ],
)
def test_j2k_region_equals_pydicom(
    tmp_path: Path, bits_stored: int, signed: bool, lossy: bool
) -> None:
    """OpenJPEG's region decode equals pydicom's whole-frame decode (pylibjpeg-openjpeg) cut to
    the region, lossless and lossy, for every region including the edges."""
    rng = np.random.default_rng(bits_stored + signed)
    ds = _slice(40, 36, bits_stored=bits_stored, signed=signed)
    low, high = (
        (-(2 ** (bits_stored - 1)), 2 ** (bits_stored - 1)) if signed else (0, 2**bits_stored)
    )
    smooth = np.cumsum(rng.integers(-40, 41, (40, 36)), axis=1) + (low + high) // 2
    values = np.clip(smooth, low, high - 1).astype(np.int16 if signed else np.uint16)
    ds.PixelData = values.tobytes()
    options = {"j2k_cr": [10]} if lossy else {}
    ds.compress(JPEG2000 if lossy else JPEG2000Lossless, encoding_plugin="pylibjpeg", **options)
    path = _save(ds, tmp_path / "j2k.dcm")
    header = scan_header(path)
    assert header is not None and j2k.decodable(header)
    full = pydicom.dcmread(path)
    full.pixel_array_options(decoding_plugin="pylibjpeg")
    expected = full.pixel_array
    for rows, columns in [(slice(0, 40), slice(0, 36)), (slice(5, 23), slice(30, 36))]:
        (got,) = j2k.read_regions([header], rows, columns, threads=2)
        assert got is not None and got.dtype == expected.dtype
        np.testing.assert_array_equal(got, expected[rows, columns])


@needs_j2k
def test_j2k_series_reads_the_same_through_either_decoder(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A JPEG 2000 series' crop: the region decoder and pydicom's plugin give the same HU."""
    folder = tmp_path / "s"
    folder.mkdir()
    for k in range(5):
        ds = _slice(32, 32, bits_stored=12, z=1.25 * k, seed=k)
        ds.PixelData = (
            np.arange(32 * 32, dtype=np.int16).reshape(32, 32) % 2000 - 1000 + k
        ).tobytes()
        ds.compress(JPEG2000Lossless, encoding_plugin="pylibjpeg")
        _save(ds, folder / f"{k}.dcm")
    series = dicom_module.open_dicom_series(folder)
    box = (slice(1, 4), slice(3, 20), slice(7, 30))
    regional = series.read(box, workers=2)
    monkeypatch.setattr(j2k, "decodable", lambda header: False)  # the reference: pydicom
    whole = series.read(box, workers=2)
    np.testing.assert_array_equal(regional.hu, whole.hu)
    assert regional.hu.dtype == whole.hu.dtype


@needs_j2k
def test_j2k_damaged_frame_names_the_file(tmp_path: Path) -> None:
    ds = _slice(40, 36)
    ds.compress(JPEG2000Lossless, encoding_plugin="pylibjpeg")
    path = _save(ds, tmp_path / "bad.dcm")
    header = scan_header(path)
    assert header is not None
    raw = bytearray(path.read_bytes())
    start = raw.index(b"\xff\x4f\xff\x51")  # the codestream's SOC + SIZ markers
    raw[start + 60 : start + 90] = b"\xff" * 30
    path.write_bytes(bytes(raw))
    with pytest.raises(
        ValueError, match=r"file .*bad\.dcm: JPEG 2000 pixel data cannot be decoded"
    ):
        j2k.read_regions([header], slice(0, 40), slice(0, 36), threads=1)
    folder = tmp_path / "series"  # through the series reader: a DicomError naming the file
    folder.mkdir()
    path.rename(folder / "bad.dcm")
    with pytest.raises(dicom_module.DicomError, match=r"bad\.dcm"):
        load_dicom_series(folder)


def _comma_spacing(path: Path) -> None:
    """PixelSpacing written with decimal commas, as some exporters do (same length in bytes)."""
    raw = path.read_bytes()
    assert raw.count(b"0.703125\\0.703125") == 1
    path.write_bytes(raw.replace(b"0.703125\\0.703125", b"0,703125\\0,703125"))


@pytest.mark.filterwarnings("ignore:Invalid value for VR DS")  # pydicom's, on reading
def test_unusable_values_refuse_only_the_series_that_uses_them(tmp_path: Path) -> None:
    """A comma decimal in another series' PixelSpacing leaves the CT series loadable; in the
    CT series it is refused naming the file and the keyword. An empty RescaleIntercept (pydicom
    would apply it) is refused too, never read as stored values."""
    folder = tmp_path / "s"
    folder.mkdir()
    for k in range(3):
        _save(_slice(z=1.25 * k, seed=k), folder / f"{k}.dcm")
    other = _slice()
    other.SeriesInstanceUID, other.Modality = "9.9.9", "OT"
    _comma_spacing(_save(other, folder / "other.dcm"))
    assert load_dicom_series(folder).hu.shape == (3, 6, 5)
    bad = tmp_path / "bad"
    bad.mkdir()
    for k in range(3):
        path = _save(_slice(z=1.25 * k, seed=k), bad / f"{k}.dcm")
        if k == 1:
            _comma_spacing(path)
    with pytest.raises(ValueError, match=r"1\.dcm: PixelSpacing holds an unusable value"):
        load_dicom_series(bad)
    empty = tmp_path / "empty"
    empty.mkdir()
    for k in range(3):
        ds = _slice(z=1.25 * k, seed=k)
        ds["RescaleIntercept"].value = ""
        _save(ds, empty / f"{k}.dcm")
    with pytest.raises(ValueError, match="RescaleIntercept holds an unusable value ''"):
        load_dicom_series(empty)


def test_a_kept_value_written_as_un_is_left_to_pydicom(tmp_path: Path) -> None:
    """A converter that writes Rows with VR UN: the walker declines, pydicom's dictionary VR
    reads it, and the series loads the same."""
    ds = _slice()
    ds["Rows"].VR = "UN"
    ds["Rows"].value = struct.pack("<H", 6)
    path = _save(ds, tmp_path / "un.dcm")
    assert scan_header(path) is None
    assert _pydicom_record(path).values["Rows"] == 6
