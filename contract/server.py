"""What a client must know about a served model beyond tensor shapes, published by the server.

The ensemble ``dmfn_pipeline``'s ``config.pbtxt`` carries it as string parameters, so that
:class:`dmfn.client.sdk.DmfnClient` reads it with one model-config call and builds requests that
match the exported model: the ROI margin the model was trained with (the client crops with it,
the server's crop of the crop is then the identity), the CTC feature names in TABULAR order, the
class names in logit order and the plausible input ranges (:class:`~dmfn.contract.limits.InputLimits`)
the server enforces. No torch, no tritonclient here.
"""

from __future__ import annotations

import json
import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field

from dmfn.contract.limits import InputLimits
from dmfn.contract.management import ManagementPolicy, parse_management
from dmfn.contract.predictions import PROVENANCE_COLUMNS, Provenance
from dmfn.contract.uncertainty import Uncertainty

#: Parameter keys of the dmfn_pipeline config.
ROI_MARGIN_KEY = "roi_margin_mm"
CTC_FEATURES_KEY = "ctc_features"
CLASS_NAMES_KEY = "class_names"
INPUT_LIMITS_KEY = "input_limits"
#: The management policy the server applies (its JSON), so a client can explain the suggestion.
MANAGEMENT_KEY = "management_policy"
#: The class-set and OOD fits (contract/uncertainty.py), JSON.
UNCERTAINTY_KEY = "uncertainty"
#: Provenance of the served model: the checkpoint's sha256, its training date, synthetic or not.
PROVENANCE_KEYS = PROVENANCE_COLUMNS


@dataclass(frozen=True)
class ServerContract:
    """ROI margin in mm, CTC feature names (TABULAR order), class names (logit order) and the
    input limits the server enforces (None: not published, e.g. a client-side contract)."""

    roi_margin_mm: float
    ctc_features: tuple[str, ...]
    class_names: tuple[str, ...]
    limits: InputLimits | None = None
    provenance: Provenance = field(default_factory=Provenance)
    management: ManagementPolicy | None = None
    #: the class-set and OOD fits the server applies (None: not published)
    uncertainty: Uncertainty | None = None

    def __post_init__(self) -> None:
        margin = float(self.roi_margin_mm)
        if not (math.isfinite(margin) and margin >= 0):
            raise ValueError(
                f"argument 'roi_margin_mm': must be finite and >= 0 mm, got {self.roi_margin_mm!r}"
            )
        object.__setattr__(self, "roi_margin_mm", margin)
        for name in ("ctc_features", "class_names"):
            values = getattr(self, name)
            if isinstance(values, str) or not all(isinstance(v, str) and v for v in values):
                raise ValueError(f"argument '{name}': must be non-empty strings, got {values!r}")
            if not values or len(set(values)) != len(values):
                raise ValueError(f"argument '{name}': must be non-empty and unique, got {values!r}")
            object.__setattr__(self, name, tuple(values))
        if self.limits is not None:
            if not isinstance(self.limits, InputLimits):
                raise ValueError(
                    f"argument 'limits': must be InputLimits or None, got {type(self.limits).__name__}"
                )
            if len(self.limits.ctc_ranges) != len(self.ctc_features):
                raise ValueError(
                    f"argument 'limits': {len(self.limits.ctc_ranges)} CTC ranges for "
                    f"{len(self.ctc_features)} CTC features"
                )

    def to_parameters(self) -> dict[str, str]:
        """Config parameters (string values; lists as JSON)."""
        out = {
            ROI_MARGIN_KEY: repr(self.roi_margin_mm),
            CTC_FEATURES_KEY: json.dumps(list(self.ctc_features)),
            CLASS_NAMES_KEY: json.dumps(list(self.class_names)),
        }
        if self.limits is not None:
            out[INPUT_LIMITS_KEY] = self.limits.to_json()
        if self.management is not None:
            out[MANAGEMENT_KEY] = self.management.to_json()
        if self.uncertainty is not None:
            out[UNCERTAINTY_KEY] = self.uncertainty.to_json()
        out.update(self.provenance.columns())
        return out

    @classmethod
    def from_parameters(cls, parameters: Mapping[str, object]) -> ServerContract:
        """Parse config parameters: ``{key: "text"}`` or Triton's ``{key: {"string_value": ...}}``.

        Raises ValueError naming a missing or malformed key.
        """

        def text(key: str) -> str:
            if key not in parameters:
                raise ValueError(
                    f"model config parameter '{key}' is missing (a repository written by an older "
                    "`dmfn export`? pass it to the client explicitly)"
                )
            value = parameters[key]
            if isinstance(value, Mapping):
                value = value.get("string_value", "")
            return str(value)

        def names(key: str) -> Sequence[str]:
            try:
                values = json.loads(text(key))
            except json.JSONDecodeError as err:
                raise ValueError(f"model config parameter '{key}': not a JSON list") from err
            if not isinstance(values, list):
                raise ValueError(f"model config parameter '{key}': not a JSON list")
            return values

        try:
            margin = float(text(ROI_MARGIN_KEY))
        except ValueError as err:
            raise ValueError(f"model config parameter '{ROI_MARGIN_KEY}': {err}") from err
        limits = None
        if INPUT_LIMITS_KEY in parameters:
            try:
                limits = InputLimits.from_json(text(INPUT_LIMITS_KEY))
            except ValueError as err:
                raise ValueError(f"model config parameter '{INPUT_LIMITS_KEY}': {err}") from err
        provenance = Provenance.from_columns(
            {k: text(k) for k in PROVENANCE_KEYS if k in parameters}
        )
        management = None
        if MANAGEMENT_KEY in parameters:
            management = parse_management(text(MANAGEMENT_KEY), f"parameter '{MANAGEMENT_KEY}'")
        uncertainty = None
        if UNCERTAINTY_KEY in parameters:
            uncertainty = Uncertainty.from_json(text(UNCERTAINTY_KEY))
        return cls(
            margin,
            tuple(names(CTC_FEATURES_KEY)),
            tuple(names(CLASS_NAMES_KEY)),
            limits,
            provenance,
            management,
            uncertainty,
        )
