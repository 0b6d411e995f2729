"""``dmfn evaluate``'s output: ``metrics.json`` (every number), PNG figures, a self-contained
``report.html`` (figures embedded; it opens offline) and ``report.md`` (the same tables).

Each file is written whole or not at all (:func:`~dmfn.contract.outfile.replacing`); a folder
holding an earlier evaluation is refused unless the caller says to replace it
(:func:`check_output_folder`), and then the earlier files this run does not write are removed,
so the folder holds one evaluation."""

from __future__ import annotations

import json
import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

from dmfn.client.manifest import Manifest
from dmfn.contract.errors import InvalidInput
from dmfn.contract.management import ManagementPolicy
from dmfn.contract.outfile import replacing
from dmfn.contract.predictions import PredictionTable
from dmfn.contract.taxonomy import Taxonomy

from . import calibration, figures
from .analysis import SystemScores, align, analyse, compare, scores_of
from .cohort import cohort_table, subgroup_aucs
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
from .proportions import youden_threshold
from .readers import ReaderCall, analyse_readers

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


def system_names(tables: Sequence[PredictionTable], given: Sequence[str] = ()) -> list[str]:
    """Names of the systems: ``given`` (--names), else the files' stems, else (when the stems
    collide, as runs/dmfn/seed_0/predictions_test.csv and runs/cnn/seed_0/... do) the first
    folder, from the file upwards, where their paths differ; numbered as a last resort."""
    if given:
        if len(given) != len(tables) or len(set(given)) != len(given):
            raise InvalidInput(
                "names", f"give {len(tables)} different names, one per system; got {list(given)}"
            )
        return list(given)
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


def _threshold(
    inputs: EvaluationInputs, position: int, table: PredictionTable, name: str
) -> tuple[float | None, str]:
    """The decision threshold of system ``position``: given, or Youden's on its validation
    predictions (a file, or the table's own validation rows), else None (Youden's on the
    evaluated cases, said so in the report)."""
    if inputs.threshold is not None:
        return inputs.threshold, "given (--threshold)"
    source = None
    if position < len(inputs.validation):
        source = inputs.validation[position]
        where = f"youden on {Path(str(source.path)).name}"
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
    thresholds = {}
    if len(inputs.validation) > len(tables):
        raise InvalidInput(
            "validation",
            f"{len(inputs.validation)} file(s) for {len(tables)} system(s): give at most one "
            "validation file per system, in the order --predictions, --compare ...",
        )
    for position, (table, s) in enumerate(zip(tables, systems, strict=True)):
        value, source = _threshold(inputs, position, table, s.name)
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
    if inputs.validation and main.probs is not None and main.classes is not None:
        val = scores_of(inputs.validation[0], inputs.taxonomy, "validation")
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
        out / figures.FIGURE_FILES["roc"],
        systems,
        positive,
        aucs,
        points,
        seed=inputs.seed,
        operating=operating,
    )
    main = systems[0]
    multi = result["systems"][main.name].get("multiclass")
    if multi:
        pngs["roc_per_class"] = figures.per_class_roc(
            out / figures.FIGURE_FILES["roc_per_class"], main, multi["per_class_auc"]
        )
        pngs["confusion"] = figures.confusion(
            out / figures.FIGURE_FILES["confusion"], multi["confusion"]["counts"], multi["confusion"]["classes"],
            f"{main.name}: confusion matrix (rows: true class, normalised)",
        )  # fmt: skip
        cal = result["systems"][main.name]["calibration"]
        curves = {"as given": cal["reliability"]}
        fitted = cal.get("temperature_fitted_on_validation")
        if fitted:
            curves[f"temperature {fitted['temperature']:.2f} (fitted on validation)"] = fitted[
                "reliability_after"
            ]
        pngs["calibration"] = figures.reliability(out / figures.FIGURE_FILES["calibration"], curves)
    if inputs.manifest is not None:
        values: dict[str, list[float]] = {n: [] for n in inputs.taxonomy.names}
        seen = set()
        for r in inputs.manifest.rows:
            if r.patient_id not in seen and r.label in values:
                seen.add(r.patient_id)
                values[r.label].append(r.ctc[0])
        pngs["ctc"] = figures.ctc_by_class(out / figures.FIGURE_FILES["ctc"], values)
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
    return out


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
        rows = [[c, ci(a), str(a["n_positive"])]
                for c, a in main["multiclass"]["per_class_auc"].items()]  # fmt: skip
        out.append(Section("One-vs-rest AUC per class (first system)", 3,
                           [Table(["class", "AUC [DeLong CI]", "patients of the class"], rows)]))  # fmt: skip
    cal = main.get("calibration")
    if cal:
        text = f"ECE {fmt(cal['ece'])}, Brier {fmt(cal['brier'])}"
        fitted = cal.get("temperature_fitted_on_validation")
        if fitted:
            text += (
                f"; with a temperature of {fmt(fitted['temperature'], 2)} fitted on validation: "
                f"ECE {fmt(fitted['ece_after'])}, Brier {fmt(fitted['brier_after'])}"
            )
        out.append(Section("Calibration (first system)", 3, [text + "."]))
    return out


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
            [kind, str(level), ci(a) if a.get("auc") is not None else "one class only",
             f"{a['n_positive']} / {a['n_negative']}"]
            for kind, levels in groups.items() for level, a in levels.items()
        ]  # fmt: skip
        out.append(Section("Subgroups (first system, binary AUC)", body=[
            Table(["by", "subgroup", "AUC [DeLong CI]", "positive / negative"], rows)
        ]))  # fmt: skip
    return out


def build_sections(result: Mapping[str, Any]) -> list[Section]:
    """The report's sections, in reading order."""
    if "over_seeds" in result:
        from .seeds import seed_sections

        return seed_sections(result)
    return [
        *binary_sections(result),
        *multiclass_sections(result),
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
    return (
        write_text(out / "report.html", to_html("dmfn evaluate", warning, sections, pngs)),
        write_text(out / "report.md", to_markdown("dmfn evaluate", warning, sections)),
    )
