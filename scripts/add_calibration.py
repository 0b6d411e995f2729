"""Add the calibration data (dmfn.training.checkpoint.CALIBRATION_FIELDS) to a checkpoint made
before dmfn train stored them, in place.

    .venv/bin/python scripts/add_calibration.py CHECKPOINT MANIFEST [--overwrite] [--workers N]

MANIFEST is the manifest of the cohort the checkpoint was trained on: its train and val rows are
preprocessed with the checkpoint's parameters (the manifest folder's .dmfn_cache is reused) and
run through the net (dmfn.training.calibration.collect_calibration). Every other entry of the
checkpoint is kept as it was: the file's payload is read as stored and written back with one key
added (not through Checkpoint.save, which would rewrite e.g. the versions), and the script checks
that every other entry is equal after. The file's sha256 changes: the old and new are printed.
"""

from __future__ import annotations

import argparse
import logging
import sys
from pathlib import Path
from typing import Any

import torch

from dmfn.training.calibration import collect_calibration
from dmfn.training.checkpoint import calibration_payload, file_sha256, load_checkpoint

log = logging.getLogger("add_calibration")


def _bytes(t: torch.Tensor) -> torch.Tensor:
    return t.detach().contiguous().flatten().view(torch.uint8)


def _equal(a: Any, b: Any) -> bool:
    """Deep equality of two payload entries (tensors: same dtype, shape and values, bit for bit)."""
    if isinstance(a, torch.Tensor) or isinstance(b, torch.Tensor):
        return (
            isinstance(a, torch.Tensor)
            and isinstance(b, torch.Tensor)
            and a.dtype == b.dtype
            and a.shape == b.shape
            and bool(torch.equal(_bytes(a), _bytes(b)))
        )
    if isinstance(a, dict) and isinstance(b, dict):
        return a.keys() == b.keys() and all(_equal(a[k], b[k]) for k in a)
    if isinstance(a, list | tuple) and isinstance(b, list | tuple):
        return type(a) is type(b) and len(a) == len(b) and all(map(_equal, a, b))
    return type(a) is type(b) and a == b


def add_calibration(checkpoint: Path, manifest: Path, overwrite: bool, workers: int) -> int:
    ckpt = load_checkpoint(checkpoint)  # refuses anything that is not a dmfn checkpoint
    if ckpt.calibration is not None and not overwrite:
        log.error(
            "%s already holds calibration data (pass --overwrite to recompute them)", checkpoint
        )
        return 2
    before = file_sha256(checkpoint)
    calibration = collect_calibration(checkpoint, manifest, workers)
    payload = torch.load(checkpoint, map_location="cpu", weights_only=True)
    kept = {k: v for k, v in payload.items() if k != "calibration"}
    payload["calibration"] = calibration_payload(calibration)
    tmp = checkpoint.with_suffix(checkpoint.suffix + ".tmp")
    torch.save(payload, tmp)
    written = torch.load(tmp, map_location="cpu", weights_only=True)
    changed = [k for k in kept if not _equal(kept[k], written.get(k))]
    if changed or set(written) != {*kept, "calibration"}:
        tmp.unlink()
        log.error(
            "%s: entries %s would change; the checkpoint is left as it was", checkpoint, changed
        )
        return 1
    tmp.replace(checkpoint)
    load_checkpoint(checkpoint)  # loads with the new field
    n_val, n_classes = calibration["val_probs"].shape
    print(
        f"{checkpoint}: calibration added ({n_val} validation images x {n_classes} classes at "
        f"temperature {calibration['temperature']:.4f}; {calibration['train_ood_scores'].size} "
        "training OOD scores); every other entry unchanged"
    )
    print(f"sha256 before: {before}")
    print(f"sha256 after:  {file_sha256(checkpoint)}")
    return 0


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("checkpoint", type=Path, help="the checkpoint file (modified in place)")
    parser.add_argument("manifest", type=Path, help="the manifest of its training cohort")
    parser.add_argument(
        "--overwrite", action="store_true", help="replace calibration data it holds"
    )
    parser.add_argument("--workers", type=int, default=1, help="preprocessing processes (1)")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    try:
        return add_calibration(args.checkpoint, args.manifest, args.overwrite, args.workers)
    except ValueError as err:
        log.error("add_calibration: %s", err)
        return 2


if __name__ == "__main__":
    sys.exit(main())
