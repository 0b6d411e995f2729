"""The error every dmfn boundary raises for a bad value: ``InvalidInput``.

It is a ``ValueError`` whose ``name`` attribute says which argument, field or request tensor broke
which ``rule``, so callers (the Triton models, the command line) can name the thing in their own
terms without parsing the message text. A rule may mention other arguments as ``{name}``
placeholders (``mentions``: name -> how the Python API spells it), so that the command line can
print its own flags instead: :func:`in_flags`.
"""

from __future__ import annotations

from collections.abc import Mapping


class InvalidInput(ValueError):
    """``name`` (a request tensor, a field or an argument) breaks ``rule``.

    ``kind`` says what ``name`` is: ``"input"`` (a request tensor such as CT_HU), ``"field"`` or
    ``"argument"``. ``str()`` gives ``"<kind> '<name>': <rule>"`` with each ``{placeholder}`` of
    ``mentions`` written the Python way (e.g. ``{overwrite}`` -> ``overwrite=True``).
    """

    def __init__(
        self,
        name: str,
        rule: str,
        kind: str = "argument",
        mentions: Mapping[str, str] | None = None,
    ) -> None:
        self.name = name
        self.rule = rule
        self.kind = kind
        self.mentions = dict(mentions or {})
        super().__init__(f"{kind} '{name}': {self._spell(self.mentions)}")

    def _spell(self, words: Mapping[str, str]) -> str:
        text = self.rule
        for key, word in words.items():
            text = text.replace("{" + key + "}", word)
        return text

    def in_flags(self, flags: Mapping[str, str]) -> str:
        """The message for a command-line user: the argument and every mention by its flag
        (``flags``: API name -> flag), where the command has one."""
        words = {k: flags.get(k, v) for k, v in self.mentions.items()}
        subject = flags.get(self.name, f"{self.kind} '{self.name}'")
        return f"{subject}: {self._spell(words)}"


def in_flags(err: BaseException, flags: Mapping[str, str]) -> str:
    """``err``'s message in command-line terms (:meth:`InvalidInput.in_flags`); other errors
    unchanged."""
    return err.in_flags(flags) if isinstance(err, InvalidInput) else str(err)
