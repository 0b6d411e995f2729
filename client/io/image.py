"""One entry point for CT images on disk: a DICOM series folder, a NIfTI or an NRRD volume.

Used by ``dmfn predict`` and by training (manifest rows), so both accept the same inputs. Every
loader returns the study in the axial layout (see :func:`dmfn.contract.orientation.to_axial`).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from dmfn.client.io.crop import Box, crop_study
from dmfn.client.io.dicom import (
    DECODE_WORKERS,
    SeriesReference,
    load_dicom_series,
    open_dicom_series,
)
from dmfn.client.io.errors import ArgumentError, one_line
from dmfn.client.io.nifti import (
    NIFTI_SUFFIXES,
    NRRD_SUFFIXES,
    file_kind,
    load_nifti_volume,
    load_nrrd_volume,
    open_nifti_volume,
)
from dmfn.contract.study import Study, VoxelGrid

#: File name endings of single-file CT volumes (a DICOM series is a folder).
IMAGE_FILE_SUFFIXES: tuple[str, ...] = (*NIFTI_SUFFIXES, *NRRD_SUFFIXES)
#: The image kinds :func:`image_kind` tells apart.
IMAGE_KINDS: tuple[str, ...] = ("dicom", "nifti", "nrrd")
_KIND_NAMES = {"dicom": "DICOM", "nifti": "NIfTI", "nrrd": "NRRD"}


def image_kind(path: str | Path) -> str:
    """``"dicom"`` for a folder, ``"nifti"`` (.nii, .nii.gz) or ``"nrrd"`` (.nrrd, .nhdr) for a file.

    Decided from the path alone (a folder is a DICOM series); another file name ending raises
    ValueError naming ``path``.
    """
    path = Path(path)
    if path.is_dir():
        return "dicom"
    return file_kind(path, "path")


@dataclass(frozen=True)
class ImageSource:
    """An image whose geometry is known and whose voxels are read on demand.

    ``grid``: the grid of :func:`load_image`'s study (axial layout); ``series``: the DICOM
    series' reference (None for a NIfTI / NRRD file); ``read(box)``: :func:`load_image`'s study
    cut to ``box`` (half-open slices of ``grid``'s axes), reading no more of the file than
    the format allows (see :func:`open_image`).
    """

    grid: VoxelGrid
    series: SeriesReference | None
    read: Callable[[Box], Study]


def open_image(path: str | Path, series_uid: str | None = None) -> ImageSource:
    """The image of :func:`load_image` opened for a partial read.

    A DICOM folder: every header is read, sorted and checked now; ``read(box)`` decodes only
    the slices the box needs. A NIfTI file: its header now; ``read(box)`` reads the box's slab
    (an uncompressed ``.nii`` only those bytes; a ``.nii.gz`` is inflated up to the slab's end).
    An NRRD file is read whole now (its data is gzip, bzip2 or raw after a text header; dmfn's
    bounded reader inflates it in one pass) and ``read(box)`` cuts it.
    """
    path = Path(path)
    kind = _check_path(path, series_uid)
    if kind == "dicom":
        series = open_dicom_series(path, series_uid=series_uid)
        return ImageSource(
            series.grid, series.reference, lambda box: series.read(box, workers=DECODE_WORKERS)
        )
    if kind == "nifti":
        grid, read = open_nifti_volume(path)
        return ImageSource(grid, None, read)
    study = load_nrrd_volume(path)
    return ImageSource(study.grid, None, lambda box: crop_study(study, box))


def load_image(path: str | Path, series_uid: str | None = None) -> Study:
    """The images-only :class:`Study` of a DICOM series folder or a NIfTI / NRRD volume file.

    Dispatches on :func:`image_kind` to :func:`~dmfn.client.io.load_dicom_series` (with
    ``series_uid``, the SeriesInstanceUID to load from a folder holding several CT series),
    :func:`~dmfn.client.io.load_nifti_volume` or :func:`~dmfn.client.io.load_nrrd_volume`;
    hu (z, y, x) in HU, spacing_mm (z, y, x), axial layout. Bad arguments raise
    :class:`~dmfn.client.io.errors.ArgumentError` (a ValueError) naming them: a ``path`` that is
    neither an existing folder nor an existing file (or cannot be accessed), a ``series_uid``
    given for a volume file.
    """
    path = Path(path)
    kind = _check_path(path, series_uid)
    if kind == "dicom":
        return load_dicom_series(path, series_uid=series_uid)
    if kind == "nrrd":
        return load_nrrd_volume(path)
    return load_nifti_volume(path)


def _check_path(path: Path, series_uid: str | None) -> str:
    """The image kind of ``path``; ArgumentError for a missing path or a misplaced series_uid."""
    try:
        exists = path.is_dir() or path.is_file()
    except OSError as err:  # e.g. a folder on the way that this user may not enter
        raise ArgumentError("path", f"{path} cannot be accessed ({one_line(err)})") from None
    if not exists:
        raise ArgumentError(
            "path",
            f"{path} is neither a DICOM series folder nor an existing file ending in "
            f"{IMAGE_FILE_SUFFIXES}",
        )
    kind = image_kind(path)
    if series_uid is not None and kind != "dicom":
        raise ArgumentError(
            "series_uid",
            f"chooses a series of a DICOM folder, but {path} is a {_KIND_NAMES[kind]} file "
            f"(got {series_uid!r})",
        )
    return kind
