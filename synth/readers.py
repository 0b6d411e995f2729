"""Simulated readers for the reader study on a synthetic cohort: calls of thoracic surgeons of
three seniorities, drawn from the sensitivity and specificity the paper's Table 3 gives each
group (``synth/data/readers_table3.csv``; benign is the positive class there).

Each simulated reader calls each test patient (our held-out split; the paper's Table 3 reports
its readers on its validation cohort, also unseen in training) benign or malignant independently:
a benign patient is called benign with the group's sensitivity, a malignant one malignant with
its specificity. No score is simulated (the paper gives none), so the model is compared with the
groups by McNemar's test on the calls. Every row says ``simulated=true``.

Table 3's accuracies are not used: most are impossible. An accuracy is a weighted mean of
sensitivity and specificity, so it lies between them, but the residents' 0.69 lies above both
0.513 and 0.558, and likewise for the attendings (0.737 against 0.607 and 0.72) and the chiefs
(0.830 against 0.761 and 0.813).
"""

from __future__ import annotations

import csv
from dataclasses import dataclass
from importlib import resources
from pathlib import Path

import numpy as np

from dmfn.synth.cohort import PatientPlan

READERS_FILE = "readers_simulated.csv"
READER_COLUMNS = ("reader_id", "group", "patient_id", "call", "session", "simulated")


@dataclass(frozen=True)
class ReaderGroup:
    """A group of readers: P(call benign | benign) and P(call malignant | malignant)."""

    name: str
    sensitivity_benign: float
    specificity_benign: float


def table3_groups() -> list[ReaderGroup]:
    """The three groups of the paper's Table 3 (validation cohort)."""
    text = resources.files("dmfn.synth").joinpath("data", "readers_table3.csv").read_text()
    return [
        ReaderGroup(r["group"], float(r["sensitivity_benign"]), float(r["specificity_benign"]))
        for r in csv.DictReader(text.splitlines())
    ]


def simulate_readers(
    plans: list[PatientPlan],
    seed: int,
    out: Path,
    readers_per_group: int = 2,
    splits: tuple[str, ...] = ("test",),
) -> Path:
    """Write ``out/readers_simulated.csv`` with every reader's call on every patient of
    ``splits``; reproducible from ``seed``."""
    rng = np.random.default_rng(np.random.SeedSequence(seed, spawn_key=(7,)))
    rows = []
    for group in table3_groups():
        for k in range(readers_per_group):
            reader = f"{group.name}_{k + 1}"
            for plan in plans:
                if plan.split not in splits:
                    continue
                if plan.group == "benign":
                    call = "benign" if rng.random() < group.sensitivity_benign else "malignant"
                else:
                    call = "malignant" if rng.random() < group.specificity_benign else "benign"
                rows.append([reader, group.name, plan.patient_id, call, "ct_plus_ctc", "true"])
    path = out / READERS_FILE
    with path.open("w", newline="") as handle:
        writer = csv.writer(handle, lineterminator="\n")
        writer.writerow(READER_COLUMNS)
        writer.writerows(rows)
    return path
