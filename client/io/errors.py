"""The error the readers raise about one of their arguments, so front ends can name it their way.

A reader's ValueError about one of its arguments (``series_uid``, ``segment``, ``path`` ...) is an
:class:`ArgumentError`. ``str(err)`` reads ``argument 'series_uid': <detail>`` for Python callers;
``err.argument`` and ``err.detail`` let a front end name the argument as its user knows it (the
command line ``--series-uid``, a manifest column ``series_uid``) without parsing the message.
"""

from __future__ import annotations


class ArgumentError(ValueError):
    """A bad or missing value of the reader argument ``argument``; ``detail`` says what and why.

    ``detail`` does not repeat the argument's name: :meth:`named` puts any name in front of it.
    """

    def __init__(self, argument: str, detail: str) -> None:
        super().__init__(f"argument '{argument}': {detail}")
        self.argument = argument
        self.detail = detail

    def __reduce__(self) -> tuple[type, tuple[str, str]]:  # picklable across processes
        return type(self), (self.argument, self.detail)

    def named(self, name: str) -> str:
        """The message with the argument called ``name``, e.g. ``--series-uid: <detail>``."""
        return f"{name}: {self.detail}"


def one_line(err: BaseException) -> str:
    """``err``'s message on one line (runs of whitespace joined): for an OSError its reason alone
    (``Permission denied``; the caller names the file), for an error without a message (a bare
    MemoryError) its type's name, so an error about a file always says something."""
    text = err.strerror if isinstance(err, OSError) and err.strerror else str(err)
    return " ".join(text.split()) or type(err).__name__
