"""Options that every ``dmfn`` command spells the same way.

``--overwrite`` lets a command replace an earlier result at its output. ``--force``, its old name
in ``dmfn train`` and ``dmfn synth``, still works for one release: it is left out of ``--help``
and prints one line to standard error saying it is renamed.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence
from typing import Any

OVERWRITE = "--overwrite"
#: Old spellings of :data:`OVERWRITE`, accepted (hidden) until the next release.
OVERWRITE_ALIASES: tuple[str, ...] = ("--force",)


class RenamedFlag(argparse.Action):
    """A hidden, renamed switch: sets its ``dest`` to True and says on standard error which
    flag replaces it."""

    def __init__(self, option_strings: Sequence[str], dest: str, new: str, **kwargs: Any) -> None:
        super().__init__(option_strings, dest, nargs=0, default=False, help=argparse.SUPPRESS)
        self.new = new

    def __call__(
        self,
        parser: argparse.ArgumentParser,
        namespace: argparse.Namespace,
        values: Any,
        option_string: str | None = None,
    ) -> None:
        print(
            f"{parser.prog}: {option_string} is renamed to {self.new}; "
            f"{option_string} will be removed in the next release",
            file=sys.stderr,
        )
        setattr(namespace, self.dest, True)


def add_overwrite(parser: argparse._ActionsContainer, help: str) -> None:
    """``--overwrite`` (``dest="overwrite"``, off by default) on ``parser`` (a parser or an
    argument group), with the hidden :data:`OVERWRITE_ALIASES`; ``help`` says what is replaced."""
    parser.add_argument(OVERWRITE, action="store_true", help=help)
    for alias in OVERWRITE_ALIASES:
        parser.add_argument(alias, dest="overwrite", action=RenamedFlag, new=OVERWRITE)
