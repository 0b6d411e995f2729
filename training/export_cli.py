"""``dmfn export``: the options -> :func:`dmfn.training.export.export`, errors in flag terms, the
exit status (0 written, 1 a check failed, 2 a usage or input error)."""

from __future__ import annotations

import argparse
import logging
import sys
from pathlib import Path

from dmfn.client.flags import add_overwrite
from dmfn.contract.errors import in_flags
from dmfn.contract.limits import DEFAULT_MAX_STUDY_VOXELS
from dmfn.contract.uncertainty import DEFAULT_COVERAGE, DEFAULT_FALSE_ALARM
from dmfn.serving.config import SETTING_FLAGS, ServingSettings

from .export import DEFAULT_TOLERANCE, DEFAULT_TRT_TOLERANCE, MIN_OPSET, ExportError, export

#: API argument -> flag of `dmfn export` (error messages speak in flags).
FLAGS: dict[str, str] = {
    "out": "--out",
    "overwrite": "--overwrite",
    "checkpoint": "--checkpoint",
    "ctc_range": "--ctc-range",
    "max_study_voxels": "--max-study-voxels",
    "parity_manifest": "--parity-manifest",
    "management": "--management",
    "coverage": "--coverage",
    "method": "--conformal",
    "false_alarm": "--ood-false-alarm",
    "calibration": "--checkpoint",
    "parity_studies": "--parity-studies",
    "manifest": "--parity-manifest",
    **{name: flag for name, (flag, _) in SETTING_FLAGS.items()},
}


def _range(text: str) -> tuple[float, float]:
    try:
        lo, hi = (float(v) for v in text.split(":"))
    except ValueError:
        raise argparse.ArgumentTypeError(f"must be LOW:HIGH, got {text!r}") from None
    if not lo <= hi:
        raise argparse.ArgumentTypeError(f"LOW must be <= HIGH, got {text!r}")
    return lo, hi


def build_parser() -> argparse.ArgumentParser:
    """The ``dmfn export`` argument parser."""
    p = argparse.ArgumentParser(
        prog="dmfn export",
        description=(
            "Export a trained checkpoint to ONNX (and a TensorRT FP16 engine for --target tensorrt), "
            "check it against PyTorch on preprocessed studies and write a complete Triton model "
            "repository (configs, model files, preprocessing parameters, labels, model card). "
            "Nothing is written if a check fails."
        ),
    )
    p.add_argument(
        "--checkpoint", required=True, type=Path, help="checkpoint .pt written by `dmfn train`"
    )
    p.add_argument(
        "--out",
        type=Path,
        default=Path("build/model_repository"),
        help="repository folder to write (build/model_repository; the committed model_repository/ "
        "holds the templates and is never an output)",
    )
    add_overwrite(p, "replace an existing model repository at --out")
    g = p.add_argument_group("checks")
    g.add_argument(
        "--tolerance",
        type=float,
        default=DEFAULT_TOLERANCE,
        help="max abs logit difference ONNX Runtime vs PyTorch (1e-4)",
    )
    g.add_argument(
        "--trt-tolerance",
        type=float,
        default=DEFAULT_TRT_TOLERANCE,
        help="max abs logit difference TensorRT FP16 vs ONNX Runtime (5e-2)",
    )
    g.add_argument(
        "--parity-studies",
        type=int,
        default=8,
        help="number of studies preprocessed for the checks (8)",
    )
    g.add_argument(
        "--parity-manifest",
        type=Path,
        default=None,
        help="cohort manifest CSV whose first studies are used for the checks (default: synthetic studies made on the fly)",
    )
    g.add_argument("--seed", type=int, default=0, help="seed of the synthetic check studies (0)")
    g.add_argument(
        "--opset",
        type=int,
        default=MIN_OPSET,
        help=f"ONNX opset (>= {MIN_OPSET}; default {MIN_OPSET})",
    )
    g.add_argument(
        "--dynamo",
        action="store_true",
        help="use the torch.export-based ONNX exporter (slower) instead of the TorchScript one",
    )
    ServingSettings.add_arguments(p.add_argument_group("serving settings (config.pbtxt)"))
    lim = p.add_argument_group("accepted inputs (refused with HTTP 400 outside them)")
    lim.add_argument(
        "--ctc-range",
        type=_range,
        action="append",
        default=None,
        metavar="LOW:HIGH",
        help="accepted range of a CTC feature, once per feature in order (default: the range seen "
        "in training, widened by half its width on each side, not below 0)",
    )
    lim.add_argument(
        "--max-study-voxels",
        type=int,
        default=DEFAULT_MAX_STUDY_VOXELS,
        help="largest ROI crop one study may send, in voxels; also sizes the front door's request "
        f"body limit ({DEFAULT_MAX_STUDY_VOXELS})",
    )
    p.add_argument(
        "--management",
        type=Path,
        default=None,
        help="management policy JSON the server applies (class -> option, min_probability); "
        "default: dmfn's, contract/data/management_default.json, which is not from the paper",
    )
    unc = p.add_argument_group(
        "uncertainty (stored with the model; docs/conformal.md, docs/ood.md)",
        "Fitted here from the checkpoint's calibration data: the class sets on its validation "
        "split, the OOD threshold on its training split.",
    )
    unc.add_argument(
        "--coverage",
        type=float,
        default=DEFAULT_COVERAGE,
        help=f"coverage of the conformal class sets ({DEFAULT_COVERAGE})",
    )
    unc.add_argument(
        "--conformal",
        choices=("aps", "mondrian"),
        default="aps",
        help="aps: one threshold (marginal coverage); mondrian: one per class (coverage per "
        "class, larger sets) (aps)",
    )
    unc.add_argument(
        "--ood-false-alarm",
        type=float,
        default=DEFAULT_FALSE_ALARM,
        help=f"share of training studies the OOD flag may flag ({DEFAULT_FALSE_ALARM})",
    )
    p.add_argument(
        "--training-data",
        choices=("auto", "synthetic", "real"),
        default="auto",
        help="what the model card says about the training data; auto = the checkpoint's record, synthetic when unknown",
    )
    return p


def main(argv: list[str] | None = None) -> int:
    """Entry point of ``dmfn export``; returns the process exit code."""
    args = build_parser().parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    try:
        settings = ServingSettings.from_arguments(args)
        parity = export(
            args.checkpoint,
            args.out,
            settings,
            tolerance=args.tolerance,
            trt_tolerance=args.trt_tolerance,
            opset=args.opset,
            dynamo=args.dynamo,
            parity_studies=args.parity_studies,
            parity_manifest=args.parity_manifest,
            training_data=args.training_data,
            management=args.management,
            overwrite=args.overwrite,
            seed=args.seed,
            ctc_range=args.ctc_range,
            max_study_voxels=args.max_study_voxels,
            coverage=args.coverage,
            conformal=args.conformal,
            ood_false_alarm=args.ood_false_alarm,
        )
    except (ValueError, ExportError) as err:
        print(f"dmfn export: {in_flags(err, FLAGS)}", file=sys.stderr)
        return 2 if isinstance(err, ValueError) else 1
    checks = ", ".join(f"{k} = {v:.3g}" for k, v in parity.items())
    print(f"wrote {args.out} (target {args.target}); checks: {checks}")
    print(f"serve it with: dmfn serve --repository {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
