"""The wire format of one study: what the client sends and how the server reads it back.

:func:`build_request` is the one conversion of a :class:`~dmfn.contract.study.Study` into the
request tensors: the SDK sends its output, and training, the export check and the demo decode
the same bytes (:func:`dmfn.preprocess.preprocess_request`), so every path sees exactly what the
server sees (float HU rounded to int16, the crop with the model's ROI margin, the CLINICAL vector).

Every request tensor has fixed dims (see :meth:`dmfn.contract.schema.Schema.request_inputs`), so
Triton checks each shape exactly and a client cannot make a backend build an array of a shape it
chose. The variable-size parts travel as one BYTES element each:

- ``CT_HU``: BYTES[1], the crop's HU as little-endian int16, C order (z, y, x);
- ``ROI_MASK``: BYTES[1], the crop's lesion mask bit-packed (``numpy.packbits``, big bit order,
  C order (z, y, x), ``ceil(z*y*x / 8)`` bytes; nonzero bit = lesion);
- ``VOLUME_SHAPE``: INT32[3], the crop's (z, y, x) size in voxels;

plus ``SPACING_MM`` fp32[3] (z, y, x), ``CTC`` fp32[K] and ``CLINICAL`` fp32[5].

:func:`encode_study` and :func:`decode_request` are exact inverses on valid data. The decoder
checks the shape against :class:`~dmfn.contract.limits.InputLimits` (Python integers, so nothing
overflows) and each buffer's length before it makes a view on the bytes: no allocation depends on
a number the client chose before that number is checked.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass

import numpy as np

from dmfn.contract import schema as S
from dmfn.contract.errors import InvalidInput
from dmfn.contract.limits import InputLimits
from dmfn.contract.orientation import to_axial
from dmfn.contract.roi import mask_bbox, roi_box
from dmfn.contract.server import ServerContract
from dmfn.contract.study import Study

_HU_DTYPE = np.dtype("<i2")
_INT16 = np.iinfo(np.int16)
#: Largest axis of a crop when no input limits are given (training, export checks).
UNLIMITED_AXIS_VOXELS = 1 << 16


@dataclass(frozen=True)
class WireStudy:
    """One decoded study, as the preprocessing receives it.

    Attributes:
        hu: int16 (z, y, x) HU (read-only view on the request bytes).
        mask: uint8 (z, y, x), 1 = lesion.
        spacing_mm: float32 (3,), (z, y, x) mm.
        ctc: float32 (K,).
        clinical: float32 (5,) in ``schema.CLINICAL_FIELDS`` order.
    """

    hu: np.ndarray
    mask: np.ndarray
    spacing_mm: np.ndarray
    ctc: np.ndarray
    clinical: np.ndarray


def encode_study(
    hu: np.ndarray,
    mask: np.ndarray,
    spacing_mm: object,
    ctc: object,
    clinical: object,
) -> dict[str, np.ndarray]:
    """The request tensors of one study, each with a leading batch axis of 1.

    ``hu`` must be int16 (z, y, x) (the SDK rounds float HU first); ``mask`` any array of its
    shape, nonzero = lesion.
    """
    hu = np.asarray(hu)
    if hu.dtype != np.int16 or hu.ndim != 3:
        raise InvalidInput("hu", f"must be a 3D int16 array, got {hu.dtype} {hu.shape}")
    mask = np.asarray(mask)
    if mask.shape != hu.shape:
        raise InvalidInput("mask", f"shape {mask.shape} must equal the volume's {hu.shape}")
    packed = np.packbits(np.ascontiguousarray(mask != 0).reshape(-1), bitorder="big")
    return {
        S.CT_HU: _bytes_tensor(np.ascontiguousarray(hu, dtype=_HU_DTYPE).tobytes()),
        S.VOLUME_SHAPE: np.asarray(hu.shape, np.int32)[None],
        S.SPACING_MM: np.asarray(spacing_mm, np.float32).reshape(1, 3),
        S.ROI_MASK: _bytes_tensor(packed.tobytes()),
        S.CTC: np.asarray(ctc, np.float32).reshape(1, -1),
        S.CLINICAL: np.asarray(clinical, np.float32).reshape(1, -1),
    }


def crop_study(study: Study, contract: ServerContract) -> tuple[np.ndarray, np.ndarray]:
    """The voxels that leave the client: (int16 HU, uint8 mask) of the lesion box plus
    ``contract.roi_margin_mm``, in the axial layout, axes (z, y, x).

    A study not in the axial layout (e.g. built by hand from another orientation) is first
    permuted/flipped exactly into it (:func:`dmfn.contract.orientation.to_axial`; oblique ones
    raise ValueError). The box comes from ``study.mask``, else ``study.bbox``; with only a box
    the mask is 1 inside the box (the server's measurements then describe the box). Float HU are
    rounded to the nearest integer HU (the wire format is int16); values outside the int16 range
    are refused.
    """
    if not isinstance(study, Study):
        raise ValueError(f"argument 'study': must be a dmfn Study, got {type(study).__name__}")
    study = to_axial(study)  # the layout the server's views assume; the same object if axial
    if study.mask is None and study.bbox is None:
        raise ValueError(
            f"argument 'study': study {study.image_id!r} has neither a lesion mask nor a bbox; "
            "the client crops the lesion region and sends only that"
        )
    if study.mask is not None:
        lo, hi = mask_bbox(study.mask)
    else:
        lo, hi = study.bbox[:3], study.bbox[3:]  # validated by Study (roi.check_bbox)
    box = roi_box(lo, hi, study.shape, contract.roi_margin_mm, study.spacing_mm)
    if study.mask is not None:
        mask = study.mask[box]
    else:  # the box itself, in crop coordinates
        mask = np.zeros(tuple(b.stop - b.start for b in box), np.uint8)
        mask[
            tuple(slice(a - b.start, c - b.start) for a, c, b in zip(lo, hi, box, strict=True))
        ] = 1
    hu = study.hu[box]
    if hu.dtype != np.int16:
        hu = np.rint(hu)
        if hu.min() < _INT16.min or hu.max() > _INT16.max:
            raise ValueError(
                f"argument 'study': HU of study {study.image_id!r} must lie in "
                f"[{_INT16.min}, {_INT16.max}] (int16 on the wire), got "
                f"[{float(hu.min())}, {float(hu.max())}]"
            )
        hu = hu.astype(np.int16)
    return np.ascontiguousarray(hu), np.ascontiguousarray(mask, dtype=np.uint8)


def build_request(study: Study, contract: ServerContract) -> dict[str, np.ndarray]:
    """The request tensors for one study (:func:`dmfn.contract.wire.encode_study`), each with a
    leading batch axis of 1: the crop of :func:`crop_study`, the spacing, the CTC features in
    ``contract.ctc_features`` order and the clinical vector.

    When the contract carries the server's input limits, the study is checked against them here
    first, so an implausible value fails on the client with the server's own message.

    Raises:
        ValueError: not a Study, an oblique study, no mask/bbox, no clinical record, a missing
            CTC feature, HU outside int16, a value outside the model's input limits.
    """
    hu, mask = crop_study(study, contract)
    ctc = study.ctc_array(contract.ctc_features)
    clinical = study.clinical_array()
    if contract.limits is not None:
        contract.limits.check_shape(hu.shape)
        contract.limits.check_values(study.spacing_mm, ctc, clinical, mask, contract.ctc_features)
    return encode_study(hu, mask, study.spacing_mm, ctc, clinical)


def _bytes_tensor(data: bytes) -> np.ndarray:
    out = np.empty((1, 1), dtype=np.object_)
    out[0, 0] = data
    return out


def _element(value: object, tensor: str) -> bytes:
    """The one BYTES element of a request tensor's row."""
    arr = np.asarray(value, dtype=np.object_).reshape(-1)
    if arr.size != 1 or not isinstance(arr[0], bytes | bytearray | memoryview):
        raise InvalidInput(tensor, "must hold exactly one BYTES element", "input")
    return bytes(arr[0]) if not isinstance(arr[0], bytes) else arr[0]


def decode_item(
    arrays: Mapping[str, np.ndarray],
    index: int,
    limits: InputLimits | None,
    max_voxels: int | None = None,
) -> WireStudy:
    """Study ``index`` of a (batched) request: checks, then zero-copy views on the bytes.

    The shape is checked against ``limits`` (the served model's); with ``limits=None`` (training,
    export checks: there the data defines the limits) only against ``max_voxels``.
    Raises :class:`~dmfn.contract.errors.InvalidInput` naming the request tensor.
    """
    if limits is None:
        if max_voxels is None:
            raise ValueError("argument 'max_voxels': needed when no limits are given")
        limits = InputLimits(
            ctc_ranges=((0.0, 0.0),),  # unused: only the shape is checked here
            max_study_voxels=max_voxels,
            max_axis_voxels=UNLIMITED_AXIS_VOXELS,
        )
    shape = limits.check_shape(arrays[S.VOLUME_SHAPE][index])
    n = shape[0] * shape[1] * shape[2]
    ct = _element(arrays[S.CT_HU][index], S.CT_HU)
    if len(ct) != n * _HU_DTYPE.itemsize:
        raise InvalidInput(
            S.CT_HU,
            f"holds {len(ct)} bytes but VOLUME_SHAPE {shape} needs {n * _HU_DTYPE.itemsize} "
            "(int16 little-endian, C order)",
            "input",
        )
    packed = _element(arrays[S.ROI_MASK][index], S.ROI_MASK)
    if len(packed) != math.ceil(n / 8):
        raise InvalidInput(
            S.ROI_MASK,
            f"holds {len(packed)} bytes but VOLUME_SHAPE {shape} needs {math.ceil(n / 8)} "
            "(one bit per voxel, numpy.packbits)",
            "input",
        )
    hu = np.frombuffer(ct, dtype=_HU_DTYPE).reshape(shape)
    mask = np.unpackbits(np.frombuffer(packed, np.uint8), count=n, bitorder="big")
    return WireStudy(
        hu=hu,
        mask=mask.reshape(shape),
        spacing_mm=np.asarray(arrays[S.SPACING_MM][index], np.float32),
        ctc=np.asarray(arrays[S.CTC][index], np.float32),
        clinical=np.asarray(arrays[S.CLINICAL][index], np.float32),
    )


def decode_checked(
    arrays: Mapping[str, np.ndarray],
    index: int,
    limits: InputLimits,
    ctc_names: tuple[str, ...] | None = None,
) -> WireStudy:
    """:func:`decode_item`, then every value check of ``limits`` (spacing, CTC, age, lesion
    extent). This is the server's whole request validation for one study."""
    study = decode_item(arrays, index, limits)
    limits.check_values(study.spacing_mm, study.ctc, study.clinical, study.mask, ctc_names)
    return study


def batch_size(arrays: Mapping[str, np.ndarray]) -> int:
    """Number of studies in a request (its VOLUME_SHAPE rows)."""
    return int(np.asarray(arrays[S.VOLUME_SHAPE]).shape[0])


def where_in_batch(index: int, batch: int) -> str:
    """``"study 2 of 3: "`` for a request of several studies, ``""`` for one."""
    return f"study {index + 1} of {batch}: " if batch > 1 else ""


def decode_request(
    arrays: Mapping[str, np.ndarray],
    limits: InputLimits,
    ctc_names: tuple[str, ...] | None = None,
) -> list[WireStudy]:
    """Every study of a request, checked by :func:`decode_checked`; the first bad one raises
    InvalidInput whose message says which study of the batch it is."""
    batch = batch_size(arrays)
    studies = []
    for i in range(batch):
        try:
            studies.append(decode_checked(arrays, i, limits, ctc_names))
        except InvalidInput as err:
            raise InvalidInput(err.name, where_in_batch(i, batch) + err.rule, err.kind) from None
    return studies
