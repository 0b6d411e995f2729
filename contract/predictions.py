"""The predictions CSV: one format for ``dmfn predict`` (through the server or in-process),
``dmfn train`` (validation and test) and ``dmfn evaluate`` (which also reads other systems').

Columns, in this order:

- ``level``: ``patient`` (a patient's probabilities: the mean over its images) or ``image``;
- ``patient_id``, ``image_id`` (empty on patient rows), ``split``, ``label`` (each empty when
  unknown);
- ``prob_<class>`` for every class of the model, in logit order;
- ``malignant_prob``: the summed probability of the malignant classes;
- ``predicted``: the most probable class;
- what the served model said of its own uncertainty (image rows of ``dmfn predict``; empty
  elsewhere): ``class_set`` (the conformal class set, most probable first, joined by ``|``),
  ``binary_set`` (``malignant``, ``benign`` or both), ``ood_score`` and ``ood_flag``
  (``true`` / ``false``);
- provenance of the model: ``model_sha256`` (of the checkpoint file), ``model_trained`` (its
  training date, ISO 8601), ``model_synthetic`` (``true`` when trained on synthetic data),
  ``model_temperature`` (the calibration temperature its probabilities carry) and
  ``model_name`` (its kind: ``dmfn``, ``cnn`` or ``tabular``);
- ``status``: ``ok``, or ``failed`` for a study that could not be predicted, and ``error``: the
  rule it broke (e.g. ``argument 'mask': ... is empty``). A failed study's row is an image row
  with empty probabilities; it is kept so that an evaluation reports it as an exclusion (STARD)
  instead of losing it. Files without these columns (older ones, other systems') hold ``ok``
  rows only;
- ``fold``: for out-of-fold predictions (``dmfn train --folds K``), the fold whose model made
  the row; empty otherwise.

A file of another system may be **binary only**: ``patient_id``, ``label`` (``benign`` /
``malignant``) and ``malignant_prob`` (any score, larger = more likely malignant).

Text cells that a spreadsheet would run as a formula (an ``image_id`` of ``=HYPERLINK(...)``)
are written with a leading ``'`` and read back without it
(:func:`~dmfn.contract.csvfile.escape_cell`); numbers are written as numbers. The file is written
whole or not at all (:func:`~dmfn.contract.outfile.replacing`).
"""

from __future__ import annotations

import csv
import math
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from dmfn.contract.csvfile import csv_rows, escape_cell, unescape_cell
from dmfn.contract.errors import InvalidInput
from dmfn.contract.outfile import replacing

LEVELS: tuple[str, ...] = ("patient", "image")
PROB_PREFIX = "prob_"
PROVENANCE_COLUMNS: tuple[str, ...] = (
    "model_sha256", "model_trained", "model_synthetic", "model_temperature", "model_name",
)  # fmt: skip
STATUS_COLUMNS: tuple[str, ...] = ("status", "error")
#: The uncertainty outputs of a served prediction (contract/uncertainty.py), after ``predicted``.
UNCERTAINTY_COLUMNS: tuple[str, ...] = ("class_set", "binary_set", "ood_score", "ood_flag")
#: Separator of the classes of a set in one cell (class names never hold it).
SET_SEPARATOR = "|"
#: Last column: the fold of an out-of-fold prediction (``dmfn train --folds``), else empty.
FOLD_COLUMN = "fold"
STATUSES: tuple[str, ...] = ("ok", "failed")
#: The columns a binary-only predictions file needs.
BINARY_COLUMNS: tuple[str, ...] = ("patient_id", "label", "malignant_prob")


@dataclass(frozen=True)
class Provenance:
    """Which model made the predictions: the checkpoint's sha256, training date, whether it
    was trained on synthetic data, the calibration temperature its probabilities carry
    (``softmax(logits / T)``, fitted on validation at training) and its kind (``dmfn``,
    ``cnn`` or ``tabular``: what a report names the system after); empty / None when
    unknown."""

    sha256: str = ""
    trained: str = ""
    synthetic: bool | None = None
    temperature: float | None = None
    name: str = ""

    def columns(self) -> dict[str, str]:
        synthetic = "" if self.synthetic is None else str(self.synthetic).lower()
        temperature = "" if self.temperature is None else repr(float(self.temperature))
        return {"model_sha256": self.sha256, "model_trained": self.trained,
                "model_synthetic": synthetic, "model_temperature": temperature,
                "model_name": self.name}  # fmt: skip

    @classmethod
    def from_columns(cls, row: Mapping[str, str]) -> Provenance:
        synthetic = (row.get("model_synthetic") or "").strip().lower()
        temperature = (row.get("model_temperature") or "").strip()
        try:
            t = float(temperature) if temperature else None
        except ValueError:
            raise InvalidInput(
                "model_temperature", f"must be a number, got {temperature!r}"
            ) from None
        if t is not None and not (math.isfinite(t) and t > 0):
            raise InvalidInput("model_temperature", f"must be a number > 0, got {temperature!r}")
        return cls(
            (row.get("model_sha256") or "").strip(),
            (row.get("model_trained") or "").strip(),
            None if synthetic == "" else synthetic == "true",
            t,
            (row.get("model_name") or "").strip(),
        )


@dataclass(frozen=True)
class PredictionRow:
    """One row: a patient's or an image's probabilities (``probs`` in class order; empty for a
    binary-only file) and malignant probability."""

    level: str
    patient_id: str
    malignant_prob: float
    probs: tuple[float, ...] = ()
    image_id: str = ""
    split: str = ""
    label: str = ""
    #: The cross-validation fold whose model made this out-of-fold prediction ("" otherwise).
    fold: str = ""
    class_set: tuple[str, ...] = ()
    binary_set: tuple[str, ...] = ()
    ood_score: float | None = None
    ood_flag: bool | None = None

    def uncertainty_cells(self) -> list[str]:
        """The :data:`UNCERTAINTY_COLUMNS` cells of this row (empty when not known)."""
        score = "" if self.ood_score is None else f"{self.ood_score:.9g}"
        flag = "" if self.ood_flag is None else str(self.ood_flag).lower()
        sets = [escape_cell(SET_SEPARATOR.join(s)) for s in (self.class_set, self.binary_set)]
        return [*sets, score, flag]  # numbers stay numbers (a negative score is no formula)


@dataclass(frozen=True)
class FailedStudy:
    """A study that could not be predicted, and the rule it broke (``error``)."""

    patient_id: str
    image_id: str = ""
    split: str = ""
    label: str = ""
    error: str = ""


@dataclass
class PredictionTable:
    """The rows of one predictions file, its class names (empty: binary only) and provenance."""

    classes: tuple[str, ...]
    rows: list[PredictionRow] = field(default_factory=list)
    provenance: Provenance = field(default_factory=Provenance)
    path: Path | None = None
    #: The studies the file records as failed (``status`` ``failed``), in file order.
    failures: list[FailedStudy] = field(default_factory=list)

    @property
    def binary_only(self) -> bool:
        return not self.classes

    def patient_rows(self) -> list[PredictionRow]:
        """One row per patient: the file's patient rows, or else its image rows averaged per
        patient (probabilities and malignant probability), in first-appearance order."""
        patients = [r for r in self.rows if r.level == "patient"]
        if patients:
            return patients
        groups: dict[str, list[PredictionRow]] = {}
        for r in self.rows:
            groups.setdefault(r.patient_id, []).append(r)
        out = []
        for pid, rows in groups.items():
            probs = tuple(np.mean([r.probs for r in rows], axis=0)) if self.classes else ()
            out.append(
                PredictionRow(
                    "patient", pid, float(np.mean([r.malignant_prob for r in rows])),
                    tuple(float(p) for p in probs), "", rows[0].split, rows[0].label,
                    rows[0].fold,
                )
            )  # fmt: skip
        return out

    @property
    def averaged_images(self) -> bool:
        """True when :meth:`patient_rows` averaged image rows (the file had no patient rows)."""
        return not any(r.level == "patient" for r in self.rows)


def header(classes: Sequence[str]) -> list[str]:
    return [
        "level", "patient_id", "image_id", "split", "label",
        *(PROB_PREFIX + c for c in classes), "malignant_prob", "predicted", *UNCERTAINTY_COLUMNS,
        *PROVENANCE_COLUMNS,
        *STATUS_COLUMNS, FOLD_COLUMN,
    ]  # fmt: skip


def write_predictions(
    path: str | Path,
    classes: Sequence[str],
    rows: Iterable[PredictionRow],
    provenance: Provenance = Provenance(),
    *,
    overwrite: bool = True,
    failures: Iterable[FailedStudy] = (),
) -> Path:
    """Write ``rows`` (probabilities rounded to 9 significant digits), then one ``failed`` row
    per study of ``failures``, to ``path``, whole or not at all; an existing ``path`` is
    replaced only with ``overwrite`` (else :class:`~dmfn.contract.errors.InvalidInput` naming
    ``out``). Text cells that start like a formula get a leading ``'`` (see the module's
    docstring)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    prov = [escape_cell(v) for v in provenance.columns().values()]
    with replacing(path, overwrite=overwrite, newline="") as handle:
        writer = csv.writer(handle)
        writer.writerow(header(classes))  # every name starts with a letter
        for r in rows:
            predicted = escape_cell(classes[int(np.argmax(r.probs))]) if r.probs else ""
            text = [escape_cell(c) for c in (r.level, r.patient_id, r.image_id, r.split, r.label)]
            writer.writerow(
                [*text, *(f"{p:.9g}" for p in r.probs), f"{r.malignant_prob:.9g}", predicted,
                 *r.uncertainty_cells(), *prov, "ok", "",
                 escape_cell(r.fold)]
            )  # fmt: skip
        for f in failures:
            text = [escape_cell(c) for c in ("image", f.patient_id, f.image_id, f.split, f.label)]
            writer.writerow([*text, *([""] * len(classes)), "", "",
                             *([""] * len(UNCERTAINTY_COLUMNS)), *prov, "failed",
                             escape_cell(" ".join(f.error.split())), ""])  # fmt: skip
    return path


def _number(text: str, where: str, column: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise InvalidInput(column, f"{where}: must be a number, got {text!r}") from None
    if not math.isfinite(value):
        raise InvalidInput(column, f"{where}: must be finite, got {text!r}")
    return value


def _text(raw: dict[str, str], column: str, default: str = "") -> str:
    """A text cell as it was written: stripped, a formula escape removed."""
    return unescape_cell((raw.get(column) or default).strip())


def _uncertainty(
    raw: dict[str, str], where: str
) -> tuple[tuple[str, ...], tuple[str, ...], float | None, bool | None]:
    """The row's class set, binary set, OOD score and flag (empty / None when absent)."""
    sets = tuple(
        tuple(n for n in _text(raw, column).split(SET_SEPARATOR) if n)
        for column in ("class_set", "binary_set")
    )
    score_text, flag_text = _text(raw, "ood_score"), _text(raw, "ood_flag").lower()
    score = _number(score_text, where, "ood_score") if score_text else None
    if flag_text not in ("", "true", "false"):
        raise InvalidInput("ood_flag", f"{where}: must be true or false, got {flag_text!r}")
    return sets[0], sets[1], score, None if not flag_text else flag_text == "true"


def read_predictions(path: str | Path) -> PredictionTable:
    """Read a predictions CSV (full or binary only); InvalidInput naming the file, line and
    column of the first problem (NaN scores, missing columns, unknown levels, empty file).
    Text cells written with a formula escape are read without it."""
    path = Path(path)
    with csv_rows(path, "predictions", BINARY_COLUMNS) as (columns, rows):
        classes = tuple(c[len(PROB_PREFIX) :] for c in columns if c.startswith(PROB_PREFIX))
        table = PredictionTable(classes, path=path)
        for line, raw in rows:
            where = f"{path} line {line}"
            level = _text(raw, "level", "patient")
            if level not in LEVELS:
                raise InvalidInput("level", f"{where}: must be one of {LEVELS}, got {level!r}")
            pid = _text(raw, "patient_id")
            if not pid:
                raise InvalidInput("patient_id", f"{where}: must not be empty")
            status = _text(raw, "status", "ok")
            if status not in STATUSES:
                raise InvalidInput("status", f"{where}: must be one of {STATUSES}, got {status!r}")
            if status == "failed":
                table.failures.append(FailedStudy(
                    pid, _text(raw, "image_id"), _text(raw, "split"), _text(raw, "label"),
                    _text(raw, "error"),
                ))  # fmt: skip
                continue
            probs = tuple(_number(raw[PROB_PREFIX + c], where, PROB_PREFIX + c) for c in classes)
            table.rows.append(
                PredictionRow(
                    level, pid, _number(raw["malignant_prob"], where, "malignant_prob"), probs,
                    _text(raw, "image_id"), _text(raw, "split"), _text(raw, "label"),
                    _text(raw, FOLD_COLUMN), *_uncertainty(raw, where),
                )
            )  # fmt: skip
            if len(table.rows) == 1:
                table.provenance = Provenance.from_columns(
                    {k: _text(raw, k) for k in PROVENANCE_COLUMNS}
                )
    if not table.rows:
        failed = f" ({len(table.failures)} failed studies only)" if table.failures else ""
        raise InvalidInput("predictions", f"{path}: has no predicted rows{failed}")
    return table
