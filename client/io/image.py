"""One entry point for CT images on disk: a DICOM series folder, a NIfTI or an NRRD volume.

Used by ``dmfn predict`` and by training (manifest rows), so both accept the same inputs. Every
loader returns the study in the axial layout (see :func:`dmfn.contract.orientation.to_axial`).
"""

from __future__ import annotations

from pathlib import Path

from dmfn.client.io.dicom import load_dicom_series
from dmfn.client.io.errors import ArgumentError, one_line
from dmfn.client.io.nifti import (
    NIFTI_SUFFIXES,
    NRRD_SUFFIXES,
    file_kind,
    load_nifti_volume,
    load_nrrd_volume,
)
from dmfn.contract.study import Study

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
    if kind == "dicom":
        return load_dicom_series(path, series_uid=series_uid)
    if kind == "nrrd":
        return load_nrrd_volume(path)
    return load_nifti_volume(path)
