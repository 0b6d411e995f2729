"""The lesion taxonomy: the one data file that names the classes, their benign/malignant group,
the management suggested for each and the cohort statistics the synthetic generator samples from.

The default is the 20 classes of the paper's Table 2 (``data/taxonomy_paper.csv``). Users may
supply their own CSV with at least the columns ``class,group,management``; the count and CTC
columns are only needed to generate a synthetic cohort.
"""

from __future__ import annotations

import csv
import hashlib
from dataclasses import dataclass
from pathlib import Path

GROUPS = ("benign", "malignant")
MANAGEMENTS = ("surgery", "follow-up", "biopsy-and-oncology")
COMPARTMENTS = ("anterior", "middle", "posterior")
REQUIRED_COLUMNS = ("class", "group", "management")


@dataclass(frozen=True)
class LesionClass:
    """One row of the taxonomy. Counts are patients per split of the paper; CTC in pg/ml."""

    name: str
    display_name: str
    group: str
    management: str
    n_train: int = 0
    n_val: int = 0
    n_test: int = 0
    ctc_mean_pg_ml: float = float("nan")
    ctc_sd_pg_ml: float = float("nan")
    #: compartment -> probability (sums to 1).
    compartments: tuple[tuple[str, float], ...] = ()

    @property
    def malignant(self) -> bool:
        return self.group == "malignant"

    @property
    def n_total(self) -> int:
        return self.n_train + self.n_val + self.n_test


@dataclass(frozen=True)
class Taxonomy:
    """An ordered list of lesion classes; the order defines the model's output indices."""

    classes: tuple[LesionClass, ...]
    source: str = "<memory>"

    def __post_init__(self) -> None:
        names = [c.name for c in self.classes]
        if len(names) < 3:
            raise ValueError(f"taxonomy {self.source}: needs at least 3 classes, got {len(names)}")
        dupes = sorted({n for n in names if names.count(n) > 1})
        if dupes:
            raise ValueError(f"taxonomy {self.source}: duplicate class names {dupes}")

    def __len__(self) -> int:
        return len(self.classes)

    @property
    def names(self) -> list[str]:
        return [c.name for c in self.classes]

    @property
    def malignant_mask(self) -> list[bool]:
        return [c.malignant for c in self.classes]

    def index(self, name: str) -> int:
        """Output index of class ``name``; ValueError naming the known classes otherwise."""
        try:
            return self.names.index(name)
        except ValueError:
            raise ValueError(
                f"label {name!r} is not in the taxonomy {self.source} (known: {', '.join(self.names)})"
            ) from None

    def labels_file_text(self) -> str:
        """Triton classification-extension labels file: one class name per line, index order."""
        return "".join(f"{n}\n" for n in self.names)

    def to_csv_text(self) -> str:
        rows = [
            "class,display_name,group,management,n_train,n_val,n_test,ctc_mean_pg_ml,ctc_sd_pg_ml,compartments"
        ]
        for c in self.classes:
            comp = ";".join(f"{k}:{v:g}" for k, v in c.compartments)
            rows.append(
                f"{c.name},{c.display_name},{c.group},{c.management},{c.n_train},{c.n_val},"
                f"{c.n_test},{c.ctc_mean_pg_ml:g},{c.ctc_sd_pg_ml:g},{comp}"
            )
        return "\n".join(rows) + "\n"

    def digest(self) -> str:
        return hashlib.sha256(self.to_csv_text().encode()).hexdigest()


def _parse_compartments(text: str, where: str) -> tuple[tuple[str, float], ...]:
    if not text.strip():
        return ()
    out = []
    for part in text.split(";"):
        name, _, value = part.partition(":")
        name = name.strip()
        if name not in COMPARTMENTS:
            raise ValueError(f"{where}: compartment {name!r} must be one of {COMPARTMENTS}")
        out.append((name, float(value)))
    total = sum(v for _, v in out)
    if abs(total - 1.0) > 1e-6:
        raise ValueError(f"{where}: compartment probabilities must sum to 1, got {total:g}")
    return tuple(out)


def parse_taxonomy(text: str, source: str = "<memory>") -> Taxonomy:
    """Parse taxonomy CSV text; errors name the source, the row and the rule."""
    reader = csv.DictReader(text.splitlines())
    missing = [c for c in REQUIRED_COLUMNS if c not in (reader.fieldnames or [])]
    if missing:
        raise ValueError(f"taxonomy {source}: missing required columns {missing}")
    classes = []
    for i, row in enumerate(reader, start=2):
        where = f"taxonomy {source} line {i}"
        if row["group"] not in GROUPS:
            raise ValueError(f"{where}: group must be one of {GROUPS}, got {row['group']!r}")
        if row["management"] not in MANAGEMENTS:
            raise ValueError(
                f"{where}: management must be one of {MANAGEMENTS}, got {row['management']!r}"
            )

        def num(key: str, cast: type, default: float | int, row: dict = row, where: str = where):
            value = (row.get(key) or "").strip()
            try:
                return cast(value) if value else default
            except ValueError:
                raise ValueError(
                    f"{where}: column {key!r} must be a number, got {value!r}"
                ) from None

        classes.append(
            LesionClass(
                name=row["class"].strip(),
                display_name=(row.get("display_name") or row["class"]).strip(),
                group=row["group"],
                management=row["management"],
                n_train=num("n_train", int, 0),
                n_val=num("n_val", int, 0),
                n_test=num("n_test", int, 0),
                ctc_mean_pg_ml=num("ctc_mean_pg_ml", float, float("nan")),
                ctc_sd_pg_ml=num("ctc_sd_pg_ml", float, float("nan")),
                compartments=_parse_compartments(row.get("compartments") or "", where),
            )
        )
    return Taxonomy(tuple(classes), source=source)


def load_taxonomy(path: str | Path | None = None) -> Taxonomy:
    """Load a taxonomy CSV; ``None`` loads the paper's 20-class default shipped with dmfn."""
    if path is None:
        from dmfn.resources import taxonomy_file

        default = taxonomy_file()
        return parse_taxonomy(default.read_text(), source=default.name)
    path = Path(path)
    if not path.is_file():
        raise ValueError(f"argument 'taxonomy': file {path} does not exist")
    return parse_taxonomy(path.read_text(), source=str(path))
