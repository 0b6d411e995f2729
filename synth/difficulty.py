"""How hard the synthetic CT is to read: confusable appearances, contrast enhancement, scanner
calibration (``synth/data/ct_confusions.json``).

Without these, the image gives the class away (cysts at 0-20 HU, fat in lipomas and teratomas,
every malignant solid class at 35-110 HU), and a CT-only model reaches a binary AUC of 0.94-0.96,
far above the paper's monomodal CNN (0.710). Three per-patient draws make the image as hard to
read as the paper's, leaving the patient's label, CTC, age, sex and compartment unchanged:

- **a confusable appearance**: with probability ``confusion_prob`` the lesion is drawn with the
  appearance of one of its class's partners (a class it is confused with on CT, for the reason
  the data file gives), chosen by the partners' weights;
- **contrast enhancement**: a factor ``f`` uniform in ``1 +- enhancement_spread`` scales the
  lesion's enhancement (its HU above ``unenhanced_hu``, at most ``max_enhancement_hu``), as
  injection timing and circulation vary between patients;
- **scanner calibration**: an offset of the whole image, normal with SD ``hu_offset_sd_hu``.

Appearance modes: ``calibrated`` (the default of every preset: the data file's knobs) and
``easy`` (no confusion, no enhancement or calibration spread: the previous generator, a toy a
model learns in seconds, for smoke tests). The draws use their own random stream, so the other
draws of a patient are the same in both modes.
"""

from __future__ import annotations

import json
import math
from collections.abc import Mapping
from dataclasses import dataclass
from importlib import resources
from pathlib import Path
from typing import Any

import numpy as np

CONFUSIONS_FILE = "ct_confusions.json"
APPEARANCE_MODES = ("calibrated", "easy")
DEFAULT_APPEARANCE = "calibrated"


@dataclass(frozen=True)
class Partner:
    """A class whose CT appearance a lesion may take: its name, weight and the reason."""

    label: str
    weight: float
    reason: str


@dataclass(frozen=True)
class Difficulty:
    """The knobs (see the module docstring; probabilities, factors, HU) and each class's
    partners."""

    confusion_prob: float
    enhancement_spread: float
    unenhanced_hu: float
    max_enhancement_hu: float
    hu_offset_sd_hu: float
    partners: Mapping[str, tuple[Partner, ...]]
    mode: str = DEFAULT_APPEARANCE

    def __post_init__(self) -> None:
        if not 0.0 <= self.confusion_prob <= 1.0:
            raise ValueError(f"confusion_prob: must be in [0, 1], got {self.confusion_prob}")
        if not 0.0 <= self.enhancement_spread < 1.0:
            raise ValueError(
                f"enhancement_spread: must be in [0, 1), got {self.enhancement_spread}"
            )
        for name in ("max_enhancement_hu", "hu_offset_sd_hu"):
            value = getattr(self, name)
            if not (math.isfinite(value) and value >= 0):
                raise ValueError(f"{name}: must be finite and >= 0, got {value}")
        for label, partners in self.partners.items():
            for p in partners:
                if p.label == label or not p.weight > 0:
                    raise ValueError(
                        f"partners of {label!r}: {p.label!r} must be another class with a "
                        f"weight > 0, got {p.weight}"
                    )

    def knobs(self) -> dict[str, Any]:
        """The values that define the mode (written to cohort.json)."""
        return {
            "appearance": self.mode,
            "confusion_prob": self.confusion_prob,
            "enhancement_spread": self.enhancement_spread,
            "unenhanced_hu": self.unenhanced_hu,
            "max_enhancement_hu": self.max_enhancement_hu,
            "hu_offset_sd_hu": self.hu_offset_sd_hu,
        }

    def appearance_matrix(self, labels: list[str]) -> np.ndarray:
        """P(appearance = column | class = row) over ``labels`` ([C, C], rows sum to 1)."""
        index = {name: i for i, name in enumerate(labels)}
        out = np.zeros((len(labels), len(labels)))
        for i, name in enumerate(labels):
            partners = [p for p in self.partners.get(name, ()) if p.label in index]
            total = sum(p.weight for p in partners)
            confused = self.confusion_prob if total > 0 else 0.0
            out[i, i] = 1.0 - confused
            for p in partners:
                out[i, index[p.label]] += confused * p.weight / total
        return out


def load_difficulty(
    mode: str = DEFAULT_APPEARANCE, path: str | Path | None = None, known: list[str] | None = None
) -> Difficulty:
    """The difficulty of appearance ``mode`` from the data file (``path``, default the packaged
    ``synth/data/ct_confusions.json``). ``known``: class names every partner must be one of.
    ValueError naming the mode, class or field that is wrong."""
    if mode not in APPEARANCE_MODES:
        raise ValueError(
            f"argument 'appearance': must be one of {', '.join(APPEARANCE_MODES)}, got {mode!r}"
        )
    if path is None:
        text = resources.files("dmfn.synth").joinpath("data", CONFUSIONS_FILE).read_text()
        where = CONFUSIONS_FILE
    else:
        text, where = Path(path).read_text(), str(path)
    try:
        data = json.loads(text)
        knobs = data["knobs"]
        partners = {
            label: tuple(Partner(str(p[0]), float(p[1]), str(p[2])) for p in entries)
            for label, entries in data["partners"].items()
        }
    except (json.JSONDecodeError, KeyError, TypeError, IndexError, ValueError) as err:
        raise ValueError(f"{where}: not a confusion table ({type(err).__name__}: {err})") from None
    if known is not None:
        for label, entries in partners.items():
            for p in entries:
                if label not in known or p.label not in known:
                    raise ValueError(f"{where}: unknown class in {label!r} -> {p.label!r}")
    try:
        difficulty = Difficulty(
            confusion_prob=float(knobs["confusion_prob"]),
            enhancement_spread=float(knobs["enhancement_spread"]),
            unenhanced_hu=float(knobs["unenhanced_hu"]),
            max_enhancement_hu=float(knobs["max_enhancement_hu"]),
            hu_offset_sd_hu=float(knobs["hu_offset_sd_hu"]),
            partners=partners,
            mode=mode,
        )
    except (KeyError, TypeError, ValueError) as err:
        raise ValueError(f"{where}: knobs: {err}") from None
    if mode == "easy":
        return Difficulty(0.0, 0.0, difficulty.unenhanced_hu, 0.0, 0.0, partners, "easy")
    return difficulty


@dataclass(frozen=True)
class PatientLook:
    """One patient's draws: the class whose appearance the lesion takes, the enhancement factor
    and the scanner offset (HU)."""

    appearance: str
    enhancement: float = 1.0
    hu_offset_hu: float = 0.0


def draw_look(rng: np.random.Generator, label: str, difficulty: Difficulty) -> PatientLook:
    """The look of a patient of class ``label`` (always the same number of draws from ``rng``)."""
    u_confuse, u_partner, u_enh = rng.random(3)
    offset = float(rng.normal(0.0, 1.0)) * difficulty.hu_offset_sd_hu
    appearance = label
    partners = difficulty.partners.get(label, ())
    if partners and u_confuse < difficulty.confusion_prob:
        weights = np.array([p.weight for p in partners])
        k = int(np.searchsorted(np.cumsum(weights) / weights.sum(), u_partner, side="right"))
        appearance = partners[min(k, len(partners) - 1)].label
    factor = 1.0 + difficulty.enhancement_spread * (2.0 * float(u_enh) - 1.0)
    return PatientLook(appearance, factor, offset)


def enhance(hu: np.ndarray, look: PatientLook, difficulty: Difficulty) -> np.ndarray:
    """Lesion HU with the patient's enhancement: ``hu + (f - 1) * e``, ``e = hu - unenhanced`` for
    enhancing tissue (``unenhanced < hu <= unenhanced + max_enhancement``), 0 elsewhere: fat,
    fluid and calcium do not enhance (float32)."""
    if look.enhancement == 1.0:
        return hu
    excess = hu - difficulty.unenhanced_hu
    enhancement = np.where((excess > 0) & (excess <= difficulty.max_enhancement_hu), excess, 0.0)
    return (hu + (look.enhancement - 1.0) * enhancement).astype(np.float32)
