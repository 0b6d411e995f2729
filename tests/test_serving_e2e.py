"""End-to-end: a real Triton server (bundled 2.51) serving the repository exported from a tiny
trained checkpoint. No mocks: HTTP and gRPC clients, real preprocessing, ONNX Runtime, ensemble."""

from __future__ import annotations

import signal
import threading
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
import pytest
import tritonclient.grpc as grpcclient
import tritonclient.http as httpclient
from service_utils import serve_process
from serving_utils import (
    infer_inputs,
    make_studies,
    model_stats,
    reference_outputs,
    study_arrays,
)
from tritonclient.utils import InferenceServerException

from dmfn.contract import schema as S
from dmfn.serving.config import MODEL_NAMES
from dmfn.serving.triton import port_is_free

pytestmark = pytest.mark.slow

N_STUDIES = 6
N_CONCURRENT = 32
PROBS_TOLERANCE = 1e-4
CLIENTS = {"http": httpclient, "grpc": grpcclient}


@pytest.fixture(scope="module")
def studies():
    return make_studies(N_STUDIES, seed=21)


@pytest.fixture(scope="module")
def reference(tiny_checkpoint: Path, studies) -> dict[str, np.ndarray]:
    return reference_outputs(tiny_checkpoint, studies)


def client_for(server, protocol: str):
    module = CLIENTS[protocol]
    url = server.http_url if protocol == "http" else server.grpc_url
    return module, module.InferenceServerClient(url)


def infer(server, arrays: dict[str, np.ndarray], protocol: str = "http", dtypes=None, model=None):
    module, client = client_for(server, protocol)
    try:
        return client.infer(model or S.PIPELINE_MODEL, infer_inputs(module, arrays, dtypes))
    finally:
        client.close()


def assert_matches_reference(result, reference: dict, index: int) -> None:
    probs = result.as_numpy(S.PROBS)[0]
    np.testing.assert_allclose(probs, reference["probs"][index], rtol=0, atol=PROBS_TOLERANCE)
    top = result.as_numpy(S.TOP3_INDEX)[0]
    np.testing.assert_array_equal(np.sort(probs)[::-1][: S.TOP_K], probs[top])
    labels = [b.decode() for b in result.as_numpy(S.TOP3_LABEL)[0]]
    assert labels == list(reference["labels"][top])
    malignant = float(result.as_numpy(S.MALIGNANT_PROB)[0, 0])
    assert malignant == pytest.approx(float(probs[reference["malignant"]].sum()), abs=1e-6)
    assert result.as_numpy(S.MANAGEMENT)[0, 0].decode() == reference["management"][index]
    np.testing.assert_allclose(
        result.as_numpy(S.MEASUREMENTS)[0], reference["measurements"][index], rtol=1e-6
    )


def test_the_reference_probs_carry_a_temperature_the_parity_tests_can_see(
    tiny_checkpoint: Path, reference: dict
) -> None:
    """The served-vs-PyTorch tests below catch a postprocess that ignores the calibration
    temperature only if the tiny checkpoint has T != 1 and T moves every study's probabilities
    well beyond PROBS_TOLERANCE (no server needed)."""
    from dmfn.training.checkpoint import load_checkpoint

    temperature = load_checkpoint(tiny_checkpoint).temperature
    assert temperature != 1.0
    logits = reference["logits"].astype(np.float64)
    tempered = np.exp(logits / temperature)
    np.testing.assert_allclose(
        reference["probs"], tempered / tempered.sum(axis=1, keepdims=True), rtol=0, atol=1e-6
    )
    untempered = np.exp(logits) / np.exp(logits).sum(axis=1, keepdims=True)
    assert np.abs(untempered - reference["probs"]).max(axis=1).min() > 10 * PROBS_TOLERANCE


def test_server_is_ready_on_http_and_grpc(triton_server) -> None:
    assert triton_server.ready_seconds is not None  # wait_ready fails on its own timeout
    for protocol in CLIENTS:
        _, client = client_for(triton_server, protocol)
        try:
            assert client.is_server_live() and client.is_server_ready()
            for model in MODEL_NAMES:
                assert client.is_model_ready(model), (protocol, model)
        finally:
            client.close()


@pytest.mark.parametrize("protocol", list(CLIENTS))
def test_served_probs_equal_in_process_pipeline(triton_server, studies, reference, protocol):
    for i, study in enumerate(studies):
        assert_matches_reference(
            infer(triton_server, study_arrays([study]), protocol), reference, i
        )


def test_a_batched_request_returns_one_row_per_study(triton_server, studies, reference) -> None:
    result = infer(triton_server, study_arrays(studies[:3]))
    np.testing.assert_allclose(
        result.as_numpy(S.PROBS), reference["probs"][:3], rtol=0, atol=PROBS_TOLERANCE
    )


def test_classification_extension_uses_the_taxonomy_labels(triton_server, studies, reference):
    client = httpclient.InferenceServerClient(triton_server.http_url)
    try:
        result = client.infer(
            S.PIPELINE_MODEL,
            infer_inputs(httpclient, study_arrays(studies[:1])),
            outputs=[httpclient.InferRequestedOutput(S.PROBS, class_count=S.TOP_K)],
        )
    finally:
        client.close()
    entries = [b.decode().split(":") for b in result.as_numpy(S.PROBS)[0]]
    top = np.argsort(-reference["probs"][0], kind="stable")[: S.TOP_K]
    assert [int(e[1]) for e in entries] == list(top)
    assert [e[2] for e in entries] == list(reference["labels"][top])


def _concurrently(jobs: list[Callable[[], object]]) -> list[object]:
    """Run every job on its own thread, all released at once (each makes its own client);
    Triton errors are returned, not raised."""
    barrier = threading.Barrier(len(jobs))

    def run(job):
        barrier.wait()
        try:
            return job()
        except InferenceServerException as err:
            return err

    with ThreadPoolExecutor(max_workers=len(jobs)) as pool:
        return list(pool.map(run, jobs))


def _batched_run(
    server, model: str, arrays: list[dict[str, np.ndarray]], dtypes=None
) -> tuple[list[object], dict[str, tuple[int, int]]]:
    """Send ``arrays`` (one request each) to ``model`` over gRPC, all at once; returns the
    results and, per model of the pipeline, (inferences, executions) during the run. Clients and
    inputs are made before the start line, so that the requests really arrive together (32
    connection set-ups after the barrier spread them out on a busy machine, and the net then
    runs each alone: seen once in CI)."""
    stats = httpclient.InferenceServerClient(server.http_url)
    clients = [client_for(server, "grpc") for _ in arrays]
    inputs = [
        infer_inputs(module, a, dtypes) for (module, _), a in zip(clients, arrays, strict=True)
    ]
    watched = (S.PREPROCESS_MODEL, S.NET_MODEL)
    try:
        before = {m: model_stats(stats, m) for m in watched}
        jobs = [(lambda i=i: clients[i][1].infer(model, inputs[i])) for i in range(len(arrays))]
        results = _concurrently(jobs)
        after = {m: model_stats(stats, m) for m in watched}
    finally:
        stats.close()
        for _, client in clients:
            client.close()
    counts = {m: (after[m][0] - before[m][0], after[m][1] - before[m][1]) for m in watched}
    return results, counts


def test_concurrent_pipeline_requests_succeed_and_are_batched(triton_server, studies, reference):
    """32 concurrent pipeline requests all succeed, and the net's dynamic batcher formed batches
    from them (preprocess batches too, so outputs of concurrent requests reach the net together)."""
    arrays = [study_arrays([studies[i % N_STUDIES]]) for i in range(N_CONCURRENT)]
    results, counts = _batched_run(triton_server, S.PIPELINE_MODEL, arrays)
    for i, result in enumerate(results):
        assert not isinstance(result, Exception), result
        assert_matches_reference(result, reference, i % N_STUDIES)
    for model, (inferences, executions) in counts.items():
        assert inferences == N_CONCURRENT, model
        assert executions < inferences, f"{model}: no batching, {executions} executions"


def test_concurrent_net_requests_are_batched(triton_server, reference) -> None:
    """Requests sent straight to the net are dynamically batched too."""
    views, tabular = reference["views"], reference["tabular"]
    arrays = [
        {S.VIEWS: views[i % N_STUDIES][None], S.TABULAR: tabular[i % N_STUDIES][None]}
        for i in range(N_CONCURRENT)
    ]
    results, counts = _batched_run(
        triton_server, S.NET_MODEL, arrays, {S.VIEWS: "FP32", S.TABULAR: "FP32"}
    )
    for i, result in enumerate(results):
        assert not isinstance(result, Exception), result
        np.testing.assert_allclose(
            result.as_numpy(S.LOGITS)[0], reference["logits"][i % N_STUDIES], atol=1e-4, rtol=0
        )
    inferences, executions = counts[S.NET_MODEL]
    assert inferences == N_CONCURRENT
    assert executions < inferences, f"no dynamic batching: {executions} executions"


def _mutate(**changes) -> Callable[[dict], tuple[dict, dict]]:
    """A bad request: replace tensors (value None removes it) and optionally their wire dtype."""

    def make(arrays: dict) -> tuple[dict, dict]:
        arrays = dict(arrays)
        dtypes = {}
        for name, value in changes.items():
            if name == "dtypes":
                dtypes = value
            elif value is None:
                del arrays[name]
            else:
                arrays[name] = value(arrays[name]) if callable(value) else value
        return arrays, dtypes

    return make


def _nan(a: np.ndarray) -> np.ndarray:
    return np.full_like(a, np.nan)


def _inf(a: np.ndarray) -> np.ndarray:
    out = a.copy()
    out[..., 0] = np.inf
    return out


def _bytes(data: bytes) -> np.ndarray:
    out = np.empty((1, 1), np.object_)
    out[0, 0] = data
    return out


def _truncate(a: np.ndarray) -> np.ndarray:
    return _bytes(a[0, 0][:-1])


def _as_int16_volume(a: np.ndarray) -> np.ndarray:
    """The old wire format: the volume as an INT16 tensor with client-chosen dims."""
    return np.zeros((1, 4, 8, 8), np.int16)


BAD_REQUESTS = {
    "volume as an int16 tensor": (
        _mutate(CT_HU=_as_int16_volume, dtypes={S.CT_HU: "INT16"}),
        [S.CT_HU, "INT16", "BYTES"],
    ),
    "wrong rank": (
        _mutate(VOLUME_SHAPE=lambda a: a[:, :2]),
        [S.VOLUME_SHAPE, "unexpected shape"],
    ),
    "NaN spacing": (_mutate(SPACING_MM=_nan), [S.SPACING_MM, "within 0.1..10 mm"]),
    "spacing 1e-30 mm": (
        _mutate(SPACING_MM=lambda a: np.full_like(a, 1e-30)),
        [S.SPACING_MM, "within 0.1..10 mm"],
    ),
    "NaN CTC": (_mutate(CTC=_nan), [S.CTC, "outside the range this model accepts"]),
    "CTC 1e30": (_mutate(CTC=lambda a: np.full_like(a, 1e30)), [S.CTC, "outside the range"]),
    "CTC -5": (_mutate(CTC=lambda a: np.full_like(a, -5)), [S.CTC, "outside the range"]),
    "CTC 1300 (units)": (_mutate(CTC=lambda a: np.full_like(a, 1300)), [S.CTC, "pg/ml"]),
    "Inf clinical": (_mutate(CLINICAL=_inf), [S.CLINICAL, "age_years must be within 0..120"]),
    "age 130": (
        _mutate(CLINICAL=lambda a: np.concatenate([[[130.0]], a[:, 1:]], axis=1).astype(a.dtype)),
        [S.CLINICAL, "age_years must be within 0..120"],
    ),
    "empty volume": (
        _mutate(VOLUME_SHAPE=lambda a: np.array([[0, 8, 8]], np.int32)),
        [S.VOLUME_SHAPE, "every axis must be 1..2048"],
    ),
    "volume above the limit": (
        _mutate(VOLUME_SHAPE=lambda a: np.array([[1024, 1024, 64]], np.int32)),
        [S.VOLUME_SHAPE, "above this server's limit"],
    ),
    "CT bytes short": (_mutate(CT_HU=_truncate), [S.CT_HU, "bytes but VOLUME_SHAPE"]),
    "mask bytes short": (_mutate(ROI_MASK=_truncate), [S.ROI_MASK, "bytes but VOLUME_SHAPE"]),
    "empty mask": (
        _mutate(ROI_MASK=lambda a: _bytes(bytes(len(a[0, 0])))),
        [S.ROI_MASK, "at least 2 voxels on every axis", "empty mask"],
    ),
    "1x1x1 volume": (
        _mutate(
            VOLUME_SHAPE=lambda a: np.array([[1, 1, 1]], np.int32),
            CT_HU=_bytes(b"\x00\x00"),
            ROI_MASK=_bytes(b"\x80"),
        ),
        [S.ROI_MASK, "at least 2 voxels on every axis"],
    ),
    "missing CTC": (_mutate(CTC=None), ["missing required input(s) ['CTC']"]),
}


@pytest.mark.parametrize("case", list(BAD_REQUESTS))
def test_bad_request_is_a_clear_error_and_the_server_goes_on(
    triton_server, studies, reference, case: str
) -> None:
    make, expected = BAD_REQUESTS[case]
    arrays, dtypes = make(study_arrays(studies[:1]))
    for protocol in CLIENTS:
        with pytest.raises(InferenceServerException) as err:
            infer(triton_server, arrays, protocol, dtypes)
        for text in expected:
            assert text in err.value.message(), (protocol, err.value.message())
    assert_matches_reference(infer(triton_server, study_arrays(studies[1:2])), reference, 1)


def test_unknown_model_is_named(triton_server, studies, reference) -> None:
    with pytest.raises(InferenceServerException, match="'no_such_model' is not found"):
        infer(triton_server, study_arrays(studies[:1]), model="no_such_model")
    assert_matches_reference(infer(triton_server, study_arrays(studies[:1])), reference, 0)


def test_invalid_argument_errors_are_http_400(triton_server, studies) -> None:
    arrays, _ = BAD_REQUESTS["NaN CTC"][0](study_arrays(studies[:1]))
    with pytest.raises(InferenceServerException) as err:
        infer(triton_server, arrays, "http")
    assert err.value.status() == "400"


def test_concurrent_good_and_bad_requests_fail_only_the_bad(triton_server, studies, reference):
    bad_cases = ["NaN CTC", "mask bytes short", "empty volume", "Inf clinical"]
    jobs, expect = [], []
    for i in range(N_CONCURRENT):
        if i % 2:
            case = bad_cases[(i // 2) % len(bad_cases)]
            arrays, dtypes = BAD_REQUESTS[case][0](study_arrays([studies[i % N_STUDIES]]))
            expect.append(BAD_REQUESTS[case][1])
        else:
            arrays, dtypes = study_arrays([studies[i % N_STUDIES]]), {}
            expect.append(i % N_STUDIES)
        jobs.append(lambda a=arrays, d=dtypes: infer(triton_server, a, "grpc", d))
    for result, expected in zip(_concurrently(jobs), expect, strict=True):
        if isinstance(expected, int):
            assert not isinstance(result, Exception), result
            assert_matches_reference(result, reference, expected)
        else:
            assert isinstance(result, InferenceServerException)
            assert all(text in result.message() for text in expected), result.message()


def test_dmfn_serve_runs_until_sigterm(exported_repository, tmp_path: Path) -> None:
    """`dmfn serve` starts Triton, prints the endpoints, and stops cleanly on SIGTERM."""
    with serve_process(exported_repository[0], tmp_path / "logs") as (process, ports):
        http, grpc, _ = ports
        ready_line = process.stdout.readline()
        if "dmfn serve: ready after" not in ready_line:
            process.kill()
            pytest.fail(ready_line + process.stderr.read())
        endpoints = "".join(process.stdout.readline() for _ in range(8))
        assert f"http://127.0.0.1:{http}" in endpoints and f"127.0.0.1:{grpc}" in endpoints
        assert "  model   sha256 " in endpoints  # the served model's provenance
        assert "admin APIs closed" in endpoints
        assert "authentication: none" in endpoints and "front-door log:" in endpoints
        client = httpclient.InferenceServerClient(f"127.0.0.1:{http}")
        assert client.is_model_ready(S.PIPELINE_MODEL)
        client.close()
        process.send_signal(signal.SIGTERM)
        assert process.wait(timeout=60) == 0
        assert "stopped (exit code 0)" in process.stderr.read()
    assert port_is_free("127.0.0.1", http)
