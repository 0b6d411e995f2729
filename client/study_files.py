"""One study from its files: the image, the lesion mask on the image's grid, and the non-image
facts. The one place a :class:`~dmfn.contract.study.Study` is assembled from files, for a
manifest row (:func:`dmfn.client.manifest.load_row_study`) and for ``dmfn predict``
(:func:`dmfn.client.predict.load_study`)."""

from __future__ import annotations

from collections.abc import Callable, Mapping
from pathlib import Path

from dmfn.contract.study import Clinical, Study

#: Turns an error raised while reading the study's "image" or "mask" into the caller's terms.
Explain = Callable[[ValueError, str], ValueError]


def read_study(
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
) -> Study:
    """The study of ``image_path`` (:func:`dmfn.client.io.load_image`, axial layout; a DICOM
    folder's series ``series_uid``) with the mask of ``mask_path`` on its grid (``segment``: a
    Slicer segment's name, or a label value written as digits), ``ctc`` values by feature name
    and the ``clinical`` record.

    ``image_id`` defaults to the loaded image's own id, else the image file's name;
    ``patient_id`` ("") to the Study's anonymous default. A ValueError from reading the image
    or the mask is raised as it is, or as ``explain(err, "image" | "mask")`` returns it.
    """
    from dmfn.client.io import load_image, load_mask

    try:
        image = load_image(image_path, series_uid=series_uid)
    except ValueError as err:
        if explain is None:
            raise
        raise explain(err, "image") from err
    label_value: str | int | None = segment
    if segment is not None and segment.isdigit():
        label_value = int(segment)
    try:
        mask = load_mask(mask_path, image, segment=label_value)
    except ValueError as err:
        if explain is None:
            raise
        raise explain(err, "mask") from err
    given_ids = {"patient_id": patient_id} if patient_id else {}
    return Study(
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
