"""From logits to what a clinician reads: the one definition of postprocessing, used by the
Triton ``postprocess`` model and by in-process prediction (``dmfn predict --checkpoint``), so both
give the same numbers."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from dmfn.contract import schema as S
from dmfn.contract.management import UNCERTAIN, ManagementPolicy, load_management
from dmfn.contract.taxonomy import Taxonomy


def softmax(logits: np.ndarray, temperature: float = 1.0) -> np.ndarray:
    """Row-wise ``softmax(logits / temperature)`` computed in float64 (stable), returned as
    float32."""
    z = np.asarray(logits, dtype=np.float64) / temperature
    z -= z.max(axis=1, keepdims=True)
    e = np.exp(z)
    return (e / e.sum(axis=1, keepdims=True)).astype(np.float32)


@dataclass(frozen=True)
class Postprocessor:
    """The taxonomy's labels and malignant mask, the management policy's class-to-option matrix
    and threshold, and the calibration temperature."""

    labels: np.ndarray  # bytes [C]
    malignant: np.ndarray  # bool [C]
    options: np.ndarray  # bytes [M + 1]: the policy's options, then "uncertain"
    option_matrix: np.ndarray  # float64 [C, M]
    min_probability: float
    temperature: float = 1.0

    @classmethod
    def of(
        cls,
        taxonomy: Taxonomy,
        temperature: float = 1.0,
        management: ManagementPolicy | None = None,
    ) -> Postprocessor:
        policy = management or load_management()
        return cls(
            np.array([n.encode() for n in taxonomy.names], dtype=np.object_),
            np.array(taxonomy.malignant_mask, dtype=bool),
            np.array([o.encode() for o in (*policy.options, UNCERTAIN)], dtype=np.object_),
            policy.option_matrix(taxonomy.names),
            float(policy.min_probability),
            float(temperature),
        )

    def __call__(self, logits: np.ndarray, measurements: np.ndarray) -> dict[str, np.ndarray]:
        """The response tensors of ``logits`` [B, C] and ``measurements`` [B, 5]: PROBS,
        TOP3_INDEX and TOP3_LABEL (most probable first, ties to the lower index),
        MALIGNANT_PROB (sum over the malignant classes), MANAGEMENT (the policy's option whose
        summed probability reaches its threshold, else ``uncertain``; see
        :mod:`dmfn.contract.management`), MEASUREMENTS."""
        probs = softmax(logits, self.temperature)
        top = np.argsort(-probs, axis=1, kind="stable")[:, : S.TOP_K].astype(np.int32)
        malignant = probs[:, self.malignant].sum(axis=1, keepdims=True, dtype=np.float64)
        by_option = probs.astype(np.float64) @ self.option_matrix
        best = by_option.argmax(axis=1)
        sure = by_option[np.arange(best.size), best] >= self.min_probability
        choice = np.where(sure, best, len(self.options) - 1)
        return {
            S.PROBS: probs,
            S.TOP3_INDEX: top,
            S.TOP3_LABEL: self.labels[top],
            S.MALIGNANT_PROB: malignant.astype(np.float32),
            S.MANAGEMENT: self.options[choice][:, None],
            S.MEASUREMENTS: np.asarray(measurements, dtype=np.float32),
        }
