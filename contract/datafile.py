"""Replaceable data files: a table dmfn ships a default of, which a site may replace with its own
file (the management policy, the synthetic cohort's compartment table)."""

from __future__ import annotations

from pathlib import Path

from dmfn.contract.errors import InvalidInput
from dmfn.resources import data_file


def read_data_file(
    path: str | Path | None, argument: str, package: str, name: str
) -> tuple[str, str]:
    """The text of the file at ``path`` and where it came from; for None, the default shipped in
    ``<package>/data/<name>`` (source ``<layer>/data/<name>``, as in the source tree).

    Raises:
        InvalidInput: naming ``argument`` when ``path`` is not a file.
    """
    if path is None:
        return data_file(package, name).read_text(), f"{package.removeprefix('dmfn.')}/data/{name}"
    path = Path(path)
    if not path.is_file():
        raise InvalidInput(argument, f"file {path} does not exist")
    return path.read_text(), str(path)
