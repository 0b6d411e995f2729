"""contract/csvfile.csv_rows: the one opening of the CSV tables users write (predictions, readers'
calls, manifests), and the errors the three readers give through it."""

from __future__ import annotations

from pathlib import Path

import pytest

from dmfn.client.manifest import read_manifest
from dmfn.contract.csvfile import csv_rows
from dmfn.contract.errors import InvalidInput
from dmfn.contract.predictions import read_predictions
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
