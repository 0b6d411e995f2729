"""Which mediastinal compartment each class's lesion is placed in: OUR assumption, not the paper's.

The paper gives compartment counts per split (Table 1) but not per class. The generator needs a
per-class table, so ``synth/data/compartments.csv`` holds one: for each class the probability of
the anterior, middle and posterior compartment, the basis in words and the sources (keys listed in
docs/data.md; ``assumption`` where no source states where the class arises). The sources say
where a class usually arises; none gives these numbers, which are our rounding of those
statements. The table drives most of the tabular model's benign/malignant signal (see
``dmfn.synth.ceilings``), so it is replaceable: ``dmfn synth --compartments FILE``.
"""

from __future__ import annotations

import csv
from dataclasses import dataclass
from pathlib import Path

from dmfn.contract.datafile import read_data_file
from dmfn.contract.errors import InvalidInput
from dmfn.contract.taxonomy import COMPARTMENTS, Taxonomy

DEFAULT_FILE = "compartments.csv"


@dataclass(frozen=True)
class CompartmentTable:
    """class -> probabilities of COMPARTMENTS (in that order, summing to 1)."""

    probs: dict[str, tuple[float, ...]]
    basis: dict[str, str]
    sources: dict[str, str]
    source: str

    def of(self, name: str) -> tuple[float, ...]:
        return self.probs[name]

    def check_covers(self, taxonomy: Taxonomy) -> None:
        """ValueError naming the file and the classes of ``taxonomy`` it lacks."""
        missing = [n for n in taxonomy.names if n not in self.probs]
        if missing:
            raise InvalidInput("compartments", f"{self.source} has no row for class(es) {missing}")


def parse_compartments(text: str, source: str) -> CompartmentTable:
    """Parse the CSV (class, anterior, middle, posterior, [basis], [sources]); errors name the
    source, the line and the rule."""
    reader = csv.DictReader(text.splitlines())
    missing = [c for c in ("class", *COMPARTMENTS) if c not in (reader.fieldnames or [])]
    if missing:
        raise InvalidInput("compartments", f"{source}: missing columns {missing}")
    probs, basis, sources = {}, {}, {}
    for line, row in enumerate(reader, start=2):
        where = f"{source} line {line}"
        try:
            values = tuple(float(row[c]) for c in COMPARTMENTS)
        except (TypeError, ValueError):
            raise InvalidInput(
                "compartments", f"{where}: {', '.join(COMPARTMENTS)} must be numbers"
            ) from None
        if min(values) < 0 or abs(sum(values) - 1.0) > 1e-6:
            raise InvalidInput(
                "compartments", f"{where}: probabilities must be >= 0 and sum to 1, got {values}"
            )
        name = row["class"].strip()
        if name in probs:
            raise InvalidInput("compartments", f"{where}: class {name!r} given twice")
        probs[name] = values
        basis[name] = (row.get("basis") or "").strip()
        sources[name] = (row.get("sources") or "").strip()
    return CompartmentTable(probs, basis, sources, source)


def load_compartments(path: str | Path | None = None) -> CompartmentTable:
    """The table at ``path``, or the default shipped with dmfn (``synth/data/compartments.csv``)."""
    return parse_compartments(*read_data_file(path, "compartments", "dmfn.synth", DEFAULT_FILE))
