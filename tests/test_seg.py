"""DICOM SEG lesion masks: written for a CT series, read back onto the image's grid exactly, and
refused with a one-line error naming the file when they belong to another image."""

from __future__ import annotations

import csv
import shutil
import subprocess
from pathlib import Path

import highdicom as hd
import numpy as np
import pydicom
import pytest
from pydicom.sr.codedict import codes

from dmfn.client.io import (
    ArgumentError,
    SeriesReference,
    load_mask,
    read_dicom_series,
    write_dicom_seg,
    write_dicom_series,
    write_nifti_mask,
)
from dmfn.client.io.seg import FRACTIONAL_THRESHOLD, is_dicom_seg
from dmfn.client.study_files import read_study_files
from dmfn.contract.study import Clinical, Study

SPACING = (2.5, 0.7, 0.9)
SHAPE = (9, 13, 11)  # odd sizes: 1-bit frames that do not end on a byte boundary
#: Array axes (z, y, x) -> LPS: axial stacked head -> feet (file order reversed) and coronal.
REVERSED_Z = np.array([[0.0, 0.0, 1.0], [0.0, 1.0, 0.0], [-1.0, 0.0, 0.0]])
CORONAL = np.array([[0.0, 0.0, 1.0], [1.0, 0.0, 0.0], [0.0, -1.0, 0.0]])


def _series(folder: Path, direction: np.ndarray | None = None, entropy: str = "a") -> Path:
    hu = np.random.default_rng(0).integers(-100, 100, SHAPE).astype(np.int16)
    write_dicom_series(
        hu, SPACING, folder, direction=direction, uid_entropy=entropy, origin_lps_mm=(-5, 3, 40)
    )
    return folder


def _lesion(shape: tuple[int, ...]) -> np.ndarray:
    mask = np.zeros(shape, np.uint8)
    mask[2:4, 3:7, 2:6] = 1
    mask[6, 1, 1] = 1  # a second, non-contiguous piece: slices 4 and 5 hold no lesion
    return mask


@pytest.fixture
def axial(tmp_path: Path) -> tuple[Study, SeriesReference, Path]:
    study, reference = read_dicom_series(_series(tmp_path / "ct"))
    seg = write_dicom_seg(_lesion(study.shape), reference, tmp_path / "seg.dcm")
    return study, reference, seg


def _one_line_naming(err: pytest.ExceptionInfo, path: Path) -> None:
    message = str(err.value)
    assert "\n" not in message and str(path) in message, message


# --------------------------------------------------------------------------- round trips
@pytest.mark.parametrize("direction", [None, REVERSED_Z, CORONAL], ids=["axial", "rev-z", "cor"])
@pytest.mark.parametrize("fractional", [False, True], ids=["binary", "fractional"])
def test_round_trip_is_exact(
    tmp_path: Path, direction: np.ndarray | None, fractional: bool
) -> None:
    study, reference = read_dicom_series(_series(tmp_path / "ct", direction))
    mask = _lesion(study.shape)
    seg = write_dicom_seg(mask, tmp_path / "ct", tmp_path / "seg.dcm", fractional=fractional)
    ds = pydicom.dcmread(seg)
    assert ds.SegmentationType == ("FRACTIONAL" if fractional else "BINARY")
    normal = np.cross(
        *np.reshape([float(v) for v in reference.headers[0].ImageOrientationPatient], (2, 3))
    )
    axis = int(np.abs(study.direction.T @ normal).argmax())  # the study axis across the frames
    others = tuple(a for a in range(3) if a != axis)
    assert int(ds.NumberOfFrames) == int(mask.any(axis=others).sum())  # empty frames omitted
    np.testing.assert_array_equal(load_mask(seg, study, reference=reference), mask)
    np.testing.assert_array_equal(load_mask(seg, study), mask)  # geometry alone (no reference)


def test_written_seg_references_the_series_and_codes_the_lesion(axial: tuple) -> None:
    _, reference, seg = axial
    ds = pydicom.dcmread(seg)
    assert ds.ReferencedSeriesSequence[0].SeriesInstanceUID == reference.series_uid
    assert ds.FrameOfReferenceUID == reference.frame_of_reference_uid
    assert ds.StudyInstanceUID == reference.study_uid
    segment = ds.SegmentSequence[0]
    assert segment.SegmentLabel == "lesion" and segment.SegmentAlgorithmType == "MANUAL"
    assert segment.SegmentedPropertyCategoryCodeSequence[0].CodeValue == "49755003"
    assert segment.SegmentedPropertyTypeCodeSequence[0].CodeValue == "4147007"
    assert ds.ContentDate == "20000101" and ds.InstanceCreationDate == "20000101"


def test_writing_is_reproducible_and_does_not_overwrite(tmp_path: Path, axial: tuple) -> None:
    study, reference, _ = axial
    mask = _lesion(study.shape)
    a = write_dicom_seg(mask, reference, tmp_path / "a.dcm", uid_entropy="x")
    b = write_dicom_seg(mask, reference, tmp_path / "b.dcm", uid_entropy="x")
    assert a.read_bytes() == b.read_bytes()
    with pytest.raises(ArgumentError, match="exists"):
        write_dicom_seg(mask, reference, a)
    with pytest.raises(ValueError, match="mask"):
        write_dicom_seg(mask[:-1], reference, tmp_path / "c.dcm")


def test_detected_by_content_whatever_the_name(tmp_path: Path, axial: tuple) -> None:
    study, reference, seg = axial
    plain = tmp_path / "1.2.3.4"
    shutil.copy(seg, plain)
    assert is_dicom_seg(plain)
    np.testing.assert_array_equal(load_mask(plain, study, reference=reference), _lesion(SHAPE))


def test_frames_without_plane_positions_map_through_their_sop_uid(
    tmp_path: Path, axial: tuple
) -> None:
    study, reference, seg = axial
    ds = pydicom.dcmread(seg)
    for item in ds.PerFrameFunctionalGroupsSequence:
        del item.PlanePositionSequence
    stripped = tmp_path / "stripped.dcm"
    ds.save_as(stripped)
    np.testing.assert_array_equal(load_mask(stripped, study, reference=reference), _lesion(SHAPE))
    with pytest.raises(ValueError, match="no plane position") as err:
        load_mask(stripped, study)  # no series to look the SOP instances up in
    _one_line_naming(err, stripped)


# --------------------------------------------------------------------------- segments, fractions
def _highdicom_seg(
    reference: SeriesReference, pixels: np.ndarray, kind: str, labels: list[str], path: Path
) -> Path:
    """A SEG written by highdicom itself: ``pixels`` (slice, row, column[, segment]) in the order
    of ``reference.headers``."""
    descriptions = [
        hd.seg.SegmentDescription(
            i + 1, label, codes.SCT.MorphologicallyAbnormalStructure, codes.SCT.Mass, "MANUAL"
        )
        for i, label in enumerate(labels)
    ]
    seg = hd.seg.Segmentation(
        list(reference.headers), pixels, kind, descriptions, hd.UID(), 7, hd.UID(), 1,
        "test", "test", "1", "1", max_fractional_value=200,
    )  # fmt: skip
    seg.save_as(path)
    return path


@pytest.fixture
def two_segments(tmp_path: Path) -> tuple[Study, SeriesReference, Path, np.ndarray]:
    with pytest.warns(UserWarning, match="person name"):
        study, reference = read_dicom_series(_series(tmp_path / "ct"))
        pixels = np.zeros((*SHAPE, 2), np.uint8)
        pixels[1:3, 2:5, 2:5, 0] = 1
        pixels[5, 8:10, 6:9, 1] = 1
        seg = _highdicom_seg(reference, pixels, "BINARY", ["lesion", "node"], tmp_path / "s.dcm")
    return study, reference, seg, pixels


def test_several_segments_by_number_or_label(two_segments: tuple) -> None:
    study, reference, seg, pixels = two_segments
    for choice in (2, "2", "node"):
        np.testing.assert_array_equal(
            load_mask(seg, study, segment=choice, reference=reference), pixels[..., 1]
        )
    np.testing.assert_array_equal(load_mask(seg, study, "lesion", reference), pixels[..., 0])
    with pytest.raises(ArgumentError, match=r"2 segments.*1: 'lesion', 2: 'node'") as err:
        load_mask(seg, study, reference=reference)
    assert err.value.argument == "segment"
    with pytest.raises(ArgumentError, match=r"'tumour' is not a segment.*1: 'lesion'"):
        load_mask(seg, study, "tumour", reference)


def test_label_map_seg_by_label(tmp_path: Path) -> None:
    study, reference = read_dicom_series(_series(tmp_path / "ct"))
    pixels = np.zeros((*SHAPE, 2), np.uint8)
    pixels[1:3, 2:5, 2:5, 0] = 1
    pixels[5, 8:10, 6:9, 1] = 1
    with pytest.warns(UserWarning, match="person name"):
        seg = _highdicom_seg(reference, pixels, "LABELMAP", ["lesion", "node"], tmp_path / "l.dcm")
    for k, label in enumerate(("lesion", "node")):
        np.testing.assert_array_equal(load_mask(seg, study, label, reference), pixels[..., k])


def test_fractional_threshold_is_half_the_maximum(tmp_path: Path) -> None:
    study, reference = read_dicom_series(_series(tmp_path / "ct"))
    fractions = np.zeros(SHAPE, np.float32)
    fractions[2, 2:4, 2:4] = FRACTIONAL_THRESHOLD + 0.01
    fractions[3, 2:4, 2:4] = FRACTIONAL_THRESHOLD - 0.01
    fractions[4, 5, 5] = 1.0
    with pytest.warns(UserWarning, match="person name"):
        seg = _highdicom_seg(reference, fractions, "FRACTIONAL", ["lesion"], tmp_path / "f.dcm")
    assert pydicom.dcmread(seg).MaximumFractionalValue == 200
    np.testing.assert_array_equal(
        load_mask(seg, study, reference=reference), (fractions >= 0.5).astype(np.uint8)
    )


# --------------------------------------------------------------------------- refusals
def test_seg_of_another_series_is_refused(tmp_path: Path, axial: tuple) -> None:
    _, _, seg = axial
    other_study, other = read_dicom_series(_series(tmp_path / "other", entropy="b"))
    with pytest.raises(
        ValueError, match=rf"references series .*not the image's series {other.series_uid}"
    ) as err:
        load_mask(seg, other_study, reference=other)
    _one_line_naming(err, seg)


def test_seg_of_another_frame_of_reference_is_refused(tmp_path: Path, axial: tuple) -> None:
    study, reference, seg = axial
    ds = pydicom.dcmread(seg)
    ds.FrameOfReferenceUID = "1.2.3.4.5"
    moved = tmp_path / "for.dcm"
    ds.save_as(moved)
    with pytest.raises(ValueError, match=r"FrameOfReferenceUID 1\.2\.3\.4\.5 differs") as err:
        load_mask(moved, study, reference=reference)
    _one_line_naming(err, moved)


@pytest.mark.parametrize(("axis", "rule"), [(0, "does not match"), (2, "slice grid")])
def test_seg_off_the_image_grid_is_refused(
    tmp_path: Path, axial: tuple, axis: int, rule: str
) -> None:
    """Frames shifted half a pixel in x (in-plane), or half a slice in z."""
    study, reference, seg = axial
    ds = pydicom.dcmread(seg)
    step = SPACING[2] / 2 if axis == 0 else SPACING[0] / 2
    items = list(ds.PerFrameFunctionalGroupsSequence)
    moved_items = items if axis == 0 else items[:1]
    for item in moved_items:
        position = [float(v) for v in item.PlanePositionSequence[0].ImagePositionPatient]
        position[axis] += step
        item.PlanePositionSequence[0].ImagePositionPatient = position
    shifted = tmp_path / "shifted.dcm"
    ds.save_as(shifted)
    with pytest.raises(ValueError, match=rule) as err:
        load_mask(shifted, study, reference=reference)
    _one_line_naming(err, shifted)


@pytest.mark.parametrize("cut", [100, 600, -40])
def test_truncated_or_corrupt_seg_is_refused_in_one_line(
    tmp_path: Path, axial: tuple, cut: int
) -> None:
    study, reference, seg = axial
    broken = tmp_path / "broken.dcm"
    broken.write_bytes(seg.read_bytes()[:cut])
    with pytest.raises(ValueError) as err:
        load_mask(broken, study, reference=reference)
    _one_line_naming(err, broken)


def test_garbage_and_non_seg_dicom_are_refused(tmp_path: Path, axial: tuple) -> None:
    study, reference, _ = axial
    garbage = tmp_path / "garbage.dcm"
    garbage.write_bytes(b"\x00\x01 not DICOM at all " * 20)
    with pytest.raises(ValueError) as err:
        load_mask(garbage, study, reference=reference)
    _one_line_naming(err, garbage)
    ct_slice = reference.headers[0].filename
    with pytest.raises(ValueError, match="not a DICOM Segmentation") as err:
        load_mask(ct_slice, study, reference=reference)
    _one_line_naming(err, Path(ct_slice))


# --------------------------------------------------------------------------- independent reader
def test_dcmdump_reads_the_written_seg(axial: tuple) -> None:
    dcmdump = shutil.which("dcmdump")
    if dcmdump is None:
        pytest.skip("dcmdump (dcmtk) is not installed: apt-get install dcmtk")
    _, _, seg = axial
    done = subprocess.run(
        [dcmdump, "-E", str(seg)], capture_output=True, text=True, check=False, timeout=60
    )
    assert done.returncode == 0, done.stderr
    assert "SegmentationStorage" in done.stdout or "SEG" in done.stdout
    assert "error" not in done.stderr.lower() and "warn" not in done.stderr.lower(), done.stderr


# --------------------------------------------------------------------------- same predictions
def _study_files(out: Path, row: dict[str, str], mask_column: str) -> object:
    return read_study_files(
        out / row["image_path"],
        out / row[mask_column],
        {"ctc_level_pg_ml": float(row["ctc_level_pg_ml"])},
        Clinical(float(row["age_years"]), row["sex"], row["location"]),
        image_id=row["image_id"],
    )


def test_nifti_and_seg_of_one_lesion_give_identical_probabilities(tiny_cohort: tuple) -> None:
    from dmfn.resources import demo_checkpoint
    from dmfn.training.inference import LocalPredictor

    out, row = tiny_cohort
    from_nifti = _study_files(out, row, "mask_path")
    from_seg = _study_files(out, row, "seg_path")
    assert from_nifti.mask_dataset is None and from_seg.mask_dataset.Modality == "SEG"
    assert "PixelData" not in from_seg.mask_dataset
    referenced = from_seg.mask_dataset.ReferencedSeriesSequence[0].SeriesInstanceUID
    assert from_seg.series.series_uid == referenced
    np.testing.assert_array_equal(from_nifti.study.mask, from_seg.study.mask)
    predictor = LocalPredictor(demo_checkpoint(), audit=False)
    a, b = predictor.predict(from_nifti.study), predictor.predict(from_seg.study)
    assert a.probs == b.probs and a.malignant_prob == b.malignant_prob
    assert a.measurements == b.measurements


def test_predict_cli_takes_a_seg_mask(tiny_cohort: tuple, capsys: pytest.CaptureFixture) -> None:
    from dmfn.predict_cli import main as predict_main
    from dmfn.resources import demo_checkpoint

    out, row = tiny_cohort
    code = predict_main(
        [
            str(out / row["image_path"]),
            "--mask", str(out / row["seg_path"]), "--segment", "1",
            "--ctc", row["ctc_level_pg_ml"], "--age", row["age_years"], "--sex", row["sex"],
            "--location", row["location"], "--checkpoint", str(demo_checkpoint()), "--json",
        ]
    )  # fmt: skip
    captured = capsys.readouterr()
    assert code == 0, captured.err
    assert '"probs"' in captured.out or "probabilit" in captured.out.lower(), captured.out


def test_nifti_mask_of_a_seg_series_still_needs_no_reference(tmp_path: Path) -> None:
    """A NIfTI mask ignores ``reference``; a SEG read against a NIfTI image checks geometry."""
    study, reference = read_dicom_series(_series(tmp_path / "ct"))
    mask = _lesion(study.shape)
    nifti = write_nifti_mask(
        mask, study.spacing_mm, tmp_path / "m.nii.gz", origin_lps_mm=study.origin_lps_mm
    )
    np.testing.assert_array_equal(load_mask(nifti, study, reference=reference), mask)


def test_manifest_mask_path_may_be_a_seg(tiny_cohort: tuple, tmp_path: Path) -> None:
    from dmfn.client.manifest import load_row_study, read_manifest

    out, row = tiny_cohort
    manifest = tmp_path / "manifest.csv"
    with manifest.open("w", newline="") as handle:
        writer = csv.DictWriter(handle, fieldnames=list(row))
        writer.writeheader()
        writer.writerow(
            {
                **row,
                "image_path": str(out / row["image_path"]),
                "mask_path": str(out / row["seg_path"]),
            }
        )
    (parsed,) = read_manifest(manifest, None, labelled=False).rows
    study = load_row_study(parsed, ("ctc_level_pg_ml",))
    np.testing.assert_array_equal(study.mask, _study_files(out, row, "mask_path").study.mask)
