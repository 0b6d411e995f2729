"""Choosing one segment of a multi-segment mask file (a 3D Slicer segmentation, a DICOM SEG):
one rule and one wording for both readers."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from pathlib import Path
from typing import TypeVar

from dmfn.client.io.errors import ArgumentError

T = TypeVar("T")


def choose_segment(
    segments: Sequence[T],
    wanted: str | int | None,
    path: Path,
    *,
    matches: Callable[[T, str], bool],
    listing: str,
    how: str,
) -> T:
    """The segment of ``path`` that ``wanted`` names (``matches(segment, text)``), or the only
    one when ``wanted`` is None. Otherwise an :class:`ArgumentError` about ``segment`` that
    lists the segments (``listing``) and says ``how`` to name one (e.g. "by name")."""
    if wanted is None:
        if len(segments) == 1:
            return segments[0]
        raise ArgumentError(
            "segment",
            f"required: {path} holds {len(segments)} segments, pick one {how} ({listing})",
        )
    text = str(wanted).strip()
    found = [s for s in segments if matches(s, text)]
    if not found:
        raise ArgumentError(
            "segment", f"{wanted!r} is not a segment of {path} (available: {listing})"
        )
    if len(found) > 1:
        raise ArgumentError("segment", f"{path} has several segments matching {wanted!r}")
    return found[0]
