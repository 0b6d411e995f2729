"""The lesion taxonomy: the one data file that names the classes, their benign/malignant group
and the paper's statistics the synthetic generator samples from (Table 2: patients per split,
CTC mean and SD).

The default is the 20 classes of the paper's Table 2 (``data/taxonomy_paper.csv``). Users may
supply their own CSV with at least the columns ``class,group``; the count and CTC columns are only
needed to generate a synthetic cohort. Management is not the taxonomy's business: it is a policy
(:mod:`dmfn.contract.management`); a ``management`` column in older files is ignored.

**Grouping.** Table 2 counts every thymoma as malignant, but the paper's text lists "benign
thymoma" among the benign lesions without saying which types it means. ``grouping`` chooses:
``table2`` (the default, every thymoma malignant) or ``thymoma_a_ab_benign`` (types A and AB, the
types older classifications called benign, regrouped as benign: 157 of the paper's 1074
patients). A grouping changes the binary task only; the classes and their order stay.
"""

from __future__ import annotations

import csv
import hashlib
from dataclasses import dataclass, replace
from pathlib import Path

from dmfn.contract.errors import InvalidInput

GROUPS = ("benign", "malignant")
COMPARTMENTS = ("anterior", "middle", "posterior")
REQUIRED_COLUMNS = ("class", "group")
#: Regroupings of the default taxonomy: name -> {class: group}.
GROUPINGS: dict[str, dict[str, str]] = {
    "table2": {},
    "thymoma_a_ab_benign": {"thymoma_A": "benign", "thymoma_AB": "benign"},
}
DEFAULT_GROUPING = "table2"


@dataclass(frozen=True)
class LesionClass:
    """One row of the taxonomy. Counts are patients per split of the paper; CTC in pg/ml."""

    name: str
    display_name: str
    group: str
    n_train: int = 0
    n_val: int = 0
    n_test: int = 0
    ctc_mean_pg_ml: float = float("nan")
    ctc_sd_pg_ml: float = float("nan")

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
        rows = ["class,display_name,group,n_train,n_val,n_test,ctc_mean_pg_ml,ctc_sd_pg_ml"]
        for c in self.classes:
            rows.append(
                f"{c.name},{c.display_name},{c.group},{c.n_train},{c.n_val},"
                f"{c.n_test},{c.ctc_mean_pg_ml:g},{c.ctc_sd_pg_ml:g}"
            )
        return "\n".join(rows) + "\n"

    def digest(self) -> str:
        return hashlib.sha256(self.to_csv_text().encode()).hexdigest()


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
                n_train=num("n_train", int, 0),
                n_val=num("n_val", int, 0),
                n_test=num("n_test", int, 0),
                ctc_mean_pg_ml=num("ctc_mean_pg_ml", float, float("nan")),
                ctc_sd_pg_ml=num("ctc_sd_pg_ml", float, float("nan")),
            )
        )
    return Taxonomy(tuple(classes), source=source)


def regroup(taxonomy: Taxonomy, grouping: str) -> Taxonomy:
    """``taxonomy`` with the groups of :data:`GROUPINGS` ``[grouping]``; ValueError naming the
    argument for an unknown grouping or one whose classes the taxonomy lacks."""
    if grouping not in GROUPINGS:
        raise InvalidInput("grouping", f"must be one of {', '.join(GROUPINGS)}, got {grouping!r}")
    change = GROUPINGS[grouping]
    if not change:
        return taxonomy
    missing = sorted(set(change) - set(taxonomy.names))
    if missing:
        raise InvalidInput(
            "grouping",
            f"{grouping} regroups {missing}, which taxonomy {taxonomy.source} does not have",
        )
    classes = tuple(replace(c, group=change.get(c.name, c.group)) for c in taxonomy.classes)
    return Taxonomy(classes, source=f"{taxonomy.source} (grouping {grouping})")


def load_taxonomy(path: str | Path | None = None, grouping: str = DEFAULT_GROUPING) -> Taxonomy:
    """Load a taxonomy CSV (``None``: the paper's 20-class default shipped with dmfn), regrouped
    by ``grouping`` (see the module docstring)."""
    if path is None:
        from dmfn.resources import taxonomy_file

        default = taxonomy_file()
        return regroup(parse_taxonomy(default.read_text(), source=default.name), grouping)
    path = Path(path)
    if not path.is_file():
        raise ValueError(f"argument 'taxonomy': file {path} does not exist")
    return regroup(parse_taxonomy(path.read_text(), source=str(path)), grouping)
