"""Read a DICOM CT series from a folder into a :class:`~dmfn.contract.study.Study`.

Steps: find the DICOM files (recursively), read their headers, group them by SeriesInstanceUID,
choose the CT series, sort its slices by ImagePositionPatient projected on the slice normal
(row x column of ImageOrientationPatient), check the geometry, apply the modality LUT
(HU = RescaleSlope * stored value + RescaleIntercept), stack the slices as (z, y, x) and bring
the volume into the axial layout (:func:`dmfn.contract.orientation.to_axial`: exact axis
permutation/flips, so coronal and sagittal acquisitions load like axial ones).

The slice spacing comes from the sorted positions, never from SliceThickness, except for a
series of ONE slice, where no position step exists: there SliceThickness is the z spacing (and
its absence is an error). Everything that could make the volume wrong raises :class:`DicomError`
(a ValueError) naming the folder or file and the rule: no DICOM files, several CT series and none
chosen, non-CT modality, an unreadable file or folder, a declared size (Rows x Columns, the
series' slices together) above :data:`~dmfn.contract.limits.MAX_IMAGE_VOXELS` or larger than the
file (both checked from the headers, before any pixel is read), mixed orientations or image sizes,
gantry tilt, duplicate or missing slices, uneven spacing, compressed pixel data without a decoder,
an oblique orientation (more than ``orientation.AXIS_ALIGNMENT_TOLERANCE_DEG`` off the patient
axes).
"""

from __future__ import annotations

import errno
import logging
import math
import os
from collections import Counter, defaultdict
from collections.abc import Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from functools import cached_property
from pathlib import Path
from stat import S_ISREG

import numpy as np
import pydicom
from pydicom.pixels import apply_modality_lut
from pydicom.pixels.decoders.base import get_decoder
from pydicom.uid import UID

from dmfn.client.io import j2k
from dmfn.client.io.bounded import check_voxels
from dmfn.client.io.crop import axial_grid, box_origin, source_box
from dmfn.client.io.dicom_header import SliceHeader, scan_header
from dmfn.client.io.errors import ArgumentError, one_line
from dmfn.contract.limits import MAX_IMAGE_VOXELS
from dmfn.contract.orientation import (
    axial_axis_map,
    direction_from_iop,
    slice_normal,
    to_axial,
)
from dmfn.contract.study import Study, VoxelGrid, hu_from_values

log = logging.getLogger(__name__)

#: Largest difference between two slices' ImageOrientationPatient cosines still "the same".
ORIENTATION_TOLERANCE = 1e-3
#: Largest tan(angle) between a slice-position step and the slice normal (gantry tilt check);
#: 1e-3 is 0.06 degrees, far above decimal-string round-off.
TILT_TOLERANCE = 1e-3
#: Largest relative deviation of a slice step from the median step (missing slices, unevenness).
SPACING_TOLERANCE = 0.01
#: Two slices closer than this (mm) along the normal are duplicates.
DUPLICATE_TOLERANCE_MM = 1e-3
#: Suffixes tried as DICOM even without the "DICM" marker (files without a suffix too).
DICOM_SUFFIXES = ("", ".dcm", ".dicom", ".ima")
#: Attributes every slice must carry.
REQUIRED_KEYWORDS = (
    "PixelData",
    "ImagePositionPatient",
    "ImageOrientationPatient",
    "PixelSpacing",
    "Rows",
    "Columns",
)
#: Threads that decode a series' slices: the native JPEG 2000 region decoder runs that many
#: without the GIL; pydicom's decoders hold it, so for them threads only overlap file reads
#: (docs/data.md).
DECODE_WORKERS = max(2, min(8, os.cpu_count() or 2))
#: SOP Class of DICOMDIR index files (not images; skipped).
MEDIA_DIRECTORY_STORAGE = "1.2.840.10008.1.3.10"
#: Header values longer than this (bytes) are read only when used (pydicom's ``defer_size``), so
#: a huge private element costs no memory while the folder's headers are read.
HEADER_DEFER_BYTES = 1 << 16
#: What to pip-install for compressed transfer syntaxes that pydicom cannot decode by itself
#: (dmfn's runtime dependencies: docs/data.md says why these).
DECODER_PACKAGES = "pylibjpeg pylibjpeg-openjpeg pylibjpeg-rle python-gdcm pyjpegls"
#: The pydicom pixel-data plugin tried first per transfer syntax: the fastest measured on a
#: 512 x 512 CT slice (``benchmarks/dicom_decode.py``, docs/data.md); pydicom's own order when
#: that plugin is not installed.
PREFERRED_DECODERS = {
    "1.2.840.10008.1.2.4.90": "pylibjpeg",  # JPEG 2000 lossless: pylibjpeg-openjpeg
    "1.2.840.10008.1.2.4.91": "pylibjpeg",  # JPEG 2000
    "1.2.840.10008.1.2.4.80": "pyjpegls",  # JPEG-LS lossless
    "1.2.840.10008.1.2.4.81": "pyjpegls",  # JPEG-LS near-lossless
    "1.2.840.10008.1.2.5": "pylibjpeg",  # RLE lossless: pylibjpeg-rle
    "1.2.840.10008.1.2.4.70": "gdcm",  # JPEG lossless SV1
    "1.2.840.10008.1.2.4.57": "gdcm",  # JPEG lossless
}


class DicomError(ValueError):
    """A DICOM folder or file that cannot become a correct CT volume; the message says why."""


class DicomArgumentError(DicomError, ArgumentError):
    """A :class:`DicomError` about an argument of :func:`load_dicom_series` (``folder`` or
    ``series_uid``): ``argument`` names it, so front ends can show it as their own option."""


@dataclass(frozen=True)
class SeriesReference:
    """What a DICOM SEG or SR needs to know of the CT series an image was loaded from.

    ``series_uid``, ``study_uid`` and ``frame_of_reference_uid`` are the series' UIDs ("" when
    the files do not say); ``sop_positions`` maps each slice's SOPInstanceUID to its
    ImagePositionPatient (x, y, z) LPS mm; ``files``: the slice files sorted along the slice
    normal (row x column of ImageOrientationPatient), i.e. in file order, which may be the
    reverse of the axial layout's z order (empty when the reference was made from datasets).
    :attr:`headers` are the slices' pydicom datasets WITHOUT pixel data in that order, read on
    first use (only writing a SEG or an SR needs them).
    """

    series_uid: str
    study_uid: str
    frame_of_reference_uid: str
    sop_positions: dict[str, tuple[float, float, float]]
    files: tuple[Path, ...] = ()
    datasets: tuple[pydicom.Dataset, ...] | None = field(default=None, compare=False, repr=False)

    @cached_property
    def headers(self) -> tuple[pydicom.Dataset, ...]:
        """The slices' datasets without pixel data, sorted along the slice normal."""
        if self.datasets is not None:
            return self.datasets
        return tuple(_read_header(p) for p in self.files)


def load_dicom_series(folder: str | Path, series_uid: str | None = None) -> Study:
    """The CT series in ``folder`` (searched recursively) as an images-only :class:`Study`.

    Args:
        folder: a directory holding the series' files (other series may be there too).
        series_uid: the SeriesInstanceUID to load; needed when the folder holds several CT
            series (the error, a :class:`DicomArgumentError` with ``argument == "series_uid"``,
            lists them with descriptions and slice counts).

    Returns:
        Study in the axial layout (:data:`dmfn.contract.study.AXIAL_DIRECTION`: axis 0 feet ->
        head, axis 1 anterior -> posterior, axis 2 patient right -> left) whatever the
        acquisition plane: ``hu`` (z, y, x) int16 (float32 if the rescale gives fractional HU),
        ``spacing_mm`` (z, y, x) mm (slice step from positions and PixelSpacing, permuted with
        the axes), ``origin_lps_mm`` the LPS centre of voxel [0, 0, 0] after reorientation (for
        an axial series: ImagePositionPatient of the most inferior slice), ``direction``
        :data:`~dmfn.contract.study.AXIAL_DIRECTION` (or within a few degrees of it, see
        :func:`~dmfn.contract.orientation.to_axial`), ``patient_id`` from PatientID,
        ``image_id`` = the SeriesInstanceUID, ``study_uid`` = the StudyInstanceUID; no mask, no CTC, no clinical record.
        An oblique series raises :class:`DicomError`.
    """
    return read_dicom_series(folder, series_uid)[0]


def read_dicom_series(
    folder: str | Path, series_uid: str | None = None
) -> tuple[Study, SeriesReference]:
    """:func:`load_dicom_series`'s study and the :class:`SeriesReference` of the series it read
    (its UIDs, SOP instance -> position map and pixel-free headers), for SEG masks and reports."""
    series = open_dicom_series(folder, series_uid)
    return series.read(workers=DECODE_WORKERS), series.reference


@dataclass(frozen=True)
class DicomSeries:
    """A CT series whose headers are read, sorted and checked, and whose pixels are not yet.

    ``grid`` is the voxel grid of the study :meth:`read` returns for the whole series (axial
    layout); ``file_grid`` the grid of the slices in file order (slice along row x column,
    row, column); ``headers`` the slices' header values in that order
    (:class:`~dmfn.client.io.dicom_header.SliceHeader`); ``reference`` the series' UIDs
    (:class:`SeriesReference`), all known before a pixel is decoded.
    """

    folder: Path
    headers: tuple[SliceHeader, ...]
    file_grid: VoxelGrid
    grid: VoxelGrid
    reference: SeriesReference

    def read(self, box: Sequence[slice] | None = None, *, workers: int = 1) -> Study:
        """The series as a :class:`Study` (axial layout), or only its part ``box`` of
        :attr:`grid` (half-open slices per axial axis z, y, x): then only the files of the
        slices the box needs are decoded (``workers`` threads), the others' pixels are never
        read, and the study is exactly the full study's ``hu[box]`` with the origin at the box's
        first voxel."""
        if box is None:
            box = tuple(slice(0, n) for n in self.grid.shape)
        where = f"series in {self.folder}"
        file_box = source_box(box, self.file_grid, where)
        needed = self.headers[file_box[0]]
        if not needed:
            raise ValueError(f"argument 'box': selects no slice of {where}: {tuple(box)}")
        values = _read_slices(needed, file_box[1], file_box[2], max(1, workers))
        first = self.headers[0]
        if "RescaleSlope" not in first and "ModalityLUTSequence" not in first:
            log.warning("%s: no RescaleSlope/Intercept; stored values used as HU", first.path)
        study = Study(
            hu=_stack_hu(values),
            spacing_mm=self.file_grid.spacing_mm,
            origin_lps_mm=box_origin(self.file_grid, file_box),
            direction=self.file_grid.direction,
            patient_id=str(first.get("PatientID", "") or "ANON"),
            image_id=self.reference.series_uid,
            study_uid=self.reference.study_uid,
        )
        return to_axial(study, where)


def open_dicom_series(folder: str | Path, series_uid: str | None = None) -> DicomSeries:
    """Read, choose, sort and check the headers of the CT series in ``folder`` (the checks of
    :func:`load_dicom_series` that need no pixel; ``stop_before_pixels``); decode nothing.

    :meth:`DicomSeries.read` then decodes the whole series or only the slices a crop needs.
    """
    folder = Path(folder)
    if not folder.is_dir():
        raise DicomArgumentError("folder", f"{folder} is not an existing directory")
    headers = _read_headers(folder)
    uid = _choose_series(folder, headers, series_uid)
    slices = sorted((h for h in headers.values() if h["SeriesInstanceUID"] == uid), key=_path)
    _check_declared_sizes(folder, slices)
    _check_images(folder, slices)
    try:  # refuse an oblique series before decoding its pixels
        axial_axis_map(direction_from_iop(_floats(slices[0], "ImageOrientationPatient", 6)),
                       f"series in {folder}")  # fmt: skip
    except ValueError as err:
        raise DicomError(str(err)) from err
    order, spacing_z = _sort_slices(folder, slices)
    slices = [slices[i] for i in order]
    first = slices[0]
    row_spacing, col_spacing = _floats(first, "PixelSpacing", 2)
    file_grid = VoxelGrid(
        shape=(len(slices), int(first["Rows"]), int(first["Columns"])),
        spacing_mm=(spacing_z, row_spacing, col_spacing),
        origin_lps_mm=_position(first),
        direction=direction_from_iop(_floats(first, "ImageOrientationPatient", 6)),
    )
    positions = {str(h["SOPInstanceUID"]): _position(h) for h in slices if "SOPInstanceUID" in h}
    reference = SeriesReference(
        series_uid=uid,
        study_uid=str(first.get("StudyInstanceUID", "")),
        frame_of_reference_uid=str(first.get("FrameOfReferenceUID", "")),
        sop_positions=positions,
        files=tuple(h.path for h in slices),
    )
    return DicomSeries(
        folder=folder,
        headers=tuple(slices),
        file_grid=file_grid,
        grid=axial_grid(file_grid, f"series in {folder}"),
        reference=reference,
    )


def _path(header: SliceHeader) -> Path:
    return header.path


def series_reference_of_files(paths: Sequence[str | Path]) -> SeriesReference:
    """The :class:`SeriesReference` of the slice files ``paths`` of one series, e.g. those
    :func:`~dmfn.client.io.write_dicom_series` returns (headers only; no pixel is read)."""
    return series_reference([_read_header(Path(p)) for p in paths])


def _read_header(path: Path) -> pydicom.Dataset:
    try:
        return pydicom.dcmread(path, stop_before_pixels=True)
    except Exception as err:
        raise DicomError(f"file {path}: unreadable DICOM file ({one_line(err)})") from err


def series_reference(headers: Sequence[pydicom.Dataset]) -> SeriesReference:
    """The :class:`SeriesReference` of one series' slice headers (any order; sorted here along
    the slice normal, row x column of the first slice's ImageOrientationPatient)."""
    if not headers:
        raise ValueError("argument 'headers': needs at least one slice")
    normal = slice_normal(headers[0].ImageOrientationPatient)
    sorted_headers = sorted(headers, key=lambda ds: float(np.asarray(_ds_position(ds)) @ normal))
    first = sorted_headers[0]
    positions = {
        str(ds.SOPInstanceUID): _ds_position(ds) for ds in sorted_headers if "SOPInstanceUID" in ds
    }
    return SeriesReference(
        series_uid=str(first.SeriesInstanceUID),
        study_uid=str(first.get("StudyInstanceUID", "") or ""),
        frame_of_reference_uid=str(first.get("FrameOfReferenceUID", "") or ""),
        sop_positions=positions,
        datasets=tuple(sorted_headers),
    )


def _ds_position(ds: pydicom.Dataset) -> tuple[float, float, float]:
    x, y, z = (float(v) for v in ds.ImagePositionPatient)
    return (x, y, z)


def _position(header: SliceHeader) -> tuple[float, float, float]:
    x, y, z = _floats(header, "ImagePositionPatient", 3)
    return (x, y, z)


def _floats(header: SliceHeader, keyword: str, count: int) -> tuple[float, ...]:
    """The ``count`` numbers of a multi-valued DS, or DicomError naming the file."""
    value = header[keyword]
    if not isinstance(value, tuple) or len(value) != count:
        raise DicomError(f"file {header.path}: {keyword} must hold {count} numbers, got {value!r}")
    return value


# --------------------------------------------------------------------------- files and headers
def _files(folder: Path) -> Iterator[Path]:
    """Every non-empty regular file under ``folder`` (symlinked folders are not followed). A
    folder or file that cannot be read raises :class:`DicomError` naming it, so no slice is left
    out silently; a link to nothing is skipped (as ``Path.is_file`` does), and so are empty files
    (never DICOM; /proc and /sys show their files as empty)."""

    def refuse(err: OSError) -> None:
        raise DicomError(f"folder {err.filename}: cannot be read ({one_line(err)})") from None

    for top, _, names in os.walk(folder, onerror=refuse):
        for name in names:
            path = Path(top, name)
            try:
                info = path.stat()
            except OSError as err:
                if err.errno in (errno.ENOENT, errno.ENOTDIR, errno.ELOOP):
                    continue
                raise DicomError(f"file {path}: cannot be read ({one_line(err)})") from None
            if S_ISREG(info.st_mode) and info.st_size > 0:
                yield path


def _read_headers(folder: Path) -> dict[Path, SliceHeader]:
    """Header values (no pixel data) of every DICOM image file under ``folder``: by
    :func:`~dmfn.client.io.dicom_header.scan_header`, else (a file it does not walk) by pydicom."""
    headers: dict[Path, SliceHeader] = {}
    skipped: list[str] = []
    for path in sorted(_files(folder)):
        hidden = path.name.startswith(".")
        try:
            header = None if hidden else scan_header(path)
            marked = header is not None or (not hidden and _has_dicm_marker(path))
        except OSError as err:
            raise DicomError(f"file {path}: cannot be read ({one_line(err)})") from None
        if not marked and (hidden or path.suffix.lower() not in DICOM_SUFFIXES):
            skipped.append(path.name)
            continue
        if header is None:
            try:
                ds = pydicom.dcmread(
                    path, stop_before_pixels=True, force=not marked, defer_size=HEADER_DEFER_BYTES
                )
            except Exception as err:  # pydicom raises many types for damaged files
                raise DicomError(f"file {path}: unreadable DICOM file ({one_line(err)})") from err
            header = SliceHeader.from_dataset(path, ds)
        if header.sop_class == MEDIA_DIRECTORY_STORAGE or path.name.upper() == "DICOMDIR":
            skipped.append(path.name)
            continue
        if "SeriesInstanceUID" not in header:
            raise DicomError(
                f"file {path}: unreadable or incomplete DICOM image (no SeriesInstanceUID; truncated "
                f"or not an image?); remove or replace it in {folder}"
            )
        headers[path] = header
    if skipped:
        log.warning("%s: ignored %d non-DICOM file(s): %s", folder, len(skipped), skipped[:10])
    if not headers:
        raise DicomArgumentError("folder", f"{folder} holds no DICOM files")
    return headers


def _has_dicm_marker(path: Path) -> bool:
    with path.open("rb") as handle:
        head = handle.read(132)
    return len(head) == 132 and head[128:] == b"DICM"


def _choose_series(folder: Path, headers: dict[Path, SliceHeader], wanted: str | None) -> str:
    """The SeriesInstanceUID to load: ``wanted`` if given, else the only CT series."""
    files: dict[str, list[SliceHeader]] = defaultdict(list)
    for header in headers.values():
        files[str(header["SeriesInstanceUID"])].append(header)

    def modality(uid: str) -> str:
        return "/".join(sorted({str(ds.get("Modality", "?")) for ds in files[uid]}))

    def summary(uids: Sequence[str]) -> str:
        return "; ".join(
            f"{uid} ({modality(uid)}, {str(files[uid][0].get('SeriesDescription', ''))!r}, "
            f"{len(files[uid])} files)"
            for uid in uids
        )

    if wanted is not None:
        if wanted not in files:
            raise DicomArgumentError(
                "series_uid", f"{wanted} is not in {folder} (series: {summary(list(files))})"
            )
        if modality(wanted) != "CT":
            raise DicomArgumentError(
                "series_uid",
                f"series {wanted} in {folder} has modality {modality(wanted)}; only CT "
                "(Modality = CT) is supported",
            )
        return wanted
    ct = [uid for uid in files if modality(uid) == "CT"]
    if not ct:
        raise DicomArgumentError(
            "folder",
            f"{folder} holds no CT series (Modality = CT), only: {summary(list(files))}",
        )
    if len(ct) > 1:
        raise DicomArgumentError(
            "series_uid",
            f"required: {folder} holds {len(ct)} CT series, choose one of {summary(ct)}",
        )
    others = [uid for uid in files if uid != ct[0]]
    if others:
        log.info("%s: loading CT series %s, ignoring %s", folder, ct[0], summary(others))
    return ct[0]


# --------------------------------------------------------------------------- sizes
def _check_declared_sizes(folder: Path, headers: Sequence[SliceHeader]) -> None:
    """Refuse, from the headers alone (no pixel data read), a slice whose Rows x Columns (x
    NumberOfFrames) or a series whose slices together exceed :data:`MAX_IMAGE_VOXELS`, then an
    uncompressed slice whose file is smaller than its pixel data (truncated)."""
    sized = [h for h in headers if "Rows" in h and "Columns" in h]  # else _check_images
    voxels: dict[Path, int] = {}
    for header in sized:
        dims, what = _declared_dims(header)
        voxels[header.path] = check_voxels(f"file {header.path}", what, dims, error=DicomError)
    total = sum(voxels.values())
    if total > MAX_IMAGE_VOXELS:
        sizes = Counter((int(h["Rows"]), int(h["Columns"])) for h in sized)
        shape = (
            f"slices x Rows x Columns = {len(sized)} x {' x '.join(map(str, next(iter(sizes))))}"
            if len(sizes) == 1
            else f"{len(sized)} slices of Rows x Columns {dict(sizes)}"
        )
        raise DicomError(
            f"series in {folder}: {shape} = {total:,} voxels, above the limit of "
            f"{MAX_IMAGE_VOXELS:,} voxels per image"
        )
    for header in sized:
        need, have = _pixel_bytes(header, voxels[header.path]), header.path.stat().st_size
        if need is not None and have < need:
            dims, what = _declared_dims(header)
            raise DicomError(
                f"file {header.path}: truncated: {what} = {' x '.join(map(str, dims))} of "
                f"{header['BitsAllocated']}-bit values needs {need:,} bytes of pixel data, the "
                f"file holds {have:,}"
            )


def _declared_dims(header: SliceHeader) -> tuple[list[int], str]:
    """The declared pixel counts of one file and the header fields that declare them."""
    frames = int(header.get("NumberOfFrames", 1) or 1)
    if frames == 1:
        return [int(header["Rows"]), int(header["Columns"])], "Rows x Columns"
    return [int(header["Rows"]), int(header["Columns"]), frames], "Rows x Columns x NumberOfFrames"


def _pixel_bytes(header: SliceHeader, voxels: int) -> int | None:
    """Bytes of uncompressed pixel data of ``voxels`` pixels; None when the data is compressed
    (encapsulated) or the header does not say."""
    try:
        if UID(header.transfer_syntax).is_compressed:
            return None
    except ValueError:  # absent, or not a transfer syntax pydicom knows
        if header.transfer_syntax:
            return None
    bits = header.get("BitsAllocated")
    if bits is None:
        return None
    samples = int(header.get("SamplesPerPixel", 1) or 1)
    return math.ceil(voxels * samples * int(bits) / 8)


# --------------------------------------------------------------------------- geometry
def _check_images(folder: Path, slices: Sequence[SliceHeader]) -> None:
    """Every slice: single-frame image with position/orientation and pixel data; same size,
    spacing, cosines."""
    for header in slices:
        for keyword in REQUIRED_KEYWORDS[1:]:
            if keyword not in header:
                raise DicomError(
                    f"file {header.path}: has no {keyword}; it is not a usable CT slice"
                )
        if header.has_pixel_data is False:
            raise DicomError(f"file {header.path}: has no PixelData; it is not a usable CT slice")
        if int(header.get("NumberOfFrames", 1) or 1) > 1:
            raise DicomError(
                f"file {header.path}: multi-frame (enhanced) CT with {header['NumberOfFrames']} "
                "frames is not supported; convert it to single-frame slices"
            )
    sizes = Counter((int(h["Rows"]), int(h["Columns"])) for h in slices)
    if len(sizes) > 1:
        raise DicomError(
            f"series in {folder}: slices differ in size (rows, columns): {dict(sizes)}"
        )
    spacings = Counter(tuple(round(v, 4) for v in _floats(h, "PixelSpacing", 2)) for h in slices)
    if len(spacings) > 1:
        raise DicomError(f"series in {folder}: slices differ in PixelSpacing: {dict(spacings)}")
    cosines = np.asarray([_floats(h, "ImageOrientationPatient", 6) for h in slices])
    far = np.flatnonzero(np.abs(cosines - cosines[0]).max(axis=1) > ORIENTATION_TOLERANCE)
    if far.size:
        groups: Counter[tuple[float, ...]] = Counter()
        example: dict[tuple[float, ...], Path] = {}
        for header, iop in zip(slices[: far[0] + 1], cosines, strict=False):
            key = tuple(np.round(iop, 3).tolist())
            groups[key] += 1
            example.setdefault(key, header.path)
        detail = ", ".join(f"{list(k)} x{n} (e.g. {example[k].name})" for k, n in groups.items())
        raise DicomError(
            f"series in {folder}: mixed orientations (ImageOrientationPatient differs by more "
            f"than {ORIENTATION_TOLERANCE}): {detail}; file {slices[far[0]].path.name} differs "
            f"from {slices[0].path.name}"
        )


def _sort_slices(folder: Path, slices: Sequence[SliceHeader]) -> tuple[list[int], float]:
    """Slice order along the normal and the slice spacing (mm); geometry errors raise."""
    normal = slice_normal(_floats(slices[0], "ImageOrientationPatient", 6))
    positions = np.asarray([_position(h) for h in slices], dtype=np.float64)
    order = np.argsort(positions @ normal, kind="stable")
    names = [slices[i].path.name for i in order]
    if len(slices) == 1:
        return [0], _single_slice_spacing(slices[0])
    steps = np.diff(positions[order], axis=0)
    along = steps @ normal
    duplicates = np.flatnonzero(along < DUPLICATE_TOLERANCE_MM)
    if duplicates.size:
        k = int(duplicates[0])
        raise DicomError(
            f"series in {folder}: files {names[k]} and {names[k + 1]} are at the same position "
            f"{positions[order][k].tolist()} (duplicate slices or several acquisitions)"
        )
    across = np.linalg.norm(steps - along[:, None] * normal[None, :], axis=1)
    tilt = across / along
    if tilt.max() > TILT_TOLERANCE:
        degrees = float(np.degrees(np.arctan(tilt.max())))
        raise DicomError(
            f"series in {folder}: gantry tilt of {degrees:.2f} degrees (slice positions step off "
            f"the slice normal {normal.round(4).tolist()}); resample it with a tilt-correcting tool"
        )
    median = float(np.median(along))
    deviation = np.abs(along - median) / median
    k = int(deviation.argmax())
    if deviation[k] > SPACING_TOLERANCE:
        ratio = along[k] / median
        missing = round(ratio) - 1
        what = (
            f"{missing} missing slice(s)"
            if missing >= 1 and abs(ratio - round(ratio)) <= SPACING_TOLERANCE * round(ratio)
            else "uneven slice spacing"
        )
        raise DicomError(
            f"series in {folder}: {what}: step of {along[k]:.4g} mm between {names[k]} and "
            f"{names[k + 1]} vs the median step {median:.4g} mm (tolerance "
            f"{SPACING_TOLERANCE:.0%}; steps range {along.min():.4g}..{along.max():.4g} mm)"
        )
    spacing = float((positions[order][-1] - positions[order][0]) @ normal) / (len(slices) - 1)
    return order.tolist(), spacing


def _single_slice_spacing(header: SliceHeader) -> float:
    thickness = header.get("SliceThickness")
    if thickness is None or not float(thickness) > 0:
        raise DicomError(
            f"file {header.path}: a one-slice series needs SliceThickness > 0 for its z spacing, "
            f"got {thickness!r}"
        )
    log.info("%s: one slice; z spacing = SliceThickness %s mm", header.path, thickness)
    return float(thickness)


# --------------------------------------------------------------------------- pixels
#: NumPy dtypes of native pixel data by (BitsAllocated, PixelRepresentation), as pydicom decodes.
_NATIVE_DTYPES: dict[tuple[int, int], np.dtype] = {
    (8, 0): np.dtype("u1"), (8, 1): np.dtype("i1"),
    (16, 0): np.dtype("<u2"), (16, 1): np.dtype("<i2"),
    (32, 0): np.dtype("<u4"), (32, 1): np.dtype("<i4"),
}  # fmt: skip


def _read_slices(
    headers: Sequence[SliceHeader], rows: slice, columns: slice, workers: int
) -> list[np.ndarray]:
    """Rows x columns of each slice after the modality LUT: JPEG 2000 slices by the native region
    decoder (:mod:`dmfn.client.io.j2k`, ``workers`` threads without the GIL), the others (and
    any it hands back) by :func:`_read_slice` on ``workers`` threads."""
    values: list[np.ndarray | None] = [None] * len(headers)
    regional = [k for k, header in enumerate(headers) if j2k.decodable(header)]
    if regional:
        try:
            stored = j2k.read_regions([headers[k] for k in regional], rows, columns, workers)
        except ValueError as err:
            raise DicomError(str(err)) from err
        for k, frame in zip(regional, stored, strict=True):
            if frame is not None:
                values[k] = _rescale(frame, headers[k])
    rest = [k for k, v in enumerate(values) if v is None]
    with ThreadPoolExecutor(workers) as pool:
        for k, slice_values in zip(
            rest, pool.map(lambda k: _read_slice(headers[k], rows, columns), rest), strict=True
        ):
            values[k] = slice_values
    return [v for v in values if v is not None]


def _rescale(stored: np.ndarray, header: SliceHeader) -> np.ndarray:
    """HU of stored values as pydicom's ``apply_modality_lut`` (Rescale Slope and Intercept,
    both present; else the stored values), for headers without a modality LUT sequence."""
    if "RescaleSlope" in header and "RescaleIntercept" in header:
        return stored.astype(np.float64) * header["RescaleSlope"] + header["RescaleIntercept"]
    return stored


def _read_slice(header: SliceHeader, rows: slice, columns: slice) -> np.ndarray:
    """Rows x columns of one slice after the modality LUT (HU), equal to what pydicom's
    ``pixel_array`` and ``apply_modality_lut`` give: native pixel data is read from its offset
    (only the rows needed), anything else through pydicom and its decoders."""
    dtype = _native_dtype(header)
    if dtype is None:
        path, ds = header.path, _read_full(header.path)
        if "PixelData" not in ds:
            raise DicomError(f"file {path}: has no PixelData; it is not a usable CT slice")
        return np.asarray(apply_modality_lut(_pixels(path, ds)[rows, columns], ds))
    width = int(header["Columns"])
    start = int(header.pixel_offset or 0) + rows.start * width * dtype.itemsize
    count = (rows.stop - rows.start) * width
    try:
        flat = np.fromfile(header.path, dtype=dtype, count=count, offset=start)
    except OSError as err:
        raise DicomError(f"file {header.path}: cannot be read ({one_line(err)})") from None
    if flat.size != count:
        raise DicomError(f"file {header.path}: truncated pixel data")
    stored = flat.reshape(-1, width)[:, columns]
    unused = dtype.itemsize * 8 - int(header["BitsStored"])
    if unused:  # PS3.5 8.1.1: bits above BitsStored hold nothing; sign-extend or clear them
        stored = np.right_shift(np.left_shift(stored, unused), unused)
    return _rescale(stored, header)


def _native_dtype(header: SliceHeader) -> np.dtype | None:
    """The dtype to read ``header``'s slice from its offset with, or None: read it by pydicom
    (compressed, a modality LUT sequence, colour, unusual bit depths, pixel data too short)."""
    if (
        header.pixel_offset is None
        or header.pixel_length is None
        or "ModalityLUTSequence" in header
    ):
        return None
    bits, stored = header.get("BitsAllocated"), header.get("BitsStored")
    dtype = _NATIVE_DTYPES.get((bits, header.get("PixelRepresentation")))
    if dtype is None or stored is None or not 1 <= stored <= bits:
        return None
    if header.get("SamplesPerPixel") != 1 or int(header.get("NumberOfFrames", 1) or 1) != 1:
        return None
    need = int(header["Rows"]) * int(header["Columns"]) * dtype.itemsize
    return dtype if header.pixel_length >= need else None


def _read_full(path: Path) -> pydicom.Dataset:
    try:
        return pydicom.dcmread(path)
    except Exception as err:
        raise DicomError(f"file {path}: unreadable DICOM file ({one_line(err)})") from err


def _stack_hu(values: Sequence[np.ndarray]) -> np.ndarray:
    """(z, y, x) HU of the slices' rescaled values: int16 while every slice maps to whole int16
    HU, else float32."""
    shape = (len(values), *values[0].shape)
    out = np.empty(shape, dtype=np.int16)
    for k, slice_values in enumerate(values):
        hu = hu_from_values(slice_values)
        if hu.dtype != out.dtype:
            out = out.astype(np.float32)
        out[k] = hu
    return out


def _pixels(path: Path, ds: pydicom.Dataset) -> np.ndarray:
    """Stored pixel values of one slice; compressed data without a decoder names the fix."""
    syntax = getattr(getattr(ds, "file_meta", None), "TransferSyntaxUID", None)
    if syntax is not None and syntax.is_compressed:
        try:
            plugins = get_decoder(syntax).available_plugins
        except NotImplementedError:
            plugins = ()
        preferred = PREFERRED_DECODERS.get(str(syntax))
        if preferred in plugins:
            ds.pixel_array_options(decoding_plugin=preferred)
        if not plugins:
            raise DicomError(
                f"file {path}: pixel data is compressed ({syntax.name}) and no decoder for it is "
                f"installed; install one with: pip install {DECODER_PACKAGES}"
            )
    try:
        return ds.pixel_array
    except Exception as err:
        raise DicomError(f"file {path}: pixel data cannot be decoded ({err})") from err
