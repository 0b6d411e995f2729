"""Triton python-backend model ``preprocess``: one CT study per batch item -> fixed-shape tensors.

Inputs per batch item (the wire format of :mod:`dmfn.contract.wire`; every dim is fixed, so Triton
checks shapes exactly): CT_HU BYTES[1] (int16 HU, C order (z, y, x)), VOLUME_SHAPE int32[3],
SPACING_MM fp32[3] (z, y, x) mm, ROI_MASK BYTES[1] (bit-packed), CTC fp32[K], CLINICAL fp32[5].
Outputs: VIEWS fp32[3, S, S], TABULAR fp32[K + 5], MEASUREMENTS_PRE fp32[5] (mm units).

Each study is decoded and checked against the model's input limits
(:class:`dmfn.contract.limits.InputLimits`, written by ``dmfn export`` into this model's
parameters) before any array is built from it, then run through
:func:`dmfn.preprocess.preprocess_study` with the parameters the model was trained with.

Batching: the model has a dynamic batcher, so one ``execute`` receives every request that queued
up meanwhile (each may have its own volume shape). They are preprocessed in parallel by a pool
of ``worker_threads`` threads (config parameter): the C++ kernels release the GIL. Each worker
runs the kernels with ``openmp_threads`` OpenMP threads (config parameter, default 1: on ROI
crops a team costs more in synchronisation than it gains, and workers x teams would
oversubscribe the CPU). All responses of the batch leave together, so the net's dynamic
batcher sees them together. A bad request gets its own INVALID_ARG error naming the tensor, the
rule and, in a request of several studies, which study; the other requests still succeed.

GPU (``backend`` parameter ``cupy``, written by ``dmfn export --device gpu`` with KIND_GPU): every
study runs through the CuPy CUDA kernels on this instance's GPU, and VIEWS leave as a GPU tensor
through DLPack (no host copy; the net reads it where it runs). Without CuPy or a GPU the model
refuses to load and says why, so the server never reports ready with a backend it cannot run.
"""

from __future__ import annotations

import json
import threading
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
import triton_python_backend_utils as pb_utils

from dmfn.contract import schema as S
from dmfn.contract.audit import ServerAudit
from dmfn.contract.errors import InvalidInput
from dmfn.contract.limits import InputLimits
from dmfn.contract.params import PreprocessParams
from dmfn.contract.workers import WorkerRecorder
from dmfn.preprocess import preprocess_request
from dmfn.preprocess.gpu import cupy_module, cupy_unavailable_reason, is_device_array
from dmfn.preprocess.threads import has_openmp, set_openmp_threads

INPUT_NAMES = tuple(t.name for t in S.Schema().request_inputs)
OUTPUT_NAMES = (S.VIEWS, S.TABULAR, S.MEASUREMENTS_INTERNAL)


def _stack(arrays: tuple) -> np.ndarray:
    """Stack one output's per-study arrays where they live (numpy, or cupy on the GPU)."""
    if is_device_array(arrays[0]):
        return cupy_module().stack(arrays)
    return np.stack(arrays)


class TritonPythonModel:
    def initialize(self, args: dict) -> None:
        config = json.loads(args["model_config"])
        parameters = {k: v["string_value"] for k, v in config.get("parameters", {}).items()}
        path = Path(args["model_repository"]) / parameters["preprocess_params_file"]
        if not path.is_file():
            raise pb_utils.TritonModelException(
                f"preprocess: {path} is missing; write the repository with `dmfn export`"
            )
        if "input_limits" not in parameters:
            raise pb_utils.TritonModelException(
                "preprocess: the config has no 'input_limits' parameter (a repository written by "
                "an older `dmfn export`); export the model again"
            )
        self.params = PreprocessParams.from_json(path.read_text())
        self.limits = InputLimits.from_json(parameters["input_limits"])
        self.ctc_names = tuple(json.loads(parameters.get("ctc_features", "[]"))) or None
        self.logger = pb_utils.Logger
        self.out_dtypes = {
            spec["name"]: pb_utils.triton_string_to_numpy(spec["data_type"])
            for spec in config["output"]
        }
        self.backend = parameters.get("backend", "cpu")
        self.device_id = int(args.get("model_instance_device_id", "0"))
        self.recorder = WorkerRecorder(args.get("model_instance_name", ""))
        # the audit trail's refused lines (the ok lines are postprocess's); off outside dmfn serve
        self.audit = ServerAudit(args.get("model_instance_name", ""), self.logger.log_warn)
        if self.backend == "cupy":
            reason = cupy_unavailable_reason()
            if reason is not None:
                raise pb_utils.TritonModelException(
                    f"preprocess: the repository asks for the GPU backend, which is unavailable: "
                    f"{reason}; export with --device cpu for a CPU host"
                )
        elif self.backend != "cpu":
            raise pb_utils.TritonModelException(
                f"preprocess: unknown backend parameter {self.backend!r} (cpu or cupy)"
            )
        self.workers = max(1, int(parameters.get("worker_threads", "1")))
        self.omp_threads = max(1, int(parameters.get("openmp_threads", "1")))
        # Which threads have their OpenMP / device settings (execute's own thread included).
        self._configured = threading.local()
        self.pool = (
            ThreadPoolExecutor(
                self.workers, thread_name_prefix="preprocess", initializer=self._init_worker
            )
            if self.workers > 1
            else None
        )
        self.logger.log_info(
            f"preprocess: parameters {self.params.digest()[:12]} from {path}; "
            f"{self.workers} worker threads x {self.omp_threads} OpenMP threads, "
            f"backend {self.backend}"
            + (f" on GPU {self.device_id}" if self.backend == "cupy" else "")
            + ("" if has_openmp() else " (OpenMP runtime not found: its default)")
        )

    def _init_worker(self) -> None:
        """Worker thread start: its own OpenMP thread count (the setting is per thread) and, on
        the GPU backend, this instance's device (CuPy's current device is per thread too)."""
        set_openmp_threads(self.omp_threads)
        if self.backend == "cupy":
            cupy_module().cuda.Device(self.device_id).use()
        self._configured.done = True

    def _preprocess(self, request) -> list[np.ndarray] | pb_utils.TritonError:
        """Worker thread: read, decode, check and preprocess every study of one request.

        Returns the output arrays, or the error that refuses the request (naming the tensor and,
        in a batch, the study). It never raises: an exception's traceback would keep the request's
        input tensors alive until the garbage collector runs, and the python backend's shared
        memory grows meanwhile (measured: +20 MB in 30 s at 20 % bad requests).
        """
        try:
            arrays = {
                n: pb_utils.get_input_tensor_by_name(request, n).as_numpy() for n in INPUT_NAMES
            }
            studies = preprocess_request(
                arrays, self.params, self.limits, self.ctc_names, backend=self.backend
            )
            parts = [(p.views, p.tabular, p.measurements) for p in studies]
            outputs = [_stack(column) for column in zip(*parts, strict=True)]
            if self.backend == "cupy":  # the kernels are asynchronous; DLPack hands no stream
                cupy_module().cuda.get_current_stream().synchronize()
            return outputs
        except InvalidInput as err:
            message, code = str(err), pb_utils.TritonError.INVALID_ARG
        except Exception as err:  # never raise out of execute: it would fail the whole batch
            message = f"internal error: {type(err).__name__}: {err}"
            code = pb_utils.TritonError.INTERNAL
            self.logger.log_error(f"preprocess: {message}")
        if self.audit.active:
            self._audit_refusal(request, message, code == pb_utils.TritonError.INVALID_ARG)
        return pb_utils.TritonError(f"preprocess: {message}", code)

    def _audit_refusal(self, request, message: str, refused: bool) -> None:
        """One audit line per study of a refused request (never raises)."""
        try:
            shape = pb_utils.get_input_tensor_by_name(request, S.VOLUME_SHAPE)
            rows = max(1, int(shape.as_numpy().shape[0])) if shape is not None else 1
            for _ in range(rows):
                self.audit.write(
                    request.request_id(),
                    request.parameters(),
                    "refused" if refused else "failed",
                    rule=f"preprocess: {message}",
                )
        except Exception as err:
            self.logger.log_warn(f"preprocess: audit line not written: {err!r}")

    def _response(
        self, outputs: list[np.ndarray] | pb_utils.TritonError
    ) -> pb_utils.InferenceResponse:
        if isinstance(outputs, pb_utils.TritonError):
            return pb_utils.InferenceResponse(error=outputs)
        return pb_utils.InferenceResponse(
            output_tensors=[
                pb_utils.Tensor.from_dlpack(name, arr)  # a GPU tensor, no host copy
                if is_device_array(arr)
                else pb_utils.Tensor(name, arr.astype(self.out_dtypes[name], copy=False))
                for name, arr in zip(OUTPUT_NAMES, outputs, strict=True)
            ]
        )

    def _record(self, requests: list) -> None:
        """Tell the supervisor what this worker is about to process (declared voxels)."""
        voxels = 0
        for request in requests:
            shape = pb_utils.get_input_tensor_by_name(request, S.VOLUME_SHAPE)
            if shape is not None:
                voxels += int(np.prod(shape.as_numpy().astype(np.int64), dtype=np.int64))
        self.recorder.request(len(requests), voxels)

    def execute(self, requests: list) -> list:
        if self.recorder.active:
            self._record(requests)
        if len(requests) == 1 or self.pool is None:
            # Nothing to run in parallel: skip the hand-off to a worker thread and back (its
            # wake-ups cost a lone request measurable time on a busy host).
            if not getattr(self._configured, "done", False):
                self._init_worker()
            results = [self._preprocess(r) for r in requests]
        else:
            results = list(self.pool.map(self._preprocess, requests))
        return [self._response(r) for r in results]

    def finalize(self) -> None:
        if self.pool is not None:
            self.pool.shutdown(wait=True, cancel_futures=True)
        self.recorder.close()
        self.audit.close()
