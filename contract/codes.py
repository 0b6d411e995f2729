"""Coded concepts for the lesion classes, as a DICOM SR writes them (``client/sr.py``).

A class is coded in SNOMED CT (scheme ``SCT``) where ``data/class_codes.csv`` names a code, and
otherwise in dmfn's private scheme ``99DMFN`` with the class name as the code value and its
display name as the meaning. The file is keyed by class name, so the classes of any checkpoint
can be coded; its ``source`` column says where each SNOMED code was checked (docs/dicom.md).
"""

from __future__ import annotations

import csv
from dataclasses import dataclass
from pathlib import Path

from dmfn.contract.datafile import read_data_file
from dmfn.contract.errors import InvalidInput

#: The designator of dmfn's private coding scheme (``99`` prefix: a local scheme, PS3.3 8.1).
PRIVATE_SCHEME = "99DMFN"
#: Its name and the organisation responsible, for a CodingSchemeIdentificationSequence item.
PRIVATE_SCHEME_NAME = "dmfn local codes"
PRIVATE_SCHEME_ORGANIZATION = "the dmfn project (docs/dicom.md)"
SNOMED_SCHEME = "SCT"
#: The schemes a row of the class-code file may name.
CLASS_CODE_SCHEMES: tuple[str, ...] = (SNOMED_SCHEME, PRIVATE_SCHEME)
CLASS_CODE_COLUMNS: tuple[str, ...] = ("class", "scheme", "code", "meaning")
DEFAULT_CLASS_CODES = "class_codes.csv"


@dataclass(frozen=True)
class ConceptCode:
    """One coded concept: coding scheme designator, code value and code meaning."""

    scheme: str
    value: str
    meaning: str


def parse_class_codes(text: str, source: str = "<memory>") -> dict[str, ConceptCode]:
    """Class name -> code from the CSV ``text``; InvalidInput naming ``class_codes``, the source
    and line for a missing column, an unknown scheme, an empty cell or a repeated class."""
    reader = csv.DictReader(text.splitlines())
    missing = [c for c in CLASS_CODE_COLUMNS if c not in (reader.fieldnames or [])]
    if missing:
        raise InvalidInput("class_codes", f"{source}: missing columns {missing}")
    codes: dict[str, ConceptCode] = {}
    for line, row in enumerate(reader, start=2):
        where = f"{source} line {line}"
        cells = {c: (row.get(c) or "").strip() for c in CLASS_CODE_COLUMNS}
        empty = [c for c, v in cells.items() if not v]
        if empty:
            raise InvalidInput("class_codes", f"{where}: empty {empty}")
        if cells["scheme"] not in CLASS_CODE_SCHEMES:
            raise InvalidInput(
                "class_codes",
                f"{where}: scheme must be one of {CLASS_CODE_SCHEMES}, got {cells['scheme']!r}",
            )
        if cells["class"] in codes:
            raise InvalidInput("class_codes", f"{where}: class {cells['class']!r} repeated")
        codes[cells["class"]] = ConceptCode(cells["scheme"], cells["code"], cells["meaning"])
    return codes


def load_class_codes(path: str | Path | None = None) -> dict[str, ConceptCode]:
    """The class codes of ``path`` (None: dmfn's ``contract/data/class_codes.csv``)."""
    text, source = read_data_file(path, "class_codes", "dmfn.contract", DEFAULT_CLASS_CODES)
    return parse_class_codes(text, source)


def class_code(
    name: str, display_name: str = "", codes: dict[str, ConceptCode] | None = None
) -> ConceptCode:
    """The code of class ``name``: its row of ``codes`` (None: the default file), else the
    private scheme with ``name`` as the value and ``display_name`` (or ``name``) as meaning."""
    table = load_class_codes() if codes is None else codes
    if name in table:
        return table[name]
    return ConceptCode(PRIVATE_SCHEME, name, display_name or name)


__all__ = [
    "CLASS_CODE_SCHEMES",
    "PRIVATE_SCHEME",
    "PRIVATE_SCHEME_NAME",
    "PRIVATE_SCHEME_ORGANIZATION",
    "SNOMED_SCHEME",
    "ConceptCode",
    "class_code",
    "load_class_codes",
    "parse_class_codes",
]
