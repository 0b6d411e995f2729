"""Writing a result file whole or not at all, and never over an earlier result by surprise.

:func:`replacing` writes to a temporary file in the target's folder, which then takes the
target's name in one rename: a reader never sees half a file, and a crash (or an error while
writing) leaves the earlier file, or none, never a truncated one. Without ``overwrite`` an
existing target is refused, at the start and again at the rename (a hard link, which cannot
replace a file), so a file that appeared meanwhile is not lost either.
"""

from __future__ import annotations

import os
import secrets
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import IO, Any

from dmfn.contract.errors import InvalidInput


def refuse_existing(path: str | Path, argument: str = "out") -> InvalidInput:
    """The error for an existing result file ``path`` written without ``overwrite``."""
    return InvalidInput(
        argument,
        f"{path} exists; pass {{overwrite}} to replace it",
        mentions={"overwrite": "overwrite=True"},
    )


def check_new(path: str | Path, overwrite: bool, argument: str = "out") -> Path:
    """``path`` (through a symlink, its target), which may be written: refused with
    :class:`InvalidInput` naming ``argument`` when it is a folder, or when it exists and
    ``overwrite`` is false. Call it before any work, so a refusal costs nothing."""
    path = Path(path)
    if path.is_symlink():  # write where the link points, so the link stays valid and current
        path = path.resolve()
    if path.is_dir():
        raise InvalidInput(argument, f"{path} is a folder; give the file to write")
    if path.exists() and not overwrite:
        raise refuse_existing(path, argument)
    return path


@contextmanager
def replacing(
    path: str | Path,
    *,
    overwrite: bool = True,
    binary: bool = False,
    newline: str | None = None,
    argument: str = "out",
) -> Iterator[IO[Any]]:
    """A file object to write ``path``'s new content to; it becomes ``path`` when the block ends
    without an error (see the module's docstring). The folder must exist.

    Args:
        overwrite: replace an existing ``path``; without it an existing file is refused with
            :class:`InvalidInput` naming ``argument``, before and after the writing.
        binary: bytes instead of text; ``newline`` as for :func:`open` (``""`` for CSV).
    """
    path = check_new(path, overwrite, argument)
    temporary = path.with_name(f".{path.name}.{secrets.token_hex(4)}.tmp")
    # O_EXCL: never write into someone else's file; mode 0o666 less the umask, as open() gives.
    fd = os.open(temporary, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o666)
    try:
        with os.fdopen(fd, "wb" if binary else "w", newline=None if binary else newline) as handle:
            yield handle
            handle.flush()
            os.fsync(handle.fileno())
        _publish(temporary, path, overwrite, argument)
    finally:
        temporary.unlink(missing_ok=True)


def _publish(temporary: Path, path: Path, overwrite: bool, argument: str) -> None:
    """Give ``temporary`` the name ``path`` in one step; without ``overwrite``, only if ``path``
    still does not exist."""
    if overwrite:
        os.replace(temporary, path)
        return
    try:
        os.link(temporary, path)  # fails if path exists: never replaces it
    except FileExistsError:
        raise refuse_existing(path, argument) from None
    except OSError:  # a file system without hard links: check, then rename
        if path.exists():
            raise refuse_existing(path, argument) from None
        os.replace(temporary, path)
