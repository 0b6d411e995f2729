"""``dmfn synth``: generate a synthetic mediastinal CT + CTC cohort (DICOM, NIfTI masks, manifest)."""

from __future__ import annotations

import argparse
import logging
import sys

from dmfn.contract.errors import in_flags
from dmfn.synth.cohort import (
    PRESETS,
    CohortGenerationError,
    generate_cohort,
    get_preset,
    plan_cohort,
)

#: API argument -> flag of `dmfn synth` (error messages speak in flags).
FLAGS = {
    "out_dir": "--out",
    "overwrite": "--force",
    "preset": "--preset",
    "n_patients": "--patients",
    "seed": "--seed",
    "workers": "--workers",
    "readers_per_group": "--readers",
}

log = logging.getLogger("dmfn.synth")


def _parser() -> argparse.ArgumentParser:
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
        "--readers",
        type=int,
        default=2,
        help="SIMULATED readers per group (resident, attending, chief) calling the held-out "
        "test patients from the paper's Table 3 sensitivity and specificity, written to "
        "readers_simulated.csv for `dmfn evaluate --readers`; 0 = none (2)",
    )
    parser.add_argument(
        "--force",
        action="store_true",
        help="allow a non-empty --out: a previous cohort there is removed first",
    )
    return parser


def main(argv: list[str] | None = None) -> int:
    """Run ``dmfn synth``; returns the process exit code (0 ok, 1 a patient failed, 2 bad arguments)."""
    from dmfn.client.progress import Progress

    args = _parser().parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    try:
        preset = get_preset(args.preset, args.patients)
        total = sum(p.n_images for p in plan_cohort(preset.n_patients, args.seed))
        with Progress(total, f"synth {preset.name}", unit="image") as bar:
            manifest = generate_cohort(
                args.out,
                preset,
                seed=args.seed,
                workers=args.workers,
                overwrite=args.force,
                readers_per_group=args.readers,
                progress=bar.update,
            )
    except ValueError as err:
        log.error("dmfn synth: %s", in_flags(err, FLAGS))
        return 2
    except CohortGenerationError as err:
        log.error("dmfn synth: %s", err)
        return 1
    log.info("manifest: %s", manifest)
    return 0


if __name__ == "__main__":
    sys.exit(main())
