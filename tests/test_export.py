"""`dmfn export`: ONNX file properties, the ONNX Runtime vs PyTorch parity check on preprocessed
studies (and that a failing check writes nothing), the TensorRT refusal and the CLI."""

from __future__ import annotations

import argparse
import dataclasses
import json
import shutil
from pathlib import Path

import numpy as np
import onnx
import pytest
import torch
from google.protobuf import text_format
from serving_utils import inputs_of, make_studies, make_tiny_checkpoint
from torch import nn
from tritonclient.grpc import model_config_pb2 as mc

from dmfn.contract import schema as S
from dmfn.contract.limits import InputLimits
from dmfn.contract.server import ServerContract
from dmfn.serving.config import ServingSettings
from dmfn.serving.repository import MANIFEST_FILE, check_repository
from dmfn.training import export as E
from dmfn.training import export_cli
from dmfn.training.models import register_backbone, unregister_backbone


def test_export_writes_a_checked_repository(exported_repository: tuple[Path, dict]) -> None:
    repo, parity = exported_repository
    assert check_repository(repo) == []
    assert 0.0 <= parity["onnxruntime_vs_torch_max_abs_logit"] <= 1e-4
    card = (repo / "MODEL_CARD.md").read_text()
    assert "SYNTHETIC" in card
    assert "onnxruntime_vs_torch_max_abs_logit" in card


def test_onnx_file_has_schema_names_dynamic_batch_and_inline_weights(
    exported_repository: tuple[Path, dict],
) -> None:
    repo, _ = exported_repository
    path = repo / "dmfn" / "1" / "model.onnx"
    model = onnx.load(str(path), load_external_data=False)
    assert max(o.version for o in model.opset_import if o.domain in ("", "ai.onnx")) >= 17
    assert [i.name for i in model.graph.input] == [S.VIEWS, S.TABULAR]
    assert [o.name for o in model.graph.output] == [S.LOGITS]
    for value in [*model.graph.input, *model.graph.output]:
        batch = value.type.tensor_type.shape.dim[0]
        assert batch.dim_param and not batch.HasField("dim_value"), value.name
    assert all(t.data_location != onnx.TensorProto.EXTERNAL for t in model.graph.initializer)
    # no external .onnx.data file (__pycache__ appears once a server has imported model.py)
    files = sorted(p.name for p in path.parent.iterdir() if p.name != "__pycache__")
    assert files == ["model.onnx", "model.py"]


def _config_parameters(repo: Path, model: str) -> dict[str, str]:
    config = text_format.Parse((repo / model / "config.pbtxt").read_text(), mc.ModelConfig())
    return {k: v.string_value for k, v in config.parameters.items()}


def _widened(observed: tuple[tuple[float, float], ...]) -> list[list[float]]:
    """The documented rule (`dmfn export --ctc-range`'s help, contract.limits.widen_range):
    the training range plus half its width on each side, not below 0. Written out here, so a
    change of the rule or of its use must change this test too."""
    out = []
    for lo, hi in observed:
        assert hi > lo, "the rule applies to a range of positive width"
        half = (hi - lo) / 2
        out.append([max(0.0, lo - half), hi + half])
    return out


def test_exported_ctc_limits_are_the_training_range_widened(
    tiny_checkpoint: Path, exported_repository: tuple[Path, dict]
) -> None:
    """The CTC range the served model accepts is the checkpoint's observed range widened, in
    the manifest, in preprocess's config (where it is enforced) and in the contract the
    ensemble publishes to clients."""
    repo, _ = exported_repository
    observed = E.load_checkpoint(tiny_checkpoint).ctc_observed_range
    expected = _widened(observed)
    assert expected != [list(r) for r in observed]
    manifest = json.loads((repo / MANIFEST_FILE).read_text())
    enforced = InputLimits.from_json(_config_parameters(repo, S.PREPROCESS_MODEL)["input_limits"])
    published = ServerContract.from_parameters(_config_parameters(repo, S.PIPELINE_MODEL)).limits
    for ranges in (manifest["input_limits"]["ctc_ranges"], enforced.ctc_ranges,
                   published.ctc_ranges):  # fmt: skip
        assert len(ranges) == len(expected)
        for got, want in zip(ranges, expected, strict=True):
            assert list(got) == pytest.approx(want, rel=1e-12, abs=0)


def test_input_limits_widen_a_range_the_floor_does_not_reach(tiny_checkpoint: Path) -> None:
    """Both sides grow by half the width when the low side stays above 0 (the tiny
    checkpoint's own range reaches the floor)."""
    observed = ((20.0, 30.0),)
    ckpt = dataclasses.replace(E.load_checkpoint(tiny_checkpoint), ctc_observed_range=observed)
    limits = E.input_limits(ckpt)
    assert _widened(observed) == [[15.0, 35.0]]
    assert [list(r) for r in limits.ctc_ranges] == [[15.0, 35.0]]
    # a range given with --ctc-range is used as given
    assert E.input_limits(ckpt, ctc_range=[(20.0, 30.0)]).ctc_ranges == ((20.0, 30.0),)


def test_exported_postprocess_carries_the_checkpoint_temperature(
    tiny_checkpoint: Path, exported_repository: tuple[Path, dict]
) -> None:
    """The calibration temperature reaches postprocess's config and the manifest. (The parity
    check compares logits, which T does not touch: T is applied in postprocess, see
    test_repository's postprocess test and the served parity tests.)"""
    repo, _ = exported_repository
    temperature = E.load_checkpoint(tiny_checkpoint).temperature
    assert temperature != 1.0  # else a lost temperature would go unnoticed
    params = _config_parameters(repo, S.POSTPROCESS_MODEL)
    assert float(params["temperature"]) == temperature
    assert json.loads((repo / MANIFEST_FILE).read_text())["temperature"] == temperature


def test_parity_holds_at_other_batch_sizes(
    tiny_checkpoint: Path, exported_repository: tuple[Path, dict]
) -> None:
    repo, _ = exported_repository
    model = E.load_checkpoint(tiny_checkpoint).build_model()
    views, tabular, _ = inputs_of(make_studies(5, seed=11))
    diff = E.check_parity(model, repo / "dmfn" / "1" / "model.onnx", views, tabular, 1e-4)
    assert diff <= 1e-4


class _SkewedOnExport(nn.Module):
    """A backbone whose exported graph differs from eager PyTorch (simulates an exporter bug)."""

    num_features = 4

    def __init__(self, **overrides: object) -> None:
        super().__init__()
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.proj = nn.Linear(3, self.num_features)

    def forward(self, views: torch.Tensor) -> torch.Tensor:
        out = self.proj(self.pool(views).flatten(1))
        return out + 10.0 if torch.onnx.is_in_onnx_export() else out


@pytest.fixture
def skewed_backbone():
    name = "test_export_skewed"
    register_backbone(name, family="test")(_SkewedOnExport)
    yield name
    unregister_backbone(name)


def test_failed_parity_writes_nothing(tmp_path: Path, skewed_backbone: str) -> None:
    checkpoint = make_tiny_checkpoint(tmp_path / "skewed.pt", backbone=skewed_backbone, steps=1)
    out = tmp_path / "repo"
    with pytest.raises(E.ExportError, match="ONNX Runtime differs from PyTorch"):
        E.export(checkpoint, out, ServingSettings(), parity_studies=3)
    assert not out.exists()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["skewed.pt"]
    assert export_cli.main(["--checkpoint", str(checkpoint), "--out", str(out)]) == 1
    assert not out.exists()


@pytest.mark.skipif(
    E.tensorrt_unavailable_reason() is None, reason="TensorRT and a GPU are present here"
)
def test_tensorrt_target_refuses_without_tensorrt_or_gpu(
    tiny_checkpoint: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    out = tmp_path / "trt"
    with pytest.raises(E.ExportError, match="cannot build a TensorRT engine here"):
        E.export(tiny_checkpoint, out, ServingSettings(target="tensorrt"))
    code = export_cli.main(
        ["--checkpoint", str(tiny_checkpoint), "--target", "tensorrt", "--out", str(out)]
    )
    assert code == 1
    assert "TensorRT" in capsys.readouterr().err
    assert not out.exists()


@pytest.mark.gpu
@pytest.mark.skipif(
    E.tensorrt_unavailable_reason() is not None,
    reason=f"needs TensorRT + GPU: {E.tensorrt_unavailable_reason()}",
)
def test_tensorrt_engine_matches_onnxruntime(tiny_checkpoint: Path, tmp_path: Path) -> None:
    parity = E.export(tiny_checkpoint, tmp_path / "trt", ServingSettings(target="tensorrt"))
    assert parity["tensorrt_fp16_vs_onnxruntime_max_abs_logit"] <= E.DEFAULT_TRT_TOLERANCE
    assert (tmp_path / "trt" / "dmfn" / "1" / "model.plan").is_file()


def test_cli_help_explains_every_option(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as exit_info:
        export_cli.main(["--help"])
    assert exit_info.value.code == 0
    text = capsys.readouterr().out
    for action in export_cli.build_parser()._actions:
        if action.help == argparse.SUPPRESS:  # a renamed flag's old spelling, hidden
            continue
        for option in action.option_strings:
            assert option in text
        assert action.help, action.dest


def test_cli_user_mistakes_are_messages_not_tracebacks(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    missing = tmp_path / "missing.pt"
    assert export_cli.main(["--checkpoint", str(missing), "--out", str(tmp_path / "r")]) == 2
    assert f"--checkpoint: file {missing} does not exist" in capsys.readouterr().err
    args = ["--checkpoint", str(missing), "--max-batch-size", "4", "--request-max-batch-size", "8"]
    assert export_cli.main(args) == 2
    assert "--max-batch-size: must be >= pipeline_max_batch_size" in capsys.readouterr().err


def test_synthetic_crop_is_a_valid_study() -> None:
    from dmfn.synth.crops import synthetic_crops

    (study,) = synthetic_crops(1, seed=3, ctc_features=("a", "b"))
    assert study.hu.dtype == np.int16 and study.hu.ndim == 3
    assert study.mask.shape == study.hu.shape and study.mask.any()
    assert study.ctc_array(("a", "b")).shape == (2,)
    assert study.clinical_array().shape == (len(S.CLINICAL_FIELDS),)


def test_cli_errors_speak_in_flags_and_come_before_any_work(
    tiny_checkpoint: Path,
    exported_repository: tuple[Path, dict],
    tmp_path: Path,
    capsys,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    run = tmp_path / "run"
    (run / "seed_0").mkdir(parents=True)
    shutil.copy(tiny_checkpoint, run / "seed_0" / "best.pt")
    assert export_cli.main(["--checkpoint", str(run), "--out", str(tmp_path / "r")]) == 2
    err = capsys.readouterr().err
    assert f"--checkpoint: {run} is a folder" in err and "seed_0/best.pt" in err
    # an existing repository is refused at once (no ONNX export, no parity check first)
    repo = exported_repository[0]

    def no_export(*args, **kwargs):
        raise AssertionError("the ONNX export ran before --out was checked")

    monkeypatch.setattr(E, "export_onnx", no_export)
    assert export_cli.main(["--checkpoint", str(tiny_checkpoint), "--out", str(repo)]) == 2
    err = capsys.readouterr().err
    assert f"--out: {repo} holds a model repository; pass --overwrite to replace it" in err
    assert "overwrite=True" not in err
