"""``dmfn evaluate``'s output: ``metrics.json`` (every number), PNG figures and a self-contained
``report.html`` (figures embedded; it opens offline)."""

from __future__ import annotations

import base64
import html
import json
import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

from dmfn.client.manifest import Manifest
from dmfn.contract.predictions import PredictionTable
from dmfn.contract.taxonomy import Taxonomy

from . import calibration, figures
from .analysis import SystemScores, align, analyse, compare, scores_of
from .cohort import cohort_table, subgroup_aucs
from .proportions import youden_threshold
from .readers import ReaderCall, analyse_readers


@dataclass
class EvaluationInputs:
    """What ``dmfn evaluate`` was given (paths kept for messages)."""

    predictions: PredictionTable
    taxonomy: Taxonomy
    compare: list[PredictionTable] = field(default_factory=list)
    readers: list[ReaderCall] | None = None
    readers_path: str = ""
    manifest: Manifest | None = None
    validation: PredictionTable | None = None
    split: str | None = None
    positive: str = "malignant"
    threshold: float | None = None
    ci_method: str = "wilson"
    n_boot: int = 1000
    seed: int = 0


def _name(table: PredictionTable) -> str:
    return Path(str(table.path)).stem if table.path is not None else "system"


def _threshold(
    inputs: EvaluationInputs, table: PredictionTable, name: str
) -> tuple[float | None, str]:
    """The decision threshold: given, or Youden's on validation (a file, or the table's own
    validation rows), else None (Youden's on the evaluated cases, said so in the report)."""
    if inputs.threshold is not None:
        return inputs.threshold, "given (--threshold)"
    source = None
    if inputs.validation is not None and table is inputs.predictions:
        source, where = inputs.validation, f"youden on {inputs.validation.path}"
    elif any(r.split == "val" for r in table.rows) and inputs.split not in (None, "val"):
        source, where = table, "youden on the validation split of the same file"
    if source is None:
        return None, ""
    val = scores_of(source, inputs.taxonomy, name, "val" if source is table else None)
    y, score = val.binary(inputs.positive)
    return youden_threshold(y, score), where


def _default_split(inputs: EvaluationInputs) -> tuple[EvaluationInputs, str]:
    """Without --split, a file holding several splits is evaluated on its held-out ``test``
    split (numbers on training or validation patients are optimistic)."""
    present = sorted({r.split for r in inputs.predictions.patient_rows() if r.split})
    if inputs.split is not None:
        return inputs, f"{inputs.split} (--split)"
    if len(present) > 1 and "test" in present:
        return replace(inputs, split="test"), (
            f"test (the held-out split of a file holding {', '.join(present)}; --split chooses)"
        )
    return inputs, ", ".join(present) if present else "not given in the file"


def evaluate(inputs: EvaluationInputs) -> tuple[dict[str, Any], list[SystemScores]]:
    """Every number of the report, and the aligned systems (for the figures)."""
    inputs, split_note = _default_split(inputs)
    tables = [inputs.predictions, *inputs.compare]
    names = [_name(t) for t in tables]
    if len(set(names)) != len(names):
        names = [f"{n} ({i + 1})" for i, n in enumerate(names)]
    systems = [
        scores_of(t, inputs.taxonomy, n, inputs.split) for t, n in zip(tables, names, strict=True)
    ]
    systems = align(systems, [str(t.path) for t in tables])
    result: dict[str, Any] = {
        "level": "patient",
        "image_rows_averaged": [t.averaged_images for t in tables],
        "split": inputs.split,
        "split_note": split_note,
        "positive": inputs.positive,
        "ci_method": inputs.ci_method,
        "synthetic": inputs.predictions.provenance.synthetic,
        "provenance": {n: vars(t.provenance) for n, t in zip(names, tables, strict=True)},
        "systems": {},
        "comparisons": [],
    }
    thresholds = {}
    for table, s in zip(tables, systems, strict=True):
        value, source = _threshold(inputs, table, s.name)
        analysis = analyse(
            s, inputs.positive, value, source or "given", inputs.ci_method, inputs.n_boot,
            inputs.seed,
        )  # fmt: skip
        thresholds[s.name] = analysis["binary"]["threshold"]["value"]  # type: ignore[index]
        result["systems"][s.name] = analysis
    for other in systems[1:]:
        result["comparisons"].append(
            compare(systems[0], other, inputs.positive, thresholds[systems[0].name],
                    thresholds[other.name])
        )  # fmt: skip
    main = systems[0]
    if inputs.validation is not None and main.probs is not None and main.classes is not None:
        val = scores_of(inputs.validation, inputs.taxonomy, "validation")
        if val.probs is not None and val.classes is not None:
            t = calibration.fit_temperature(val.classes, val.probs)
            scaled = calibration.apply_temperature(main.probs, t)
            result["systems"][main.name]["calibration"]["temperature_fitted_on_validation"] = {
                "temperature": t,
                "ece_after": calibration.expected_calibration_error(main.classes, scaled),
                "brier_after": calibration.brier_score(main.classes, scaled),
                "reliability_after": calibration.reliability(main.classes, scaled),
            }
    if inputs.manifest is not None:
        result["cohort"] = cohort_table(inputs.manifest)
        result["subgroups"] = subgroup_aucs(main, inputs.manifest, inputs.positive)
    if inputs.readers is not None:
        result["readers"] = analyse_readers(
            inputs.readers, main, inputs.taxonomy, thresholds[main.name], inputs.positive,
            inputs.ci_method, inputs.readers_path,
        )  # fmt: skip
    return result, systems


def _clean(value: Any) -> Any:
    """JSON: NaN and infinities become null."""
    if isinstance(value, float) and not math.isfinite(value):
        return None
    if isinstance(value, Mapping):
        return {str(k): _clean(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [_clean(v) for v in value]
    return value


# --------------------------------------------------------------------------- figures
def make_figures(
    out: Path, result: Mapping[str, Any], systems: Sequence[SystemScores], inputs: EvaluationInputs
) -> dict[str, Path]:
    pngs: dict[str, Path] = {}
    positive = inputs.positive
    aucs = {s.name: result["systems"][s.name]["binary"]["auc"] for s in systems}
    points = []
    readers = result.get("readers")
    if readers:
        for session, data in readers["sessions"].items():
            for group, g in data["groups"].items():
                label = f"{group} ({session})" if session != "all" else group
                if readers["simulated"]:
                    label += ", simulated"
                points.append((label, g["sensitivity"]["value"], g["specificity"]["value"]))
    operating = {}
    for s in systems:
        b = result["systems"][s.name]["binary"]
        at = b["at_threshold"]
        operating[s.name] = (
            b["threshold"]["value"],
            at["sensitivity"]["value"],
            at["specificity"]["value"],
        )
    pngs["roc"] = figures.binary_roc(
        out / "roc.png", systems, positive, aucs, points, seed=inputs.seed, operating=operating
    )
    main = systems[0]
    multi = result["systems"][main.name].get("multiclass")
    if multi:
        pngs["roc_per_class"] = figures.per_class_roc(
            out / "roc_per_class.png", main, multi["per_class_auc"]
        )
        pngs["confusion"] = figures.confusion(
            out / "confusion.png", multi["confusion"]["counts"], multi["confusion"]["classes"],
            f"{main.name}: confusion matrix (rows: true class, normalised)",
        )  # fmt: skip
        cal = result["systems"][main.name]["calibration"]
        curves = {"as given": cal["reliability"]}
        fitted = cal.get("temperature_fitted_on_validation")
        if fitted:
            curves[f"temperature {fitted['temperature']:.2f} (fitted on validation)"] = fitted[
                "reliability_after"
            ]
        pngs["calibration"] = figures.reliability(out / "calibration.png", curves)
    if inputs.manifest is not None:
        values: dict[str, list[float]] = {n: [] for n in inputs.taxonomy.names}
        seen = set()
        for r in inputs.manifest.rows:
            if r.patient_id not in seen and r.label in values:
                seen.add(r.patient_id)
                values[r.label].append(r.ctc[0])
        pngs["ctc"] = figures.ctc_by_class(out / "ctc_by_class.png", values)
    return pngs


# --------------------------------------------------------------------------- HTML
def _fmt(v: Any, digits: int = 3) -> str:
    if v is None:
        return "-"
    if isinstance(v, float):
        return f"{v:.{digits}f}" if math.isfinite(v) else "-"
    return html.escape(str(v))


def _ci(d: Mapping[str, Any], key: str = "auc") -> str:
    value = d.get(key, d.get("value"))
    return f"{_fmt(value)} [{_fmt(d.get('ci_low'))}, {_fmt(d.get('ci_high'))}]"


def _p(value: float | None) -> str:
    if value is None:
        return "-"
    return "&lt;0.001" if value < 0.001 else f"{value:.3f}"


def _table(head: Sequence[str], rows: Sequence[Sequence[str]]) -> str:
    th = "".join(f"<th>{h}</th>" for h in head)
    body = "".join("<tr>" + "".join(f"<td>{c}</td>" for c in r) + "</tr>" for r in rows)
    return f"<table><tr>{th}</tr>{body}</table>"


def _diag_cells(d: Mapping[str, Any]) -> list[str]:
    return [_ci(d[k]) + f" ({d[k]['successes']}/{d[k]['n']})"
            for k in ("sensitivity", "specificity", "ppv", "npv", "accuracy")]  # fmt: skip


def write_html(path: Path, result: Mapping[str, Any], pngs: Mapping[str, Path]) -> Path:
    positive = result["positive"]
    parts = ["<h1>dmfn evaluate</h1>"]
    if result.get("synthetic") is not False:
        parts.append(
            '<p class="warn"><b>Synthetic or unverified data.</b> These numbers check the '
            "pipeline; they are not clinical performance.</p>"
        )
    parts.append(
        f"<p>Patient level (a patient's probabilities are the mean of its images'"
        f"{'; this file gave image rows, averaged here' if any(result['image_rows_averaged']) else ''})."
        f" Split: {_fmt(result['split_note'])}. Positive class: <b>{positive}</b>. Intervals: "
        f"95 %; AUC by DeLong, proportions by {result['ci_method']}.</p>"
    )
    rows = []
    for name, s in result["systems"].items():
        b = s["binary"]
        rows.append([
            html.escape(name), str(s["n_patients"]), _ci(b["auc"]), _ci(b["auc_bootstrap"]),
            f"{_fmt(b['threshold']['value'])} ({html.escape(b['threshold']['chosen'])})",
            *_diag_cells(b["at_threshold"]),
        ])  # fmt: skip
    parts.append("<h2>Binary: benign vs malignant</h2>")
    parts.append(_table(
        ["system", "patients", "AUC [DeLong CI]", "AUC [bootstrap CI]", "threshold",
         "sensitivity", "specificity", "PPV", "NPV", "accuracy"], rows,
    ))  # fmt: skip
    if result["comparisons"]:
        rows = [[
            html.escape(c["system_1"]), html.escape(c["system_2"]),
            _fmt(c["delong_paired"]["difference"]), _fmt(c["delong_paired"]["z"]),
            _p(c["delong_paired"]["p"]), f"{c['mcnemar_calls']['b']} / {c['mcnemar_calls']['c']}",
            _p(c["mcnemar_calls"]["p_chi2"]), _p(c["mcnemar_calls"]["p_exact"]),
        ] for c in result["comparisons"]]  # fmt: skip
        parts.append("<h3>Comparisons (same patients)</h3>")
        parts.append(_table(
            ["system 1", "system 2", "AUC difference", "DeLong z", "DeLong p (paired)",
             "McNemar b / c", "McNemar p (chi-square)", "McNemar p (exact)"], rows,
        ))  # fmt: skip
    multi_rows = []
    for name, s in result["systems"].items():
        m = s.get("multiclass")
        if m:
            multi_rows.append([
                html.escape(name), _ci(m["hand_till_auc"]), _fmt(m["macro_ovr_auc"]),
                _ci(m["top1"]), _ci(m["top3"]), str(m["classes_present"]),
            ])  # fmt: skip
    if multi_rows:
        parts.append("<h2>Multi-class</h2>")
        parts.append(_table(
            ["system", "Hand &amp; Till AUC [bootstrap CI]", "macro one-vs-rest AUC",
             "top-1 [CI]", "top-3 [CI]", "classes present"], multi_rows,
        ))  # fmt: skip
        main = next(iter(result["systems"].values()))
        if main.get("multiclass"):
            rows = [[html.escape(c), _ci(a), f"{a['n_positive']}"]
                    for c, a in main["multiclass"]["per_class_auc"].items()]  # fmt: skip
            parts.append("<h3>One-vs-rest AUC per class (first system)</h3>")
            parts.append(_table(["class", "AUC [DeLong CI]", "patients of the class"], rows))
        cal = main.get("calibration")
        if cal:
            text = f"ECE {_fmt(cal['ece'])}, Brier {_fmt(cal['brier'])}"
            fitted = cal.get("temperature_fitted_on_validation")
            if fitted:
                text += (
                    f"; with a temperature of {_fmt(fitted['temperature'], 2)} fitted on "
                    f"validation: ECE {_fmt(fitted['ece_after'])}, Brier {_fmt(fitted['brier_after'])}"
                )
            parts.append(f"<h3>Calibration (first system)</h3><p>{text}</p>")
    readers = result.get("readers")
    if readers:
        parts.append(
            "<h2>Reader study" + (" (SIMULATED readers)" if readers["simulated"] else "") + "</h2>"
        )
        for session, data in readers["sessions"].items():
            m = data["model"]
            rows = [[
                f"model (threshold {_fmt(m['threshold'])})", "-", *_diag_cells(m), "-", "-",
                _ci(data["model_management_accuracy"])
                if "model_management_accuracy" in data else "-",
            ]]  # fmt: skip
            for group, g in data["groups"].items():
                mc = g["model_vs_group_mcnemar"]
                dl = g.get("model_vs_group_delong")
                rows.append([
                    html.escape(group), str(len(g["readers"])), *_diag_cells(g),
                    f"{_p(mc['p_chi2'])} / {_p(mc['p_exact'])}",
                    _p(dl["p"]) if dl else "no scores",
                    _ci(g["management_accuracy"]) if "management_accuracy" in g else "-",
                ])  # fmt: skip
            parts.append(f"<h3>Session {html.escape(session)}</h3>")
            parts.append(_table(
                ["group", "readers", "sensitivity", "specificity", "PPV", "NPV", "accuracy",
                 "model vs group: McNemar p (chi2 / exact)", "model vs group: DeLong p",
                 "management accuracy"], rows,
            ))  # fmt: skip
    cohort = result.get("cohort")
    if cohort:
        rows = []
        for split, c in cohort["splits"].items():
            tests = cohort["tests_vs_train"].get(split, {})
            rows.append([
                split, str(c["patients"]), str(c["images"]),
                f"{c['age_years']['mean']:.1f} ± {c['age_years']['sd']:.1f}",
                f"{c['male']} ({100 * c['male'] / c['patients']:.0f} %)",
                ", ".join(f"{k} {v}" for k, v in c["location"].items()),
                f"{c['ctc']['mean']:.2f} ± {c['ctc']['sd']:.2f}", str(c["malignant"]),
                "; ".join(f"{k.replace('_', ' ')} {_p(v)}" for k, v in tests.items()) or "-",
            ])  # fmt: skip
        parts.append("<h2>Cohort (Table 1)</h2>")
        parts.append(_table(
            ["split", "patients", "images", "age (years)", "men", "compartment",
             "CTC (pg/ml)", "malignant", "tests against training"], rows,
        ))  # fmt: skip
    groups = result.get("subgroups")
    if groups:
        rows = []
        for kind, levels in groups.items():
            for level, a in levels.items():
                rows.append([kind, html.escape(str(level)),
                             _ci(a) if a.get("auc") is not None else "one class only",
                             f"{a['n_positive']} / {a['n_negative']}"])  # fmt: skip
        parts.append("<h2>Subgroups (first system, binary AUC)</h2>")
        parts.append(_table(["by", "subgroup", "AUC [DeLong CI]", "positive / negative"], rows))
    parts.append("<h2>Figures</h2>")
    for name, png in pngs.items():
        data = base64.b64encode(Path(png).read_bytes()).decode()
        parts.append(f'<figure><img alt="{name}" src="data:image/png;base64,{data}">'
                     f"<figcaption>{name}</figcaption></figure>")  # fmt: skip
    style = (
        "body{font-family:sans-serif;max-width:1200px;margin:2em auto;padding:0 1em}"
        "table{border-collapse:collapse;margin:0.5em 0 1.5em;font-size:0.85em}"
        "td,th{border:1px solid #ccc;padding:3px 6px;text-align:left}th{background:#f0f0f0}"
        ".warn{background:#fff3cd;padding:0.6em;border:1px solid #e0c060}img{max-width:100%}"
    )
    document = (
        f"<!doctype html><html><head><meta charset='utf-8'><title>dmfn evaluate</title>"
        f"<style>{style}</style></head><body>{''.join(parts)}</body></html>"
    )
    path.write_text(document)
    return path


def write_report(out: Path, inputs: EvaluationInputs) -> dict[str, Any]:
    """Compute, then write ``out/metrics.json``, the PNGs and ``out/report.html``."""
    out.mkdir(parents=True, exist_ok=True)
    result, systems = evaluate(inputs)
    pngs = make_figures(out, result, systems, inputs)
    result["figures"] = {k: str(v.name) for k, v in pngs.items()}
    (out / "metrics.json").write_text(json.dumps(_clean(result), indent=2) + "\n")
    write_html(out / "report.html", result, pngs)
    return result
