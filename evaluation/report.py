"""``dmfn evaluate``'s output: ``metrics.json`` (every number), PNG figures, a self-contained
``report.html`` (figures embedded; it opens offline) and ``report.md`` (the same tables).

Each file is written whole or not at all (:func:`~dmfn.contract.outfile.replacing`); a folder
holding an earlier evaluation is refused unless the caller says to replace it
(:func:`check_output_folder`), and then the earlier files this run does not write are removed,
so the folder holds one evaluation."""

from __future__ import annotations

import json
import logging
import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

from dmfn.client.manifest import Manifest
from dmfn.contract.conformal import DEFAULT_COVERAGE, check_coverage
from dmfn.contract.errors import InvalidInput
from dmfn.contract.management import ManagementPolicy
from dmfn.contract.outfile import replacing
from dmfn.contract.predictions import PredictionTable
from dmfn.contract.taxonomy import Taxonomy

from . import calibration, decision, figures
from .analysis import MIN_CASES_FOR_CI, SystemScores, align, analyse, compare, scores_of
from .cohort import cohort_table, subgroup_aucs
from .conformal import conformal_report
from .document import (
    DIAGNOSTIC_HEAD,
    Section,
    Table,
    ci,
    diagnostic_cells,
    fmt,
    p_value,
    to_html,
    to_markdown,
)
from .flow import patient_flow
from .proportions import youden_threshold
from .readers import ReaderCall, analyse_readers

log = logging.getLogger("dmfn.evaluate")

#: Every file ``dmfn evaluate`` may write into its output folder.
OUTPUT_FILES: tuple[str, ...] = (
    "metrics.json",
    "report.html",
    "report.md",
    *figures.FIGURE_FILES.values(),
)


def check_output_folder(out: Path, overwrite: bool) -> Path:
    """``out``, where an evaluation may be written: refused with :class:`InvalidInput` naming
    ``out`` when it is a file, or when it holds an earlier evaluation's files and ``overwrite``
    is false. Call it before any work, so a refusal costs nothing."""
    if out.exists() and not out.is_dir():
        raise InvalidInput("out", f"{out} is a file; give a folder")
    earlier = [name for name in OUTPUT_FILES if (out / name).exists()]
    if earlier and not overwrite:
        raise InvalidInput(
            "out",
            f"{out} holds the results of an earlier evaluation ({', '.join(earlier)}); pass "
            "{overwrite} to replace them",
            mentions={"overwrite": "overwrite=True"},
        )
    return out


def write_text(path: Path, text: str) -> Path:
    """``text`` to ``path``, whole or not at all."""
    with replacing(path) as handle:
        handle.write(text)
    return path


def remove_stale(out: Path, written: Sequence[Path]) -> None:
    """Remove the evaluation files in ``out`` that this run did not write (an earlier run's
    figures), so the folder holds one evaluation."""
    keep = {p.name for p in written}
    for name in OUTPUT_FILES:
        if name not in keep:
            (out / name).unlink(missing_ok=True)


@dataclass
class EvaluationInputs:
    """What ``dmfn evaluate`` was given (paths kept for messages)."""

    predictions: PredictionTable
    taxonomy: Taxonomy
    compare: list[PredictionTable] = field(default_factory=list)
    readers: list[ReaderCall] | None = None
    readers_path: str = ""
    manifest: Manifest | None = None
    #: Validation predictions of the systems, in the order --predictions, --compare...
    validation: list[PredictionTable] = field(default_factory=list)
    split: str | None = None
    positive: str = "malignant"
    threshold: float | None = None
    ci_method: str = "wilson"
    n_boot: int = 1000
    seed: int = 0
    #: Names of the systems (--names); default: see system_names.
    names: list[str] = field(default_factory=list)
    #: The management policy for the reader study's management accuracy (None: dmfn's default).
    management: ManagementPolicy | None = None
    #: Coverage of the conformal sets (--coverage); None: DEFAULT_COVERAGE, and no refusal when
    #: there are no validation patients to calibrate on.
    coverage: float | None = None


def system_names(tables: Sequence[PredictionTable], given: Sequence[str] = ()) -> list[str]:
    """Names of the systems: ``given`` (--names), else the models' kinds recorded in the files
    (``dmfn``, ``cnn``, ``tabular``) when every file has one and they differ, else the files'
    stems, else (when the stems collide, as runs/dmfn/seed_0/predictions_test.csv and
    runs/cnn/seed_0/... do) the first folder, from the file upwards, where their paths differ;
    numbered as a last resort."""
    if given:
        if len(given) != len(tables) or len(set(given)) != len(given):
            raise InvalidInput(
                "names", f"give {len(tables)} different names, one per system; got {list(given)}"
            )
        return list(given)
    kinds = [t.provenance.name for t in tables]
    if all(kinds) and len(set(kinds)) == len(kinds):
        return kinds
    paths = [Path(str(t.path)) if t.path is not None else Path("system") for t in tables]
    stems = [p.stem for p in paths]
    if len(set(stems)) == len(stems):
        return stems
    parts = [p.resolve().parts[::-1] for p in paths]
    for depth in range(1, min(len(x) for x in parts)):
        names = [x[depth] for x in parts]
        if len(set(names)) == len(names):
            return names
    return [f"{s} ({i + 1})" for i, s in enumerate(stems)]


def validation_scores(table: PredictionTable, taxonomy: Taxonomy, name: str) -> SystemScores:
    """The patient-level scores of ``table``'s ``val`` split: a threshold or a temperature is
    chosen on validation patients only. A file without a ``val`` split is refused with
    :class:`InvalidInput` naming the splits it has."""
    splits = sorted({r.split for r in table.patient_rows() if r.split})
    if "val" not in splits:
        has = f"its splits: {', '.join(splits)}" if splits else "it has no split column"
        raise InvalidInput(
            "validation",
            f"{table.path}: no patient of the 'val' split ({has}); a threshold or a temperature "
            "is chosen on validation patients only",
        )
    return scores_of(table, taxonomy, name, "val")


def _threshold_source(
    inputs: EvaluationInputs, position: int, table: PredictionTable
) -> tuple[PredictionTable | None, str]:
    """Where system ``position``'s threshold (and the first system's temperature) is chosen:
    its --validation file, else the ``val`` split of its own file when another split is
    evaluated, else nowhere (None)."""
    if position < len(inputs.validation):
        source = inputs.validation[position]
        return source, Path(str(source.path)).name
    if any(r.split == "val" for r in table.rows) and inputs.split not in (None, "val"):
        return table, "the same file"
    return None, ""


def _check_disjoint(evaluated: SystemScores, chosen_on: SystemScores, where: str) -> None:
    """Refuse a threshold chosen on patients that are also evaluated (it would be optimistic)."""
    both = sorted(set(evaluated.patient_ids) & set(chosen_on.patient_ids))
    if both:
        raise InvalidInput(
            "validation",
            f"{len(both)} patient(s) of the val split of {where} are also evaluated (e.g. "
            f"{both[:3]}): the threshold would be chosen on the patients it is judged on; "
            "evaluate another split ({split}) or give the threshold ({threshold})",
            mentions={"split": "split", "threshold": "threshold"},
        )


def _threshold(
    inputs: EvaluationInputs, position: int, table: PredictionTable, evaluated: SystemScores
) -> tuple[float | None, dict[str, Any]]:
    """The decision threshold of system ``position`` and where it came from: given, or Youden's
    on the ``val`` split of its validation predictions (a file, or the table's own validation
    rows), else None (Youden's on the evaluated cases, said so in the report)."""
    if inputs.threshold is not None:
        return inputs.threshold, {"chosen": "given (--threshold)"}
    source, where = _threshold_source(inputs, position, table)
    if source is None:
        return None, {}
    val = validation_scores(source, inputs.taxonomy, evaluated.name)
    _check_disjoint(evaluated, val, where)
    y, score = val.binary(inputs.positive)
    return youden_threshold(y, score), {
        "chosen": f"youden on the val split of {where} (n {len(val.patient_ids)})",
        "file": str(source.path),
        "split": "val",
        "n": len(val.patient_ids),
    }


def _conformal(inputs: EvaluationInputs, main: SystemScores) -> dict[str, Any]:
    """The first system's conformal sets, calibrated where its threshold is chosen (the val
    split of its validation predictions) and judged on the evaluated patients. Without
    validation patients (or with them evaluated too, allowed with --threshold) it says why and
    computes nothing; refused instead when --coverage was asked for."""
    coverage = DEFAULT_COVERAGE if inputs.coverage is None else check_coverage(inputs.coverage)
    source, where = _threshold_source(inputs, 0, inputs.predictions)
    val = None
    if source is None:
        reason = "no validation patients to calibrate on ({validation}, or a val split in the file)"
    else:
        val = validation_scores(source, inputs.taxonomy, "validation")
        reason = "the validation patients are also evaluated"
        if not set(val.patient_ids) & set(main.patient_ids):
            return {"computed": True, **conformal_report(
                val, main, coverage, inputs.ci_method,
                f"the val split of {where} (n {len(val.patient_ids)})",
                inputs.taxonomy.malignant_mask,
            )}  # fmt: skip
        if inputs.threshold is None:
            _check_disjoint(main, val, where)
    if inputs.coverage is not None:
        raise InvalidInput(
            "coverage",
            f"conformal sets are calibrated on validation patients only: {reason}",
            mentions={"validation": "validation"},
        )
    return {"computed": False, "coverage_target": coverage,
            "reason": reason.replace("{validation}", "--validation")}  # fmt: skip


def _default_split(inputs: EvaluationInputs) -> tuple[EvaluationInputs, str]:
    """Without --split, a file holding several splits is evaluated on its held-out ``test``
    split (numbers on training or validation patients are optimistic)."""
    present = sorted({r.split for r in inputs.predictions.patient_rows() if r.split})
    if inputs.split is not None:
        return inputs, f"{inputs.split} (--split)"
    if len(present) == 1:  # named, so titles and notes can say which patients these are
        return replace(inputs, split=present[0]), f"{present[0]} (the only split in the file)"
    if len(present) > 1 and "test" in present:
        return replace(inputs, split="test"), (
            f"test (the held-out split of a file holding {', '.join(present)}; --split chooses)"
        )
    return inputs, ", ".join(present) if present else "not given in the file"


def evaluate(inputs: EvaluationInputs) -> tuple[dict[str, Any], list[SystemScores]]:
    """Every number of the report, and the aligned systems (for the figures)."""
    inputs, split_note = _default_split(inputs)
    tables = [inputs.predictions, *inputs.compare]
    names = system_names(tables, inputs.names)
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
    folds = sorted({r.fold for r in inputs.predictions.rows if r.fold})
    if folds:
        result["cross_validation"] = {
            "folds": folds,
            "note": f"out-of-fold predictions of {len(folds)}-fold cross-validation: each "
            "patient was predicted by the model of the fold that did not train on it",
        }
    thresholds = {}
    if len(inputs.validation) > len(tables):
        raise InvalidInput(
            "validation",
            f"{len(inputs.validation)} file(s) for {len(tables)} system(s): give at most one "
            "validation file per system, in the order --predictions, --compare ...",
        )
    result["conformal"] = _conformal(inputs, systems[0])  # before the long work: refusals first
    for position, (table, s) in enumerate(zip(tables, systems, strict=True)):
        value, source = _threshold(inputs, position, table, s)
        analysis = analyse(
            s, inputs.positive, value, source.get("chosen", "given"), inputs.ci_method,
            inputs.n_boot, inputs.seed,
        )  # fmt: skip
        analysis["binary"]["threshold"].update(source)  # type: ignore[index]
        thresholds[s.name] = analysis["binary"]["threshold"]["value"]  # type: ignore[index]
        result["systems"][s.name] = analysis
    for other in systems[1:]:
        result["comparisons"].append(
            compare(systems[0], other, inputs.positive, thresholds[systems[0].name],
                    thresholds[other.name])
        )  # fmt: skip
    y, _ = systems[0].binary(inputs.positive)
    scored = {s.name: s.binary(inputs.positive)[1] for s in systems}
    result["decision_curve"] = {
        **decision.decision_curves(y, scored, decision.CURVE_THRESHOLDS),
        "table": decision.decision_curves(y, scored, decision.TABLE_THRESHOLDS),
    }
    main = systems[0]
    calibration_source, where = _threshold_source(inputs, 0, inputs.predictions)
    if calibration_source is not None and main.probs is not None and main.classes is not None:
        val = validation_scores(calibration_source, inputs.taxonomy, "validation")
        # With --threshold the validation patients may overlap the evaluated ones: no refit then.
        disjoint = not set(val.patient_ids) & set(main.patient_ids)
        if val.probs is not None and val.classes is not None and disjoint:
            t = calibration.fit_temperature(val.classes, val.probs)
            scaled = calibration.apply_temperature(main.probs, t)
            result["systems"][main.name]["calibration"]["temperature_fitted_on_validation"] = {
                "temperature": t,
                "fitted_on": f"the val split of {where} (n {len(val.patient_ids)})",
                "ece_after": calibration.expected_calibration_error(main.classes, scaled),
                "brier_after": calibration.brier_score(main.classes, scaled),
                "reliability_after": calibration.reliability(main.classes, scaled),
            }
    stored = inputs.predictions.provenance.temperature
    cal = result["systems"][main.name].get("calibration")
    if cal is not None and main.probs is not None and main.classes is not None:
        cal["stored_temperature"] = stored
        if stored is not None:  # undo it: the probabilities the net gives without calibration
            raw = calibration.apply_temperature(main.probs, 1.0 / stored)
            cal["ece_without_temperature"] = calibration.expected_calibration_error(
                main.classes, raw
            )
            cal["brier_without_temperature"] = calibration.brier_score(main.classes, raw)
    if inputs.manifest is not None or inputs.predictions.failures:
        result["flow"] = patient_flow(
            inputs.predictions, main.patient_ids, inputs.split, inputs.manifest
        )
        for warning in result["flow"]["warnings"]:
            log.warning("%s: %s", inputs.predictions.path, warning)
    if inputs.manifest is not None:
        result["cohort"] = cohort_table(inputs.manifest)
        result["subgroups"] = subgroup_aucs(main, inputs.manifest, inputs.positive)
    if inputs.readers is not None:
        result["readers"] = analyse_readers(
            inputs.readers, main, inputs.taxonomy, thresholds[main.name], inputs.positive,
            inputs.ci_method, inputs.readers_path, inputs.management, inputs.n_boot,
            inputs.seed,
        )  # fmt: skip
    return result, systems


def clean_json(value: Any) -> Any:
    """JSON: NaN and infinities become null."""
    if isinstance(value, float) and not math.isfinite(value):
        return None
    if isinstance(value, Mapping):
        return {str(k): clean_json(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [clean_json(v) for v in value]
    return value


# --------------------------------------------------------------------------- figures
def population(result: Mapping[str, Any], name: str | None = None) -> str:
    """The evaluated patients in a figure's title: split and n (positives among them)."""
    s = result["systems"][name or next(iter(result["systems"]))]
    split = f"{result['split']} split" if result.get("split") else "all patients of the file"
    count = s["n_malignant"] if result["positive"] == "malignant" else s["n_benign"]
    return f"{split}, n = {s['n_patients']} patients ({count} {result['positive']})"


def make_figures(
    out: Path, result: Mapping[str, Any], systems: Sequence[SystemScores], inputs: EvaluationInputs
) -> dict[str, Path]:
    pngs: dict[str, Path] = {}
    positive = inputs.positive
    where = population(result)
    file = figures.FIGURE_FILES
    aucs = {s.name: result["systems"][s.name]["binary"]["auc"] for s in systems}
    points = []
    readers = result.get("readers")
    if readers:
        for session, data in readers["sessions"].items():
            for group, g in data["groups"].items():
                label = f"{group} ({session})" if session != "all" else group
                if readers["simulated"]:
                    label += ", simulated"
                sens, spec = g["sensitivity"], g["specificity"]
                points.append(figures.ReaderPoint(
                    label, (sens["value"], sens["ci_low"], sens["ci_high"]),
                    (spec["value"], spec["ci_low"], spec["ci_high"]),
                ))  # fmt: skip
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
        out / file["roc"], systems, positive, aucs, points, seed=inputs.seed,
        title=f"ROC, {positive} as positive (patient level)\n{where}", operating=operating,
    )  # fmt: skip
    main = systems[0]
    first = result["systems"][main.name]
    pngs["calibration_binary"] = figures.binary_calibration(
        out / file["calibration_binary"], first["binary"]["calibration"]["curve"], positive,
        main.name, where,
    )  # fmt: skip
    pngs["decision_curve"] = figures.decision_curve(
        out / file["decision_curve"], result["decision_curve"], positive, where
    )
    multi = first.get("multiclass")
    if multi:
        pngs["roc_per_class"] = figures.per_class_roc(
            out / file["roc_per_class"], main, multi["per_class_auc"], where
        )
        pngs["confusion"] = figures.confusion(
            out / file["confusion"], multi["confusion"]["counts"], multi["confusion"]["classes"],
            f"{main.name}: confusion matrix (rows: true class, normalised)\n{where}",
        )  # fmt: skip
        cal = first["calibration"]
        curves = {"as given": cal["reliability"]}
        fitted = cal.get("temperature_fitted_on_validation")
        if fitted:
            curves[f"temperature {fitted['temperature']:.2f} (fitted on validation)"] = fitted[
                "reliability_after"
            ]
        pngs["calibration"] = figures.reliability(out / file["calibration"], curves, where)
    groups = result.get("subgroups")
    if groups:
        overall = first["binary"]["auc"]
        rows = [(f"all ({overall['n_positive']} / {overall['n_negative']})", overall["auc"],
                 overall["ci_low"], overall["ci_high"], True)]  # fmt: skip
        for kind, levels in groups.items():
            for level, a in levels.items():
                if a.get("auc") is None:
                    continue
                few = a.get("too_few_for_ci")
                low, high = (math.nan, math.nan) if few else (a["ci_low"], a["ci_high"])
                label = f"{kind} {level} ({a['n_positive']} / {a['n_negative']})"
                rows.append((label + (": too few for a CI" if few else ""), a["auc"], low, high,
                             False))  # fmt: skip
        pngs["subgroups"] = figures.forest(
            out / file["subgroups"], rows,
            f"{main.name}: binary AUC by subgroup (positive / negative patients),\n"
            f"DeLong 95 % CI; {where}",
            reference=overall["auc"],
        )  # fmt: skip
    if "flow" in result:
        pngs["flow"] = figures.flow_diagram(out / file["flow"], result["flow"])
    if inputs.manifest is not None:
        values: dict[str, list[float]] = {n: [] for n in inputs.taxonomy.names}
        evaluated = set(main.patient_ids)
        seen = set()
        for r in inputs.manifest.rows:
            if r.patient_id in evaluated and r.patient_id not in seen and r.label in values:
                seen.add(r.patient_id)
                values[r.label].append(r.ctc[0])
        pngs["ctc"] = figures.ctc_by_class(
            out / file["ctc"], values, f"{where}; {len(seen)} of them in the manifest"
        )
    return pngs


# --------------------------------------------------------------------------- document
SYNTHETIC_WARNING = (
    "Synthetic or unverified data. These numbers check the pipeline; they are not clinical "
    "performance."
)


def binary_sections(result: Mapping[str, Any]) -> list[Section]:
    positive = result["positive"]
    averaged = any(result["image_rows_averaged"])
    intro = (
        "Patient level (a patient's probabilities are the mean of its images'"
        f"{'; this file gave image rows, averaged here' if averaged else ''}). "
        f"Split: {result['split_note']}. Positive class: {positive}. Intervals: 95 %; AUC by "
        f"DeLong (and a stratified bootstrap), proportions by {result['ci_method']}."
    )
    if "cross_validation" in result:
        intro += f" These are the {result['cross_validation']['note']}."
    rows = []
    for name, s in result["systems"].items():
        b = s["binary"]
        rows.append([
            name, str(s["n_patients"]), ci(b["auc"]), ci(b["auc_bootstrap"]),
            f"{fmt(b['threshold']['value'])} ({b['threshold']['chosen']})",
            *diagnostic_cells(b["at_threshold"]),
        ])  # fmt: skip
    binary = Section(f"Binary: benign vs malignant ({positive} positive)", body=[intro, Table(
        ["system", "patients", "AUC [DeLong CI]", "AUC [bootstrap CI]", "threshold",
         *DIAGNOSTIC_HEAD], rows,
    )])  # fmt: skip
    out = [binary]
    if result["comparisons"]:
        rows = [[
            c["system_1"], c["system_2"], fmt(c["delong_paired"]["difference"]),
            fmt(c["delong_paired"]["z"]), p_value(c["delong_paired"]["p"]),
            f"{c['mcnemar_calls']['b']} / {c['mcnemar_calls']['c']}",
            p_value(c["mcnemar_calls"]["p_chi2"]), p_value(c["mcnemar_calls"]["p_exact"]),
        ] for c in result["comparisons"]]  # fmt: skip
        out.append(Section("Comparisons (same patients)", 3, [Table(
            ["system 1", "system 2", "AUC difference", "DeLong z", "DeLong p (paired)",
             "McNemar b / c", "McNemar p (chi-square)", "McNemar p (exact)"], rows,
        ), "McNemar compares the calls at each system's threshold; b: right by system 1 only, "
           "c: right by system 2 only."]))  # fmt: skip
    out += [two_by_two_section(result), binary_calibration_section(result)]
    if "decision_curve" in result:
        out.append(decision_section(result))
    return out


def _other(positive: str) -> str:
    return "benign" if positive == "malignant" else "malignant"


def two_by_two_section(result: Mapping[str, Any]) -> Section:
    """Each system's 2 x 2 table of truth against its call at its threshold."""
    positive, negative = result["positive"], _other(result["positive"])
    body: list[str | Table] = []
    for name, s in result["systems"].items():
        b = s["binary"]
        sens, spec = b["at_threshold"]["sensitivity"], b["at_threshold"]["specificity"]
        tp, n_pos = sens["successes"], sens["n"]
        tn, n_neg = spec["successes"], spec["n"]
        fn, fp = n_pos - tp, n_neg - tn
        body += [
            f"{name}, called {positive} when its {positive} probability is at least "
            f"{fmt(b['threshold']['value'])} ({b['threshold']['chosen']}):",
            Table(["truth", f"called {positive}", f"called {negative}", "total"], [
                [positive, f"{tp} (true positive)", f"{fn} (false negative)", str(n_pos)],
                [negative, f"{fp} (false positive)", f"{tn} (true negative)", str(n_neg)],
                ["total", str(tp + fp), str(fn + tn), str(n_pos + n_neg)],
            ]),
        ]  # fmt: skip
    return Section("2 x 2 tables at the threshold", 3, body)


def binary_calibration_section(result: Mapping[str, Any]) -> Section:
    """Weak calibration of each system's probability of the positive class, and the first
    system's calibration curve with the count and interval of each bin."""
    positive = result["positive"]
    rows = []
    for name, s in result["systems"].items():
        c = s["binary"]["calibration"]
        rows.append([name, fmt(c["slope"], 2), fmt(c["intercept"], 2),
                     f"{fmt(c['mean_predicted'])} / {fmt(c['observed'])}", fmt(c["brier"])])  # fmt: skip
    first_name, first = next(iter(result["systems"].items()))
    curve = [
        [f"{b['low']:.1f}-{b['high']:.1f}", str(b["n"]), fmt(b["predicted"]),
         ci(b) + f" ({b['positives']}/{b['n']})" if b["n"] else "-"]
        for b in first["binary"]["calibration"]["curve"]
    ]  # fmt: skip
    return Section(f"Calibration of the {positive} probability", 3, [
        "Calibration slope (logistic regression of the truth on the logit of the probability; "
        "1 is ideal, below 1 the probabilities are too extreme) and intercept with the slope "
        "fixed at 1 (calibration-in-the-large; 0 is ideal, above 0 the risk is underestimated).",
        Table(["system", "slope", "intercept", "mean predicted / observed", "Brier"], rows),
        f"{first_name}: observed share of {positive} patients per bin of the predicted "
        f"probability, with {result['ci_method']} 95 % intervals.",
        Table(["predicted probability", "patients", "mean predicted", f"observed {positive} [CI]"],
              curve),
    ])  # fmt: skip


def decision_section(result: Mapping[str, Any]) -> Section:
    """Net benefit at the table's threshold probabilities (Vickers & Elkin 2006)."""
    d = result["decision_curve"]["table"]
    positive = result["positive"]
    head = ["threshold probability", *d["systems"], f"treat all as {positive}", "treat none"]
    rows = [
        [fmt(t, 2), *(fmt(v[k]) for v in d["systems"].values()), fmt(d["treat_all"][k]), "0"]
        for k, t in enumerate(d["thresholds"])
    ]
    return Section("Decision curve: net benefit", 3, [
        f"Net benefit of acting (e.g. resection) on the patients whose {positive} probability "
        "reaches the threshold probability p: true positives / n - false positives / n x p / "
        "(1 - p), against acting on every patient and on none; a model is useful at p where "
        f"it beats both. n = {d['n']} ({d['n_positive']} {positive}).",
        Table(head, rows),
    ])  # fmt: skip


def multiclass_sections(result: Mapping[str, Any]) -> list[Section]:
    rows = []
    for name, s in result["systems"].items():
        m = s.get("multiclass")
        if m:
            rows.append([
                name, ci(m["hand_till_auc"]), ci(m["macro_ovr_auc"]), ci(m["top1"]), ci(m["top3"]),
                str(m["classes_present"]),
            ])  # fmt: skip
    if not rows:
        return []
    out = [Section("Multi-class", body=[Table(
        ["system", "Hand & Till AUC [bootstrap CI]", "macro one-vs-rest AUC [bootstrap CI]",
         "top-1 [CI]", "top-3 [CI]", "classes present"], rows,
    )])]  # fmt: skip
    main = next(iter(result["systems"].values()))
    if main.get("multiclass"):
        rows = [[c, auc_cell(a), str(a["n_positive"])]
                for c, a in main["multiclass"]["per_class_auc"].items()]  # fmt: skip
        out.append(Section("One-vs-rest AUC per class (first system)", 3, [
            Table(["class", "AUC [DeLong CI]", "patients of the class"], rows), FEW_CASES_RULE,
        ]))  # fmt: skip
    cal = main.get("calibration")
    if cal:
        out.append(Section("Calibration of the classes (first system)", 3, temperature_story(cal)))
    return out


def _count_cell(d: Mapping[str, Any]) -> str:
    """``value [CI] (k/n)`` of a proportion."""
    return ci(d) + f" ({d['successes']}/{d['n']})"


def _thresholds_cell(c: Mapping[str, Any], method: str) -> str:
    if method == "aps":
        return fmt(c["thresholds"][0], 4)
    finite = [t for t in c["thresholds"] if t is not None]
    return f"one per class ({len(finite)} finite, {len(c['thresholds']) - len(finite)} always)"


def conformal_sections(result: Mapping[str, Any]) -> list[Section]:
    """The first system's conformal sets: coverage with its interval, mean size and singletons
    of the class sets (APS and Mondrian side by side, overall and per class) and of the binary
    sets."""
    conf = result.get("conformal")
    if not conf:
        return []
    target = fmt(conf["coverage_target"], 2)
    title = f"Conformal class sets at {target} coverage (first system)"
    if not conf["computed"]:
        return [Section(title, body=[f"Not computed: {conf['reason']}."])]
    body: list[str | Table] = [
        f"A set of classes that holds the true class with probability at least {target}: the "
        "classes from the most probable down while their summed probability stays within a "
        "threshold calibrated on validation patients (split-conformal APS, not randomised; a "
        "set that would be empty holds the top class, which only adds coverage). Calibrated on "
        f"{conf['fitted_on']}, judged on the {conf['n_evaluated']} evaluated patients. The "
        "guarantee is marginal: over patients, on average over validation sets, when "
        "validation and evaluated patients are exchangeable; the expected coverage is at most "
        f"{fmt(conf['expected_coverage_at_most'])} (ties aside). It does not hold per class: "
        "rare classes can be missed far more often. Mondrian (class-conditional): one "
        "threshold per class, fitted on that class's validation patients, so it holds per "
        f"class; a class with fewer than {conf['min_calibration']} validation patients is "
        "always in the set. Intervals: 95 %, proportions by "
        f"{result['ci_method']}. docs/conformal.md says more.",
    ]
    classes = conf.get("classes")
    if classes:
        body.append(Table(
            ["method", "threshold", "coverage [CI]", "mean set size", "singletons [CI]",
             "empty, top class kept"],
            [[m, _thresholds_cell(c, m), _count_cell(c["coverage"]), fmt(c["mean_size"], 2),
              _count_cell(c["singletons"]), str(c["empty_before_rule"])]
             for m, c in classes.items()],
        ))  # fmt: skip
        aps, mondrian = classes["aps"], classes["mondrian"]
        rows = []
        for name, a in aps["per_class"].items():
            m = mondrian["per_class"][name]
            rows.append([
                name, str(a["n"]), _count_cell(a["coverage"]), fmt(a["mean_size"], 2),
                _count_cell(m["coverage"]), fmt(m["mean_size"], 2),
                f"{fmt(m['threshold'], 4) if m['threshold'] is not None else 'always'} "
                f"({m['n_calibration']})",
            ])  # fmt: skip
        body += [
            "Per class (the evaluated patients of each class present):",
            Table(["class", "patients", "APS coverage [CI]", "APS mean size",
                   "Mondrian coverage [CI]", "Mondrian mean size",
                   "Mondrian threshold (validation patients)"], rows),
        ]  # fmt: skip
    else:
        body.append("Class sets: not computed (no class probabilities or class labels).")
    rows = []
    for m, b in conf["binary"].items():
        sets = b["sets"]
        rows.append([
            m, ", ".join(fmt(t, 4) if t is not None else "always" for t in b["thresholds"]),
            _count_cell(sets["benign_only"]), _count_cell(sets["malignant_only"]),
            _count_cell(sets["both"]), _count_cell(b["coverage"]),
            *(_count_cell(b["per_class"][g]["coverage"]) if g in b["per_class"] else "-"
              for g in ("benign", "malignant")),
        ])  # fmt: skip
    body += [
        "Benign vs malignant: a group is in the set when its probability is at least 1 - the "
        "threshold (score 1 - p, calibrated the same way; APS is degenerate on two groups, "
        "docs/conformal.md); a set of both is an answer of 'uncertain'. Mondrian: one "
        "threshold for the benign and one for the malignant validation patients.",
        Table(["method", "threshold", "{benign}", "{malignant}", "both (uncertain)",
               "coverage [CI]", "coverage, benign patients", "coverage, malignant patients"],
              rows),
    ]  # fmt: skip
    return [Section(title, body=body)]


def temperature_story(cal: Mapping[str, Any]) -> list[str | Table]:
    """The temperatures side by side (none, the one stored at training, evaluate's refit) with
    the ECE and Brier score of each on the evaluated patients, and which one is served."""
    stored = cal.get("stored_temperature")
    fitted = cal.get("temperature_fitted_on_validation")
    rows = []
    if stored is not None and cal.get("ece_without_temperature") is not None:
        rows.append(["none", "1", "-", fmt(cal["ece_without_temperature"]),
                     fmt(cal["brier_without_temperature"])])  # fmt: skip
    rows.append([
        "as given", fmt(stored, 3) if stored is not None else "not recorded",
        "stored with the model at training (fitted on the validation images); the served "
        "model and dmfn predict apply it" if stored is not None else "the file's probabilities",
        fmt(cal["ece"]), fmt(cal["brier"]),
    ])  # fmt: skip
    if fitted:
        factor = fitted["temperature"]
        effective = factor * stored if stored is not None else factor
        rows.append([
            "refitted here", f"{fmt(effective, 3)} (x {fmt(factor, 3)})",
            f"fitted by this evaluation on {fitted.get('fitted_on', 'validation')} (patient "
            "means); for comparison only: the served model keeps the stored temperature",
            fmt(fitted["ece_after"]), fmt(fitted["brier_after"]),
        ])  # fmt: skip
    return [
        "Temperature scaling divides the logits by T (softmax(logits / T)); T > 1 softens "
        "over-confident probabilities. ECE (top class, 10 bins) and the multi-class Brier score "
        "on the evaluated patients:",
        Table(["temperature", "T", "where it comes from", "ECE", "Brier"], rows),
    ]


FEW_CASES_RULE = (
    f"An AUC on fewer than {MIN_CASES_FOR_CI} positive or {MIN_CASES_FOR_CI} negative patients "
    "is shown without an interval, with a warning: its DeLong or bootstrap interval would "
    "not hold."
)


def auc_cell(a: Mapping[str, Any]) -> str:
    """``AUC [CI]``, or the AUC with a warning in place of the interval for too few cases."""
    if a.get("too_few_for_ci"):
        return f"{fmt(a['auc'])} (too few patients for a CI: {a['n_positive']} / {a['n_negative']})"
    return ci(a)


TABLE3_HEAD = ("AUC [DeLong CI]", "sensitivity", "specificity", "accuracy", "PPV", "NPV")


def table3_cells(d: Mapping[str, Any]) -> list[str]:
    """AUC, sensitivity, specificity, accuracy, PPV, NPV (Table 3's order): ``value [CI]
    (k/n)`` each; the AUC '-' where there is none."""
    cells = [ci(d["auc"]) if d.get("auc") else "-"]
    for k in ("sensitivity", "specificity", "accuracy", "ppv", "npv"):
        cells.append(ci(d[k]) + f" ({d[k]['successes']}/{d[k]['n']})")
    return cells


def _mcnemar_cell(d: Mapping[str, Any] | None) -> str:
    if not d:
        return "-"
    return f"{p_value(d['p_chi2'])} / {p_value(d['p_exact'])} (n {d['n']})"


def reader_sections(result: Mapping[str, Any]) -> list[Section]:
    """Per session: Table 3's layout (the model and each group), management and class calls,
    then every reader."""
    readers = result.get("readers")
    if not readers:
        return []
    tag = " (SIMULATED readers)" if readers["simulated"] else ""
    positive = readers["positive"]
    out = [Section("Reader study" + tag, body=[
        f"Positive class: {positive}. A group's rates pool its readers' calls (the mean "
        f"reader), with intervals by {readers['group_intervals']}; its AUC is the mean of its "
        "readers' AUCs, each reader's call serving as a 0/1 score (the AUC of a call is "
        "(sensitivity + specificity) / 2), with the DeLong interval of the mean. The model is "
        "compared with each group and each reader by paired DeLong (model minus the group's "
        "mean AUC) and by McNemar's test (p chi-square / exact) separately on the malignant "
        "and on the benign patients, against the group's majority call; "
        f"{readers['tie_rule']}. The model's calls are at its threshold; its management "
        "decision is the policy's suggestion (uncertain counts as not right); its class calls "
        "are its top-1 classes. The macro one-vs-rest AUC of class calls is the mean over the "
        "classes present of (sensitivity + specificity) / 2."
        + (" The readers are simulated: calls depend on each case's look and size (and its CTC "
           "with CTC) and match the paper's figures per group (docs/readers.md)."
           if readers["simulated"] else "")
    ])]  # fmt: skip
    for session, data in readers["sessions"].items():
        m = data["model"]
        rows = [[f"model (threshold {fmt(m['threshold'])})", "-", *table3_cells(m), "-", "-",
                 "-"]]  # fmt: skip
        for group, g in data["groups"].items():
            dl = g.get("model_vs_group_delong")
            rows.append([
                group, str(len(g["readers"])), *table3_cells(g), p_value(dl["p"]) if dl else "-",
                _mcnemar_cell(g.get("mcnemar_malignant")), _mcnemar_cell(g.get("mcnemar_benign")),
            ])  # fmt: skip
        out.append(Section(f"Session {session}: benign vs malignant (Table 3)", 3, [Table(
            ["", "readers", *TABLE3_HEAD, "model vs group: DeLong p",
             "McNemar p, malignant patients", "McNemar p, benign patients"], rows,
        )]))  # fmt: skip
        extra = [g for g in data["groups"].values()
                 if "management_accuracy" in g or "multiclass" in g]  # fmt: skip
        if extra:
            mm = m.get("multiclass")
            rows = [[
                "model",
                ci(m["management_accuracy"]) + f" ({m['management_uncertain']} uncertain)"
                if "management_accuracy" in m else "-",
                ci(mm["macro_ovr_auc_top1"])
                + f" (probabilities {fmt(mm['macro_ovr_auc_probabilities'])})" if mm else "-",
                ci(mm["accuracy"]) if mm else "-",
            ]]  # fmt: skip
            for group, g in data["groups"].items():
                gm = g.get("multiclass")
                rows.append([
                    group,
                    ci(g["management_accuracy"]) if "management_accuracy" in g else "-",
                    ci(gm["macro_ovr_auc"]) if gm else "-", ci(gm["accuracy"]) if gm else "-",
                ])  # fmt: skip
            out.append(Section(f"Session {session}: management decision and class calls", 3, [
                Table(["", "management accuracy [CI]", "class calls: macro one-vs-rest AUC [CI]",
                       "class accuracy [CI]"], rows),
            ]))  # fmt: skip
        per_reader = []
        for reader, r in data["readers"].items():
            dl = r.get("model_vs_reader_delong")
            rm = r.get("multiclass")
            per_reader.append([
                reader, r["group"], str(r["n"]), *table3_cells(r),
                p_value(dl["p"]) if dl else "-", _mcnemar_cell(r.get("mcnemar_malignant")),
                _mcnemar_cell(r.get("mcnemar_benign")),
                ci(r["management_accuracy"]) if "management_accuracy" in r else "-",
                fmt(rm["macro_ovr_auc"]) if rm else "-",
            ])  # fmt: skip
        out.append(Section(f"Session {session}: readers", 3, [Table(
            ["reader", "group", "calls", *TABLE3_HEAD, "model vs reader: DeLong p",
             "McNemar p, malignant patients", "McNemar p, benign patients",
             "management accuracy", "class calls: macro AUC"], per_reader,
        )]))  # fmt: skip
    return out


def flow_section(result: Mapping[str, Any]) -> list[Section]:
    """The STARD flow: manifest -> predicted -> excluded (with reasons) -> analysed."""
    flow = result.get("flow")
    if not flow:
        return []
    where = f"{flow['split']} split" if flow["split"] else "every split"
    rows = []
    if "manifest" in flow:
        m = flow["manifest"]
        rows.append(["in the manifest", str(m["patients"]), str(m["images"])])
    p, e = flow["predicted"], flow["excluded"]
    rows.append(["predicted", str(p["patients"]), str(p["images"])])
    rows.append(["excluded", f"{e['patients_without_any_prediction']} without any prediction",
                 str(e["images"])])  # fmt: skip
    rows += [[f"- {reason}", "", str(n)] for reason, n in e["reasons"].items()]
    rows.append(["analysed", str(flow["analysed"]["patients"]), "-"])
    body: list[str | Table] = [
        f"Patients and images of the {where}, from the manifest to the analysis (STARD 2015 "
        "item 19). An excluded image is one the manifest lists that has no prediction: it "
        "failed in dmfn predict (the file's status column says why) or is not in the file.",
        Table(["", "patients", "images"], rows),
    ]
    if e["note"]:
        body.append(e["note"] + ".")
    for warning in flow["warnings"]:
        body.append(f"Warning: {warning}.")
    if e["listed"]:
        body.append(Table(["patient", "image", "reason"], [
            [x["patient_id"], x["image_id"], x["reason"]] for x in e["listed"]
        ]))  # fmt: skip
    return [Section("Flow of patients (STARD)", body=body)]


def cohort_sections(result: Mapping[str, Any]) -> list[Section]:
    out = []
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
                "; ".join(f"{k.replace('_', ' ')} {p_value(v)}" for k, v in tests.items()) or "-",
            ])  # fmt: skip
        out.append(Section("Cohort (Table 1)", body=[Table(
            ["split", "patients", "images", "age (years)", "men", "compartment",
             "CTC (pg/ml)", "malignant", "tests against training"], rows,
        )]))  # fmt: skip
    groups = result.get("subgroups")
    if groups:
        rows = [
            [kind, str(level), auc_cell(a) if a.get("auc") is not None else "one class only",
             f"{a['n_positive']} / {a['n_negative']}"]
            for kind, levels in groups.items() for level, a in levels.items()
        ]  # fmt: skip
        out.append(Section("Subgroups (first system, binary AUC)", body=[
            Table(["by", "subgroup", "AUC [DeLong CI]", "positive / negative"], rows),
            FEW_CASES_RULE,
        ]))  # fmt: skip
    return out


def build_sections(result: Mapping[str, Any]) -> list[Section]:
    """The report's sections, in reading order."""
    if "over_seeds" in result:
        from .seeds import seed_sections

        return seed_sections(result)
    return [
        *flow_section(result),
        *binary_sections(result),
        *multiclass_sections(result),
        *conformal_sections(result),
        *reader_sections(result),
        *cohort_sections(result),
    ]


def write_report(out: Path, inputs: EvaluationInputs) -> dict[str, Any]:
    """Compute, then write ``out/metrics.json``, the PNGs, ``out/report.html`` and
    ``out/report.md``, and remove the earlier evaluation's other files (:func:`remove_stale`);
    check ``out`` with :func:`check_output_folder` first."""
    out.mkdir(parents=True, exist_ok=True)
    result, systems = evaluate(inputs)
    pngs = make_figures(out, result, systems, inputs)
    result["figures"] = {k: str(v.name) for k, v in pngs.items()}
    metrics = write_text(out / "metrics.json", json.dumps(clean_json(result), indent=2) + "\n")
    documents = write_documents(out, result, pngs)
    remove_stale(out, [metrics, *documents, *pngs.values()])
    return result


def write_documents(
    out: Path, result: Mapping[str, Any], pngs: Mapping[str, Path]
) -> tuple[Path, Path]:
    """``out/report.html`` (self-contained) and ``out/report.md`` from the same sections."""
    sections = build_sections(result)
    warning = SYNTHETIC_WARNING if result.get("synthetic") is not False else None
    html = to_html("dmfn evaluate", warning, sections, pngs, figures.FIGURE_CAPTIONS,
                   provenance_lines(result))  # fmt: skip
    return (
        write_text(out / "report.html", html),
        write_text(out / "report.md", to_markdown("dmfn evaluate", warning, sections)),
    )


def provenance_lines(result: Mapping[str, Any]) -> list[str]:
    """One line per system: the model that made its predictions (sha256, training date,
    synthetic or not), as the predictions file records it."""
    lines = []
    for name, prov in (result.get("provenance") or {}).items():
        sha = prov.get("sha256") or "not recorded"
        trained = prov.get("trained") or "not recorded"
        synthetic = {True: "yes", False: "no"}.get(prov.get("synthetic"), "not recorded")
        lines.append(f"{name}: model sha256 {sha}; trained {trained}; synthetic data: {synthetic}")
    return lines
