"""How a planned cohort compares with the paper: written to ``cohort.json`` and printed by
``dmfn synth`` (also with ``--dry-run``), so a user sees where the synthetic cohort follows the
paper's tables, where it cannot, and how much signal its tabular data carry."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import asdict
from typing import Any

import numpy as np

from dmfn.client.manifest import SPLITS
from dmfn.contract.taxonomy import COMPARTMENTS, Taxonomy

from .ceilings import bayes_ceilings
from .cohort import TABLE1, PatientPlan, class_split_counts
from .compartments import CompartmentTable


def table2_ctc_means(taxonomy: Taxonomy) -> dict[str, float]:
    """Per split, Table 2's class CTC means mixed by Table 2's own patient counts (pg/ml): what
    Table 1's CTC means would be if both tables described the same patients."""
    counts = np.array([[c.n_train, c.n_val, c.n_test] for c in taxonomy.classes], float)
    means = np.array([c.ctc_mean_pg_ml for c in taxonomy.classes])
    return {s: float(means @ counts[:, k] / counts[:, k].sum()) for k, s in enumerate(SPLITS)}


def cohort_report(
    plans: Sequence[PatientPlan],
    taxonomy: Taxonomy,
    compartments: CompartmentTable,
    ceiling_samples: int = 100_000,
    appearance: np.ndarray | None = None,
) -> dict[str, Any]:
    """Per split the generated values beside the paper's Table 1; whether the class-by-split
    counts are Table 2's; the Bayes-optimal AUCs of the tabular data and, with ``appearance``
    (the generator's appearance matrix), of the image (dmfn.synth.ceilings)."""
    n = len(plans)
    target = class_split_counts(n, taxonomy)
    got = np.zeros_like(target)
    index = {name: i for i, name in enumerate(taxonomy.names)}
    for p in plans:
        got[index[p.label], SPLITS.index(p.split)] += 1
    paper_total = sum(c.n_total for c in taxonomy.classes)
    mixture = table2_ctc_means(taxonomy)
    splits = {}
    for split in SPLITS:
        members = [p for p in plans if p.split == split]
        ctc = np.array([p.ctc_level_pg_ml for p in members])
        ages = np.array([p.age_years for p in members], float)
        st = TABLE1[split]
        splits[split] = {
            "patients": len(members),
            "images": sum(p.n_images for p in members),
            "malignant": sum(p.group == "malignant" for p in members),
            "age_mean": float(ages.mean()),
            "men_fraction": float(np.mean([p.sex == "M" for p in members])),
            "ctc_mean": float(ctc.mean()),
            "ctc_sd": float(ctc.std(ddof=1)) if ctc.size > 1 else None,
            "locations": {c: sum(p.location == c for p in members) for c in COMPARTMENTS},
            "paper_table1": asdict(st),
            "table2_ctc_mixture_mean": mixture[split],
        }
    return {
        "table2_counts": {
            "exact": bool(n == paper_total and (got == target).all()),
            "paper_size": n == paper_total,
            "max_cell_difference_from_target": int(np.abs(got - target).max()),
        },
        "splits": splits,
        "compartment_table": compartments.source,
        "grouping": taxonomy.source,
        "bayes_ceilings": [
            asdict(c)
            for c in bayes_ceilings(
                taxonomy, compartments, n=ceiling_samples, appearance=appearance
            )
        ],
    }


def format_report(report: dict[str, Any]) -> str:
    """The report as a few aligned lines for the terminal."""
    lines = []
    t2 = report["table2_counts"]
    if t2["exact"]:
        lines.append("classes per split: exactly the paper's Table 2")
    else:
        lines.append(
            "classes per split: Table 2's counts scaled to this cohort (largest remainders; "
            f"every cell within {max(1, t2['max_cell_difference_from_target'])} patient of its share)"
        )
    head = f"{'split':<6}{'patients':>9}{'images':>8}{'malignant':>10}{'men %':>14}"
    head += f"{'CTC mean (T1 / T2 mix)':>30}{'anterior/middle/posterior %':>34}"
    lines.append(head)
    for split, s in report["splits"].items():
        p = s["paper_table1"]
        n = max(s["patients"], 1)
        loc = "/".join(f"{100 * v / n:.0f}" for v in s["locations"].values())
        paper_loc = "/".join(f"{100 * v / p['n_patients']:.0f}" for v in p["locations"])
        lines.append(
            f"{split:<6}{s['patients']:>9}{s['images']:>8}{s['malignant']:>10}"
            f"{100 * s['men_fraction']:>7.0f} ({100 * p['male_fraction']:.0f})"
            f"{s['ctc_mean']:>13.2f} ({p['ctc_mean']:.2f} / {s['table2_ctc_mixture_mean']:.2f})"
            f"{loc:>20} ({paper_loc})"
        )
    lines.append(
        "(in brackets: the paper's Table 1; T2 mix: Table 2's class means mixed by its counts)"
    )
    ceil = ", ".join(f"{c['features']} {c['binary_auc']:.3f}" for c in report["bayes_ceilings"])
    lines.append(
        f"best possible binary AUC (Bayes-optimal; ct: an ideal reader of the appearance): {ceil}"
    )
    return "\n".join(lines)
