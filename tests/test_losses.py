"""Losses: cross-entropy (smoothing, class weights), class weights from counts, neutral CE,
auxiliary unimodal losses."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from dmfn.contract.taxonomy import load_taxonomy
from dmfn.training.losses import (
    class_weights_from_counts,
    cross_entropy,
    neutral_cross_entropy,
    with_auxiliary,
)

C = 5


@pytest.fixture
def batch() -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(0)
    logits1 = torch.randn(7, C, generator=g, dtype=torch.float64)
    logits2 = torch.randn(7, C, generator=g, dtype=torch.float64)
    target = torch.tensor([0, 1, 2, 3, 4, 0, 0])
    return logits1, logits2, target


def test_cross_entropy_equals_torch(batch) -> None:
    logits, _, y = batch
    torch.testing.assert_close(cross_entropy(logits, y), F.cross_entropy(logits, y))
    torch.testing.assert_close(
        cross_entropy(logits, y, label_smoothing=0.1),
        F.cross_entropy(logits, y, label_smoothing=0.1),
    )
    w = torch.tensor([0.2, 1.0, 2.0, 3.0, 0.5], dtype=torch.float64)
    torch.testing.assert_close(
        cross_entropy(logits, y, class_weight=w), F.cross_entropy(logits, y, weight=w)
    )


def test_cross_entropy_smoothing_and_weights_by_hand(batch) -> None:
    logits, _, y = batch
    eps = 0.2
    w = torch.tensor([0.2, 1.0, 2.0, 3.0, 0.5], dtype=torch.float64)
    logp = F.log_softmax(logits, dim=1)
    per = [-((1 - eps) * logp[i, y[i]] + eps / C * logp[i].sum()) for i in range(len(y))]
    expected = sum(w[y[i]] * per[i] for i in range(len(y))) / w[y].sum()
    torch.testing.assert_close(cross_entropy(logits, y, eps, w), expected)


def test_class_weight_balances_a_duplicated_class(batch) -> None:
    # Weighting class 0 by 1/3 makes three class-0 samples count as one.
    logits, _, y = batch
    w = torch.ones(C, dtype=torch.float64)
    w[0] = 1 / 3
    keep = torch.tensor([0, 1, 2, 3, 4])
    balanced = cross_entropy(logits[keep], y[keep])
    logits3 = torch.cat([logits[keep], logits[:1], logits[:1]])
    y3 = torch.cat([y[keep], y[:1], y[:1]])
    torch.testing.assert_close(cross_entropy(logits3, y3, class_weight=w), balanced)


def test_neutral_reduces_to_ce_when_alpha_zero(batch) -> None:
    l1, l2, y = batch
    for eps in (0.0, 0.1):
        got = neutral_cross_entropy(l1, l2, y, alpha=0.0, label_smoothing=eps)
        torch.testing.assert_close(got, cross_entropy(l1, y, eps) + cross_entropy(l2, y, eps))


def test_neutral_matches_definition(batch) -> None:
    l1, l2, y = batch
    a = 0.3
    w = torch.tensor([0.5, 1.0, 2.0, 1.0, 3.0], dtype=torch.float64)
    pbar = (l1.softmax(1) + l2.softmax(1)) / 2
    t = (1 - a) * F.one_hot(y, C).double() + a * pbar
    per1 = -(t * l1.log_softmax(1)).sum(1)
    per2 = -(t * l2.log_softmax(1)).sum(1)
    wy = w[y]
    expected = (wy * per1).sum() / wy.sum() + (wy * per2).sum() / wy.sum()
    torch.testing.assert_close(neutral_cross_entropy(l1, l2, y, alpha=a, class_weight=w), expected)


def test_neutral_gradient_does_not_flow_through_target(batch) -> None:
    l1, l2, y = batch
    a = 0.4
    l1 = l1.clone().requires_grad_(True)
    l2 = l2.clone().requires_grad_(True)
    neutral_cross_entropy(l1, l2, y, alpha=a).backward()
    # With t constant, d/dz1 [CE(t, p1)] = (p1 - t) / B and CE(t, p2) does not depend on z1.
    with torch.no_grad():
        t = (1 - a) * F.one_hot(y, C).double() + a * (l1.softmax(1) + l2.softmax(1)) / 2
        expected = (l1.softmax(1) - t) / len(y)
    torch.testing.assert_close(l1.grad, expected)
    # Gradients differ from those of the same expression without stop-gradient.
    l1b = l1.detach().clone().requires_grad_(True)
    pbar = (l1b.softmax(1) + l2.detach().softmax(1)) / 2
    tb = (1 - a) * F.one_hot(y, C).double() + a * pbar
    (
        -(tb * l1b.log_softmax(1)).sum(1).mean() - (tb * l2.detach().log_softmax(1)).sum(1).mean()
    ).backward()
    assert not torch.allclose(l1b.grad, l1.grad)


@pytest.mark.parametrize("alpha", [-0.1, 1.0, 1.5, math.nan])
def test_neutral_rejects_alpha(batch, alpha) -> None:
    l1, l2, y = batch
    with pytest.raises(ValueError, match="'alpha'"):
        neutral_cross_entropy(l1, l2, y, alpha=alpha)


def test_neutral_rejects_shape_mismatch(batch) -> None:
    l1, l2, y = batch
    with pytest.raises(ValueError, match="same shape"):
        neutral_cross_entropy(l1, l2[:, :-1], y)
    with pytest.raises(ValueError, match="'target'"):
        neutral_cross_entropy(l1, l2, y[:-1])


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        ({"label_smoothing": 1.0}, "'label_smoothing'"),
        ({"label_smoothing": -0.1}, "'label_smoothing'"),
        ({"class_weight": torch.ones(C + 1)}, "'class_weight'"),
        ({"class_weight": -torch.ones(C)}, "'class_weight'"),
    ],
)
def test_cross_entropy_rejects_bad_options(batch, kwargs, match) -> None:
    logits, _, y = batch
    with pytest.raises(ValueError, match=match):
        cross_entropy(logits, y, **kwargs)


def test_cross_entropy_rejects_bad_targets(batch) -> None:
    logits, _, y = batch
    with pytest.raises(ValueError, match="'target'"):
        cross_entropy(logits, torch.tensor([0, 1, 2, 3, 4, 5, 0]))
    with pytest.raises(ValueError, match="'target'"):
        cross_entropy(logits, y.double())
    with pytest.raises(ValueError, match="'logits'"):
        cross_entropy(logits[0], y)


def test_class_weights_schemes() -> None:
    counts = [100, 25, 4]
    torch.testing.assert_close(
        class_weights_from_counts(counts, "inverse"),
        torch.tensor([0.01, 0.04, 0.25]) * (3 / 0.30),
    )
    torch.testing.assert_close(
        class_weights_from_counts(counts, "inverse_sqrt"),
        torch.tensor([0.1, 0.2, 0.5]) * (3 / 0.8),
    )
    beta = 0.99
    eff = np.array([(1 - beta) / (1 - beta**n) for n in counts])
    torch.testing.assert_close(
        class_weights_from_counts(counts, "effective", beta=beta),
        torch.tensor(eff * 3 / eff.sum(), dtype=torch.float32),
    )
    torch.testing.assert_close(
        class_weights_from_counts(counts, "effective", beta=0.0), torch.ones(3)
    )


def test_class_weights_on_paper_table2() -> None:
    counts = [c.n_train for c in load_taxonomy().classes]
    for scheme in ("inverse", "inverse_sqrt", "effective"):
        w = class_weights_from_counts(counts, scheme)
        assert w.shape == (len(counts),) and w.dtype == torch.float32
        assert float(w.sum()) == pytest.approx(len(counts), rel=1e-5)
        # rarer classes weigh more (monotone non-increasing in count)
        order = np.argsort(counts, kind="stable")
        assert np.all(np.diff(w.numpy()[order]) <= 1e-6)


def test_class_weights_absent_class_gets_zero(caplog) -> None:
    w = class_weights_from_counts([100, 0, 25], "inverse")
    torch.testing.assert_close(w, torch.tensor([0.01, 0.0, 0.04]) * (3 / 0.05))
    assert "[1]" in caplog.text


@pytest.mark.parametrize(
    ("counts", "kwargs", "match"),
    [
        ([10, -1, 3], {}, "'counts'"),
        ([0, 0], {}, "'counts'"),
        ([10, np.nan], {}, "'counts'"),
        ([10], {}, "'counts'"),
        ([[1, 2], [3, 4]], {}, "'counts'"),
        ([10, 3], {"scheme": "focal"}, "'scheme'"),
        ([10, 3], {"scheme": "effective", "beta": 1.0}, "'beta'"),
    ],
)
def test_class_weights_reject(counts, kwargs, match) -> None:
    with pytest.raises(ValueError, match=match):
        class_weights_from_counts(counts, **kwargs)


# --- auxiliary unimodal losses ------------------------------------------------------------------


def test_with_auxiliary_matches_definition(batch) -> None:
    fused, aux1, y = batch
    aux2 = aux1.flip(0)
    got = with_auxiliary(cross_entropy, fused, (aux1, aux2), y, 0.4)
    expected = cross_entropy(fused, y) + 0.4 * (cross_entropy(aux1, y) + cross_entropy(aux2, y))
    torch.testing.assert_close(got, expected)
    # weight 0: exactly the fused loss, with or without auxiliary logits
    assert torch.equal(
        with_auxiliary(cross_entropy, fused, (aux1,), y, 0.0), cross_entropy(fused, y)
    )
    assert torch.equal(with_auxiliary(cross_entropy, fused, (), y, 0.0), cross_entropy(fused, y))


def test_with_auxiliary_trains_each_head_on_its_own_logits(batch) -> None:
    fused, aux, y = (t.clone().requires_grad_(t.is_floating_point()) for t in batch)
    with_auxiliary(cross_entropy, fused, (aux,), y, 0.5).backward()
    ref = aux.detach().clone().requires_grad_(True)
    (0.5 * cross_entropy(ref, y)).backward()
    torch.testing.assert_close(aux.grad, ref.grad)
    assert float(fused.grad.abs().sum()) > 0


@pytest.mark.parametrize(
    ("aux", "weight", "match"),
    [
        ("same", -0.1, "'weight'.*>= 0"),
        ("same", math.nan, "'weight'.*finite"),
        ("same", math.inf, "'weight'.*finite"),
        ("none", 0.5, "'aux_logits'.*at least one"),
        ("short", 0.5, r"'aux_logits': entry 0 .*\(7, 5\)"),
    ],
)
def test_with_auxiliary_rejects(batch, aux, weight, match) -> None:
    fused, other, y = batch
    aux_logits = {"same": (other,), "none": (), "short": (other[:3],)}[aux]
    with pytest.raises(ValueError, match=match):
        with_auxiliary(cross_entropy, fused, aux_logits, y, weight)
