"""One study from its files: the image, the lesion mask on the image's grid, and the non-image
facts. The one place a :class:`~dmfn.contract.study.Study` is assembled from files, for a
manifest row (:func:`dmfn.client.manifest.load_row_study`) and for ``dmfn predict``
(:func:`dmfn.client.predict.load_study`)."""

from __future__ import annotations

from collections.abc import Callable, Mapping
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, NoReturn

import numpy as np
import pydicom

from dmfn.client.io.dicom import SeriesReference
from dmfn.contract.study import Clinical, Study, VoxelGrid

if TYPE_CHECKING:
    from dmfn.client.io.image import ImageSource
    from dmfn.client.io.nifti import LabelMask

#: Turns an error raised while reading the study's "image" or "mask" into the caller's terms.
Explain = Callable[[ValueError, str], ValueError]


@dataclass(frozen=True)
class StudyFiles:
    """A study read from its files, with what a DICOM report needs to reference them.

    ``series``: the image's DICOM series (None for a NIfTI / NRRD image); ``mask_dataset``: the
    SEG's header without pixel data when the mask was a DICOM SEG, else None; ``mask_segment``:
    the SEG's SegmentNumber that was read (None for other masks).
    """

    study: Study
    series: SeriesReference | None
    mask_dataset: pydicom.Dataset | None
    mask_segment: int | None = None


def read_study_files(
    image_path: Path,
    mask_path: Path,
    ctc: Mapping[str, float],
    clinical: Clinical,
    *,
    segment: str | None = None,
    series_uid: str | None = None,
    patient_id: str = "",
    image_id: str = "",
    label: str | None = None,
    explain: Explain | None = None,
    crop_margin_mm: float | None = None,
) -> StudyFiles:
    """The study of ``image_path`` (:func:`dmfn.client.io.load_image`, axial layout; a DICOM
    folder's series ``series_uid``) with the mask of ``mask_path`` on its grid (``segment``: a
    Slicer segment's name, a DICOM SEG's segment number or label, or a label value written as
    digits), ``ctc`` values by feature name and the ``clinical`` record; with the image's DICOM
    series reference and, for a DICOM SEG mask, the SEG's header. A DICOM SEG is checked
    against the image's series (series and frame of reference UIDs) when the image is a DICOM
    folder.

    ``image_id`` defaults to the loaded image's own id, else the image file's name;
    ``patient_id`` ("") to the Study's anonymous default. A ValueError from reading the image
    or the mask is raised as it is, or as ``explain(err, "image" | "mask")`` returns it.

    ``crop_margin_mm`` (the model's ROI margin, ``ServerContract.roi_margin_mm``): read only
    what :func:`dmfn.contract.wire.build_request` sends. The image's geometry is read from its
    headers, the mask on that grid, and then only the lesion's box grown by the margin
    (:func:`dmfn.contract.roi.roi_box`) is read from the image
    (:func:`dmfn.client.io.image.open_image`: a DICOM series decodes only those slices). The
    study is that sub-volume with its exact geometry (the origin at its first voxel) and the
    mask cut alike, so ``build_request`` gives the same request, byte for byte, as on the full
    study. None (default): the whole image.
    """
    from dmfn.client.io import image_kind, load_image, read_dicom_series
    from dmfn.client.io.crop import crop_box

    def raise_as(err: ValueError, what: str) -> NoReturn:
        if explain is None:
            raise err
        raise explain(err, what) from err

    series: SeriesReference | None = None
    if crop_margin_mm is not None:
        source, early_mask = _open_with_mask(image_path, mask_path, segment, series_uid, raise_as)
        grid, series = source.grid, source.series
    else:
        early_mask = None
        try:
            if Path(image_path).is_dir() and image_kind(image_path) == "dicom":
                image, series = read_dicom_series(image_path, series_uid=series_uid)
            else:
                image = load_image(image_path, series_uid=series_uid)
        except ValueError as err:
            raise_as(err, "image")
        grid = image.grid
    mask_dataset: pydicom.Dataset | None = None
    mask_segment: int | None = None
    try:
        if early_mask is not None:
            mask = early_mask.on_grid(grid)
        else:
            mask, mask_dataset, mask_segment = _read_mask(mask_path, grid, segment, series)
    except ValueError as err:
        raise_as(err, "mask")
    if crop_margin_mm is not None:
        box = crop_box(mask, grid, crop_margin_mm)
        mask = np.ascontiguousarray(mask[box])
        try:
            image = source.read(box)
        except ValueError as err:
            raise_as(err, "image")
    given_ids = {"patient_id": patient_id} if patient_id else {}
    study = Study(
        hu=image.hu,
        spacing_mm=image.spacing_mm,
        origin_lps_mm=image.origin_lps_mm,
        direction=image.direction,
        mask=mask,
        ctc=dict(ctc),
        clinical=clinical,
        image_id=image_id or image.image_id or image_path.name,
        label=label,
        study_uid=image.study_uid,
        **given_ids,
    )
    return StudyFiles(study, series, mask_dataset, mask_segment)


def _open_with_mask(
    image_path: Path,
    mask_path: Path,
    segment: str | None,
    series_uid: str | None,
    raise_as: Callable[[ValueError, str], NoReturn],
) -> tuple[ImageSource, LabelMask | None]:
    """The image opened for a partial read (its headers; a worker thread) while this thread
    reads a NIfTI / NRRD mask file (inflating it releases the GIL, so the two overlap on two
    cores); the mask is placed on the image's grid later. A DICOM SEG needs the image's series
    to be read, so it is not read here (None). An image error is raised before a mask error."""
    from dmfn.client.io import IMAGE_FILE_SUFFIXES
    from dmfn.client.io.image import open_image
    from dmfn.client.io.nifti import read_label_mask

    with ThreadPoolExecutor(1) as pool:
        opening = pool.submit(open_image, image_path, series_uid=series_uid)
        mask: LabelMask | None = None
        mask_error: Exception | None = None
        if mask_path.name.lower().endswith(IMAGE_FILE_SUFFIXES):
            try:
                mask = read_label_mask(mask_path, _label_value(segment))
            except Exception as err:  # kept until the image's own error is known
                mask_error = err
        try:
            source = opening.result()
        except ValueError as err:
            raise_as(err, "image")
    if isinstance(mask_error, ValueError):
        raise_as(mask_error, "mask")
    if mask_error is not None:
        raise mask_error
    return source, mask


def _label_value(segment: str | None) -> str | int | None:
    """A NIfTI / NRRD label written as digits is a label value; else a segment name."""
    return int(segment) if segment is not None and segment.isdigit() else segment


def _read_mask(
    mask_path: Path, grid: VoxelGrid, segment: str | None, series: SeriesReference | None
) -> tuple[np.ndarray, pydicom.Dataset | None, int | None]:
    """The mask on the image's ``grid`` and, for a DICOM SEG, its header and the segment read."""
    from dmfn.client.io import IMAGE_FILE_SUFFIXES, load_mask
    from dmfn.client.io.seg import is_dicom_seg, load_seg

    if not mask_path.name.lower().endswith(IMAGE_FILE_SUFFIXES) and is_dicom_seg(mask_path):
        seg = load_seg(mask_path, grid, segment, series)
        return seg.mask, seg.dataset, seg.segment.number
    return load_mask(mask_path, grid, segment=_label_value(segment), reference=series), None, None
