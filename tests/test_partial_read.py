"""The partial read (``read_study_files(..., crop_margin_mm=...)``): only what the request sends
is read, and the request is the full study's, byte for byte, on every loader and orientation."""

from __future__ import annotations

from pathlib import Path

import nrrd
import numpy as np
import pytest

import dmfn.client.io.dicom as dicom_module
from dmfn.client.io import (
    read_dicom_series,
    write_dicom_seg,
    write_dicom_series,
    write_nifti_mask,
    write_nifti_volume,
)
from dmfn.client.io.crop import crop_box
from dmfn.client.study_files import StudyFiles, read_study_files
from dmfn.contract.orientation import direction_from_iop, nrrd_space_fields, reverse_axes
from dmfn.contract.server import ServerContract
from dmfn.contract.study import AXIAL_DIRECTION, Clinical
from dmfn.contract.wire import build_request

MARGIN_MM = 3.0
CONTRACT = ServerContract(MARGIN_MM, ("ctc_level_pg_ml",), ("a", "b"))
SPACING = (2.0, 0.7, 0.8)
SHAPE = (20, 24, 28)
ORIGIN = (-10.0, 20.0, -30.0)
#: Directions of the written series (columns z, y, x); the loader lays each out axially.
DIRECTIONS = {
    "axial": AXIAL_DIRECTION,
    "reversed_z": AXIAL_DIRECTION * np.array([-1.0, 1.0, 1.0])[None, :],  # read back z-reversed
    "coronal": direction_from_iop([1, 0, 0, 0, 0, -1]),
    "sagittal": direction_from_iop([0, 1, 0, 0, 0, -1]),
}
#: Which axial axis the file's slice axis becomes (the decoded slice count is the crop's size
#: along it).
SLICE_AXIS = {"axial": 0, "reversed_z": 0, "coronal": 1, "sagittal": 2}
#: Lesion boxes on the axial grid (z, y, x half-open): inside, and at the volume's edges
#: (the margin is clipped there).
LESIONS = {
    "inside": (slice(8, 12), slice(9, 14), slice(10, 15)),
    "edge": (slice(0, 3), slice(-4, None), slice(0, 5)),
}


def _lesion_mask(shape: tuple[int, int, int], lesion: str) -> np.ndarray:
    mask = np.zeros(shape, np.uint8)
    mask[LESIONS[lesion]] = 1
    return mask


def _hu(seed: int = 3) -> np.ndarray:
    return np.random.default_rng(seed).integers(-1000, 1500, SHAPE).astype(np.int16)


def _files(folder: Path, orientation: str, lesion: str, mask_kind: str) -> tuple[Path, Path, int]:
    """A DICOM series of ``orientation``, a mask of ``lesion`` (NIfTI or SEG) on the study's
    grid, and the number of slice files."""
    series = folder / "ct"
    write_dicom_series(
        _hu(), SPACING, series, origin_lps_mm=ORIGIN, direction=DIRECTIONS[orientation],
        uid_entropy=f"{orientation}-{lesion}",
    )  # fmt: skip
    study, reference = read_dicom_series(series)
    mask = _lesion_mask(study.shape, lesion)
    if mask_kind == "seg":
        mask_path = write_dicom_seg(mask, reference, folder / "mask.dcm", uid_entropy="seg")
    else:
        mask_path = write_nifti_mask(
            mask, study.spacing_mm, folder / "mask.nii.gz",
            origin_lps_mm=study.origin_lps_mm, direction=study.direction,
        )  # fmt: skip
    return series, mask_path, len(reference.headers)


def _read(image: Path, mask: Path, margin: float | None) -> StudyFiles:
    return read_study_files(
        image, mask, {"ctc_level_pg_ml": 12.0}, Clinical(55.0, "F", "anterior"),
        crop_margin_mm=margin,
    )  # fmt: skip


def _assert_same_request(full: StudyFiles, part: StudyFiles) -> None:
    a, b = build_request(full.study, CONTRACT), build_request(part.study, CONTRACT)
    assert a.keys() == b.keys()
    for name in a:
        assert a[name].dtype == b[name].dtype and a[name].shape == b[name].shape, name
        assert [bytes(v) for v in a[name].ravel()] == [bytes(v) for v in b[name].ravel()], name


def _assert_exact_sub_volume(full: StudyFiles, part: StudyFiles) -> None:
    """The partial study is the full one's crop with its geometry: origin at the box's first
    voxel, the same spacing and direction."""
    assert full.study.mask is not None
    box = crop_box(full.study.mask, full.study.grid, MARGIN_MM)
    np.testing.assert_array_equal(part.study.hu, full.study.hu[box])
    np.testing.assert_array_equal(part.study.mask, full.study.mask[box])
    assert part.study.spacing_mm == full.study.spacing_mm
    np.testing.assert_array_equal(part.study.direction, full.study.direction)
    expected = full.study.grid.index_to_lps([b.start for b in box])
    np.testing.assert_allclose(part.study.origin_lps_mm, expected, atol=1e-9)
    assert part.study.image_id == full.study.image_id
    assert part.study.study_uid == full.study.study_uid


@pytest.mark.parametrize("orientation", sorted(DIRECTIONS))
@pytest.mark.parametrize("lesion", sorted(LESIONS))
@pytest.mark.parametrize("mask_kind", ["nifti", "seg"])
def test_dicom_partial_read_sends_the_full_reads_request(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, orientation: str, lesion: str, mask_kind: str
) -> None:
    series, mask_path, n_files = _files(tmp_path, orientation, lesion, mask_kind)
    full = _read(series, mask_path, None)
    decoded: list[Path] = []
    read_slice = dicom_module._read_slice

    def counting(header, rows, columns):  # type: ignore[no-untyped-def]  # observes the reads
        decoded.append(header.path)
        return read_slice(header, rows, columns)

    monkeypatch.setattr(dicom_module, "_read_slice", counting)
    part = _read(series, mask_path, MARGIN_MM)
    _assert_same_request(full, part)
    _assert_exact_sub_volume(full, part)
    needed = part.study.shape[SLICE_AXIS[orientation]]
    assert len(decoded) == len(set(decoded)) == needed < n_files
    assert part.series == full.series and part.mask_segment == full.mask_segment
    if lesion == "edge":  # the margin is clipped at the volume's edges
        grow = [int(np.ceil(MARGIN_MM / s)) for s in full.study.spacing_mm]
        assert part.study.shape[0] == 3 + grow[0] and part.study.shape[1] == 4 + grow[1]
        assert part.study.shape[2] == 5 + grow[2]


@pytest.mark.parametrize("suffix", [".nii", ".nii.gz", ".nrrd"])
@pytest.mark.parametrize("lesion", sorted(LESIONS))
def test_volume_file_partial_read_sends_the_full_reads_request(
    tmp_path: Path, suffix: str, lesion: str
) -> None:
    """NIfTI (sliced lazily by nibabel) and NRRD (read whole, then cut), written sagittal so
    that the file's axes are permuted and flipped against the axial layout."""
    direction = DIRECTIONS["sagittal"]
    image = tmp_path / f"ct{suffix}"
    if suffix == ".nrrd":
        from dmfn.contract.study import VoxelGrid

        grid = VoxelGrid(SHAPE, SPACING, ORIGIN, direction)
        nrrd.write(
            str(image), np.asfortranarray(reverse_axes(_hu())),
            {"encoding": "gzip", **nrrd_space_fields(grid)}, index_order="F",
        )  # fmt: skip
    else:
        write_nifti_volume(_hu(), SPACING, image, origin_lps_mm=ORIGIN, direction=direction)
    from dmfn.client.io import load_image

    axial = load_image(image)
    mask = _lesion_mask(axial.shape, lesion)
    mask_path = write_nifti_mask(
        mask, axial.spacing_mm, tmp_path / "mask.nii.gz",
        origin_lps_mm=axial.origin_lps_mm, direction=axial.direction,
    )  # fmt: skip
    full, part = _read(image, mask_path, None), _read(image, mask_path, MARGIN_MM)
    _assert_same_request(full, part)
    _assert_exact_sub_volume(full, part)
    assert part.study.hu.size < full.study.hu.size


def test_float_hu_outside_the_crop_does_not_change_the_request(tmp_path: Path) -> None:
    """A fractional rescale makes the full volume float32; the crop of whole HU may come back
    int16, and the request (int16 on the wire) is the same."""
    hu = _hu().astype(np.float32)
    hu[0, 0, 0] += 0.5  # far from the lesion
    image = write_nifti_volume(hu, SPACING, tmp_path / "ct.nii", origin_lps_mm=ORIGIN)
    from dmfn.client.io import load_image

    axial = load_image(image)
    assert axial.hu.dtype == np.float32
    mask = np.zeros(axial.shape, np.uint8)
    mask[10:13, 10:14, 10:15] = 1
    mask_path = write_nifti_mask(
        mask, axial.spacing_mm, tmp_path / "mask.nii.gz", origin_lps_mm=axial.origin_lps_mm
    )
    full, part = _read(image, mask_path, None), _read(image, mask_path, MARGIN_MM)
    _assert_same_request(full, part)


def test_partial_read_refuses_what_the_full_read_refuses(tmp_path: Path) -> None:
    """A mask off the image's grid fails the same way with or without a margin."""
    series, _, _ = _files(tmp_path, "axial", "inside", "nifti")
    wrong = write_nifti_mask(
        np.ones((3, 4, 5), np.uint8), SPACING, tmp_path / "small.nii.gz", origin_lps_mm=ORIGIN
    )
    for margin in (None, MARGIN_MM):
        with pytest.raises(ValueError, match=r"small\.nii\.gz"):
            _read(series, wrong, margin)
