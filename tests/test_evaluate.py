"""dmfn evaluate end to end on predictions of a planned synthetic cohort (no images needed): the
files it writes, the numbers against the statistics functions, and one-line errors for bad
inputs."""

from __future__ import annotations

import csv
import json
from pathlib import Path

import numpy as np
import pytest

from dmfn.client.manifest import MANIFEST_COLUMNS
from dmfn.contract.predictions import PredictionRow, Provenance, write_predictions
from dmfn.contract.taxonomy import load_taxonomy
from dmfn.evaluation import metrics
from dmfn.evaluation.cli import main
from dmfn.evaluation.roc import auc_delong, delong_paired
from dmfn.synth.cohort import plan_cohort
from dmfn.synth.readers import simulate_readers

TAXONOMY = load_taxonomy()
MALIGNANT = np.array(TAXONOMY.malignant_mask)


@pytest.fixture(scope="module")
def cohort(tmp_path_factory) -> dict:
    """A planned cohort of 120 patients: its manifest, two systems' predictions (one better
    than the other), validation predictions and simulated readers."""
    folder = tmp_path_factory.mktemp("evaluate")
    plans = plan_cohort(120, seed=3)
    with (folder / "manifest.csv").open("w", newline="") as handle:
        writer = csv.DictWriter(handle, fieldnames=MANIFEST_COLUMNS)
        writer.writeheader()
        for p in plans:
            writer.writerow({
                "patient_id": p.patient_id, "image_id": f"{p.patient_id}_1",
                "image_path": f"images/{p.patient_id}", "mask_path": f"masks/{p.patient_id}.nii.gz",
                "ctc_level_pg_ml": p.ctc_level_pg_ml, "age_years": p.age_years, "sex": p.sex,
                "location": p.location, "label": p.label, "group": p.group, "split": p.split,
            })  # fmt: skip
    rng = np.random.default_rng(0)

    def predictions(split: str, strength: float, name: str) -> Path:
        rows = []
        for p in plans:
            if p.split != split:
                continue
            logits = rng.normal(0, 1, len(TAXONOMY))
            logits[TAXONOMY.index(p.label)] += strength
            probs = np.exp(logits) / np.exp(logits).sum()
            rows.append(
                PredictionRow("patient", p.patient_id, float(probs[MALIGNANT].sum()),
                              tuple(float(v) for v in probs), "", split, p.label)
            )  # fmt: skip
        prov = Provenance("ab" * 32, "2026-12-01T00:00:00+00:00", True)
        return write_predictions(folder / f"{name}.csv", TAXONOMY.names, rows, prov)

    looks = {p.patient_id: {"label": p.label, "appearance": p.label, "lesion_diameter_mm": "40"}
             for p in plans}  # fmt: skip
    readers = simulate_readers(plans, looks, seed=1, out=folder)
    return {
        "folder": folder,
        "plans": plans,
        "dmfn": predictions("test", 2.5, "dmfn"),
        "cnn": predictions("test", 1.0, "cnn"),
        "val": predictions("val", 2.5, "dmfn_val"),
        "readers": readers,
        "dmfn_runs": [predictions("test", 2.5, f"dmfn_seed{k}") for k in range(3)],
        "cnn_runs": [predictions("test", 1.5, f"cnn_seed{k}") for k in range(3)],
    }


def _table(path: Path):
    from dmfn.contract.predictions import read_predictions

    rows = read_predictions(path).patient_rows()
    labels = np.array([TAXONOMY.index(r.label) for r in rows])
    probs = np.array([r.probs for r in rows])
    return labels, probs, np.array([r.malignant_prob for r in rows])


def test_evaluate_writes_metrics_figures_and_a_self_contained_report(cohort, tmp_path, capsys):
    out = tmp_path / "report"
    argv = [
        "--predictions", str(cohort["dmfn"]), "--compare", str(cohort["cnn"]),
        "--validation", str(cohort["val"]), "--readers", str(cohort["readers"]),
        "--manifest", str(cohort["folder"] / "manifest.csv"), "--bootstrap", "200",
        "--out", str(out),
    ]  # fmt: skip
    assert main(argv) == 0
    printed = capsys.readouterr().out
    assert "paired DeLong" in printed and "report:" in printed
    result = json.loads((out / "metrics.json").read_text())
    pngs = ("flow.png", "roc.png", "roc_per_class.png", "confusion.png", "calibration.png",
            "calibration_binary.png", "decision_curve.png", "subgroups.png", "ctc_by_class.png")  # fmt: skip
    for png in pngs:
        assert (out / png).is_file() and (out / png).stat().st_size > 10_000, png
    html = (out / "report.html").read_text()
    assert html.count("data:image/png;base64,") == len(pngs) and "<img" in html
    assert 'src="http' not in html  # self-contained: nothing to fetch
    assert "Synthetic" in html and "SIMULATED readers" in html

    # the numbers are those of the statistics functions on the same patients
    labels, probs, malignant = _table(cohort["dmfn"])
    _, _, malignant_cnn = _table(cohort["cnn"])
    y = MALIGNANT[labels].astype(int)
    dmfn = result["systems"]["dmfn"]
    assert dmfn["binary"]["auc"]["auc"] == pytest.approx(auc_delong(y, malignant).auc, abs=1e-12)
    assert dmfn["binary"]["auc"]["ci_low"] == pytest.approx(auc_delong(y, malignant).low, abs=1e-12)
    assert dmfn["multiclass"]["hand_till_auc"]["auc"] == pytest.approx(
        metrics.hand_till_auc(labels, probs), abs=1e-12
    )
    (comparison,) = result["comparisons"]
    paired = delong_paired(y, malignant, malignant_cnn)
    assert comparison["delong_paired"]["p"] == pytest.approx(paired.p, abs=1e-12)
    assert dmfn["binary"]["threshold"]["chosen"].startswith("youden on")
    assert "temperature_fitted_on_validation" in dmfn["calibration"]
    assert set(result["cohort"]["splits"]) == {"train", "val", "test"}
    assert set(result["subgroups"]) == {"sex", "age", "location"}
    groups = result["readers"]["sessions"]["ct_plus_ctc"]["groups"]
    assert set(groups) == {"resident", "attending", "chief"}
    assert result["readers"]["simulated"] is True


def test_binary_only_files_and_benign_as_positive(cohort, tmp_path) -> None:
    labels, _, malignant = _table(cohort["dmfn"])
    binary = tmp_path / "reader_scores.csv"
    with binary.open("w", newline="") as handle:
        writer = csv.writer(handle)
        writer.writerow(["patient_id", "label", "malignant_prob"])
        with cohort["dmfn"].open(newline="") as source:
            rows = [r for r in csv.DictReader(source) if r["level"] == "patient"]
        for r, m in zip(rows, malignant, strict=True):
            writer.writerow([r["patient_id"], r["label"] if r["label"] else "", round(m, 1)])
    out = tmp_path / "report"
    assert main(["--predictions", str(binary), "--positive", "benign", "--out", str(out)]) == 0
    result = json.loads((out / "metrics.json").read_text())
    system = result["systems"]["reader_scores"]
    assert "multiclass" not in system and system["binary"]["positive"] == "benign"
    y = MALIGNANT[labels].astype(int)
    assert system["binary"]["auc"]["auc"] == pytest.approx(
        auc_delong(y, np.round(malignant, 1)).auc, abs=1e-12
    )


def _write(path: Path, header: list[str], rows: list[list[object]]) -> Path:
    with path.open("w", newline="") as handle:
        writer = csv.writer(handle)
        writer.writerow(header)
        writer.writerows(rows)
    return path


@pytest.mark.parametrize("case", ["one class", "NaN score", "patients differ", "unknown class",
                                  "readers' patients missing", "runs without files",
                                  "too many validation files"])  # fmt: skip
def test_bad_inputs_are_one_line_errors_naming_the_file(case, cohort, tmp_path, capsys) -> None:
    head = ["patient_id", "label", "malignant_prob"]
    good = _write(tmp_path / "good.csv", head, [["a", "benign", 0.1], ["b", "malignant", 0.9]])
    argv = ["--out", str(tmp_path / "out")]
    if case == "one class":
        bad = _write(tmp_path / "bad.csv", head, [["a", "benign", 0.1], ["b", "benign", 0.3]])
        argv += ["--predictions", str(bad)]
        expected = "an AUC needs both classes"
    elif case == "NaN score":
        bad = _write(tmp_path / "bad.csv", head, [["a", "benign", "nan"], ["b", "malignant", 1]])
        argv += ["--predictions", str(bad)]
        expected = f"{bad} line 2: must be finite"
    elif case == "patients differ":
        bad = _write(tmp_path / "bad.csv", head, [["a", "benign", 0.1], ["c", "malignant", 0.9]])
        argv += ["--predictions", str(good), "--compare", str(bad)]
        expected = f"the patients of {good} and {bad} differ"
    elif case == "unknown class":
        bad = _write(tmp_path / "bad.csv", head, [["a", "cystt", 0.1], ["b", "malignant", 0.9]])
        argv += ["--predictions", str(bad)]
        expected = f"{bad}: unknown class 'cystt'"
    elif case == "runs without files":
        argv += ["--runs", "dmfn", str(good), "--runs", "cnn"]
        expected = "--runs: 'cnn' has no predictions file after it"
    elif case == "too many validation files":
        argv += ["--predictions", str(good), "--validation", str(good), str(good)]
        expected = "--validation: 2 file(s) for 1 system(s)"
    else:
        readers = _write(tmp_path / "readers.csv",
                         ["reader_id", "group", "patient_id", "session", "call", "class_call",
                          "management"],
                         [["r1", "chief", "a", "ct_only", "benign", "", ""],
                          ["r1", "chief", "zz", "ct_only", "benign", "", ""]])  # fmt: skip
        argv += ["--predictions", str(good), "--readers", str(readers)]
        expected = f"{readers}: 1 patient(s) missing from the predictions"
    assert main(argv) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1, err
    assert err.startswith("dmfn evaluate: ") and expected in err, err


def test_a_file_of_several_splits_is_evaluated_on_its_test_split(cohort, tmp_path) -> None:
    from dmfn.contract.predictions import read_predictions

    test, val = read_predictions(cohort["dmfn"]), read_predictions(cohort["val"])
    both = write_predictions(
        tmp_path / "both.csv", TAXONOMY.names, [*val.rows, *test.rows], test.provenance
    )
    out = tmp_path / "report"
    assert main(["--predictions", str(both), "--bootstrap", "100", "--out", str(out)]) == 0
    result = json.loads((out / "metrics.json").read_text())
    assert result["split"] == "test" and "held-out" in result["split_note"]
    system = result["systems"]["both"]
    assert system["n_patients"] == len(test.patient_rows())
    n_val = len(val.patient_rows())
    assert system["binary"]["threshold"]["chosen"] == (
        f"youden on the val split of the same file (n {n_val})"
    )


def test_runs_summarise_seeds_with_intervals_and_paired_tests(cohort, tmp_path, capsys) -> None:
    out = tmp_path / "seeds"
    argv = ["--runs", "dmfn", *map(str, cohort["dmfn_runs"]),
            "--runs", "cnn", *map(str, cohort["cnn_runs"]), "--out", str(out)]  # fmt: skip
    assert main(argv) == 0
    assert "SD over seeds" in capsys.readouterr().out
    result = json.loads((out / "metrics.json").read_text())["over_seeds"]
    tables = {name: [_table(p) for p in cohort[f"{name}_runs"]] for name in ("dmfn", "cnn")}
    labels = tables["dmfn"][0][0]
    y = MALIGNANT[labels].astype(int)
    aucs = [auc_delong(y, m).auc for _, _, m in tables["dmfn"]]
    dmfn = result["systems"]["dmfn"]
    assert [r["binary_auc"]["auc"] for r in dmfn["runs"]] == pytest.approx(aucs, abs=1e-12)
    assert dmfn["binary_auc"]["mean"] == pytest.approx(np.mean(aucs), abs=1e-12)
    assert dmfn["binary_auc"]["sd_over_seeds"] == pytest.approx(np.std(aucs, ddof=1), abs=1e-12)
    mean_prob = np.mean([m for _, _, m in tables["dmfn"]], axis=0)
    assert dmfn["ensemble"]["binary_auc"]["auc"] == pytest.approx(
        auc_delong(y, mean_prob).auc, abs=1e-12
    )
    (comparison,) = result["comparisons"]
    for k, d in enumerate(comparison["per_seed"]):
        expected = delong_paired(y, tables["dmfn"][k][2], tables["cnn"][k][2])
        assert d["p"] == pytest.approx(expected.p, abs=1e-12)
    report = (out / "report.md").read_text()
    assert "not a confidence interval" in report and "| dmfn | 3 |" in report
    assert (out / "seeds.png").stat().st_size > 10_000
    assert "data:image/png;base64," in (out / "report.html").read_text()


def test_report_markdown_carries_the_same_tables(cohort, tmp_path) -> None:
    out = tmp_path / "report"
    argv = ["--predictions", str(cohort["dmfn"]), "--compare", str(cohort["cnn"]),
            "--readers", str(cohort["readers"]), "--bootstrap", "100", "--out", str(out)]  # fmt: skip
    assert main(argv) == 0
    md = (out / "report.md").read_text()
    result = json.loads((out / "metrics.json").read_text())
    auc = result["systems"]["dmfn"]["binary"]["auc"]
    assert f"{auc['auc']:.3f} [{auc['ci_low']:.3f}, {auc['ci_high']:.3f}]" in md
    assert "Reader study (SIMULATED readers)" in md and "resident_1" in md
    assert md.startswith("# dmfn evaluate") and "Synthetic" in md


def test_systems_are_named_by_where_their_paths_differ(cohort, tmp_path) -> None:
    from dmfn.contract.predictions import read_predictions
    from dmfn.evaluation.report import system_names

    tables = []
    for model in ("dmfn", "cnn"):
        (tmp_path / model / "seed_0").mkdir(parents=True)
        target = tmp_path / model / "seed_0" / "predictions_test.csv"
        target.write_bytes(cohort[model].read_bytes())
        tables.append(read_predictions(target))
    assert system_names(tables) == ["dmfn", "cnn"]
    assert system_names(tables, ["fusion", "ct"]) == ["fusion", "ct"]
    with pytest.raises(ValueError, match="names"):
        system_names(tables, ["same", "same"])


def test_results_script_splices_the_evaluate_reports_into_a_page(cohort, tmp_path) -> None:
    """scripts/results_markdown.py (the last step of scripts/results.sh) on reports made here:
    the tables land between the markers of the page, one heading level below the heading above
    them, with links relative to the page."""
    import importlib.util

    spec = importlib.util.spec_from_file_location(
        "results_markdown", Path(__file__).parents[1] / "scripts" / "results_markdown.py"
    )
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    out = tmp_path / "results"
    (out / "cohort").mkdir(parents=True)
    (out / "cohort" / "cohort.json").write_text('{"n_patients": 120}')
    assert main(["--predictions", str(cohort["dmfn"]), "--compare", str(cohort["cnn"]),
                 "--readers", str(cohort["readers"]), "--bootstrap", "100",
                 "--out", str(out / "report_test")]) == 0  # fmt: skip
    assert main(["--predictions", str(cohort["val"]), "--bootstrap", "100",
                 "--out", str(out / "report_val")]) == 0  # fmt: skip
    assert main(["--runs", "dmfn", *map(str, cohort["dmfn_runs"]), "--runs", "cnn",
                 *map(str, cohort["cnn_runs"]), "--out", str(out / "report_seeds")]) == 0  # fmt: skip
    page = tmp_path / "results.md"
    page.write_text(
        f"# x\n\n## The quick path\n\n{module.BEGIN}\nSTALE TABLES\n{module.END}\n\ntail\n"
    )
    level = module.level_at_marker(page)
    assert level == 3
    text = module.build(out, "demo", "2026", "3", 600, level)
    assert text.index("Test split (held out)") < text.index("Validation split")
    assert "optimistic" in text and "10 min" in text and "not a confidence interval" in text
    assert text.startswith("### What the tests say") and "\n#### Binary" in text
    module.splice(page, text)
    spliced = page.read_text()
    assert "STALE TABLES" not in spliced and spliced.endswith("tail\n") and text in spliced
    # the project's own pages: both hold the markers, links from them to docs/ are local
    docs = Path(__file__).parents[1] / "docs"
    assert module.level_at_marker(docs / "results.md") == 3
    assert module.level_at_marker(docs / "results_paper.md") == 2
    assert module.docs_link(docs / "results.md") == ""
    assert module.docs_link(Path(__file__).parents[1] / "README.md") == "docs/"


def test_results_script_reads_the_ceilings_under_either_name() -> None:
    """cohort.json keeps the generator's ceilings under "paper_agreement"; cohorts generated
    before the rename keep them under "fidelity"."""
    import importlib.util

    spec = importlib.util.spec_from_file_location(
        "results_markdown", Path(__file__).parents[1] / "scripts" / "results_markdown.py"
    )
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    ceilings = {"bayes_ceilings": [
        {"features": name, "binary_auc": auc, "hand_till_auc": auc - 0.1}
        for name, auc in (("ct", 0.84), ("ctc+compartment", 0.80), ("ct+ctc+compartment", 0.92))
    ]}  # fmt: skip
    for key in ("paper_agreement", "fidelity"):
        text = module._ceilings({key: ceilings}, "")
        assert "0.800 binary / 0.700 Hand & Till" in text and "[docs/data.md](data.md)" in text
    assert "no image ceiling" in module._ceilings({}, "")


def test_an_earlier_evaluation_is_replaced_only_with_overwrite(cohort, tmp_path, capsys) -> None:
    from dmfn.evaluation.report import OUTPUT_FILES

    out = tmp_path / "report"
    first = ["--predictions", str(cohort["dmfn"]), "--manifest",
             str(cohort["folder"] / "manifest.csv"), "--bootstrap", "100", "--out", str(out)]  # fmt: skip
    assert main(first) == 0
    assert (out / "ctc_by_class.png").is_file()
    earlier = (out / "metrics.json").read_bytes()
    capsys.readouterr()
    second = ["--predictions", str(cohort["cnn"]), "--bootstrap", "100", "--out", str(out)]
    assert main(second) == 2
    err = capsys.readouterr().err.strip()
    assert err == (
        f"dmfn evaluate: --out: {out} holds the results of an earlier evaluation (metrics.json, "
        "report.html, report.md, flow.png, roc.png, roc_per_class.png, confusion.png, calibration.png, "
        "calibration_binary.png, decision_curve.png, subgroups.png, ctc_by_class.png); pass "
        "--overwrite to replace them"
    )
    assert (out / "metrics.json").read_bytes() == earlier
    assert main([*second, "--overwrite"]) == 0
    assert json.loads((out / "metrics.json").read_text())["systems"].keys() == {"cnn"}
    # the earlier run's figure that this run does not make is gone; nothing else is left
    written = {p.name for p in out.iterdir()}
    assert "ctc_by_class.png" not in written and written <= set(OUTPUT_FILES), written
    runs = ["--runs", "dmfn", *map(str, cohort["dmfn_runs"]), "--out", str(out)]
    assert main(runs) == 2
    assert main([*runs, "--overwrite"]) == 0
    assert {p.name for p in out.iterdir()} == {"metrics.json", "report.html", "report.md",
                                               "seeds.png"}  # fmt: skip


def test_out_that_is_a_file_is_refused(cohort, tmp_path, capsys) -> None:
    out = tmp_path / "report"
    out.write_text("not a folder")
    assert main(["--predictions", str(cohort["dmfn"]), "--out", str(out), "--overwrite"]) == 2
    assert (
        capsys.readouterr().err.strip() == f"dmfn evaluate: --out: {out} is a file; give a folder"
    )
