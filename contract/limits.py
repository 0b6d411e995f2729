"""Plausible request values: the part of the model contract that says what a request may hold.

:class:`InputLimits` is stored with the exported model (``dmfn export`` writes it into the
repository, the model card shows it), published to clients in the ensemble's config parameters and
enforced by the server's ``preprocess`` model before any array is built. The SDK runs the same
checks before sending, so a careless request fails on the client with the same message.

Sizes are voxel counts, axes (z, y, x); spacing in mm; CTC in the feature's own unit (the paper's
CTC level: pg/ml); age in years.
"""

from __future__ import annotations

import json
import math
from collections.abc import Iterable, Sequence
from dataclasses import asdict, dataclass, field

import numpy as np

from dmfn.contract import schema as S
from dmfn.contract.errors import InvalidInput

#: Largest ROI crop (voxels) one study may send: 2**25 = 33.5 M voxels, a 17 cm box at
#: 0.5 x 0.5 x 0.6 mm (the client sends the lesion box plus margin, never the whole scan).
DEFAULT_MAX_STUDY_VOXELS = 2**25
#: Largest size of one axis of the crop, in voxels.
DEFAULT_MAX_AXIS_VOXELS = 2048
#: Largest image the client's readers load, in voxels (values, for a file with a list axis):
#: 2**28 = 268 M, a 512 x 512 x 1024 CT (512 MiB as int16). This is the whole scan, before the
#: crop that :data:`DEFAULT_MAX_STUDY_VOXELS` bounds. The readers check a file's declared size
#: (DICOM Rows x Columns x slices, NIfTI ``dim``, NRRD ``sizes``) against it before they allocate
#: or decode anything, so a hostile header costs no memory.
MAX_IMAGE_VOXELS = 2**28
#: Voxel spacing a CT scanner can produce, mm (inclusive).
DEFAULT_SPACING_RANGE_MM: tuple[float, float] = (0.1, 10.0)
#: The lesion's bounding box must span at least this many voxels on every axis: a lesion of one
#: voxel carries no shape, and the model never saw one.
DEFAULT_MIN_LESION_VOXELS = 2
#: Share of the training range added on each side of it to accept a CTC value.
CTC_RANGE_MARGIN = 0.5
#: Bytes of request framing allowed beyond the tensors (HTTP JSON header, gRPC fields).
REQUEST_OVERHEAD_BYTES = 64 * 1024


def widen_range(
    lo: float, hi: float, margin: float = CTC_RANGE_MARGIN, floor: float | None = 0.0
) -> tuple[float, float]:
    """``[lo, hi]`` grown by ``margin * (hi - lo)`` on each side, not below ``floor``.

    Used for CTC features: the range seen in training, with a margin (a CTC level cannot be
    negative, hence the default floor of 0).
    """
    lo, hi = float(lo), float(hi)
    if not (math.isfinite(lo) and math.isfinite(hi) and lo <= hi):
        raise ValueError(f"argument 'lo, hi': need finite lo <= hi, got {lo}, {hi}")
    pad = margin * max(hi - lo, abs(hi) * 0.1, 1e-6)
    out_lo = lo - pad if floor is None else max(floor, lo - pad)
    return out_lo, hi + pad


def _pair(value: object, name: str) -> tuple[float, float]:
    if isinstance(value, str | bytes) or not isinstance(value, Iterable):
        raise InvalidInput(name, f"must be a (low, high) pair, got {value!r}")
    try:
        lo, hi = (float(v) for v in value)
    except (TypeError, ValueError):
        raise InvalidInput(name, f"must be a (low, high) pair, got {value!r}") from None
    if not (math.isfinite(lo) and math.isfinite(hi) and lo <= hi):
        raise InvalidInput(name, f"must be finite with low <= high, got ({lo}, {hi})")
    return lo, hi


def _fmt(value: float) -> str:
    return f"{value:g}"


@dataclass(frozen=True)
class InputLimits:
    """What a request to the served model may hold (all bounds inclusive).

    Attributes:
        ctc_ranges: per CTC feature (TABULAR order), the accepted (low, high), normally the range
            seen in training widened by :func:`widen_range`.
        max_study_voxels: largest number of voxels of one study's crop.
        max_axis_voxels: largest size of one axis of the crop.
        spacing_mm: accepted voxel spacing, mm, on every axis.
        min_lesion_voxels: the lesion mask's bounding box must span at least this many voxels on
            every axis.
        age_years: accepted age, years.
    """

    ctc_ranges: tuple[tuple[float, float], ...]
    max_study_voxels: int = DEFAULT_MAX_STUDY_VOXELS
    max_axis_voxels: int = DEFAULT_MAX_AXIS_VOXELS
    spacing_mm: tuple[float, float] = DEFAULT_SPACING_RANGE_MM
    min_lesion_voxels: int = DEFAULT_MIN_LESION_VOXELS
    age_years: tuple[float, float] = field(default=S.AGE_RANGE_YEARS)

    def __post_init__(self) -> None:
        if isinstance(self.ctc_ranges, str) or not isinstance(self.ctc_ranges, Sequence):
            raise InvalidInput(
                "ctc_ranges", f"must be a sequence of pairs, got {self.ctc_ranges!r}"
            )
        ranges = tuple(_pair(r, "ctc_ranges") for r in self.ctc_ranges)
        if not ranges:
            raise InvalidInput("ctc_ranges", "must give one (low, high) per CTC feature, got none")
        object.__setattr__(self, "ctc_ranges", ranges)
        for name in ("max_study_voxels", "max_axis_voxels", "min_lesion_voxels"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise InvalidInput(name, f"must be an integer >= 1, got {value!r}")
        object.__setattr__(self, "spacing_mm", _pair(self.spacing_mm, "spacing_mm"))
        object.__setattr__(self, "age_years", _pair(self.age_years, "age_years"))
        if self.spacing_mm[0] <= 0:
            raise InvalidInput("spacing_mm", f"must be > 0 mm, got {self.spacing_mm}")

    # ------------------------------------------------------------------ sizes
    def max_body_bytes(self, n_ctc: int | None = None) -> int:
        """Bytes of the largest valid one-study request: int16 voxels, bit-packed mask, the small
        tensors and framing. The front door refuses larger bodies before reading them."""
        n = self.max_study_voxels
        k = len(self.ctc_ranges) if n_ctc is None else n_ctc
        small = 4 * (3 + 3 + k + len(S.CLINICAL_FIELDS)) + 2 * 4  # + BYTES length prefixes
        return 2 * n + math.ceil(n / 8) + small + REQUEST_OVERHEAD_BYTES

    # ------------------------------------------------------------------ checks
    def check_shape(self, shape: object) -> tuple[int, int, int]:
        """VOLUME_SHAPE (z, y, x) as Python ints, each in [1, max_axis_voxels], product at most
        max_study_voxels. Checked in Python integers: no product can overflow."""
        values = np.asarray(shape).reshape(-1)
        if values.shape != (3,) or values.dtype.kind not in "iu":
            raise InvalidInput(
                S.VOLUME_SHAPE, f"must be 3 integers (z, y, x), got {values.tolist()}", "input"
            )
        dims = tuple(int(v) for v in values)
        if not all(1 <= d <= self.max_axis_voxels for d in dims):
            raise InvalidInput(
                S.VOLUME_SHAPE,
                f"every axis must be 1..{self.max_axis_voxels} voxels, got {dims}",
                "input",
            )
        n = dims[0] * dims[1] * dims[2]
        if n > self.max_study_voxels:
            raise InvalidInput(
                S.VOLUME_SHAPE,
                f"a crop of {dims} = {n:,} voxels is above this server's limit of "
                f"{self.max_study_voxels:,} voxels per study; send only the lesion box plus the "
                "model's ROI margin (the dmfn SDK does)",
                "input",
            )
        return dims  # type: ignore[return-value]

    def check_spacing(self, spacing_mm: object) -> tuple[float, float, float]:
        lo, hi = self.spacing_mm
        values = np.asarray(spacing_mm, dtype=np.float64).reshape(-1)
        if values.shape != (3,) or not np.all((values >= lo) & (values <= hi)):
            raise InvalidInput(
                S.SPACING_MM,
                f"voxel spacing (z, y, x) must be within {_fmt(lo)}..{_fmt(hi)} mm on every axis, "
                f"got {values.tolist()}",
                "input",
            )
        return tuple(float(v) for v in values)  # type: ignore[return-value]

    def check_ctc(self, ctc: object, names: Sequence[str] | None = None) -> None:
        values = np.asarray(ctc, dtype=np.float64).reshape(-1)
        if values.shape != (len(self.ctc_ranges),):
            raise InvalidInput(
                S.CTC, f"must hold {len(self.ctc_ranges)} values, got {values.size}", "input"
            )
        for i, (value, (lo, hi)) in enumerate(zip(values, self.ctc_ranges, strict=True)):
            if not lo <= value <= hi:  # NaN fails too
                what = names[i] if names is not None and i < len(names) else f"feature {i}"
                raise InvalidInput(
                    S.CTC,
                    f"{what} = {value:g} is outside the range this model accepts "
                    f"[{_fmt(lo)}, {_fmt(hi)}] (the training range plus a margin; check the "
                    "unit: the paper's CTC level is in pg/ml)",
                    "input",
                )

    def check_age(self, clinical: object) -> None:
        values = np.asarray(clinical, dtype=np.float64).reshape(-1)
        lo, hi = self.age_years
        if values.size < 1 or not lo <= values[0] <= hi:
            got = values[0] if values.size else "nothing"
            raise InvalidInput(
                S.CLINICAL,
                f"{S.CLINICAL_FIELDS[0]} must be within {_fmt(lo)}..{_fmt(hi)} years, got {got}",
                "input",
            )

    def check_lesion(self, mask: np.ndarray) -> None:
        """The mask's nonzero voxels span at least min_lesion_voxels on every axis."""
        spans = []
        for axis in range(mask.ndim):
            other = tuple(a for a in range(mask.ndim) if a != axis)
            hits = np.flatnonzero(mask.any(axis=other))
            spans.append(int(hits[-1] - hits[0] + 1) if hits.size else 0)
        if min(spans) < self.min_lesion_voxels:
            raise InvalidInput(
                S.ROI_MASK,
                f"the lesion must span at least {self.min_lesion_voxels} voxels on every axis "
                f"(z, y, x), got {tuple(spans)}" + (" (empty mask)" if max(spans) == 0 else ""),
                "input",
            )

    def check_values(
        self,
        spacing_mm: object,
        ctc: object,
        clinical: object,
        mask: np.ndarray,
        ctc_names: Sequence[str] | None = None,
    ) -> None:
        """Every value check of one study (the shape is checked by :meth:`check_shape`)."""
        self.check_spacing(spacing_mm)
        self.check_ctc(ctc, ctc_names)
        self.check_age(clinical)
        self.check_lesion(mask)

    # ------------------------------------------------------------------ (de)serialisation
    def to_dict(self) -> dict[str, object]:
        out = asdict(self)
        out["ctc_ranges"] = [list(r) for r in self.ctc_ranges]
        return out

    def to_json(self) -> str:
        return json.dumps(self.to_dict(), sort_keys=True)

    @classmethod
    def from_dict(cls, data: object) -> InputLimits:
        if not isinstance(data, dict):
            raise InvalidInput("input_limits", f"must be a JSON object, got {type(data).__name__}")
        known = {f for f in cls.__dataclass_fields__}
        unknown = sorted(set(data) - known)
        if unknown:
            raise InvalidInput("input_limits", f"unknown keys {unknown}")
        values = dict(data)
        for key in ("spacing_mm", "age_years"):
            if key in values:
                values[key] = tuple(values[key])
        values["ctc_ranges"] = tuple(tuple(r) for r in values.get("ctc_ranges", ()))
        return cls(**values)

    @classmethod
    def from_json(cls, text: str) -> InputLimits:
        try:
            data = json.loads(text)
        except json.JSONDecodeError as err:
            raise InvalidInput("input_limits", f"not valid JSON ({err})") from None
        return cls.from_dict(data)

    def describe(self, ctc_names: Sequence[str]) -> list[str]:
        """Markdown bullet lines for the model card."""
        lines = [
            f"- CTC {name}: {_fmt(lo)} .. {_fmt(hi)}"
            for name, (lo, hi) in zip(ctc_names, self.ctc_ranges, strict=False)
        ]
        return [
            *lines,
            f"- age: {_fmt(self.age_years[0])} .. {_fmt(self.age_years[1])} years",
            f"- voxel spacing: {_fmt(self.spacing_mm[0])} .. {_fmt(self.spacing_mm[1])} mm",
            f"- lesion: at least {self.min_lesion_voxels} voxels on every axis",
            f"- crop: at most {self.max_study_voxels:,} voxels, {self.max_axis_voxels} per axis "
            f"(request body at most {self.max_body_bytes() / 2**20:.1f} MiB)",
        ]
