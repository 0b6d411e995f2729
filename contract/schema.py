"""The one source of truth for tensor names, dtypes and shapes on the serving path.

Every Triton ``config.pbtxt`` in ``model_repository/`` is rendered from this module, the client SDK
builds its requests from it, and the ``model.py`` files read their tensor names from it.

Axis order is (z, y, x) everywhere; shapes here exclude the batch axis; -1 means variable.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from dmfn.contract.params import DEFAULT_VIEW_SIZE

#: Triton dtype name -> numpy dtype.
TRITON_TO_NUMPY: dict[str, type | np.dtype] = {
    "INT16": np.int16,
    "INT32": np.int32,
    "UINT8": np.uint8,
    "FP32": np.float32,
    "BYTES": np.object_,
    "BOOL": np.bool_,
}

#: CLINICAL fp32[5] layout: age in years, sex (1 = male, 0 = female), location one-hot.
CLINICAL_FIELDS: tuple[str, ...] = (
    "age_years",
    "sex_male",
    "location_anterior",
    "location_middle",
    "location_posterior",
)
LOCATIONS: tuple[str, ...] = ("anterior", "middle", "posterior")
#: Where the location one-hot sits in CLINICAL.
LOCATION_SLICE = slice(2, 2 + len(LOCATIONS))
SEXES: tuple[str, ...] = ("M", "F")
#: Accepted ages in years, inclusive (CLINICAL[0]). The one range used by the clinical record
#: (``dmfn.contract.study.Clinical``), the manifest reader and the preprocessing's check of CLINICAL.
AGE_RANGE_YEARS: tuple[float, float] = (0.0, 120.0)

#: MEASUREMENTS fp32[5] layout (from the lesion mask after isotropic resampling), mm units.
MEASUREMENT_FIELDS: tuple[str, ...] = (
    "volume_mm3",
    "max_axial_area_mm2",
    "long_axis_mm",
    "short_axis_mm",
    "craniocaudal_mm",
)
#: Unit of each MEASUREMENTS field, for display.
MEASUREMENT_UNITS: dict[str, str] = {
    "volume_mm3": "mm^3",
    "max_axial_area_mm2": "mm^2",
    "long_axis_mm": "mm",
    "short_axis_mm": "mm",
    "craniocaudal_mm": "mm",
}

#: Lesion-size features appended to TABULAR when the preprocessing parameters ask for them
#: (``tabular_measurements``), derived from MEASUREMENTS: the diameter of the sphere of the
#: lesion's volume, and its long and short axis, all in mm.
TABULAR_MEASUREMENT_FIELDS: tuple[str, ...] = (
    "equivalent_diameter_mm",
    "long_axis_mm",
    "short_axis_mm",
)


def tabular_measurements(measurements: np.ndarray) -> np.ndarray:
    """The TABULAR_MEASUREMENT_FIELDS of a MEASUREMENTS row (or rows [..., 5]), float32 mm."""
    m = np.asarray(measurements, dtype=np.float64)
    index = {name: i for i, name in enumerate(MEASUREMENT_FIELDS)}
    diameter = np.cbrt(6.0 * m[..., index["volume_mm3"]] / np.pi)
    out = np.stack(
        [diameter, m[..., index["long_axis_mm"]], m[..., index["short_axis_mm"]]], axis=-1
    )
    return out.astype(np.float32)


#: Default CTC feature names: the paper measures one, the CTC level in pg/ml.
DEFAULT_CTC_FEATURES: tuple[str, ...] = ("ctc_level_pg_ml",)

# Tensor names (ensemble inputs, intermediate tensors, ensemble outputs).
CT_HU = "CT_HU"
VOLUME_SHAPE = "VOLUME_SHAPE"
SPACING_MM = "SPACING_MM"
ROI_MASK = "ROI_MASK"
CTC = "CTC"
CLINICAL = "CLINICAL"
VIEWS = "VIEWS"
TABULAR = "TABULAR"
MEASUREMENTS = "MEASUREMENTS"
LOGITS = "LOGITS"
PROBS = "PROBS"
TOP3_INDEX = "TOP3_INDEX"
TOP3_LABEL = "TOP3_LABEL"
MALIGNANT_PROB = "MALIGNANT_PROB"
MANAGEMENT = "MANAGEMENT"
#: The conformal class set (contract/conformal.py): the classes in the set, most probable first,
#: padded with b"" to the number of classes; and the binary set ("malignant", "benign", or both).
CLASS_SET = "CLASS_SET"
BINARY_SET = "BINARY_SET"
#: The out-of-distribution score of the study (contract/ood.py; higher = more unusual) and
#: whether it is above the threshold fitted on the training split.
OOD_SCORE = "OOD_SCORE"
OOD_FLAG = "OOD_FLAG"
#: The binary set's two answers, in the order of the binary probabilities [benign, malignant].
BINARY_LABELS = ("benign", "malignant")
#: Internal name of the measurements between preprocess and postprocess. Triton 2.51 deadlocks
#: when an ensemble output is also an intermediate tensor, so postprocess re-emits MEASUREMENTS.
MEASUREMENTS_INTERNAL = "MEASUREMENTS_PRE"

# Model names in the repository.
PIPELINE_MODEL = "dmfn_pipeline"
PREPROCESS_MODEL = "preprocess"
NET_MODEL = "dmfn"
POSTPROCESS_MODEL = "postprocess"

TOP_K = 3


def clinical_vector(age_years: float, sex: str, location: str) -> np.ndarray:
    """The CLINICAL fp32[5] tensor (:data:`CLINICAL_FIELDS`): age in years, 1 for a man (sex
    ``"M"``), the one-hot of ``location``. The one place this layout is built; the values are
    checked by :class:`dmfn.contract.study.Clinical` and at the server."""
    out = np.zeros(len(CLINICAL_FIELDS), np.float32)
    out[0] = age_years
    out[1] = 1.0 if sex == "M" else 0.0
    out[LOCATION_SLICE.start + LOCATIONS.index(location)] = 1.0
    return out


@dataclass(frozen=True)
class TensorSpec:
    """One tensor: its name, Triton dtype and dims without the batch axis (-1 = variable)."""

    name: str
    dtype: str
    dims: tuple[int, ...]
    optional: bool = False

    @property
    def numpy_dtype(self) -> np.dtype:
        return np.dtype(TRITON_TO_NUMPY[self.dtype])


@dataclass(frozen=True)
class Schema:
    """The tensor contract for one exported model (depends on its CTC width, classes, view size)."""

    n_ctc: int = len(DEFAULT_CTC_FEATURES)
    n_classes: int = 20
    view_size: int = DEFAULT_VIEW_SIZE
    #: TABULAR ends with TABULAR_MEASUREMENT_FIELDS (PreprocessParams.tabular_measurements).
    measurement_features: bool = False

    def __post_init__(self) -> None:
        for name in ("n_ctc", "n_classes"):
            if getattr(self, name) < 1:
                raise ValueError(f"argument '{name}': must be >= 1, got {getattr(self, name)}")
        if self.n_classes < TOP_K:
            raise ValueError(f"argument 'n_classes': must be >= {TOP_K}, got {self.n_classes}")

    @property
    def n_tabular(self) -> int:
        extra = len(TABULAR_MEASUREMENT_FIELDS) if self.measurement_features else 0
        return self.n_ctc + len(CLINICAL_FIELDS) + extra

    # --- what the client sends (ensemble and preprocess inputs) ---
    @property
    def request_inputs(self) -> tuple[TensorSpec, ...]:
        """Every request tensor has fixed dims, so Triton checks each shape exactly and no
        client-chosen dimension can reach a backend (see :mod:`dmfn.contract.wire`): the volume
        and mask travel as one BYTES element each, their shape as VOLUME_SHAPE."""
        return (
            TensorSpec(CT_HU, "BYTES", (1,)),
            TensorSpec(VOLUME_SHAPE, "INT32", (3,)),
            TensorSpec(SPACING_MM, "FP32", (3,)),
            TensorSpec(ROI_MASK, "BYTES", (1,)),
            TensorSpec(CTC, "FP32", (self.n_ctc,)),
            TensorSpec(CLINICAL, "FP32", (len(CLINICAL_FIELDS),)),
        )

    # --- preprocess -> dmfn (fixed shapes so that the net batches) ---
    @property
    def preprocess_outputs(self) -> tuple[TensorSpec, ...]:
        return (
            TensorSpec(VIEWS, "FP32", (3, self.view_size, self.view_size)),
            TensorSpec(TABULAR, "FP32", (self.n_tabular,)),
            TensorSpec(MEASUREMENTS_INTERNAL, "FP32", (len(MEASUREMENT_FIELDS),)),
        )

    @property
    def net_inputs(self) -> tuple[TensorSpec, ...]:
        return self.preprocess_outputs[:2]

    @property
    def net_outputs(self) -> tuple[TensorSpec, ...]:
        return (TensorSpec(LOGITS, "FP32", (self.n_classes,)),)

    @property
    def postprocess_inputs(self) -> tuple[TensorSpec, ...]:
        return (self.net_outputs[0], self.preprocess_outputs[2])

    # --- what the client receives (ensemble outputs) ---
    @property
    def response_outputs(self) -> tuple[TensorSpec, ...]:
        return (
            TensorSpec(PROBS, "FP32", (self.n_classes,)),
            TensorSpec(TOP3_INDEX, "INT32", (TOP_K,)),
            TensorSpec(TOP3_LABEL, "BYTES", (TOP_K,)),
            TensorSpec(MALIGNANT_PROB, "FP32", (1,)),
            TensorSpec(MANAGEMENT, "BYTES", (1,)),
            TensorSpec(MEASUREMENTS, "FP32", (len(MEASUREMENT_FIELDS),)),
            TensorSpec(CLASS_SET, "BYTES", (self.n_classes,)),
            TensorSpec(BINARY_SET, "BYTES", (len(BINARY_LABELS),)),
            TensorSpec(OOD_SCORE, "FP32", (1,)),
            TensorSpec(OOD_FLAG, "BOOL", (1,)),
        )
