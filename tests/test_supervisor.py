"""The supervisor of `dmfn serve`: dead workers are replaced without anyone, readiness tells the
truth, Triton failures end in a non-zero exit, SIGTERM drains, shared memory is cleaned on every
path, TLS works end to end. Each test runs its own service (they break it on purpose)."""

from __future__ import annotations

import os
import signal
import subprocess
import time
from pathlib import Path

import numpy as np
import pytest
import tritonclient.http as httpclient
from service_utils import Load, needs_nginx, serve_process, service_config
from serving_utils import infer_inputs, make_studies, study_arrays

from dmfn.client.sdk import DmfnClient, DmfnServerError
from dmfn.contract import schema as S
from dmfn.serving.frontdoor import FrontDoor, FrontDoorConfig
from dmfn.serving.processes import instance_name, live_stubs, processes, shm_regions
from dmfn.serving.service import DmfnService, ServiceConfig
from dmfn.serving.triton import CPU_HOST_NOISE, _OutputTee


# --------------------------------------------------------------------------- fast
def test_instance_names_are_read_from_stub_arguments() -> None:
    argv = (
        "/x/triton_python_backend_stub", "/r/preprocess/1/model.py", "dmfn_ab_uuid", "1048576",
        "1048576", "42", "/x/python", "336", "preprocess_0_1", "DEFAULT",
    )  # fmt: skip
    assert instance_name(argv) == "preprocess_0_1"
    assert instance_name(("/usr/bin/python3", "x")) is None


def test_cpu_host_noise_is_hidden_from_the_terminal_but_kept(tmp_path: Path) -> None:
    read, write = os.pipe()
    out = tmp_path / "echo"
    with open(out, "wb") as echo:
        tee = _OutputTee(os.fdopen(read, "rb"), echo.fileno(), hide=CPU_HOST_NOISE)
        os.write(
            write,
            b'E1201 server.cc:241] "CudaDriverHelper has not been initialized."\n'
            b"I1201 model_lifecycle.cc] loaded 'preprocess'\n"
            b'W1201 metrics.cc:798] "DCGM unable to start"\n',
        )
        os.close(write)
        tee.close()
    assert out.read_text() == "I1201 model_lifecycle.cc] loaded 'preprocess'\n"
    assert tee.hidden == 2 and "CudaDriverHelper" in tee.text()


def test_front_door_config_is_valid_nginx(tmp_path: Path) -> None:
    """Every combination nginx must accept: plain, TLS, TLS with client certificates, API keys."""
    from dmfn.serving.auth import ApiKeys, key_digest
    from dmfn.serving.frontdoor import find_nginx, njs_module
    from dmfn.serving.testpki import make_test_pki

    nginx = find_nginx()
    if nginx is None:
        pytest.skip("nginx is not installed (make setup installs it as root)")
    pki = make_test_pki(tmp_path / "pki")
    keys = ApiKeys((("pacs", key_digest("dmfn_" + "k" * 40)),))
    variants = [{}, {"tls_cert": pki["server.pem"], "tls_key": pki["server.key"]}]
    variants.append({**variants[1], "tls_client_ca": pki["ca.pem"]})
    if njs_module() is not None:
        variants.append({**variants[2], "api_keys": keys})
    else:
        print("nginx's JavaScript module is missing: the API-key configuration is not checked")
    for extra in variants:
        run = tmp_path / f"run{len(extra)}"
        cfg = FrontDoorConfig(
            run, run / "ready", "127.0.0.1", 1, 2, 3, run / "http", run / "grpc:0",
            run / "metrics.sock", run / "log.sock", 10_000, **extra,
        )  # fmt: skip
        run.mkdir()
        door = FrontDoor(cfg)
        door._write_config()  # runs `nginx -t`; raises with nginx's message when it refuses
        text = (run / "nginx.conf").read_text()
        assert text.count("limit_conn dmfn_client 16;") == 2  # HTTP and gRPC
        assert ("ssl_verify_client optional;" in text) == ("tls_client_ca" in extra)
        assert ("if ($dmfn_no_cert)" in text) == ("tls_client_ca" in extra)
        assert ("$dmfn_unauthorized" in text) == ("api_keys" in extra)


@pytest.mark.parametrize(
    "kwargs, name",
    [
        ({"tls_cert": Path("/x.pem")}, "tls_cert"),
        ({"drain_timeout_s": 0}, "drain_timeout_s"),
        ({"canary_interval_s": -1}, "canary_interval_s"),
    ],
)
def test_service_config_refuses_bad_settings(tmp_path: Path, kwargs, name) -> None:
    with pytest.raises(ValueError, match=name):
        ServiceConfig(tmp_path, **kwargs)


# --------------------------------------------------------------------------- slow: real service
def _repairs(service: DmfnService) -> list[str]:
    """The kinds of the service's repair events (readiness changes left out)."""
    return [e.kind for e in service.events if e.kind not in ("not_ready", "ready_again")]


def _self_signed(folder: Path) -> tuple[Path, Path]:
    cert, key = folder / "cert.pem", folder / "key.pem"
    subprocess.run(
        [
            "openssl", "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "1",
            "-keyout", str(key), "-out", str(cert), "-subj", "/CN=localhost",
            "-addext", "subjectAltName=IP:127.0.0.1,DNS:localhost",
        ],
        check=True,
        capture_output=True,
    )  # fmt: skip
    return cert, key


def _service(repository: Path, tmp_path: Path, **kwargs) -> DmfnService:
    needs_nginx()
    service = DmfnService(service_config(repository, tmp_path / "logs", **kwargs))
    service.start()
    return service


@pytest.mark.slow
def test_a_killed_preprocess_worker_is_replaced_under_load(exported_repository, tmp_path):
    service = _service(exported_repository[0], tmp_path, canary_interval_s=5.0)
    arrays = study_arrays(make_studies(1, seed=3))
    try:
        prefix = service.shm_prefix
        with Load(service.http_url, arrays) as load:
            time.sleep(2.0)
            victim = live_stubs(service.triton.process.pid)["preprocess_0_1"].pid
            killed_at = time.monotonic()
            os.kill(victim, signal.SIGKILL)
            while not _repairs(service) and time.monotonic() - killed_at < 30:
                time.sleep(0.05)
            healed_at = time.monotonic()
            time.sleep(3.0)
        assert _repairs(service) == ["worker_replaced"], service.events
        assert healed_at - killed_at < 30
        failed = [r for r in load.results if not r[1]]
        after_heal = [r for r in load.results if r[0] > healed_at]
        print(
            f"\nworker replaced {healed_at - killed_at:.2f} s after the kill; "
            f"{len(failed)} of {len(load.results)} requests failed: {failed[:3]}"
        )
        assert after_heal and all(ok for _, ok, _ in after_heal)
        assert service.is_ready() and service.supervisor.dead_instances() == {}
        client = httpclient.InferenceServerClient(service.http_url)
        assert client.is_server_ready()
        client.close()
    finally:
        code = service.shutdown()
    assert code == 0
    assert shm_regions(prefix) == []


@pytest.mark.slow
def test_triton_exiting_is_restarted_then_gives_up_with_a_failure(exported_repository, tmp_path):
    service = _service(exported_repository[0], tmp_path, max_restarts=1)
    arrays = study_arrays(make_studies(1, seed=4))
    prefix = service.shm_prefix
    try:
        os.kill(service.triton.process.pid, signal.SIGKILL)
        deadline = time.monotonic() + 60
        while not _repairs(service) and time.monotonic() < deadline:
            time.sleep(0.1)
        assert _repairs(service) == ["triton_restarted"]
        client = httpclient.InferenceServerClient(service.http_url)
        client.infer(S.PIPELINE_MODEL, infer_inputs(httpclient, arrays))
        client.close()
        os.kill(service.triton.process.pid, signal.SIGKILL)
        service.wait()  # returns: the service failed
        assert service.failure is not None and "giving up" in service.failure
    finally:
        code = service.shutdown()
    assert code == 1
    assert shm_regions(prefix) == []
    assert not any(prefix in " ".join(p.argv) for p in processes())  # no stub left behind


@pytest.mark.slow
def test_dmfn_serve_exits_non_zero_when_triton_fails(exported_repository, tmp_path):
    logs = tmp_path / "logs"
    with serve_process(exported_repository[0], logs, "--max-restarts", "0") as (process, _):
        assert "ready after" in process.stdout.readline()
        triton = [
            p
            for p in processes()
            if p.ppid == process.pid and p.argv and p.argv[0].endswith("tritonserver")
        ]
        assert len(triton) == 1
        os.kill(triton[0].pid, signal.SIGKILL)
        assert process.wait(timeout=60) == 1
        assert "giving up" in process.stderr.read()


@pytest.mark.slow
def test_shutdown_drains_requests_in_flight(exported_repository, tmp_path):
    """On shutdown no new connection is accepted, and every request sent before it finishes."""
    service = _service(exported_repository[0], tmp_path, drain_timeout_s=20.0)
    arrays = study_arrays(make_studies(1, seed=5))
    with Load(service.http_url, arrays, n_threads=12) as load:
        time.sleep(2.0)
        stop_at = time.monotonic()
        code = service.shutdown()
        drained_in = time.monotonic() - stop_at
        time.sleep(1.0)  # clients keep trying: the port is closed now
    assert code == 0
    before = [r for r in load.results if r[0] < stop_at - 0.05]
    after = [r for r in load.results if r[0] > stop_at + drained_in]
    print(f"\ndrained in {drained_in:.2f} s; {len(before)} requests before, {len(after)} after")
    assert before and all(ok for _, ok, _ in before), [r for r in before if not r[1]][:3]
    assert after and not any(ok for _, ok, _ in after)  # refused once it stopped listening
    assert drained_in < 20.0


@pytest.mark.slow
def test_tls_for_http_and_grpc(exported_repository, tmp_path):
    cert, key = _self_signed(tmp_path)
    service = _service(exported_repository[0], tmp_path, tls_cert=cert, tls_key=key)
    study = make_studies(1, seed=6)[0]
    try:
        assert service.scheme == "https"
        for protocol, url in (("http", service.http_url), ("grpc", service.grpc_url)):
            with DmfnClient(url, protocol, ca_cert=str(cert)) as client:
                prediction = client.predict(study)
                assert np.isclose(sum(prediction.probs.values()), 1.0, atol=1e-4)
            with DmfnClient(url, protocol, timeout_s=5) as plain:  # no TLS: refused
                with pytest.raises(DmfnServerError):
                    plain.predict(study)
    finally:
        assert service.shutdown() == 0


@pytest.mark.slow
def test_sdk_refuses_implausible_values_before_sending(triton_server):
    study = make_studies(1, seed=8)[0]
    with DmfnClient(triton_server.http_url) as client:
        assert client.contract.limits is not None
        bad = study.__class__(**{**study.__dict__, "ctc": {S.DEFAULT_CTC_FEATURES[0]: 1300.0}})
        with pytest.raises(ValueError, match=r"input 'CTC'.*pg/ml"):
            client.predict(bad)
