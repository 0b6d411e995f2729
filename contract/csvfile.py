"""Reading a table a user wrote: the predictions, the readers' calls and the manifest CSVs share
one opening (the file must exist, column names are stripped, required columns must be present)
and number their rows by file line, so every error can name the file, the line and the column.

Writing one that a spreadsheet opens: a text cell that starts like a formula (``= + - @``, a tab
or a carriage return: the OWASP list for CSV injection) would run as one, so it is written with a
leading ``'`` (:func:`escape_cell`), which a spreadsheet shows as text. Numbers are written as
they are (``-0.5`` stays a number). The rule is a bijection: a cell that already starts with
quotes followed by such a character gets one more, and :func:`unescape_cell` takes one off
exactly those cells, so reading back gives every text as it was written.
"""

from __future__ import annotations

import csv
import difflib
import re
from collections.abc import Iterable, Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path

from dmfn.contract.errors import InvalidInput

#: (file line, row) pairs; the header is line 1, so rows start at line 2.
Rows = Iterator[tuple[int, dict[str, str]]]
#: A cell a spreadsheet would take for a formula once its leading quotes are gone: any number of
#: quotes, then = + - @ tab or carriage return (OWASP, CSV injection).
_FORMULA_LIKE = re.compile(r"'*[=+\-@\t\r]")


def escape_cell(text: str) -> str:
    """``text`` safe for a spreadsheet: a leading ``'`` added when it starts like a formula
    (see the module's docstring). For text cells only, never for numbers."""
    return "'" + text if _FORMULA_LIKE.match(text) else text


def unescape_cell(text: str) -> str:
    """The text :func:`escape_cell` was given: one leading ``'`` removed from an escaped cell."""
    return text[1:] if text.startswith("'") and _FORMULA_LIKE.match(text, 1) else text


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
                argument,
                f"{path}: missing required columns {missing} (columns: {columns})"
                + _column_hints(missing, columns),
            )
        yield columns, enumerate(reader, start=2)


def _column_hints(missing: Sequence[str], columns: Sequence[str]) -> str:
    """What the user probably meant: another delimiter (a whole header in one column), or a
    column whose name is close to a missing one."""
    if len(columns) == 1:
        for delimiter, name in ((";", "semicolons"), ("\t", "tabs"), ("|", "bars")):
            if delimiter in columns[0]:
                return (
                    f"; the file seems separated by {name}, not commas (a spreadsheet's export in "
                    "some locales): save it as comma-separated values"
                )
    hints = []
    for name in missing:
        close = difflib.get_close_matches(name, columns, n=1, cutoff=0.75)
        if close:
            hints.append(f"{close[0]!r} for {name!r}")
    return f"; did you mean {', '.join(hints)}?" if hints else ""
