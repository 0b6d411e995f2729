"""dmfn.client.manifest: reading and validating cohort manifests."""

from __future__ import annotations

import csv
from pathlib import Path

import numpy as np
import pytest

from dmfn.client.manifest import BASE_COLUMNS, read_manifest
from dmfn.contract.schema import AGE_RANGE_YEARS
from dmfn.contract.study import Clinical
from dmfn.contract.taxonomy import load_taxonomy
from dmfn.preprocess.pipeline import validate_clinical

TAXONOMY = load_taxonomy()
BENIGN = next(c for c in TAXONOMY.classes if not c.malignant).name
MALIGNANT = next(c for c in TAXONOMY.classes if c.malignant).name


def _row(patient: str, image: str, split: str, label: str = BENIGN, **extra: str) -> dict:
    group = "malignant" if TAXONOMY.classes[TAXONOMY.index(label)].malignant else "benign"
    row = {
        "patient_id": patient,
        "image_id": image,
        "image_path": f"images/{image}.nii.gz",
        "mask_path": f"masks/{image}.nrrd",
        "ctc_level_pg_ml": "12.5",
        "age_years": "54",
        "sex": "F",
        "location": "anterior",
        "label": label,
        "group": group,
        "split": split,
    }
    row.update(extra)
    return row


def write_manifest(folder: Path, rows: list[dict], columns: list[str] | None = None) -> Path:
    (folder / "images").mkdir(exist_ok=True)
    (folder / "masks").mkdir(exist_ok=True)
    for r in rows:
        for key in ("image_path", "mask_path"):
            if r.get(key):
                (folder / r[key]).touch()
    columns = columns or list(rows[0])
    path = folder / "manifest.csv"
    with path.open("w", newline="") as handle:
        writer = csv.DictWriter(handle, fieldnames=columns, extrasaction="ignore")
        writer.writeheader()
        writer.writerows(rows)
    return path


def good_rows() -> list[dict]:
    return [
        _row("P1", "P1_a", "train"),
        _row("P1", "P1_b", "train"),
        _row("P2", "P2_a", "val", MALIGNANT, sex="M", location="posterior"),
        _row("P3", "P3_a", "test"),
    ]


def test_reads_a_valid_manifest(tmp_path):
    manifest = read_manifest(write_manifest(tmp_path, good_rows()), TAXONOMY)
    assert len(manifest.rows) == 4
    assert manifest.patients() == ["P1", "P2", "P3"]
    assert manifest.patients("train") == ["P1"]
    assert [r.image_id for r in manifest.split("val")] == ["P2_a"]
    row = manifest.rows[2]
    assert row.image_path == tmp_path.resolve() / "images/P2_a.nii.gz"
    assert row.image_kind == "nifti"
    assert row.label_index == TAXONOMY.index(MALIGNANT)
    assert row.ctc == (12.5,)
    assert row.clinical.as_array().tolist() == [54.0, 1.0, 0.0, 0.0, 1.0]
    assert manifest.rows[0].line == 2


def test_dicom_folder_and_more_ctc_columns(tmp_path):
    rows = good_rows()
    for r in rows:
        r["ctc_count"] = "3"
    rows[0]["image_path"] = "dicom/P1_a"
    (tmp_path / "dicom/P1_a").mkdir(parents=True)
    path = write_manifest(tmp_path, rows)
    manifest = read_manifest(path, TAXONOMY, ctc_features=("ctc_level_pg_ml", "ctc_count"))
    assert manifest.rows[0].image_kind == "dicom"
    assert manifest.rows[0].ctc == (12.5, 3.0)
    with pytest.raises(ValueError, match=r"missing required columns \['ctc_other'\]"):
        read_manifest(path, TAXONOMY, ctc_features=("ctc_other",))


@pytest.mark.parametrize("column", [*BASE_COLUMNS, "ctc_level_pg_ml"])
def test_missing_column_is_named(tmp_path, column):
    rows = good_rows()
    columns = [c for c in rows[0] if c != column]
    path = write_manifest(tmp_path, rows, columns)
    with pytest.raises(
        ValueError,
        match=rf"argument 'manifest': .*manifest.csv: missing required columns \['{column}'\]",
    ):
        read_manifest(path, TAXONOMY)


@pytest.mark.parametrize(
    ("line", "change", "column", "message"),
    [
        (3, {"label": "dragon"}, "label", "'dragon' is not in the taxonomy"),
        (4, {"group": "benign"}, "group", "is malignant in the taxonomy"),
        (2, {"sex": "male"}, "sex", r"must be one of \('M', 'F'\)"),
        (5, {"location": "left"}, "location", "must be one of"),
        (5, {"split": "holdout"}, "split", "must be one of"),
        (2, {"age_years": "old"}, "age_years", "must be a number"),
        (2, {"age_years": "-3"}, "age_years", "in \\[0, 120\\]"),
        (2, {"age_years": "121"}, "age_years", "in \\[0, 120\\]"),
        (3, {"ctc_level_pg_ml": "nan"}, "ctc_level_pg_ml", "finite number"),
        (2, {"patient_id": ""}, "patient_id", "must not be empty"),
        (3, {"image_id": "P1_a"}, "image_id", "repeats line 2"),
        (3, {"split": "val"}, "split", "no patient leaks across splits"),
        (3, {"label": MALIGNANT, "group": "malignant"}, "label", "same for all images"),
        (2, {"image_path": "images/none.nii.gz"}, "image_path", "does not exist"),
        (2, {"mask_path": "images"}, "mask_path", "is a folder"),
    ],
)
def test_bad_rows_name_file_line_and_column(tmp_path, line, change, column, message):
    rows = good_rows()
    path = write_manifest(tmp_path, rows)
    rows[line - 2].update(change)
    with path.open("w", newline="") as handle:
        writer = csv.DictWriter(handle, fieldnames=list(rows[0]))
        writer.writeheader()
        writer.writerows(rows)
    with pytest.raises(
        ValueError, match=rf"manifest.csv line {line}, column '{column}': .*{message}"
    ):
        read_manifest(path, TAXONOMY)


def test_wrong_file_type_is_refused(tmp_path):
    rows = good_rows()
    rows[0]["image_path"] = "images/P1_a.png"
    path = write_manifest(tmp_path, rows)
    with pytest.raises(
        ValueError, match=r"line 2, column 'image_path': .*must be a DICOM folder.*'\.nrrd'"
    ):
        read_manifest(path, TAXONOMY)


def test_nrrd_images_are_accepted(tmp_path):
    rows = good_rows()
    rows[0]["image_path"] = "images/P1_a.nrrd"
    rows[1]["image_path"] = "images/P1_b.nhdr"
    manifest = read_manifest(write_manifest(tmp_path, rows), TAXONOMY)
    assert [r.image_kind for r in manifest.rows] == ["nrrd", "nrrd", "nifti", "nifti"]


def test_missing_or_empty_manifest(tmp_path):
    with pytest.raises(ValueError, match=r"argument 'manifest': file .* does not exist"):
        read_manifest(tmp_path / "nope.csv", TAXONOMY)
    path = write_manifest(tmp_path, good_rows()[:1])
    path.write_text(path.read_text().splitlines()[0] + "\n")
    with pytest.raises(ValueError, match="has no rows"):
        read_manifest(path, TAXONOMY)


@pytest.mark.parametrize("age", [-0.5, 0.0, 54.0, 119.9, 120.0, 120.5, 125.0, 130.0])
def test_clinical_manifest_and_preprocessing_agree_on_ages(tmp_path, age):
    """One age range (schema.AGE_RANGE_YEARS) for the Study record, the manifest and the server."""
    low, high = AGE_RANGE_YEARS
    accepted = low <= age <= high
    outcomes = []
    try:
        vector = Clinical(age, "F", "anterior").as_array()
        outcomes.append(True)
    except ValueError:
        vector = np.array([age, 0, 1, 0, 0], np.float32)
        outcomes.append(False)
    try:
        validate_clinical(vector)
        outcomes.append(True)
    except ValueError:
        outcomes.append(False)
    rows = good_rows()
    for r in rows:
        r["age_years"] = repr(age)
    try:
        read_manifest(write_manifest(tmp_path, rows), TAXONOMY)
        outcomes.append(True)
    except ValueError as err:
        assert "age_years" in str(err)
        outcomes.append(False)
    assert outcomes == [accepted] * 3, f"age {age}: Clinical, validate_clinical, manifest"
