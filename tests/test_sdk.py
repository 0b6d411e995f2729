"""The client SDK and `dmfn predict`: request building (fast, no server) and predictions against
a real Triton server (slow)."""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path

import numpy as np
import pytest

from dmfn.client import predict as P
from dmfn.client.sdk import (
    DmfnClient,
    DmfnServerError,
    Prediction,
    build_request,
    parse_response,
)
from dmfn.contract import schema as S
from dmfn.contract.limits import InputLimits
from dmfn.contract.server import ServerContract
from dmfn.contract.study import Clinical, Study
from dmfn.contract.taxonomy import load_taxonomy
from dmfn.contract.wire import decode_item
from dmfn.predict_cli import main as predict_main
from dmfn.preprocess import crop_roi
from dmfn.serving.triton import free_ports

CONTRACT = ServerContract(10.0, S.DEFAULT_CTC_FEATURES, tuple(load_taxonomy().names))
#: Limits wide enough for every request these tests build (decoding checks the shape).
WIDE_LIMITS = InputLimits(ctc_ranges=((0.0, 100.0),))
SPACING = (2.5, 0.8, 0.7)
PATIENT_ID = "PATIENT-4711-Doe^Jane"


def big_study(rng: np.random.Generator, **overrides) -> Study:
    """A 40 x 120 x 120 volume with a small lesion; identifiers that must never be sent."""
    shape = (40, 120, 120)
    hu = rng.integers(-1000, 1500, size=shape).astype(np.int16)
    mask = np.zeros(shape, np.uint8)
    mask[18:23, 50:61, 70:79] = 1
    fields = {
        "hu": hu,
        "spacing_mm": SPACING,
        "mask": mask,
        "ctc": {"ctc_level_pg_ml": 11.5, "other_marker": 3.0},
        "clinical": Clinical(61, "F", "anterior"),
        "patient_id": PATIENT_ID,
        "image_id": "IMG-0001",
        "origin_lps_mm": (-200.0, -180.0, 1234.5),
    }
    fields.update(overrides)
    return Study(**fields)


# --------------------------------------------------------------------------- fast: requests
def _sent_bytes(request: dict[str, np.ndarray]) -> bytes:
    """Everything a request carries: the BYTES elements and the numeric tensors."""
    return b"".join(a[0, 0] if a.dtype == np.object_ else a.tobytes() for a in request.values())


def test_request_holds_only_the_lesion_crop_and_no_identifier() -> None:
    study = big_study(np.random.default_rng(0))
    request = build_request(study, CONTRACT)
    assert list(request) == [t.name for t in S.Schema().request_inputs]
    for spec in S.Schema().request_inputs:
        array = request[spec.name]
        assert array.dtype == spec.numpy_dtype, spec.name
        assert array.shape == (1, *spec.dims), spec.name
    crop = crop_roi(study.hu, mask=study.mask, margin_mm=10.0, spacing_mm=SPACING)
    sent = decode_item(request, 0, WIDE_LIMITS)
    np.testing.assert_array_equal(sent.hu, crop.volume)
    np.testing.assert_array_equal(sent.mask, crop.mask)
    # margin 10 mm = 4 slices at 2.5 mm, 13 rows at 0.8 mm, 15 columns at 0.7 mm
    assert request[S.VOLUME_SHAPE].tolist() == [[5 + 8, 11 + 26, 9 + 30]]
    assert sent.hu.size < study.hu.size / 10
    # the BYTES elements are exactly the voxels: int16 HU and one bit per mask voxel
    assert len(request[S.CT_HU][0, 0]) == 2 * sent.hu.size
    assert len(request[S.ROI_MASK][0, 0]) == -(-sent.hu.size // 8)
    np.testing.assert_array_equal(request[S.SPACING_MM][0], np.float32(SPACING))
    np.testing.assert_array_equal(request[S.CTC], [[11.5]])  # only the model's features
    np.testing.assert_array_equal(request[S.CLINICAL], [[61, 0, 1, 0, 0]])
    for identifier in (PATIENT_ID, "IMG-0001", "4711"):
        assert identifier.encode() not in _sent_bytes(request)


def test_request_from_a_bbox_sends_the_box_as_mask() -> None:
    rng = np.random.default_rng(1)
    study = big_study(rng, mask=None, bbox=(18, 50, 70, 23, 61, 79))
    request = build_request(study, CONTRACT)
    mask = decode_item(request, 0, WIDE_LIMITS).mask
    assert mask.shape == tuple(request[S.VOLUME_SHAPE][0]) == (13, 37, 39)
    assert mask.sum() == 5 * 11 * 9
    assert mask[4:9, 13:24, 15:24].all()


def test_request_from_a_non_axial_study_is_reoriented_first() -> None:
    study = big_study(np.random.default_rng(7))
    # the same voxels stored with rows running posterior -> anterior and columns left -> right
    flipped = Study(
        hu=study.hu[:, ::-1, ::-1].copy(),
        spacing_mm=SPACING,
        origin_lps_mm=study.grid.index_to_lps([0, 119, 119]),
        direction=np.asarray(study.direction) * [1.0, -1.0, -1.0],
        mask=study.mask[:, ::-1, ::-1].copy(),
        ctc=study.ctc,
        clinical=study.clinical,
    )
    expected = build_request(study, CONTRACT)
    for name, array in build_request(flipped, CONTRACT).items():
        assert array.tolist() == expected[name].tolist(), name


def test_float_hu_is_rounded_and_out_of_range_refused() -> None:
    rng = np.random.default_rng(2)
    base = big_study(rng)
    hu = base.hu.astype(np.float32) + 0.4
    request = build_request(big_study(rng, hu=hu), CONTRACT)
    sent = decode_item(request, 0, WIDE_LIMITS)
    assert sent.hu.dtype == np.int16
    crop = crop_roi(base.hu, mask=base.mask, margin_mm=10.0, spacing_mm=SPACING)
    np.testing.assert_array_equal(sent.hu, crop.volume)
    hu[20, 55, 75] = 40000.0
    with pytest.raises(ValueError, match=r"argument 'study'.*int16"):
        build_request(big_study(rng, hu=hu), CONTRACT)


@pytest.mark.parametrize(
    ("overrides", "message"),
    [
        ({"mask": None}, "neither a lesion mask nor a bbox"),
        ({"ctc": {"other_marker": 1.0}}, "no CTC feature 'ctc_level_pg_ml'"),
        ({"clinical": None}, "no clinical record"),
    ],
)
def test_unsendable_studies_are_refused(overrides: dict, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        build_request(big_study(np.random.default_rng(3), **overrides), CONTRACT)
    with pytest.raises(ValueError, match="argument 'study'"):
        build_request("not a study", CONTRACT)  # type: ignore[arg-type]


def test_parse_response_builds_a_prediction() -> None:
    names = CONTRACT.class_names
    probs = np.linspace(1, 2, len(names), dtype=np.float32)
    probs /= probs.sum()
    top = np.argsort(-probs, kind="stable")[:3].astype(np.int32)
    outputs = {
        S.PROBS: probs[None],
        S.TOP3_INDEX: top[None],
        S.TOP3_LABEL: np.array([[names[i].encode() for i in top]], dtype=np.object_),
        S.MALIGNANT_PROB: np.array([[0.25]], np.float32),
        S.MANAGEMENT: np.array([[b"surgery"]], dtype=np.object_),
        S.MEASUREMENTS: np.array([[100.0, 20.0, 6.0, 4.0, 5.0]], np.float32),
    }
    prediction = parse_response(outputs, names, "dmfn_pipeline/1", "IMG")
    assert isinstance(prediction, Prediction)
    assert list(prediction.probs) == list(names)
    assert sum(prediction.probs.values()) == pytest.approx(1.0)
    assert [label for label, _ in prediction.top3] == [names[i] for i in top]
    assert prediction.top3[0][1] == pytest.approx(float(probs.max()))
    assert prediction.malignant_prob == 0.25 and prediction.management == "surgery"
    assert list(prediction.measurements) == list(S.MEASUREMENT_FIELDS)
    assert prediction.measurements["volume_mm3"] == 100.0
    json.dumps(prediction.to_dict())
    with pytest.raises(TypeError):
        prediction.probs["cyst"] = 1.0  # type: ignore[index]
    with pytest.raises(DmfnServerError, match="probabilities"):
        parse_response(outputs, names[:5])


def test_contract_round_trips_through_config_parameters() -> None:
    parameters = {k: {"string_value": v} for k, v in CONTRACT.to_parameters().items()}
    assert ServerContract.from_parameters(parameters) == CONTRACT
    del parameters["class_names"]
    with pytest.raises(ValueError, match="'class_names' is missing"):
        ServerContract.from_parameters(parameters)
    with pytest.raises(ValueError, match="argument 'roi_margin_mm'"):
        ServerContract(-1.0, ("a",), ("b",))


@pytest.mark.parametrize(
    ("kwargs", "argument"),
    [
        ({"protocol": "smtp"}, "protocol"),
        ({"timeout_s": 0}, "timeout_s"),
        ({"url": "ftp://127.0.0.1:8000"}, "url"),
        ({"url": "http://127.0.0.1:8001", "protocol": "grpc"}, "url"),
        ({"contract": {"roi_margin_mm": 1}}, "contract"),
        ({"ca_cert": "/no/such/ca.pem"}, "ca_cert"),
    ],
)
def test_client_refuses_bad_arguments(kwargs: dict, argument: str) -> None:
    with pytest.raises(ValueError, match=f"argument '{argument}'"):
        DmfnClient(**kwargs)


def test_client_takes_the_urls_dmfn_serve_prints() -> None:
    """`dmfn serve` prints http(s)://host:port; the client takes that form (https = TLS)."""
    plain = DmfnClient("http://127.0.0.1:8000/")
    assert (plain.url, plain.tls) == ("127.0.0.1:8000", False)
    secure = DmfnClient("https://127.0.0.1:8000")
    assert (secure.url, secure.tls) == ("127.0.0.1:8000", True)


@pytest.mark.parametrize("protocol", ["http", "grpc"])
def test_unreachable_server_is_a_clear_error(protocol: str) -> None:
    (port,) = free_ports(1)
    with DmfnClient(f"127.0.0.1:{port}", protocol, timeout_s=5) as client:
        assert not client.is_ready()
        with pytest.raises(DmfnServerError):
            client.predict(big_study(np.random.default_rng(4)))


def test_predict_many_isolates_an_unexpected_error_without_losing_a_result() -> None:
    class BrokenStudy(Study):
        def ctc_array(self, features=S.DEFAULT_CTC_FEATURES):
            raise RuntimeError("disk on fire")

    rng = np.random.default_rng(6)
    base = big_study(rng)
    broken = BrokenStudy(hu=base.hu, spacing_mm=SPACING, mask=base.mask, image_id="broken")
    unsendable = big_study(rng, clinical=None)
    (port,) = free_ports(1)
    with DmfnClient(f"127.0.0.1:{port}", timeout_s=5, contract=CONTRACT) as client:
        results = client.predict_many(
            [broken, unsendable, broken], concurrency=2, return_exceptions=True
        )
        assert len(results) == 3 and all(r is not None for r in results)
        for i in (0, 2):
            assert isinstance(results[i], DmfnServerError)
            assert "'broken'" in str(results[i]) and "RuntimeError" in str(results[i])
            assert isinstance(results[i].__cause__, RuntimeError)
        assert isinstance(results[1], ValueError) and "no clinical record" in str(results[1])
        with pytest.raises(DmfnServerError, match="disk on fire"):
            client.predict_many([unsendable, broken][::-1], concurrency=1)


@pytest.mark.parametrize(
    ("arguments", "message"),
    [
        ([], "give IMAGE"),
        (["ct.nii.gz"], "IMAGE needs --mask, --ctc, --age, --sex, --location"),
        (["ct.nii.gz", "--mask", "m.nii.gz", "--ctc", "1", "--age", "50"], "--sex, --location"),
        (["ct.nii.gz", "--manifest", "studies.csv"], "either IMAGE or --manifest"),
        (["--manifest", "absent.csv"], "absent.csv is not a file"),
        (["absent.nii.gz", *"--mask m --ctc 1 --age 50 --sex F --location middle".split()], "does not exist"),
        (["--manifest", "studies.csv", "--concurrency", "0"], "--concurrency must be >= 1"),
    ],
)  # fmt: skip
def test_predict_cli_checks_its_arguments_before_the_server(
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
    arguments: list[str],
    message: str,
) -> None:
    monkeypatch.chdir(tmp_path)
    for name in ("ct.nii.gz", "m.nii.gz", "studies.csv"):
        (tmp_path / name).touch()
    (port,) = free_ports(1)  # nothing listens there: any contact would fail differently
    code = predict_main(["--url", f"127.0.0.1:{port}", *arguments])
    err = capsys.readouterr().err
    assert code == P.EXIT_USAGE, err
    assert "usage: dmfn predict" in err and message in err
    assert "cannot reach" not in err


def test_predict_cli_reports_an_unreachable_server(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    for name in ("ct.nii.gz", "m.nii.gz"):
        (tmp_path / name).touch()
    (port,) = free_ports(1)
    complete = [str(tmp_path / "ct.nii.gz"), "--mask", str(tmp_path / "m.nii.gz"), "--ctc", "1"]
    complete += ["--age", "50", "--sex", "F", "--location", "middle"]
    code = predict_main(["--url", f"127.0.0.1:{port}", "--timeout", "5", *complete])
    assert code == P.EXIT_FAILED
    assert "cannot reach" in capsys.readouterr().err


def test_predict_cli_help_lists_its_options(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as exit_info:
        predict_main(["--help"])
    assert exit_info.value.code == 0
    text = capsys.readouterr().out
    for option in ("--mask", "--segment", "--ctc", "--age", "--sex", "--location", "--manifest"):
        assert option in text
    for option in ("--url", "--protocol", "--json", "--concurrency"):
        assert option in text


def test_format_prediction_shows_top3_malignancy_management_and_units() -> None:
    prediction = Prediction(
        probs={"thymoma": 0.5, "cyst": 0.3, "lymphoma": 0.15, "other": 0.05},
        top3=(("thymoma", 0.5), ("cyst", 0.3), ("lymphoma", 0.15)),
        malignant_prob=0.655,
        management="surgery",
        measurements=dict(
            zip(S.MEASUREMENT_FIELDS, (1234.5, 210.0, 21.0, 12.5, 17.5), strict=True)
        ),
        model_version="dmfn_pipeline/1",
        image_id="IMG-1",
    )
    text = P.format_prediction(prediction, indent="   ")
    lines = text.splitlines()
    assert all(line.startswith("   ") for line in lines)
    assert "IMG-1" in lines[0] and "dmfn_pipeline/1" in lines[0]
    assert "1. thymoma" in lines[1] and "50.0%" in lines[1]
    assert "2. cyst" in lines[2] and "3. lymphoma" in lines[3] and "15.0%" in lines[3]
    assert "malignant probability: 65.5%" in text and "surgery" in text
    assert any("volume_mm3" in line and "1234.5 mm^3" in line for line in lines)
    assert any("max_axial_area_mm2" in line and "210.0 mm^2" in line for line in lines)
    assert any("craniocaudal_mm" in line and "17.5 mm" in line for line in lines)
    assert set(S.MEASUREMENT_UNITS) == set(S.MEASUREMENT_FIELDS)


def test_ctc_values_by_position_or_name() -> None:
    assert P.ctc_values(["12.5"], ["a"], "x") == {"a": 12.5}
    assert P.ctc_values(["b=2", "a=1"], ["a", "b"], "x") == {"a": 1.0, "b": 2.0}
    with pytest.raises(ValueError, match="expects 2 CTC feature"):
        P.ctc_values(["1"], ["a", "b"], "x")
    with pytest.raises(ValueError, match="must be a number"):
        P.ctc_values(["a=high"], ["a"], "x")


# --------------------------------------------------------------------------- slow: real server
def _embedded(crop: Study, rng: np.random.Generator, image_id: str) -> Study:
    """The synthetic crop placed inside a larger volume of other tissue."""
    pad = ((7, 5), (30, 22), (16, 31))
    hu = np.pad(crop.hu, pad)
    noise = rng.integers(-900, 900, size=hu.shape).astype(np.int16)
    inside = np.zeros(hu.shape, bool)
    inside[tuple(slice(a, a + n) for (a, _), n in zip(pad, crop.hu.shape, strict=True))] = True
    hu = np.where(inside, hu, noise).astype(np.int16)
    return dataclasses.replace(
        crop, hu=hu, mask=np.pad(crop.mask, pad), patient_id=PATIENT_ID, image_id=image_id
    )


@pytest.fixture(scope="module")
def served_studies(tiny_checkpoint: Path):
    """Studies larger than their lesion region, and the in-process pipeline run on the WHOLE
    volumes (preprocess_study crops itself, no wire format): equal to the server's answer on
    the client's crop."""
    from serving_utils import make_studies, reference_from_inputs

    from dmfn.preprocess import preprocess_study
    from dmfn.training.checkpoint import load_checkpoint

    rng = np.random.default_rng(5)
    studies = [_embedded(c, rng, f"img{i}") for i, c in enumerate(make_studies(4, seed=33))]
    ckpt = load_checkpoint(tiny_checkpoint)
    whole = [
        preprocess_study(
            s.hu, s.spacing_mm, s.mask, s.ctc_array(), s.clinical_array(),
            params=ckpt.preprocess_params,
        )
        for s in studies
    ]  # fmt: skip
    inputs = [
        np.stack([getattr(p, k) for p in whole]) for k in ("views", "tabular", "measurements")
    ]
    return whole, studies, reference_from_inputs(ckpt, *inputs)


def _assert_prediction(prediction: Prediction, reference: dict, i: int) -> None:
    probs = np.array(list(prediction.probs.values()))
    np.testing.assert_allclose(probs, reference["probs"][i], atol=1e-4, rtol=0)
    top = np.argsort(-reference["probs"][i], kind="stable")[:3]
    assert [label for label, _ in prediction.top3] == list(reference["labels"][top])
    assert prediction.management == reference["management"][i]
    malignant = float(reference["probs"][i][reference["malignant"]].sum())
    assert prediction.malignant_prob == pytest.approx(malignant, abs=1e-5)
    np.testing.assert_allclose(
        list(prediction.measurements.values()), reference["measurements"][i], rtol=1e-5
    )
    assert prediction.model_version == f"{S.PIPELINE_MODEL}/1"


@pytest.mark.slow
@pytest.mark.parametrize("protocol", ["http", "grpc"])
def test_predict_equals_the_in_process_pipeline(triton_server, served_studies, protocol) -> None:
    _, studies, reference = served_studies
    url = triton_server.http_url if protocol == "http" else triton_server.grpc_url
    with DmfnClient(url, protocol, timeout_s=60) as client:
        assert client.is_ready()
        assert client.contract.ctc_features == S.DEFAULT_CTC_FEATURES
        assert len(client.contract.class_names) == len(reference["labels"])
        for i, study in enumerate(studies):
            prediction = client.predict(study)
            assert prediction.image_id == f"img{i}"
            _assert_prediction(prediction, reference, i)


@pytest.mark.slow
@pytest.mark.parametrize("protocol", ["http", "grpc"])
def test_predict_many_keeps_order_and_isolates_a_server_error(
    triton_server, served_studies, protocol
) -> None:
    _, studies, reference = served_studies

    class NanCtcStudy(Study):
        """Sends a NaN CTC value, as a client that skips dmfn's own checks could."""

        def ctc_array(self, features=S.DEFAULT_CTC_FEATURES):
            return np.full(len(features), np.nan, np.float32)

    bad = NanCtcStudy(
        hu=studies[0].hu,
        spacing_mm=studies[0].spacing_mm,
        mask=studies[0].mask,
        ctc=studies[0].ctc,
        clinical=studies[0].clinical,
    )
    batch = [*studies, bad, *studies]
    url = triton_server.http_url if protocol == "http" else triton_server.grpc_url
    with DmfnClient(url, protocol) as checked:
        unchecked = dataclasses.replace(checked.contract, limits=None)  # the server decides
    with DmfnClient(url, protocol, contract=unchecked) as client:
        results = client.predict_many(batch, concurrency=4, return_exceptions=True)
        for i, result in enumerate(results):
            if i == len(studies):
                assert isinstance(result, DmfnServerError)
                assert "CTC" in result.message and "outside the range" in result.message
                assert result.status in ("400", "StatusCode.INVALID_ARGUMENT")
            else:
                _assert_prediction(result, reference, i % (len(studies) + 1))
        with pytest.raises(DmfnServerError, match="CTC"):
            client.predict_many(batch, concurrency=2)


@pytest.mark.slow
def test_predict_cli_on_nifti_files_and_a_manifest(
    triton_server, served_studies, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    from dmfn.client.io import write_nifti_mask, write_nifti_volume

    _, studies, reference = served_studies
    rows = ["image_id,image_path,mask_path,ctc_level_pg_ml,age_years,sex,location,label"]
    for i, study in enumerate(studies[:2]):
        write_nifti_volume(study.hu, study.spacing_mm, tmp_path / f"ct{i}.nii.gz")
        write_nifti_mask(study.mask, study.spacing_mm, tmp_path / f"mask{i}.nii.gz")
        c = study.clinical
        rows.append(
            f"s{i},ct{i}.nii.gz,mask{i}.nii.gz,{study.ctc['ctc_level_pg_ml']!r},"
            f"{c.age_years!r},{c.sex},{c.location},unknown"
        )
    (tmp_path / "studies.csv").write_text("\n".join(rows) + "\n")
    url = ["--url", triton_server.http_url]
    c = studies[0].clinical
    single = [
        str(tmp_path / "ct0.nii.gz"),
        "--mask", str(tmp_path / "mask0.nii.gz"),
        "--ctc", repr(studies[0].ctc["ctc_level_pg_ml"]),
        "--age", repr(c.age_years), "--sex", c.sex, "--location", c.location,
    ]  # fmt: skip
    assert predict_main([*url, *single]) == P.EXIT_OK
    text = capsys.readouterr().out
    top = np.argsort(-reference["probs"][0], kind="stable")[:3]
    assert "1. " + reference["labels"][top[0]] in text
    assert "malignant probability" in text and "volume_mm3" in text
    assert predict_main([*url, "--protocol", "http", "--json", *single]) == P.EXIT_OK
    (document,) = json.loads(capsys.readouterr().out)  # a list for one study as for many
    np.testing.assert_allclose(
        list(document["probs"].values()), reference["probs"][0], atol=1e-4, rtol=0
    )
    assert document["top3"][0]["label"] == reference["labels"][top[0]]
    manifest = ["--manifest", str(tmp_path / "studies.csv"), "--concurrency", "2"]
    code = predict_main(
        ["--url", triton_server.grpc_url, "--protocol", "grpc", "--json", *manifest]
    )
    assert code == P.EXIT_OK
    document = json.loads(capsys.readouterr().out)
    assert [d["image_id"] for d in document] == ["s0", "s1"]
    for i, entry in enumerate(document):
        np.testing.assert_allclose(
            list(entry["probs"].values()), reference["probs"][i], atol=1e-4, rtol=0
        )


@pytest.mark.slow
def test_float_nifti_trains_on_the_bytes_it_is_served_with(
    triton_server, tiny_checkpoint, tmp_path
):
    """A NIfTI with non-integer HU: the training path (manifest row -> the client's request ->
    the server's preprocessing, in-process) and the served prediction agree within 1e-5."""
    import torch
    from serving_utils import make_studies

    from dmfn.client.io import write_nifti_mask, write_nifti_volume
    from dmfn.client.manifest import load_row_study, read_manifest
    from dmfn.training.checkpoint import load_checkpoint
    from dmfn.training.dataset import preprocess_row

    crop = _embedded(make_studies(1, seed=44)[0], np.random.default_rng(9), "float")
    hu = crop.hu.astype(np.float32) + np.random.default_rng(1).uniform(-0.49, 0.49, crop.hu.shape)
    write_nifti_volume(hu.astype(np.float32), crop.spacing_mm, tmp_path / "ct.nii.gz")
    write_nifti_mask(crop.mask, crop.spacing_mm, tmp_path / "mask.nii.gz")
    c = crop.clinical
    (tmp_path / "m.csv").write_text(
        "patient_id,image_id,image_path,mask_path,ctc_level_pg_ml,age_years,sex,location,label,"
        f"group,split\np1,i1,ct.nii.gz,mask.nii.gz,{crop.ctc['ctc_level_pg_ml']!r},"
        f"{c.age_years!r},{c.sex},{c.location},cyst,benign,train\n"
    )
    ckpt = load_checkpoint(tiny_checkpoint)
    (row,) = read_manifest(tmp_path / "m.csv", ckpt.taxonomy, ckpt.ctc_features).rows
    arrays = preprocess_row(row, ckpt.preprocess_params, ckpt.ctc_features)
    with torch.no_grad():
        logits = ckpt.build_model()(
            torch.from_numpy(arrays["views"][None]), torch.from_numpy(arrays["tabular"][None])
        )
    # the served probabilities carry the checkpoint's calibration temperature
    trained_on = torch.softmax(logits.double() / ckpt.temperature, dim=1)[0].numpy()
    with DmfnClient(triton_server.http_url) as client:
        served = client.predict(load_row_study(row, ckpt.ctc_features))
    np.testing.assert_allclose(list(served.probs.values()), trained_on, atol=1e-5, rtol=0)


@pytest.mark.slow
def test_predict_in_process_and_through_the_server_write_the_same_csv(
    triton_server, tiny_checkpoint, served_studies, tmp_path
) -> None:
    """`dmfn predict --checkpoint` (no server) and `--url` write the same predictions CSV, within
    1e-5 on every number, for synthetic crops and a float NIfTI written by another tool."""
    from dmfn.client.io import write_nifti_mask, write_nifti_volume
    from dmfn.contract.predictions import read_predictions

    _, studies, _ = served_studies
    rows = ["patient_id,image_id,image_path,mask_path,ctc_level_pg_ml,age_years,sex,location,"
            "label,split"]  # fmt: skip
    rng = np.random.default_rng(4)
    for i, study in enumerate(studies[:3]):
        hu = study.hu.astype(np.float32)
        if i == 2:  # non-integer HU, as another tool may write them
            hu += rng.uniform(-0.49, 0.49, hu.shape).astype(np.float32)
        write_nifti_volume(hu, study.spacing_mm, tmp_path / f"ct{i}.nii.gz")
        write_nifti_mask(study.mask, study.spacing_mm, tmp_path / f"mask{i}.nii.gz")
        facts = studies[0] if i == 1 else study  # images 0 and 1: one patient
        c = facts.clinical
        rows.append(
            f"p{i // 2},s{i},ct{i}.nii.gz,mask{i}.nii.gz,{facts.ctc['ctc_level_pg_ml']!r},"
            f"{c.age_years!r},{c.sex},{c.location},cyst,test"
        )
    (tmp_path / "studies.csv").write_text("\n".join(rows) + "\n")
    manifest = ["--manifest", str(tmp_path / "studies.csv")]
    local, served = tmp_path / "local.csv", tmp_path / "served.csv"
    assert predict_main([*manifest, "--checkpoint", str(tiny_checkpoint), "--out", str(local)]) == 0
    assert predict_main([*manifest, "--url", triton_server.http_url, "--out", str(served)]) == 0
    a, b = read_predictions(local), read_predictions(served)
    assert [r.level for r in a.rows] == ["image"] * 3 + ["patient"] * 2
    assert [(r.patient_id, r.image_id, r.split, r.label) for r in a.rows] == [
        (r.patient_id, r.image_id, r.split, r.label) for r in b.rows
    ]
    for ra, rb in zip(a.rows, b.rows, strict=True):
        np.testing.assert_allclose(ra.probs, rb.probs, atol=1e-5, rtol=0)
        assert ra.malignant_prob == pytest.approx(rb.malignant_prob, abs=1e-5)
    assert a.provenance == b.provenance and a.provenance.sha256
    text = local.read_text().splitlines()
    assert text[0].startswith("level,patient_id,image_id,split,label,prob_cyst")
    assert "predicted" in text[0] and "model_sha256" in text[0]


@pytest.mark.slow
@pytest.mark.parametrize("protocol", ["http", "grpc"])
def test_async_client_gives_the_same_predictions(
    triton_server, served_studies, protocol, tmp_path
) -> None:
    import asyncio
    import json

    from dmfn.client.aio import AsyncDmfnClient
    from dmfn.contract.audit import AuditLog

    _, studies, reference = served_studies
    url = triton_server.http_url if protocol == "http" else triton_server.grpc_url
    audit = AuditLog(tmp_path / "audit.jsonl")

    async def run() -> None:
        async with AsyncDmfnClient(url, protocol, timeout_s=60, audit=audit) as client:
            assert await client.is_ready()
            contract = await client.contract()
            assert contract.ctc_features == S.DEFAULT_CTC_FEATURES
            for i, study in enumerate(studies):
                _assert_prediction(await client.predict(study), reference, i)
            batch = [*studies, *studies]
            many = await client.predict_many(batch, concurrency=3)
            for i, prediction in enumerate(many):
                _assert_prediction(prediction, reference, i % len(studies))
            no_mask = dataclasses.replace(studies[0], mask=None, bbox=None)
            (refused,) = await client.predict_many([no_mask], return_exceptions=True)
            assert isinstance(refused, ValueError)
        async with AsyncDmfnClient("127.0.0.1:9", protocol, timeout_s=2, audit=audit) as nowhere:
            assert not await nowhere.is_ready()
            with pytest.raises(DmfnServerError):
                await nowhere.predict(studies[0])

    asyncio.run(run())
    # the async client's audit trail: one line per study, whatever became of it
    lines = [json.loads(line) for line in (tmp_path / "audit.jsonl").read_text().splitlines()]
    outcomes = [line["outcome"] for line in lines]
    assert outcomes == ["ok"] * (3 * len(studies)) + ["refused", "failed"]
    assert all(line["source"] == "sdk" and len(line["request_id"]) == 32 for line in lines)


@pytest.mark.slow
def test_the_wrong_protocol_for_a_port_says_which_to_use(triton_server) -> None:
    """HTTP sent to the gRPC port gets a hint to use gRPC, not a raw HTTP parser error."""
    with DmfnClient(triton_server.grpc_url, "http", timeout_s=10) as client:
        with pytest.raises(DmfnServerError, match=r"does not answer HTTP .*use protocol 'grpc'"):
            client.contract  # noqa: B018 (the property reads the model config)
