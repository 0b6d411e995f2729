"""Hostile and careless clients against a real `dmfn serve` stack (Triton behind the nginx front
door, supervised). Each attack is followed by a check that good requests still succeed, readiness
is true and no worker had to be replaced (the attack did not break anything)."""

from __future__ import annotations

import base64
import http.client
import json
import math
import time
from pathlib import Path

import grpc
import numpy as np
import pytest
import tritonclient.grpc as grpcclient
import tritonclient.http as httpclient
from serving_utils import infer_inputs, make_studies, study_arrays
from tritonclient.grpc import service_pb2, service_pb2_grpc
from tritonclient.utils import InferenceServerException

from dmfn.contract import schema as S
from dmfn.serving import uds
from dmfn.serving.processes import tree_rss_bytes

pytestmark = [pytest.mark.slow, pytest.mark.usefixtures("needs_front_door")]

OVERFLOW_DIM = 4294967296  # 2**32: 2**32 * 2**32 elements overflow a 64-bit count to 0


@pytest.fixture(scope="module")
def good_arrays() -> dict[str, np.ndarray]:
    return study_arrays(make_studies(1, seed=77))


def _infer(service, arrays, protocol="http", model=S.PIPELINE_MODEL, dtypes=None):
    module = httpclient if protocol == "http" else grpcclient
    url = service.http_url if protocol == "http" else service.grpc_url
    client = module.InferenceServerClient(url)
    try:
        return client.infer(model, infer_inputs(module, arrays, dtypes))
    finally:
        client.close()


def assert_healthy(service, good_arrays) -> None:
    """Good requests succeed on both protocols, readiness is true on both, no worker died."""
    for protocol in ("http", "grpc"):
        result = _infer(service, good_arrays, protocol)
        assert np.isfinite(result.as_numpy(S.PROBS)).all()
    http = httpclient.InferenceServerClient(service.http_url)
    grpc_client = grpcclient.InferenceServerClient(service.grpc_url)
    try:
        assert http.is_server_ready() and http.is_model_ready(S.PIPELINE_MODEL)
        assert grpc_client.is_server_ready() and grpc_client.is_model_ready(S.PIPELINE_MODEL)
    finally:
        http.close()
        grpc_client.close()
    assert service.supervisor.dead_instances() == {}
    assert service.events == [], service.events


def _post(url: str, path: str, body: bytes, headers: dict | None = None) -> tuple[int, bytes]:
    host, port = url.rsplit(":", 1)
    conn = http.client.HTTPConnection(host, int(port), timeout=120)
    try:
        conn.request("POST", path, body=body, headers=headers or {})
        response = conn.getresponse()
        return response.status, response.read()
    finally:
        conn.close()


def _json_inputs(datatype_ct: str, shape: list[int]) -> list[dict]:
    return [
        {"name": S.CT_HU, "shape": shape, "datatype": datatype_ct, "data": []},
        {"name": S.VOLUME_SHAPE, "shape": [1, 3], "datatype": "INT32", "data": [4, 4, 4]},
        {"name": S.SPACING_MM, "shape": [1, 3], "datatype": "FP32", "data": [1, 1, 1]},
        {"name": S.ROI_MASK, "shape": shape, "datatype": "UINT8", "data": []},
        {"name": S.CTC, "shape": [1, 1], "datatype": "FP32", "data": [10]},
        {"name": S.CLINICAL, "shape": [1, 5], "datatype": "FP32", "data": [50, 1, 1, 0, 0]},
    ]


# --------------------------------------------------------------------------- defect 1: overflow
@pytest.mark.parametrize("model", [S.PIPELINE_MODEL, S.PREPROCESS_MODEL])
@pytest.mark.parametrize("datatype", ["INT16", "BYTES"])
def test_overflowing_shapes_over_http_are_refused_and_break_nothing(
    triton_server, good_arrays, model: str, datatype: str
) -> None:
    shape = [1, OVERFLOW_DIM, OVERFLOW_DIM, 1]
    body = json.dumps({"inputs": _json_inputs(datatype, shape)}).encode()
    for _ in range(3):  # two such requests used to kill both preprocess workers
        status, text = _post(triton_server.http_url, f"/v2/models/{model}/infer", body)
        assert status == 400, text
    assert_healthy(triton_server, good_arrays)


@pytest.mark.parametrize("model", [S.PIPELINE_MODEL, S.PREPROCESS_MODEL])
def test_overflowing_shapes_over_grpc_are_refused_and_break_nothing(
    triton_server, good_arrays, model: str
) -> None:
    request = service_pb2.ModelInferRequest(model_name=model)
    for spec in _json_inputs("INT16", [1, OVERFLOW_DIM, OVERFLOW_DIM, 1]):
        tensor = request.inputs.add()
        tensor.name, tensor.datatype = spec["name"], spec["datatype"]
        tensor.shape.extend(spec["shape"])
        data = np.asarray(spec["data"], S.TRITON_TO_NUMPY.get(spec["datatype"], np.int16))
        request.raw_input_contents.append(b"" if not spec["data"] else data.tobytes())
    with grpc.insecure_channel(triton_server.grpc_url) as channel:
        stub = service_pb2_grpc.GRPCInferenceServiceStub(channel)
        for _ in range(3):
            with pytest.raises(grpc.RpcError) as err:
                stub.ModelInfer(request, timeout=30)
            assert err.value.code() == grpc.StatusCode.INVALID_ARGUMENT, err.value.details()
    assert_healthy(triton_server, good_arrays)


# --------------------------------------------------------------------------- defect 2: admin APIs
MARKER = Path("/tmp/dmfn-hostile-model-ran")

EVIL_MODEL = f"""
import pathlib
pathlib.Path({str(MARKER)!r}).write_text("ran")
class TritonPythonModel:
    def execute(self, requests):
        return []
"""
EVIL_CONFIG = json.dumps(
    {
        "name": "x",
        "backend": "python",
        "max_batch_size": 0,
        "input": [{"name": "IN", "data_type": "TYPE_FP32", "dims": [1]}],
        "output": [{"name": "OUT", "data_type": "TYPE_FP32", "dims": [1]}],
    }
)


def _load_body() -> bytes:
    code = base64.b64encode(EVIL_MODEL.encode()).decode()
    return json.dumps({"parameters": {"config": EVIL_CONFIG, "file:1/model.py": code}}).encode()


def test_uploading_a_model_is_refused_and_nothing_runs(triton_server, good_arrays) -> None:
    MARKER.unlink(missing_ok=True)
    for headers in ({}, {"dmfn-admin-key": "guess"}):
        status, text = _post(
            triton_server.http_url, "/v2/repository/models/x/load", _load_body(), headers
        )
        assert status == 403, text
    client = grpcclient.InferenceServerClient(triton_server.grpc_url)
    try:
        with pytest.raises(InferenceServerException, match="not available") as err:
            client.load_model(
                "x", config=EVIL_CONFIG, files={"file:1/model.py": EVIL_MODEL.encode()}
            )
        assert "PERMISSION_DENIED" in str(err.value.status())
    finally:
        client.close()
    time.sleep(1.0)
    assert not MARKER.exists(), "the uploaded model.py ran"
    # Triton's own socket (reachable by the service's user only) lists what is loaded
    status, index = uds.request(triton_server.triton.socket("http"), "POST", "/v2/repository/index")
    assert status == 200 and "x" not in {m["name"] for m in json.loads(index)}
    assert_healthy(triton_server, good_arrays)


@pytest.mark.parametrize(
    "path",
    [
        f"/v2/repository/models/{S.PIPELINE_MODEL}/unload",
        f"/v2/repository/models/{S.PREPROCESS_MODEL}/unload",
        "/v2/repository/index",
        "/v2/%72epository/index",  # percent-encoded, normalised by the front door
        "/v2//repository/index",
        "/v2/systemsharedmemory/region/x/register",
        "/v2/trace/setting",
        "/v2/logging",
        f"/v2/models/{S.PIPELINE_MODEL}/trace/setting",
    ],
)
def test_admin_apis_are_closed_to_clients(triton_server, good_arrays, path: str) -> None:
    status, text = _post(triton_server.http_url, path, b"{}")
    assert status == 403, text
    assert_healthy(triton_server, good_arrays)


def test_grpc_admin_calls_are_refused(triton_server, good_arrays) -> None:
    client = grpcclient.InferenceServerClient(triton_server.grpc_url)
    try:
        calls = [
            lambda: client.unload_model(S.PIPELINE_MODEL),
            lambda: client.get_model_repository_index(),
            lambda: client.register_system_shared_memory("x", "/dmfn_probe", 64),
            lambda: client.update_trace_settings(settings={"trace_file": "/tmp/x"}),
            lambda: client.update_log_settings({"log_file": "/tmp/x"}),
        ]
        for call in calls:
            with pytest.raises(InferenceServerException) as err:
                call()
            assert "PERMISSION_DENIED" in str(err.value.status()), err.value
    finally:
        client.close()
    assert_healthy(triton_server, good_arrays)


# --------------------------------------------------------------------------- defect 4: body size
def _send_oversized(url: str, n_bytes: int) -> int:
    """POST ``n_bytes`` to the pipeline's infer endpoint; the status the server answered."""
    host, port = url.rsplit(":", 1)
    conn = http.client.HTTPConnection(host, int(port), timeout=120)
    chunk = bytes(1 << 20)
    try:
        conn.putrequest("POST", f"/v2/models/{S.PIPELINE_MODEL}/infer")
        conn.putheader("Content-Length", str(n_bytes))
        conn.putheader("Inference-Header-Content-Length", "200")
        conn.endheaders()
        try:
            for _ in range(math.ceil(n_bytes / len(chunk))):
                conn.send(chunk)
        except (BrokenPipeError, ConnectionResetError):
            pass  # the server refused and closed: read its answer
        return conn.getresponse().status
    finally:
        conn.close()


def test_oversized_bodies_are_refused_at_the_door_and_memory_stays(triton_server, good_arrays):
    """Five 400x512x512 int16 bodies (~200 MiB each) are refused with 413 from their headers;
    the server's resident memory stays within +10 %."""
    for _ in range(3):
        _infer(triton_server, good_arrays)
    pids = [triton_server.triton.process.pid, triton_server.front.process.pid]
    before = sum(tree_rss_bytes(p) for p in pids)
    n_bytes = 400 * 512 * 512 * 2 + 400 * 512 * 512 // 8
    assert n_bytes > triton_server.limits.max_body_bytes()
    statuses = [_send_oversized(triton_server.http_url, n_bytes) for _ in range(5)]
    after = sum(tree_rss_bytes(p) for p in pids)
    assert statuses == [413] * 5
    print(f"server RSS before {before / 2**20:.0f} MiB, after {after / 2**20:.0f} MiB")
    assert after <= 1.10 * before, (before, after)
    assert_healthy(triton_server, good_arrays)


def test_oversized_grpc_messages_are_refused(triton_server, good_arrays) -> None:
    arrays = dict(good_arrays)
    big = np.empty((1, 1), np.object_)
    big[0, 0] = bytes(triton_server.limits.max_body_bytes() + 1)
    arrays[S.CT_HU] = big
    with pytest.raises(InferenceServerException) as err:
        _infer(triton_server, arrays, "grpc")
    assert "RESOURCE_EXHAUSTED" in str(err.value.status()), err.value
    assert "limit" in err.value.message()
    assert_healthy(triton_server, good_arrays)


# --------------------------------------------------------------------------- defect 5: internals
@pytest.mark.parametrize(
    "model, arrays, rule",
    [
        (
            S.NET_MODEL,
            {
                S.VIEWS: np.full((1, 3, 64, 64), np.nan, np.float32),
                S.TABULAR: np.zeros((1, 6), np.float32),
            },
            "finite",
        ),
        (
            S.NET_MODEL,
            {
                S.VIEWS: np.full((1, 3, 64, 64), 2.0, np.float32),
                S.TABULAR: np.zeros((1, 6), np.float32),
            },
            "[0, 1]",
        ),
        (
            S.NET_MODEL,
            {
                S.VIEWS: np.zeros((1, 3, 64, 64), np.float32),
                S.TABULAR: np.full((1, 6), np.inf, np.float32),
            },
            "finite",
        ),
        (
            S.POSTPROCESS_MODEL,
            {
                S.LOGITS: np.full((1, 20), np.nan, np.float32),
                S.MEASUREMENTS_INTERNAL: np.ones((1, 5), np.float32),
            },
            "finite",
        ),
    ],
)
def test_internal_models_refuse_non_finite_inputs(triton_server, good_arrays, model, arrays, rule):
    dtypes = dict.fromkeys(arrays, "FP32")
    for protocol in ("http", "grpc"):
        with pytest.raises(InferenceServerException) as err:
            _infer(triton_server, arrays, protocol, model, dtypes)
        assert rule in err.value.message(), err.value.message()
        assert str(err.value.status()) in ("400", "StatusCode.INVALID_ARGUMENT")
    assert_healthy(triton_server, good_arrays)
