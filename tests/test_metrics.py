"""dmfn.evaluation.metrics: exact AUCs against brute force and against R pROC."""

from __future__ import annotations

import shutil
import subprocess
from itertools import combinations

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from dmfn.evaluation import metrics


def brute_auc(pos: np.ndarray, neg: np.ndarray) -> float:
    """P(pos > neg) + 0.5 P(pos == neg) over all pairs."""
    diff = pos[:, None] - neg[None, :]
    return float(((diff > 0) + 0.5 * (diff == 0)).mean())


def brute_hand_till(y: np.ndarray, p: np.ndarray) -> float:
    values = []
    for i, j in combinations(np.unique(y), 2):
        a_ij = brute_auc(p[y == i, i], p[y == j, i])
        a_ji = brute_auc(p[y == j, j], p[y == i, j])
        values.append((a_ij + a_ji) / 2)
    return float(np.mean(values))


def random_case(seed: int, n: int = 40, c: int = 4, decimals: int = 1):
    rng = np.random.default_rng(seed)
    y = rng.integers(0, c, n)
    logits = rng.normal(size=(n, c))
    logits[np.arange(n), y] += 1.0
    p = np.exp(logits)
    p = np.round(p / p.sum(1, keepdims=True), decimals)  # rounding makes many ties
    return y, p


def test_binary_auc_small_example_and_ties():
    assert metrics.binary_auc([0, 0, 1, 1], [0.1, 0.4, 0.35, 0.8]) == 0.75
    assert metrics.binary_auc([0, 1, 0, 1], [0.5, 0.5, 0.5, 0.5]) == 0.5
    assert metrics.binary_auc([0, 1], [0.2, 0.2]) == 0.5
    assert metrics.binary_auc([1, 0], [0.9, 0.1]) == 1.0
    assert metrics.binary_auc([1, 0], [0.1, 0.9]) == 0.0


@settings(max_examples=60, deadline=None)
@given(
    st.lists(st.tuples(st.booleans(), st.integers(0, 5)), min_size=2, max_size=60).filter(
        lambda xs: len({b for b, _ in xs}) == 2
    )
)
def test_binary_auc_equals_pairwise_count(cases):
    y = np.array([int(b) for b, _ in cases])
    s = np.array([float(v) for _, v in cases])
    assert metrics.binary_auc(y, s) == pytest.approx(brute_auc(s[y == 1], s[y == 0]), abs=1e-12)


@pytest.mark.parametrize("seed", range(5))
def test_hand_till_and_macro_equal_brute_force(seed):
    y, p = random_case(seed)
    assert metrics.hand_till_auc(y, p) == pytest.approx(brute_hand_till(y, p), abs=1e-12)
    ovr = [brute_auc(p[y == c, c], p[y != c, c]) for c in np.unique(y)]
    assert metrics.macro_ovr_auc(y, p) == pytest.approx(np.mean(ovr), abs=1e-12)


def test_hand_till_with_two_classes_is_the_binary_auc():
    rng = np.random.default_rng(0)
    y = rng.integers(0, 2, 50)
    p1 = np.round(rng.random(50), 1)
    p = np.stack([1 - p1, p1], 1)
    assert metrics.hand_till_auc(y, p) == pytest.approx(metrics.binary_auc(y, p1), abs=1e-12)


def test_classes_without_cases_are_left_out():
    y, p = random_case(1, c=4)
    wide = np.concatenate([p, np.full((len(y), 2), 0.05)], axis=1)  # two classes never seen
    assert metrics.hand_till_auc(y, wide) == pytest.approx(metrics.hand_till_auc(y, p))
    assert metrics.macro_ovr_auc(y, wide) == pytest.approx(metrics.macro_ovr_auc(y, p))


def test_accuracy_and_top_k():
    y = np.array([0, 1, 2, 2])
    p = np.array([[0.6, 0.3, 0.1], [0.5, 0.4, 0.1], [0.1, 0.2, 0.7], [0.5, 0.3, 0.2]])
    assert metrics.accuracy(y, p) == 0.5
    assert metrics.top_k_accuracy(y, p, 1) == 0.5
    assert metrics.top_k_accuracy(y, p, 2) == 0.75
    assert metrics.top_k_accuracy(y, p, 3) == 1.0


def test_summary_binary_score_is_summed_malignant_probability():
    y, p = random_case(2)
    mask = np.array([False, False, True, True])
    out = metrics.classification_summary(y, p, mask)
    assert out["binary_auc"] == metrics.binary_auc((y >= 2).astype(int), p[:, 2] + p[:, 3])
    only_benign = metrics.classification_summary(np.zeros(4, int), p[:4], mask)
    assert np.isnan(only_benign["binary_auc"]) and np.isnan(only_benign["hand_till_auc"])


@pytest.mark.parametrize(
    ("call", "message"),
    [
        (lambda: metrics.binary_auc([1, 1], [0.1, 0.2]), "positive and one negative"),
        (lambda: metrics.binary_auc([0, 2], [0.1, 0.2]), "0 \\(negative\\) and 1"),
        (lambda: metrics.binary_auc([0, 1], [0.1, np.nan]), "finite"),
        (lambda: metrics.binary_auc([0, 1], [0.1]), "argument 'score'"),
        (lambda: metrics.hand_till_auc([0, 0], [[0.5, 0.5], [0.4, 0.6]]), "two classes"),
        (lambda: metrics.hand_till_auc([0, 3], [[0.5, 0.5], [0.4, 0.6]]), "out of range"),
        (lambda: metrics.macro_ovr_auc([], np.zeros((0, 2))), "non-empty"),
        (lambda: metrics.top_k_accuracy([0, 1], [[0.5, 0.5], [0.4, 0.6]], 3), "argument 'k'"),
        (lambda: metrics.accuracy([0.5, 1], [[0.5, 0.5], [0.4, 0.6]]), "integer class"),
    ],
)
def test_bad_inputs_raise(call, message):
    with pytest.raises(ValueError, match=message):
        call()


R_SCRIPT = """
suppressMessages(library(pROC))
d <- read.csv(commandArgs(TRUE)[1])
p <- as.matrix(d[, c("p0", "p1", "p2", "p3")]); colnames(p) <- c("0", "1", "2", "3")
cat(sprintf("%.15f\\n", as.numeric(auc(multiclass.roc(factor(d$y), p)))))
b <- roc(d$y >= 2, d$p2 + d$p3, levels = c(FALSE, TRUE), direction = "<", quiet = TRUE)
cat(sprintf("%.15f\\n", as.numeric(auc(b))))
"""


def _have_proc() -> bool:
    if shutil.which("Rscript") is None:
        return False
    probe = subprocess.run(
        ["Rscript", "-e", "library(pROC)"], capture_output=True, text=True, check=False
    )
    return probe.returncode == 0


@pytest.mark.skipif(not _have_proc(), reason="R with the pROC package is not installed")
@pytest.mark.parametrize("seed", [3, 11])
def test_equal_to_r_proc(tmp_path, seed):
    y, p = random_case(seed)
    data = tmp_path / "d.csv"
    lines = ["y,p0,p1,p2,p3"] + [
        f"{a}," + ",".join(f"{v:.1f}" for v in row) for a, row in zip(y, p, strict=True)
    ]
    data.write_text("\n".join(lines) + "\n")
    script = tmp_path / "auc.R"
    script.write_text(R_SCRIPT)
    out = subprocess.run(
        ["Rscript", str(script), str(data)], capture_output=True, text=True, check=True
    ).stdout.split()
    assert metrics.hand_till_auc(y, p) == pytest.approx(float(out[0]), abs=1e-12)
    binary = metrics.binary_auc((y >= 2).astype(int), p[:, 2] + p[:, 3])
    assert binary == pytest.approx(float(out[1]), abs=1e-12)
