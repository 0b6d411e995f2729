"""The Triton model repository: rendered configs, the committed files, the repository writer and
the argument checks of `dmfn serve` (no server started here; see test_serving_e2e.py)."""

from __future__ import annotations

import importlib.util
import json
import os
import socket
import sys
import types
from pathlib import Path

import numpy as np
import pytest
from google.protobuf import json_format, text_format
from tritonclient.grpc import model_config_pb2 as mc

from dmfn.contract import schema as S
from dmfn.contract.limits import InputLimits
from dmfn.contract.params import PreprocessParams
from dmfn.contract.schema import Schema
from dmfn.contract.taxonomy import load_taxonomy
from dmfn.serving import cli as serve
from dmfn.serving.config import MODEL_NAMES, ServingSettings, render_all
from dmfn.serving.repository import (
    MANIFEST_FILE,
    MODEL_CARD_FILE,
    ModelInfo,
    check_repository,
    render_committed,
    template_dir,
    write_repository,
)
from dmfn.serving.triton import free_ports

ROOT = Path(__file__).resolve().parents[1]
COMMITTED = ROOT / "model_repository"
REGENERATE = (
    '.venv/bin/python -c "from dmfn.serving.repository import render_committed; '
    "[p.write_text(t) for p, t in render_committed('model_repository').items()]\""
)
LIMITS = InputLimits(ctc_ranges=((0.0, 40.0),))
TRITON_DTYPE = {
    "INT16": mc.TYPE_INT16,
    "INT32": mc.TYPE_INT32,
    "UINT8": mc.TYPE_UINT8,
    "FP32": mc.TYPE_FP32,
    "BYTES": mc.TYPE_STRING,
    "BOOL": mc.TYPE_BOOL,
}


def parse(text: str) -> mc.ModelConfig:
    return text_format.Parse(text, mc.ModelConfig())


def assert_tensors(configured, specs) -> None:
    assert [t.name for t in configured] == [s.name for s in specs]
    for tensor, spec in zip(configured, specs, strict=True):
        assert tensor.data_type == TRITON_DTYPE[spec.dtype], spec.name
        assert tuple(tensor.dims) == spec.dims, spec.name


@pytest.mark.parametrize("name", MODEL_NAMES)
def test_committed_config_equals_rendering(name: str) -> None:
    expected = render_committed(COMMITTED)[COMMITTED / name / "config.pbtxt"]
    committed = (COMMITTED / name / "config.pbtxt").read_text()
    assert committed == expected, f"re-render the committed configs: {REGENERATE}"
    assert parse(committed).name == name


def test_committed_repository_has_the_python_models_and_versions() -> None:
    for name in (S.PREPROCESS_MODEL, S.NET_MODEL, S.POSTPROCESS_MODEL):
        assert (COMMITTED / name / "1" / "model.py").is_file()
    assert (COMMITTED / S.PIPELINE_MODEL / "1").is_dir()
    assert template_dir().resolve() == COMMITTED.resolve()


@pytest.mark.parametrize("target", ["cpu", "onnxruntime", "tensorrt"])
def test_rendered_configs_follow_the_schema(target: str) -> None:
    schema = Schema(n_ctc=3, n_classes=7, view_size=96)
    configs = {k: parse(v) for k, v in render_all(schema, ServingSettings(target=target)).items()}
    pre, net, post, pipe = (configs[n] for n in MODEL_NAMES)
    assert_tensors(pre.input, schema.request_inputs)
    assert_tensors(pre.output, schema.preprocess_outputs)
    assert_tensors(net.input, schema.net_inputs)
    assert_tensors(net.output, schema.net_outputs)
    assert_tensors(post.input, schema.postprocess_inputs)
    assert_tensors(post.output, schema.response_outputs)
    assert_tensors(pipe.input, schema.request_inputs)
    assert_tensors(pipe.output, schema.response_outputs)
    assert pre.backend == post.backend == "python"
    # preprocess batches too: concurrent requests leave it together and reach the net together
    assert pre.HasField("dynamic_batching")
    assert 0 <= pre.dynamic_batching.max_queue_delay_microseconds <= 100_000
    assert int(pre.parameters["worker_threads"].string_value) >= 1
    assert pre.instance_group[0].kind == mc.ModelInstanceGroup.KIND_CPU
    assert list(net.dynamic_batching.preferred_batch_size) == [4, 8, 16, 32]
    assert net.dynamic_batching.max_queue_delay_microseconds == ServingSettings().max_queue_delay_us
    assert net.max_batch_size >= pipe.max_batch_size == pre.max_batch_size == post.max_batch_size
    expected = {
        "cpu": ("", "python"),
        "onnxruntime": ("onnxruntime_onnx", ""),
        "tensorrt": ("tensorrt_plan", ""),
    }[target]
    assert (net.platform, net.backend) == expected
    kind = mc.ModelInstanceGroup.KIND_CPU if target == "cpu" else mc.ModelInstanceGroup.KIND_GPU
    assert net.instance_group[0].kind == kind
    if target == "cpu":
        expected_threads = str(ServingSettings().intra_op_threads)
        assert net.parameters["intra_op_num_threads"].string_value == expected_threads
    assert net.output[0].label_filename == "labels.txt"
    assert pipe.platform == "ensemble"


def test_ensemble_graph_is_connected_and_exposes_no_intermediate() -> None:
    pipe = parse(render_all(Schema())[S.PIPELINE_MODEL])
    available = {t.name for t in pipe.input}
    produced_by_steps: set[str] = set()
    consumed: set[str] = set()
    for step in pipe.ensemble_scheduling.step:
        assert set(step.input_map.values()) <= available, step.model_name
        consumed |= set(step.input_map.values())
        available |= set(step.output_map.values())
        produced_by_steps |= set(step.output_map.values())
    outputs = {t.name for t in pipe.output}
    assert outputs <= produced_by_steps
    # Triton 2.51 deadlocks when an ensemble output is also an intermediate tensor.
    assert not outputs & consumed
    assert [s.model_name for s in pipe.ensemble_scheduling.step] == [
        S.PREPROCESS_MODEL,
        S.NET_MODEL,
        S.POSTPROCESS_MODEL,
    ]


@pytest.mark.parametrize(
    ("kwargs", "argument"),
    [
        ({"target": "gpu"}, "target"),
        ({"net_max_batch_size": 4}, "net_max_batch_size"),
        ({"preferred_batch_sizes": (64,)}, "preferred_batch_sizes"),
        ({"preprocess_instances": 0}, "preprocess_instances"),
        ({"max_queue_delay_us": -1}, "max_queue_delay_us"),
        ({"preprocess_max_queue_delay_us": -5}, "preprocess_max_queue_delay_us"),
        ({"preprocess_threads": 0}, "preprocess_threads"),
        ({"net_instance_kind": "KIND_TPU"}, "net_instance_kind"),
        ({"target": "tensorrt", "net_instance_kind": "KIND_CPU"}, "net_instance_kind"),
        ({"device": "tpu"}, "device"),
    ],
)
def test_settings_refuse_bad_values(kwargs: dict, argument: str) -> None:
    with pytest.raises(ValueError, match=f"argument '{argument}'"):
        ServingSettings(**kwargs)


def _write(tmp_path: Path, out: Path, **kwargs) -> Path:
    net = tmp_path / "net.onnx"
    net.write_bytes(b"not really onnx: the writer only copies it")
    info = kwargs.pop(
        "info", ModelInfo(ctc_features=("ctc_level_pg_ml",), synthetic=True, limits=LIMITS)
    )
    return write_repository(
        out,
        net_file=net,
        params=PreprocessParams(view_size=64),
        taxonomy=load_taxonomy(),
        info=info,
        **kwargs,
    )


def test_write_repository_writes_every_file(tmp_path: Path) -> None:
    repo = _write(tmp_path, tmp_path / "repo")
    assert check_repository(repo) == []
    assert (repo / "dmfn" / "1" / "model.onnx").is_file()
    assert (repo / "dmfn" / "1" / "model.py").is_file()
    assert PreprocessParams.from_json(
        (repo / "preprocess" / "preprocess_params.json").read_text()
    ) == PreprocessParams(view_size=64)
    taxonomy = load_taxonomy()
    for model in ("dmfn", "postprocess", "dmfn_pipeline"):
        assert (repo / model / "labels.txt").read_text().splitlines() == taxonomy.names
    assert load_taxonomy(repo / "postprocess" / "taxonomy.csv").names == taxonomy.names
    card = (repo / MODEL_CARD_FILE).read_text()
    assert "SYNTHETIC" in card
    assert (repo / MANIFEST_FILE).is_file()
    net = parse((repo / "dmfn" / "config.pbtxt").read_text())
    assert tuple(net.input[0].dims) == (3, 64, 64)
    assert tuple(net.output[0].dims) == (len(taxonomy),)


def _python_backend_utils() -> types.ModuleType:
    """The part of Triton's ``triton_python_backend_utils`` that postprocess/1/model.py uses,
    enough to run the model in this process."""
    pb = types.ModuleType("triton_python_backend_utils")

    class Tensor:
        def __init__(self, name: str, array: np.ndarray) -> None:
            self._name, self._array = name, np.asarray(array)

        def name(self) -> str:
            return self._name

        def as_numpy(self) -> np.ndarray:
            return self._array

    class InferenceRequest:
        def __init__(self, tensors: list[Tensor]) -> None:
            self._tensors = tensors

        def inputs(self) -> list[Tensor]:
            return self._tensors

    class TritonError:
        INVALID_ARG = "INVALID_ARG"

        def __init__(self, message: str, code: str = "INTERNAL") -> None:
            self.message, self.code = message, code

    class InferenceResponse:
        def __init__(self, output_tensors: list[Tensor] = (), error: TritonError | None = None):
            self.outputs = {t.name(): t.as_numpy() for t in output_tensors}
            self.error = error

    class TritonModelException(Exception):
        pass

    def by_name(items, name: str):
        return next((item for item in items if item["name"] == name), None)

    pb.Tensor, pb.InferenceRequest, pb.TritonError = Tensor, InferenceRequest, TritonError
    pb.InferenceResponse, pb.TritonModelException = InferenceResponse, TritonModelException
    pb.get_input_tensor_by_name = lambda request, name: next(
        (t for t in request.inputs() if t.name() == name), None
    )
    pb.get_output_config_by_name = lambda config, name: by_name(config.get("output", []), name)
    pb.Logger = types.SimpleNamespace(log_error=print, log_warn=print, log_info=print)
    return pb


def _model_config_json(config_pbtxt: Path) -> str:
    """``args["model_config"]`` as Triton hands it to a python model: the config as JSON, with
    int64 fields (dims) as numbers."""
    config = json_format.MessageToDict(
        parse(config_pbtxt.read_text()), preserving_proto_field_name=True
    )
    for tensor in (*config.get("input", []), *config.get("output", [])):
        tensor["dims"] = [int(d) for d in tensor["dims"]]
    return json.dumps(config)


def test_postprocess_model_applies_the_calibration_temperature(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The written postprocess config carries the temperature, and its model.py (run here on a
    stand-in for Triton's python backend) answers PROBS = softmax(logits / T), computed here
    from the definition; T = 1.7 so that a postprocess ignoring it gives other PROBS."""
    temperature = 1.7
    info = ModelInfo(
        ctc_features=("ctc_level_pg_ml",), synthetic=True, limits=LIMITS, temperature=temperature
    )
    repo = _write(tmp_path, tmp_path / "repo", info=info)
    model_dir = repo / S.POSTPROCESS_MODEL
    config = parse((model_dir / "config.pbtxt").read_text())
    assert float(config.parameters["temperature"].string_value) == temperature

    pb = _python_backend_utils()
    monkeypatch.setitem(sys.modules, "triton_python_backend_utils", pb)
    spec = importlib.util.spec_from_file_location("postprocess_model", model_dir / "1" / "model.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    model = module.TritonPythonModel()
    model.initialize(
        {
            "model_config": _model_config_json(model_dir / "config.pbtxt"),
            "model_repository": str(model_dir),
            "model_version": "1",
            "model_name": S.POSTPROCESS_MODEL,
        }
    )
    n_classes = len(load_taxonomy())
    logits = np.stack([np.linspace(-2.0, 3.0, n_classes), np.linspace(1.0, -1.5, n_classes)])
    measurements = np.arange(10, dtype=np.float32).reshape(2, 5)
    request = pb.InferenceRequest(
        [
            pb.Tensor(S.LOGITS, logits.astype(np.float32)),
            pb.Tensor(S.MEASUREMENTS_INTERNAL, measurements),
        ]
    )
    (response,) = model.execute([request])
    assert response.error is None, response.error.message
    probs = response.outputs[S.PROBS]
    tempered = np.exp(logits / temperature)
    np.testing.assert_allclose(probs, tempered / tempered.sum(axis=1, keepdims=True), atol=1e-6)
    untempered = np.exp(logits) / np.exp(logits).sum(axis=1, keepdims=True)
    assert np.abs(probs - untempered).max() > 1e-2  # T = 1 would be told apart
    np.testing.assert_array_equal(response.outputs[S.MEASUREMENTS], measurements)


def test_model_card_of_real_data_has_no_synthetic_warning(tmp_path: Path) -> None:
    metrics = {
        "test": {"binary_auc": 0.91, "n_patients": 120, "ci": {"binary_auc": [0.85, 0.97]}},
        "val": {"binary_auc": 0.93, "n_patients": 80},
    }
    info = ModelInfo(
        ctc_features=("ctc_level_pg_ml",), synthetic=False, metrics=metrics, limits=LIMITS
    )
    repo = _write(tmp_path, tmp_path / "repo", info=info)
    card = (repo / MODEL_CARD_FILE).read_text()
    assert "SYNTHETIC" not in card
    assert "| binary AUC (benign vs malignant) | 0.910 [0.850, 0.970] | 0.930 |" in card
    assert "| patients (n) | 120 | 80 |" in card


def test_write_repository_for_tensorrt_has_no_python_net(tmp_path: Path) -> None:
    repo = _write(tmp_path, tmp_path / "repo", settings=ServingSettings(target="tensorrt"))
    assert (repo / "dmfn" / "1" / "model.plan").is_file()
    assert not (repo / "dmfn" / "1" / "model.py").exists()
    assert parse((repo / "dmfn" / "config.pbtxt").read_text()).platform == "tensorrt_plan"


@pytest.mark.parametrize("target", ["cpu", "onnxruntime", "tensorrt"])
def test_gpu_repository_preprocesses_on_the_gpu(target: str) -> None:
    """--device gpu: preprocess is KIND_GPU with the CuPy backend; the net keeps its target's
    kind; the tensors' contracts do not change; the CPU repository stays the default."""
    schema = Schema(n_ctc=1, n_classes=20, view_size=128)
    gpu = {
        k: parse(v) for k, v in render_all(schema, ServingSettings(target, device="gpu")).items()
    }
    cpu = {k: parse(v) for k, v in render_all(schema, ServingSettings(target)).items()}
    pre = gpu[S.PREPROCESS_MODEL]
    assert pre.instance_group[0].kind == mc.ModelInstanceGroup.KIND_GPU
    assert pre.parameters["backend"].string_value == "cupy"
    assert cpu[S.PREPROCESS_MODEL].instance_group[0].kind == mc.ModelInstanceGroup.KIND_CPU
    assert cpu[S.PREPROCESS_MODEL].parameters["backend"].string_value == "cpu"
    assert ServingSettings().device == "cpu"
    for name in MODEL_NAMES:
        assert list(gpu[name].input) == list(cpu[name].input)
        assert list(gpu[name].output) == list(cpu[name].output)
        if name != S.PREPROCESS_MODEL:
            assert gpu[name] == cpu[name], name


def test_write_repository_refuses_to_overwrite_without_flag(tmp_path: Path) -> None:
    out = tmp_path / "repo"
    _write(tmp_path, out)
    with pytest.raises(ValueError, match=r"argument 'out'.*overwrite"):
        _write(tmp_path, out)
    _write(tmp_path, out, overwrite=True)
    assert check_repository(out) == []
    other = tmp_path / "not_a_repo"
    other.mkdir()
    (other / "precious.txt").write_text("keep me")
    with pytest.raises(ValueError, match="argument 'out'"):
        _write(tmp_path, other, overwrite=True)
    assert (other / "precious.txt").read_text() == "keep me"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["net.onnx", "not_a_repo", "repo"]


def test_failed_overwrite_keeps_the_original_repository(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    out = tmp_path / "repo"
    _write(tmp_path, out)
    before = sorted(p.relative_to(out) for p in out.rglob("*"))
    real_rename = Path.rename

    def failing_rename(self: Path, target: str | Path) -> Path:
        # Fault injection: the new repository cannot be moved in (the old one already moved out).
        if Path(target) == out and self.name != f".{out.name}.old":
            raise OSError("injected rename failure")
        return real_rename(self, target)

    monkeypatch.setattr(Path, "rename", failing_rename)
    with pytest.raises(OSError, match="injected"):
        _write(tmp_path, out, overwrite=True)
    monkeypatch.undo()
    assert sorted(p.relative_to(out) for p in out.rglob("*")) == before
    assert check_repository(out) == []
    assert sorted(p.name for p in tmp_path.iterdir()) == ["net.onnx", "repo"]


def test_check_repository_names_what_is_missing(tmp_path: Path) -> None:
    assert check_repository(tmp_path / "nowhere") == [f"{tmp_path / 'nowhere'} is not a directory"]
    problems = check_repository(COMMITTED)
    assert any("preprocess_params.json" in p for p in problems)
    assert any("model.onnx" in p for p in problems)


def test_check_repository_refuses_version_1_preprocessing(tmp_path: Path) -> None:
    """A repository exported before the spacing-aware PDE (params version 1) is refused before
    Triton starts, with the message to train and export again."""
    repo = _write(tmp_path, tmp_path / "repo")
    params = repo / "preprocess" / "preprocess_params.json"
    params.write_text(json.dumps({**json.loads(params.read_text()), "version": 1}))
    (problem,) = check_repository(repo)
    assert problem.startswith("preprocess/preprocess_params.json: ")
    assert "version 1 are not supported" in problem and "export it again" in problem


def test_serve_help_explains_every_option(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as exit_info:
        serve.main(["--help"])
    assert exit_info.value.code == 0
    text = capsys.readouterr().out
    for option in (
        "--repository",
        "--tritonserver",
        "--host",
        "--http-port",
        "--grpc-port",
        "--metrics-port",
        "--ready-timeout",
        "--log-dir",
        "--log-max-mb",
        "--log-verbose",
        "--api-keys",
        "--tls-client-ca",
        "--max-requests-per-client",
        "--allow-root",
        "--stall-timeout",
    ):
        assert option in text


def _as_root() -> list[str]:
    """--allow-root where the tests run as root (CI): dmfn serve refuses root otherwise."""
    return ["--allow-root"] if os.geteuid() == 0 else []


def test_serve_refuses_an_incomplete_repository(capsys: pytest.CaptureFixture[str]) -> None:
    assert serve.main(["--repository", str(COMMITTED), *_as_root()]) == serve.EXIT_USAGE
    err = capsys.readouterr().err
    assert "not a complete dmfn model repository" in err
    assert "dmfn export" in err


def test_serve_says_when_a_port_is_taken(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    repo = _write(tmp_path, tmp_path / "repo")
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        code = serve.main(["--repository", str(repo), "--http-port", str(port), *_as_root()])
    assert code == serve.EXIT_USAGE
    err = capsys.readouterr().err
    assert f"port {port}" in err
    assert f"already in use by pid {os.getpid()}" in err


_FAKE_OUTPUT = {
    "port": (
        'echo "I1127 17:47:06.000001 42 server.cc:1] starting"\n'
        'echo "E1127 17:47:06.000002 42 main.cc:1] failed to start HTTP service: '
        'Address already in use" >&2\n'
    ),
    "load": (
        "echo \"E1127 17:47:06.000001 42 model_lifecycle.cc:1] failed to load 'preprocess' "
        'version 1: Invalid argument: boom" >&2\n'
        'echo "error: creating server: Internal - failed to load all models" >&2\n'
    ),
    "silent": "",
}


@pytest.mark.parametrize(
    ("kind", "code", "says"),
    [
        ("port", serve.EXIT_SERVER, "failed to start HTTP service: Address already in use"),
        (
            "load",
            serve.EXIT_SERVER,
            "failed to load 'preprocess' version 1: Invalid argument: boom",
        ),
        ("silent", serve.EXIT_SERVER, "it wrote no output"),
    ],
)
def test_serve_explains_a_server_that_exits_early_without_a_log_file(
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    capfd: pytest.CaptureFixture[str],
    kind: str,
    code: int,
    says: str,
) -> None:
    """A server that dies after the port pre-check (a port taken in between, a model that does
    not load) is explained from its own output, which is also echoed to the terminal."""
    repo = _write(tmp_path, tmp_path / "repo")
    fake = tmp_path / "bin" / "tritonserver"  # stands in for the real binary: prints and exits
    fake.parent.mkdir()
    fake.write_text(f"#!/bin/sh\n{_FAKE_OUTPUT[kind]}exit 1\n")
    fake.chmod(0o755)
    monkeypatch.setattr("dmfn.serving.triton._project_build_dir", lambda: tmp_path / "build")
    http, grpc, metrics = free_ports(3)
    argv = ["--repository", str(repo), "--tritonserver", str(fake), "--http-port", str(http)]
    argv += ["--grpc-port", str(grpc), "--metrics-port", str(metrics), *_as_root()]
    assert serve.main(argv) == code
    err = capfd.readouterr().err
    assert says in err
    assert "invalid model repository" not in err
    assert "dmfn serve: tritonserver exited with code 1 before it was ready" in err
    if kind == "load":
        assert f"(model repository {repo})" in err
    if kind == "port":  # echoed once live, then in the error's summary and in its tail
        assert err.count("Address already in use") == 3
