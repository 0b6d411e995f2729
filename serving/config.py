"""Render every Triton ``config.pbtxt`` of the model repository from :class:`dmfn.contract.schema.Schema`.

Tensor names, dtypes and dims come only from the schema; this module adds the serving settings
(target runtime, batch sizes, instances, threads). No torch here: the repository writer and the
committed-files test use it without the training stack.

Layout of the rendered repository (see :mod:`dmfn.serving.repository`)::

    preprocess/     python backend: dmfn.preprocess.preprocess_study, variable-shape inputs
    dmfn/           the net: python backend + ONNX Runtime (target cpu), onnxruntime_onnx or
                    tensorrt_plan; dynamic batching
    postprocess/    python backend: probabilities, top-3, malignancy, management
    dmfn_pipeline/  the ensemble the client calls
"""

from __future__ import annotations

import argparse
import json
import math
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from dmfn.contract import schema as S
from dmfn.contract.errors import InvalidInput
from dmfn.contract.schema import Schema, TensorSpec
from dmfn.contract.server import ServerContract

TARGETS: tuple[str, ...] = ("cpu", "onnxruntime", "tensorrt")
#: Where ``preprocess`` runs: the C++ kernels (KIND_CPU) or the CuPy CUDA kernels (KIND_GPU).
DEVICES: tuple[str, ...] = ("cpu", "gpu")
INSTANCE_KINDS: tuple[str, ...] = ("KIND_CPU", "KIND_GPU")
MODEL_NAMES: tuple[str, ...] = (
    S.PREPROCESS_MODEL,
    S.NET_MODEL,
    S.POSTPROCESS_MODEL,
    S.PIPELINE_MODEL,
)

#: File names inside the model directories (relative to ``<repository>/<model>/``).
PARAMS_FILE = "preprocess_params.json"
TAXONOMY_FILE = "taxonomy.csv"
#: The management policy postprocess applies (dmfn.contract.management), next to the taxonomy.
MANAGEMENT_FILE = "management.json"
#: The class-set and OOD fits postprocess applies (dmfn.contract.uncertainty), next to it.
UNCERTAINTY_FILE = "uncertainty.json"
LABELS_FILE = "labels.txt"
#: Net weights inside ``<repository>/dmfn/1/``, by target.
NET_MODEL_FILES: dict[str, str] = {
    "cpu": "model.onnx",
    "onnxruntime": "model.onnx",
    "tensorrt": "model.plan",
}


@dataclass(frozen=True)
class ServingSettings:
    """Scheduling settings of the rendered repository (everything except tensor contracts).

    ``pipeline_max_batch_size`` bounds one client request and one preprocess/postprocess
    execution; the net batches several requests together up to ``net_max_batch_size`` (also the
    largest TensorRT profile batch). Queue delays in microseconds.

    Batching through the ensemble: ``preprocess`` has its own dynamic batcher, so requests that
    arrive together are preprocessed in one ``execute`` by ``preprocess_threads`` worker threads
    (the C++ kernels release the GIL) and their outputs reach the net's dynamic batcher together.
    Each worker runs the kernels with ``preprocess_openmp_threads`` OpenMP threads: on small ROI
    crops one thread per request is faster than a team (measured on 2 cores: 2.6 ms vs 6.4 ms per
    study) and never oversubscribes the CPU; parallelism comes from the workers. ``postprocess``
    batches too (one python-backend round trip for many requests). ``intra_op_threads`` (ONNX
    Runtime, target cpu) defaults to 1: on a small CPU host the cores are better spent on
    preprocessing workers (measured on 2 cores at concurrency 16: 300 req/s with 1 thread,
    226 req/s with 2). Two preprocess instances of one worker thread each beat one instance of
    two threads (272 vs 251 req/s): ``preprocess_study`` still holds the GIL for part of its
    work, and each instance is its own process; on many-core hosts raise both.
    ``net_instance_kind`` ``None`` picks KIND_CPU for the cpu target and KIND_GPU for
    onnxruntime/tensorrt. ``device`` "gpu" runs ``preprocess`` as KIND_GPU with the CuPy kernels
    (dmfn.preprocess.gpu): VIEWS leave it as a GPU tensor through DLPack, with no host copy.
    """

    target: str = "cpu"
    device: str = "cpu"
    pipeline_max_batch_size: int = 8
    net_max_batch_size: int = 32
    preferred_batch_sizes: tuple[int, ...] = (4, 8, 16, 32)
    #: No batching delay: a lone request is not kept waiting for company; under load the
    #: dynamic batcher still batches what queued while the instance was busy
    #: (benchmarks/serving.py --before measures both).
    max_queue_delay_us: int = 0
    preprocess_max_queue_delay_us: int = 0
    preprocess_instances: int = 2
    preprocess_threads: int = 1
    preprocess_openmp_threads: int = 1
    postprocess_max_queue_delay_us: int = 0
    net_instances: int = 1
    postprocess_instances: int = 1
    intra_op_threads: int = 1
    net_instance_kind: str | None = None

    def __post_init__(self) -> None:
        if self.target not in TARGETS:
            raise InvalidInput("target", f"must be one of {TARGETS}, got {self.target!r}")
        for name in (
            "pipeline_max_batch_size",
            "net_max_batch_size",
            "preprocess_instances",
            "preprocess_threads",
            "preprocess_openmp_threads",
            "net_instances",
            "postprocess_instances",
            "intra_op_threads",
        ):
            value = getattr(self, name)
            if not isinstance(value, int) or value < 1:
                raise InvalidInput(name, f"must be an integer >= 1, got {value!r}")
        for name in (
            "max_queue_delay_us",
            "preprocess_max_queue_delay_us",
            "postprocess_max_queue_delay_us",
        ):
            value = getattr(self, name)
            if not isinstance(value, int) or value < 0:
                raise InvalidInput(name, f"must be an integer >= 0, got {value!r}")
        if self.net_max_batch_size < self.pipeline_max_batch_size:
            raise InvalidInput(
                "net_max_batch_size",
                f"must be >= pipeline_max_batch_size ({self.pipeline_max_batch_size}), "
                f"got {self.net_max_batch_size}",
            )
        sizes = self.preferred_batch_sizes
        if not sizes or any(b < 1 or b > self.net_max_batch_size for b in sizes):
            raise InvalidInput(
                "preferred_batch_sizes",
                f"must be non-empty, each in [1, net_max_batch_size={self.net_max_batch_size}], "
                f"got {sizes}",
            )
        if self.net_instance_kind not in (None, *INSTANCE_KINDS):
            raise InvalidInput(
                "net_instance_kind",
                f"must be one of {INSTANCE_KINDS} or None, got {self.net_instance_kind!r}",
            )
        if self.device not in DEVICES:
            raise InvalidInput("device", f"must be one of {DEVICES}, got {self.device!r}")
        if self.target == "tensorrt" and self.net_instance_kind == "KIND_CPU":
            raise InvalidInput("net_instance_kind", "the tensorrt target needs KIND_GPU")

    @classmethod
    def add_arguments(cls, parser: argparse._ActionsContainer) -> None:
        """One option per setting (:data:`SETTING_FLAGS`), defaults from the dataclass."""
        defaults = cls()
        for name, (flag, text) in SETTING_FLAGS.items():
            default = getattr(defaults, name)
            kwargs: dict[str, Any] = {"dest": name, "default": default}
            if name == "target":
                kwargs["choices"] = TARGETS
            elif name == "device":
                kwargs["choices"] = DEVICES
            elif name == "net_instance_kind":
                kwargs["choices"] = INSTANCE_KINDS
            elif name == "preferred_batch_sizes":
                kwargs["type"] = _int_list
            else:
                kwargs["type"] = int
            shown = ",".join(map(str, default)) if isinstance(default, tuple) else default
            parser.add_argument(flag, help=f"{text} ({shown})", **kwargs)

    @classmethod
    def from_arguments(cls, args: argparse.Namespace) -> ServingSettings:
        """The settings given by :meth:`add_arguments`' options."""
        return cls(**{name: getattr(args, name) for name in SETTING_FLAGS})

    @property
    def resolved_net_instance_kind(self) -> str:
        if self.net_instance_kind is not None:
            return self.net_instance_kind
        return "KIND_CPU" if self.target == "cpu" else "KIND_GPU"


def _int_list(text: str) -> tuple[int, ...]:
    try:
        return tuple(int(v) for v in text.split(","))
    except ValueError:
        raise argparse.ArgumentTypeError(
            f"must be comma-separated integers, got {text!r}"
        ) from None


#: Each setting's command-line flag and help: the one map from these names to flags, for the
#: options (:meth:`ServingSettings.add_arguments`) and for naming a flag in an error.
SETTING_FLAGS: dict[str, tuple[str, str]] = {
    "target": (
        "--target",
        "runtime of the `dmfn` net model: cpu = python backend running ONNX Runtime (works with "
        "the bundled Triton); onnxruntime = Triton's onnxruntime_onnx platform; tensorrt = FP16 "
        "tensorrt_plan engine (needs TensorRT and a GPU)",
    ),
    "device": (
        "--device",
        "where preprocessing runs: cpu = the C++ kernels (KIND_CPU); gpu = the CuPy CUDA kernels "
        "(KIND_GPU, needs CuPy and a GPU on the server; views reach the net through DLPack)",
    ),
    "net_max_batch_size": (
        "--max-batch-size",
        "largest batch the net runs (dynamic batching; TensorRT profile max)",
    ),
    "pipeline_max_batch_size": ("--request-max-batch-size", "largest batch in one client request"),
    "preferred_batch_sizes": (
        "--preferred-batch-sizes",
        "dynamic batching preferred sizes, comma-separated",
    ),
    "max_queue_delay_us": (
        "--max-queue-delay-us",
        "the net's dynamic batching max queue delay in microseconds",
    ),
    "preprocess_instances": ("--preprocess-instances", "preprocess model instances (processes)"),
    "preprocess_threads": (
        "--preprocess-threads",
        "worker threads per preprocess instance; a dynamic batch of requests is preprocessed in "
        "parallel",
    ),
    "preprocess_openmp_threads": (
        "--preprocess-openmp-threads",
        "OpenMP threads of each preprocess worker",
    ),
    "preprocess_max_queue_delay_us": (
        "--preprocess-queue-delay-us",
        "preprocess dynamic batching max queue delay in microseconds",
    ),
    "postprocess_max_queue_delay_us": (
        "--postprocess-queue-delay-us",
        "postprocess dynamic batching max queue delay in microseconds",
    ),
    "net_instances": ("--net-instances", "net model instances"),
    "postprocess_instances": ("--postprocess-instances", "postprocess model instances"),
    "intra_op_threads": (
        "--intra-op-threads",
        "ONNX Runtime intra-op threads per net instance on CPU",
    ),
    "net_instance_kind": (
        "--instance-kind",
        "where the net runs (default: KIND_CPU for cpu, KIND_GPU for onnxruntime/tensorrt)",
    ),
}


# --- a tiny protobuf text-format writer -------------------------------------------------------


class _Enum(str):
    """An enum value, written without quotes (``TYPE_FP32``)."""


class _Repeated(list):
    """A repeated message field, written as ``name [ {...}, {...} ]``."""


_Message = list[tuple[str, Any]]


def _scalar(value: Any) -> str:
    if isinstance(value, _Enum):
        return str(value)
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, int):
        return str(value)
    if isinstance(value, str):
        return json.dumps(value)
    raise TypeError(f"cannot render {value!r} as a protobuf scalar")


def _render(message: _Message, indent: int = 0) -> list[str]:
    pad = "  " * indent
    lines: list[str] = []
    for key, value in message:
        if isinstance(value, _Repeated):
            lines.append(f"{pad}{key} [")
            for i, item in enumerate(value):
                lines.append(f"{pad}  {{")
                lines.extend(_render(item, indent + 2))
                lines.append(f"{pad}  }}" + ("," if i < len(value) - 1 else ""))
            lines.append(f"{pad}]")
        elif isinstance(value, list):
            lines.append(f"{pad}{key} {{")
            lines.extend(_render(value, indent + 1))
            lines.append(f"{pad}}}")
        elif isinstance(value, tuple):
            lines.append(f"{pad}{key}: [ {', '.join(_scalar(v) for v in value)} ]")
        else:
            lines.append(f"{pad}{key}: {_scalar(value)}")
    return lines


def to_pbtxt(message: _Message) -> str:
    return "\n".join(_render(message)) + "\n"


# --- building blocks --------------------------------------------------------------------------


def _tensor(spec: TensorSpec, label_filename: str | None = None) -> _Message:
    fields: _Message = [
        ("name", spec.name),
        ("data_type", _Enum(f"TYPE_{'STRING' if spec.dtype == 'BYTES' else spec.dtype}")),
        ("dims", spec.dims),
    ]
    if spec.optional:
        fields.append(("optional", True))
    if label_filename:
        fields.append(("label_filename", label_filename))
    return fields


def _tensors(specs: Sequence[TensorSpec], labels_for: str | None = None) -> _Repeated:
    return _Repeated(_tensor(s, LABELS_FILE if s.name == labels_for else None) for s in specs)


def _instances(count: int, kind: str) -> _Repeated:
    return _Repeated([[("count", count), ("kind", _Enum(kind))]])


def _parameters(values: dict[str, str]) -> list[tuple[str, Any]]:
    return [
        ("parameters", [("key", key), ("value", [("string_value", value)])])
        for key, value in values.items()
    ]


def _header(name: str, max_batch_size: int) -> _Message:
    return [("name", name), ("max_batch_size", max_batch_size)]


# --- the four models --------------------------------------------------------------------------


def render_preprocess(
    schema: Schema, settings: ServingSettings, contract: ServerContract | None = None
) -> str:
    """``preprocess``: the request tensors (volume and mask as bytes) in, fixed-shape tensors out.

    Dynamically batched (requests of different volume shapes share one ``execute``; each is
    preprocessed on its own by a pool of ``preprocess_threads`` threads), so that the outputs of
    concurrent requests reach the net together and the net's dynamic batcher forms batches.
    ``contract.limits`` (the input limits it enforces) and the CTC feature names go into its
    parameters.
    """
    extra = {}
    if contract is not None:
        _check_contract(schema, contract)
        extra = {"ctc_features": json.dumps(list(contract.ctc_features))}
        if contract.limits is not None:
            extra["input_limits"] = contract.limits.to_json()
    message = [
        *_header(S.PREPROCESS_MODEL, settings.pipeline_max_batch_size),
        ("backend", "python"),
        ("input", _tensors(schema.request_inputs)),
        ("output", _tensors(schema.preprocess_outputs)),
        (
            "dynamic_batching",
            [("max_queue_delay_microseconds", settings.preprocess_max_queue_delay_us)],
        ),
        (
            "instance_group",
            _instances(
                settings.preprocess_instances,
                "KIND_GPU" if settings.device == "gpu" else "KIND_CPU",
            ),
        ),
        *_parameters(
            {
                "preprocess_params_file": PARAMS_FILE,
                "backend": "cupy" if settings.device == "gpu" else "cpu",
                "worker_threads": str(settings.preprocess_threads),
                "openmp_threads": str(settings.preprocess_openmp_threads),
                **extra,
            }
        ),
    ]
    return to_pbtxt(message)


def render_net(schema: Schema, settings: ServingSettings) -> str:
    """``dmfn``: the network, dynamically batched, on the runtime of ``settings.target``."""
    kind = settings.resolved_net_instance_kind
    message = _header(S.NET_MODEL, settings.net_max_batch_size)
    if settings.target == "cpu":
        message.append(("backend", "python"))
    elif settings.target == "onnxruntime":
        message.append(("platform", "onnxruntime_onnx"))
    else:
        message.append(("platform", "tensorrt_plan"))
    message += [
        ("input", _tensors(schema.net_inputs)),
        ("output", _tensors(schema.net_outputs, labels_for=S.LOGITS)),
        (
            "dynamic_batching",
            [
                ("preferred_batch_size", tuple(settings.preferred_batch_sizes)),
                ("max_queue_delay_microseconds", settings.max_queue_delay_us),
            ],
        ),
        ("instance_group", _instances(settings.net_instances, kind)),
    ]
    if settings.target != "cpu":
        message.append(("default_model_filename", NET_MODEL_FILES[settings.target]))
    params = {"model_file": NET_MODEL_FILES[settings.target]}
    if settings.target == "cpu":
        params["intra_op_num_threads"] = str(settings.intra_op_threads)
    elif settings.target == "onnxruntime" and kind == "KIND_CPU":
        params["intra_op_thread_count"] = str(settings.intra_op_threads)  # ORT backend's key
    message += _parameters(params)
    return to_pbtxt(message)


def render_postprocess(
    schema: Schema,
    settings: ServingSettings,
    temperature: float = 1.0,
    uncertainty: bool = False,
) -> str:
    """``postprocess``: logits -> PROBS (``softmax(logits / temperature)``: the calibration
    temperature fitted on validation), TOP3_*, MALIGNANT_PROB, MANAGEMENT (the policy in
    ``management_file``), CLASS_SET, BINARY_SET, OOD_SCORE, OOD_FLAG (the fits in
    ``uncertainty_file`` when ``uncertainty``, else empty sets and no flag); re-emits
    MEASUREMENTS."""
    if not (math.isfinite(temperature) and temperature > 0):
        raise InvalidInput("temperature", f"must be finite and > 0, got {temperature!r}")
    message = [
        *_header(S.POSTPROCESS_MODEL, settings.pipeline_max_batch_size),
        ("backend", "python"),
        ("input", _tensors(schema.postprocess_inputs)),
        ("output", _tensors(schema.response_outputs, labels_for=S.PROBS)),
        (
            "dynamic_batching",
            [("max_queue_delay_microseconds", settings.postprocess_max_queue_delay_us)],
        ),
        ("instance_group", _instances(settings.postprocess_instances, "KIND_CPU")),
        *_parameters(
            {
                "taxonomy_file": TAXONOMY_FILE,
                "management_file": MANAGEMENT_FILE,
                "temperature": repr(float(temperature)),
                **({"uncertainty_file": UNCERTAINTY_FILE} if uncertainty else {}),
            }
        ),
    ]
    return to_pbtxt(message)


def _step(model: str, inputs: Sequence[TensorSpec], outputs: Sequence[TensorSpec]) -> _Message:
    step: _Message = [("model_name", model), ("model_version", -1)]
    step += [("input_map", [("key", t.name), ("value", t.name)]) for t in inputs]
    step += [("output_map", [("key", t.name), ("value", t.name)]) for t in outputs]
    return step


def _check_contract(schema: Schema, contract: ServerContract) -> None:
    if len(contract.ctc_features) != schema.n_ctc:
        raise ValueError(
            f"argument 'contract': {len(contract.ctc_features)} CTC features but the schema has "
            f"n_ctc={schema.n_ctc}"
        )
    if len(contract.class_names) != schema.n_classes:
        raise ValueError(
            f"argument 'contract': {len(contract.class_names)} class names but the schema has "
            f"n_classes={schema.n_classes}"
        )


def render_pipeline(
    schema: Schema, settings: ServingSettings, contract: ServerContract | None = None
) -> str:
    """``dmfn_pipeline``: the ensemble preprocess -> dmfn -> postprocess.

    The intermediate MEASUREMENTS_PRE is not an ensemble output (Triton 2.51 deadlocks on that);
    postprocess re-emits it as MEASUREMENTS. ``contract`` (ROI margin, CTC feature names, class
    names) is published as config parameters for the client SDK.
    """
    steps = _Repeated(
        [
            _step(S.PREPROCESS_MODEL, schema.request_inputs, schema.preprocess_outputs),
            _step(S.NET_MODEL, schema.net_inputs, schema.net_outputs),
            _step(S.POSTPROCESS_MODEL, schema.postprocess_inputs, schema.response_outputs),
        ]
    )
    message = [
        *_header(S.PIPELINE_MODEL, settings.pipeline_max_batch_size),
        ("platform", "ensemble"),
        ("input", _tensors(schema.request_inputs)),
        ("output", _tensors(schema.response_outputs, labels_for=S.PROBS)),
        ("ensemble_scheduling", [("step", steps)]),
    ]
    if contract is not None:
        _check_contract(schema, contract)
        message += _parameters(contract.to_parameters())
    return to_pbtxt(message)


def render_all(
    schema: Schema,
    settings: ServingSettings | None = None,
    contract: ServerContract | None = None,
    temperature: float = 1.0,
) -> dict[str, str]:
    """model name -> config.pbtxt text, for the four models of the repository.

    ``contract`` goes into the ensemble's parameters (see :mod:`dmfn.contract.server`).
    """
    settings = settings or ServingSettings()
    return {
        S.PREPROCESS_MODEL: render_preprocess(schema, settings, contract),
        S.NET_MODEL: render_net(schema, settings),
        S.POSTPROCESS_MODEL: render_postprocess(
            schema, settings, temperature, contract is not None and contract.uncertainty is not None
        ),
        S.PIPELINE_MODEL: render_pipeline(schema, settings, contract),
    }
