"""``dmfn demo``: the options -> :func:`dmfn.demo.run_demo`, errors in flag terms, the exit
status (0 done, 1 a step failed, 2 a usage error)."""

from __future__ import annotations

import argparse
import logging
import sys
from pathlib import Path

from dmfn.client.sdk import PROTOCOLS
from dmfn.contract.errors import in_flags

DESCRIPTION = """\
The main job, end to end, on the embedded default:

synthetic patients (DICOM + NIfTI) -> a DMFN checkpoint (the committed demo model, or one trained
here with --train) -> ONNX export checked against PyTorch -> Triton model repository -> a real
Triton server on 127.0.0.1 -> a study sent through the client SDK -> the prediction -> stop.
"""
#: API argument -> flag of `dmfn demo` (error messages speak in flags).
FLAGS = {
    name: "--" + name for name in ("out", "checkpoint", "train", "patients", "seed", "protocol")
}


def build_parser() -> argparse.ArgumentParser:
    """The ``dmfn demo`` argument parser."""
    parser = argparse.ArgumentParser(
        prog="dmfn demo",
        description=DESCRIPTION,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument(
        "--out",
        type=Path,
        default=Path("build/demo"),
        help="folder for the cohort, the repository and the server logs, replaced on every run "
        "(default build/demo)",
    )
    parser.add_argument(
        "--checkpoint",
        type=Path,
        default=None,
        help="checkpoint to serve (default: the committed demo model, models/dmfn_demo.pt)",
    )
    parser.add_argument(
        "--train",
        action="store_true",
        help="train a small model on a tiny synthetic cohort here instead of using the committed one",
    )
    parser.add_argument(
        "--patients", type=int, default=4, help="synthetic patients to generate (4)"
    )
    parser.add_argument(
        "--seed", type=int, default=2026, help="seed of the synthetic patients (2026)"
    )
    parser.add_argument(
        "--protocol", choices=PROTOCOLS, default="http", help="client protocol (http)"
    )
    return parser


def main(argv: list[str] | None = None) -> int:
    """Entry point of ``dmfn demo``; returns the process exit code."""
    args = build_parser().parse_args(argv)
    logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(name)s: %(message)s")
    from dmfn.client.sdk import DmfnServerError
    from dmfn.demo import run_demo
    from dmfn.serving.triton import TritonError
    from dmfn.training.export import ExportError

    try:
        return run_demo(
            args.out,
            checkpoint=args.checkpoint,
            train=args.train,
            patients=args.patients,
            seed=args.seed,
            protocol=args.protocol,
        )
    except (ValueError, ExportError, TritonError, DmfnServerError) as err:
        print(f"dmfn demo: {in_flags(err, FLAGS)}", file=sys.stderr)
        return 2 if isinstance(err, ValueError) else 1


if __name__ == "__main__":
    sys.exit(main())
