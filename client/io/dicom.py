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
from dataclasses import dataclass
from pathlib import Path
from stat import S_ISREG

import numpy as np
import pydicom
from pydicom.pixels import apply_modality_lut
from pydicom.pixels.decoders.base import get_decoder

from dmfn.client.io.bounded import check_voxels
from dmfn.client.io.crop import axial_grid, box_origin, source_box
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
    ImagePositionPatient (x, y, z) LPS mm; ``headers`` are the slices' datasets WITHOUT pixel
    data, sorted along the slice normal (row x column of ImageOrientationPatient), i.e. in file
    order, which may be the reverse of the axial layout's z order.
    """

    series_uid: str
    study_uid: str
    frame_of_reference_uid: str
    sop_positions: dict[str, tuple[float, float, float]]
    headers: tuple[pydicom.Dataset, ...]


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
    return series.read(), series.reference


@dataclass(frozen=True)
class DicomSeries:
    """A CT series whose headers are read, sorted and checked, and whose pixels are not yet.

    ``grid`` is the voxel grid of the study :meth:`read` returns for the whole series (axial
    layout); ``file_grid`` the grid of the slices in file order (slice along row x column,
    row, column); ``paths`` the slice files in that order; ``reference`` the series' UIDs and
    pixel-free headers (:class:`SeriesReference`), all known before a pixel is decoded.
    """

    folder: Path
    paths: tuple[Path, ...]
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
        needed = self.paths[file_box[0]]
        if not needed:
            raise ValueError(f"argument 'box': selects no slice of {where}: {tuple(box)}")
        with ThreadPoolExecutor(max(1, workers)) as pool:
            slices = list(pool.map(_read_full, needed))
        _check_images(self.folder, slices)
        first = self.reference.headers[0]
        study = Study(
            hu=_stack_hu(slices, file_box[1:], warn_about=first),
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
    paths = sorted(p for p, ds in headers.items() if ds.SeriesInstanceUID == uid)
    _check_declared_sizes(folder, [(p, headers[p]) for p in paths])
    slices = [(p, headers[p]) for p in paths]
    _check_images(folder, slices, pixels=False)
    try:  # refuse an oblique series before decoding its pixels
        axial_axis_map(
            direction_from_iop(slices[0][1].ImageOrientationPatient), f"series in {folder}"
        )
    except ValueError as err:
        raise DicomError(str(err)) from err
    order, spacing_z = _sort_slices(folder, slices)
    slices = [slices[i] for i in order]
    first = slices[0][1]
    row_spacing, col_spacing = (float(v) for v in first.PixelSpacing)
    file_grid = VoxelGrid(
        shape=(len(slices), int(first.Rows), int(first.Columns)),
        spacing_mm=(spacing_z, row_spacing, col_spacing),
        origin_lps_mm=_position(first),
        direction=direction_from_iop(first.ImageOrientationPatient),
    )
    return DicomSeries(
        folder=folder,
        paths=tuple(p for p, _ in slices),
        file_grid=file_grid,
        grid=axial_grid(file_grid, f"series in {folder}"),
        reference=series_reference([ds for _, ds in slices]),
    )


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
    sorted_headers = sorted(headers, key=lambda ds: float(np.asarray(_position(ds)) @ normal))
    first = sorted_headers[0]
    uid = str(first.SeriesInstanceUID)
    positions = {
        str(ds.SOPInstanceUID): _position(ds) for ds in sorted_headers if "SOPInstanceUID" in ds
    }
    return SeriesReference(
        series_uid=uid,
        study_uid=str(first.get("StudyInstanceUID", "") or ""),
        frame_of_reference_uid=str(first.get("FrameOfReferenceUID", "") or ""),
        sop_positions=positions,
        headers=tuple(sorted_headers),
    )


def _position(ds: pydicom.Dataset) -> tuple[float, float, float]:
    x, y, z = (float(v) for v in ds.ImagePositionPatient)
    return (x, y, z)


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


def _read_headers(folder: Path) -> dict[Path, pydicom.Dataset]:
    """Headers (no pixel data) of every DICOM image file under ``folder``."""
    headers: dict[Path, pydicom.Dataset] = {}
    skipped: list[str] = []
    for path in sorted(_files(folder)):
        try:
            marked = not path.name.startswith(".") and _has_dicm_marker(path)
        except OSError as err:
            raise DicomError(f"file {path}: cannot be read ({one_line(err)})") from None
        if not marked and (path.name.startswith(".") or path.suffix.lower() not in DICOM_SUFFIXES):
            skipped.append(path.name)
            continue
        try:
            ds = pydicom.dcmread(
                path, stop_before_pixels=True, force=not marked, defer_size=HEADER_DEFER_BYTES
            )
        except Exception as err:  # pydicom raises many types for damaged files
            raise DicomError(f"file {path}: unreadable DICOM file ({one_line(err)})") from err
        meta = getattr(ds, "file_meta", None)
        sop_class = ds.get("SOPClassUID", getattr(meta, "MediaStorageSOPClassUID", None))
        if sop_class == MEDIA_DIRECTORY_STORAGE or path.name.upper() == "DICOMDIR":
            skipped.append(path.name)
            continue
        if "SeriesInstanceUID" not in ds:
            raise DicomError(
                f"file {path}: unreadable or incomplete DICOM image (no SeriesInstanceUID; truncated "
                f"or not an image?); remove or replace it in {folder}"
            )
        headers[path] = ds
    if skipped:
        log.warning("%s: ignored %d non-DICOM file(s): %s", folder, len(skipped), skipped[:10])
    if not headers:
        raise DicomArgumentError("folder", f"{folder} holds no DICOM files")
    return headers


def _has_dicm_marker(path: Path) -> bool:
    with path.open("rb") as handle:
        head = handle.read(132)
    return len(head) == 132 and head[128:] == b"DICM"


def _choose_series(folder: Path, headers: dict[Path, pydicom.Dataset], wanted: str | None) -> str:
    """The SeriesInstanceUID to load: ``wanted`` if given, else the only CT series."""
    files: dict[str, list[pydicom.Dataset]] = defaultdict(list)
    for ds in headers.values():
        files[str(ds.SeriesInstanceUID)].append(ds)

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


def _read_full(path: Path) -> tuple[Path, pydicom.Dataset]:
    try:
        return path, pydicom.dcmread(path)
    except Exception as err:
        raise DicomError(f"file {path}: unreadable DICOM file ({one_line(err)})") from err


# --------------------------------------------------------------------------- sizes
def _check_declared_sizes(folder: Path, items: list[tuple[Path, pydicom.Dataset]]) -> None:
    """Refuse, from the headers alone (no pixel data read), a slice whose Rows x Columns (x
    NumberOfFrames) or a series whose slices together exceed :data:`MAX_IMAGE_VOXELS`, then an
    uncompressed slice whose file is smaller than its pixel data (truncated)."""
    sized = [(p, ds) for p, ds in items if "Rows" in ds and "Columns" in ds]  # else _check_images
    voxels: dict[Path, int] = {}
    for path, ds in sized:
        dims, field = _declared_dims(ds)
        voxels[path] = check_voxels(f"file {path}", field, dims, error=DicomError)
    total = sum(voxels.values())
    if total > MAX_IMAGE_VOXELS:
        sizes = Counter((int(ds.Rows), int(ds.Columns)) for _, ds in sized)
        shape = (
            f"slices x Rows x Columns = {len(sized)} x {' x '.join(map(str, next(iter(sizes))))}"
            if len(sizes) == 1
            else f"{len(sized)} slices of Rows x Columns {dict(sizes)}"
        )
        raise DicomError(
            f"series in {folder}: {shape} = {total:,} voxels, above the limit of "
            f"{MAX_IMAGE_VOXELS:,} voxels per image"
        )
    for path, ds in sized:
        need, have = _pixel_bytes(ds, voxels[path]), path.stat().st_size
        if need is not None and have < need:
            dims, field = _declared_dims(ds)
            raise DicomError(
                f"file {path}: truncated: {field} = {' x '.join(map(str, dims))} of "
                f"{ds.BitsAllocated}-bit values needs {need:,} bytes of pixel data, the file "
                f"holds {have:,}"
            )


def _declared_dims(ds: pydicom.Dataset) -> tuple[list[int], str]:
    """The declared pixel counts of one file and the header fields that declare them."""
    frames = int(ds.get("NumberOfFrames", 1) or 1)
    if frames == 1:
        return [int(ds.Rows), int(ds.Columns)], "Rows x Columns"
    return [int(ds.Rows), int(ds.Columns), frames], "Rows x Columns x NumberOfFrames"


def _pixel_bytes(ds: pydicom.Dataset, voxels: int) -> int | None:
    """Bytes of uncompressed pixel data of ``voxels`` pixels; None when the data is compressed
    (encapsulated) or the header does not say."""
    syntax = getattr(getattr(ds, "file_meta", None), "TransferSyntaxUID", None)
    try:
        if syntax is not None and syntax.is_compressed:
            return None
    except ValueError:  # not a transfer syntax pydicom knows
        return None
    bits = ds.get("BitsAllocated")
    if bits is None:
        return None
    samples = int(ds.get("SamplesPerPixel", 1) or 1)
    return math.ceil(voxels * samples * int(bits) / 8)


# --------------------------------------------------------------------------- geometry
def _check_images(
    folder: Path, slices: list[tuple[Path, pydicom.Dataset]], *, pixels: bool = True
) -> None:
    """Every slice: single-frame image with position/orientation; same size, spacing, cosines.
    ``pixels=False`` for headers read without pixel data (PixelData is checked when decoded)."""
    required = REQUIRED_KEYWORDS if pixels else REQUIRED_KEYWORDS[1:]
    for path, ds in slices:
        for keyword in required:
            if keyword not in ds:
                raise DicomError(f"file {path}: has no {keyword}; it is not a usable CT slice")
        if int(ds.get("NumberOfFrames", 1) or 1) > 1:
            raise DicomError(
                f"file {path}: multi-frame (enhanced) CT with {ds.NumberOfFrames} frames is not "
                "supported; convert it to single-frame slices"
            )
    sizes = Counter((int(ds.Rows), int(ds.Columns)) for _, ds in slices)
    if len(sizes) > 1:
        raise DicomError(
            f"series in {folder}: slices differ in size (rows, columns): {dict(sizes)}"
        )
    spacings = Counter(tuple(round(float(v), 4) for v in ds.PixelSpacing) for _, ds in slices)
    if len(spacings) > 1:
        raise DicomError(f"series in {folder}: slices differ in PixelSpacing: {dict(spacings)}")
    reference = np.asarray([float(v) for v in slices[0][1].ImageOrientationPatient])
    groups: Counter[tuple[float, ...]] = Counter()
    example: dict[tuple[float, ...], Path] = {}
    for path, ds in slices:
        iop = np.asarray([float(v) for v in ds.ImageOrientationPatient])
        key = tuple(np.round(iop, 3).tolist())
        groups[key] += 1
        example.setdefault(key, path)
        if np.abs(iop - reference).max() > ORIENTATION_TOLERANCE:
            detail = ", ".join(
                f"{list(k)} x{n} (e.g. {example[k].name})" for k, n in groups.items()
            )
            raise DicomError(
                f"series in {folder}: mixed orientations (ImageOrientationPatient differs by more "
                f"than {ORIENTATION_TOLERANCE}): {detail}; file {path.name} differs from "
                f"{slices[0][0].name}"
            )


def _sort_slices(
    folder: Path, slices: list[tuple[Path, pydicom.Dataset]]
) -> tuple[list[int], float]:
    """Slice order along the normal and the slice spacing (mm); geometry errors raise."""
    normal = slice_normal(slices[0][1].ImageOrientationPatient)
    positions = np.asarray(
        [[float(v) for v in ds.ImagePositionPatient] for _, ds in slices], dtype=np.float64
    )
    order = np.argsort(positions @ normal, kind="stable")
    names = [slices[i][0].name for i in order]
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


def _single_slice_spacing(item: tuple[Path, pydicom.Dataset]) -> float:
    path, ds = item
    thickness = ds.get("SliceThickness")
    if thickness in (None, "") or not float(thickness) > 0:
        raise DicomError(
            f"file {path}: a one-slice series needs SliceThickness > 0 for its z spacing, "
            f"got {thickness!r}"
        )
    log.info("%s: one slice; z spacing = SliceThickness %s mm", path, thickness)
    return float(thickness)


# --------------------------------------------------------------------------- pixels
def _stack_hu(
    slices: list[tuple[Path, pydicom.Dataset]],
    in_plane: Sequence[slice],
    warn_about: pydicom.Dataset,
) -> np.ndarray:
    """(z, y, x) HU of the rows and columns ``in_plane`` of each slice: int16 while every
    slice maps to whole int16 HU, else float32. ``warn_about``: the series' first header,
    whose missing rescale is logged."""
    rows, columns = in_plane
    shape = (len(slices), rows.stop - rows.start, columns.stop - columns.start)
    out = np.empty(shape, dtype=np.int16)
    for k, (path, ds) in enumerate(slices):
        stored = _pixels(path, ds)[rows, columns]
        hu = hu_from_values(np.asarray(apply_modality_lut(stored, ds)))
        if hu.dtype != out.dtype:
            out = out.astype(np.float32)
        out[k] = hu
    if "RescaleSlope" not in warn_about and "ModalityLUTSequence" not in warn_about:
        log.warning("%s: no RescaleSlope/Intercept; stored values used as HU", slices[0][0])
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
