"""From logits to what a clinician reads: the one definition of postprocessing, used by the
Triton ``postprocess`` model and by in-process prediction (``dmfn predict --checkpoint``), so both
give the same numbers."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from dmfn.contract import schema as S
from dmfn.contract.conformal import binary_sets, class_sets
from dmfn.contract.management import UNCERTAIN, ManagementPolicy, load_management
from dmfn.contract.ood import energy_score, ood_flags
from dmfn.contract.taxonomy import Taxonomy
from dmfn.contract.uncertainty import Uncertainty


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
    #: the class-set and OOD fits stored with the model; None: sets empty, never flagged
    uncertainty: Uncertainty | None = None

    @classmethod
    def of(
        cls,
        taxonomy: Taxonomy,
        temperature: float = 1.0,
        management: ManagementPolicy | None = None,
        uncertainty: Uncertainty | None = None,
    ) -> Postprocessor:
        policy = management or load_management()
        return cls(
            np.array([n.encode() for n in taxonomy.names], dtype=np.object_),
            np.array(taxonomy.malignant_mask, dtype=bool),
            np.array([o.encode() for o in (*policy.options, UNCERTAIN)], dtype=np.object_),
            policy.option_matrix(taxonomy.names),
            float(policy.min_probability),
            float(temperature),
            uncertainty,
        )

    def __call__(self, logits: np.ndarray, measurements: np.ndarray) -> dict[str, np.ndarray]:
        """The response tensors of ``logits`` [B, C] and ``measurements`` [B, 5]: PROBS,
        TOP3_INDEX and TOP3_LABEL (most probable first, ties to the lower index),
        MALIGNANT_PROB (sum over the malignant classes), MANAGEMENT (the policy's option whose
        summed probability reaches its threshold, else ``uncertain``; see
        :mod:`dmfn.contract.management`), MEASUREMENTS, CLASS_SET (the conformal set's classes,
        most probable first, padded with b""), BINARY_SET (b"malignant" / b"benign", the more
        probable first, padded), OOD_SCORE and OOD_FLAG (:mod:`dmfn.contract.uncertainty`)."""
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
            **self._uncertainty(logits, probs, malignant[:, 0]),
        }

    def _uncertainty(
        self, logits: np.ndarray, probs: np.ndarray, malignant: np.ndarray
    ) -> dict[str, np.ndarray]:
        n, c = probs.shape
        class_set = np.full((n, c), b"", dtype=np.object_)
        binary_set = np.full((n, 2), b"", dtype=np.object_)
        if self.uncertainty is None:
            score = energy_score(logits)
            return {S.CLASS_SET: class_set, S.BINARY_SET: binary_set,
                    S.OOD_SCORE: score.astype(np.float32)[:, None],
                    S.OOD_FLAG: np.zeros((n, 1), bool)}  # fmt: skip
        members = class_sets(self.uncertainty.conformal, probs)
        order = np.argsort(-probs, axis=1, kind="stable")
        for row in range(n):
            chosen = [k for k in order[row] if members[row, k]]
            class_set[row, : len(chosen)] = self.labels[chosen]
        binary_probs = np.stack([1.0 - malignant, malignant], axis=1)
        binary_members = binary_sets(self.uncertainty.conformal, malignant)
        binary_order = np.argsort(-binary_probs, axis=1, kind="stable")
        for row in range(n):
            chosen = [BINARY_NAMES[k] for k in binary_order[row] if binary_members[row, k]]
            binary_set[row, : len(chosen)] = chosen
        scores, flags = ood_flags(self.uncertainty.ood, logits)
        return {S.CLASS_SET: class_set, S.BINARY_SET: binary_set,
                S.OOD_SCORE: np.asarray(scores, np.float32)[:, None],
                S.OOD_FLAG: np.asarray(flags, bool)[:, None]}  # fmt: skip


#: The binary set's answers as bytes, in the binary probabilities' order [benign, malignant].
BINARY_NAMES = np.array([name.encode() for name in S.BINARY_LABELS], dtype=np.object_)
