"""The management suggestion: a policy a hospital owns, not a fact of the paper.

The paper classifies lesions; it does not map classes to management. The default mapping
(``data/management_default.json``) is dmfn's: thymomas, mature teratoma, schwannoma, fibroma and
carcinoid to surgery; thymic carcinoma, immature teratoma, the lymphomas, metastases and other
malignancies to biopsy and oncology; cyst, granuloma, lipoma and haemangioma to follow-up. A hospital replaces the file
(``dmfn export --management FILE``; ``dmfn predict --checkpoint ... --management FILE``).

The suggestion comes from the whole distribution, not the top class: the probability of each
option is the sum of the probabilities of the classes mapped to it, and the option is suggested
only when its probability reaches ``min_probability``; otherwise the answer is ``uncertain``. So
a malignant probability of 64 % spread over malignant classes no longer comes out as
"follow-up" because a benign class happened to be the single most probable one.
"""

from __future__ import annotations

import hashlib
import json
import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from dmfn.contract.datafile import read_data_file
from dmfn.contract.errors import InvalidInput

#: The answer when no option reaches the policy's min_probability.
UNCERTAIN = "uncertain"
DEFAULT_FILE = "management_default.json"


@dataclass(frozen=True)
class ManagementPolicy:
    """class name -> management option, and the probability an option needs to be suggested."""

    by_class: Mapping[str, str]
    min_probability: float = 0.6
    note: str = ""
    source: str = "<memory>"

    def __post_init__(self) -> None:
        p = self.min_probability
        if not (isinstance(p, int | float) and math.isfinite(p) and 0.0 < p <= 1.0):
            raise InvalidInput(
                "management", f"{self.source}: min_probability must be in (0, 1], got {p!r}"
            )
        if not self.by_class:
            raise InvalidInput("management", f"{self.source}: by_class maps no class")
        for name, option in self.by_class.items():
            if not (isinstance(option, str) and option.strip()) or option == UNCERTAIN:
                raise InvalidInput(
                    "management",
                    f"{self.source}: class {name!r} maps to {option!r}; an option is a non-empty "
                    f"name other than {UNCERTAIN!r}",
                )

    @property
    def options(self) -> tuple[str, ...]:
        """The options, in first-mention order."""
        return tuple(dict.fromkeys(self.by_class.values()))

    def check_covers(self, class_names: Sequence[str]) -> None:
        """InvalidInput naming the classes of the model the policy does not map."""
        missing = [n for n in class_names if n not in self.by_class]
        if missing:
            raise InvalidInput(
                "management", f"{self.source} maps no management for class(es) {missing}"
            )

    def option_matrix(self, class_names: Sequence[str]) -> np.ndarray:
        """[C, M] 0/1: class c goes to option m (columns in :attr:`options` order)."""
        self.check_covers(class_names)
        options = self.options
        out = np.zeros((len(class_names), len(options)), dtype=np.float64)
        for c, name in enumerate(class_names):
            out[c, options.index(self.by_class[name])] = 1.0
        return out

    def option_probabilities(self, probs: np.ndarray, class_names: Sequence[str]) -> np.ndarray:
        """[B, M]: each option's probability (the sum over its classes) of ``probs`` [B, C]."""
        return np.asarray(probs, dtype=np.float64) @ self.option_matrix(class_names)

    def suggest(self, probs: np.ndarray, class_names: Sequence[str]) -> list[str]:
        """Per row of ``probs`` [B, C]: the option whose probability reaches min_probability,
        else ``uncertain``."""
        by_option = self.option_probabilities(probs, class_names)
        best = by_option.argmax(axis=1)
        options = self.options
        return [
            options[b] if by_option[i, b] >= self.min_probability else UNCERTAIN
            for i, b in enumerate(best)
        ]

    def describe(self, probs: np.ndarray, class_names: Sequence[str]) -> str:
        """One study's suggestion in words, e.g. ``surgery (0.82)`` or
        ``uncertain (surgery 0.55, follow-up 0.40; none reaches 0.60)``."""
        row = np.asarray(probs, dtype=np.float64).reshape(1, -1)
        by_option = self.option_probabilities(row, class_names)[0]
        order = np.argsort(-by_option, kind="stable")
        (choice,) = self.suggest(row, class_names)
        if choice != UNCERTAIN:
            return f"{choice} ({by_option[order[0]]:.2f})"
        parts = ", ".join(f"{self.options[k]} {by_option[k]:.2f}" for k in order[:2])
        return f"{UNCERTAIN} ({parts}; none reaches {self.min_probability:.2f})"

    def to_json(self) -> str:
        return json.dumps(
            {
                "note": self.note,
                "min_probability": self.min_probability,
                "by_class": dict(self.by_class),
            },
            indent=2,
        )

    def digest(self) -> str:
        return hashlib.sha256(self.to_json().encode()).hexdigest()


def parse_management(text: str, source: str = "<memory>") -> ManagementPolicy:
    """A policy from its JSON text (``by_class``, ``min_probability``, optional ``note``)."""
    try:
        data = json.loads(text)
    except json.JSONDecodeError as err:
        raise InvalidInput("management", f"{source}: not JSON ({err})") from None
    if not isinstance(data, dict) or not isinstance(data.get("by_class"), dict):
        raise InvalidInput("management", f"{source}: needs an object with a 'by_class' object")
    return ManagementPolicy(
        by_class=dict(data["by_class"]),
        min_probability=data.get("min_probability", 0.6),
        note=str(data.get("note", "")),
        source=source,
    )


def load_management(path: str | Path | None = None) -> ManagementPolicy:
    """The policy at ``path``, or dmfn's default (``contract/data/management_default.json``)."""
    return parse_management(*read_data_file(path, "management", "dmfn.contract", DEFAULT_FILE))
