"""``dmfn synth``: generate a synthetic mediastinal CT + CTC cohort (DICOM, NIfTI masks, manifest)."""

from __future__ import annotations

import argparse
import json
import logging
import sys

from dmfn.client.flags import add_overwrite
from dmfn.contract.errors import in_flags
from dmfn.contract.taxonomy import DEFAULT_GROUPING, GROUPINGS
from dmfn.synth.cohort import (
    CONTRASTS,
    DEFAULT_CONTRAST,
    INFO_NAME,
    PRESETS,
    CohortGenerationError,
    generate_cohort,
    get_preset,
    plan_cohort,
)
from dmfn.synth.difficulty import APPEARANCE_MODES, DEFAULT_APPEARANCE
from dmfn.synth.paper_agreement import format_report

#: API argument -> flag of `dmfn synth` (error messages speak in flags).
FLAGS = {
    "out_dir": "--out",
    "overwrite": "--overwrite",
    "preset": "--preset",
    "n_patients": "--patients",
    "seed": "--seed",
    "workers": "--workers",
    "readers_per_group": "--readers",
    "grouping": "--grouping",
    "compartments": "--compartments",
    "appearance": "--appearance",
    "confusions": "--ct-confusions",
    "contrast": "--contrast",
}

log = logging.getLogger("dmfn.synth")


def build_parser() -> argparse.ArgumentParser:
    """The ``dmfn synth`` argument parser."""
    presets = "; ".join(
        f"{p.name}: {p.n_patients} patients, {p.matrix}x{p.matrix} pixels" for p in PRESETS.values()
    )
    parser = argparse.ArgumentParser(
        prog="dmfn synth",
        description=(
            "Generate a synthetic cohort of contrast-enhanced chest CT studies with one mediastinal "
            "lesion each, a CTC blood level and clinical facts, sampled from the paper's Tables 1 "
            "and 2. Writes OUT/images/<patient>/<image>/ (a DICOM CT series per image), "
            "OUT/masks/<image>.nii.gz (lesion masks), OUT/manifest.csv and OUT/cohort.json. "
            "Synthetic data: for pipeline checks, not clinical use."
        ),
    )
    parser.add_argument(
        "--preset",
        choices=sorted(PRESETS),
        default="tiny",
        help=f"cohort size and image matrix ({presets}); default: tiny",
    )
    parser.add_argument("--out", required=True, help="output folder (created; must be empty)")
    parser.add_argument(
        "--seed",
        type=int,
        default=0,
        help="random seed; the same seed gives the same cohort (default 0)",
    )
    parser.add_argument(
        "--workers",
        type=int,
        default=1,
        help="worker processes rendering patients in parallel; results do not depend on it (default 1)",
    )
    parser.add_argument(
        "--patients",
        type=int,
        default=None,
        help="number of patients instead of the preset's (at least 3)",
    )
    parser.add_argument(
        "--dry-run",
        action="store_true",
        help="plan the cohort and write manifest.csv, cohort.json and the readers without "
        "rendering images (seconds): to check the counts, splits and tabular data",
    )
    parser.add_argument(
        "--grouping",
        choices=sorted(GROUPINGS),
        default=DEFAULT_GROUPING,
        help="benign/malignant grouping of the classes: table2 (the paper's Table 2, every "
        "thymoma malignant) or thymoma_a_ab_benign (types A and AB benign, as the paper's text "
        f"speaks of benign thymoma); default {DEFAULT_GROUPING}",
    )
    parser.add_argument(
        "--compartments",
        default=None,
        help="CSV of compartment probabilities per class (class, anterior, middle, posterior): "
        "replaces OUR assumption in synth/data/compartments.csv (the paper gives none per class)",
    )
    parser.add_argument(
        "--readers",
        type=int,
        default=2,
        help="SIMULATED readers per group (resident, attending, chief) calling the held-out "
        "test patients in two sessions (CT only, CT + CTC), with case-dependent calls matching "
        "the paper's Table 3 and text (docs/readers.md), written to readers_simulated.csv for "
        "`dmfn evaluate --readers`; 0 = none (2)",
    )
    parser.add_argument(
        "--appearance",
        choices=APPEARANCE_MODES,
        default=DEFAULT_APPEARANCE,
        help="how hard the CT is to read: 'calibrated' (default: lesions may take a confusable "
        "class's appearance, per-patient enhancement and scanner offset, fitted so that a "
        "CT-only model reaches the paper's AUC, synth/data/ct_confusions.json) or 'easy' (none "
        "of them: a toy a model learns in seconds, for smoke tests)",
    )
    parser.add_argument(
        "--ct-confusions",
        default=None,
        help="replace synth/data/ct_confusions.json (the partners and knobs of the calibrated "
        "appearance); scripts/calibrate.sh uses it to try knob values",
    )
    parser.add_argument(
        "--contrast",
        choices=CONTRASTS,
        default=DEFAULT_CONTRAST,
        help="'enhanced' (default: 60-65 s after iodinated contrast) or 'none': the same "
        "patients without contrast enhancement (lesion enhancement removed, blood pool at "
        "40 HU), an acquisition the models were not trained on (docs/ood.md)",
    )
    add_overwrite(parser, "allow a non-empty --out: a previous cohort there is removed first")
    return parser


def main(argv: list[str] | None = None) -> int:
    """Run ``dmfn synth``; returns the process exit code (0 ok, 1 a patient failed, 2 bad arguments)."""
    from dmfn.client.progress import Progress

    args = build_parser().parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    try:
        preset = get_preset(args.preset, args.patients)
        if args.dry_run:
            manifest = generate_cohort(
                args.out, preset, seed=args.seed, overwrite=args.overwrite,
                readers_per_group=args.readers, dry_run=True, grouping=args.grouping,
                compartments=args.compartments, appearance=args.appearance,
                confusions=args.ct_confusions, contrast=args.contrast,
            )  # fmt: skip
        else:
            total = sum(p.n_images for p in plan_cohort(preset.n_patients, args.seed))
            with Progress(total, f"synth {preset.name}", unit="image") as bar:
                manifest = generate_cohort(
                    args.out, preset, seed=args.seed, workers=args.workers,
                    overwrite=args.overwrite, readers_per_group=args.readers, progress=bar.update,
                    grouping=args.grouping, compartments=args.compartments,
                    appearance=args.appearance, confusions=args.ct_confusions,
                    contrast=args.contrast,
                )  # fmt: skip
    except ValueError as err:
        log.error("dmfn synth: %s", in_flags(err, FLAGS))
        return 2
    except CohortGenerationError as err:
        log.error("dmfn synth: %s", err)
        return 1
    info = json.loads((manifest.parent / INFO_NAME).read_text())
    print(format_report(info["paper_agreement"]), flush=True)
    log.info("manifest: %s", manifest)
    return 0


if __name__ == "__main__":
    sys.exit(main())
