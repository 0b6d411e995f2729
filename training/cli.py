"""The command line of ``dmfn train``: options -> :class:`~dmfn.training.config.TrainConfig`, errors
in flag terms, the exit status (0 done, 2 a usage or input error)."""

from __future__ import annotations

import argparse
import dataclasses
import logging
import sys
from collections.abc import Sequence
from pathlib import Path

from dmfn.client.flags import add_overwrite
from dmfn.contract.errors import in_flags
from dmfn.contract.schema import DEFAULT_CTC_FEATURES
from dmfn.contract.taxonomy import DEFAULT_GROUPING, GROUPINGS

from .config import CLI_AUX_WEIGHT, CLI_FUSION, TrainConfig, parse_params
from .models import DEFAULT_BACKBONE, FUSION_KINDS, MODEL_KINDS


class _HelpFormatter(argparse.HelpFormatter):
    """Appends "(default: X)" to options whose default is a value (not None and not a flag)."""

    def _get_help_string(self, action: argparse.Action) -> str:
        text = action.help or ""
        default = action.default
        if default is None or isinstance(default, bool) or default is argparse.SUPPRESS:
            return text
        return text if "default" in text else f"{text} (default: %(default)s)"


def build_parser() -> argparse.ArgumentParser:
    """The ``dmfn train`` argument parser (every option documented in ``--help``)."""
    p = argparse.ArgumentParser(
        prog="dmfn train",
        description=(
            "Train the DMFN fusion model (CT views + CTC + clinical) or a baseline on a cohort "
            "manifest, with patient-level validation, early stopping and N seeds."
        ),
        formatter_class=_HelpFormatter,
        epilog=(
            "Writes OUT/seed_K/{best.pt, last.pt, log.csv, tensorboard/, predictions_val.csv, "
            "predictions_test.csv} and OUT/summary.json. Several processes (DDP, gloo): "
            "torchrun --nproc-per-node N -m dmfn.training.cli ..."
        ),
    )
    io = p.add_argument_group("data and output")
    io.add_argument(
        "--manifest",
        required=True,
        type=Path,
        help="cohort manifest CSV (from `dmfn synth` or your own; see dmfn.client.manifest)",
    )
    io.add_argument("--out", required=True, type=Path, help="output folder (seed_K/, summary.json)")
    io.add_argument(
        "--cache-dir",
        type=Path,
        default=None,
        help="preprocessing cache folder (default: MANIFEST_DIR/.dmfn_cache; shared between runs)",
    )
    io.add_argument(
        "--params",
        default=None,
        help="preprocessing parameters: a JSON file or a JSON object literal "
        "(PreprocessParams fields; default: the built-in defaults)",
    )
    io.add_argument(
        "--taxonomy", type=Path, default=None, help="taxonomy CSV (default: the paper's 20 classes)"
    )
    io.add_argument(
        "--tabular-measurements",
        action="store_true",
        help="give the tabular branch the lesion's size too (equivalent diameter, long and short "
        "axis in mm, measured on the mask by the preprocessing; stored with the model's "
        "preprocessing parameters, so the server computes them the same way)",
    )
    io.add_argument(
        "--grouping",
        choices=sorted(GROUPINGS),
        default=DEFAULT_GROUPING,
        help="benign/malignant grouping of the taxonomy: table2 (every thymoma malignant, the "
        "paper's Table 2) or thymoma_a_ab_benign (types A and AB benign); the manifest's group "
        "column must agree (dmfn synth --grouping)",
    )
    io.add_argument(
        "--ctc-features",
        default=",".join(DEFAULT_CTC_FEATURES),
        help="comma-separated CTC columns of the manifest, in TABULAR order",
    )
    io.add_argument(
        "--workers", type=int, default=2, help="processes that build the preprocessing cache"
    )
    m = p.add_argument_group("model")
    m.add_argument(
        "--model",
        default="dmfn",
        help=f"one of {', '.join(MODEL_KINDS)}: fusion, CT-only CNN, tabular-only MLP",
    )
    m.add_argument(
        "--backbone",
        default=DEFAULT_BACKBONE,
        help="CT backbone (see dmfn.training.models.list_backbones(); ignored by --model tabular)",
    )
    m.add_argument(
        "--fusion",
        default=CLI_FUSION,
        help=f"dmfn only, one of {', '.join(FUSION_KINDS)}: concat = embeddings concatenated -> "
        "MLP (the paper's); sum = late fusion, CT-head logits + tabular-head logits + a bias "
        "that starts at -log(training class frequency) (a learned product of experts that "
        "counts the prior once); hybrid = both summed; experts = w_ct * CT logits + w_tab * "
        "tabular logits + bias, composed from trained experts with --init-ct / --init-tabular",
    )
    m.add_argument(
        "--init-ct",
        type=Path,
        default=None,
        help="two-stage training (dmfn --fusion experts): the trained CNN (a checkpoint, or a "
        "`dmfn train --model cnn` folder whose seed_K/best.pt serves seed K) whose CT branch and "
        "head become this model's; the weights start at the experts' inverse calibration "
        "temperatures, the bias at -log prior: epoch 0 is the post-hoc product of the experts",
    )
    m.add_argument(
        "--init-tabular",
        type=Path,
        default=None,
        help="two-stage training: the trained tabular model (checkpoint or folder), as --init-ct",
    )
    m.add_argument(
        "--freeze-experts",
        action="store_true",
        help="with --init-ct/--init-tabular: train only the fusion weights and bias",
    )
    m.add_argument(
        "--aux-weight",
        type=float,
        default=CLI_AUX_WEIGHT,
        help="dmfn only: weight W >= 0 of the auxiliary unimodal losses; the loss becomes "
        "L(fused) + W * (L(CT head) + L(tabular head)), each branch also trained on its own "
        "logits (against modality imbalance); 0 = off. Unimodal heads are unused at inference",
    )
    o = p.add_argument_group("optimisation")
    o.add_argument(
        "--epochs",
        type=int,
        default=30,
        help="maximum number of epochs (0 with --init-ct/--init-tabular: validate the composed "
        "experts only)",
    )
    o.add_argument(
        "--batch-size", type=int, default=32, help="images per step (all processes together)"
    )
    o.add_argument("--lr", type=float, default=1e-3, help="AdamW peak learning rate (cosine decay)")
    o.add_argument("--weight-decay", type=float, default=0.05, help="AdamW weight decay")
    o.add_argument(
        "--loss",
        default="neutral-ce",
        help="neutral-ce (the paper's loss, our reading, docs/architecture.md: two augmented views of each "
        "image, consistency-tempered target) or ce (cross-entropy)",
    )
    o.add_argument("--label-smoothing", type=float, default=0.1, help="label smoothing in [0, 1)")
    o.add_argument(
        "--nce-alpha", type=float, default=0.3, help="neutral-ce mixing weight a in [0, 1)"
    )
    o.add_argument(
        "--class-weights",
        default="none",
        help="class weighting of the loss from training counts: none, or a scheme of "
        "dmfn.training.losses.class_weights_from_counts (e.g. inverse, inverse_sqrt)",
    )
    o.add_argument(
        "--patience",
        type=int,
        default=8,
        help="stop after this many epochs without a better validation macro AUC (0: never)",
    )
    o.add_argument(
        "--no-augment",
        dest="augment",
        action="store_false",
        help="switch off augmentation (rotation, shift, intensity jitter, noise)",
    )
    r = p.add_argument_group("runs")
    r.add_argument("--seeds", type=int, default=1, help="number of seeds (runs) to train")
    r.add_argument("--seed", type=int, default=0, help="first seed; runs use seed, seed+1, ...")
    r.add_argument(
        "--folds",
        type=int,
        default=0,
        metavar="K",
        help="K-fold cross-validation (nnU-Net's scheme, K = 5 there): the train and val "
        "patients are dealt into K class-stratified folds; each fold validates one model "
        "trained on the others (OUT/fold_K/), and OUT/predictions_oof.csv holds every train "
        "and val patient's out-of-fold prediction exactly once (test patients stay out)",
    )
    r.add_argument(
        "--resume",
        action="store_true",
        help="continue each seed from OUT/seed_K/last.pt where it exists (finished seeds are "
        "only re-evaluated); the training options must be the same as before",
    )
    add_overwrite(
        r,
        "train into a non-empty --out, replacing its seed_*/ folders and summary.json "
        "(without it, a non-empty --out is refused unless --resume continues the run there)",
    )
    r.add_argument("--device", default="cpu", help="torch device: cpu or cuda[:N]")
    r.add_argument("--no-progress", dest="progress", action="store_false", help="no tqdm bars")
    return p


#: TrainConfig field -> its flag (error messages speak in flags).
FLAGS: dict[str, str] = {
    f.name: "--" + f.name.replace("_", "-") for f in dataclasses.fields(TrainConfig)
} | {"augment": "--no-augment", "progress": "--no-progress"}


def parse_args(argv: Sequence[str]) -> TrainConfig:
    """The checked configuration of ``dmfn train`` ``argv``; InvalidInput naming the field."""
    values = vars(build_parser().parse_args(list(argv)))
    values["params"] = parse_params(values["params"])
    if values.pop("tabular_measurements"):
        values["params"] = dataclasses.replace(values["params"], tabular_measurements=True)
    return TrainConfig(**values)


def main(argv: list[str] | None = None) -> int:
    """``dmfn train`` entry point; returns the exit status (2 on a bad argument or input)."""
    from .summary import format_table
    from .train import run

    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    try:
        config = parse_args(sys.argv[1:] if argv is None else argv)
        summary = run(config)
    except ValueError as err:
        print(f"dmfn train: error: {in_flags(err, FLAGS)}", file=sys.stderr)
        return 2
    if summary:
        print(format_table(summary))
        print(f"summary: {config.out / 'summary.json'}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
