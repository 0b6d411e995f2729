"""``dmfn evaluate --runs``: several training runs (seeds) of each system on the same patients.

Per run: the binary AUC with its DeLong interval and the multi-class AUCs. Over runs: the mean and
the SD *over seeds* (a measure of training noise, not a confidence interval). The seed ensemble
(each patient's probabilities averaged over the runs) gets a DeLong interval like one run. Between
systems: the paired DeLong test seed by seed (run k against run k) and between the ensembles.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from dmfn.contract.errors import InvalidInput
from dmfn.contract.predictions import PredictionTable
from dmfn.contract.taxonomy import Taxonomy

from . import metrics
from .analysis import POSITIVES, SystemScores, align, scores_of
from .document import Section, Table, ci, fmt, p_value
from .roc import auc_delong, delong_paired


def _split_of(tables: Sequence[PredictionTable], split: str | None) -> tuple[str | None, str]:
    present = sorted({r.split for t in tables for r in t.patient_rows() if r.split})
    if split is not None:
        return split, f"{split} (--split)"
    if len(present) > 1 and "test" in present:
        return "test", f"test (the held-out split of files holding {', '.join(present)})"
    return None, ", ".join(present) if present else "not given in the files"


def _ensemble(runs: Sequence[SystemScores], name: str) -> SystemScores:
    """Each patient's probabilities averaged over the runs (aligned already)."""
    first = runs[0]
    stacked = [r.probs for r in runs if r.probs is not None]
    probs = np.mean(stacked, axis=0) if len(stacked) == len(runs) else None
    return SystemScores(
        name, first.patient_ids, first.malignant,
        np.mean([r.malignant_prob for r in runs], axis=0), first.classes, probs, first.class_names,
    )  # fmt: skip


def _run_numbers(s: SystemScores, positive: str, path: str) -> dict[str, Any]:
    y, score = s.binary(positive)
    out: dict[str, Any] = {"file": path, "binary_auc": auc_delong(y, score).to_dict()}
    if s.probs is not None and s.classes is not None and np.unique(s.classes).size > 1:
        out["hand_till_auc"] = metrics.hand_till_auc(s.classes, s.probs)
        out["macro_ovr_auc"] = metrics.macro_ovr_auc(s.classes, s.probs)
    return out


def _mean_sd(values: Sequence[float]) -> dict[str, float | int | None]:
    v = np.asarray(values, dtype=float)
    return {
        "mean": float(v.mean()),
        "sd_over_seeds": float(v.std(ddof=1)) if v.size > 1 else None,
        "n_runs": int(v.size),
    }


def summarise_runs(
    runs: Mapping[str, Sequence[PredictionTable]],
    taxonomy: Taxonomy,
    split: str | None = None,
    positive: str = "malignant",
) -> dict[str, Any]:
    """Every number of the over-seeds report (see the module docstring). InvalidInput when a
    system has no run or the runs' patients differ."""
    if positive not in POSITIVES:
        raise InvalidInput("positive", f"must be one of {POSITIVES}, got {positive!r}")
    if not runs or any(not tables for tables in runs.values()):
        raise InvalidInput("runs", "give --runs NAME FILE [FILE ...] with at least one file each")
    every = [t for tables in runs.values() for t in tables]
    split, note = _split_of(every, split)
    names = [f"{system} run {k + 1}" for system, tables in runs.items() for k in range(len(tables))]
    scores = [scores_of(t, taxonomy, n, split) for t, n in zip(every, names, strict=True)]
    scores = align(scores, [str(t.path) for t in every])
    grouped: dict[str, list[SystemScores]] = {}
    position = 0
    for system, tables in runs.items():
        grouped[system] = scores[position : position + len(tables)]
        position += len(tables)

    systems: dict[str, Any] = {}
    ensembles: dict[str, SystemScores] = {}
    for system, tables in runs.items():
        mine = grouped[system]
        per_run = [
            _run_numbers(s, positive, str(t.path)) for s, t in zip(mine, tables, strict=True)
        ]
        entry: dict[str, Any] = {
            "runs": per_run,
            "binary_auc": _mean_sd([r["binary_auc"]["auc"] for r in per_run]),
        }
        for key in ("hand_till_auc", "macro_ovr_auc"):
            if all(key in r for r in per_run):
                entry[key] = _mean_sd([r[key] for r in per_run])
        ensembles[system] = _ensemble(mine, f"{system} ensemble")
        entry["ensemble"] = _run_numbers(ensembles[system], positive, "mean over the runs")
        systems[system] = entry

    first, *others = list(runs)
    comparisons = []
    for other in others:
        y, _ = grouped[first][0].binary(positive)
        tests = [
            delong_paired(y, a.binary(positive)[1], b.binary(positive)[1])
            for a, b in zip(grouped[first], grouped[other], strict=False)
        ]
        ensemble = delong_paired(
            y, ensembles[first].binary(positive)[1], ensembles[other].binary(positive)[1]
        ).to_dict()
        comparisons.append({
            "system_1": first, "system_2": other, "per_seed": [t.to_dict() for t in tests],
            "seeds_with_p_below_0.05": sum(1 for t in tests if t.p < 0.05),
            "ensemble": ensemble,
        })  # fmt: skip
    return {
        "level": "patient",
        "split": split,
        "split_note": note,
        "positive": positive,
        "n_patients": len(scores[0].patient_ids),
        "synthetic": any(t.provenance.synthetic is not False for t in every),
        "image_rows_averaged": [t.averaged_images for t in every],
        "over_seeds": {"systems": systems, "comparisons": comparisons},
    }


def seed_sections(result: Mapping[str, Any]) -> list[Section]:
    """The over-seeds report: one table of the systems, one of the comparisons."""
    data = result["over_seeds"]
    rows = []
    for system, s in data["systems"].items():
        b = s["binary_auc"]
        sd = b["sd_over_seeds"]
        multi = "-"
        if "hand_till_auc" in s:
            h = s["hand_till_auc"]
            multi = f"{fmt(h['mean'])} ± {fmt(h['sd_over_seeds'])}"
        rows.append([
            system, str(b["n_runs"]),
            "; ".join(ci(r["binary_auc"]) for r in s["runs"]),
            f"{fmt(b['mean'])} ± {fmt(sd)}", multi, ci(s["ensemble"]["binary_auc"]),
            fmt(s["ensemble"].get("hand_till_auc")),
        ])  # fmt: skip
    intro = (
        f"{result['n_patients']} patients; split: {result['split_note']}; positive class: "
        f"{result['positive']}. ± is the SD over seeds (training noise), not a confidence "
        "interval; the brackets are DeLong 95 % intervals over patients. The seed ensemble "
        "averages each patient's probabilities over the runs."
    )
    out = [Section("Over seeds", body=[intro, Table(
        ["system", "runs", "binary AUC per run [DeLong CI]", "binary AUC mean ± SD",
         "Hand & Till mean ± SD", "seed ensemble: binary AUC [DeLong CI]",
         "seed ensemble: Hand & Till"], rows,
    )])]  # fmt: skip
    if data["comparisons"]:
        rows = [[
            c["system_1"], c["system_2"],
            "; ".join(f"{d['difference']:+.3f} (p {p_value(d['p'])})" for d in c["per_seed"]),
            f"{c['seeds_with_p_below_0.05']} of {len(c['per_seed'])}",
            f"{c['ensemble']['difference']:+.3f}", fmt(c["ensemble"]["z"]),
            p_value(c["ensemble"]["p"]),
        ] for c in data["comparisons"]]  # fmt: skip
        out.append(Section("Comparisons over seeds (paired DeLong, same patients)", 3, [Table(
            ["system 1", "system 2", "AUC difference per seed (p)", "seeds with p < 0.05",
             "ensembles: AUC difference", "ensembles: z", "ensembles: p"], rows,
        )]))  # fmt: skip
    return out


def seed_figure(out: Path, result: Mapping[str, Any]) -> Path:
    """Forest plot: each run's binary AUC with its DeLong interval, and the seed ensemble."""
    from .figures import FIGURE_FILES, forest

    rows = []
    for system, s in result["over_seeds"]["systems"].items():
        for k, r in enumerate(s["runs"]):
            a = r["binary_auc"]
            rows.append((f"{system} run {k + 1}", a["auc"], a["ci_low"], a["ci_high"], False))
        a = s["ensemble"]["binary_auc"]
        rows.append((f"{system} seed ensemble", a["auc"], a["ci_low"], a["ci_high"], True))
    return forest(
        out / FIGURE_FILES["seeds"],
        rows,
        f"Binary AUC per run ({result['positive']} positive), DeLong 95 % CI\n"
        f"{result['split'] or 'all'} split, n = {result['n_patients']} patients",
    )
