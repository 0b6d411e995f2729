"""The report's figures (matplotlib, no display): ROC curves with a confidence band and readers as
points, one-vs-rest ROC per class, the confusion matrix, the reliability diagram and CTC levels per
class. Each function writes one PNG and returns its path."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
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
    "roc": "roc.png",
    "roc_per_class": "roc_per_class.png",
    "confusion": "confusion.png",
    "calibration": "calibration.png",
    "ctc": "ctc_by_class.png",
    "seeds": "seeds.png",
}
#: Specificities at which the bootstrap band of the ROC curve is drawn.
BAND_GRID = np.linspace(0.0, 1.0, 101)


def _save(fig: Any, path: Path) -> Path:
    """Write ``fig`` as a PNG to ``path``, whole or not at all, and close it."""
    try:
        with replacing(path, binary=True) as handle:
            fig.savefig(handle, dpi=DPI, format="png")
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


def binary_roc(
    path: Path,
    systems: Sequence[SystemScores],
    positive: str,
    aucs: Mapping[str, Mapping[str, float]],
    readers: Sequence[tuple[str, float, float]] = (),
    n_boot: int = 200,
    seed: int = 0,
    title: str = "",
    operating: Mapping[str, tuple[float, float, float]] | None = None,
) -> Path:
    """ROC curves of ``systems`` (the first with its bootstrap 95 % band); ``readers`` as points
    (label, sensitivity, specificity); ``operating``: system name -> (threshold, sensitivity,
    specificity) of its decision threshold, drawn as a cross on its curve."""
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
    for k, (name, sens, spec) in enumerate(readers):
        ax.plot(1 - spec, sens, markers[k % len(markers)], ms=8, mec="k", label=name)
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
    path: Path, s: SystemScores, per_class: Mapping[str, Mapping[str, float]]
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
    fig.suptitle(f"{s.name}: one-vs-rest ROC per class (AUC in brackets)")
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


def reliability(path: Path, curves: Mapping[str, Sequence[Mapping[str, float]]]) -> Path:
    """Reliability diagram: accuracy against confidence per bin, one line per curve."""
    fig, ax = plt.subplots(figsize=(6.0, 6.0))
    for label, bins in curves.items():
        xs = [b["confidence"] for b in bins if b["n"]]
        ys = [b["accuracy"] for b in bins if b["n"]]
        ax.plot(xs, ys, "o-", label=label)
    ax.plot([0, 1], [0, 1], ls=":", color="grey", lw=1, label="perfect calibration")
    ax.set_xlabel("confidence of the top class")
    ax.set_ylabel("accuracy")
    ax.set_xlim(0, 1)
    ax.set_ylim(0, 1)
    ax.set_aspect("equal")
    ax.legend(loc="upper left", fontsize=8)
    ax.set_title("Reliability diagram (patient level)")
    fig.tight_layout()
    return _save(fig, path)


def ctc_by_class(path: Path, values: Mapping[str, Sequence[float]], unit: str = "pg/ml") -> Path:
    """Box plots of the CTC level per class (classes with at least one patient; n per class in
    the tick labels)."""
    names = [n for n, v in values.items() if len(v)]
    fig, ax = plt.subplots(figsize=(max(7.0, 0.5 * len(names) + 2), 5.5))
    ax.boxplot([values[n] for n in names], showfliers=True)
    ticks = [f"{n} (n={len(values[n])})" for n in names]
    ax.set_xticks(range(1, len(names) + 1), ticks, rotation=60, ha="right", fontsize=8)
    ax.set_ylabel(f"CTC level ({unit})")
    ax.set_title("CTC level per class")
    fig.tight_layout()
    return _save(fig, path)


def forest(path: Path, rows: Sequence[tuple[str, float, float, float, bool]], title: str) -> Path:
    """Forest plot: one line per (label, estimate, low, high, emphasised), top to bottom."""
    fig, ax = plt.subplots(figsize=(7.0, 0.32 * len(rows) + 1.4))
    ys = np.arange(len(rows))[::-1]
    for y, (_label, value, low, high, bold) in zip(ys, rows, strict=True):
        ax.plot([low, high], [y, y], color="k", lw=1.2)
        ax.plot(value, y, "D" if bold else "s", color="C3" if bold else "C0", ms=7 if bold else 5)
    ax.set_yticks(ys, [r[0] for r in rows], fontsize=8)
    ax.set_xlabel("AUC")
    ax.grid(axis="x", alpha=0.3)
    ax.set_title(title, fontsize=10)
    fig.tight_layout()
    return _save(fig, path)
