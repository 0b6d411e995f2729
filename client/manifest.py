"""Read and validate a manifest CSV (written by ``dmfn synth`` or by a user): the one reader of
manifests, for training (labelled cohorts) and for ``dmfn predict`` (studies to classify).

One row per image. Columns (more are allowed and ignored):

- ``patient_id``, ``image_id`` (unique in the file)
- ``image_path``: a DICOM series folder, a NIfTI (``.nii`` / ``.nii.gz``) or an NRRD
  (``.nrrd`` / ``.nhdr``) file, loaded by :func:`dmfn.client.io.load_image`
- ``mask_path``: the lesion mask, NIfTI or NRRD
- the CTC feature columns (default ``ctc_level_pg_ml``, in pg/ml; ``ctc_features=`` names others)
- ``age_years`` (in ``dmfn.contract.schema.AGE_RANGE_YEARS``), ``sex`` (``M`` / ``F``), ``location`` (``anterior`` / ``middle`` / ``posterior``)
- ``label`` (a class of the taxonomy), ``group`` (``benign`` / ``malignant``, must agree with the
  taxonomy), ``split`` (``train`` / ``val`` / ``test``): required for training
  (``labelled=True``); optional for prediction, where ``patient_id`` and ``image_id`` are optional
  too (empty when absent: the loaded image's own id is used)
- optional ``segment`` (the segment of a 3D Slicer ``.seg.nrrd`` mask, by name or number) and
  ``series_uid`` (the SeriesInstanceUID to read from a DICOM folder holding several series)

Relative paths are relative to the manifest's folder. Every error is a ``ValueError`` naming the
file, the line (the header is line 1) and the column. Patient-level rules: all images of a patient
share one split (no patient leaks across splits), one label and the same clinical facts.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from dmfn.client.io.errors import one_line
from dmfn.client.io.image import IMAGE_FILE_SUFFIXES, image_kind
from dmfn.client.io.seg import SEG_FILE_SUFFIXES
from dmfn.client.study_files import read_study_files
from dmfn.contract.csvfile import csv_rows
from dmfn.contract.schema import AGE_RANGE_YEARS, DEFAULT_CTC_FEATURES, LOCATIONS
from dmfn.contract.study import SEXES, Clinical, Study
from dmfn.contract.taxonomy import GROUPS, Taxonomy

SPLITS: tuple[str, ...] = ("train", "val", "test")
#: Columns of a manifest with the default CTC feature, in the order `dmfn synth` writes them.
MANIFEST_COLUMNS: tuple[str, ...] = (
    "patient_id",
    "image_id",
    "image_path",
    "mask_path",
    *DEFAULT_CTC_FEATURES,
    "age_years",
    "sex",
    "location",
    "label",
    "group",
    "split",
)
#: The columns every labelled manifest needs whatever its CTC features.
BASE_COLUMNS: tuple[str, ...] = tuple(c for c in MANIFEST_COLUMNS if c not in DEFAULT_CTC_FEATURES)
#: The columns a manifest of studies to classify needs (besides its CTC features).
STUDY_COLUMNS: tuple[str, ...] = ("image_path", "mask_path", "age_years", "sex", "location")
#: Image files (a DICOM series is a folder) and mask files: NIfTI, NRRD or DICOM SEG.
IMAGE_SUFFIXES: tuple[str, ...] = IMAGE_FILE_SUFFIXES
MASK_SUFFIXES: tuple[str, ...] = (*IMAGE_FILE_SUFFIXES, *SEG_FILE_SUFFIXES)


@dataclass(frozen=True)
class ManifestRow:
    """One image of the cohort. Paths are absolute; CTC values in the manifest's units."""

    line: int
    patient_id: str
    image_id: str
    image_path: Path
    mask_path: Path
    ctc: tuple[float, ...]
    age_years: float
    sex: str
    location: str
    label: str | None = None
    label_index: int | None = None
    group: str | None = None
    split: str | None = None
    segment: str | None = None
    series_uid: str | None = None

    @property
    def clinical(self) -> Clinical:
        """The clinical record (its ``as_array()`` is the CLINICAL fp32[5] tensor)."""
        return Clinical(self.age_years, self.sex, self.location)

    @property
    def image_kind(self) -> str:
        """``"dicom"`` (series folder), ``"nifti"`` or ``"nrrd"``: :func:`dmfn.client.io.image_kind`."""
        return image_kind(self.image_path)


@dataclass(frozen=True)
class Manifest:
    """A validated manifest: its rows in file order and what they were validated against."""

    path: Path
    rows: tuple[ManifestRow, ...]
    taxonomy: Taxonomy | None
    ctc_features: tuple[str, ...]

    def split(self, name: str) -> tuple[ManifestRow, ...]:
        """The rows of split ``name`` (``train`` / ``val`` / ``test``), in file order."""
        if name not in SPLITS:
            raise ValueError(f"argument 'name': split must be one of {SPLITS}, got {name!r}")
        return tuple(r for r in self.rows if r.split == name)

    def patients(self, split: str | None = None) -> list[str]:
        """Patient ids (first-appearance order), optionally of one split only."""
        rows = self.rows if split is None else self.split(split)
        return list(dict.fromkeys(r.patient_id for r in rows))


class _RowReader:
    """Converts one CSV row to typed values; every error names file, line and column."""

    def __init__(self, path: Path, line: int, row: dict[str, str]) -> None:
        self.path, self.line, self.row = path, line, row

    def error(self, column: str, rule: str) -> ValueError:
        return ValueError(f"manifest {self.path} line {self.line}, column {column!r}: {rule}")

    def text(self, column: str) -> str:
        value = (self.row.get(column) or "").strip()
        if not value:
            raise self.error(column, "must not be empty")
        return value

    def optional(self, column: str) -> str | None:
        return (self.row.get(column) or "").strip() or None

    def choice(self, column: str, allowed: Sequence[str]) -> str:
        value = self.text(column)
        if value not in allowed:
            raise self.error(column, f"must be one of {tuple(allowed)}, got {value!r}")
        return value

    def number(self, column: str, low: float = -math.inf, high: float = math.inf) -> float:
        value = self.text(column)
        try:
            number = float(value)
        except ValueError:
            raise self.error(column, f"must be a number, got {value!r}") from None
        if not math.isfinite(number) or not low <= number <= high:
            raise self.error(column, f"must be a finite number in [{low:g}, {high:g}], got {value}")
        return number

    def file(self, column: str, base: Path, *, folder_ok: bool, suffixes: Sequence[str]) -> Path:
        path = Path(self.text(column))
        path = path if path.is_absolute() else base / path
        try:
            is_dir, is_file = path.is_dir(), path.is_file()
        except OSError as err:  # e.g. a folder on the way that this user may not enter
            raise self.error(column, f"{path} cannot be accessed ({one_line(err)})") from None
        if is_dir:
            if not folder_ok:
                raise self.error(column, f"{path} is a folder; expected a file {tuple(suffixes)}")
            return path
        if not is_file:
            raise self.error(column, f"{path} does not exist")
        if not path.name.lower().endswith(tuple(suffixes)):
            kinds = ("a DICOM folder or " if folder_ok else "") + f"a file ending in {suffixes}"
            raise self.error(column, f"{path} must be {kinds}")
        return path


def read_manifest(
    path: str | Path,
    taxonomy: Taxonomy | None,
    ctc_features: Sequence[str] = DEFAULT_CTC_FEATURES,
    check_files: bool = True,
    labelled: bool = True,
) -> Manifest:
    """Read and validate the manifest CSV at ``path`` against ``taxonomy``.

    ``ctc_features`` names the CTC columns, in the order they enter the TABULAR tensor.
    ``check_files=False`` skips the existence checks of image and mask paths (they are then only
    resolved). ``labelled=False`` (prediction) makes ``label``, ``group``, ``split``,
    ``patient_id`` and ``image_id`` optional; a label that is given is still checked against
    ``taxonomy`` when there is one. ValueError (file, line, column, rule) on the first problem.
    """
    if labelled and taxonomy is None:
        raise ValueError("argument 'taxonomy': a labelled manifest is checked against a taxonomy")
    path = Path(path)
    ctc_features = tuple(ctc_features)
    if not ctc_features:
        raise ValueError("argument 'ctc_features': needs at least one CTC column")
    if len(set(ctc_features)) != len(ctc_features):
        raise ValueError(f"argument 'ctc_features': duplicate names in {ctc_features}")
    base = path.resolve().parent
    required = (*(BASE_COLUMNS if labelled else STUDY_COLUMNS), *ctc_features)
    with csv_rows(path, "manifest", required) as (_, numbered):
        rows = [
            _read_row(
                _RowReader(path, line, raw), base, taxonomy, ctc_features, check_files, labelled
            )
            for line, raw in numbered
        ]
    if not rows:
        raise ValueError(f"manifest {path}: has no rows")
    _check_consistency(path, rows)
    return Manifest(path=path, rows=tuple(rows), taxonomy=taxonomy, ctc_features=ctc_features)


def _read_row(
    r: _RowReader,
    base: Path,
    taxonomy: Taxonomy | None,
    ctc_features: tuple[str, ...],
    check_files: bool,
    labelled: bool,
) -> ManifestRow:
    label = r.text("label") if labelled else r.optional("label")
    label_index, group = None, None
    if label is not None and taxonomy is not None:
        try:
            label_index = taxonomy.index(label)
        except ValueError as err:
            raise r.error("label", str(err)) from None
    if labelled or r.optional("group") is not None:
        group = r.choice("group", GROUPS)
        if label_index is not None and taxonomy is not None:
            expected = taxonomy.classes[label_index].group
            if group != expected:
                raise r.error(
                    "group", f"label {label!r} is {expected} in the taxonomy, got {group!r}"
                )
    if check_files:
        image_path = r.file("image_path", base, folder_ok=True, suffixes=IMAGE_SUFFIXES)
        mask_path = r.file("mask_path", base, folder_ok=False, suffixes=MASK_SUFFIXES)
    else:
        image_path, mask_path = (base / r.text(c) for c in ("image_path", "mask_path"))
    image_id = r.text("image_id") if labelled else r.optional("image_id") or ""
    return ManifestRow(
        line=r.line,
        patient_id=r.text("patient_id") if labelled else r.optional("patient_id") or "",
        image_id=image_id,
        image_path=image_path,
        mask_path=mask_path,
        ctc=tuple(r.number(c) for c in ctc_features),
        age_years=r.number("age_years", *AGE_RANGE_YEARS),
        sex=r.choice("sex", SEXES),
        location=r.choice("location", LOCATIONS),
        label=label,
        label_index=label_index,
        group=group,
        split=r.choice("split", SPLITS) if labelled or r.optional("split") else None,
        segment=r.optional("segment"),
        series_uid=r.optional("series_uid"),
    )


def load_row_study(row: ManifestRow, ctc_features: Sequence[str]) -> Study:
    """The study of ``row`` (:func:`dmfn.client.study_files.read_study_files`): its image (the row's
    ``series_uid``), its mask on the image's grid (the row's ``segment``), its CTC values named
    by ``ctc_features``, its clinical record, ids and label."""
    return read_study_files(
        row.image_path,
        row.mask_path,
        dict(zip(ctc_features, row.ctc, strict=True)),
        row.clinical,
        segment=row.segment,
        series_uid=row.series_uid,
        patient_id=row.patient_id,
        image_id=row.image_id,
        label=row.label,
    ).study


def _check_consistency(path: Path, rows: list[ManifestRow]) -> None:
    seen_images: dict[str, int] = {}
    first_of_patient: dict[str, ManifestRow] = {}
    for row in rows:
        if not row.patient_id:  # an unlabelled row without ids: nothing to compare
            continue
        if row.image_id in seen_images:
            raise ValueError(
                f"manifest {path} line {row.line}, column 'image_id': {row.image_id!r} repeats "
                f"line {seen_images[row.image_id]}"
            )
        seen_images[row.image_id] = row.line
        first = first_of_patient.setdefault(row.patient_id, row)
        for column in ("split", "label", "age_years", "sex", "location"):
            if getattr(row, column) != getattr(first, column):
                rule = (
                    "a patient's images must all be in one split (no patient leaks across splits)"
                    if column == "split"
                    else "must be the same for all images of a patient"
                )
                raise ValueError(
                    f"manifest {path} line {row.line}, column {column!r}: patient "
                    f"{row.patient_id!r} has {getattr(row, column)!r} here but "
                    f"{getattr(first, column)!r} on line {first.line}; {rule}"
                )
