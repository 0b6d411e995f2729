"""contract/csvfile: csv_rows, the one opening of the CSV tables users write (predictions, readers'
calls, manifests), and the errors the three readers give through it; escape_cell, the defence of
the CSVs dmfn writes against formula injection (OWASP), and its exact inverse."""

from __future__ import annotations

import csv
from pathlib import Path

import pytest

from dmfn.client.manifest import read_manifest
from dmfn.contract.csvfile import csv_rows, escape_cell, unescape_cell
from dmfn.contract.errors import InvalidInput
from dmfn.contract.predictions import (
    FailedStudy,
    PredictionRow,
    Provenance,
    read_predictions,
    write_predictions,
)
from dmfn.contract.taxonomy import load_taxonomy
from dmfn.evaluation.readers import read_readers


def test_rows_are_numbered_by_file_line_and_columns_stripped(tmp_path: Path) -> None:
    path = tmp_path / "t.csv"
    path.write_text(" a , b\n1,2\n3,4\n")
    with csv_rows(path, "table", ["a"]) as (columns, rows):
        assert columns == ["a", "b"]
        assert [(line, row["a"]) for line, row in rows] == [(2, "1"), (3, "3")]


def test_a_missing_file_names_the_argument(tmp_path: Path) -> None:
    with pytest.raises(InvalidInput, match=r"argument 'table': file .*absent.csv does not exist"):
        with csv_rows(tmp_path / "absent.csv", "table", []):
            pass
    with pytest.raises(InvalidInput, match="does not exist"):  # a folder is not a table either
        with csv_rows(tmp_path, "table", []):
            pass


@pytest.mark.parametrize(
    "read, argument",
    [
        (read_predictions, "predictions"),
        (lambda p: read_readers(p, load_taxonomy()), "readers"),
        (lambda p: read_manifest(p, load_taxonomy()), "manifest"),
    ],
    ids=["predictions", "readers", "manifest"],
)
def test_every_table_reader_lists_all_missing_columns(tmp_path: Path, read, argument) -> None:
    path = tmp_path / "t.csv"
    path.write_text("patient_id,unrelated\nP1,1\n")
    with pytest.raises(InvalidInput) as caught:
        read(path)
    assert caught.value.name == argument
    assert "missing required columns [" in str(caught.value)
    assert "(columns: ['patient_id', 'unrelated'])" in str(caught.value)
    with pytest.raises(InvalidInput, match=f"argument '{argument}': file"):
        read(tmp_path / "absent.csv")


@pytest.mark.parametrize(
    ("text", "written"),
    [
        ('=HYPERLINK("http://x","y")', '\'=HYPERLINK("http://x","y")'),
        ("+1+cmd|' /C calc'!A0", "'+1+cmd|' /C calc'!A0"),
        ("-2+3", "'-2+3"),
        ("@SUM(A1)", "'@SUM(A1)"),
        ("\t=1", "'\t=1"),
        ("\r=1", "'\r=1"),
        ("'=1", "''=1"),  # already quoted: one more, so reading back gives it unchanged
        ("''-x", "'''-x"),
        ("SYN00001", "SYN00001"),
        ("a=b", "a=b"),
        ("'quoted", "'quoted"),
        ("", ""),
    ],
)
def test_cells_that_start_like_a_formula_get_a_quote(text: str, written: str) -> None:
    assert escape_cell(text) == written
    assert unescape_cell(written) == text


def test_predictions_escape_text_cells_but_not_numbers(tmp_path: Path) -> None:
    """A binary-only score of -0.5 stays a number; ids, labels and provenance are text."""
    rows = [
        PredictionRow("patient", "=1+1", -0.5, (), "", "-split", "@label"),
        PredictionRow("image", "+p", 0.25, (), '=HYPERLINK("u")', "test", "benign"),
    ]
    path = write_predictions(tmp_path / "p.csv", (), rows, Provenance("=sha", "-1", None))
    with path.open(newline="") as handle:
        cells = list(csv.reader(handle))
    assert cells[1][:5] == ["patient", "'=1+1", "", "'-split", "'@label"]
    assert cells[1][5] == "-0.5" and cells[2][5] == "0.25"
    assert cells[1][7:11] == ["", "", "", ""]  # no class sets / OOD flag on these rows
    assert cells[1][11:] == ["'=sha", "'-1", "", "", "", "ok", "", ""]
    assert cells[2][2] == '\'=HYPERLINK("u")'
    table = read_predictions(path)
    assert table.rows == rows
    assert table.provenance == Provenance("=sha", "-1", None)
    # a failed study's error is text too (and one line)
    failed = FailedStudy("=p", "=img", "test", "benign", "=cmd|' /C calc'!A0\nsecond line")
    path = write_predictions(tmp_path / "f.csv", (), rows, failures=[failed])
    with path.open(newline="") as handle:
        last = list(csv.reader(handle))[-1]
    assert last[-3:] == ["failed", "'=cmd|' /C calc'!A0 second line", ""]
    assert read_predictions(path).failures == [
        FailedStudy("=p", "=img", "test", "benign", "=cmd|' /C calc'!A0 second line")
    ]


def test_a_misspelt_column_or_another_delimiter_gets_a_hint(tmp_path: Path) -> None:
    from dmfn.client.manifest import read_manifest

    good = "patient_id,image_id,image_path,mask_path,ctc_level_pg_ml,age_years,sex,location,label"
    misspelt = tmp_path / "misspelt.csv"
    misspelt.write_text(good.replace("ctc_level_pg_ml", "ctc_level_pgml") + "\n")
    with pytest.raises(
        InvalidInput, match=r"did you mean 'ctc_level_pgml' for 'ctc_level_pg_ml'\?"
    ):
        read_manifest(misspelt, load_taxonomy())
    semicolons = tmp_path / "semicolons.csv"
    semicolons.write_text(good.replace(",", ";") + "\n")
    with pytest.raises(InvalidInput, match="the file seems separated by semicolons, not commas"):
        read_manifest(semicolons, load_taxonomy())


def test_predictions_keep_the_class_sets_and_the_ood_flag(tmp_path: Path) -> None:
    """The uncertainty columns round-trip; a negative OOD score is written as a number."""
    row = PredictionRow("image", "p1", 0.4, (0.6, 0.4), "i1", "test", "a",
                        class_set=("a", "b"), binary_set=("benign", "malignant"),
                        ood_score=-3.25, ood_flag=False)  # fmt: skip
    path = write_predictions(tmp_path / "p.csv", ("a", "b"), [row])
    with path.open(newline="") as handle:
        cells = dict(zip(*list(csv.reader(handle)), strict=True))
    assert (cells["class_set"], cells["binary_set"]) == ("a|b", "benign|malignant")
    assert (cells["ood_score"], cells["ood_flag"]) == ("-3.25", "false")
    assert read_predictions(path).rows == [row]
