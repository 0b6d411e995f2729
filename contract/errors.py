"""The error every dmfn boundary raises for a bad value: ``InvalidInput``.

It is a ``ValueError`` whose ``name`` attribute says which argument, field or request tensor broke
which ``rule``, so callers (the Triton models, the command line) can name the thing in their own
terms without parsing the message text.
"""

from __future__ import annotations


class InvalidInput(ValueError):
    """``name`` (a request tensor, a field or an argument) breaks ``rule``.

    ``kind`` says what ``name`` is: ``"input"`` (a request tensor such as CT_HU), ``"field"`` or
    ``"argument"``. ``str()`` gives ``"<kind> '<name>': <rule>"``.
    """

    def __init__(self, name: str, rule: str, kind: str = "argument") -> None:
        super().__init__(f"{kind} '{name}': {rule}")
        self.name = name
        self.rule = rule
        self.kind = kind
