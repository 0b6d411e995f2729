"""The DICOM SR of a prediction (client/sr.py): read back by highdicom to the same numbers, read
by dcmtk without a warning, deterministic, referencing the CT series and the SEG or mask file,
and refused for evidence that is not one CT series of one study."""

from __future__ import annotations

import csv
import dataclasses
import datetime
import io
import shutil
import subprocess
from pathlib import Path

import highdicom as hd
import numpy as np
import pydicom
import pytest
from pydicom.sr._concepts_dict import concepts
from pydicom.sr.codedict import codes
from pydicom.uid import generate_uid

from dmfn.client.io import write_dicom_series
from dmfn.client.sdk import Prediction
from dmfn.client.sr import (
    ClinicalUsed,
    MaskReference,
    build_prediction_sr,
    read_prediction_sr,
    write_prediction_sr,
)
from dmfn.contract import schema as S
from dmfn.contract.codes import PRIVATE_SCHEME, class_code, load_class_codes, parse_class_codes
from dmfn.contract.errors import InvalidInput
from dmfn.contract.predictions import Provenance
from dmfn.contract.study import Clinical, Study
from dmfn.contract.taxonomy import load_taxonomy
from dmfn.resources import data_file

SPACING = (2.5, 0.8, 0.8)
SHAPE = (12, 40, 40)
#: Fixed UIDs and date, so that two SRs can be compared byte-wise.
FIXED = {
    "series_instance_uid": "1.2.826.0.1.3680043.8.498.1",
    "sop_instance_uid": "1.2.826.0.1.3680043.8.498.2",
    "content_datetime": datetime.datetime(2026, 12, 6, 12, 0, 0),
}
CLINICAL = ClinicalUsed(
    54, "DICOM header PatientAge", "F", "command line", {"ctc_level_pg_ml": 12.5},
    "command line", "anterior", "command line",
)  # fmt: skip
TOLERANCE = 1e-6


def _hu(seed: int = 0) -> np.ndarray:
    return np.random.default_rng(seed).integers(-100, 200, SHAPE).astype(np.int16)


def _mask() -> np.ndarray:
    mask = np.zeros(SHAPE, np.uint8)
    mask[3:9, 12:28, 14:30] = 1
    return mask


def _series(folder: Path, seed: int = 0, **kwargs: object) -> list[pydicom.Dataset]:
    paths = write_dicom_series(
        _hu(seed), SPACING, folder, patient_id="DOE^JANE", uid_entropy=f"sr-test-{seed}",
        **kwargs,
    )  # fmt: skip
    return [pydicom.dcmread(p, stop_before_pixels=True) for p in paths]


@pytest.fixture
def ct(tmp_path: Path) -> list[pydicom.Dataset]:
    """The headers (no pixel data) of a small CT series."""
    return _series(tmp_path / "ct")


@pytest.fixture
def mask_file(tmp_path: Path) -> MaskReference:
    path = tmp_path / "mask.nii.gz"
    path.write_bytes(b"a stand-in for a NIfTI mask")
    return MaskReference.from_file(path)


def _prediction(**provenance: object) -> Prediction:
    names = load_taxonomy().names
    probs = np.random.default_rng(3).dirichlet(np.ones(len(names)))
    by_class = {n: float(p) for n, p in zip(names, probs, strict=True)}
    top = sorted(by_class.items(), key=lambda kv: -kv[1])[:3]
    fields = {"sha256": "ab" * 32, "trained": "2026-11-30", "synthetic": True,
              "temperature": 1.25, "name": "dmfn"}  # fmt: skip
    fields.update(provenance)
    return Prediction(
        probs=by_class, top3=tuple(top), malignant_prob=0.612345678901,
        management="biopsy-and-oncology",
        management_detail="uncertain (surgery 0.55, follow-up 0.40; none reaches 0.60)",
        measurements=dict(zip(S.MEASUREMENT_FIELDS, (4321.123, 210.5, 21.25, 12.5, 15.0), strict=True)),
        model_version="dmfn_pipeline/1", image_id="IMG-1", provenance=Provenance(**fields),
    )  # fmt: skip


def _bytes(sr: pydicom.Dataset) -> bytes:
    buffer = io.BytesIO()
    pydicom.dcmwrite(buffer, sr, enforce_file_format=True)
    return buffer.getvalue()


def _segmentation(ct: list[pydicom.Dataset], tmp_path: Path) -> pydicom.Dataset:
    """A one-segment binary SEG of the lesion on the CT's slices, made here with highdicom."""
    images = sorted(ct, key=lambda ds: float(ds.ImagePositionPatient[2]))
    description = hd.seg.SegmentDescription(
        segment_number=1, segment_label="lesion",
        segmented_property_category=codes.SCT.MorphologicallyAbnormalStructure,
        segmented_property_type=codes.SCT.Lesion,
        algorithm_type=hd.seg.SegmentAlgorithmTypeValues.MANUAL,
    )  # fmt: skip
    seg = hd.seg.Segmentation(
        source_images=images, pixel_array=_mask().astype(bool),
        segmentation_type=hd.seg.SegmentationTypeValues.BINARY,
        segment_descriptions=[description], series_instance_uid=generate_uid(), series_number=20,
        sop_instance_uid=generate_uid(), instance_number=1, manufacturer="test",
        manufacturer_model_name="test", software_versions="1", device_serial_number="1",
    )  # fmt: skip
    path = tmp_path / "seg.dcm"
    seg.save_as(path)
    return pydicom.dcmread(path)


def _check_round_trip(path: Path, prediction: Prediction) -> dict:
    back = read_prediction_sr(path)
    assert set(back["probs"]) == set(prediction.probs)
    for name, prob in prediction.probs.items():
        assert back["probs"][name] == pytest.approx(prob, abs=TOLERANCE), name
    predicted = max(prediction.probs, key=lambda n: prediction.probs[n])
    assert back["predicted"] == predicted == prediction.top3[0][0]
    assert back["predicted_prob"] == pytest.approx(prediction.probs[predicted], abs=TOLERANCE)
    assert back["malignant_prob"] == pytest.approx(prediction.malignant_prob, abs=TOLERANCE)
    assert back["management"] == prediction.management
    assert back["management_detail"] == (prediction.management_detail or prediction.management)
    assert back["model_sha256"] == prediction.provenance.sha256
    assert back["model_synthetic"] is prediction.provenance.synthetic
    assert set(back["measurements"]) == set(S.MEASUREMENT_FIELDS)
    for name, value in prediction.measurements.items():
        assert back["measurements"][name] == pytest.approx(value, abs=TOLERANCE), name
    return back


def _dsrdump(path: Path) -> str:
    """dsrdump's output for ``path``; fails on any warning or error it prints."""
    tool = shutil.which("dsrdump")
    if tool is None:
        pytest.skip("dcmtk's dsrdump is not installed (apt-get install dcmtk)")
    run = subprocess.run([tool, str(path)], capture_output=True, text=True, check=False)
    assert run.returncode == 0, run.stderr
    assert run.stderr == "", run.stderr
    validator = shutil.which("dciodvfy")
    if validator is not None:  # dicom3tools, where installed
        check = subprocess.run([validator, str(path)], capture_output=True, text=True, check=False)
        assert "Error" not in check.stderr, check.stderr
    return run.stdout


# --------------------------------------------------------------------------- content
def test_sr_reads_back_to_the_prediction_with_a_mask_file(
    ct: list[pydicom.Dataset], mask_file: MaskReference, tmp_path: Path
) -> None:
    prediction = _prediction()
    path = write_prediction_sr(
        prediction, ct, tmp_path / "sr.dcm", mask=mask_file, clinical_used=CLINICAL
    )
    back = _check_round_trip(path, prediction)
    assert "not a diagnosis" in back["disclaimer"] and "synthetic" in back["disclaimer"]
    sr = pydicom.dcmread(path)
    assert sr.StudyInstanceUID == ct[0].StudyInstanceUID
    assert sr.SeriesInstanceUID != ct[0].SeriesInstanceUID
    assert sr.PatientID == ct[0].PatientID
    assert sr.Modality == "SR"
    # the CT series is the evidence: every slice, one series
    (study,) = sr.CurrentRequestedProcedureEvidenceSequence
    (series,) = study.ReferencedSeriesSequence
    assert series.SeriesInstanceUID == ct[0].SeriesInstanceUID
    assert {i.ReferencedSOPInstanceUID for i in series.ReferencedSOPSequence} == {
        ds.SOPInstanceUID for ds in ct
    }
    (scheme,) = sr.CodingSchemeIdentificationSequence
    assert scheme.CodingSchemeDesignator == PRIVATE_SCHEME
    text = _dsrdump(path)
    for needle in ("Imaging Measurement Report", "mask.nii.gz", mask_file.file_sha256[:20],
                   "Management suggestion (dmfn local policy", "DICOM header PatientAge",
                   "ctc_level_pg_ml = 12.5", "(373066001,SCT,\"Yes\")"):  # fmt: skip
        assert needle in text, needle


def test_sr_references_the_seg_segment(ct: list[pydicom.Dataset], tmp_path: Path) -> None:
    seg = _segmentation(ct, tmp_path)
    prediction = _prediction()
    path = write_prediction_sr(
        prediction, [*ct, seg], tmp_path / "sr.dcm", mask=MaskReference.from_seg(seg, 1)
    )
    _check_round_trip(path, prediction)
    report = hd.sr.MeasurementReport.from_sequence(hd.sr.srread(path).content)
    (group,) = report.get_volumetric_roi_measurement_groups()
    segment = group.referenced_segment
    assert segment is not None
    assert segment.referenced_sop_instance_uid == seg.SOPInstanceUID
    assert segment.referenced_segment_numbers == [1]
    assert segment.has_source_images()
    assert {i.referenced_sop_instance_uid for i in segment.source_images_for_segmentation} == {
        ds.SOPInstanceUID for ds in ct
    }
    evidence = {series.SeriesInstanceUID for study in
                pydicom.dcmread(path).CurrentRequestedProcedureEvidenceSequence
                for series in study.ReferencedSeriesSequence}  # fmt: skip
    assert evidence == {ct[0].SeriesInstanceUID, seg.SeriesInstanceUID}
    _dsrdump(path)


def test_a_real_prediction_of_the_demo_model(ct: list[pydicom.Dataset], tmp_path: Path) -> None:
    """A LocalPredictor's Prediction (the committed demo model) survives the SR."""
    from dmfn.resources import demo_checkpoint
    from dmfn.training.inference import LocalPredictor

    study = Study(
        hu=_hu(), spacing_mm=SPACING, mask=_mask(), ctc={"ctc_level_pg_ml": 12.5},
        clinical=Clinical(54, "F", "anterior"), image_id="IMG-1",
    )  # fmt: skip
    prediction = LocalPredictor(demo_checkpoint()).predict(study)
    assert prediction.provenance.sha256 and prediction.provenance.synthetic is True
    mask = tmp_path / "mask.bin"
    mask.write_bytes(_mask().tobytes())
    path = write_prediction_sr(
        prediction, ct, tmp_path / "sr.dcm", mask=MaskReference.from_file(mask),
        clinical_used=CLINICAL,
    )  # fmt: skip
    _check_round_trip(path, prediction)
    _dsrdump(path)


# --------------------------------------------------------------------------- determinism
def test_same_prediction_same_bytes_and_provenance_changes_them(
    ct: list[pydicom.Dataset], mask_file: MaskReference
) -> None:
    prediction = _prediction()
    first = _bytes(
        build_prediction_sr(prediction, ct, mask=mask_file, clinical_used=CLINICAL, **FIXED)
    )
    again = _bytes(
        build_prediction_sr(prediction, ct[::-1], mask=mask_file, clinical_used=CLINICAL, **FIXED)
    )
    assert first == again
    # the served path and the in-process path differ in model_version only: the same SR
    local = dataclasses.replace(prediction, model_version="checkpoint", image_id="other")
    assert (
        _bytes(build_prediction_sr(local, ct, mask=mask_file, clinical_used=CLINICAL, **FIXED))
        == first
    )
    for change in ({"sha256": "cd" * 32}, {"synthetic": False}, {"temperature": 1.5},
                   {"trained": "2026-12-01"}, {"name": "cnn"}):  # fmt: skip
        other = _prediction(**change)
        built = build_prediction_sr(other, ct, mask=mask_file, clinical_used=CLINICAL, **FIXED)
        assert _bytes(built) != first, change


def test_uids_and_dates_are_the_callers(
    ct: list[pydicom.Dataset], mask_file: MaskReference
) -> None:
    sr = build_prediction_sr(_prediction(), ct, mask=mask_file, **FIXED)
    assert sr.SeriesInstanceUID == FIXED["series_instance_uid"]
    assert sr.SOPInstanceUID == FIXED["sop_instance_uid"]
    assert (str(sr.ContentDate), str(sr.ContentTime)) == ("20261206", "120000")
    assert (str(sr.InstanceCreationDate), str(sr.InstanceCreationTime)) == ("20261206", "120000")
    fresh = build_prediction_sr(_prediction(), ct, mask=mask_file)
    assert fresh.SOPInstanceUID != sr.SOPInstanceUID


# --------------------------------------------------------------------------- refusals
def test_no_evidence_is_refused(mask_file: MaskReference) -> None:
    with pytest.raises(InvalidInput, match="no image") as err:
        build_prediction_sr(_prediction(), [], mask=mask_file)
    assert err.value.name == "evidence"


def test_several_series_or_studies_are_refused(
    ct: list[pydicom.Dataset], mask_file: MaskReference, tmp_path: Path
) -> None:
    same_study = _series(tmp_path / "b", seed=1, study_uid=ct[0].StudyInstanceUID, series_number=2)
    with pytest.raises(InvalidInput, match="2 image series"):
        build_prediction_sr(_prediction(), [*ct, *same_study], mask=mask_file)
    other_study = _series(tmp_path / "c", seed=2)
    with pytest.raises(InvalidInput, match="2 studies"):
        build_prediction_sr(_prediction(), [*ct, *other_study], mask=mask_file)


def test_a_seg_of_another_series_is_refused(ct: list[pydicom.Dataset], tmp_path: Path) -> None:
    other = _series(tmp_path / "b", seed=1, study_uid=ct[0].StudyInstanceUID, series_number=2)
    seg = _segmentation(other, tmp_path)
    with pytest.raises(InvalidInput, match="references series") as err:
        build_prediction_sr(_prediction(), ct, mask=MaskReference.from_seg(seg, 1))
    assert err.value.name == "evidence"
    with pytest.raises(InvalidInput, match="segment_number"):
        MaskReference.from_seg(seg, 2)


def test_an_existing_output_is_kept_without_overwrite(
    ct: list[pydicom.Dataset], mask_file: MaskReference, tmp_path: Path
) -> None:
    path = tmp_path / "sr.dcm"
    path.write_bytes(b"earlier result")
    with pytest.raises(InvalidInput, match="overwrite") as err:
        write_prediction_sr(_prediction(), ct, path, mask=mask_file)
    assert err.value.name == "out"
    assert path.read_bytes() == b"earlier result"
    write_prediction_sr(_prediction(), ct, path, mask=mask_file, overwrite=True)
    assert read_prediction_sr(path)["model_sha256"] == "ab" * 32
    assert sorted(p.name for p in tmp_path.iterdir()) == ["ct", "mask.nii.gz", "sr.dcm"]


def test_a_failed_build_writes_nothing(
    ct: list[pydicom.Dataset], mask_file: MaskReference, tmp_path: Path
) -> None:
    path = tmp_path / "sr.dcm"
    with pytest.raises(InvalidInput):
        write_prediction_sr(_prediction(), [], path, mask=mask_file)
    assert not path.exists()


# --------------------------------------------------------------------------- class codes
def test_every_snomed_class_code_is_in_the_dicom_dictionary() -> None:
    """Each SCT code of class_codes.csv is one pydicom's PS3.16 dictionary holds, with a
    meaning that dictionary gives it (the codes were taken from there, not from memory)."""
    meanings: dict[str, set[str]] = {}
    for entry in concepts["SCT"].values():
        for code, (meaning, _cids) in entry.items():
            meanings.setdefault(code, set()).add(meaning.lower())
    rows = list(
        csv.DictReader(data_file("dmfn.contract", "class_codes.csv").read_text().splitlines())
    )
    assert rows
    for row in rows:
        assert row["scheme"] == "SCT", row
        known = meanings.get(row["code"], set())
        assert any(m.startswith(row["meaning"].lower()) for m in known), (row, known)


def test_every_class_gets_a_code() -> None:
    table = load_class_codes()
    assert set(table) <= set(load_taxonomy().names)
    for c in load_taxonomy().classes:
        code = class_code(c.name, c.display_name, table)
        if c.name not in table:
            assert (code.scheme, code.value, code.meaning) == (
                PRIVATE_SCHEME,
                c.name,
                c.display_name,
            )
    assert class_code("a_new_class").meaning == "a_new_class"


@pytest.mark.parametrize(
    ("text", "rule"),
    [
        ("class,scheme,code\n", "missing columns"),
        ("class,scheme,code,meaning\ncyst,LN,1,Cyst\n", "scheme must be one of"),
        ("class,scheme,code,meaning\ncyst,SCT,,Cyst\n", "empty"),
        ("class,scheme,code,meaning\ncyst,SCT,1,Cyst\ncyst,SCT,2,Cyst\n", "repeated"),
    ],
)
def test_bad_class_code_files_are_refused(text: str, rule: str) -> None:
    with pytest.raises(InvalidInput, match=rule):
        parse_class_codes(text, "codes.csv")
