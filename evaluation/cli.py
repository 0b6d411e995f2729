"""``dmfn evaluate``: the paper's statistics on predictions CSVs (equal to R pROC), the reader
study and the cohort table, written as ``metrics.json``, PNG figures and a self-contained
``report.html``."""

from __future__ import annotations

import argparse
import logging
import sys
from pathlib import Path

from dmfn.client.flags import add_overwrite
from dmfn.contract.errors import InvalidInput, in_flags
from dmfn.contract.management import load_management
from dmfn.contract.predictions import PredictionTable, read_predictions
from dmfn.contract.taxonomy import DEFAULT_GROUPING, GROUPINGS, Taxonomy

from .analysis import POSITIVES
from .proportions import CI_METHODS

log = logging.getLogger("dmfn.evaluate")

#: API argument -> flag of `dmfn evaluate` (error messages speak in flags).
FLAGS = {
    "predictions": "--predictions",
    "compare": "--compare",
    "readers": "--readers",
    "manifest": "--manifest",
    "split": "--split",
    "positive": "--positive",
    "threshold": "--threshold",
    "ci_method": "--ci",
    "n_boot": "--bootstrap",
    "validation": "--validation",
    "runs": "--runs",
    "names": "--names",
    "grouping": "--grouping",
    "management": "--management",
    "coverage": "--coverage",
    "out": "--out",
    "overwrite": "--overwrite",
}


def build_parser() -> argparse.ArgumentParser:
    """The ``dmfn evaluate`` argument parser."""
    p = argparse.ArgumentParser(
        prog="dmfn evaluate",
        description=(
            "Evaluate predictions at the patient level (image rows are averaged per patient): "
            "ROC AUC with DeLong and bootstrap 95 % CIs, sensitivity / specificity / PPV / NPV / "
            "accuracy with CIs at the Youden threshold chosen on validation (or --threshold), "
            "Hand & Till and per-class AUCs, top-1/top-3 accuracy, the confusion matrix, "
            "calibration, conformal class sets (--coverage); paired DeLong and McNemar tests "
            "against --compare files; the reader study (--readers); the cohort table and "
            "subgroup AUCs (--manifest). The statistics equal R pROC's. With --runs instead: "
            "several training runs (seeds) per system, each run's AUC with its DeLong CI, mean "
            "and SD over seeds, the seed ensemble and paired DeLong tests seed by seed. Writes "
            "OUT/metrics.json, OUT/report.html, OUT/report.md and PNG figures."
        ),
    )
    p.add_argument("--predictions", type=Path, default=None,
                   help="predictions CSV (dmfn predict / dmfn train), or a binary-only file: "
                   "patient_id, label (benign/malignant), malignant_prob")  # fmt: skip
    p.add_argument("--runs", nargs="+", action="append", default=[], metavar="NAME FILE",
                   help="a system's name and its runs' predictions files (one per seed), e.g. "
                   "--runs dmfn d/seed_0/predictions_test.csv d/seed_1/predictions_test.csv; "
                   "repeat per system; the first is compared with the others")  # fmt: skip
    p.add_argument("--compare", type=Path, nargs="*", default=[],
                   help="other systems' predictions on the same patients (paired tests)")  # fmt: skip
    p.add_argument("--names", nargs="+", default=[],
                   help="names of the systems in the order --predictions, --compare ... "
                   "(default: the file names, or the folders where their paths differ)")  # fmt: skip
    p.add_argument("--readers", type=Path, default=None,
                   help="readers.csv: reader_id, group, patient_id, session, call (benign / "
                   "malignant), class_call, management (either may be empty), [score]; "
                   "docs/readers.md")  # fmt: skip
    p.add_argument("--manifest", type=Path, default=None,
                   help="the cohort's manifest: cohort table (Table 1), subgroup AUCs, CTC plot")  # fmt: skip
    p.add_argument("--validation", type=Path, nargs="+", default=[],
                   help="validation predictions, one per system in the order --predictions, "
                   "--compare ...: each system's Youden threshold is chosen there, and the first "
                   "one's calibration temperature is fitted there")  # fmt: skip
    p.add_argument(
        "--split", default=None, help="evaluate only this split of the files (e.g. test)"
    )
    p.add_argument("--positive", choices=POSITIVES, default="malignant",
                   help="positive class of the binary task (the paper's Table 3 uses benign)")  # fmt: skip
    p.add_argument("--threshold", type=float, default=None,
                   help="decision threshold on the positive class's probability (default: Youden "
                   "on validation; without validation, Youden on the evaluated cases, reported as such)")  # fmt: skip
    p.add_argument("--ci", dest="ci_method", choices=CI_METHODS, default="wilson",
                   help="interval of the proportions (wilson)")  # fmt: skip
    p.add_argument("--bootstrap", dest="n_boot", type=int, default=1000,
                   help="bootstrap replicates of the AUC and Hand & Till intervals (1000)")  # fmt: skip
    p.add_argument("--seed", type=int, default=0, help="bootstrap seed (0)")
    p.add_argument("--coverage", type=float, default=None,
                   help="coverage of the conformal class sets, in (0, 1) (0.9): calibrated on "
                   "the validation patients, APS and class-conditional (Mondrian) side by side, "
                   "for the classes and for benign / malignant; docs/conformal.md")  # fmt: skip
    p.add_argument("--taxonomy", type=Path, default=None,
                   help="taxonomy CSV (default: the paper's 20 classes)")  # fmt: skip
    p.add_argument("--management", type=Path, default=None,
                   help="management policy JSON for the reader study's management accuracy "
                   "(default: dmfn's, not from the paper)")  # fmt: skip
    p.add_argument("--grouping", choices=sorted(GROUPINGS), default=DEFAULT_GROUPING,
                   help="benign/malignant grouping of the classes (table2: every thymoma "
                   "malignant; thymoma_a_ab_benign: types A and AB benign); labels given as "
                   "classes are grouped by it")  # fmt: skip
    p.add_argument("--out", type=Path, required=True,
                   help="output folder (one that holds an earlier evaluation is refused unless "
                   "--overwrite)")  # fmt: skip
    add_overwrite(p, "replace the earlier evaluation in --out (its files that this run does not "
                  "write are removed)")  # fmt: skip
    return p


def main(argv: list[str] | None = None) -> int:
    """Entry point of ``dmfn evaluate``; 0 done, 2 a usage or input error."""
    from dmfn.client.manifest import read_manifest
    from dmfn.contract.taxonomy import load_taxonomy

    from .readers import read_readers
    from .report import EvaluationInputs, check_output_folder, write_report

    parser = build_parser()
    args = parser.parse_args(argv)
    if (args.predictions is None) == (not args.runs):
        parser.error("give either --predictions (one run per system) or --runs (several)")
    logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(name)s: %(message)s")
    try:
        check_output_folder(args.out, args.overwrite)  # before any work: a refusal costs nothing
        taxonomy = load_taxonomy(args.taxonomy, grouping=args.grouping)
        if args.runs:
            return _over_seeds(args, taxonomy)
        inputs = EvaluationInputs(
            predictions=read_predictions(args.predictions),
            taxonomy=taxonomy,
            compare=[read_predictions(p) for p in args.compare],
            readers=read_readers(args.readers, taxonomy) if args.readers else None,
            readers_path=str(args.readers or ""),
            manifest=read_manifest(args.manifest, taxonomy, check_files=False)
            if args.manifest
            else None,
            validation=[read_predictions(v) for v in args.validation],
            split=args.split,
            positive=args.positive,
            threshold=args.threshold,
            ci_method=args.ci_method,
            n_boot=args.n_boot,
            seed=args.seed,
            names=args.names,
            management=load_management(args.management) if args.management else None,
            coverage=args.coverage,
        )
        result = write_report(args.out, inputs)
    except ValueError as err:
        print(f"dmfn evaluate: {in_flags(err, FLAGS)}", file=sys.stderr)
        return 2
    for name, s in result["systems"].items():
        a = s["binary"]["auc"]
        line = f"{name}: {s['n_patients']} patients, binary AUC {a['auc']:.3f} "
        line += f"[{a['ci_low']:.3f}, {a['ci_high']:.3f}]"
        if "multiclass" in s:
            line += f", Hand & Till {s['multiclass']['hand_till_auc']['auc']:.3f}"
        print(line)
    for c in result["comparisons"]:
        d = c["delong_paired"]
        print(f"{c['system_1']} vs {c['system_2']}: AUC difference {d['difference']:+.3f}, "
              f"paired DeLong z {d['z']:.2f}, p {d['p']:.3g}")  # fmt: skip
    conformal = result.get("conformal") or {}
    for method, c in (conformal.get("classes") or {}).items():
        cov = c["coverage"]
        print(f"conformal {method} at {conformal['coverage_target']:.2f}: coverage "
              f"{cov['value']:.3f} [{cov['ci_low']:.3f}, {cov['ci_high']:.3f}], mean set size "
              f"{c['mean_size']:.2f}")  # fmt: skip
    readers = result.get("readers") or {}
    for session, data in readers.get("sessions", {}).items():
        tag = " (SIMULATED)" if readers["simulated"] else ""
        for who, d in [("model", data["model"]), *data["groups"].items()]:
            auc = f"AUC {d['auc']['auc']:.3f}, " if d.get("auc") else ""
            line = f"readers{tag} {session}: {who}: {auc}"
            line += f"sensitivity {d['sensitivity']['value']:.3f}, "
            line += f"specificity {d['specificity']['value']:.3f}"
            if "model_vs_group_delong" in d:
                line += f", DeLong vs model p {d['model_vs_group_delong']['p']:.3g}"
            if "management_accuracy" in d:
                line += f", management {d['management_accuracy']['value']:.3f}"
            print(line)
    print(f"report: {args.out / 'report.html'}  metrics: {args.out / 'metrics.json'}")
    return 0


def _over_seeds(args: argparse.Namespace, taxonomy: Taxonomy) -> int:
    """``--runs``: the summary over seeds (see dmfn.evaluation.seeds)."""
    import json

    from .report import clean_json, remove_stale, write_documents, write_text
    from .seeds import seed_figure, summarise_runs

    runs: dict[str, list[PredictionTable]] = {}
    for name, *files in args.runs:
        if not files:
            raise InvalidInput("runs", f"{name!r} has no predictions file after it")
        if name in runs:
            raise InvalidInput("runs", f"system {name!r} given twice")
        runs[name] = [read_predictions(f) for f in files]
    result = summarise_runs(runs, taxonomy, args.split, args.positive)
    args.out.mkdir(parents=True, exist_ok=True)
    pngs = {"seeds": seed_figure(args.out, result)}
    result["figures"] = {k: v.name for k, v in pngs.items()}
    metrics = write_text(args.out / "metrics.json", json.dumps(clean_json(result), indent=2) + "\n")
    documents = write_documents(args.out, result, pngs)
    remove_stale(args.out, [metrics, *documents, *pngs.values()])
    for name, s in result["over_seeds"]["systems"].items():
        b = s["binary_auc"]
        sd = "" if b["sd_over_seeds"] is None else f" ± {b['sd_over_seeds']:.3f} (SD over seeds)"
        e = s["ensemble"]["binary_auc"]
        print(f"{name}: {b['n_runs']} runs, binary AUC {b['mean']:.3f}{sd}; seed ensemble "
              f"{e['auc']:.3f} [{e['ci_low']:.3f}, {e['ci_high']:.3f}]")  # fmt: skip
    for c in result["over_seeds"]["comparisons"]:
        print(f"{c['system_1']} vs {c['system_2']}: p < 0.05 in {c['seeds_with_p_below_0.05']} "
              f"of {len(c['per_seed'])} seeds; ensembles p {c['ensemble']['p']:.3g}")  # fmt: skip
    print(f"report: {args.out / 'report.html'}  metrics: {args.out / 'metrics.json'}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
