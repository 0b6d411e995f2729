"""``dmfn evaluate``: the paper's statistics on predictions CSVs (equal to R pROC), the reader
study and the cohort table, written as ``metrics.json``, PNG figures and a self-contained
``report.html``."""

from __future__ import annotations

import argparse
import logging
import sys
from pathlib import Path

from dmfn.contract.errors import in_flags
from dmfn.contract.predictions import read_predictions

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
}


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="dmfn evaluate",
        description=(
            "Evaluate predictions at the patient level (image rows are averaged per patient): "
            "ROC AUC with DeLong and bootstrap 95 %% CIs, sensitivity / specificity / PPV / NPV / "
            "accuracy with CIs at the Youden threshold chosen on validation (or --threshold), "
            "Hand & Till and per-class AUCs, top-1/top-3 accuracy, the confusion matrix, "
            "calibration; paired DeLong and McNemar tests against --compare files; the reader "
            "study (--readers); the cohort table and subgroup AUCs (--manifest). The statistics "
            "equal R pROC's. Writes OUT/metrics.json, OUT/report.html and PNG figures."
        ),
    )
    p.add_argument("--predictions", type=Path, required=True,
                   help="predictions CSV (dmfn predict / dmfn train), or a binary-only file: "
                   "patient_id, label (benign/malignant), malignant_prob")  # fmt: skip
    p.add_argument("--compare", type=Path, nargs="*", default=[],
                   help="other systems' predictions on the same patients (paired tests)")  # fmt: skip
    p.add_argument("--readers", type=Path, default=None,
                   help="readers.csv: reader_id, group, patient_id, call, [score], [session]")  # fmt: skip
    p.add_argument("--manifest", type=Path, default=None,
                   help="the cohort's manifest: cohort table (Table 1), subgroup AUCs, CTC plot")  # fmt: skip
    p.add_argument("--validation", type=Path, default=None,
                   help="validation predictions: the Youden threshold and the calibration "
                   "temperature are fitted there and applied to --predictions")  # fmt: skip
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
    p.add_argument("--taxonomy", type=Path, default=None,
                   help="taxonomy CSV (default: the paper's 20 classes)")  # fmt: skip
    p.add_argument("--out", type=Path, required=True, help="output folder")
    return p


def main(argv: list[str] | None = None) -> int:
    """Entry point of ``dmfn evaluate``; 0 done, 2 a usage or input error."""
    from dmfn.client.manifest import read_manifest
    from dmfn.contract.taxonomy import load_taxonomy

    from .readers import read_readers
    from .report import EvaluationInputs, write_report

    args = build_parser().parse_args(argv)
    logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(name)s: %(message)s")
    try:
        taxonomy = load_taxonomy(args.taxonomy)
        inputs = EvaluationInputs(
            predictions=read_predictions(args.predictions),
            taxonomy=taxonomy,
            compare=[read_predictions(p) for p in args.compare],
            readers=read_readers(args.readers, taxonomy) if args.readers else None,
            readers_path=str(args.readers or ""),
            manifest=read_manifest(args.manifest, taxonomy, check_files=False)
            if args.manifest
            else None,
            validation=read_predictions(args.validation) if args.validation else None,
            split=args.split,
            positive=args.positive,
            threshold=args.threshold,
            ci_method=args.ci_method,
            n_boot=args.n_boot,
            seed=args.seed,
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
    readers = result.get("readers") or {}
    for session, data in readers.get("sessions", {}).items():
        tag = " (SIMULATED)" if readers["simulated"] else ""
        for who, d in [("model", data["model"]), *data["groups"].items()]:
            line = f"readers{tag} {session}: {who}: accuracy {d['accuracy']['value']:.3f}, "
            line += f"sensitivity {d['sensitivity']['value']:.3f}, "
            line += f"specificity {d['specificity']['value']:.3f}"
            if who != "model":
                line += f", McNemar vs model p {d['model_vs_group_mcnemar']['p_chi2']:.3g}"
            print(line)
    print(f"report: {args.out / 'report.html'}  metrics: {args.out / 'metrics.json'}")
    return 0
