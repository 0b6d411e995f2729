"""DICOM Segmentation (SEG) lesion masks: read onto an image's voxel grid, and write for a series.

Reading (:func:`load_seg`, called by :func:`dmfn.client.io.load_mask` for any file with the
"DICM" marker or a ``.dcm`` / ``.dicom`` name) accepts BINARY and FRACTIONAL SEG (and LABELMAP,
where a voxel's value is its segment number). A FRACTIONAL voxel is in the lesion when its
stored value is at least half of MaximumFractionalValue (probability or occupancy >= 0.5).

Frames are placed by their PlanePositionSequence ImagePositionPatient (with the plane
orientation and pixel spacing of the per-frame or shared functional groups); a frame without a
plane position is placed at the position of the CT slice it was derived from (its
DerivationImageSequence / SourceImageSequence ReferencedSOPInstanceUID, looked up in the
image's :class:`~dmfn.client.io.dicom.SeriesReference`). The frames of the chosen segment make
the SEG's own grid (lowest frame along the slice normal first, the image's slice spacing; a
slice without a frame is empty), which must then lie on the image's voxel grid
(:func:`~dmfn.contract.orientation.place_on_grid`, flips/permutations undone, no interpolation).

Refused, each with a one-line ValueError naming the file and the rule: a file that is not a
DICOM SEG or cannot be parsed (truncated, corrupt), a SEG of another series or frame of
reference than the image (checked only when the image's SeriesReference is known, i.e. a DICOM
image), frames off the image's slice grid or voxel grid, an empty selection.
"""

from __future__ import annotations

import datetime
import logging
import warnings
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pydicom
from pydicom.sr.codedict import codes

from dmfn.client.io.bounded import check_voxels
from dmfn.client.io.crop import axial_grid
from dmfn.client.io.dicom import (
    DicomError,
    SeriesReference,
    _check_declared_sizes,
    read_dicom_series,
)
from dmfn.client.io.dicom_header import SliceHeader
from dmfn.client.io.errors import ArgumentError, one_line
from dmfn.client.io.segments import choose_segment
from dmfn.contract.orientation import (
    GRID_TOLERANCE_VOXELS,
    direction_from_iop,
    place_on_grid,
)
from dmfn.contract.study import VoxelGrid, check_mask

log = logging.getLogger(__name__)

#: SOP classes read as masks: Segmentation Storage and Label Map Segmentation Storage.
SEGMENTATION_STORAGE = "1.2.840.10008.5.1.4.1.1.66.4"
LABEL_MAP_SEGMENTATION_STORAGE = "1.2.840.10008.5.1.4.1.1.66.7"
SEG_SOP_CLASSES = (SEGMENTATION_STORAGE, LABEL_MAP_SEGMENTATION_STORAGE)
#: File name endings tried as DICOM SEG even without the "DICM" marker.
SEG_FILE_SUFFIXES = (".dcm", ".dicom")
#: A FRACTIONAL voxel is lesion when value >= this fraction of MaximumFractionalValue.
FRACTIONAL_THRESHOLD = 0.5
#: Largest distance of a frame from its slice of the SEG's grid, in voxels (as place_on_grid).
FRAME_TOLERANCE_VOXELS = GRID_TOLERANCE_VOXELS
#: Written into the SEG's dates so that the same inputs give the same file (no wall clock).
FIXED_CONTENT_DATETIME = datetime.datetime(2000, 1, 1, 0, 0, 0)
#: Segment property written for the lesion (codes from pydicom's bundled SNOMED CT dictionary).
LESION_CATEGORY = codes.SCT.MorphologicallyAbnormalStructure  # SCT 49755003
LESION_TYPE = codes.SCT.Mass  # SCT 4147007


class SegError(ValueError):
    """A DICOM SEG file that cannot give a lesion mask for the image; the message says why."""


@dataclass(frozen=True)
class SegSegment:
    """One segment of a SEG: its SegmentNumber and SegmentLabel."""

    number: int
    label: str


@dataclass(frozen=True)
class SegMask:
    """A SEG read onto an image's grid: ``mask`` uint8 (z, y, x) {0, 1} on ``like``'s grid,
    ``dataset`` the SEG's header (no pixel data), ``segment`` the segment chosen."""

    mask: np.ndarray
    dataset: pydicom.Dataset
    segment: SegSegment


# --------------------------------------------------------------------------- detection
def has_dicm_marker(path: str | Path) -> bool:
    """True when ``path`` holds the DICOM Part-10 marker "DICM" at byte 128."""
    with Path(path).open("rb") as handle:
        head = handle.read(132)
    return len(head) == 132 and head[128:] == b"DICM"


def is_seg_candidate(path: str | Path) -> bool:
    """True for a file that must be read as DICOM SEG: the "DICM" marker, or a ``.dcm`` /
    ``.dicom`` name (a damaged SEG then gets a SEG error, not "unknown suffix")."""
    path = Path(path)
    if path.name.lower().endswith(SEG_FILE_SUFFIXES):
        return True
    try:
        return has_dicm_marker(path)
    except OSError as err:
        raise SegError(f"mask file {path}: cannot be read ({one_line(err)})") from None


def is_dicom_seg(path: str | Path) -> bool:
    """True when ``path`` is a readable DICOM file whose SOP class is a Segmentation (or whose
    Modality is SEG); decided from its content, whatever its name."""
    try:
        if not has_dicm_marker(path):
            return False
        ds = pydicom.dcmread(
            path, stop_before_pixels=True, specific_tags=["SOPClassUID", "Modality"]
        )
    except Exception:  # unreadable: not a SEG we can use
        return False
    return str(ds.get("SOPClassUID", "")) in SEG_SOP_CLASSES or ds.get("Modality") == "SEG"


# --------------------------------------------------------------------------- reading
def load_seg(
    path: str | Path,
    like: VoxelGrid,
    segment: str | int | None = None,
    reference: SeriesReference | None = None,
) -> SegMask:
    """One segment of the DICOM SEG ``path`` as a uint8 (z, y, x) {0, 1} mask on grid ``like``.

    Args:
        path: the SEG file (BINARY, FRACTIONAL or LABELMAP).
        like: the image's grid (axial layout, see :func:`dmfn.client.io.load_mask`).
        segment: SegmentNumber (an int, or a str of digits) or SegmentLabel; needed when the
            SEG has several segments (the :class:`ArgumentError` lists them as number: label).
        reference: the image's series (:func:`~dmfn.client.io.read_dicom_series`). When given,
            the SEG must reference that series and frame of reference, and frames without a
            plane position are placed through their source SOP instance. When None (a NIfTI or
            NRRD image), only the geometry is checked.
    """
    path = Path(path)
    header = _read_header(path)
    name = f"DICOM SEG file {path}"
    try:
        segments = seg_segments(header)
        chosen = _pick_segment(segments, segment, path)
        _check_reference(header, reference)
        native, source = _native_mask(path, header, chosen, like, reference)
    except (ArgumentError, DicomError):
        raise
    except SegError as err:
        raise SegError(f"{name}: {err}") from err
    except Exception as err:  # pydicom raises many types for malformed datasets
        raise SegError(f"{name}: malformed Segmentation ({one_line(err)})") from err
    if not native.any():
        raise SegError(f"{name}: segment {chosen.number} ({chosen.label!r}) has no voxel")
    placed = place_on_grid(native, source, like, name, sub_box=True)
    return SegMask(check_mask(placed, like.shape, name=name), header, chosen)


def seg_segments(ds: pydicom.Dataset) -> list[SegSegment]:
    """The segments of a SEG dataset (SegmentSequence), in file order."""
    return [
        SegSegment(int(item.SegmentNumber), str(item.get("SegmentLabel", "") or ""))
        for item in ds.get("SegmentSequence", [])
    ]


def _read_header(path: Path) -> pydicom.Dataset:
    """The SEG's header (no pixel data); refuses non-SEG, unreadable and oversized files."""
    try:
        ds = pydicom.dcmread(path, stop_before_pixels=True, force=not has_dicm_marker(path))
    except Exception as err:
        raise SegError(f"DICOM SEG file {path}: unreadable ({one_line(err)})") from err
    sop_class = str(ds.get("SOPClassUID", ""))
    if not sop_class and not has_dicm_marker(path):
        raise SegError(
            f"DICOM SEG file {path}: not a DICOM file (no DICM marker and no SOPClassUID; "
            "truncated or another format?)"
        )
    if sop_class not in SEG_SOP_CLASSES and ds.get("Modality") != "SEG":
        raise SegError(
            f"DICOM SEG file {path}: not a DICOM Segmentation (SOPClassUID {sop_class or 'none'}, "
            f"Modality {ds.get('Modality', 'none')}); masks must be SEG, NIfTI or NRRD"
        )
    for keyword in ("Rows", "Columns", "SegmentSequence"):
        if keyword not in ds:
            raise SegError(f"DICOM SEG file {path}: has no {keyword} (truncated or incomplete?)")
    _check_declared_sizes(path, [SliceHeader.from_dataset(path, ds)])
    return ds


def _pick_segment(segments: list[SegSegment], wanted: str | int | None, path: Path) -> SegSegment:
    """The segment named by ``wanted`` (number, digits or label), or the only one."""
    if not segments:
        raise SegError("lists no segment (empty SegmentSequence)")
    return choose_segment(
        segments, wanted, path, listing=segment_listing(segments), how="by number or label",
        matches=lambda s, text: (text.isdigit() and s.number == int(text)) or s.label == text,
    )  # fmt: skip


def _check_reference(ds: pydicom.Dataset, reference: SeriesReference | None) -> None:
    """Refuse a SEG of another series or frame of reference than ``reference``'s."""
    if reference is None:
        return
    series = sorted(
        {str(item.SeriesInstanceUID) for item in ds.get("ReferencedSeriesSequence", [])}
    )
    if series and reference.series_uid not in series:
        raise SegError(
            f"references series {', '.join(series)}, not the image's series "
            f"{reference.series_uid}; a SEG is usable only with the series it was drawn on"
        )
    frame_uid = str(ds.get("FrameOfReferenceUID", "") or "")
    if (
        frame_uid
        and reference.frame_of_reference_uid
        and frame_uid != reference.frame_of_reference_uid
    ):
        raise SegError(
            f"FrameOfReferenceUID {frame_uid} differs from the image's "
            f"{reference.frame_of_reference_uid}; it was not drawn in the image's coordinates"
        )


def _functional(ds: pydicom.Dataset, frame: int, keyword: str) -> pydicom.Dataset | None:
    """The first item of functional group ``keyword`` of ``frame``: per-frame, else shared."""
    per_frame = ds.get("PerFrameFunctionalGroupsSequence")
    groups = [per_frame[frame]] if per_frame is not None and frame < len(per_frame) else []
    shared = ds.get("SharedFunctionalGroupsSequence")
    groups += [shared[0]] if shared else []
    for group in groups:
        items = group.get(keyword)
        if items:
            return items[0]
    return None


def _source_uids(ds: pydicom.Dataset, frame: int) -> list[str]:
    """ReferencedSOPInstanceUIDs of the images ``frame`` was derived from."""
    per_frame = ds.get("PerFrameFunctionalGroupsSequence")
    if per_frame is None or frame >= len(per_frame):
        return []
    return [
        str(source.ReferencedSOPInstanceUID)
        for derivation in per_frame[frame].get("DerivationImageSequence", [])
        for source in derivation.get("SourceImageSequence", [])
        if "ReferencedSOPInstanceUID" in source
    ]


def _segment_frames(ds: pydicom.Dataset, chosen: SegSegment, n_frames: int) -> list[int]:
    """Indices of the frames holding ``chosen`` (all frames of a LABELMAP SEG)."""
    if str(ds.get("SOPClassUID", "")) == LABEL_MAP_SEGMENTATION_STORAGE:
        return list(range(n_frames))
    frames = []
    for frame in range(n_frames):
        item = _functional(ds, frame, "SegmentIdentificationSequence")
        if item is None:
            raise SegError(f"frame {frame + 1} has no SegmentIdentificationSequence")
        if int(item.ReferencedSegmentNumber) == chosen.number:
            frames.append(frame)
    return frames


def _frame_position(
    ds: pydicom.Dataset, frame: int, reference: SeriesReference | None
) -> np.ndarray:
    """LPS (x, y, z) mm of ``frame``'s first pixel: its plane position, else its source slice's."""
    item = _functional(ds, frame, "PlanePositionSequence")
    if item is not None and "ImagePositionPatient" in item:
        return np.asarray([float(v) for v in item.ImagePositionPatient], dtype=np.float64)
    uids = _source_uids(ds, frame)
    if reference is None:
        raise SegError(
            f"frame {frame + 1} has no plane position, and its source instance cannot be looked "
            "up without the image's DICOM series (give the image as a DICOM folder)"
        )
    for uid in uids:
        if uid in reference.sop_positions:
            return np.asarray(reference.sop_positions[uid], dtype=np.float64)
    raise SegError(
        f"frame {frame + 1} has no plane position and none of its source instances "
        f"{uids or '(none listed)'} is a slice of the image's series {reference.series_uid}"
    )


def _plane(ds: pydicom.Dataset, frames: list[int]) -> tuple[np.ndarray, tuple[float, float]]:
    """Direction (columns z, y, x) and pixel spacing (row, column) mm shared by ``frames``."""
    orientations, spacings = set(), set()
    for frame in frames:
        orientation = _functional(ds, frame, "PlaneOrientationSequence")
        measures = _functional(ds, frame, "PixelMeasuresSequence")
        if orientation is None or measures is None or "PixelSpacing" not in measures:
            raise SegError(f"frame {frame + 1} has no plane orientation or pixel spacing")
        orientations.add(tuple(round(float(v), 6) for v in orientation.ImageOrientationPatient))
        spacings.add(tuple(round(float(v), 6) for v in measures.PixelSpacing))
    if len(orientations) > 1 or len(spacings) > 1:
        raise SegError(
            f"frames differ in orientation {sorted(orientations)} or pixel spacing "
            f"{sorted(spacings)}; one segment must be on one grid"
        )
    row_mm, col_mm = spacings.pop()
    return direction_from_iop(orientations.pop()), (row_mm, col_mm)


def _native_mask(
    path: Path,
    ds: pydicom.Dataset,
    chosen: SegSegment,
    like: VoxelGrid,
    reference: SeriesReference | None,
) -> tuple[np.ndarray, VoxelGrid]:
    """The chosen segment on the SEG's own grid: ``(mask (z, y, x) uint8, grid)``."""
    n_frames = int(ds.get("NumberOfFrames", 1) or 1)
    frames = _segment_frames(ds, chosen, n_frames)
    if not frames:
        raise SegError(f"segment {chosen.number} ({chosen.label!r}) has no frame")
    direction, (row_mm, col_mm) = _plane(ds, frames)
    positions = np.stack([_frame_position(ds, f, reference) for f in frames])
    slice_mm = _spacing_along(like, direction[:, 0])
    slices, origin = _slice_indices(positions, direction, (slice_mm, row_mm, col_mm))
    shape = (int(slices.max()) + 1, int(ds.Rows), int(ds.Columns))
    check_voxels("its grid", "slices x Rows x Columns", list(shape), error=SegError)
    selected = _selected_pixels(path, ds, chosen, frames)
    native = np.zeros(shape, dtype=np.uint8)
    for k, pixels in zip(slices, selected, strict=True):
        native[k] |= pixels
    grid = VoxelGrid(shape, (slice_mm, row_mm, col_mm), tuple(origin), direction)
    return native, grid


def _spacing_along(like: VoxelGrid, normal: np.ndarray) -> float:
    """Spacing (mm) of the image axis closest to the SEG's slice normal."""
    axis = int(np.abs(np.asarray(like.direction).T @ normal).argmax())
    return float(like.spacing_mm[axis])


def _slice_indices(
    positions: np.ndarray,
    direction: np.ndarray,
    spacing_mm: tuple[float, float, float],
) -> tuple[np.ndarray, np.ndarray]:
    """Slice index of each frame (positions (n, 3) LPS mm) on a grid starting at the lowest frame
    along the normal with the image's slice spacing, and that grid's origin; frames off it raise."""
    normal = direction[:, 0]
    offsets = positions @ normal
    lowest = int(offsets.argmin())
    origin = positions[lowest]
    steps = (offsets - offsets[lowest]) / spacing_mm[0]
    slices = np.rint(steps).astype(np.int64)
    expected = origin[None, :] + (slices * spacing_mm[0])[:, None] * normal[None, :]
    # Mismatch in voxels along each grid axis (z, y, x).
    mismatch = np.abs((positions - expected) @ direction) / np.asarray(spacing_mm)[None, :]
    worst = int(mismatch.max(axis=1).argmax())
    if mismatch[worst].max() > FRAME_TOLERANCE_VOXELS:
        raise SegError(
            f"its frames do not lie on the image's slice grid (a frame at "
            f"{np.round(positions[worst], 3).tolist()} mm is {mismatch[worst].max():.3g} voxels off "
            f"a {spacing_mm[0]:g} mm slice step from the lowest frame; tolerance "
            f"{FRAME_TOLERANCE_VOXELS})"
        )
    return slices, origin


def _selected_pixels(
    path: Path, ds_header: pydicom.Dataset, chosen: SegSegment, frames: list[int]
) -> list[np.ndarray]:
    """Per chosen frame, its (rows, columns) uint8 {0, 1} selection (fractional thresholded)."""
    try:
        full = pydicom.dcmread(path, force=not has_dicm_marker(path))
        pixels = np.asarray(full.pixel_array)
    except Exception as err:
        raise SegError(f"pixel data cannot be read ({one_line(err)})") from err
    pixels = pixels.reshape((-1, int(ds_header.Rows), int(ds_header.Columns)))
    kind = str(ds_header.get("SegmentationType", "BINARY")).upper()
    if kind == "FRACTIONAL":
        maximum = float(ds_header.MaximumFractionalValue)
        return [(pixels[f] >= FRACTIONAL_THRESHOLD * maximum).astype(np.uint8) for f in frames]
    if kind == "LABELMAP":
        return [(pixels[f] == chosen.number).astype(np.uint8) for f in frames]
    if kind != "BINARY":
        raise SegError(f"SegmentationType {kind!r} is not supported")
    return [(pixels[f] != 0).astype(np.uint8) for f in frames]


# --------------------------------------------------------------------------- writing
def write_dicom_seg(
    mask: np.ndarray,
    source: str | Path | SeriesReference,
    path: str | Path,
    *,
    label: str = "lesion",
    fractional: bool = False,
    algorithm: str | None = None,
    series_uid: str | None = None,
    series_number: int = 100,
    uid_entropy: str | None = None,
    overwrite: bool = False,
) -> Path:
    """Write the lesion ``mask`` as a one-segment DICOM SEG of the CT series ``source``.

    Args:
        mask: uint8/bool (z, y, x) {0, 1} on the grid of the Study loaded from that series
            (axial layout, :func:`~dmfn.client.io.load_dicom_series`); it is mapped back to
            the series' slices (whose file order may be z reversed, or coronal/sagittal) by
            position, exactly.
        source: the series' folder (read with :func:`~dmfn.client.io.read_dicom_series`) or its
            :class:`~dmfn.client.io.dicom.SeriesReference`.
        path: the file to write (its folder must exist).
        label: SegmentLabel; the segmented property is SCT 49755003 "Morphologically abnormal
            structure" / SCT 4147007 "Mass".
        fractional: write a FRACTIONAL SEG (values 0 / 255, MaximumFractionalValue 255)
            instead of BINARY.
        algorithm: None = drawn by hand (SegmentAlgorithmType MANUAL); else the name of the
            program that made the mask (AUTOMATIC, algorithm family DCM 128480 "Analytical
            Algorithm").
        series_uid, series_number: the SEG's series; ``series_uid`` defaults to one derived
            from ``uid_entropy`` (random when None), like every UID of the file.
        uid_entropy: makes every UID, and so the file, reproducible; the file's dates are
            :data:`FIXED_CONTENT_DATETIME` whatever this says.
        overwrite: replace an existing ``path`` (else ValueError naming it).

    Only the frames holding lesion voxels are written. Returns ``path``.
    """
    import highdicom as hd

    path = Path(path)
    if path.exists() and not overwrite:
        raise ArgumentError("path", f"{path} exists; pass overwrite=True to replace it")
    reference = source if isinstance(source, SeriesReference) else read_dicom_series(source)[1]
    frames = _mask_by_slice(mask, reference)
    segment = hd.seg.SegmentDescription(
        segment_number=1,
        segment_label=label,
        segmented_property_category=LESION_CATEGORY,
        segmented_property_type=LESION_TYPE,
        algorithm_type="MANUAL" if algorithm is None else "AUTOMATIC",
        algorithm_identification=None
        if algorithm is None
        else hd.AlgorithmIdentificationSequence(
            name=algorithm, family=codes.DCM.AnalyticalAlgorithm, version="1"
        ),
    )

    def uid(kind: str) -> str:
        entropy = None if uid_entropy is None else [uid_entropy, "seg", kind]
        return str(pydicom.uid.generate_uid(entropy_srcs=entropy))

    when = FIXED_CONTENT_DATETIME
    with warnings.catch_warnings():  # single-component PatientName copied from the source
        warnings.filterwarnings("ignore", message=".*unlikely to represent the intended person")
        seg = hd.seg.Segmentation(
            source_images=list(reference.headers),
            pixel_array=frames.astype(np.float32) if fractional else frames,
            segmentation_type="FRACTIONAL" if fractional else "BINARY",
            segment_descriptions=[segment],
            series_instance_uid=series_uid or uid("series"),
            series_number=int(series_number),
            sop_instance_uid=uid("instance"),
            instance_number=1,
            manufacturer="dmfn",
            manufacturer_model_name="dmfn",
            software_versions=_version(),
            device_serial_number="0",
            series_description=f"{label} mask (DICOM SEG)",
            content_date=when.date(),
            content_time=when.time(),
            series_date=when.date(),
            series_time=when.time(),
        )
    _fix_generated_values(seg, uid("dimension-organization"))
    seg.save_as(path, enforce_file_format=True)
    return path


def _fix_generated_values(seg: pydicom.Dataset, organization_uid: str) -> None:
    """Replace what highdicom draws from the clock or at random (creation and contribution
    times, the dimension organization UID) by :data:`FIXED_CONTENT_DATETIME` and
    ``organization_uid``, so that the same inputs give the same bytes."""
    seg.InstanceCreationDate = FIXED_CONTENT_DATETIME.strftime("%Y%m%d")
    seg.InstanceCreationTime = FIXED_CONTENT_DATETIME.strftime("%H%M%S")
    for item in seg.get("ContributingEquipmentSequence", []):
        if "ContributionDateTime" in item:
            item.ContributionDateTime = FIXED_CONTENT_DATETIME.strftime("%Y%m%d%H%M%S")
    for keyword in ("DimensionOrganizationSequence", "DimensionIndexSequence"):
        for item in seg.get(keyword, []):
            if "DimensionOrganizationUID" in item:
                item.DimensionOrganizationUID = organization_uid


def _mask_by_slice(mask: np.ndarray, reference: SeriesReference) -> np.ndarray:
    """``mask`` (axial layout of the series' Study) as (slice, row, column) in the order of
    ``reference.headers``; ValueError when it is not on that series' grid."""
    file_grid = series_grid(reference)
    axial = axial_grid(file_grid, "series")
    data = check_mask(np.asarray(mask), axial.shape, name="mask")
    return place_on_grid(data, axial, file_grid, "argument 'mask'")


def series_grid(reference: SeriesReference) -> VoxelGrid:
    """The voxel grid of the series in file order: (slice, row, column) of ``reference.headers``."""
    first = reference.headers[0]
    direction = direction_from_iop(first.ImageOrientationPatient)
    origin = np.asarray([float(v) for v in first.ImagePositionPatient])
    if len(reference.headers) > 1:
        last = np.asarray([float(v) for v in reference.headers[-1].ImagePositionPatient])
        slice_mm = float((last - origin) @ direction[:, 0]) / (len(reference.headers) - 1)
    else:
        slice_mm = float(first.SliceThickness)
    row_mm, col_mm = (float(v) for v in first.PixelSpacing)
    shape = (len(reference.headers), int(first.Rows), int(first.Columns))
    return VoxelGrid(shape, (slice_mm, row_mm, col_mm), tuple(origin), direction)


def _version() -> str:
    from dmfn import __version__

    return str(__version__)


def segment_listing(segments: Sequence[SegSegment]) -> str:
    """``"1: 'lesion', 2: 'node'"``: segments as the errors list them."""
    return ", ".join(f"{s.number}: {s.label!r}" for s in segments)
