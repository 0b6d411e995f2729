"""Conformal class sets (contract/conformal.py): the sets against an independent implementation
(crepes) on the same scores, the finite-sample coverage on exchangeable data, the empty-set
rule, the Mondrian and binary variants, argument refusals and the JSON round trip."""

from __future__ import annotations

import math

import numpy as np
import pytest

from dmfn.contract import conformal as cf
from dmfn.contract.errors import InvalidInput

C = 6


def _data(seed: int, n: int, n_classes: int = C, weights: np.ndarray | None = None):
    """Dirichlet probabilities [n, C] and labels drawn from them (exchangeable cases); a few
    rows rounded to two decimals so that probabilities tie."""
    rng = np.random.default_rng(seed)
    probs = rng.dirichlet(np.full(n_classes, 0.6), size=n)
    probs[: n // 10] = np.round(probs[: n // 10], 2)
    if weights is None:
        labels = np.array([rng.choice(n_classes, p=p / p.sum()) for p in probs])
    else:
        labels = rng.choice(n_classes, size=n, p=weights)
    return probs, labels


# --------------------------------------------------------------------------- the definition
def test_the_score_sums_the_classes_ranked_at_or_above_with_ties_to_the_lower_index() -> None:
    p = np.array([[0.1, 0.4, 0.1, 0.4]])
    # ranking: 1 (0.4), 3 (0.4, tie: after the lower index 1), 0 (0.1), 2 (0.1)
    np.testing.assert_allclose(cf.aps_score_matrix(p), [[0.9, 0.4, 1.0, 0.8]])
    np.testing.assert_allclose(cf.aps_scores(p, [3]), [0.8])


def test_the_threshold_is_the_finite_sample_quantile() -> None:
    scores = np.arange(1, 20) / 20.0  # n = 19: k = ceil(20 * 0.9) = 18
    assert cf.conformal_threshold(scores, 0.9) == scores[17]
    assert cf.conformal_threshold(scores[:8], 0.9) == math.inf  # n = 8 < 9: too few
    assert cf.conformal_threshold(scores[:9], 0.9) == scores[8]
    # 0.7 * 10 is 7.000000000000001 in floats: still the 7th score, not the 8th
    assert cf.conformal_rank(9, 0.7) == 7
    assert cf.conformal_threshold(scores[:9], 0.7) == scores[6]


def test_a_set_is_the_classes_within_the_threshold_and_an_empty_one_keeps_the_top_class() -> None:
    p = np.array([[0.5, 0.3, 0.2], [0.95, 0.03, 0.02], [0.2, 0.2, 0.6]])
    sets = cf.aps_sets(p, 0.85)
    assert sets.tolist() == [
        [True, True, False],  # 0.5, 0.8 <= 0.85; 1.0 > 0.85
        [True, False, False],  # 0.95 > 0.85 would leave it empty: the top class is kept
        [True, False, True],  # 0.6, then class 0 (0.8: the tie goes to the lower index)
    ]
    assert cf.aps_sets(p, math.inf).all()
    # one threshold per class: class 0 always, the others never (the set need not hold the
    # top class then); with none allowed, the rule gives each set its top class
    assert cf.aps_sets(p, [math.inf, -1.0, -1.0]).tolist() == [[True, False, False]] * 3
    assert cf.aps_sets(p, [-1.0, -1.0, -1.0]).tolist() == [
        [True, False, False], [True, False, False], [False, False, True],
    ]  # fmt: skip


def test_float32_probabilities_give_the_sets_of_the_same_values_in_float64() -> None:
    probs, labels = _data(7, 400)
    p32 = probs.astype(np.float32)
    fit = cf.fit_conformal(p32[:200], labels[:200], np.arange(C) >= 3, 0.8)
    fit64 = cf.fit_conformal(p32[:200].astype(np.float64), labels[:200], np.arange(C) >= 3, 0.8)
    assert fit == fit64
    np.testing.assert_array_equal(
        cf.class_sets(fit, p32[200:]), cf.class_sets(fit, p32[200:].astype(np.float64))
    )


# --------------------------------------------------------------------------- against crepes
# crepes (Boström) computes a non-smoothed conformal p-value p(x, y) = (#{calibration scores >=
# s(x, y)} + 1) / (n + 1) and puts y in the set iff p(x, y) >= 1 - confidence. Ours puts y in
# the set iff s(x, y) <= the k-th smallest calibration score, k = ceil((n + 1) * coverage).
# With alpha = 1 - coverage: s <= q_k  <=>  #{scores < s} <= k - 1  <=>  #{scores >= s} + 1 >=
# n + 2 - k = floor((n + 1) * alpha) + 1  <=>  p(x, y) > alpha. So the sets are equal whenever
# (n + 1) * alpha is not an integer (then p > alpha and p >= alpha agree), which the n below
# are chosen for; at an integer, ours is crepes' p-value with the strict inequality (tested
# too). Both compare the same float64 scores, so the comparison is exact, ties included. crepes
# has no empty-set rule: our set equals crepes' except where crepes' is empty, where ours holds
# the top class alone.
def _crepes():
    return pytest.importorskip(
        "crepes", reason="crepes (pip install crepes) is the independent implementation"
    )


def _with_rule(theirs: np.ndarray, probs: np.ndarray) -> np.ndarray:
    """crepes' sets with our empty-set rule applied (the top class, ties to the lower index)."""
    out = theirs.astype(bool).copy()
    empty = ~out.any(axis=1)
    top = np.argsort(-probs, axis=1, kind="stable")[:, 0]
    out[empty, top[empty]] = True
    return out


@pytest.mark.parametrize("seed", range(5))
@pytest.mark.parametrize(("n", "coverage"), [(137, 0.9), (58, 0.8), (300, 0.95)])
def test_marginal_sets_equal_crepes(seed: int, n: int, coverage: float) -> None:
    crepes = _crepes()
    alpha = 1 - coverage
    assert not math.isclose((n + 1) * alpha, round((n + 1) * alpha))  # see above
    probs, labels = _data(seed, n + 300)
    scores = cf.aps_scores(probs[:n], labels[:n])
    ours = cf.aps_sets(probs[n:], cf.conformal_threshold(scores, coverage))
    cc = crepes.ConformalClassifier().fit(scores)
    theirs = cc.predict_set(cf.aps_score_matrix(probs[n:]), confidence=coverage, smoothing=False)
    np.testing.assert_array_equal(ours, _with_rule(theirs, probs[n:]))
    assert (theirs.sum(axis=1) != ours.sum(axis=1)).sum() == (theirs.sum(axis=1) == 0).sum()


@pytest.mark.parametrize("seed", range(3))
def test_marginal_sets_equal_crepes_p_values_when_n_plus_1_times_alpha_is_an_integer(seed) -> None:
    crepes = _crepes()
    n, coverage = 99, 0.9  # (n + 1) * alpha = 10
    probs, labels = _data(seed, n + 300)
    scores = cf.aps_scores(probs[:n], labels[:n])
    ours = cf.aps_sets(probs[n:], cf.conformal_threshold(scores, coverage))
    p = (
        crepes.ConformalClassifier()
        .fit(scores)
        .predict_p(cf.aps_score_matrix(probs[n:]), smoothing=False)
    )
    # p > alpha in integers: (n + 1) * p = #{scores >= s} + 1 > 10 (in floats 1 - 0.9 is
    # 0.09999999999999998, which p = 0.1 would pass)
    np.testing.assert_array_equal(ours, _with_rule(np.rint(p * (n + 1)) > 10, probs[n:]))


@pytest.mark.parametrize("seed", range(5))
def test_mondrian_sets_equal_crepes_class_conditional(seed: int) -> None:
    """crepes' class-conditional conformal classifier (WrapClassifier.calibrate(class_cond=True)
    does exactly this): a Mondrian ConformalClassifier with the labels as categories, each
    class's p-value taken with that class as the category. Rare classes (here 5 and 0
    calibration cases, fewer than the 7 that 0.873 needs) get +inf here and p >= 1 / (n_y + 1)
    > alpha there: always in the set."""
    crepes = _crepes()
    weights = np.array([0.4, 0.3, 0.2, 0.08, 0.02, 0.0])
    n, coverage = 250, 0.873  # (n_y + 1) * 0.127 is an integer only for n_y = 999
    probs, labels = _data(seed, n + 300, weights=weights)
    cal, test = slice(0, n), slice(n, None)
    scores = cf.aps_scores(probs[cal], labels[cal])
    thresholds = cf.mondrian_thresholds(scores, labels[cal], C, coverage)
    counts = np.bincount(labels[cal], minlength=C)
    assert counts[5] == 0 and np.isinf(thresholds[5]) and np.isinf(thresholds[counts < 7]).all()
    ours = cf.aps_sets(probs[test], thresholds)
    cc = crepes.ConformalClassifier().fit(scores, bins=labels[cal])
    matrix = cf.aps_score_matrix(probs[test])
    m = matrix.shape[0]
    theirs = np.stack(
        [cc.predict_set(matrix, bins=np.full(m, c), confidence=coverage, smoothing=False)[:, c]
         for c in range(C)], axis=1,
    )  # fmt: skip
    np.testing.assert_array_equal(ours, _with_rule(theirs, probs[test]))


@pytest.mark.parametrize("seed", range(5))
@pytest.mark.parametrize("method", ["aps", "mondrian"])
def test_binary_sets_equal_crepes(seed: int, method: str) -> None:
    """The binary score 1 - p(true group) fed to crepes, marginal or with the groups as
    categories."""
    crepes = _crepes()
    rng = np.random.default_rng(seed)
    n, coverage = 203, 0.873  # (n + 1) * 0.127, and per group, are not integers
    malignant = rng.integers(0, 2, n + 300)
    m = np.clip(rng.normal(0.35 + 0.3 * malignant, 0.2), 0, 1)
    cal, test = slice(0, n), slice(n, None)
    t = cf.binary_thresholds(m[cal], malignant[cal], coverage, method)
    fit = cf.ConformalFit(method, coverage, (0.5,) * (1 if method == "aps" else C), t, n)
    ours = cf.binary_sets(fit, m[test])
    scores = cf.binary_scores(m[cal], malignant[cal])
    matrix = 1.0 - cf.binary_probs(m[test])
    if method == "aps":
        theirs = (
            crepes.ConformalClassifier()
            .fit(scores)
            .predict_set(matrix, confidence=coverage, smoothing=False)
        )
    else:
        cc = crepes.ConformalClassifier().fit(scores, bins=malignant[cal])
        size = matrix.shape[0]
        theirs = np.stack(
            [cc.predict_set(matrix, bins=np.full(size, g), confidence=coverage,
                            smoothing=False)[:, g] for g in (0, 1)], axis=1,
        )  # fmt: skip
    np.testing.assert_array_equal(ours, _with_rule(theirs, cf.binary_probs(m[test])))


# --------------------------------------------------------------------------- coverage
def test_coverage_is_finite_sample_valid_on_exchangeable_data() -> None:
    """2000 calibration sets of n = 40 (k = 37): the expected coverage is k / (n + 1) = 0.902,
    between 1 - alpha and 1 - alpha + 1 / (n + 1) (continuous scores: no ties)."""
    rng = np.random.default_rng(0)
    n, n_test, trials, coverage = 40, 100, 2000, 0.9
    covered = []
    for _ in range(trials):
        probs = rng.dirichlet(np.full(C, 0.6), size=n + n_test)
        labels = (rng.random((n + n_test, 1)) > probs.cumsum(axis=1)).sum(axis=1)
        labels = np.minimum(labels, C - 1)
        t = cf.conformal_threshold(cf.aps_scores(probs[:n], labels[:n]), coverage)
        sets = cf.aps_sets(probs[n:], t)
        covered.append(sets[np.arange(n_test), labels[n:]].mean())
    mean = float(np.mean(covered))  # its SD over trials is about 0.001
    assert coverage - 0.005 <= mean <= coverage + 1 / (n + 1) + 0.005, mean


def test_mondrian_covers_each_class_where_marginal_fails_the_rare_one() -> None:
    """A rare class (5 %) that the model under-rates: marginal APS misses it far more often
    than 10 %; Mondrian's threshold of its own keeps its coverage at 90 %."""
    rng = np.random.default_rng(1)
    weights = np.array([0.35, 0.3, 0.3, 0.05])
    n, n_test, trials, coverage = 600, 400, 200, 0.9
    marginal, mondrian = [], []
    for _ in range(trials):
        labels = rng.choice(4, size=n + n_test, p=weights)
        logits = rng.normal(0, 1, (n + n_test, 4))
        boost = np.where(labels == 3, 0.0, 2.5)  # the rare class gets no signal
        logits[np.arange(labels.size), labels] += boost
        probs = np.exp(logits) / np.exp(logits).sum(axis=1, keepdims=True)
        scores = cf.aps_scores(probs[:n], labels[:n])
        rare = labels[n:] == 3
        for out, t in (
            (marginal, cf.conformal_threshold(scores, coverage)),
            (mondrian, cf.mondrian_thresholds(scores, labels[:n], 4, coverage)),
        ):
            sets = cf.aps_sets(probs[n:], t)
            hit = sets[np.arange(n_test), labels[n:]]
            out.append([hit[labels[n:] == c].mean() for c in range(4)] + [hit[rare].size])
    marginal_rare = np.mean([m[3] for m in marginal])
    assert marginal_rare < 0.8, marginal_rare
    per_class = np.mean([m[:4] for m in mondrian], axis=0)
    assert (per_class >= coverage - 0.01).all(), per_class


def test_binary_sets_say_uncertain_for_unsure_cases_and_cover_each_group_with_mondrian() -> None:
    rng = np.random.default_rng(2)
    n = 4000
    malignant = rng.integers(0, 2, 2 * n)
    m = 1 / (1 + np.exp(-rng.normal(2 * malignant - 1, 1.2)))
    t = cf.binary_thresholds(m[:n], malignant[:n], 0.9, "aps")
    sets = cf.binary_sets_at(m[n:], t[0])
    kinds = {tuple(r) for r in sets.tolist()}
    assert kinds == {(True, False), (False, True), (True, True)}  # all three answers occur
    assert sets[np.arange(n), malignant[n:]].mean() >= 0.88  # 0.9 less 2 SD of 4000 cases
    # confident cases get one group, unsure ones both
    assert sets[m[n:] > 0.99].tolist() == [[False, True]] * int((m[n:] > 0.99).sum())
    assert sets[np.abs(m[n:] - 0.5) < 0.01].all()
    tm = cf.binary_thresholds(m[:n], malignant[:n], 0.9, "mondrian")
    sets = cf.binary_sets_at(m[n:], tm)
    for g in (0, 1):
        assert sets[malignant[n:] == g, g].mean() >= 0.87  # 0.9 less 2 SD of 2000 cases
    # an empty binary set holds the more probable group (benign at exactly 0.5)
    assert cf.binary_sets_at([0.5, 0.7, 0.2], 0.1).tolist() == [
        [True, False], [False, True], [True, False],
    ]  # fmt: skip


# --------------------------------------------------------------------------- the fit
def test_fit_conformal_and_its_json_round_trip() -> None:
    probs, labels = _data(3, 300, weights=np.array([0.5, 0.3, 0.15, 0.04, 0.01, 0.0]))
    mask = np.array([False, False, True, True, False, True])
    aps = cf.fit_conformal(probs, labels, mask)
    assert aps.method == "aps" and aps.coverage == 0.9 and aps.n_calibration == 300
    assert len(aps.thresholds) == 1 and len(aps.binary_thresholds) == 1
    assert aps.thresholds[0] == cf.conformal_threshold(cf.aps_scores(probs, labels), 0.9)
    assert aps.binary_thresholds == cf.binary_thresholds(
        probs[:, mask].sum(axis=1), mask[labels], 0.9
    )
    mondrian = cf.fit_conformal(probs, labels, mask, 0.9, "mondrian")
    assert len(mondrian.thresholds) == C and len(mondrian.binary_thresholds) == 2
    assert math.isinf(mondrian.thresholds[5])  # no calibration case: always included
    assert cf.class_sets(mondrian, probs)[:, 5].all()
    for fit in (aps, mondrian):
        text = fit.to_json()
        assert "Infinity" not in text  # strict JSON: +inf is null
        assert cf.ConformalFit.from_json(text) == fit
    np.testing.assert_array_equal(cf.class_sets(aps, probs), cf.aps_sets(probs, aps.thresholds[0]))
    np.testing.assert_array_equal(
        cf.binary_sets(mondrian, probs[:, mask].sum(axis=1)),
        cf.binary_sets_at(probs[:, mask].sum(axis=1), mondrian.binary_thresholds),
    )


GOOD = np.full((4, 3), 1 / 3)


@pytest.mark.parametrize(
    ("call", "name"),
    [
        (lambda: cf.fit_conformal(GOOD, [0, 1, 2, 0], [True, False, True], 1.0), "coverage"),
        (lambda: cf.fit_conformal(GOOD, [0, 1, 2, 0], [True, False, True], 0.0), "coverage"),
        (lambda: cf.fit_conformal(GOOD, [0, 1, 2, 0], [True, False, True], "0.9"), "coverage"),
        (lambda: cf.fit_conformal(GOOD, [0, 1, 2], [True, False, True]), "val_labels"),
        (lambda: cf.fit_conformal(GOOD, [0, 1, 2, 3], [True, False, True]), "val_labels"),
        (lambda: cf.fit_conformal(GOOD, [0.0, 1, 2, 0], [True, False, True]), "val_labels"),
        (lambda: cf.fit_conformal(GOOD, [0, 1, 2, 0], [True, False]), "malignant_mask"),
        (lambda: cf.fit_conformal(GOOD, [0, 1, 2, 0], [1, 0, 1]), "malignant_mask"),
        (lambda: cf.fit_conformal(GOOD[:0], [], [True, False, True]), "val_probs"),
        (lambda: cf.fit_conformal(GOOD, [0, 1, 2, 0], [True, False, True], 0.9, "raps"), "method"),
        (lambda: cf.fit_conformal(np.full((4, 3), np.nan), [0, 1, 2, 0], [True] * 3), "val_probs"),
        (lambda: cf.aps_sets(GOOD * 4, 0.5), "probs"),
        (lambda: cf.aps_sets(GOOD[0], 0.5), "probs"),
        (lambda: cf.aps_sets(GOOD, [0.5, 0.5]), "threshold"),
        (lambda: cf.aps_sets(GOOD, math.nan), "threshold"),
        (lambda: cf.aps_scores(GOOD, [0, 1]), "labels"),
        (lambda: cf.conformal_threshold([0.1, math.inf], 0.9), "scores"),
        (lambda: cf.binary_sets_at([0.2, math.nan], 0.5), "malignant_prob"),
        (lambda: cf.binary_sets_at([[0.2]], 0.5), "malignant_prob"),
        (lambda: cf.ConformalFit("aps", 0.9, (0.5, 0.6), (0.5,), 10), "thresholds"),
        (lambda: cf.ConformalFit("mondrian", 0.9, (0.5, 0.6), (0.5,), 10), "binary_thresholds"),
        (lambda: cf.ConformalFit("aps", 0.9, (math.nan,), (0.5,), 10), "thresholds"),
        (lambda: cf.ConformalFit("aps", 0.9, (0.5,), (0.5,), -1), "n_calibration"),
        (lambda: cf.ConformalFit.from_json("{"), "conformal"),
        (lambda: cf.ConformalFit.from_json('{"method": "aps"}'), "conformal"),
        (
            lambda: cf.class_sets(
                cf.ConformalFit("mondrian", 0.9, (1.0,) * 4, (1.0, 1.0), 9), GOOD
            ),
            "probs",
        ),
    ],
)
def test_bad_arguments_are_refused_naming_them(call, name: str) -> None:
    with pytest.raises(InvalidInput) as err:
        call()
    assert err.value.name == name, str(err.value)
