"""Triton python-backend model ``dmfn`` (target cpu): the exported ONNX net run by ONNX Runtime.

Inputs VIEWS fp32[B, 3, S, S] (axial, coronal, sagittal views in [0, 1]) and TABULAR fp32[B, K+5];
output LOGITS fp32[B, C]. Triton's dynamic batcher hands several requests to one ``execute``; they
are concatenated into one ONNX Runtime call and split back, one response per request, in order.
The session is built once; its intra-op threads come from the config parameter
``intra_op_num_threads``.
"""

from __future__ import annotations

import itertools
import json
from pathlib import Path

import numpy as np
import onnxruntime as ort
import triton_python_backend_utils as pb_utils

from dmfn.client import schema as S


class TritonPythonModel:
    def initialize(self, args: dict) -> None:
        config = json.loads(args["model_config"])
        params = {k: v["string_value"] for k, v in config.get("parameters", {}).items()}
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

    def execute(self, requests: list) -> list:
        try:
            feeds = {
                name: [pb_utils.get_input_tensor_by_name(r, name).as_numpy() for r in requests]
                for name in self.input_names
            }
            sizes = [a.shape[0] for a in feeds[self.input_names[0]]]
            (logits,) = self.session.run(
                [S.LOGITS], {name: np.concatenate(parts) for name, parts in feeds.items()}
            )
            logits = logits.astype(self.output_dtype, copy=False)
            bounds = np.cumsum([0, *sizes])
            return [
                pb_utils.InferenceResponse(
                    output_tensors=[pb_utils.Tensor(S.LOGITS, logits[lo:hi])]
                )
                for lo, hi in itertools.pairwise(bounds)
            ]
        except Exception as err:  # never raise out of execute; every request gets the error
            pb_utils.Logger.log_error(f"dmfn: ONNX Runtime failed: {err!r}")
            error = pb_utils.TritonError(f"dmfn: inference failed: {err}")
            return [pb_utils.InferenceResponse(error=error) for _ in requests]
