"""contract/outfile: a result file is written whole or not at all, and an existing one is replaced
only when the caller says so (issue 19, defect 7)."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from dmfn.contract.errors import InvalidInput
from dmfn.contract.outfile import check_new, replacing


def _leftovers(folder: Path) -> list[str]:
    return sorted(p.name for p in folder.iterdir() if p.name.endswith(".tmp"))


def test_a_new_file_gets_the_mode_open_gives(tmp_path: Path) -> None:
    with replacing(tmp_path / "a.csv", overwrite=False) as handle:
        handle.write("x\n")
    (tmp_path / "b.csv").write_text("x\n")
    assert (tmp_path / "a.csv").read_text() == "x\n"
    assert (tmp_path / "a.csv").stat().st_mode == (tmp_path / "b.csv").stat().st_mode
    assert not _leftovers(tmp_path)


def test_an_existing_file_is_refused_without_overwrite(tmp_path: Path) -> None:
    path = tmp_path / "a.csv"
    path.write_text("earlier\n")
    with pytest.raises(InvalidInput) as caught:
        with replacing(path, overwrite=False):
            pytest.fail("the refusal comes before any writing")
    assert caught.value.name == "out"
    assert caught.value.in_flags({"out": "--out", "overwrite": "--overwrite"}) == (
        f"--out: {path} exists; pass --overwrite to replace it"
    )
    with replacing(path) as handle:
        handle.write("new\n")
    assert path.read_text() == "new\n" and not _leftovers(tmp_path)


@pytest.mark.parametrize("hard_links", [True, False])
def test_a_file_that_appears_while_writing_is_kept(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, hard_links: bool
) -> None:
    if not hard_links:  # a file system without them: checked, then renamed

        def no_link(*args: object) -> None:
            raise PermissionError(1, "Operation not permitted")

        monkeypatch.setattr(os, "link", no_link)
    path = tmp_path / "a.csv"
    with pytest.raises(InvalidInput, match="exists; pass"):
        with replacing(path, overwrite=False) as handle:
            handle.write("mine\n")
            path.write_text("theirs\n")
    assert path.read_text() == "theirs\n" and not _leftovers(tmp_path)
    with replacing(tmp_path / "b.csv", overwrite=False) as handle:
        handle.write("mine\n")
    assert (tmp_path / "b.csv").read_text() == "mine\n" and not _leftovers(tmp_path)


def test_an_error_while_writing_leaves_the_earlier_file(tmp_path: Path) -> None:
    path = tmp_path / "a.csv"
    path.write_text("earlier\n")
    with pytest.raises(RuntimeError):
        with replacing(path) as handle:
            handle.write("half of the new")
            raise RuntimeError("crash")
    assert path.read_text() == "earlier\n" and not _leftovers(tmp_path)


def test_a_symlink_is_written_through(tmp_path: Path) -> None:
    target = tmp_path / "target.csv"
    target.write_text("earlier\n")
    link = tmp_path / "link.csv"
    link.symlink_to(target)
    with pytest.raises(InvalidInput, match=r"target\.csv exists"):
        check_new(link, overwrite=False)
    with replacing(link, binary=True) as handle:
        handle.write(b"new\n")
    assert link.is_symlink() and target.read_text() == "new\n"


def test_a_folder_is_not_a_file(tmp_path: Path) -> None:
    with pytest.raises(InvalidInput, match="is a folder; give the file to write"):
        check_new(tmp_path, overwrite=True)
