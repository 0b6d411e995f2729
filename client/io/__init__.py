"""Readers and writers for CT studies: DICOM series, NIfTI and NRRD volumes and masks, DICOM SEG
masks (:mod:`dmfn.client.io.seg`).

Axis and coordinate conventions: see :mod:`dmfn.contract.study`; every file-order reversal and
frame conversion lives in :mod:`dmfn.contract.orientation`. Every volume loader returns its
study in the axial layout (:func:`~dmfn.contract.orientation.to_axial`); :func:`load_image`
picks the loader for a DICOM folder, a NIfTI or an NRRD file.
"""

from dmfn.client.io.dicom import (
    DicomArgumentError,
    DicomError,
    SeriesReference,
    load_dicom_series,
    read_dicom_series,
)
from dmfn.client.io.dicom_write import write_dicom_series
from dmfn.client.io.errors import ArgumentError
from dmfn.client.io.image import IMAGE_FILE_SUFFIXES, image_kind, load_image
from dmfn.client.io.nifti import (
    load_mask,
    load_nifti_volume,
    load_nrrd_volume,
    write_nifti_mask,
    write_nifti_volume,
    write_nrrd_mask,
)
from dmfn.client.io.seg import (
    SegError,
    SegMask,
    SegSegment,
    is_dicom_seg,
    load_seg,
    seg_segments,
    write_dicom_seg,
)

__all__ = [
    "IMAGE_FILE_SUFFIXES",
    "ArgumentError",
    "DicomArgumentError",
    "DicomError",
    "SegError",
    "SegMask",
    "SegSegment",
    "SeriesReference",
    "image_kind",
    "is_dicom_seg",
    "load_dicom_series",
    "load_image",
    "load_mask",
    "load_nifti_volume",
    "load_nrrd_volume",
    "load_seg",
    "read_dicom_series",
    "seg_segments",
    "write_dicom_seg",
    "write_dicom_series",
    "write_nifti_mask",
    "write_nifti_volume",
    "write_nrrd_mask",
]
