"""Publish the Bayes ceilings of the calibrated generator in docs/data.md (between its ceilings
markers), dated, before any fused model is trained on it.

The ceilings are the AUCs of the Bayes-optimal classifier that knows the generator's true
distributions (dmfn.synth.ceilings): CTC, compartment, the image (an ideal reader of which class's
appearance the lesion took) and their combinations, binary and multi-class (Hand & Till). Two
questions about the paper are answered with a CT score of a given binary AUC, binormal and
independent of CTC and compartment given benign / malignant (dmfn.synth.ceilings.
fused_binary_ceiling):

- with CT held to a binary AUC of 0.71 (the paper's CNN), what can CT + CTC + compartment reach
  at best?
- what CT AUC would the paper's fused 0.941 need, with Table 2's CTC and our compartments?

    .venv/bin/python scripts/ceilings.py [--samples 200000]
"""

from __future__ import annotations

import argparse
import dataclasses
import datetime as dt
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
DOC = ROOT / "docs" / "data.md"
BEGIN, END = "<!-- ceilings:begin (scripts/ceilings.py) -->", "<!-- ceilings:end -->"
NAMES = {
    "ctc": "CTC alone",
    "compartment": "compartment alone",
    "ctc+compartment": "tabular (CTC + compartment)",
    "ct": "CT alone (ideal appearance reader)",
    "ct+compartment": "CT with the surrounding anatomy in view (+ compartment)",
    "ct+ctc+compartment": "CT + CTC + compartment (the fused inputs)",
}


def ceilings_at(prob: float, samples: int, seed: int = 0) -> dict:
    from dmfn.contract.taxonomy import load_taxonomy
    from dmfn.synth.ceilings import bayes_ceilings
    from dmfn.synth.compartments import load_compartments
    from dmfn.synth.difficulty import load_difficulty

    taxonomy = load_taxonomy()
    difficulty = dataclasses.replace(load_difficulty(), confusion_prob=prob)
    matrix = difficulty.appearance_matrix(list(taxonomy.names))
    found = bayes_ceilings(taxonomy, load_compartments(), samples, seed, matrix)
    return {c.features: c for c in found}


def needed_ct_auc(target: float, samples: int) -> float:
    """The CT AUC whose fused binary ceiling equals ``target`` (bisection)."""
    from dmfn.contract.taxonomy import load_taxonomy
    from dmfn.synth.ceilings import fused_binary_ceiling
    from dmfn.synth.compartments import load_compartments

    taxonomy, compartments = load_taxonomy(), load_compartments()
    lo, hi = 0.5, 0.99
    for _ in range(20):
        mid = (lo + hi) / 2
        if fused_binary_ceiling(taxonomy, compartments, mid, samples) < target:
            lo = mid
        else:
            hi = mid
    return (lo + hi) / 2


def render(samples: int) -> str:
    from dmfn.synth.difficulty import load_difficulty

    frozen = load_difficulty()
    now = ceilings_at(frozen.confusion_prob, samples)
    rows = "\n".join(
        f"| {NAMES[k]} | {c.binary_auc:.3f} | {c.hand_till_auc:.3f} |" for k, c in now.items()
    )
    from dmfn.contract.taxonomy import load_taxonomy
    from dmfn.synth.ceilings import fused_binary_ceiling
    from dmfn.synth.compartments import load_compartments

    at71 = fused_binary_ceiling(load_taxonomy(), load_compartments(), 0.71, samples)
    need = needed_ct_auc(0.941, samples)
    return f"""{BEGIN}
**Ceilings of the calibrated generator** (published {dt.date.today().isoformat()}, before any
fused model was trained on it; `scripts/ceilings.py`, Monte Carlo over {samples:,} patients,
standard error about 0.002). Frozen knobs: confusion_prob {frozen.confusion_prob:g},
enhancement_spread {frozen.enhancement_spread:g}, hu_offset_sd_hu {frozen.hu_offset_sd_hu:g}.

| inputs | binary AUC (benign vs malignant) | multi-class AUC (Hand & Till) |
|---|---|---|
{rows}

The image's ceiling is that of an ideal reader who recognises which class's appearance each
lesion took; a trained CNN stays below it, because the appearances of related classes overlap
(the CT-only model is calibrated to 0.71, docs/calibration.md). With lesion-only views (the
default) the compartment reaches the fused model only through its tabular branch.

**What this says about the paper.** Take a CT score of a given binary AUC, binormal and
independent of CTC and compartment given benign or malignant (`fused_binary_ceiling`):

- with CT held to the paper's CNN (0.71), CT + CTC + compartment reach at best
  **{at71:.3f}** binary AUC, against the paper's 0.941;
- the paper's 0.941 needs a CT score of AUC **{need:.3f}** with Table 2's CTC and this
  compartment table.

With Table 2's CTC (class means a few pg/ml apart, SDs of 3-8) and a compartment table like ours,
a 0.71 image cannot be lifted to 0.941: either the paper's CNN was weaker than its images allow,
or its CTC or clinical data carried more class signal than Table 2 shows. The README says so.
{END}"""


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--samples", type=int, default=200_000)
    parser.add_argument("--print", action="store_true", help="print, do not write docs/data.md")
    args = parser.parse_args(argv)
    block = render(args.samples)
    if args.print:
        print(block)
        return 0
    text = DOC.read_text()
    if BEGIN not in text or END not in text:
        raise SystemExit(f"ceilings: {DOC} lacks the markers {BEGIN} ... {END}")
    head, rest = text.split(BEGIN, 1)
    DOC.write_text(head + block + rest.split(END, 1)[1])
    print(block)
    return 0


if __name__ == "__main__":
    sys.exit(main())
