"""Triton python-backend model ``dmfn`` (target cpu): the exported ONNX net run by ONNX Runtime.

Inputs VIEWS fp32[B, 3, S, S] (axial, coronal, sagittal views in [0, 1]) and TABULAR fp32[B, K+5];
output LOGITS fp32[B, C]. Triton's dynamic batcher hands several requests to one ``execute``; they
are concatenated into one ONNX Runtime call and split back, one response per request, in order.
The session is built once; its intra-op threads come from the config parameter
``intra_op_num_threads``.

The model can be called directly, not only through the ensemble, so it checks its inputs itself:
a request with a non-finite value, or views outside [0, 1] (the windowed range), gets its own
INVALID_ARG error and never reaches the net.
"""

from __future__ import annotations

import itertools
import json
from pathlib import Path

import numpy as np
import onnxruntime as ort
import triton_python_backend_utils as pb_utils

from dmfn.contract import schema as S
from dmfn.contract.workers import WorkerRecorder

#: Windowed views lie in [0, 1]; interpolation may overshoot by float rounding, never by this.
VIEW_SLACK = 1e-3


class TritonPythonModel:
    def initialize(self, args: dict) -> None:
        config = json.loads(args["model_config"])
        params = {k: v["string_value"] for k, v in config.get("parameters", {}).items()}
        # fatal signals are recorded for the supervisor of dmfn serve (contract/workers.py)
        self.recorder = WorkerRecorder(args.get("model_instance_name", ""))
        path = Path(args["model_repository"]) / args["model_version"] / params["model_file"]
        if not path.is_file():
            raise pb_utils.TritonModelException(
                f"dmfn: {path} is missing; write the repository with `dmfn export`"
            )
        options = ort.SessionOptions()
        options.intra_op_num_threads = int(params.get("intra_op_num_threads", "1"))
        options.inter_op_num_threads = 1
        # No busy-waiting between runs: the CPU is shared with the preprocess workers.
        options.add_session_config_entry("session.intra_op.allow_spinning", "0")
        self.session = ort.InferenceSession(
            str(path), sess_options=options, providers=["CPUExecutionProvider"]
        )
        self.input_names = [spec["name"] for spec in config["input"]]
        self.output_dtype = pb_utils.triton_string_to_numpy(
            pb_utils.get_output_config_by_name(config, S.LOGITS)["data_type"]
        )
        pb_utils.Logger.log_info(
            f"dmfn: ONNX Runtime session on {path.name}, "
            f"intra_op_num_threads={options.intra_op_num_threads}"
        )

    def _inputs(self, request) -> dict[str, np.ndarray] | pb_utils.TritonError:
        """The request's arrays, or the INVALID_ARG error that refuses it."""
        arrays = {
            name: pb_utils.get_input_tensor_by_name(request, name).as_numpy()
            for name in self.input_names
        }
        for name, array in arrays.items():
            if not np.isfinite(array).all():
                return pb_utils.TritonError(
                    f"dmfn: input '{name}': must contain only finite values (found NaN/Inf)",
                    pb_utils.TritonError.INVALID_ARG,
                )
        views = arrays.get(S.VIEWS)
        lo, hi = -VIEW_SLACK, 1.0 + VIEW_SLACK
        if views is not None and views.size and (views.min() < lo or views.max() > hi):
            return pb_utils.TritonError(
                f"dmfn: input '{S.VIEWS}': windowed views must lie in [0, 1], got "
                f"[{float(views.min()):g}, {float(views.max()):g}]",
                pb_utils.TritonError.INVALID_ARG,
            )
        return arrays

    def execute(self, requests: list) -> list:
        responses: list = [None] * len(requests)
        good: list[tuple[int, dict[str, np.ndarray]]] = []
        for i, request in enumerate(requests):
            try:
                checked = self._inputs(request)
            except Exception as err:  # never raise out of execute
                checked = pb_utils.TritonError(f"dmfn: cannot read the request: {err}")
            if isinstance(checked, pb_utils.TritonError):
                responses[i] = pb_utils.InferenceResponse(error=checked)
            else:
                good.append((i, checked))
        if not good:
            return responses
        try:
            feeds = {
                name: np.concatenate([arrays[name] for _, arrays in good])
                for name in self.input_names
            }
            (logits,) = self.session.run([S.LOGITS], feeds)
            logits = logits.astype(self.output_dtype, copy=False)
            bounds = np.cumsum([0, *(arrays[self.input_names[0]].shape[0] for _, arrays in good)])
            for (i, _), (lo, hi) in zip(good, itertools.pairwise(bounds), strict=True):
                responses[i] = pb_utils.InferenceResponse(
                    output_tensors=[pb_utils.Tensor(S.LOGITS, logits[lo:hi])]
                )
        except Exception as err:  # never raise out of execute; every request gets the error
            pb_utils.Logger.log_error(f"dmfn: ONNX Runtime failed: {err!r}")
            error = pb_utils.TritonError(f"dmfn: inference failed: {err}")
            for i, _ in good:
                responses[i] = pb_utils.InferenceResponse(error=error)
        return responses
