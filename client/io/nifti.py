"""NIfTI and NRRD: CT volumes, lesion masks and 3D Slicer segmentations (``.seg.nrrd``); the
mask loader also dispatches DICOM SEG files to :mod:`dmfn.client.io.seg`.

Every file's frame (NIfTI: RAS affine; NRRD: ``space`` + ``space directions`` + ``space origin``)
is converted to LPS and its axes to (z, y, x) by :mod:`dmfn.contract.orientation`. Volumes are
then brought into the axial layout (:func:`~dmfn.contract.orientation.to_axial`: exact axis
permutation/flips; an oblique volume raises ValueError). A mask is placed onto the study's voxel
grid exactly (axis flips/permutations are undone, nothing is interpolated): it must be on the
study's grid, or, for a 3D Slicer segmentation only, a cropped sub-box of it (see
:func:`load_mask`); any other grid raises ValueError. Errors about an argument are
:class:`~dmfn.client.io.errors.ArgumentError`; errors about a file's content name the file.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, cast

import nibabel as nib
import nrrd
import numpy as np
from isal import isal_zlib

from dmfn.client.io.bounded import check_nifti, read_nrrd_data, read_nrrd_header
from dmfn.client.io.crop import Box, axial_grid, box_origin, source_box
from dmfn.client.io.dicom import SeriesReference
from dmfn.client.io.errors import ArgumentError, one_line
from dmfn.client.io.seg import is_seg_candidate, load_seg
from dmfn.client.io.segments import choose_segment
from dmfn.contract.orientation import (
    grid_from_nifti_affine,
    grid_from_nrrd,
    nifti_affine,
    nrrd_space_fields,
    place_on_grid,
    reverse_axes,
    to_axial,
)
from dmfn.contract.study import (
    Study,
    VoxelGrid,
    check_direction,
    check_mask,
    check_triple,
    hu_from_values,
)

log = logging.getLogger(__name__)
#: What ISA-L raises for damaged deflate data.
_InflateError = cast(type[Exception], isal_zlib.error)  # typed an instance in isal's stubs

NIFTI_SUFFIXES = (".nii", ".nii.gz")
NRRD_SUFFIXES = (".nrrd", ".nhdr")
#: File name ending of 3D Slicer segmentations, which store the extent cropped to the segments.
SEGMENTATION_SUFFIX = ".seg.nrrd"
#: NIfTI xform code written by dmfn: 1 = scanner-based anatomical coordinates.
_XFORM_SCANNER = 1


# --------------------------------------------------------------------------- file kinds
def file_kind(path: Path, argument: str = "path") -> str:
    """``"nifti"`` or ``"nrrd"`` from the file name's suffix; ValueError naming ``argument``."""
    name = path.name.lower()
    if name.endswith(NIFTI_SUFFIXES):
        return "nifti"
    if name.endswith(NRRD_SUFFIXES):
        return "nrrd"
    raise ArgumentError(argument, f"{path} must end with one of {NIFTI_SUFFIXES + NRRD_SUFFIXES}")


def _existing(path: str | Path, argument: str) -> Path:
    path = Path(path)
    try:
        is_file = path.is_file()
    except OSError as err:  # e.g. a folder on the way that this user may not enter
        raise ArgumentError(argument, f"{path} cannot be accessed ({one_line(err)})") from None
    if not is_file:
        raise ArgumentError(argument, f"{path} is not an existing file")
    return path


# --------------------------------------------------------------------------- raw readers
def _read_nifti(path: Path) -> tuple[np.ndarray, VoxelGrid]:
    """(z, y, x) data (scaled by scl_slope/scl_inter) and grid of a 3D NIfTI file; the header's
    size is checked before the data is read (:func:`~dmfn.client.io.bounded.check_nifti`)."""
    img, grid = _open_nifti(path)
    try:
        data = _inflated(img, path)
        if data is None:
            data = np.asanyarray(img.dataobj)
    except ValueError:
        raise
    except Exception as err:
        raise ValueError(f"NIfTI file {path}: cannot be read ({one_line(err)})") from err
    return np.ascontiguousarray(reverse_axes(_squeeze_to_3d(data, path))), grid


def _inflated(img: Any, path: Path) -> np.ndarray | None:
    """The (x, y, z, ...) data of an unscaled single-stream ``.nii.gz``, inflated in one call by
    ISA-L (a 300x512x512 mask: 56 ms against 142 ms through nibabel's zlib stream) and no further
    than the header's size; the array is read-only. None where nibabel reads it: an uncompressed
    or multi-member file, or data to be scaled by scl_slope / scl_inter."""
    proxy = img.dataobj
    if not path.name.lower().endswith(".gz") or (proxy.slope, proxy.inter) != (1.0, 0.0):
        return None
    # where nibabel's own proxy reads (the header's vox_offset may say 0 for a single file)
    dtype, shape, offset = np.dtype(proxy.dtype), tuple(proxy.shape), int(proxy.offset)
    count = int(np.prod(shape))
    need = offset + count * dtype.itemsize
    stream = isal_zlib.decompressobj(isal_zlib.MAX_WBITS | 16)
    try:
        raw = stream.decompress(path.read_bytes(), need)
    except (OSError, _InflateError) as err:
        raise ValueError(f"NIfTI file {path}: cannot be read ({one_line(err)})") from None
    if len(raw) < need:
        if stream.eof and stream.unused_data:
            return None  # several gzip members: nibabel's stream reads them all
        raise ValueError(
            f"NIfTI file {path}: truncated: holds {len(raw):,} of the {need:,} bytes its header "
            "declares"
        )
    return np.frombuffer(raw, dtype, count=count, offset=offset).reshape(shape, order="F")


def _open_nifti(path: Path) -> tuple[Any, VoxelGrid]:
    """The nibabel image (no voxel read yet) and the (z, y, x) grid of a 3D NIfTI file, from its
    header alone (size checked, a position in patient space required)."""
    try:
        img: Any = nib.load(path)  # a Nifti1Image or Nifti2Image (untyped in nibabel's stubs)
    except Exception as err:  # nibabel raises many types for bad files
        raise ValueError(f"NIfTI file {path}: cannot be read ({one_line(err)})") from err
    header = img.header
    check_nifti(path, header, data_offset=int(img.dataobj.offset))
    if int(header["sform_code"]) == 0 and int(header["qform_code"]) == 0:
        raise ValueError(
            f"NIfTI file {path}: sform_code and qform_code are both 0, so its position in patient "
            "space is unknown; rewrite it with a valid qform or sform"
        )
    shape = tuple(int(n) for n in img.shape)
    shape_xyz = shape + (1,) * (3 - len(shape)) if len(shape) < 3 else shape[:3]
    if (len(shape) > 3 and not all(n == 1 for n in shape[3:])) or len(shape) < 2:
        raise ValueError(f"file {path}: must hold a 3D image, got shape {shape} (x, y, z, ...)")
    try:
        grid = grid_from_nifti_affine(img.affine, shape_xyz)
    except ValueError as err:
        raise ValueError(f"NIfTI file {path}: unusable geometry: {err}") from err
    return img, grid


def _squeeze_to_3d(data: np.ndarray, path: Path) -> np.ndarray:
    if data.ndim == 2:
        return data[:, :, None]
    if data.ndim > 3 and all(n == 1 for n in data.shape[3:]):
        return data.reshape(data.shape[:3])
    if data.ndim != 3:
        raise ValueError(
            f"file {path}: must hold a 3D image, got shape {data.shape} (x, y, z, ...)"
        )
    return data


def _read_nrrd(path: Path) -> tuple[np.ndarray, VoxelGrid, dict]:
    """Data with spatial axes (z, y, x) LAST (a leading list axis is kept), grid and header.

    The header is checked before the data is read: its geometry fields, then ``sizes`` against
    the image limit and the data's length (:func:`~dmfn.client.io.bounded.read_nrrd_data`)."""
    header, start = read_nrrd_header(path)
    for key in ("space", "space directions", "space origin"):
        if key not in header:
            raise ValueError(
                f"NRRD file {path}: field {key!r} is missing, so its position in patient space "
                "is unknown (needs space, space directions and space origin)"
            )
    sizes = [int(s) for s in np.atleast_1d(header.get("sizes", ()))]
    rows = np.asarray(header["space directions"], dtype=np.float64)
    if rows.ndim != 2 or rows.shape[0] != len(sizes):
        raise ValueError(
            f"NRRD file {path}: field 'space directions' must give one row per axis of "
            f"sizes {sizes}, got {rows.tolist()}"
        )
    spatial = [i for i in range(len(sizes)) if np.isfinite(rows[i]).all()]
    other = [i for i in range(len(sizes)) if i not in spatial]
    if len(spatial) != 3 or len(other) > 1:
        raise ValueError(
            f"NRRD file {path}: needs 3 spatial axes and at most one list axis, got "
            f"kinds {header.get('kinds')} and sizes {sizes}"
        )
    data = read_nrrd_data(path, header, start)
    try:
        grid = grid_from_nrrd(
            header["space"], rows[spatial], header["space origin"], [data.shape[i] for i in spatial]
        )
    except ValueError as err:
        raise ValueError(f"NRRD file {path}: unusable geometry: {err}") from err
    # (list?, x, y, z) -> (list?, z, y, x)
    data = np.transpose(data, other + spatial[::-1])
    return np.ascontiguousarray(data), grid, header


# --------------------------------------------------------------------------- volumes
def load_nifti_volume(path: str | Path) -> Study:
    """A CT volume from a NIfTI file (.nii / .nii.gz), in HU, as an images-only :class:`Study`.

    The affine (sform if set, else qform) is converted from RAS to LPS and the axes from the
    file's (x, y, z) to (z, y, x); the volume is then reoriented exactly (axis permutation and
    flips, no interpolation) into the axial layout :data:`dmfn.contract.study.AXIAL_DIRECTION`
    (axis 0 feet -> head, axis 1 anterior -> posterior, axis 2 patient right -> left), with
    ``spacing_mm`` permuted alike and ``origin_lps_mm`` the LPS centre of the new voxel [0, 0, 0]
    (see :func:`dmfn.contract.orientation.to_axial`); a common RAS file (affine diag(+, +, +))
    therefore comes back with its y and x axes reversed. An oblique volume (an axis more than
    ``orientation.AXIS_ALIGNMENT_TOLERANCE_DEG`` off the patient axes) raises ValueError. Values
    are scaled by scl_slope/scl_inter and returned as int16 when they are whole numbers inside
    the int16 range, else float32. ``image_id`` is the file name without its extension.
    """
    path = _existing(path, "path")
    if file_kind(path, "path") != "nifti":
        raise ArgumentError("path", f"{path} is not NIfTI; use load_nrrd_volume for NRRD")
    data, grid = _read_nifti(path)
    if not data.flags.writeable:  # inflated into bytes: give the caller an array of its own
        data = data.copy()
    return _study(data, grid, path)


def open_nifti_volume(path: str | Path) -> tuple[VoxelGrid, Callable[[Box], Study]]:
    """The axial grid of the NIfTI volume ``path`` (from its header) and a function that reads
    only the part ``box`` of it (axial z, y, x slices) as :func:`load_nifti_volume`'s study cut
    to ``box`` (:func:`~dmfn.client.io.crop.crop_study`).

    nibabel slices the file's data object: an uncompressed ``.nii`` reads only the bytes of the
    box's file slab; a ``.nii.gz`` is inflated up to the end of the slab (gzip cannot seek).
    """
    path = _existing(path, "path")
    if file_kind(path, "path") != "nifti":
        raise ArgumentError("path", f"{path} is not NIfTI; use load_nrrd_volume for NRRD")
    img, file_grid = _open_nifti(path)
    where = f"file {path}"
    try:
        grid = axial_grid(file_grid, where)
    except ValueError as err:
        raise ValueError(f"{where}: {err}") from err

    def read(box: Box) -> Study:
        z, y, x = source_box(box, file_grid, where)  # (z, y, x) of the file's grid
        extra = (0,) * (len(img.shape) - 3)
        try:
            data = np.asanyarray(
                img.dataobj[(x, y, z, *extra)]
                if len(img.shape) >= 3
                else (img.dataobj[x, y][:, :, None])
            )
        except Exception as err:
            raise ValueError(f"NIfTI file {path}: cannot be read ({one_line(err)})") from err
        part = VoxelGrid(
            shape=(z.stop - z.start, y.stop - y.start, x.stop - x.start),
            spacing_mm=file_grid.spacing_mm,
            origin_lps_mm=box_origin(file_grid, (z, y, x)),
            direction=file_grid.direction,
        )
        return _study(np.ascontiguousarray(reverse_axes(data)), part, path)

    return grid, read


def load_nrrd_volume(path: str | Path) -> Study:
    """A CT volume from an NRRD file (.nrrd / .nhdr): as :func:`load_nifti_volume` (LPS, RAS or
    LAS ``space``; reoriented into the axial layout, oblique volumes refused)."""
    path = _existing(path, "path")
    if file_kind(path, "path") != "nrrd":
        raise ArgumentError("path", f"{path} is not NRRD; use load_nifti_volume for NIfTI")
    data, grid, _ = _read_nrrd(path)
    if data.ndim != 3:
        raise ValueError(f"NRRD file {path}: must hold one 3D image, got shape {data.shape}")
    return _study(data, grid, path)


def _study(data: np.ndarray, grid: VoxelGrid, path: Path) -> Study:
    name = path.name
    for suffix in (".nii.gz", ".nii", ".nrrd", ".nhdr"):
        if name.lower().endswith(suffix):
            name = name[: -len(suffix)]
            break
    try:
        study = Study(
            hu=hu_from_values(data),
            spacing_mm=grid.spacing_mm,
            origin_lps_mm=grid.origin_lps_mm,
            direction=grid.direction,
            image_id=name,
        )
    except ValueError as err:  # e.g. NaN voxels or a non-numeric dtype
        raise ValueError(f"file {path}: not a usable CT volume: {err}") from err
    return to_axial(study, f"file {path}")


# --------------------------------------------------------------------------- masks
@dataclass(frozen=True)
class Segment:
    """One segment of a 3D Slicer segmentation: its name, layer and label value in that layer."""

    name: str
    layer: int
    label_value: int


def slicer_segments(header: dict, n_layers: int) -> list[Segment]:
    """The segments listed by ``SegmentN_*`` fields of a ``.seg.nrrd`` header, in order.

    Current Slicer files give ``SegmentN_Layer`` and ``SegmentN_LabelValue`` (several segments may
    share a layer with different values). Older files omit them and store segment N as the
    nonzero voxels of layer N (or of the only layer).
    """
    segments = []
    index = 0
    while f"Segment{index}_Name" in header or f"Segment{index}_ID" in header:
        name = str(header.get(f"Segment{index}_Name", header.get(f"Segment{index}_ID")))
        layer = int(header.get(f"Segment{index}_Layer", index if n_layers > 1 else 0))
        value = int(header.get(f"Segment{index}_LabelValue", 1))
        if not 0 <= layer < n_layers:
            raise ValueError(f"segment {name!r}: layer {layer} is not one of the {n_layers} layers")
        segments.append(Segment(name, layer, value))
        index += 1
    return segments


def load_mask(
    path: str | Path,
    like: Study | VoxelGrid,
    segment: str | int | None = None,
    reference: SeriesReference | None = None,
) -> np.ndarray:
    """A binary uint8 (z, y, x) lesion mask on the grid of ``like`` from NIfTI, NRRD or DICOM SEG.

    Args:
        path: .nii / .nii.gz / .nrrd / .nhdr label map, a 3D Slicer segmentation
            (``.seg.nrrd``, or any NRRD with ``SegmentN_Name``/``SegmentN_ID`` header fields),
            or a DICOM SEG (told by its content: the "DICM" marker, or a ``.dcm`` / ``.dicom``
            name; read by :func:`dmfn.client.io.seg.load_seg`, whose frames, like a Slicer
            segmentation, may cover a sub-box of the image).
        like: the study (or its grid) the mask belongs to. The file must be on exactly that
            voxel grid: same shape, spacing, origin and direction, up to an exact axis
            flip/permutation. Only a 3D Slicer segmentation may instead be a cropped sub-box
            (Slicer saves segmentations cropped to the segments): same spacing and direction up
            to a flip/permutation, its voxel centres on the image's voxel centres, entirely
            inside the image. Voxel centres must agree within
            ``orientation.GRID_TOLERANCE_VOXELS``; anything else (e.g. a label map one slice
            short of the image) raises ValueError naming the file
            (:func:`~dmfn.contract.orientation.place_on_grid`).
        segment: for a Slicer segmentation, the segment name (needed when it has several; the
            error lists the names). For a plain label map, the label value to keep (needed when
            the map holds several nonzero labels; the error lists them). For a DICOM SEG, the
            SegmentNumber (int or digits) or SegmentLabel (needed when it has several; the
            error lists them as number: label).
        reference: for a DICOM SEG, the image's series
            (:func:`~dmfn.client.io.read_dicom_series`): the SEG must then reference that
            series and frame of reference, and frames without a plane position are placed
            through their source SOP instance. None (e.g. a NIfTI image): only the geometry is
            checked. Ignored for NIfTI and NRRD masks.

    Returns:
        uint8 array of ``like``'s shape with values {0, 1}; an empty selection raises ValueError.
    """
    path = _existing(path, "path")
    grid = like.grid if isinstance(like, Study) else like
    if not isinstance(grid, VoxelGrid):
        raise ArgumentError("like", f"must be a Study or VoxelGrid, got {type(like).__name__}")
    if not path.name.lower().endswith(NIFTI_SUFFIXES + NRRD_SUFFIXES) and is_seg_candidate(path):
        return load_seg(path, grid, segment, reference).mask
    mask = read_label_mask(path, segment).on_grid(grid)
    return mask if mask.flags.writeable else mask.copy()  # a caller's own array, like the others


@dataclass(frozen=True)
class LabelMask:
    """A NIfTI / NRRD mask file's selected label or segment, read but not yet placed on an
    image: ``selection`` (z, y, x) bool on the file's own ``grid``; ``sub_box``: the file is a 3D
    Slicer segmentation (the only masks that may be a cropped box of the image)."""

    path: Path
    selection: np.ndarray
    grid: VoxelGrid
    sub_box: bool

    def on_grid(self, grid: VoxelGrid) -> np.ndarray:
        """The binary uint8 mask on ``grid`` (:func:`load_mask`'s rules and errors)."""
        name = f"mask file {self.path}"
        binary = self.selection.view(np.uint8)
        placed = place_on_grid(binary, self.grid, grid, name, sub_box=self.sub_box)
        return check_mask(placed, grid.shape, name=name)


def read_label_mask(path: str | Path, segment: str | int | None = None) -> LabelMask:
    """The NIfTI / NRRD mask file ``path`` read with ``segment`` selected (as :func:`load_mask`),
    before any image is known: the part of :func:`load_mask` that can run while the image's
    headers are read. ValueError for an empty selection or a bad file."""
    path = _existing(path, "path")
    selection, source, segmentation = _read_mask(path, segment)
    if not selection.any():
        raise ValueError(f"mask file {path}: the selected segment/label has no voxel")
    return LabelMask(path, np.asarray(selection, dtype=np.bool_), source, segmentation)


def _read_mask(path: Path, segment: str | int | None) -> tuple[np.ndarray, VoxelGrid, bool]:
    """(z, y, x) boolean selection, its grid, and whether the file is a 3D Slicer segmentation
    (a ``.seg.nrrd`` name or ``SegmentN_*`` header fields: the only masks that may be cropped)."""
    if file_kind(path, "path") == "nifti":
        data, source = _read_nifti(path)
        return _select_label(data, segment, path), source, False
    data, source, header = _read_nrrd(path)
    layers = data if data.ndim == 4 else data[None]
    try:
        segments = slicer_segments(header, layers.shape[0])
    except ValueError as err:
        raise ValueError(f"segmentation file {path}: {err}") from err
    segmentation = bool(segments) or path.name.lower().endswith(SEGMENTATION_SUFFIX)
    if segments:
        chosen = _pick_segment(segments, segment, path)
        return layers[chosen.layer] == chosen.label_value, source, segmentation
    if data.ndim == 3:
        return _select_label(data, segment, path), source, segmentation
    raise ValueError(
        f"NRRD file {path}: has {layers.shape[0]} layers but no SegmentN_Name fields; "
        "a mask file must be 3D or a 3D Slicer segmentation"
    )


def _pick_segment(segments: list[Segment], segment: str | int | None, path: Path) -> Segment:
    return choose_segment(
        segments, segment, path, listing=str([s.name for s in segments]), how="by name",
        matches=lambda s, text: s.name == text,
    )  # fmt: skip


def _select_label(data: np.ndarray, segment: str | int | None, path: Path) -> np.ndarray:
    """Boolean mask of one label of an integer label map (floats must hold whole numbers)."""
    if data.dtype.kind not in "biuf":
        raise ValueError(f"mask file {path}: dtype must be integer, got {data.dtype}")
    if data.dtype.kind == "f" and not (np.isfinite(data).all() and (data == np.rint(data)).all()):
        raise ValueError(
            f"mask file {path}: holds non-integer values (a probability map?); masks must hold "
            "integer labels, threshold it first"
        )
    # a binary map (most masks) is told by its range, two fast passes; else the labels of the
    # nonzero voxels only: sorting every voxel (np.unique of a 300x512x512 map) cost 0.75 s
    binary = data.dtype.kind in "iub" and data.size > 0 and data.min() >= 0 and data.max() <= 1
    if binary:
        labels = [1] if data.max() == 1 else []
    else:
        labels = [int(v) for v in np.unique(data[data != 0])]
    if segment is None:
        if len(labels) > 1:
            raise ArgumentError(
                "segment", f"required: {path} holds several labels {labels}, pick one"
            )
        if binary and data.dtype.itemsize == 1:
            return data.view(np.bool_)  # its bytes are 0 or 1 already: no copy
        return data != 0
    try:
        wanted = int(segment)
    except ValueError as err:
        raise ArgumentError(
            "segment",
            f"{path} is a plain label map, give a label value from {labels}, got {segment!r}",
        ) from err
    if wanted not in labels:
        raise ArgumentError("segment", f"label {wanted} is not in {path} (labels: {labels})")
    return data == wanted


# --------------------------------------------------------------------------- writers
def write_nifti_mask(
    mask: np.ndarray,
    spacing_mm: Sequence[float],
    path: str | Path,
    *,
    origin_lps_mm: Sequence[float] = (0.0, 0.0, 0.0),
    direction: np.ndarray | None = None,
) -> Path:
    """Write a (z, y, x) mask (uint8/bool, values {0, 1}) as a uint8 NIfTI file; return the path.

    ``spacing_mm`` (z, y, x) mm, ``origin_lps_mm`` (x, y, z) LPS mm of voxel [0, 0, 0],
    ``direction`` columns = LPS unit vectors of axes (z, y, x) (None = axial). The affine is
    stored in RAS as NIfTI requires, in both qform and sform (code 1, scanner), units mm.
    """
    grid = _grid_for(mask, "mask", spacing_mm, origin_lps_mm, direction)
    data = check_mask(np.asarray(mask), grid.shape, name="mask")
    return _write_nifti(data, grid, path)


def write_nifti_volume(
    hu: np.ndarray,
    spacing_mm: Sequence[float],
    path: str | Path,
    *,
    origin_lps_mm: Sequence[float] = (0.0, 0.0, 0.0),
    direction: np.ndarray | None = None,
) -> Path:
    """Write a (z, y, x) int16/float32 HU volume as NIfTI (geometry as :func:`write_nifti_mask`)."""
    grid = _grid_for(hu, "hu", spacing_mm, origin_lps_mm, direction)
    study = Study(hu, grid.spacing_mm, grid.origin_lps_mm, grid.direction)
    return _write_nifti(study.hu, grid, path)


def write_nrrd_mask(
    mask: np.ndarray,
    spacing_mm: Sequence[float],
    path: str | Path,
    *,
    origin_lps_mm: Sequence[float] = (0.0, 0.0, 0.0),
    direction: np.ndarray | None = None,
) -> Path:
    """Write a (z, y, x) mask as a gzip uint8 NRRD in LPS space (geometry as the NIfTI writer)."""
    grid = _grid_for(mask, "mask", spacing_mm, origin_lps_mm, direction)
    data = check_mask(np.asarray(mask), grid.shape, name="mask")
    path = Path(path)
    if not path.name.lower().endswith(".nrrd"):
        raise ValueError(f"argument 'path': {path} must end with .nrrd")
    header = {"encoding": "gzip", **nrrd_space_fields(grid)}
    nrrd.write(str(path), np.asfortranarray(reverse_axes(data)), header, index_order="F")
    return path


def _grid_for(
    array: np.ndarray, name: str, spacing_mm: object, origin_lps_mm: object, direction: object
) -> VoxelGrid:
    shape = np.shape(array)
    if len(shape) != 3:
        raise ValueError(f"argument '{name}': must be 3D (z, y, x), got shape {shape}")
    return VoxelGrid(
        shape=shape,
        spacing_mm=check_triple(spacing_mm, "spacing_mm", positive=True),
        origin_lps_mm=check_triple(origin_lps_mm, "origin_lps_mm"),
        direction=check_direction(direction),
    )


def _write_nifti(data: np.ndarray, grid: VoxelGrid, path: str | Path) -> Path:
    path = Path(path)
    if not path.name.lower().endswith(NIFTI_SUFFIXES):
        raise ValueError(f"argument 'path': {path} must end with .nii or .nii.gz")
    affine = nifti_affine(grid)
    img = nib.Nifti1Image(np.asfortranarray(reverse_axes(data)), affine)
    img.set_qform(affine, code=_XFORM_SCANNER)
    img.set_sform(affine, code=_XFORM_SCANNER)
    img.header.set_xyzt_units(xyz="mm")
    nib.save(img, path)
    return path
