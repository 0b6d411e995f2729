"""The PACS round trip against a real Orthanc with its DICOMweb plugin: a synthetic study and its
SEG uploaded (STOW-RS), ``dmfn predict --dicomweb ... --store``, the SR read back from Orthanc,
checked by dcmtk's dsrdump and by highdicom against the CSV prediction of the same study; and the
studies that must be refused with one line and nothing written to the PACS."""

from __future__ import annotations

import csv
import shutil
import subprocess
from collections.abc import Iterator
from pathlib import Path

import pydicom
import pytest
from orthanc import orthanc_or_skip, orthanc_series, running_orthanc
from pydicom.uid import generate_uid

from dmfn.client.sr import read_prediction_sr
from dmfn.contract.predictions import PROB_PREFIX
from dmfn.predict_cli import main as predict_main
from dmfn.resources import demo_checkpoint

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def cohort(tmp_path_factory: pytest.TempPathFactory) -> list[dict[str, str]]:
    """Five synthetic patients of the demo preset (one study each), with their SEGs."""
    from dmfn.synth import generate_cohort

    out = tmp_path_factory.mktemp("pacs_cohort")
    manifest = generate_cohort(out / "cohort", "demo", seed=23, n_patients=5, readers_per_group=0)
    with open(manifest, newline="") as handle:
        rows = list(csv.DictReader(handle))
    for row in rows:
        for column in ("image_path", "mask_path", "seg_path"):
            row[column] = str(manifest.parent / row[column])
    return rows[:5]


@pytest.fixture(scope="module")
def pacs(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    orthanc_or_skip()
    with running_orthanc(tmp_path_factory.mktemp("orthanc")) as url:
        yield url


def _ct(row: dict[str, str]) -> list[pydicom.Dataset]:
    return [pydicom.dcmread(p) for p in sorted(Path(row["image_path"]).glob("*.dcm"))]


def _store(url: str, datasets: list[pydicom.Dataset]) -> None:
    from dicomweb_client.api import DICOMwebClient

    DICOMwebClient(url).store_instances(datasets)


def _renumbered(datasets: list[pydicom.Dataset], study_uid: str | None = None) -> list:
    """Copies as a new series (new series and instance UIDs), optionally in another study."""
    series_uid = generate_uid()
    out = []
    for ds in datasets:
        copy = pydicom.dcmread(ds.filename) if ds.filename else ds
        copy.SeriesInstanceUID = series_uid
        copy.SOPInstanceUID = generate_uid()
        copy.file_meta.MediaStorageSOPInstanceUID = copy.SOPInstanceUID
        if study_uid is not None:
            copy.StudyInstanceUID = study_uid
        out.append(copy)
    return out


def _srs(url: str, study_uid: str) -> list[dict]:
    return [s for s in orthanc_series(url, study_uid) if s["MainDicomTags"].get("Modality") == "SR"]


def _predict(args: list[str]) -> int:
    return predict_main([*args, "--checkpoint", str(demo_checkpoint())])


def _pacs_args(url: str, row: dict[str, str]) -> list[str]:
    study_uid = _ct(row)[0].StudyInstanceUID
    return ["--dicomweb", url, "--study-uid", study_uid, "--ctc", row["ctc_level_pg_ml"],
            "--location", row["location"]]  # fmt: skip


def test_round_trip_stores_an_sr_that_dsrdump_and_highdicom_read(
    cohort: list[dict[str, str]], pacs: str, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    row = cohort[0]
    ct = _ct(row)
    _store(pacs, [*ct, pydicom.dcmread(row["seg_path"])])
    local_csv = tmp_path / "local.csv"
    assert _predict([row["image_path"], "--mask", row["mask_path"], "--ctc",
                     row["ctc_level_pg_ml"], "--age", row["age_years"], "--sex", row["sex"],
                     "--location", row["location"], "--out", str(local_csv)]) == 0  # fmt: skip
    sr_file = tmp_path / "report.dcm"
    assert _predict([*_pacs_args(pacs, row), "--store", "--sr", str(sr_file)]) == 0
    err = capsys.readouterr().err
    assert "chosen" in err and "DICOM PatientAge" in err and "DICOM PatientSex" in err

    stored = _srs(pacs, ct[0].StudyInstanceUID)
    assert len(stored) == 1
    from dicomweb_client.api import DICOMwebClient

    series_uid = stored[0]["MainDicomTags"]["SeriesInstanceUID"]
    (back,) = DICOMwebClient(pacs).retrieve_series(ct[0].StudyInstanceUID, series_uid)
    from_pacs = tmp_path / "from_pacs.dcm"
    back.save_as(from_pacs, enforce_file_format=True)
    if shutil.which("dsrdump") is None:
        pytest.skip("dcmtk's dsrdump is missing (make setup installs dcmtk as root)")
    dump = subprocess.run(["dsrdump", str(from_pacs)], capture_output=True, text=True)
    assert dump.returncode == 0, dump.stderr
    assert dump.stderr.strip() == "", dump.stderr
    read = read_prediction_sr(from_pacs)
    with open(local_csv, newline="") as handle:
        image_row = next(r for r in csv.DictReader(handle) if r["level"] == "image")
    for column, value in image_row.items():
        if column.startswith(PROB_PREFIX):
            assert read["probs"][column[len(PROB_PREFIX) :]] == pytest.approx(
                float(value), abs=1e-6
            )
    assert read["malignant_prob"] == pytest.approx(float(image_row["malignant_prob"]), abs=1e-6)
    assert read_prediction_sr(sr_file)["probs"] == read["probs"]


def _refused(url: str, row: dict[str, str], study_uid: str, capsys, words: str) -> None:
    args = _pacs_args(url, row)
    args[args.index("--study-uid") + 1] = study_uid
    assert _predict([*args, "--store"]) == 2
    err = capsys.readouterr().err
    # the refusal is one line, the last; before it only what was chosen (series, SEG, age/sex)
    *told, refusal = err.strip().splitlines()
    assert words in refusal and "Traceback" not in err, err
    assert all(line.startswith(("dmfn predict: CT series", "dmfn predict: SEG series",
                                "dmfn predict: age")) for line in told), told  # fmt: skip
    assert _srs(url, study_uid) == []


def test_seg_of_another_series_is_refused(cohort, pacs: str, capsys) -> None:
    ct = _ct(cohort[1])
    foreign = _renumbered([pydicom.dcmread(cohort[2]["seg_path"])], ct[0].StudyInstanceUID)
    _store(pacs, [*ct, *foreign])
    _refused(pacs, cohort[1], ct[0].StudyInstanceUID, capsys, "no SEG references")


def test_study_without_ct_is_refused(cohort, pacs: str, capsys) -> None:
    study_uid = generate_uid()
    _store(pacs, _renumbered([pydicom.dcmread(cohort[2]["seg_path"])], study_uid))
    _refused(pacs, cohort[2], study_uid, capsys, "has no CT series")


def test_two_ct_series_and_no_rule_that_decides_is_refused(cohort, pacs: str, capsys) -> None:
    ct = _ct(cohort[3])
    _store(pacs, [*ct, *_renumbered(_ct(cohort[3])), pydicom.dcmread(cohort[3]["seg_path"])])
    _refused(pacs, cohort[3], ct[0].StudyInstanceUID, capsys, "--series-uid")


def test_corrupt_seg_is_refused(cohort, pacs: str, capsys) -> None:
    ct = _ct(cohort[4])
    seg = pydicom.dcmread(cohort[4]["seg_path"])
    seg.PixelData = seg.PixelData[: len(seg.PixelData) // 3]
    _store(pacs, [*ct, seg])
    _refused(pacs, cohort[4], ct[0].StudyInstanceUID, capsys, f"SEG-{seg.SeriesInstanceUID}")


def test_served_and_in_process_predictions_give_the_same_sr(
    cohort: list[dict[str, str]], demo_repository: Path, tmp_path: Path
) -> None:
    """The SR is built from the Prediction alone: through `dmfn serve` (--url) and in this
    process (--checkpoint) the same study gives the same report, numbers within float rounding
    (the served net is ONNX Runtime, the local one PyTorch)."""
    from service_utils import needs_nginx, service_config

    from dmfn.serving.service import DmfnService

    needs_nginx()
    row = cohort[0]
    study = [row["image_path"], "--mask", row["seg_path"], "--ctc", row["ctc_level_pg_ml"],
             "--age", row["age_years"], "--sex", row["sex"], "--location", row["location"]]  # fmt: skip
    local, served = tmp_path / "local.dcm", tmp_path / "served.dcm"
    assert _predict([*study, "--sr", str(local)]) == 0
    service = DmfnService(
        service_config(demo_repository, tmp_path / "logs", canary_interval_s=None)
    )
    with service:
        assert predict_main([*study, "--url", service.http_url, "--sr", str(served)]) == 0
    a, b = read_prediction_sr(local), read_prediction_sr(served)
    assert a.keys() == b.keys()
    for key in a:
        if key == "probs":
            assert a[key].keys() == b[key].keys()
            for name in a[key]:
                assert a[key][name] == pytest.approx(b[key][name], abs=1e-6)
        elif isinstance(a[key], float):
            assert a[key] == pytest.approx(b[key], abs=1e-6), key
        elif key == "measurements":
            assert a[key] == pytest.approx(b[key], abs=1e-3)
        else:
            assert a[key] == b[key], key
    # the same content items in the same order (concept names and codes, values aside)
    items = [_concepts(p) for p in (local, served)]
    assert items[0] == items[1]


def _concepts(path: Path) -> list[str]:
    """The concept names and coded values of an SR's content tree, depth first."""
    out: list[str] = []

    def code(item: pydicom.Dataset, sequence: str) -> str:
        if sequence not in item:
            return ""
        concept = item[sequence].value[0]
        return str(concept.get("CodeValue") or concept.get("LongCodeValue"))

    def walk(items: pydicom.Sequence) -> None:
        for item in items:
            name, coded = code(item, "ConceptNameCodeSequence"), code(item, "ConceptCodeSequence")
            out.append(f"{item.ValueType}:{name}={coded}")
            walk(item.get("ContentSequence", []))

    walk(pydicom.dcmread(path).ContentSequence)
    return out
