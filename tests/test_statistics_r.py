"""The statistics of dmfn evaluate against R (pROC 1.18 and base R), on pROC's own aSAH data and on
random data sets with ties, perfect separation and a class of 3 cases.

Tolerances (the issue's): AUC, DeLong CI bounds and paired p within 1e-6; Hand & Till within
1e-9; McNemar and the proportion intervals within 1e-9.
"""

from __future__ import annotations

import csv
import shutil
import subprocess
import textwrap
from pathlib import Path

import numpy as np
import pytest

from dmfn.evaluation import metrics
from dmfn.evaluation.proportions import diagnostic_metrics, mcnemar, proportion_ci, youden_threshold
from dmfn.evaluation.roc import auc_delong, delong_paired, delong_unpaired


def _r_available() -> str | None:
    if shutil.which("Rscript") is None:
        return "Rscript is not installed (make setup installs r-base-core as root)"
    ok = subprocess.run(["Rscript", "-e", "library(pROC)"], capture_output=True, check=False)
    return None if ok.returncode == 0 else "the R package pROC is not installed (r-cran-proc)"


pytestmark = pytest.mark.skipif(_r_available() is not None, reason=str(_r_available()))


def run_r(code: str, tmp_path: Path) -> dict[str, float]:
    """Run R ``code`` that calls ``out(name, value)``; the printed values by name."""
    script = tmp_path / "check.R"
    script.write_text(
        "suppressMessages(library(pROC))\n"
        "out <- function(name, value) cat(name, format(value, digits = 17), '\\n')\n"
        + textwrap.dedent(code)
    )
    result = subprocess.run(
        ["Rscript", str(script)], capture_output=True, text=True, check=True, cwd=tmp_path
    )
    values = {}
    for line in result.stdout.splitlines():
        name, value = line.split()
        values[name] = float(value)
    return values


# --------------------------------------------------------------------------- aSAH
@pytest.fixture(scope="module")
def asah(tmp_path_factory) -> dict[str, np.ndarray]:
    """pROC's aSAH data, exported from R (113 patients, outcome Good / Poor)."""
    folder = tmp_path_factory.mktemp("asah")
    subprocess.run(
        ["Rscript", "-e", "library(pROC); data(aSAH); write.csv(aSAH, 'asah.csv', row.names=FALSE)"],
        capture_output=True, check=True, cwd=folder,
    )  # fmt: skip
    with (folder / "asah.csv").open() as handle:
        rows = list(csv.DictReader(handle))
    return {
        "poor": np.array([r["outcome"] == "Poor" for r in rows], int),
        "s100b": np.array([float(r["s100b"]) for r in rows]),
        "ndka": np.array([float(r["ndka"]) for r in rows]),
        "wfns": np.array([float(r["wfns"]) for r in rows]),
        "male": np.array([r["gender"] == "Male" for r in rows]),
    }


R_ASAH = """
data(aSAH)
r1 <- roc(aSAH$outcome, aSAH$s100b, levels = c("Good", "Poor"), direction = "<")
r2 <- roc(aSAH$outcome, aSAH$ndka, levels = c("Good", "Poor"), direction = "<")
r3 <- roc(aSAH$outcome, aSAH$wfns, levels = c("Good", "Poor"), direction = "<")
for (p in list(list("s100b", r1), list("ndka", r2), list("wfns", r3))) {
  ci <- ci.auc(p[[2]], method = "delong")
  out(paste0(p[[1]], "_auc"), as.numeric(auc(p[[2]])))
  out(paste0(p[[1]], "_low"), ci[1]); out(paste0(p[[1]], "_high"), ci[3])
}
t <- roc.test(r1, r2, method = "delong", paired = TRUE)
out("paired_z", t$statistic); out("paired_p", t$p.value)
t <- roc.test(r1, r3, method = "delong", paired = TRUE)
out("paired13_z", t$statistic); out("paired13_p", t$p.value)
m <- aSAH$gender == "Male"
rm <- roc(aSAH$outcome[m], aSAH$s100b[m], levels = c("Good", "Poor"), direction = "<")
rf <- roc(aSAH$outcome[!m], aSAH$s100b[!m], levels = c("Good", "Poor"), direction = "<")
t <- roc.test(rm, rf, method = "delong", paired = FALSE)
out("unpaired_z", t$statistic); out("unpaired_p", t$p.value)
b <- coords(r1, "best", best.method = "youden", ret = c("threshold", "sensitivity", "specificity"),
            transpose = FALSE)
out("youden_threshold", b$threshold[1]); out("youden_sens", b$sensitivity[1])
out("youden_spec", b$specificity[1])
"""


def test_auc_delong_ci_and_tests_equal_proc_on_asah(asah, tmp_path) -> None:
    r = run_r(R_ASAH, tmp_path)
    y = asah["poor"]
    for name in ("s100b", "ndka", "wfns"):
        est = auc_delong(y, asah[name])
        assert est.auc == pytest.approx(r[f"{name}_auc"], abs=1e-6)
        assert est.low == pytest.approx(r[f"{name}_low"], abs=1e-6)
        assert est.high == pytest.approx(r[f"{name}_high"], abs=1e-6)
    for key, other in (("paired", "ndka"), ("paired13", "wfns")):
        t = delong_paired(y, asah["s100b"], asah[other])
        assert t.z == pytest.approx(r[f"{key}_z"], abs=1e-6)
        assert t.p == pytest.approx(r[f"{key}_p"], abs=1e-6)
    m = asah["male"]
    t = delong_unpaired(y[m], asah["s100b"][m], y[~m], asah["s100b"][~m])
    assert t.z == pytest.approx(r["unpaired_z"], abs=1e-6)
    assert t.p == pytest.approx(r["unpaired_p"], abs=1e-6)
    threshold = youden_threshold(y, asah["s100b"])
    assert threshold == pytest.approx(r["youden_threshold"], abs=1e-9)
    d = diagnostic_metrics(y, asah["s100b"], threshold)
    assert d.sensitivity.value == pytest.approx(r["youden_sens"], abs=1e-12)
    assert d.specificity.value == pytest.approx(r["youden_spec"], abs=1e-12)


# --------------------------------------------------------------------------- random data sets
def _data_sets() -> dict[str, tuple[np.ndarray, np.ndarray, np.ndarray]]:
    """name -> (labels 0/1, score 1, score 2)."""
    rng = np.random.default_rng(7)
    sets = {}
    y = rng.integers(0, 2, 80)
    sets["ties"] = (y, rng.integers(0, 6, 80) + y, rng.integers(0, 4, 80) + 2 * y)
    y = np.r_[np.zeros(30, int), np.ones(25, int)]
    sets["perfect"] = (y, np.r_[rng.uniform(0, 1, 30), rng.uniform(2, 3, 25)], rng.normal(y, 1.0))
    y = np.r_[np.zeros(40, int), np.ones(3, int)]
    sets["three_positives"] = (y, rng.normal(y * 1.2, 1.0), rng.normal(y * 0.4, 1.0))
    y = rng.integers(0, 2, 200)
    sets["continuous"] = (y, rng.normal(y * 0.8, 1.0), rng.normal(y * 1.1, 1.3))
    return sets


@pytest.mark.parametrize("name", sorted(_data_sets()))
def test_random_data_sets_equal_proc(name: str, tmp_path) -> None:
    y, s1, s2 = _data_sets()[name]
    np.savetxt(tmp_path / "d.csv", np.c_[y, s1, s2], delimiter=",", header="y,s1,s2", comments="")
    r = run_r(
        """
        d <- read.csv("d.csv")
        r1 <- roc(d$y, d$s1, levels = c(0, 1), direction = "<")
        r2 <- roc(d$y, d$s2, levels = c(0, 1), direction = "<")
        ci <- ci.auc(r1, method = "delong")
        out("auc", as.numeric(auc(r1))); out("low", ci[1]); out("high", ci[3])
        t <- roc.test(r1, r2, method = "delong", paired = TRUE)
        out("z", t$statistic); out("p", t$p.value)
        """,
        tmp_path,
    )
    est = auc_delong(y, s1)
    assert est.auc == pytest.approx(r["auc"], abs=1e-6)
    assert est.low == pytest.approx(r["low"], abs=1e-6)
    assert est.high == pytest.approx(r["high"], abs=1e-6)
    t = delong_paired(y, s1, s2)
    if np.isfinite(r["z"]):
        assert t.z == pytest.approx(r["z"], abs=1e-6)
    assert t.p == pytest.approx(r["p"], abs=1e-6)


def test_hand_till_with_a_class_of_three_cases_equals_proc(tmp_path) -> None:
    rng = np.random.default_rng(3)
    labels = np.r_[np.zeros(30, int), np.ones(20, int), np.full(3, 2), np.full(15, 3)]
    probs = rng.dirichlet(np.ones(4), size=labels.size)
    probs[np.arange(labels.size), labels] += 0.3
    probs = np.round(probs / probs.sum(1, keepdims=True), 2)  # rounding makes ties
    cols = ",".join(f"p{c}" for c in range(4))
    np.savetxt(tmp_path / "m.csv", np.c_[labels, probs], delimiter=",", header=f"y,{cols}",
               comments="", fmt="%.10g")  # fmt: skip
    r = run_r(
        """
        d <- read.csv("m.csv")
        p <- as.matrix(d[, -1]); colnames(p) <- c("0", "1", "2", "3")
        out("ht", as.numeric(multiclass.roc(factor(d$y), p)$auc))
        """,
        tmp_path,
    )
    assert metrics.hand_till_auc(labels, probs) == pytest.approx(r["ht"], abs=1e-9)


# --------------------------------------------------------------------------- proportions, McNemar
@pytest.mark.parametrize("x, n", [(0, 10), (3, 10), (10, 10), (47, 113), (1, 1), (250, 300)])
def test_proportion_intervals_equal_r(x: int, n: int, tmp_path) -> None:
    r = run_r(
        f"""
        w <- prop.test({x}, {n}, correct = FALSE)$conf.int
        e <- binom.test({x}, {n})$conf.int
        out("w_low", w[1]); out("w_high", w[2]); out("e_low", e[1]); out("e_high", e[2])
        """,
        tmp_path,
    )
    wilson = proportion_ci(x, n, "wilson")
    exact = proportion_ci(x, n, "clopper-pearson")
    assert wilson.low == pytest.approx(r["w_low"], abs=1e-9)
    assert wilson.high == pytest.approx(r["w_high"], abs=1e-9)
    assert exact.low == pytest.approx(r["e_low"], abs=1e-9)
    assert exact.high == pytest.approx(r["e_high"], abs=1e-9)


@pytest.mark.parametrize("b, c", [(10, 3), (0, 5), (7, 7), (1, 0), (40, 25)])
def test_mcnemar_equals_r(b: int, c: int, tmp_path) -> None:
    # a paired design: b cases only the first system got right, c only the second, 20 both
    first = np.r_[np.ones(b, bool), np.zeros(c, bool), np.ones(20, bool), np.zeros(5, bool)]
    second = np.r_[np.zeros(b, bool), np.ones(c, bool), np.ones(20, bool), np.zeros(5, bool)]
    r = run_r(
        f"""
        t <- matrix(c(20, {c}, {b}, 5), nrow = 2)
        m <- mcnemar.test(t, correct = TRUE)
        out("chi2", m$statistic); out("p", m$p.value)
        out("exact", binom.test({b}, {b + c})$p.value)
        """,
        tmp_path,
    )
    result = mcnemar(first, second)
    assert result.chi2 == pytest.approx(r["chi2"], abs=1e-9)
    assert result.p_chi2 == pytest.approx(r["p"], abs=1e-9)
    assert result.p_exact == pytest.approx(r["exact"], abs=1e-9)


# --------------------------------------------------------------------------- the reader study
R_READERS = """
d <- read.csv("readers.csv")
for (side in c("m", "b")) {
  y <- if (side == "m") d$y else 1 - d$y
  flip <- function(v) if (side == "m") v else 1 - v
  rm <- roc(y, flip(d$s), levels = c(0, 1), direction = "<")
  r1 <- roc(y, flip(d$c1), levels = c(0, 1), direction = "<")
  r2 <- roc(y, flip(d$c2), levels = c(0, 1), direction = "<")
  for (k in 1:2) {
    r <- if (k == 1) r1 else r2
    t <- roc.test(rm, r, method = "delong", paired = TRUE)
    ci <- ci.auc(r, method = "delong")
    out(paste0(side, "_z", k), t$statistic); out(paste0(side, "_p", k), t$p.value)
    out(paste0(side, "_auc", k), as.numeric(auc(r)))
    out(paste0(side, "_low", k), ci[1]); out(paste0(side, "_high", k), ci[3])
  }
  # the model against the mean of the two readers: the DeLong variance of the contrast
  v <- var(rm, method = "delong") + (var(r1, method = "delong") + var(r2, method = "delong")) / 4 -
    cov(rm, r1, method = "delong") - cov(rm, r2, method = "delong") +
    cov(r1, r2, method = "delong") / 2
  z <- (as.numeric(auc(rm)) - (as.numeric(auc(r1)) + as.numeric(auc(r2))) / 2) / sqrt(v)
  out(paste0(side, "_group_z"), z); out(paste0(side, "_group_p"), 2 * pnorm(-abs(z)))
  vg <- (var(r1, method = "delong") + var(r2, method = "delong") +
         2 * cov(r1, r2, method = "delong")) / 4
  g <- (as.numeric(auc(r1)) + as.numeric(auc(r2))) / 2
  out(paste0(side, "_group_auc"), g)
  out(paste0(side, "_group_low"), g - qnorm(0.975) * sqrt(vg))
  out(paste0(side, "_group_high"), g + qnorm(0.975) * sqrt(vg))
}
"""


@pytest.mark.parametrize("positive", ["malignant", "benign"])
def test_reader_delong_with_calls_as_scores_equals_proc(positive: str, tmp_path) -> None:
    """The reader study's DeLong tests (model against each reader, and against the mean of a
    group's readers) with 0/1 calls as the readers' scores, through analyse_readers, equal
    pROC's roc.test (paired) on a binary predictor and pROC's var / cov of the contrast."""
    from dmfn.contract.taxonomy import load_taxonomy
    from dmfn.evaluation.analysis import SystemScores
    from dmfn.evaluation.readers import ReaderCall, analyse_readers

    rng = np.random.default_rng(11)
    n = 160
    y = (rng.random(n) < 0.45).astype(int)
    model_prob = 1.0 / (1.0 + np.exp(-rng.normal(0.6 * (2.0 * y - 1.0), 1.2)))  # p ~ 0.02-0.06
    shared = rng.normal(0.0, 0.8, n)  # the group's case effect: the two readers correlate
    calls = [(rng.normal(1.2 * y + shared, 1.0) > 0.6).astype(int) for _ in range(2)]
    np.savetxt(tmp_path / "readers.csv", np.c_[y, model_prob, *calls], delimiter=",",
               header="y,s,c1,c2", comments="", fmt="%.17g")  # fmt: skip
    r = run_r(R_READERS, tmp_path)
    ids = tuple(f"P{i}" for i in range(n))
    model = SystemScores("model", ids, y, model_prob, None, None, ())
    rows = [
        ReaderCall(f"chief_{k + 1}", "chief", ids[i], "ct_only", bool(c[i]), None, None, None,
                   False, 2 + i)
        for k, c in enumerate(calls) for i in range(n)
    ]  # fmt: skip
    result = analyse_readers(rows, model, load_taxonomy(), 0.5, positive=positive, n_boot=200)
    session = result["sessions"]["ct_only"]
    side = "m" if positive == "malignant" else "b"
    for k in (1, 2):
        reader = session["readers"][f"chief_{k}"]
        assert reader["auc_from"] == "call"
        assert reader["auc"]["auc"] == pytest.approx(r[f"{side}_auc{k}"], abs=1e-6)
        assert reader["auc"]["ci_low"] == pytest.approx(r[f"{side}_low{k}"], abs=1e-6)
        assert reader["auc"]["ci_high"] == pytest.approx(r[f"{side}_high{k}"], abs=1e-6)
        test = reader["model_vs_reader_delong"]
        assert test["z"] == pytest.approx(r[f"{side}_z{k}"], abs=1e-6)
        assert test["p"] == pytest.approx(r[f"{side}_p{k}"], abs=1e-6)
        # the AUC of a call is (sensitivity + specificity) / 2
        sens, spec = reader["sensitivity"]["value"], reader["specificity"]["value"]
        assert reader["auc"]["auc"] == pytest.approx((sens + spec) / 2, abs=1e-12)
    group = session["groups"]["chief"]
    assert group["auc"]["auc"] == pytest.approx(r[f"{side}_group_auc"], abs=1e-6)
    assert group["auc"]["ci_low"] == pytest.approx(r[f"{side}_group_low"], abs=1e-6)
    assert group["auc"]["ci_high"] == pytest.approx(r[f"{side}_group_high"], abs=1e-6)
    assert group["model_vs_group_delong"]["z"] == pytest.approx(r[f"{side}_group_z"], abs=1e-6)
    assert group["model_vs_group_delong"]["p"] == pytest.approx(r[f"{side}_group_p"], abs=1e-6)


@pytest.mark.parametrize("seed", [0, 1])
def test_calibration_slope_and_intercept_equal_r_glm(seed: int, tmp_path) -> None:
    """The calibration slope and calibration-in-the-large of dmfn evaluate equal R's
    ``glm(y ~ qlogis(p), binomial)`` and ``glm(y ~ offset(qlogis(p)), binomial)`` (both fitted
    to convergence: within 1e-9)."""
    from dmfn.evaluation.calibration import calibration_summary

    rng = np.random.default_rng(seed)
    p = rng.uniform(0.02, 0.98, 150)
    y = (rng.uniform(size=150) < p**1.4).astype(int)
    np.savetxt(tmp_path / "cal.csv", np.column_stack([y, p]), delimiter=",", fmt="%.17g",
               header="y,p", comments="")  # fmt: skip
    r = run_r(
        """
        d <- read.csv("cal.csv")
        tight <- glm.control(epsilon = 1e-14, maxit = 100)  # R's default stops at 1e-8
        out("slope", coef(glm(y ~ qlogis(p), binomial, d, control = tight))[[2]])
        out("intercept", coef(glm(y ~ 1 + offset(qlogis(p)), binomial, d, control = tight))[[1]])
        """,
        tmp_path,
    )
    ours = calibration_summary(y, p)
    assert ours["slope"] == pytest.approx(r["slope"], abs=1e-9)
    assert ours["intercept"] == pytest.approx(r["intercept"], abs=1e-9)
