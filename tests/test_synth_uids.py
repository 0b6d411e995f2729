"""DICOM identifiers of a synthetic cohort: one study and one series per image, globally unique
SOP instances."""

from __future__ import annotations

import csv
import shutil
from collections import Counter, defaultdict
from pathlib import Path

import pydicom
import pytest

from dmfn.client.io import DicomError, load_dicom_series
from dmfn.synth.cohort import generate_cohort

SEED = 5
N_PATIENTS = 8


def _rows(folder: Path) -> list[dict[str, str]]:
    with (folder / "manifest.csv").open() as fh:
        return list(csv.DictReader(fh))


def _headers(folder: Path) -> list[pydicom.Dataset]:
    return [pydicom.dcmread(p, stop_before_pixels=True) for p in sorted(folder.glob("*.dcm"))]


@pytest.fixture(scope="module")
def cohort(tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("uids")
    generate_cohort(out, "tiny", seed=SEED, workers=2, n_patients=N_PATIENTS)
    per_patient = Counter(r["patient_id"] for r in _rows(out))
    assert max(per_patient.values()) == 2, "the cohort must hold a patient with two images"
    return out


def test_every_image_has_its_own_series_and_every_slice_a_unique_sop(cohort: Path) -> None:
    rows = _rows(cohort)
    series_of_image: dict[str, set[str]] = {}
    sops: Counter[str] = Counter()
    for r in rows:
        headers = _headers(cohort / r["image_path"])
        series_of_image[r["image_id"]] = {str(ds.SeriesInstanceUID) for ds in headers}
        sops.update(str(ds.SOPInstanceUID) for ds in headers)
        assert all(ds.file_meta.MediaStorageSOPInstanceUID == ds.SOPInstanceUID for ds in headers)
    assert all(len(uids) == 1 for uids in series_of_image.values()), series_of_image
    all_series = [next(iter(uids)) for uids in series_of_image.values()]
    assert len(set(all_series)) == len(rows), "two images share a SeriesInstanceUID"
    duplicated = [uid for uid, n in sops.items() if n > 1]
    assert not duplicated, f"{len(duplicated)} SOPInstanceUIDs are duplicated"


def _one_uid_per_image(cohort: Path, keyword: str) -> dict[str, str]:
    """image_id -> the one value of ``keyword`` that all slices of the image share."""
    out = {}
    for r in _rows(cohort):
        uids = {str(ds.data_element(keyword).value) for ds in _headers(cohort / r["image_path"])}
        assert len(uids) == 1, (r["image_id"], keyword, uids)
        out[r["image_id"]] = next(iter(uids))
    return out


@pytest.mark.parametrize("keyword", ["StudyInstanceUID", "FrameOfReferenceUID"])
def test_every_image_is_its_own_study(cohort: Path, keyword: str) -> None:
    """As synth.cohort._uid_entropy documents: each image is its own study (a patient's second
    image is a repeat study) with its own frame of reference, the two images of one patient
    included (the cohort fixture holds such a patient)."""
    uid_of_image = _one_uid_per_image(cohort, keyword)
    shared = {u: n for u, n in Counter(uid_of_image.values()).items() if n > 1}
    assert not shared, f"images share a {keyword}: {shared}"


def test_two_images_of_one_patient_in_one_folder_ask_for_a_series(
    cohort: Path, tmp_path: Path
) -> None:
    images: dict[str, list[Path]] = defaultdict(list)
    for r in _rows(cohort):
        images[r["patient_id"]].append(cohort / r["image_path"])
    pair = next(folders for folders in images.values() if len(folders) == 2)
    both = tmp_path / "both"
    both.mkdir()
    uids = []
    for folder in pair:
        uids.append(str(_headers(folder)[0].SeriesInstanceUID))
        for path in folder.glob("*.dcm"):
            shutil.copy(path, both / path.name)
    assert len(list(both.glob("*.dcm"))) == sum(len(list(f.glob("*.dcm"))) for f in pair)
    with pytest.raises(DicomError, match="holds 2 CT series") as info:
        load_dicom_series(both)
    message = str(info.value)
    assert all(uid in message for uid in uids) and "gantry" not in message
    assert load_dicom_series(both, series_uid=uids[1]).image_id == uids[1]


@pytest.mark.slow
def test_uids_are_deterministic_for_a_seed(cohort: Path, tmp_path: Path) -> None:
    again = tmp_path / "again"
    generate_cohort(again, "tiny", seed=SEED, workers=1, n_patients=N_PATIENTS)
    for r in _rows(cohort):
        first = [
            (d.SeriesInstanceUID, d.SOPInstanceUID) for d in _headers(cohort / r["image_path"])
        ]
        second = [
            (d.SeriesInstanceUID, d.SOPInstanceUID) for d in _headers(again / r["image_path"])
        ]
        assert first == second
