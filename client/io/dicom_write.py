"""Write a (z, y, x) HU volume as a DICOM CT series: one CT Image Storage file per slice.

Used by the synthetic-cohort generator and by tests. The files are explicit VR little endian
Part-10 files with the CT Image module attributes other DICOM tools need (pydicom, SimpleITK/GDCM,
3D Slicer). UIDs come from ``pydicom.uid.generate_uid``; pass ``study_uid``/``series_uid`` or a
``uid_entropy`` string to make them, and therefore the files, reproducible.
"""

from __future__ import annotations

import datetime
import hashlib
import logging
import math
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import pydicom
from pydicom.dataset import FileMetaDataset
from pydicom.uid import (
    PYDICOM_IMPLEMENTATION_UID,
    RE_VALID_UID,
    CTImageStorage,
    ExplicitVRLittleEndian,
    generate_uid,
)
from pydicom.valuerep import format_number_as_ds

from dmfn.contract.orientation import iop_from_direction
from dmfn.contract.study import VoxelGrid, check_direction, check_triple

log = logging.getLogger(__name__)

#: PatientSex values (DICOM: male, female, other; "" = unknown).
SEXES = ("", "M", "F", "O")
#: PatientAge holds at most three digits of years.
MAX_AGE_YEARS = 1000
#: Stored pixel values are signed 16-bit integers.
_RAW_MIN, _RAW_MAX = np.iinfo(np.int16).min, np.iinfo(np.int16).max


def write_dicom_series(
    hu: np.ndarray,
    spacing_mm: Sequence[float],
    folder: str | Path,
    *,
    origin_lps_mm: Sequence[float] = (0.0, 0.0, 0.0),
    direction: np.ndarray | None = None,
    patient_id: str = "ANON",
    study_uid: str | None = None,
    series_uid: str | None = None,
    rescale_slope: float = 1.0,
    rescale_intercept: float = -1024.0,
    description: str = "",
    shuffle_names: bool = False,
    uid_entropy: str | None = None,
    series_number: int = 1,
    patient_sex: str = "",
    patient_age_years: float | None = None,
    contrast_agent: str = "",
    study_date: str = "",
) -> list[Path]:
    """Write ``hu`` as a CT series into ``folder`` (created if needed); return the paths by slice.

    Args:
        hu: (z, y, x) HU array, integer or float. Stored as int16
            ``raw = round((hu - rescale_intercept) / rescale_slope)``, so float HU are quantised to
            the slope step; values whose raw value falls outside int16 raise ValueError.
        spacing_mm: (z, y, x) voxel spacing in mm; the slice step becomes the distance between
            ImagePositionPatient values and SliceThickness.
        origin_lps_mm: (x, y, z) LPS position (mm) of voxel [0, 0, 0]'s centre.
        direction: 3x3, columns = unit LPS vectors of the array axes (z, y, x); None = axial,
            ``dmfn.contract.study.AXIAL_DIRECTION``.
            Column 2 and 1 become ImageOrientationPatient. A left-handed direction (z column
            = -(row x column)) is written as given; readers sort along row x column, so it comes
            back with z reversed (the same image in patient space).
        patient_id: PatientID and PatientName.
        study_uid, series_uid: StudyInstanceUID / SeriesInstanceUID; generated when None.
        rescale_slope, rescale_intercept: RescaleSlope / RescaleIntercept (HU = slope*raw+icpt).
        description: SeriesDescription.
        shuffle_names: name the files in an order unrelated to the slice order (a permutation
            seeded by the series UID), to exercise readers that must sort by position.
        uid_entropy: when set, every generated UID is derived from it (reproducible output):
            the study UID from it alone, the series UID from it, the study UID and
            ``series_number``. Give every series its own ``uid_entropy`` (or, within one study,
            its own ``series_number``): equal inputs give equal UIDs, i.e. the same series.
        series_number: SeriesNumber.
        patient_sex: PatientSex, "M", "F", "O" or "" (unknown).
        patient_age_years: PatientAge in whole years (written as ``nnnY``, the age rounded
            down); None leaves it out.
        contrast_agent: ContrastBolusAgent (e.g. "IODINATED CONTRAST"): the series is
            contrast-enhanced; "" leaves the Contrast/Bolus attribute out (unenhanced).
        study_date: StudyDate (and SeriesDate) as YYYYMMDD; "" (default) leaves it empty, so
            the files hold no wall-clock date.

    File names are ``<8 hex of the series UID>_<NNNN>.dcm`` so that several series can share
    a folder. SOPInstanceUIDs derive from the series UID and the slice index, so they are
    unique across series whenever the series UIDs are.
    """
    raw = _raw_pixels(hu, rescale_slope, rescale_intercept)
    grid = VoxelGrid(
        shape=raw.shape,
        spacing_mm=check_triple(spacing_mm, "spacing_mm", positive=True),
        origin_lps_mm=check_triple(origin_lps_mm, "origin_lps_mm"),
        direction=check_direction(direction),
    )
    for name, value in (
        ("patient_id", patient_id),
        ("description", description),
        ("contrast_agent", contrast_agent),
    ):
        if not isinstance(value, str):
            raise ValueError(f"argument '{name}': must be a str, got {value!r}")
    patient = _patient_attributes(patient_sex, patient_age_years, study_date, contrast_agent)

    for name, uid in (("study_uid", study_uid), ("series_uid", series_uid)):
        if uid is not None and not _valid_uid(uid):
            raise ValueError(
                f"argument '{name}': must be a DICOM UID (digits and dots, <= 64 chars), "
                f"got {uid!r}"
            )

    def make_uid(kind: str) -> str:
        return generate_uid(entropy_srcs=None if uid_entropy is None else [uid_entropy, kind])

    study_uid = study_uid or make_uid("study")
    series_uid = series_uid or make_uid(f"series:{study_uid}:{int(series_number)}")
    frame_uid = generate_uid(entropy_srcs=[series_uid, "frame-of-reference"])

    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    tag = hashlib.sha1(series_uid.encode()).hexdigest()[:8]
    n_slices = grid.shape[0]
    numbers = np.arange(n_slices)
    if shuffle_names:
        seed = int(hashlib.sha1(series_uid.encode()).hexdigest()[:16], 16)
        numbers = np.random.default_rng(seed).permutation(n_slices)

    iop = [format_number_as_ds(v) for v in iop_from_direction(grid.direction)]
    pixel_spacing = [
        format_number_as_ds(grid.spacing_mm[1]),
        format_number_as_ds(grid.spacing_mm[2]),
    ]
    positions = grid.index_to_lps([(k, 0, 0) for k in range(n_slices)])
    shared = {
        "patient_id": patient_id,
        "study_uid": study_uid,
        "series_uid": series_uid,
        "frame_uid": frame_uid,
        "description": description,
        "series_number": int(series_number),
        "iop": iop,
        "pixel_spacing": pixel_spacing,
        "thickness": format_number_as_ds(grid.spacing_mm[0]),
        "slope": format_number_as_ds(float(rescale_slope)),
        "intercept": format_number_as_ds(float(rescale_intercept)),
        "patient": patient,
    }
    paths = []
    for k in range(n_slices):
        ds = _slice_dataset(raw[k], k, positions[k], shared)
        path = folder / f"{tag}_{int(numbers[k]):04d}.dcm"
        ds.save_as(path, enforce_file_format=True)
        paths.append(path)
    log.debug("wrote %d CT slices of series %s to %s", n_slices, series_uid, folder)
    return paths


def _patient_attributes(
    sex: str, age_years: float | None, study_date: str, contrast_agent: str
) -> dict[str, str]:
    """Checked PatientSex, PatientAge, StudyDate and ContrastBolusAgent values ("" = absent)."""
    if sex not in SEXES:
        raise ValueError(f"argument 'patient_sex': must be one of {SEXES}, got {sex!r}")
    age = ""
    if age_years is not None:
        if not (isinstance(age_years, int | float) and 0 <= age_years < MAX_AGE_YEARS):
            raise ValueError(
                f"argument 'patient_age_years': must be a number of years in "
                f"[0, {MAX_AGE_YEARS}), got {age_years!r}"
            )
        age = f"{math.floor(age_years):03d}Y"
    if study_date:
        try:
            datetime.datetime.strptime(study_date, "%Y%m%d")
        except ValueError:
            raise ValueError(
                f"argument 'study_date': must be a date as YYYYMMDD, got {study_date!r}"
            ) from None
    if len(contrast_agent) > 64:
        raise ValueError(
            f"argument 'contrast_agent': at most 64 characters (DICOM LO), got {contrast_agent!r}"
        )
    return {"sex": sex, "age": age, "date": study_date, "contrast": contrast_agent}


def _valid_uid(value: object) -> bool:
    return isinstance(value, str) and len(value) <= 64 and bool(RE_VALID_UID.match(value))


def _raw_pixels(hu: np.ndarray, slope: float, intercept: float) -> np.ndarray:
    """int16 stored values for HU ``hu`` under the given rescale; ValueError if unrepresentable."""
    if not isinstance(hu, np.ndarray) or hu.ndim != 3 or hu.size == 0:
        raise ValueError(
            f"argument 'hu': must be a non-empty 3D numpy array (z, y, x), got {np.shape(hu)}"
        )
    if hu.dtype.kind not in "iuf":
        raise ValueError(f"argument 'hu': dtype must be integer or float HU, got {hu.dtype}")
    if not (np.isfinite(slope) and slope > 0):
        raise ValueError(f"argument 'rescale_slope': must be finite and > 0, got {slope!r}")
    if not np.isfinite(intercept):
        raise ValueError(f"argument 'rescale_intercept': must be finite, got {intercept!r}")
    values = (hu.astype(np.float64) - intercept) / slope
    if not np.isfinite(values).all():
        raise ValueError("argument 'hu': must contain only finite HU values (found NaN/Inf)")
    raw = np.rint(values)
    if raw.min() < _RAW_MIN or raw.max() > _RAW_MAX:
        raise ValueError(
            f"argument 'hu': HU range [{hu.min()}, {hu.max()}] does not fit int16 stored values "
            f"with rescale_slope={slope} and rescale_intercept={intercept} "
            f"(raw range [{raw.min():.0f}, {raw.max():.0f}])"
        )
    return raw.astype(np.int16)


def _slice_dataset(
    pixels: np.ndarray, index: int, position: np.ndarray, shared: dict
) -> pydicom.Dataset:
    """One CT Image Storage dataset for slice ``index`` (0-based) at LPS ``position`` (mm)."""
    sop_uid = generate_uid(entropy_srcs=[shared["series_uid"], "slice", str(index)])
    meta = FileMetaDataset()
    meta.MediaStorageSOPClassUID = CTImageStorage
    meta.MediaStorageSOPInstanceUID = sop_uid
    meta.TransferSyntaxUID = ExplicitVRLittleEndian
    meta.ImplementationClassUID = PYDICOM_IMPLEMENTATION_UID

    ds = pydicom.Dataset()
    ds.file_meta = meta
    ds.SpecificCharacterSet = "ISO_IR 100"
    ds.ImageType = ["DERIVED", "SECONDARY", "AXIAL"]
    ds.SOPClassUID = CTImageStorage
    ds.SOPInstanceUID = sop_uid
    # Patient / study (type 2 attributes present, empty: synthetic data has no dates).
    ds.PatientName = shared["patient_id"]
    ds.PatientID = shared["patient_id"]
    ds.PatientBirthDate = ""
    ds.PatientSex = shared["patient"]["sex"]
    if shared["patient"]["age"]:
        ds.PatientAge = shared["patient"]["age"]
    ds.StudyInstanceUID = shared["study_uid"]
    ds.StudyDate = shared["patient"]["date"]
    if shared["patient"]["date"]:
        ds.SeriesDate = shared["patient"]["date"]
    ds.StudyTime = ""
    ds.ReferringPhysicianName = ""
    ds.StudyID = ""
    ds.AccessionNumber = ""
    # Series / equipment / frame of reference.
    ds.Modality = "CT"
    ds.SeriesInstanceUID = shared["series_uid"]
    ds.SeriesNumber = shared["series_number"]
    ds.SeriesDescription = shared["description"]
    ds.Manufacturer = "dmfn"
    if shared["patient"]["contrast"]:
        ds.ContrastBolusAgent = shared["patient"]["contrast"]
    ds.FrameOfReferenceUID = shared["frame_uid"]
    ds.PositionReferenceIndicator = ""
    # Image plane / pixel / CT image modules.
    ds.InstanceNumber = index + 1
    ds.AcquisitionNumber = 1
    ds.ImagePositionPatient = [format_number_as_ds(float(v)) for v in position]
    ds.ImageOrientationPatient = shared["iop"]
    ds.PixelSpacing = shared["pixel_spacing"]
    ds.SliceThickness = shared["thickness"]
    ds.SliceLocation = format_number_as_ds(float(position[2]))
    ds.KVP = ""
    ds.SamplesPerPixel = 1
    ds.PhotometricInterpretation = "MONOCHROME2"
    ds.Rows, ds.Columns = (int(n) for n in pixels.shape)
    ds.BitsAllocated = 16
    ds.BitsStored = 16
    ds.HighBit = 15
    ds.PixelRepresentation = 1
    ds.RescaleIntercept = shared["intercept"]
    ds.RescaleSlope = shared["slope"]
    ds.RescaleType = "HU"
    ds.PixelData = np.ascontiguousarray(pixels, dtype="<i2").tobytes()
    return ds
