"""Triton python-backend model ``postprocess``: logits -> what a clinician reads.

Inputs LOGITS fp32[B, C] and MEASUREMENTS_PRE fp32[B, 5] (mm units). Outputs:
PROBS fp32[B, C] (``softmax(logits / T)``, T the calibration temperature of the config), TOP3_INDEX int32[B, 3] and TOP3_LABEL bytes[B, 3] (most probable
first, ties to the lower index), MALIGNANT_PROB fp32[B, 1] (sum of the probabilities of the
taxonomy's malignant classes), MANAGEMENT bytes[B, 1] (the option of the management policy
whose classes' summed probability reaches its threshold, else "uncertain"; the policy is the
repository's management.json) and MEASUREMENTS fp32[B, 5] (MEASUREMENTS_PRE re-emitted: Triton 2.51 deadlocks
when an ensemble output is also an intermediate tensor).

The computation is :class:`dmfn.contract.postprocess.Postprocessor` (shared with in-process
prediction). The taxonomy (class order = logit order) is read once from the repository file written by
``dmfn export``. The model can be called directly, so it refuses non-finite inputs itself
(INVALID_ARG on that request's own response) rather than turn NaN into a class.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import triton_python_backend_utils as pb_utils

from dmfn.contract import schema as S
from dmfn.contract.audit import ServerAudit
from dmfn.contract.management import load_management
from dmfn.contract.postprocess import Postprocessor
from dmfn.contract.taxonomy import load_taxonomy
from dmfn.contract.uncertainty import Uncertainty
from dmfn.contract.workers import WorkerRecorder


class TritonPythonModel:
    def initialize(self, args: dict) -> None:
        config = json.loads(args["model_config"])
        parameters = {k: v["string_value"] for k, v in config["parameters"].items()}
        # fatal signals are recorded for the supervisor of dmfn serve (contract/workers.py)
        self.recorder = WorkerRecorder(args.get("model_instance_name", ""))
        # the audit trail's line of each answered study; off outside dmfn serve
        self.audit = ServerAudit(args.get("model_instance_name", ""), pb_utils.Logger.log_warn)
        taxonomy_file = parameters["taxonomy_file"]
        #: Calibration temperature fitted on validation (1.0 in repositories that predate it).
        self.temperature = float(parameters.get("temperature", "1.0"))
        taxonomy = load_taxonomy(Path(args["model_repository"]) / taxonomy_file)
        n_classes = pb_utils.get_output_config_by_name(config, S.PROBS)["dims"][0]
        if len(taxonomy) != n_classes:
            raise pb_utils.TritonModelException(
                f"postprocess: taxonomy has {len(taxonomy)} classes but PROBS has {n_classes}"
            )
        # the management policy (dmfn's default in repositories that predate the file)
        management_file = parameters.get("management_file")
        policy = load_management(
            Path(args["model_repository"]) / management_file if management_file else None
        )
        # the class-set and OOD fits (repositories that predate them: empty sets, no flag)
        uncertainty_file = parameters.get("uncertainty_file")
        uncertainty = None
        if uncertainty_file:
            path = Path(args["model_repository"]) / uncertainty_file
            uncertainty = Uncertainty.from_json(path.read_text())
        self.postprocess = Postprocessor.of(taxonomy, self.temperature, policy, uncertainty)

    def _one(self, request) -> pb_utils.InferenceResponse:
        logits = pb_utils.get_input_tensor_by_name(request, S.LOGITS).as_numpy()
        measurements = pb_utils.get_input_tensor_by_name(
            request, S.MEASUREMENTS_INTERNAL
        ).as_numpy()
        for name, array in ((S.LOGITS, logits), (S.MEASUREMENTS_INTERNAL, measurements)):
            if not np.isfinite(array).all():
                message = (
                    f"postprocess: input '{name}': must contain only finite values (found NaN/Inf)"
                )
                self._audit(request, len(logits), "refused", rule=message)
                return pb_utils.InferenceResponse(
                    error=pb_utils.TritonError(message, pb_utils.TritonError.INVALID_ARG)
                )
        outputs = self.postprocess(logits, measurements)
        if self.audit.active:
            labels = np.asarray(outputs[S.TOP3_LABEL])
            malignant = np.asarray(outputs[S.MALIGNANT_PROB]).reshape(len(logits), -1)
            for row in range(len(logits)):
                top = labels[row, 0]
                self._audit(
                    request, 1, "ok",
                    top_class=top.decode() if isinstance(top, bytes) else str(top),
                    malignant_prob=float(malignant[row, 0]),
                )  # fmt: skip
        return pb_utils.InferenceResponse(
            output_tensors=[pb_utils.Tensor(name, value) for name, value in outputs.items()]
        )

    def _audit(self, request, rows: int, outcome: str, **fields) -> None:
        """``rows`` audit lines of ``request`` (never raises)."""
        if not self.audit.active:
            return
        try:
            for _ in range(max(1, rows)):
                self.audit.write(request.request_id(), request.parameters(), outcome, **fields)
        except Exception as err:
            pb_utils.Logger.log_warn(f"postprocess: audit line not written: {err!r}")

    def execute(self, requests: list) -> list:
        responses = []
        for request in requests:
            try:
                responses.append(self._one(request))
            except Exception as err:  # never raise out of execute
                pb_utils.Logger.log_error(f"postprocess: {err!r}")
                self._audit(request, 1, "failed", rule=f"postprocess: {err}")
                error = pb_utils.TritonError(f"postprocess: {err}")
                responses.append(pb_utils.InferenceResponse(error=error))
        return responses

    def finalize(self) -> None:
        self.recorder.close()
        self.audit.close()
