"""The report's figures (matplotlib, no display): ROC curves with a confidence band and readers as
points, one-vs-rest ROC per class, the confusion matrix, the reliability diagram and CTC levels per
class. Each function writes one PNG and returns its path."""

from __future__ import annotations

import textwrap
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from itertools import pairwise
from pathlib import Path
from typing import Any

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt
import numpy as np

from dmfn.contract.outfile import replacing

from .analysis import SystemScores
from .roc import roc_curve

DPI = 130
#: The report's figures: key (in ``metrics.json``'s ``figures``) -> file name in the output folder.
FIGURE_FILES: dict[str, str] = {
    "flow": "flow.png",
    "roc": "roc.png",
    "roc_per_class": "roc_per_class.png",
    "confusion": "confusion.png",
    "calibration": "calibration.png",
    "calibration_binary": "calibration_binary.png",
    "decision_curve": "decision_curve.png",
    "subgroups": "subgroups.png",
    "ctc": "ctc_by_class.png",
    "seeds": "seeds.png",
}
#: What each figure shows, in a sentence (the report's captions).
FIGURE_CAPTIONS: dict[str, str] = {
    "flow": "Flow of patients and images from the manifest to the analysis, with the reasons "
    "for each exclusion (STARD 2015).",
    "roc": "ROC curve of each system (the first with its stratified-bootstrap 95 % band), each "
    "system's operating point at its threshold, and the readers' operating points with their "
    "95 % intervals.",
    "roc_per_class": "One-vs-rest ROC curve of each class present, first system.",
    "confusion": "Confusion matrix of the first system's top-1 class, rows normalised to the "
    "true class, counts in the cells.",
    "calibration": "Reliability diagram of the top-class confidence, with the patients per bin, "
    "as given and after the temperature fitted on validation.",
    "calibration_binary": "Calibration curve of the positive class's probability: observed "
    "share per bin with its 95 % interval, and the histogram of predictions by true class.",
    "decision_curve": "Decision curve: net benefit against the threshold probability for each "
    "system, treating every patient and treating none.",
    "subgroups": "Binary AUC per subgroup with its DeLong 95 % interval, and the overall AUC.",
    "ctc": "CTC level per class of the evaluated patients.",
    "seeds": "Binary AUC of each training run (seed) with its DeLong 95 % interval, and the seed "
    "ensemble.",
}
#: Specificities at which the bootstrap band of the ROC curve is drawn.
BAND_GRID = np.linspace(0.0, 1.0, 101)


def figure_title(fig: Any) -> str:
    """The figure's title and its axes' titles, as one line (stored in the PNG's ``Title``)."""
    parts = [fig._suptitle.get_text()] if fig._suptitle is not None else []
    parts += [ax.get_title() for ax in fig.axes]
    return " | ".join(" ".join(t.split()) for t in parts if t.strip())


def _save(fig: Any, path: Path) -> Path:
    """Write ``fig`` as a PNG to ``path``, whole or not at all, and close it. The PNG's
    ``Title`` text chunk holds the figure's titles (what a reader or a test can check without
    looking at the pixels)."""
    try:
        with replacing(path, binary=True) as handle:
            fig.savefig(handle, dpi=DPI, format="png", metadata={"Title": figure_title(fig)})
    finally:
        plt.close(fig)
    return path


def _sensitivity_band(y: np.ndarray, score: np.ndarray, n_boot: int, seed: int):
    """2.5 / 97.5 % sensitivity at each false positive rate of BAND_GRID (stratified bootstrap)."""
    rng = np.random.default_rng(seed)
    pos, neg = np.flatnonzero(y == 1), np.flatnonzero(y == 0)
    curves = []
    for _ in range(n_boot):
        idx = np.r_[
            pos[rng.integers(0, pos.size, pos.size)], neg[rng.integers(0, neg.size, neg.size)]
        ]
        c = roc_curve(y[idx], score[idx])
        curves.append(np.interp(BAND_GRID, c.fpr, c.tpr))
    return np.quantile(curves, [0.025, 0.975], axis=0)


def _bars(value: Any, low: Any, high: Any) -> np.ndarray:
    """matplotlib's error bars [2, n] (below, above) of estimates with intervals; none negative
    (a percentile interval may miss its estimate by rounding)."""
    return np.maximum(np.reshape([np.subtract(value, low), np.subtract(high, value)], (2, -1)), 0)


@dataclass(frozen=True)
class ReaderPoint:
    """A reader group's operating point: (value, CI low, CI high) of sensitivity and of
    specificity."""

    label: str
    sensitivity: tuple[float, float, float]
    specificity: tuple[float, float, float]


def binary_roc(
    path: Path,
    systems: Sequence[SystemScores],
    positive: str,
    aucs: Mapping[str, Mapping[str, float]],
    readers: Sequence[ReaderPoint] = (),
    n_boot: int = 200,
    seed: int = 0,
    title: str = "",
    operating: Mapping[str, tuple[float, float, float]] | None = None,
) -> Path:
    """ROC curves of ``systems`` (the first with its bootstrap 95 % band); ``readers`` as points
    with their 95 % intervals as error bars; ``operating``: system name -> (threshold,
    sensitivity, specificity) of its decision threshold, drawn as a cross on its curve."""
    fig, ax = plt.subplots(figsize=(6.2, 6.0))
    for i, s in enumerate(systems):
        y, score = s.binary(positive)
        c = roc_curve(y, score)
        a = aucs[s.name]
        label = f"{s.name}: AUC {a['auc']:.3f} [{a['ci_low']:.3f}, {a['ci_high']:.3f}]"
        (line,) = ax.plot(c.fpr, c.tpr, lw=2, label=label, drawstyle="steps-post")
        if i == 0:
            low, high = _sensitivity_band(y, score, n_boot, seed)
            ax.fill_between(BAND_GRID, low, high, color=line.get_color(), alpha=0.15,
                            label=f"{s.name}: 95 % bootstrap band")  # fmt: skip
        if operating and s.name in operating:
            t, sens, spec = operating[s.name]
            ax.plot(1 - spec, sens, "X", ms=10, color=line.get_color(), mec="k",
                    label=f"{s.name} at threshold {t:.2f}")  # fmt: skip
    markers = "osD^v<>"
    for k, r in enumerate(readers):
        x = 1 - r.specificity[0]
        xerr = _bars(*r.specificity)[::-1]  # the x axis is 1 - specificity: the bars swap
        yerr = _bars(*r.sensitivity)
        ax.errorbar(x, r.sensitivity[0], xerr=xerr, yerr=yerr, fmt=markers[k % len(markers)],
                    ms=8, mec="k", capsize=3, elinewidth=1, label=f"{r.label} (95 % CI)")  # fmt: skip
    ax.plot([0, 1], [0, 1], ls=":", color="grey", lw=1)
    ax.set_xlabel(f"1 - specificity (false positive rate; positive = {positive})")
    ax.set_ylabel("sensitivity (true positive rate)")
    ax.set_xlim(-0.01, 1.01)
    ax.set_ylim(-0.01, 1.01)
    ax.set_aspect("equal")
    ax.set_title(title or f"ROC, {positive} as positive (patient level)")
    ax.legend(loc="lower right", fontsize=7.5)
    fig.tight_layout()
    return _save(fig, path)


def per_class_roc(
    path: Path, s: SystemScores, per_class: Mapping[str, Mapping[str, float]], population: str
) -> Path:
    """One-vs-rest ROC of each class present (two panels of at most 10 classes each)."""
    assert s.probs is not None and s.classes is not None
    names = [n for n in s.class_names if n in per_class]
    halves = [names[: (len(names) + 1) // 2], names[(len(names) + 1) // 2 :]]
    fig, axes = plt.subplots(1, 2, figsize=(12.5, 6.0))
    for ax, group in zip(axes, halves, strict=True):
        for name in group:
            c_index = s.class_names.index(name)
            c = roc_curve((s.classes == c_index).astype(int), s.probs[:, c_index])
            ax.plot(c.fpr, c.tpr, lw=1.4, drawstyle="steps-post",
                    label=f"{name} ({per_class[name]['auc']:.2f})")  # fmt: skip
        ax.plot([0, 1], [0, 1], ls=":", color="grey", lw=1)
        ax.set_xlabel("1 - specificity")
        ax.set_ylabel("sensitivity")
        ax.set_aspect("equal")
        ax.legend(loc="lower right", fontsize=7)
    fig.suptitle(f"{s.name}: one-vs-rest ROC per class (AUC in brackets)\n{population}")
    fig.tight_layout()
    return _save(fig, path)


def confusion(
    path: Path, counts: Sequence[Sequence[int]], classes: Sequence[str], title: str
) -> Path:
    """Row-normalised confusion matrix heat map with the counts written in the cells."""
    m = np.asarray(counts, dtype=float)
    keep = (m.sum(axis=1) + m.sum(axis=0)) > 0
    m, names = m[keep][:, keep], [c for c, k in zip(classes, keep, strict=True) if k]
    rows = m / np.maximum(m.sum(axis=1, keepdims=True), 1)
    size = max(6.0, 0.42 * len(names) + 2.5)
    fig, ax = plt.subplots(figsize=(size + 1.2, size))
    image = ax.imshow(rows, cmap="Blues", vmin=0, vmax=1)
    ax.set_xticks(range(len(names)), names, rotation=60, ha="right", fontsize=8)
    ax.set_yticks(range(len(names)), names, fontsize=8)
    ax.set_xlabel("predicted class")
    ax.set_ylabel("true class")
    for i in range(len(names)):
        for j in range(len(names)):
            if m[i, j]:
                ax.text(j, i, str(int(m[i, j])), ha="center", va="center", fontsize=7,
                        color="white" if rows[i, j] > 0.6 else "black")  # fmt: skip
    fig.colorbar(image, ax=ax, fraction=0.046, label="share of the true class")
    ax.set_title(title)
    fig.tight_layout()
    return _save(fig, path)


def reliability(
    path: Path, curves: Mapping[str, Sequence[Mapping[str, float]]], population: str
) -> Path:
    """Reliability diagram: accuracy against confidence per bin, one line per curve, the first
    curve's patients per bin written beside its points."""
    fig, ax = plt.subplots(figsize=(6.0, 6.0))
    for i, (label, bins) in enumerate(curves.items()):
        xs = [b["confidence"] for b in bins if b["n"]]
        ys = [b["accuracy"] for b in bins if b["n"]]
        ax.plot(xs, ys, "o-", label=label)
        if i == 0:
            for b in bins:
                if b["n"]:
                    ax.annotate(f"n={int(b['n'])}", (b["confidence"], b["accuracy"]), fontsize=7,
                                xytext=(4, -10), textcoords="offset points")  # fmt: skip
    ax.plot([0, 1], [0, 1], ls=":", color="grey", lw=1, label="perfect calibration")
    ax.set_xlabel("confidence of the top class")
    ax.set_ylabel("accuracy")
    ax.set_xlim(0, 1)
    ax.set_ylim(0, 1)
    ax.set_aspect("equal")
    ax.legend(loc="upper left", fontsize=8)
    ax.set_title(f"Reliability of the top class (patient level)\n{population}", fontsize=10)
    fig.tight_layout()
    return _save(fig, path)


def ctc_by_class(
    path: Path, values: Mapping[str, Sequence[float]], population: str, unit: str = "pg/ml"
) -> Path:
    """Box plots of the CTC level per class (classes with at least one patient; n per class in
    the tick labels)."""
    names = [n for n, v in values.items() if len(v)]
    fig, ax = plt.subplots(figsize=(max(7.0, 0.5 * len(names) + 2), 5.5))
    ax.boxplot([values[n] for n in names], showfliers=True)
    ticks = [f"{n} (n={len(values[n])})" for n in names]
    ax.set_xticks(range(1, len(names) + 1), ticks, rotation=60, ha="right", fontsize=8)
    ax.set_ylabel(f"CTC level ({unit})")
    ax.set_title(f"CTC level per class\n{population}", fontsize=10)
    fig.tight_layout()
    return _save(fig, path)


def forest(
    path: Path,
    rows: Sequence[tuple[str, float, float, float, bool]],
    title: str,
    reference: float | None = None,
) -> Path:
    """Forest plot: one line per (label, estimate, low, high, emphasised), top to bottom (NaN
    bounds: the estimate alone); ``reference``: a dashed vertical line (e.g. the overall AUC)."""
    fig, ax = plt.subplots(figsize=(7.0, 0.32 * len(rows) + 1.6))
    ys = np.arange(len(rows))[::-1]
    for y, (_label, value, low, high, bold) in zip(ys, rows, strict=True):
        if np.isfinite(low) and np.isfinite(high):
            ax.plot([low, high], [y, y], color="k", lw=1.2)
        ax.plot(value, y, "D" if bold else "s", color="C3" if bold else "C0", ms=7 if bold else 5)
    if reference is not None:
        ax.axvline(reference, ls="--", color="C3", lw=1)
    ax.set_yticks(ys, [r[0] for r in rows], fontsize=8)
    ax.set_xlabel("AUC")
    ax.grid(axis="x", alpha=0.3)
    ax.set_title(title, fontsize=10)
    fig.tight_layout()
    return _save(fig, path)


def binary_calibration(
    path: Path, curve: Sequence[Mapping[str, float]], positive: str, name: str, population: str
) -> Path:
    """Calibration curve of the positive class's probability (observed share per bin with its
    interval, the patients per bin written beside each point) over a histogram of the
    predictions split by the true class."""
    fig, (ax, hist) = plt.subplots(2, 1, figsize=(6.0, 7.4), sharex=True,
                                   gridspec_kw={"height_ratios": [3, 1]})  # fmt: skip
    bins = [b for b in curve if b["n"]]
    x = np.array([b["predicted"] for b in bins])
    y = np.array([b["observed"] for b in bins])
    err = _bars(y, np.array([b["ci_low"] for b in bins]), np.array([b["ci_high"] for b in bins]))
    ax.errorbar(x, y, yerr=err, fmt="o-", capsize=3, label=f"{name} (95 % CI per bin)")
    for b in bins:
        ax.annotate(f"n={int(b['n'])}", (b["predicted"], b["observed"]), fontsize=7,
                    xytext=(4, -10), textcoords="offset points")  # fmt: skip
    ax.plot([0, 1], [0, 1], ls=":", color="grey", lw=1, label="perfect calibration")
    ax.set_ylabel(f"observed share of {positive} patients")
    ax.set_xlim(0, 1)
    ax.set_ylim(-0.02, 1.02)
    ax.legend(loc="upper left", fontsize=8)
    ax.set_title(f"Calibration of the {positive} probability\n{population}", fontsize=10)
    lows = [b["low"] for b in curve]
    widths = [b["high"] - b["low"] for b in curve]
    positives = np.array([b["positives"] for b in curve])
    negatives = np.array([b["negatives"] for b in curve])
    hist.bar(lows, positives, widths, align="edge", color="C3", alpha=0.7, label=positive)
    hist.bar(lows, negatives, widths, bottom=positives, align="edge", color="C0", alpha=0.5,
             label=f"not {positive}")  # fmt: skip
    hist.set_xlabel(f"predicted {positive} probability")
    hist.set_ylabel("patients")
    hist.legend(loc="upper center", fontsize=7, ncol=2)
    fig.tight_layout()
    return _save(fig, path)


def decision_curve(path: Path, curves: Mapping[str, Any], positive: str, population: str) -> Path:
    """Net benefit against threshold probability: each system, treat all, treat none."""
    fig, ax = plt.subplots(figsize=(6.6, 5.2))
    t = np.asarray(curves["thresholds"])
    for name, values in curves["systems"].items():
        ax.plot(t, values, lw=2, label=name)
    treat_all = np.asarray(curves["treat_all"])
    ax.plot(t, treat_all, color="grey", lw=1.2, label=f"treat all as {positive}")
    ax.axhline(0.0, color="k", lw=1, ls="--", label="treat none")
    prevalence = curves["n_positive"] / curves["n"]
    ax.set_ylim(-0.05, max(prevalence, 0.05) * 1.1)
    ax.set_xlim(0, 1)
    ax.set_xlabel(f"threshold probability (act when the {positive} probability reaches it)")
    ax.set_ylabel("net benefit")
    ax.legend(loc="upper right", fontsize=8)
    ax.set_title(f"Decision curve (Vickers & Elkin 2006)\n{population}", fontsize=10)
    fig.tight_layout()
    return _save(fig, path)


def flow_diagram(path: Path, flow: Mapping[str, Any]) -> Path:
    """The STARD flow as boxes: manifest -> predicted -> analysed, exclusions to the side."""
    fig, ax = plt.subplots(figsize=(7.6, 5.4))
    ax.set_axis_off()
    ax.set_xlim(0, 1)
    ax.set_ylim(0, 1)
    box = {"boxstyle": "round,pad=0.5", "fc": "#eef3fb", "ec": "#335"}
    side = {"boxstyle": "round,pad=0.5", "fc": "#fff3cd", "ec": "#a80"}
    where = f"{flow['split']} split" if flow["split"] else "every split"
    steps = []
    if "manifest" in flow:
        m = flow["manifest"]
        steps.append(f"Manifest ({where})\n{m['patients']} patients, {m['images']} images")
    p, e = flow["predicted"], flow["excluded"]
    steps.append(f"Predicted\n{p['patients']} patients, {p['images']} images")
    steps.append(f"Analysed\n{flow['analysed']['patients']} patients")
    ys = np.linspace(0.85, 0.12, len(steps))
    for y, text in zip(ys, steps, strict=True):
        ax.text(0.3, y, text, ha="center", va="center", fontsize=10, bbox=box)
    for upper, lower in pairwise(ys):
        ax.annotate("", (0.3, lower + 0.07), (0.3, upper - 0.07),
                    arrowprops={"arrowstyle": "->", "lw": 1.4})  # fmt: skip
    reasons = "\n".join(
        textwrap.shorten(f"{n} x {r}", 60, placeholder=" ...")
        for r, n in list(e["reasons"].items())[:6]
    )
    excluded = (
        f"Excluded: {e['images']} images\n"
        f"({e['patients_without_any_prediction']} patients without any prediction)"
    )
    if reasons:
        excluded += "\n" + reasons
    y_side = (ys[0] + ys[1]) / 2 if len(ys) > 2 else ys[0]
    ax.text(0.5, y_side, excluded, ha="left", va="center", fontsize=8, bbox=side)
    ax.annotate("", (0.48, y_side), (0.3, y_side), arrowprops={"arrowstyle": "->", "lw": 1.0})
    ax.set_title(f"Flow of patients (STARD)\n{where}, n = {flow['analysed']['patients']} patients analysed",
                 fontsize=10)  # fmt: skip
    fig.tight_layout()
    return _save(fig, path)
