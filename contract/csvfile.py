"""Reading a table a user wrote: the predictions, the readers' calls and the manifest CSVs share
one opening (the file must exist, column names are stripped, required columns must be present)
and number their rows by file line, so every error can name the file, the line and the column."""

from __future__ import annotations

import csv
from collections.abc import Iterable, Iterator
from contextlib import contextmanager
from pathlib import Path

from dmfn.contract.errors import InvalidInput

#: (file line, row) pairs; the header is line 1, so rows start at line 2.
Rows = Iterator[tuple[int, dict[str, str]]]


@contextmanager
def csv_rows(
    path: str | Path, argument: str, required: Iterable[str]
) -> Iterator[tuple[list[str], Rows]]:
    """Open the CSV at ``path``: yields its column names (stripped) and its numbered rows.

    Raises:
        InvalidInput: naming ``argument`` when ``path`` is not a file or lacks a column of
            ``required`` (all missing ones are listed, with the columns the file has).
    """
    path = Path(path)
    if not path.is_file():
        raise InvalidInput(argument, f"file {path} does not exist")
    with path.open(newline="") as handle:
        reader = csv.DictReader(handle)
        columns = [c.strip() for c in reader.fieldnames or []]
        reader.fieldnames = columns
        missing = [c for c in required if c not in columns]
        if missing:
            raise InvalidInput(
                argument, f"{path}: missing required columns {missing} (columns: {columns})"
            )
        yield columns, enumerate(reader, start=2)
