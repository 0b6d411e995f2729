"""The summary of a multi-seed run: mean and sample SD over seeds, as JSON and as a table."""

from __future__ import annotations

import math
from typing import Any

import numpy as np

from .checkpoint import current_versions
from .config import TrainConfig
from .scoring import MONITOR, SUMMARY_METRICS


def summarise(runs: list[dict[str, Any]], args: TrainConfig) -> dict[str, Any]:
    """Mean and sample SD (n - 1; 0 for one seed) over seeds of each split's metrics."""
    mean: dict[str, float] = {}
    sd: dict[str, float] = {}
    for split in ("val", "test"):
        for metric in SUMMARY_METRICS:
            values = [r[split][metric] for r in runs if split in r]
            if not values:
                continue
            key = f"{split}_{metric}"
            mean[key] = float(np.mean(values))
            sd[key] = float(np.std(values, ddof=1)) if len(values) > 1 else 0.0
    return {
        "model": args.model,
        "backbone": None if args.model == "tabular" else args.backbone,
        **({"fusion": args.fusion, "aux_weight": args.aux_weight} if args.model == "dmfn" else {}),
        "seeds": [r["seed"] for r in runs],
        **({"folds": [r["fold"] for r in runs]} if all("fold" in r for r in runs) else {}),
        "monitor": f"val_{MONITOR}",
        "level": "patient",
        "note": "results on synthetic data are pipeline checks, never clinical claims",
        "mean": mean,
        "sd": sd,
        "runs": runs,
        "args": args.record(),
        "versions": current_versions(),
    }


def format_table(summary: dict[str, Any]) -> str:
    """The summary as a text table: one row per metric, mean ± SD and the per-seed values."""
    seeds = summary["seeds"]
    if len(seeds) == 1:  # one run: its values, with their 95 % intervals; an SD needs seeds
        return _single_run_table(summary)
    names = (
        [f"fold {k}" for k in summary["folds"]]
        if "folds" in summary
        else [f"seed {s}" for s in seeds]
    )
    head = f"{'metric':<22}{'mean ± SD':>18}  " + "  ".join(f"{n:>8}" for n in names)
    lines = [f"{_model_line(summary)}, patient level", head]
    for key, mean in summary["mean"].items():
        split, metric = key.split("_", 1)
        values = [r.get(split, {}).get(metric, float("nan")) for r in summary["runs"]]
        cells = "  ".join(f"{v:>8.4f}" for v in values)
        lines.append(f"{key:<22}{mean:>9.4f} ± {summary['sd'][key]:<6.4f}  {cells}")
    return "\n".join(lines)


def to_json(value: Any) -> Any:
    if isinstance(value, float) and not math.isfinite(value):
        return None
    if isinstance(value, dict):
        return {k: to_json(v) for k, v in value.items()}
    if isinstance(value, list):
        return [to_json(v) for v in value]
    return value


def _single_run_table(summary: dict[str, Any]) -> str:
    run = summary["runs"][0]
    lines = [
        f"{_model_line(summary)}, seed {summary['seeds'][0]}, patient level, 95 % CI in "
        "brackets; validation selected the checkpoint (optimistic)",
        f"{'metric':<22}{'test':>26}{'validation':>26}",
    ]
    for metric in SUMMARY_METRICS:
        cells = []
        for split in ("test", "val"):
            m = run.get(split, {})
            value = m.get(metric)
            ci = (m.get("ci") or {}).get(metric)
            text = "-" if value is None else f"{value:.4f}"
            if ci:
                text += f" [{ci[0]:.3f}, {ci[1]:.3f}]"
            cells.append(f"{text:>26}")
        lines.append(f"{metric:<22}" + "".join(cells))
    counts = [str(run.get(s, {}).get("n_patients", "-")) for s in ("test", "val")]
    lines.append(f"{'patients':<22}{counts[0]:>26}{counts[1]:>26}")
    return "\n".join(lines)


def _model_line(summary: dict[str, Any]) -> str:
    fusion = (
        f", fusion {summary['fusion']}, aux weight {summary['aux_weight']:g}"
        if "fusion" in summary
        else ""
    )
    return f"{summary['model']} (backbone {summary['backbone']}{fusion})"
