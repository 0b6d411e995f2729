"""Triton python-backend model ``postprocess``: logits -> what a clinician reads.

Inputs LOGITS fp32[B, C] and MEASUREMENTS_PRE fp32[B, 5] (mm units). Outputs:
PROBS fp32[B, C] (softmax), TOP3_INDEX int32[B, 3] and TOP3_LABEL bytes[B, 3] (most probable
first, ties to the lower index), MALIGNANT_PROB fp32[B, 1] (sum of the probabilities of the
taxonomy's malignant classes), MANAGEMENT bytes[B, 1] (the management suggested for the most
probable class) and MEASUREMENTS fp32[B, 5] (MEASUREMENTS_PRE re-emitted: Triton 2.51 deadlocks
when an ensemble output is also an intermediate tensor).

The taxonomy (class order = logit order) is read once from the repository file written by
``dmfn export``. The model can be called directly, so it refuses non-finite inputs itself
(INVALID_ARG on that request's own response) rather than turn NaN into a class.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import triton_python_backend_utils as pb_utils

from dmfn.contract import schema as S
from dmfn.contract.taxonomy import load_taxonomy


def softmax(logits: np.ndarray) -> np.ndarray:
    """Row-wise softmax in float64 (stable), returned as float32."""
    z = logits.astype(np.float64) - logits.max(axis=1, keepdims=True)
    e = np.exp(z)
    return (e / e.sum(axis=1, keepdims=True)).astype(np.float32)


class TritonPythonModel:
    def initialize(self, args: dict) -> None:
        config = json.loads(args["model_config"])
        taxonomy_file = config["parameters"]["taxonomy_file"]["string_value"]
        taxonomy = load_taxonomy(Path(args["model_repository"]) / taxonomy_file)
        n_classes = pb_utils.get_output_config_by_name(config, S.PROBS)["dims"][0]
        if len(taxonomy) != n_classes:
            raise pb_utils.TritonModelException(
                f"postprocess: taxonomy has {len(taxonomy)} classes but PROBS has {n_classes}"
            )
        self.labels = np.array([n.encode() for n in taxonomy.names], dtype=np.object_)
        self.management = np.array(
            [c.management.encode() for c in taxonomy.classes], dtype=np.object_
        )
        self.malignant = np.array(taxonomy.malignant_mask, dtype=bool)

    def _one(self, request) -> pb_utils.InferenceResponse:
        logits = pb_utils.get_input_tensor_by_name(request, S.LOGITS).as_numpy()
        measurements = pb_utils.get_input_tensor_by_name(
            request, S.MEASUREMENTS_INTERNAL
        ).as_numpy()
        for name, array in ((S.LOGITS, logits), (S.MEASUREMENTS_INTERNAL, measurements)):
            if not np.isfinite(array).all():
                return pb_utils.InferenceResponse(
                    error=pb_utils.TritonError(
                        f"postprocess: input '{name}': must contain only finite values "
                        "(found NaN/Inf)",
                        pb_utils.TritonError.INVALID_ARG,
                    )
                )
        probs = softmax(logits)
        top = np.argsort(-probs, axis=1, kind="stable")[:, : S.TOP_K].astype(np.int32)
        malignant = probs[:, self.malignant].sum(axis=1, keepdims=True, dtype=np.float64)
        outputs = {
            S.PROBS: probs,
            S.TOP3_INDEX: top,
            S.TOP3_LABEL: self.labels[top],
            S.MALIGNANT_PROB: malignant.astype(np.float32),
            S.MANAGEMENT: self.management[top[:, :1]],
            S.MEASUREMENTS: measurements.astype(np.float32, copy=False),
        }
        return pb_utils.InferenceResponse(
            output_tensors=[pb_utils.Tensor(name, value) for name, value in outputs.items()]
        )

    def execute(self, requests: list) -> list:
        responses = []
        for request in requests:
            try:
                responses.append(self._one(request))
            except Exception as err:  # never raise out of execute
                pb_utils.Logger.log_error(f"postprocess: {err!r}")
                error = pb_utils.TritonError(f"postprocess: {err}")
                responses.append(pb_utils.InferenceResponse(error=error))
        return responses
