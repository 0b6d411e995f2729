"""The audit trail (contract/audit.py): line format, hashing, rotation under concurrent writers,
failed writes, the client paths (SDK, LocalPredictor) and, with a real ``dmfn serve``, the
server's lines with the client certificate's subject as caller."""

from __future__ import annotations

import dataclasses
import hashlib
import hmac
import json
import logging
import multiprocessing
import os
import time
from pathlib import Path

import numpy as np
import pytest
from serving_utils import CONTRACT, make_studies

from dmfn.client.sdk import DmfnClient, DmfnServerError
from dmfn.contract.audit import (
    AuditLog,
    AuditRecord,
    ServerAudit,
    audit_from_env,
    local_caller,
    parse_stamp,
    read_failure_counts,
)
from dmfn.contract.study import Clinical

FIELDS = ["time", "source", "caller", "request_id", "study_uid", "series_uid", "image_id",
          "model_sha256", "outcome", "rule", "top_class", "malignant_prob", "duration_ms"]  # fmt: skip


def lines_of(*paths: Path) -> list[dict]:
    out = []
    for path in paths:
        if path.exists():
            out += [json.loads(line) for line in path.read_text().splitlines()]
    return out


def dicom_like(study, patient_id: str = "DOE^JOHN"):
    """``study`` as if read from DICOM: a patient ID, a StudyInstanceUID, the series as id."""
    return dataclasses.replace(
        study,
        patient_id=patient_id,
        image_id="1.2.826.0.1.3680043.8.498.2",
        study_uid="1.2.826.0.1.3680043.8.498.1",
        clinical=Clinical(54, "F", "anterior"),
    )


# --------------------------------------------------------------------------- the file
def test_a_line_has_every_field_in_order_and_the_file_is_private(tmp_path: Path) -> None:
    audit = AuditLog(tmp_path / "sub" / "audit.jsonl")
    assert audit.record(
        source="sdk", caller="alice@ws1", outcome="ok", request_id="r1", study_uid="1.2.3",
        series_uid="1.2.3.4", model_sha256="ab" * 32, top_class="thymoma_AB",
        malignant_prob=0.123456789, duration_ms=12.34567,
    )  # fmt: skip
    audit.refused(ValueError("field 'mask':\n  must not be empty"), image_id="case7")
    raw = (tmp_path / "sub" / "audit.jsonl").read_text().splitlines()
    first, second = (json.loads(line) for line in raw)
    assert list(first) == FIELDS
    assert first["time"].endswith("Z") and first["malignant_prob"] == 0.123457
    assert first["duration_ms"] == 12.346 and first["rule"] is None
    assert second["outcome"] == "refused" and second["source"] == "cli"
    assert second["rule"] == "field 'mask': must not be empty"
    assert second["caller"] == local_caller() and "@" in second["caller"]
    assert second["image_id"] == "case7" and second["study_uid"] is None
    assert (tmp_path / "sub" / "audit.jsonl").stat().st_mode & 0o777 == 0o600
    assert (tmp_path / "sub").stat().st_mode & 0o777 == 0o700
    with pytest.raises(ValueError, match="'outcome'"):
        AuditRecord(source="sdk", caller="x", outcome="maybe")


def test_uids_are_hashed_on_request_keyed_or_plain(tmp_path: Path) -> None:
    uid = "1.2.826.0.1.3680043.8.498.1"
    keyed = AuditLog(tmp_path / "a.jsonl", hash_uids=True, key=b"hospital secret")
    plain = AuditLog(tmp_path / "b.jsonl", hash_uids=True)
    for audit in (keyed, plain):
        audit.record(source="sdk", caller="x", outcome="ok", study_uid=uid, image_id="case1")
    (a,), (b,) = lines_of(tmp_path / "a.jsonl"), lines_of(tmp_path / "b.jsonl")
    mac = hmac.new(b"hospital secret", uid.encode(), hashlib.sha256).hexdigest()
    assert a["study_uid"] == f"hmac-sha256:{mac}"
    assert b["study_uid"] == "sha256:" + hashlib.sha256(uid.encode()).hexdigest()
    assert a["image_id"].startswith("hmac-sha256:")
    assert uid not in (tmp_path / "a.jsonl").read_text() + (tmp_path / "b.jsonl").read_text()


def test_the_environment_configures_the_log(tmp_path: Path) -> None:
    key = tmp_path / "key"
    key.write_bytes(b"k3y\n")
    env = {"DMFN_AUDIT_LOG": str(tmp_path / "x.jsonl"), "DMFN_AUDIT_MAX_BYTES": "8192",
           "DMFN_AUDIT_BACKUPS": "3", "DMFN_AUDIT_HASH_UIDS": "1",
           "DMFN_AUDIT_KEY_FILE": str(key)}  # fmt: skip
    audit = audit_from_env(None, env)
    assert audit is not None and audit.path == tmp_path / "x.jsonl"
    assert (audit.max_bytes, audit.backups, audit.hash_uids, audit.key) == (8192, 3, True, b"k3y")
    assert audit_from_env(tmp_path / "d.jsonl", {"DMFN_AUDIT_LOG": "off"}) is None
    assert audit_from_env(None, {}) is None
    assert audit_from_env(tmp_path / "d.jsonl", {}).path == tmp_path / "d.jsonl"
    with pytest.raises(ValueError, match="DMFN_AUDIT_MAX_BYTES"):
        audit_from_env(None, {**env, "DMFN_AUDIT_MAX_BYTES": "ten"})
    with pytest.raises(ValueError, match="DMFN_AUDIT_KEY_FILE"):
        audit_from_env(None, {**env, "DMFN_AUDIT_KEY_FILE": str(tmp_path / "none")})


def _append_many(path: str, writer: int, n: int) -> None:
    audit = AuditLog(path, max_bytes=8192, backups=500)
    for i in range(n):
        audit.record(source="sdk", caller=f"w{writer}", outcome="ok", request_id=f"{writer}-{i}",
                     rule="x" * (i % 97))  # fmt: skip


def test_rotation_with_several_processes_loses_and_tears_no_line(tmp_path: Path) -> None:
    path = tmp_path / "audit.jsonl"
    n_writers, n_lines = 4, 400
    context = multiprocessing.get_context("fork")
    workers = [
        context.Process(target=_append_many, args=(str(path), w, n_lines)) for w in range(n_writers)
    ]
    for worker in workers:
        worker.start()
    for worker in workers:
        worker.join(60)
        assert worker.exitcode == 0
    rotated = sorted(tmp_path.glob("audit.jsonl.[0-9]*"), key=lambda p: -int(p.suffix[1:]))
    files = [*rotated, path]  # oldest first
    assert len(files) > 10  # it rotated many times
    # a writer that opened the file just before another rotated it appends to the rotated one
    assert all(f.stat().st_size <= 8192 + n_writers * 400 for f in files)
    records = lines_of(*files)  # json.loads fails on a torn line
    ids = [r["request_id"] for r in records]
    assert len(ids) == len(set(ids)) == n_writers * n_lines
    for writer in range(n_writers):  # each writer's lines stay in its order across files
        mine = [int(i.split("-")[1]) for i in ids if i.startswith(f"{writer}-")]
        assert mine == list(range(n_lines))


def test_rotation_keeps_only_the_backups_asked_for(tmp_path: Path) -> None:
    audit = AuditLog(tmp_path / "a.jsonl", max_bytes=4096, backups=2)
    for i in range(200):
        audit.record(source="sdk", caller="x", outcome="ok", request_id=str(i))
    assert sorted(p.name for p in tmp_path.glob("a.jsonl*")) == [
        "a.jsonl", "a.jsonl.1", "a.jsonl.2", "a.jsonl.lock"
    ]  # fmt: skip
    assert lines_of(tmp_path / "a.jsonl")[-1]["request_id"] == "199"


def test_a_failed_write_raises_nothing_and_is_counted_and_logged(tmp_path, caplog) -> None:
    seen: list[str] = []
    audit = AuditLog("/dev/full", on_failure=seen.append)
    with caplog.at_level(logging.WARNING, logger="dmfn.audit"):
        assert not audit.record(source="sdk", caller="x", outcome="ok")
        assert not audit.record(source="sdk", caller="x", outcome="ok")
    assert audit.failures == 2 and len(seen) == 2 and "No space left" in seen[0]
    assert sum("audit line not written" in r.message for r in caplog.records) == 2


@pytest.mark.skipif(os.geteuid() == 0, reason="root writes into a read-only folder")
def test_a_read_only_folder_is_a_failed_write(tmp_path: Path) -> None:
    folder = tmp_path / "ro"
    folder.mkdir(mode=0o500)
    audit = AuditLog(folder / "audit.jsonl")
    assert not audit.record(source="sdk", caller="x", outcome="ok") and audit.failures == 1


# --------------------------------------------------------------------------- the server's parts
def test_the_stamp_is_read_from_the_parameters_and_a_second_claim_is_kept() -> None:
    h = "dmfn-audit-ab12"
    assert parse_stamp(json.dumps({h: "1700000000.123 CN=pacs"}), h) == (
        "CN=pacs",
        1700000000.123,
    )
    assert parse_stamp("{}", h)[0] == "unstamped"
    assert parse_stamp(None, h)[0] == "unstamped"
    forged = f'{{"{h}":"0 CN=admin","{h}":"1700000000.5 CN=pacs"}}'
    caller, when = parse_stamp(forged, h)
    assert "CN=admin" in caller and "CN=pacs" in caller and caller.startswith("several")
    assert np.isnan(when)


def test_server_audit_is_off_outside_dmfn_serve_and_counts_its_failures(tmp_path: Path) -> None:
    assert not ServerAudit("preprocess_0_0", environ={}).active
    header = "dmfn-audit-00ff"
    env = {"DMFN_AUDIT_LOG": "/dev/full", "DMFN_AUDIT_HEADER": header,
           "DMFN_WORKER_STATE_DIR": str(tmp_path), "DMFN_AUDIT_MODEL_SHA256": "cd" * 32}  # fmt: skip
    warnings: list[str] = []
    audit = ServerAudit("postprocess_0_0", warnings.append, env)
    stamp = json.dumps({header: f"{time.time():.3f} CN=pacs"})
    audit.write("rid", stamp, "ok", top_class="cyst", malignant_prob=0.1)
    audit.write("rid", "{}", "ok")  # the canary: not a line at all
    audit.write("rid2", stamp, "refused", rule="preprocess: input 'CTC': out of range")
    audit.close()
    assert len(warnings) == 2 and read_failure_counts(tmp_path) == 2
    # a replaced worker of the same name goes on counting
    again = ServerAudit("postprocess_0_0", None, env)
    again.write("rid3", stamp, "ok")
    again.close()
    assert read_failure_counts(tmp_path) == 3
    good = ServerAudit("preprocess_0_0", None, {**env, "DMFN_AUDIT_LOG": str(tmp_path / "s.jsonl")})
    good.write("rid4", stamp, "refused", rule="preprocess: input 'CTC': out of range")
    (line,) = lines_of(tmp_path / "s.jsonl")
    assert line["caller"] == "CN=pacs" and line["source"] == "server"
    assert line["model_sha256"] == "cd" * 32 and line["request_id"] == "rid4"
    assert 0 <= line["duration_ms"] < 5000 and line["study_uid"] is None


def test_the_front_door_stamps_requests_only_when_asked(tmp_path: Path) -> None:
    from dmfn.serving.frontdoor import FrontDoorConfig, render_nginx_conf

    base = dict(run_dir=tmp_path, ready_flag=tmp_path / "ready", host="127.0.0.1",
                http_port=1, grpc_port=2, metrics_port=3, upstream_http=tmp_path / "h",
                upstream_grpc=tmp_path / "g", metrics_socket=tmp_path / "m",
                log_socket=tmp_path / "l", max_body_bytes=1 << 20)  # fmt: skip
    assert "dmfn-audit" not in render_nginx_conf(FrontDoorConfig(**base))
    text = render_nginx_conf(FrontDoorConfig(**base, audit_header="dmfn-audit-0a"))
    assert 'proxy_set_header dmfn-audit-0a "$msec $dmfn_caller";' in text
    assert 'grpc_set_header dmfn-audit-0a "$msec $dmfn_caller";' in text
    assert "$ssl_client_s_dn" in text


def test_metrics_expose_failed_audit_writes() -> None:
    from dmfn.serving.metrics import render_service_metrics

    assert "dmfn_audit_write_failures_total 4" in render_service_metrics(True, {}, {}, None, 4)
    assert "dmfn_audit_write" not in render_service_metrics(True, {}, {}, None, None)


# --------------------------------------------------------------------------- the client paths
def test_sdk_lines_for_a_refused_and_a_failed_study_carry_no_patient_id(tmp_path: Path) -> None:
    audit = AuditLog(tmp_path / "c.jsonl")
    study = dicom_like(make_studies(1, seed=3)[0])
    client = DmfnClient("127.0.0.1:9", contract=CONTRACT, timeout_s=2, audit=audit)
    with pytest.raises(DmfnServerError):  # nothing listens on port 9
        client.predict(study)
    with pytest.raises(ValueError):
        client.predict(study.with_mask(None))  # no mask, no box: refused before sending
    failed, refused = lines_of(tmp_path / "c.jsonl")
    assert failed["outcome"] == "failed" and "cannot reach" in failed["rule"]
    assert len(failed["request_id"]) == 32 and refused["outcome"] == "refused"
    assert failed["study_uid"] == study.study_uid and failed["series_uid"] == study.image_id
    assert failed["image_id"] is None and failed["source"] == "sdk"
    text = (tmp_path / "c.jsonl").read_text()
    assert "DOE" not in text and "JOHN" not in text
    assert DmfnClient("127.0.0.1:9", contract=CONTRACT, audit=False).audit is None


def test_local_predictor_writes_one_line_per_study(tiny_checkpoint: Path, tmp_path: Path) -> None:
    from dmfn.training.inference import LocalPredictor

    audit = AuditLog(tmp_path / "local.jsonl")
    predictor = LocalPredictor(tiny_checkpoint, audit=audit)
    good = dicom_like(make_studies(1, seed=4)[0])
    plain = dataclasses.replace(good, study_uid="", image_id="case_12")
    results = predictor.predict_many([good, plain, good.with_mask(None)], return_exceptions=True)
    assert isinstance(results[2], ValueError)
    ok, ok_plain, refused = lines_of(tmp_path / "local.jsonl")
    assert ok["outcome"] == "ok" and ok["source"] == "local" and ok["request_id"] is None
    assert ok["top_class"] == results[0].top3[0][0]
    assert ok["malignant_prob"] == pytest.approx(results[0].malignant_prob, abs=1e-6)
    assert ok["model_sha256"] == results[0].provenance.sha256 and len(ok["model_sha256"]) == 64
    assert ok["duration_ms"] > 0 and ok["series_uid"] == good.image_id
    assert ok_plain["image_id"] == "case_12" and ok_plain["series_uid"] is None
    assert refused["outcome"] == "refused" and refused["top_class"] is None
    text = (tmp_path / "local.jsonl").read_text()
    assert "DOE" not in text and "JOHN" not in text


def test_a_failing_audit_keeps_the_prediction(tiny_checkpoint: Path, caplog) -> None:
    from dmfn.training.inference import LocalPredictor

    audit = AuditLog("/dev/full")
    predictor = LocalPredictor(tiny_checkpoint, audit=audit)
    with caplog.at_level(logging.WARNING, logger="dmfn.audit"):
        prediction = predictor.predict(dicom_like(make_studies(1, seed=4)[0]))
    assert prediction.top3 and audit.failures == 1
    assert any("audit line not written" in r.message for r in caplog.records)


# --------------------------------------------------------------------------- a real dmfn serve
@pytest.fixture(scope="module")
def audited(exported_repository, tmp_path_factory):
    """A dmfn serve with TLS and client certificates, its audit trail in its log folder."""
    from service_utils import needs_nginx, service_config

    from dmfn.serving.service import DmfnService
    from dmfn.serving.testpki import make_test_pki

    needs_nginx()
    folder = tmp_path_factory.mktemp("audited")
    pki = make_test_pki(folder / "pki")
    service = DmfnService(
        service_config(
            exported_repository[0],
            folder / "logs",
            tls_cert=pki["server.pem"],
            tls_key=pki["server.key"],
            tls_client_ca=pki["ca.pem"],
            canary_interval_s=None,
        )
    )
    service.start()
    try:
        yield service, pki, folder
    finally:
        service.shutdown()


@pytest.mark.slow
@pytest.mark.parametrize("protocol", ["http", "grpc"])
def test_server_lines_name_the_certificate_and_join_the_client_lines(audited, protocol) -> None:
    service, pki, folder = audited
    server_file = folder / "logs" / "audit.jsonl"
    before = len(lines_of(server_file))
    client_audit = AuditLog(folder / f"client-{protocol}.jsonl")
    url = service.http_url if protocol == "http" else service.grpc_url
    study = dicom_like(make_studies(1, seed=5)[0])
    bad = dataclasses.replace(study, ctc={"ctc_level_pg_ml": 1e6})  # the server refuses it
    # without the published limits the client sends it, so that preprocess refuses it
    contract = dataclasses.replace(service.contract, limits=None)
    with DmfnClient(
        url, protocol, ca_cert=str(pki["ca.pem"]), client_cert=str(pki["client.pem"]),
        client_key=str(pki["client.key"]), timeout_s=30, audit=client_audit, contract=contract,
    ) as client:  # fmt: skip
        prediction = client.predict(study)
        with pytest.raises(DmfnServerError, match="CTC") as refusal:
            client.predict(bad)
    assert str(refusal.value.status) in ("400", "StatusCode.INVALID_ARGUMENT")
    ok_c, refused_c = lines_of(client_audit.path)
    served = lines_of(server_file)[before:]
    assert len(served) == 2  # the start-up canary wrote none
    ok_s, refused_s = served
    assert ok_s["caller"] == refused_s["caller"] == "CN=pacs-gateway"
    assert ok_s["request_id"] == ok_c["request_id"] and refused_s["request_id"] == refused_c[
        "request_id"
    ]  # fmt: skip
    assert ok_s["outcome"] == "ok" and ok_s["top_class"] == prediction.top3[0][0]
    assert ok_s["malignant_prob"] == pytest.approx(prediction.malignant_prob, abs=1e-6)
    assert ok_s["model_sha256"] == prediction.provenance.sha256 == ok_c["model_sha256"]
    assert 0 < ok_s["duration_ms"] < 30_000 and ok_s["study_uid"] is None
    assert refused_s["outcome"] == refused_c["outcome"] == "refused"
    assert "CTC" in refused_s["rule"] and ok_c["outcome"] == "ok"
    for path in (server_file, client_audit.path):
        text = path.read_text()
        assert "DOE" not in text and "JOHN" not in text
    assert server_file.stat().st_mode & 0o777 == 0o600


@pytest.mark.slow
@pytest.mark.parametrize("protocol", ["http", "grpc"])
def test_a_forged_caller_header_is_replaced_by_the_front_door(audited, protocol) -> None:
    import tritonclient.grpc as grpcclient
    import tritonclient.http as httpclient

    from dmfn.client.sdk import infer_inputs
    from dmfn.contract import schema as S
    from dmfn.contract.wire import build_request

    service, pki, folder = audited
    server_file = folder / "logs" / "audit.jsonl"
    before = len(lines_of(server_file))
    forged = {service.audit_header: "0 CN=administrator", "dmfn-caller": "CN=administrator"}
    arrays = build_request(make_studies(1, seed=6)[0], service.contract)
    if protocol == "http":
        client = httpclient.InferenceServerClient(
            service.http_url, ssl=True,
            ssl_options={"ca_certs": str(pki["ca.pem"]), "certfile": str(pki["client.pem"]),
                         "keyfile": str(pki["client.key"])},
        )  # fmt: skip
        module = httpclient
    else:
        client = grpcclient.InferenceServerClient(
            service.grpc_url, ssl=True, root_certificates=str(pki["ca.pem"]),
            private_key=str(pki["client.key"]), certificate_chain=str(pki["client.pem"]),
        )  # fmt: skip
        module = grpcclient
    try:
        client.infer(S.PIPELINE_MODEL, infer_inputs(module, arrays), headers=forged,
                     request_id="forged-header")  # fmt: skip
        client.infer(S.PIPELINE_MODEL, infer_inputs(module, arrays), request_id="forged-param",
                     parameters={service.audit_header: "0 CN=administrator"})  # fmt: skip
    finally:
        client.close()
    header_line, param_line = lines_of(server_file)[before:]
    assert header_line["request_id"] == "forged-header"
    assert header_line["caller"] == "CN=pacs-gateway"
    # a parameter of the stamp's name (a client would have to guess it) cannot pass for it
    assert param_line["caller"].startswith("several stamps")
    assert "CN=pacs-gateway" in param_line["caller"]


# --------------------------------------------------------------------------- dmfn predict
def test_dmfn_predict_writes_a_line_per_study_refused_ones_too_without_names(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A manifest of a good study and one with a mask of another grid, in folders named after
    the patient: two lines (ok, refused), and neither the name nor the folder in the file."""
    from dmfn.client.io import write_dicom_series, write_nifti_mask
    from dmfn.predict_cli import main as predict_main
    from dmfn.resources import demo_checkpoint

    log = tmp_path / "trail.jsonl"
    monkeypatch.setenv("DMFN_AUDIT_LOG", str(log))
    rng = np.random.default_rng(3)
    hu = rng.integers(-100, 200, (24, 64, 64)).astype(np.int16)
    mask = np.zeros(hu.shape, np.uint8)
    mask[8:16, 20:40, 20:40] = 1
    patient = tmp_path / "DOE^JOHN"
    write_dicom_series(hu, (2.0, 0.8, 0.8), patient / "ct", patient_id="DOE^JOHN")
    write_nifti_mask(mask, (2.0, 0.8, 0.8), patient / "good.nii.gz")
    write_nifti_mask(mask[:-1], (2.0, 0.8, 0.8), patient / "short.nii.gz")
    manifest = tmp_path / "studies.csv"
    manifest.write_text(
        "image_path,mask_path,ctc_level_pg_ml,age_years,sex,location\n"
        f"{patient / 'ct'},{patient / 'good.nii.gz'},12.5,54,F,anterior\n"
        f"{patient / 'ct'},{patient / 'short.nii.gz'},12.5,54,F,anterior\n"
    )
    code = predict_main(
        ["--manifest", str(manifest), "--checkpoint", str(demo_checkpoint()), "--json"]
    )
    assert code == 1  # one study failed
    lines = lines_of(log)
    assert sorted(line["outcome"] for line in lines) == ["ok", "refused"]
    (ok,) = [line for line in lines if line["outcome"] == "ok"]
    (refused,) = [line for line in lines if line["outcome"] == "refused"]
    assert (ok["source"], refused["source"]) == ("local", "cli")
    assert ok["study_uid"] and ok["series_uid"] and ok["top_class"]
    assert "MASK" in refused["rule"] and refused["image_id"].endswith("line 3")
    text = log.read_text()
    assert "DOE" not in text and "JOHN" not in text
