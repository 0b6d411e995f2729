"""Authentication of `dmfn serve` (issue 19, defect 12): API keys stored as SHA-256 digests and
checked inside the front door, mutual TLS, the metrics port behind both, refusals counted and
logged without the key; the SDK, `dmfn predict` and the keys command on the client side."""

from __future__ import annotations

import http.client
import os
import ssl
import subprocess
import sys
import time
from pathlib import Path

import pytest
from service_utils import needs_nginx, service_config
from serving_utils import make_studies

from dmfn.client.credentials import API_KEY_ENV, API_KEY_FILE_ENV, Credentials
from dmfn.client.sdk import DmfnClient, DmfnServerError
from dmfn.serving.auth import ApiKeys, KeysFileError, key_digest, new_key, write_keys
from dmfn.serving.frontdoor import njs_module
from dmfn.serving.keys_cli import main as keys_main
from dmfn.serving.service import DmfnService
from dmfn.serving.testpki import make_test_pki


# --------------------------------------------------------------------------- fast
def test_keys_file_round_trip_and_refusals(tmp_path: Path) -> None:
    key = new_key()
    assert key.startswith("dmfn_") and len(key) >= 40
    keys = ApiKeys((("pacs", key_digest(key)), ("ward-3", key_digest(new_key()))))
    path = tmp_path / "keys"
    write_keys(path, keys)
    assert oct(path.stat().st_mode & 0o777) == "0o600"
    assert key not in path.read_text()  # only digests are stored
    assert ApiKeys.load(path) == keys
    assert keys.name_of(key) == "pacs" and keys.name_of("dmfn_" + "x" * 40) is None
    path.chmod(0o622)
    with pytest.raises(KeysFileError, match="writable by other users"):
        ApiKeys.load(path)
    path.chmod(0o600)
    path.write_text("pacs sha256:abc\n")
    with pytest.raises(KeysFileError, match="line 1: expected 'NAME sha256:HEX'"):
        ApiKeys.load(path)
    path.write_text(f"a sha256:{'0' * 64}\na sha256:{'1' * 64}\n")
    with pytest.raises(KeysFileError, match="line 2: the name 'a' repeats"):
        ApiKeys.load(path)
    path.write_text("# nothing\n")
    with pytest.raises(KeysFileError, match="holds no key"):
        ApiKeys.load(path)


def test_keys_command_prints_a_key_once_and_stores_its_digest(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    path = tmp_path / "keys"
    assert keys_main(["new", "pacs-gateway", "--file", str(path)]) == 0
    key = capsys.readouterr().out.strip()
    assert ApiKeys.load(path).name_of(key) == "pacs-gateway"
    assert keys_main(["new", "pacs-gateway", "--file", str(path)]) == 2
    assert "already has a key named 'pacs-gateway'" in capsys.readouterr().err
    assert keys_main(["new", "bad name", "--file", str(path)]) == 2
    assert keys_main(["list", "--file", str(path)]) == 0
    assert capsys.readouterr().out.split() == ["pacs-gateway"]
    assert keys_main(["revoke", "pacs-gateway", "--file", str(path)]) == 0
    assert ApiKeys.parse(path.read_text()).entries == ()


def test_client_credentials_come_from_arguments_or_the_environment(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.delenv(API_KEY_ENV, raising=False)
    monkeypatch.delenv(API_KEY_FILE_ENV, raising=False)
    assert Credentials.resolve().headers("http") is None
    monkeypatch.setenv(API_KEY_ENV, "dmfn_fromenv")
    assert Credentials.resolve().headers("grpc") == {"authorization": "Bearer dmfn_fromenv"}
    assert Credentials.resolve("dmfn_arg").headers("http") == {"Authorization": "Bearer dmfn_arg"}
    monkeypatch.delenv(API_KEY_ENV)
    key_file = tmp_path / "key"
    key_file.write_text("\n  dmfn_fromfile  \n")
    monkeypatch.setenv(API_KEY_FILE_ENV, str(key_file))
    assert Credentials.resolve().api_key == "dmfn_fromfile"
    assert "dmfn_fromfile" not in repr(Credentials.resolve())
    with pytest.raises(ValueError, match="'api_key'"):
        Credentials.resolve("two words")
    with pytest.raises(ValueError, match="'client_cert' and 'client_key'"):
        Credentials.resolve(client_cert=str(key_file))


# --------------------------------------------------------------------------- slow: real service
@pytest.fixture(scope="module")
def pki(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    return make_test_pki(tmp_path_factory.mktemp("pki"))


@pytest.fixture(scope="module")
def secured(exported_repository, tmp_path_factory, pki):
    """A dmfn serve with TLS, client certificates and API keys ("pacs" and "ward")."""
    needs_nginx()
    if njs_module() is None:
        pytest.skip("nginx's JavaScript module is missing (make setup installs it as root)")
    folder = tmp_path_factory.mktemp("secured")
    keys = {"pacs": new_key(), "ward": new_key()}
    write_keys(folder / "keys", ApiKeys(tuple((n, key_digest(k)) for n, k in keys.items())))
    service = DmfnService(
        service_config(
            exported_repository[0],
            folder / "logs",
            tls_cert=pki["server.pem"],
            tls_key=pki["server.key"],
            tls_client_ca=pki["ca.pem"],
            api_keys=folder / "keys",
            canary_interval_s=None,
        )
    )
    service.start()
    try:
        yield service, keys, folder / "keys"
    finally:
        service.shutdown()


def _client(service, pki, protocol, key=None, cert="client"):
    url = service.http_url if protocol == "http" else service.grpc_url
    certificate = {} if cert is None else {
        "client_cert": str(pki[f"{cert}.pem"]), "client_key": str(pki[f"{cert}.key"])
    }  # fmt: skip
    return DmfnClient(
        url, protocol, ca_cert=str(pki["ca.pem"]), timeout_s=20, api_key=key, **certificate
    )


@pytest.mark.slow
@pytest.mark.parametrize("protocol", ["http", "grpc"])
def test_requests_need_a_key_and_a_client_certificate(secured, pki, protocol, monkeypatch):
    monkeypatch.delenv(API_KEY_ENV, raising=False)
    monkeypatch.delenv(API_KEY_FILE_ENV, raising=False)
    service, keys, _ = secured
    study = make_studies(1, seed=12)[0]
    with _client(service, pki, protocol, keys["pacs"]) as client:
        assert client.predict(study).top3
    cases = {
        "no key": (None, "client", "API key is required"),
        "a wrong key": (new_key(), "client", "API key is required"),
        "no client certificate": (keys["pacs"], None, "client certificate"),
        "a certificate of another authority": (keys["pacs"], "intruder", "client certificate"),
    }
    for what, (key, cert, says) in cases.items():
        with _client(service, pki, protocol, key, cert) as client:
            with pytest.raises(DmfnServerError, match=says) as err:
                client.predict(study)
            print(f"{protocol}, {what}: {err.value}")
            assert str(err.value.status) in ("401", "403", "StatusCode.UNAUTHENTICATED")


def _https(service, pki, port: int, path: str, key: str | None, cert: bool = True) -> int:
    context = ssl.create_default_context(cafile=str(pki["ca.pem"]))
    if cert:
        context.load_cert_chain(str(pki["client.pem"]), str(pki["client.key"]))
    conn = http.client.HTTPSConnection("127.0.0.1", port, context=context, timeout=10)
    try:
        conn.request("GET", path, headers={"Authorization": f"Bearer {key}"} if key else {})
        return conn.getresponse().status
    finally:
        conn.close()


@pytest.mark.slow
def test_health_is_open_metrics_are_not_and_refusals_are_counted_without_the_key(secured, pki):
    service, keys, _ = secured
    c = service.config
    assert _https(service, pki, c.http_port, "/v2/health/ready", None) == 200
    # load balancers probe without a certificate or a key
    assert _https(service, pki, c.http_port, "/v2/health/ready", None, cert=False) == 200
    assert (
        _https(service, pki, c.http_port, "/v2/models/dmfn_pipeline", keys["pacs"], cert=False)
        == 403
    )
    assert _https(service, pki, c.http_port, "/v2/models/dmfn_pipeline", None) == 401
    assert _https(service, pki, c.metrics_port, "/metrics", None) == 401
    assert _https(service, pki, c.metrics_port, "/metrics", keys["ward"], cert=False) == 403
    assert _https(service, pki, c.metrics_port, "/metrics", keys["ward"]) == 200
    time.sleep(0.3)
    context = ssl.create_default_context(cafile=str(pki["ca.pem"]))
    context.load_cert_chain(str(pki["client.pem"]), str(pki["client.key"]))
    conn = http.client.HTTPSConnection("127.0.0.1", c.metrics_port, context=context, timeout=10)
    conn.request("GET", "/metrics", headers={"Authorization": f"Bearer {keys['ward']}"})
    text = conn.getresponse().read().decode()
    conn.close()
    assert 'dmfn_refused_requests_total{reason="auth"}' in text
    assert 'dmfn_refused_requests_total{reason="client_cert"}' in text
    assert "dmfn_api_keys 2" in text and "nv_inference_count" in text
    log = service.front_door_log.read_text()
    assert "refused auth: 401 GET /v2/models/dmfn_pipeline" in log
    for key in keys.values():
        assert key not in log and key_digest(key) not in log


@pytest.mark.slow
def test_keys_reload_when_the_file_changes_and_a_bad_file_keeps_them(secured, pki):
    service, keys, path = secured
    study = make_studies(1, seed=13)[0]
    newcomer = new_key()
    write_keys(path, ApiKeys((*ApiKeys.load(path).entries, ("newcomer", key_digest(newcomer)))))
    deadline = time.monotonic() + 10
    while (
        not any(e.kind == "keys_reloaded" for e in service.events) and time.monotonic() < deadline
    ):
        time.sleep(0.1)
    assert any("newcomer" in e.message for e in service.events if e.kind == "keys_reloaded")
    with _client(service, pki, "http", newcomer) as client:
        assert client.predict(study).top3
    path.write_text("broken\n")
    deadline = time.monotonic() + 10
    while (
        not any(e.kind == "keys_reload_failed" for e in service.events)
        and time.monotonic() < deadline
    ):
        time.sleep(0.1)
    assert any(e.kind == "keys_reload_failed" for e in service.events)
    with _client(service, pki, "grpc", newcomer) as client:  # the previous keys stay
        assert client.predict(study).top3
    write_keys(path, ApiKeys(tuple((n, key_digest(k)) for n, k in keys.items())))


@pytest.mark.slow
def test_dmfn_predict_takes_the_key_from_a_file_or_the_environment(secured, pki, tmp_path):
    """No key on the command line: `--api-key-file` or $DMFN_API_KEY."""
    from dmfn.client.io import write_nifti_mask, write_nifti_volume

    service, keys, _ = secured
    study = make_studies(1, seed=14)[0]
    write_nifti_volume(study.hu, study.spacing_mm, tmp_path / "ct.nii.gz")
    write_nifti_mask(study.mask, study.spacing_mm, tmp_path / "mask.nii.gz")
    key_file = tmp_path / "key"
    key_file.write_text(keys["pacs"] + "\n")
    key_file.chmod(0o600)
    c = study.clinical
    command = [
        sys.executable, "-m", "dmfn.cli", "predict", str(tmp_path / "ct.nii.gz"),
        "--mask", str(tmp_path / "mask.nii.gz"), "--ctc", repr(study.ctc["ctc_level_pg_ml"]),
        "--age", repr(c.age_years), "--sex", c.sex, "--location", c.location,
        "--url", f"https://{service.http_url}", "--ca-cert", str(pki["ca.pem"]),
        "--client-cert", str(pki["client.pem"]), "--client-key", str(pki["client.key"]),
    ]  # fmt: skip
    env = {k: v for k, v in os.environ.items() if k not in (API_KEY_ENV, API_KEY_FILE_ENV)}

    def run(*extra: str, **more_env: str) -> subprocess.CompletedProcess:
        return subprocess.run(
            [*command, *extra], capture_output=True, text=True, env={**env, **more_env}
        )

    with_file = run("--api-key-file", str(key_file))
    assert with_file.returncode == 0 and "malignant probability" in with_file.stdout, (
        with_file.stderr
    )
    with_env = run(**{API_KEY_ENV: keys["ward"]})
    assert with_env.returncode == 0, with_env.stderr
    without = run()
    assert without.returncode == 1 and "API key is required" in without.stderr, without.stderr
