"""Which CT series of a study to read, when a study holds several: one documented rule.

A PACS study often holds several CT series of one examination: a scout (localizer), a
non-contrast and a contrast-enhanced phase, thin and thick reconstructions, coronal reformats.
The rule, applied in this order, keeps at each step only the series that pass it (a step that no
series passes, or that every series passes, changes nothing):

1. not a localizer (ImageType without LOCALIZER) and at least :data:`MIN_SLICES` slices;
2. axial (the slice normal, row x column of ImageOrientationPatient, within
   :data:`AXIAL_TOLERANCE_DEG` of the patient's z axis);
3. contrast-enhanced where the header says so (ContrastBolusAgent not empty);
4. the thinnest slices (SliceThickness, equal within :data:`THICKNESS_TOLERANCE_MM`);
5. the most slices.

If more than one series is left, nothing decides: :class:`SeriesChoiceError` lists them and asks
for ``--series-uid``. The choice comes with the reasons, printed so a radiologist can check it.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import pydicom

#: A series with fewer slices is not a volume to classify (scouts, single key images).
MIN_SLICES = 3
#: Largest angle (degrees) between the slice normal and the patient's z axis of an axial series.
AXIAL_TOLERANCE_DEG = 10.0
#: Two slice thicknesses closer than this (mm) are equal.
THICKNESS_TOLERANCE_MM = 0.01


class SeriesChoiceError(ValueError):
    """No CT series, or several and no rule that decides; the message lists the series."""


@dataclass(frozen=True)
class SeriesCandidate:
    """What the rule reads of one CT series (from the header of one of its instances)."""

    uid: str
    description: str
    n_slices: int
    localizer: bool
    axial: bool | None  # None: no ImageOrientationPatient
    contrast: bool
    thickness_mm: float | None

    @classmethod
    def of(cls, header: pydicom.Dataset, n_slices: int) -> SeriesCandidate:
        """The candidate described by ``header`` (any instance of the series) of ``n_slices``."""
        image_type = [str(v).upper() for v in (header.get("ImageType") or [])]
        return cls(
            uid=str(header.get("SeriesInstanceUID", "")),
            description=str(header.get("SeriesDescription", "") or ""),
            n_slices=int(n_slices),
            localizer="LOCALIZER" in image_type,
            axial=_axial(header),
            contrast=bool(str(header.get("ContrastBolusAgent", "") or "").strip()),
            thickness_mm=_number(header.get("SliceThickness")),
        )

    def summary(self) -> str:
        """One line: UID, description, slices, plane, contrast, thickness."""
        plane = {True: "axial", False: "not axial", None: "no orientation"}[self.axial]
        thickness = "?" if self.thickness_mm is None else f"{self.thickness_mm:g} mm"
        parts = [
            f"{self.n_slices} slices",
            plane,
            "contrast" if self.contrast else "no contrast agent in header",
            thickness,
        ]
        if self.localizer:
            parts.insert(0, "localizer")
        name = f" {self.description!r}" if self.description else ""
        return f"{self.uid}{name} ({', '.join(parts)})"


@dataclass(frozen=True)
class SeriesChoice:
    """The chosen series and why (one reason per rule step that decided something)."""

    chosen: SeriesCandidate
    reasons: tuple[str, ...]

    def explain(self) -> str:
        why = "; ".join(self.reasons) if self.reasons else "the only CT series"
        return f"CT series {self.chosen.summary()} chosen: {why}"


def _number(value: object) -> float | None:
    try:
        number = float(value)  # type: ignore[arg-type]
    except (TypeError, ValueError):
        return None
    return number if math.isfinite(number) else None


def _axial(header: pydicom.Dataset) -> bool | None:
    iop = header.get("ImageOrientationPatient")
    if iop is None or len(iop) != 6:
        return None
    try:
        row, col = [float(v) for v in iop[:3]], [float(v) for v in iop[3:]]
    except (TypeError, ValueError):
        return None
    normal = (
        row[1] * col[2] - row[2] * col[1],
        row[2] * col[0] - row[0] * col[2],
        row[0] * col[1] - row[1] * col[0],
    )
    length = math.sqrt(sum(v * v for v in normal))
    if length == 0:
        return None
    return abs(normal[2]) / length >= math.cos(math.radians(AXIAL_TOLERANCE_DEG))


Step = tuple[str, Callable[[Sequence[SeriesCandidate]], list[SeriesCandidate]]]


def _thinnest(candidates: Sequence[SeriesCandidate]) -> list[SeriesCandidate]:
    known = [c.thickness_mm for c in candidates if c.thickness_mm is not None]
    if not known:
        return list(candidates)
    least = min(known)
    return [
        c
        for c in candidates
        if c.thickness_mm is not None and c.thickness_mm - least <= THICKNESS_TOLERANCE_MM
    ]


def _most_slices(candidates: Sequence[SeriesCandidate]) -> list[SeriesCandidate]:
    most = max(c.n_slices for c in candidates)
    return [c for c in candidates if c.n_slices == most]


STEPS: tuple[Step, ...] = (
    (
        "not a localizer, at least 3 slices",
        lambda cs: [c for c in cs if not c.localizer and c.n_slices >= MIN_SLICES],
    ),
    ("axial", lambda cs: [c for c in cs if c.axial]),
    ("contrast-enhanced (ContrastBolusAgent)", lambda cs: [c for c in cs if c.contrast]),
    ("thinnest slices", _thinnest),
    ("most slices", _most_slices),
)


def choose_series(
    candidates: Sequence[SeriesCandidate], wanted: str | None = None, where: str = "the study"
) -> SeriesChoice:
    """The CT series to read among ``candidates`` (those of ``where``): ``wanted`` (a
    SeriesInstanceUID, which must be one of them) or the one the module's rule leaves.

    Raises SeriesChoiceError: no candidate, ``wanted`` not among them, or a tie after every step.
    """
    listing = "; ".join(c.summary() for c in candidates)
    if not candidates:
        raise SeriesChoiceError(f"{where} has no CT series")
    if wanted is not None:
        for candidate in candidates:
            if candidate.uid == wanted:
                return SeriesChoice(candidate, ("chosen by --series-uid",))
        raise SeriesChoiceError(
            f"--series-uid {wanted} is not a CT series of {where}; its CT series: {listing}"
        )
    left = list(candidates)
    reasons: list[str] = []
    for name, keep in STEPS:
        if len(left) == 1:
            break
        kept = keep(left)
        if kept and len(kept) < len(left):
            reasons.append(f"{name} ({len(kept)} of {len(left)})")
            left = kept
    if len(left) > 1:
        tied = "; ".join(c.summary() for c in left)
        raise SeriesChoiceError(
            f"{where} has {len(candidates)} CT series and the rule (axial, contrast-enhanced, "
            f"thinnest, most slices) leaves {len(left)}; give --series-uid, one of: {tied}"
        )
    return SeriesChoice(left[0], tuple(reasons))
