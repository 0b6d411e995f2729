"""Backbone registry, backbones, the three model kinds and their ONNX export.

Backbone tests are generated from the registry: every registered backbone gets forward-shape and
backward tests; every backbone with a published parameter count is checked against it.
"""

from __future__ import annotations

import io
import json
import warnings

import numpy as np
import pytest
import torch
from torch import nn

from dmfn.training.models import (
    FUSION_KINDS,
    MODEL_KINDS,
    create_backbone,
    create_model,
    fit_standardisation,
    get_backbone_info,
    list_backbones,
    register_backbone,
    unregister_backbone,
)
from dmfn.training.models.regnet import REGNET_CFGS
from dmfn.training.models.selfreg import SELFREG_CFGS, ConvGRUCell, ConvLSTMCell

torch.set_num_threads(2)

N_CLASSES = 20
N_TABULAR = 6  # 1 CTC feature + 5 clinical fields
MEAN = [12.0, 55.0, 0.5, 0.4, 0.3, 0.3]
STD = [5.0, 12.0, 0.5, 0.49, 0.46, 0.46]
TINY = "regnety_tiny"
BACKBONES = list_backbones()


def _n_params(module: nn.Module) -> int:
    return sum(p.numel() for p in module.parameters())


def _with_imagenet_head(backbone: nn.Module) -> int:
    """Parameters of the backbone plus a 1000-class linear classifier (the published setting)."""
    return _n_params(backbone) + _n_params(nn.Linear(backbone.num_features, 1000))


def _inputs(batch: int, size: int, seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    views = torch.rand(batch, 3, size, size, generator=g)
    tabular = torch.tensor(MEAN) + torch.randn(batch, N_TABULAR, generator=g) * torch.tensor(STD)
    return views, tabular


def _model(kind: str, backbone: str = TINY, **kwargs: object) -> nn.Module:
    return create_model(
        kind,
        backbone=backbone,
        n_classes=N_CLASSES,
        n_tabular=N_TABULAR,
        tabular_mean=MEAN,
        tabular_std=STD,
        embed_dim=16,
        **kwargs,
    )


# --- registry ---------------------------------------------------------------------------------


def test_registry_holds_the_required_backbones() -> None:
    required = {f"regnet{t}_{f}mf" for t in "xy" for f in (200, 400, 800)}
    required |= {f"selfreg_resnet{d}_{r}" for d in (18, 50) for r in ("gru", "lstm")}
    required |= {"regnetx_tiny"}
    assert required <= set(BACKBONES)
    assert BACKBONES == sorted(BACKBONES)
    assert set(list_backbones("regnet")) | set(list_backbones("selfreg")) == set(BACKBONES)


def test_duplicate_registration_raises() -> None:
    name = "test_only_dup_backbone"

    @register_backbone(name, family="test")
    def first(**overrides: object) -> nn.Module:
        return create_backbone(TINY, **overrides)

    try:
        assert name in list_backbones()
        with pytest.raises(ValueError, match="already registered"):

            @register_backbone(name, family="test")
            def second(**overrides: object) -> nn.Module:  # pragma: no cover - never registered
                return create_backbone(TINY, **overrides)

        assert get_backbone_info(name).factory is first
    finally:
        unregister_backbone(name)
    assert name not in list_backbones()


def test_unknown_backbone_lists_known_names() -> None:
    with pytest.raises(ValueError, match=r"unknown backbone 'resnet9000'.*regnety_400mf"):
        create_backbone("resnet9000")
    with pytest.raises(ValueError, match=r"'backbone'.*regnetx_tiny"):
        _model("dmfn", backbone="nope")


def test_unknown_override_lists_fields() -> None:
    with pytest.raises(ValueError, match=r"unknown field.*'colour'.*group_w"):
        create_backbone(TINY, colour="red")
    with pytest.raises(ValueError, match="'regulator'"):
        create_backbone("selfreg_tiny_gru", regulator="transformer")
    with pytest.raises(ValueError, match="'wm'"):
        create_backbone("regnetx_tiny", wm=1.0)


# --- every registered backbone ----------------------------------------------------------------


#: Backbones of > 20M parameters: their forward/backward tests take seconds each on 2 CPU cores.
HEAVY = {n for n in BACKBONES if n.startswith(("selfreg_resnet34", "selfreg_resnet50"))}


@pytest.mark.parametrize("size", [64, 128])
@pytest.mark.parametrize(
    "name", [pytest.param(n, marks=pytest.mark.slow) if n in HEAVY else n for n in BACKBONES]
)
def test_backbone_forward_backward(name: str, size: int) -> None:
    torch.manual_seed(0)
    net = create_backbone(name)
    x = torch.rand(2, 3, size, size)
    y = net(x)
    assert y.shape == (2, net.num_features)
    assert y.dtype == torch.float32 and bool(torch.isfinite(y).all())
    y.square().mean().backward()
    grads = [p.grad for p in net.parameters()]
    assert all(g is not None and bool(torch.isfinite(g).all()) for g in grads)
    assert any(float(g.abs().sum()) > 0 for g in grads)


PUBLISHED = [n for n in BACKBONES if get_backbone_info(n).published_params_m is not None]


@pytest.mark.parametrize("name", PUBLISHED)
def test_backbone_params_match_published(name: str) -> None:
    published = get_backbone_info(name).published_params_m * 1e6
    assert _with_imagenet_head(create_backbone(name)) == pytest.approx(published, rel=0.03)


def test_published_set_covers_regnet_xy() -> None:
    assert {n for n in REGNET_CFGS if "tiny" not in n} == set(PUBLISHED)


@pytest.mark.parametrize(
    ("name", "stages"),
    [
        ("regnetx_200mf", [(24, 1, 8), (56, 1, 8), (152, 4, 8), (368, 7, 8)]),
        ("regnety_400mf", [(48, 1, 8), (104, 3, 8), (208, 6, 8), (440, 6, 8)]),
        ("regnety_800mf", [(64, 1, 16), (128, 3, 16), (320, 8, 16), (768, 2, 16)]),
    ],
)
def test_regnet_stage_widths_match_pycls(name: str, stages: list[tuple[int, int, int]]) -> None:
    # (width, depth, group width) per stage, as printed by pycls / torchvision for these models.
    assert REGNET_CFGS[name].stages() == stages


# torchvision / He et al. 2016 parameter counts of the plain ResNets (1000-class head).
RESNET_PARAMS = {"resnet18": 11_689_512, "resnet34": 21_797_672, "resnet50": 25_557_032}


def _regulator_params(cfg_name: str) -> int:
    """Parameters the regulator adds, counted from the design (independently of the modules)."""
    cfg = SELFREG_CFGS[cfg_name]
    total = 0
    for n, depth in zip(cfg.widths, cfg.depths, strict=True):
        if cfg.regulator == "gru":  # gates: 2N->2N (1x1, N groups) + 2N->2N (3x3); candidate N
            cell = (2 * 2 * n + 2 * n) + (2 * 2 * 9 * n + 2 * n) + (2 * n + n) + (9 * n + n)
        else:  # lstm: 2N->4N (1x1, N groups) + 4N->4N (3x3, N groups)
            cell = (4 * 2 * n + 4 * n) + (4 * 4 * 9 * n + 4 * n)
        per_block = 2 * n + (2 * n * n + 2 * n)  # BN on H, 1x1 fuse conv 2N->N + BN
        total += cell + depth * per_block
    return total


@pytest.mark.parametrize("name", [n for n in SELFREG_CFGS if "tiny" not in n])
def test_selfreg_params(name: str) -> None:
    depth = name.split("_")[1]
    plain = create_backbone(name, regulator="none")
    assert _with_imagenet_head(plain) == RESNET_PARAMS[depth]
    regulated = create_backbone(name)
    assert _with_imagenet_head(regulated) == RESNET_PARAMS[depth] + _regulator_params(name)


@pytest.mark.parametrize("cell_type", [ConvGRUCell, ConvLSTMCell])
def test_regulator_state_runs_across_blocks(cell_type: type[nn.Module]) -> None:
    torch.manual_seed(0)
    name = "selfreg_tiny_gru" if cell_type is ConvGRUCell else "selfreg_tiny_lstm"
    net = create_backbone(name).eval()
    stage = net.stages[0]
    assert isinstance(stage.cell, cell_type) and len(stage.blocks) == 2
    states = []
    for block in stage.blocks:  # record the state each block hands on
        original = block.forward

        def spy(x, cell, state, _original=original):
            out, new_state = _original(x, cell, state)
            states.append(new_state)
            return out, new_state

        block.forward = spy
    net(torch.rand(1, 3, 32, 32))
    assert len(states) == 2 and len(states[0]) == cell_type.n_state
    assert not torch.equal(states[0][0], states[1][0])  # the second block advanced the state
    # the output depends on the cell weights (it feeds the blocks)
    y = net(torch.rand(1, 3, 32, 32)).sum()
    y.backward()
    assert all(float(p.grad.abs().sum()) > 0 for p in stage.cell.parameters())


# --- model kinds ----------------------------------------------------------------------------------


@pytest.mark.parametrize("kind", MODEL_KINDS)
def test_model_output_shape_and_config_rebuild(kind: str) -> None:
    torch.manual_seed(0)
    model = _model(kind).eval()
    views, tabular = _inputs(3, 64)
    logits = model(views, tabular)
    assert logits.shape == (3, N_CLASSES) and logits.dtype == torch.float32
    config = json.loads(json.dumps(model.config))
    assert config["kind"] == kind and config["n_classes"] == N_CLASSES
    rebuilt = create_model(**config).eval()
    rebuilt.load_state_dict(model.state_dict())
    torch.testing.assert_close(rebuilt(views, tabular), logits)


@pytest.mark.parametrize("kind", ["dmfn", "tabular"])
def test_standardisation_buffers_in_state_dict(kind: str) -> None:
    state = _model(kind).state_dict()
    mean = [v for k, v in state.items() if k.endswith("standardise.mean")]
    std = [v for k, v in state.items() if k.endswith("standardise.std")]
    assert len(mean) == len(std) == 1
    torch.testing.assert_close(mean[0], torch.tensor(MEAN))
    torch.testing.assert_close(std[0], torch.tensor(STD))


def test_cnn_ignores_tabular_and_tabular_ignores_views() -> None:
    torch.manual_seed(0)
    views, tabular = _inputs(2, 64)
    views2, tabular2 = _inputs(2, 64, seed=1)
    cnn = _model("cnn").eval()
    torch.testing.assert_close(cnn(views, tabular), cnn(views, tabular2))
    tab = _model("tabular").eval()
    torch.testing.assert_close(tab(views, tabular), tab(views2, tabular))
    dmfn = _model("dmfn").eval()
    assert not torch.allclose(dmfn(views, tabular), dmfn(views, tabular2))
    assert not torch.allclose(dmfn(views, tabular), dmfn(views2, tabular))
    # NaN in an ignored input does not leak into the logits
    assert bool(torch.isfinite(cnn(views, torch.full_like(tabular, float("nan")))).all())


def test_model_backbone_overrides_travel_in_config() -> None:
    model = _model("cnn", backbone="selfreg_tiny_gru", regulator="lstm")
    assert model.config["regulator"] == "lstm"
    assert isinstance(model.ct.backbone.stages[0].cell, ConvLSTMCell)


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        ({"kind": "fusion"}, "unknown model kind 'fusion'.*dmfn, cnn, tabular"),
        ({"n_classes": 1}, "'n_classes'"),
        ({"n_tabular": 0}, "'n_tabular'"),
        ({"dropout": 1.0}, "'dropout'"),
        ({"tabular_mean": None}, "'tabular_mean': required"),
        ({"tabular_std": [1.0] * (N_TABULAR - 1)}, "'tabular_std'.*length 6"),
        ({"tabular_std": [0.0] * N_TABULAR}, "'tabular_std'.*> 0"),
        ({"tabular_mean": [float("nan")] * N_TABULAR}, "'tabular_mean'.*finite"),
    ],
)
def test_create_model_rejects(kwargs: dict[str, object], match: str) -> None:
    args: dict[str, object] = {
        "kind": "dmfn",
        "backbone": TINY,
        "n_classes": N_CLASSES,
        "n_tabular": N_TABULAR,
        "tabular_mean": MEAN,
        "tabular_std": STD,
    }
    args.update(kwargs)
    with pytest.raises(ValueError, match=match):
        create_model(**args)


# --- dmfn fusion options ---------------------------------------------------------------------------

#: Every fusion of the registry, with and without auxiliary unimodal heads.
FUSIONS = [(fusion, aux) for fusion in FUSION_KINDS for aux in (False, True)]


def _warm_batch_norm(model: nn.Module) -> None:
    """Non-trivial BatchNorm running statistics (train-mode forwards) before ``eval()``."""
    with torch.no_grad():
        for seed in range(3):
            model(*_inputs(4, 64, seed=10 + seed))


@pytest.mark.parametrize(("fusion", "aux_heads"), FUSIONS)
def test_dmfn_fusion_forward_backward_and_config(fusion: str, aux_heads: bool) -> None:
    torch.manual_seed(0)
    model = _model("dmfn", fusion=fusion, aux_heads=aux_heads)
    views, tabular = _inputs(3, 64)
    logits, aux = model.forward_with_aux(views, tabular)
    assert logits.shape == (3, N_CLASSES) and logits.dtype == torch.float32
    has_aux = fusion != "concat" or aux_heads
    assert model.has_aux is has_aux and len(aux) == (2 if has_aux else 0)
    assert all(a.shape == (3, N_CLASSES) for a in aux)
    (logits.square().mean() + sum(a.square().mean() for a in aux)).backward()
    for name, param in model.named_parameters():  # every head and branch is trained
        assert param.grad is not None and bool(torch.isfinite(param.grad).all()), name
    for child in ("ct", "tabular", "head", "ct_head", "tab_head"):
        module = getattr(model, child)
        assert (module is not None) is (
            child in ("ct", "tabular")
            or (child == "head" and fusion in ("concat", "hybrid"))
            or (child != "head" and has_aux)
        ), child
        if module is not None:
            assert any(float(p.grad.abs().sum()) > 0 for p in module.parameters()), child
    assert (model.fusion_bias is None) is (fusion == "concat")
    if model.fusion_bias is not None:
        assert float(model.fusion_bias.grad.abs().sum()) > 0
    assert (model.expert_weights is None) is (fusion != "experts")
    model.eval()
    with torch.no_grad():
        expected = model(views, tabular)
        torch.testing.assert_close(model.forward_with_aux(views, tabular)[0], expected)
    config = json.loads(json.dumps(model.config))
    assert (config["fusion"], config["aux_heads"]) == (fusion, aux_heads)
    rebuilt = create_model(**config).eval()
    rebuilt.load_state_dict(model.state_dict())
    with torch.no_grad():
        torch.testing.assert_close(rebuilt(views, tabular), expected)


@pytest.mark.parametrize("fusion", ["sum", "hybrid"])
def test_sum_fusion_is_a_product_of_experts(fusion: str) -> None:
    torch.manual_seed(0)
    model = _model("dmfn", fusion=fusion)
    _warm_batch_norm(model)
    model.eval()
    views, tabular = _inputs(3, 64)
    with torch.no_grad():
        model.fusion_bias.copy_(torch.randn(N_CLASSES))
        ct_emb, tab_emb = model.ct(views), model.tabular(tabular)
        ct_logits, tab_logits = model.ct_head(ct_emb), model.tab_head(tab_emb)
        expected = ct_logits + tab_logits + model.fusion_bias
        if fusion == "hybrid":
            expected = expected + model.head(torch.cat((ct_emb, tab_emb), dim=1))
        got = model(views, tabular)
    torch.testing.assert_close(got, expected)
    if fusion == "sum":  # softmax(a + b + c): the normalised product softmax(a) softmax(b) e^c
        product = torch.softmax(ct_logits, 1) * torch.softmax(tab_logits, 1)
        product = product * model.fusion_bias.detach().exp()
        torch.testing.assert_close(torch.softmax(got, 1), product / product.sum(1, keepdim=True))


def test_aux_heads_never_change_inference() -> None:
    torch.manual_seed(0)
    plain = _model("dmfn").eval()
    torch.manual_seed(0)
    with_aux = _model("dmfn", aux_heads=True).eval()
    extra = set(with_aux.state_dict()) - set(plain.state_dict())
    assert extra and all(k.startswith(("ct_head.", "tab_head.")) for k in extra)
    assert set(plain.state_dict()) < set(with_aux.state_dict())
    plain.load_state_dict({k: v for k, v in with_aux.state_dict().items() if k not in extra})
    views, tabular = _inputs(3, 64)
    with torch.no_grad():
        expected = plain(views, tabular)
        torch.testing.assert_close(with_aux(views, tabular), expected)
        for name in ("ct_head", "tab_head"):  # NaN weights in the unused heads: no effect
            for param in getattr(with_aux, name).parameters():
                param.fill_(float("nan"))
        torch.testing.assert_close(with_aux(views, tabular), expected)


def test_dmfn_config_without_fusion_keys_rebuilds_the_original_architecture() -> None:
    """A checkpoint written before the fusion options existed (its model_config lacks them)."""
    torch.manual_seed(0)
    model = _model("dmfn").eval()
    assert (model.config["fusion"], model.config["aux_heads"]) == ("concat", False)
    assert {k.split(".")[0] for k in model.state_dict()} == {"ct", "tabular", "head"}
    legacy = {k: v for k, v in model.config.items() if k not in ("fusion", "aux_heads")}
    rebuilt = create_model(**legacy).eval()
    rebuilt.load_state_dict(model.state_dict())  # strict: the very same keys and shapes
    views, tabular = _inputs(2, 64)
    with torch.no_grad():
        assert torch.equal(rebuilt(views, tabular), model(views, tabular))
    assert "fusion" not in _model("cnn").config and "aux_heads" not in _model("tabular").config


def test_class_prior_initialises_the_fusion_bias_only() -> None:
    prior = np.linspace(1.0, 20.0, N_CLASSES)
    prior /= prior.sum()
    model = _model("dmfn", fusion="sum", class_prior=prior)
    expected = -np.log(prior) + np.log(prior).mean()
    np.testing.assert_allclose(model.fusion_bias.detach().numpy(), expected, rtol=1e-5)
    assert "class_prior" not in model.config  # an initialisation: the state dict holds the bias
    rebuilt = create_model(**model.config)
    assert float(rebuilt.fusion_bias.detach().abs().max()) == 0.0
    rebuilt.load_state_dict(model.state_dict())
    torch.testing.assert_close(rebuilt.fusion_bias, model.fusion_bias)


@pytest.mark.parametrize(
    ("kind", "kwargs", "match"),
    [
        ("dmfn", {"class_prior": [1.0] * N_CLASSES}, "'class_prior': only for .*fusion 'concat'"),
        ("cnn", {"class_prior": [1.0] * N_CLASSES}, "'class_prior': only for kind 'dmfn'"),
        ("dmfn", {"fusion": "sum", "class_prior": [1.0] * 3}, "'class_prior': must be 20 finite"),
        ("dmfn", {"fusion": "sum", "class_prior": [0.0] * N_CLASSES}, "'class_prior'.*> 0"),
        (
            "dmfn",
            {"fusion": "product"},
            r"'fusion': must be one of \('concat', 'sum', 'hybrid', 'experts'\)",
        ),
        ("dmfn", {"aux_heads": 1}, "'aux_heads': must be a bool"),
        ("cnn", {"fusion": "sum"}, "only for kind 'dmfn'.*'cnn'"),
        ("tabular", {"aux_heads": True}, "only for kind 'dmfn'.*'tabular'"),
    ],
)
def test_fusion_options_rejected(kind: str, kwargs: dict[str, object], match: str) -> None:
    with pytest.raises(ValueError, match=match):
        _model(kind, **kwargs)


def test_cnn_needs_no_standardisation() -> None:
    model = create_model("cnn", backbone=TINY, n_classes=3, n_tabular=2)
    assert model(torch.rand(1, 3, 64, 64), torch.zeros(1, 2)).shape == (1, 3)


@pytest.mark.parametrize(
    ("views_shape", "tab_shape", "match"),
    [
        ((2, 1, 64, 64), (2, N_TABULAR), "'views'"),
        ((2, 3, 64, 32), (2, N_TABULAR), "'views'"),
        ((2, 3, 64, 64), (2, N_TABULAR + 1), "'tabular'"),
        ((2, 3, 64, 64), (3, N_TABULAR), "batch sizes must match"),
    ],
)
def test_forward_rejects_bad_shapes(views_shape, tab_shape, match) -> None:
    model = _model("dmfn").eval()
    with pytest.raises(ValueError, match=match):
        model(torch.rand(*views_shape), torch.rand(*tab_shape))


def test_fit_standardisation() -> None:
    x = np.array([[1.0, 5.0, 1.0], [3.0, 5.0, 0.0], [5.0, 5.0, 1.0]])
    mean, std = fit_standardisation(x)
    np.testing.assert_allclose(mean, [3.0, 5.0, 2 / 3])
    np.testing.assert_allclose(std, [np.sqrt(8 / 3), 1.0, np.sqrt(2 / 9)])  # constant column -> 1
    with pytest.raises(ValueError, match="'features'"):
        fit_standardisation(x[:1])
    with pytest.raises(ValueError, match=r"'features'.*finite"):
        fit_standardisation(np.array([[1.0, np.nan], [2.0, 3.0]]))


# --- ONNX --------------------------------------------------------------------------------------


def _export_onnx(model: nn.Module, size: int) -> bytes:
    buf = io.BytesIO()
    with warnings.catch_warnings():
        # the TorchScript exporter (dynamo=False, fast) announces its own deprecation
        warnings.simplefilter("ignore", DeprecationWarning)
        torch.onnx.export(
            model,
            _inputs(2, size),
            buf,
            dynamo=False,
            opset_version=17,
            input_names=["views", "tabular"],
            output_names=["logits"],
            dynamic_axes={"views": {0: "batch"}, "tabular": {0: "batch"}, "logits": {0: "batch"}},
        )
    return buf.getvalue()


@pytest.mark.parametrize(
    ("kind", "backbone", "options"),
    [
        ("dmfn", "regnety_tiny", {}),
        ("cnn", "regnetx_tiny", {}),
        ("tabular", None, {}),
        ("dmfn", "selfreg_tiny_gru", {}),
        ("cnn", "selfreg_tiny_lstm", {}),
        *(
            ("dmfn", "regnetx_tiny", {"fusion": fusion, "aux_heads": aux})
            for fusion, aux in FUSIONS
            if fusion != "concat" or aux
        ),
    ],
)
def test_onnx_round_trip(kind: str, backbone: str | None, options: dict[str, object]) -> None:
    ort = pytest.importorskip("onnxruntime")
    torch.manual_seed(0)
    model = _model(kind, backbone=backbone, **options)
    _warm_batch_norm(model)  # non-trivial BatchNorm statistics before freezing
    model.eval()
    size = 64
    session = ort.InferenceSession(_export_onnx(model, size), providers=["CPUExecutionProvider"])
    assert [i.name for i in session.get_inputs()] == ["views", "tabular"]
    for batch in (1, 3):
        views, tabular = _inputs(batch, size, seed=batch)
        with torch.no_grad():
            expected = model(views, tabular).numpy()
        (got,) = session.run(None, {"views": views.numpy(), "tabular": tabular.numpy()})
        assert got.shape == (batch, N_CLASSES)
        np.testing.assert_allclose(got, expected, atol=1e-4, rtol=0)


def _onnx_weight_count(model: nn.Module) -> int:
    onnx = pytest.importorskip("onnx")
    graph = onnx.load_from_string(_export_onnx(model, 64)).graph
    return sum(int(np.prod(t.dims)) for t in graph.initializer)


def test_onnx_graph_leaves_out_the_aux_heads() -> None:
    """The unimodal heads of a concat model are training-only: not one of their weights is
    exported (the graph equals the plain concat model's)."""
    torch.manual_seed(0)
    plain = _model("dmfn", backbone="regnetx_tiny").eval()
    torch.manual_seed(0)
    with_aux = _model("dmfn", backbone="regnetx_tiny", aux_heads=True).eval()
    assert _n_params(with_aux) > _n_params(plain)
    assert _onnx_weight_count(with_aux) == _onnx_weight_count(plain)
