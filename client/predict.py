"""The work of ``dmfn predict`` (its command line: :mod:`dmfn.predict_cli`): read the studies of
the command line or of a manifest, predict them with a server or an in-process predictor, print
them and write the predictions CSV.

Only the lesion box plus the model's ROI margin is sent (see :mod:`dmfn.client.sdk`). No torch.

Errors name what the user wrote: a reader's error about one of its arguments
(:class:`~dmfn.client.io.errors.ArgumentError`) is shown under the option or manifest column
that gave it (:data:`INPUT_NAMES`); an error about a file's content names the file; a manifest
row's errors start with ``manifest PATH line N``.
"""

from __future__ import annotations

import io
import json
import logging
import re
import sys
from collections.abc import Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol

import numpy as np

from dmfn.client.io.errors import ArgumentError
from dmfn.client.manifest import read_manifest
from dmfn.client.study_files import StudyFiles, read_study_files
from dmfn.contract import schema as S
from dmfn.contract.audit import AuditLog
from dmfn.contract.errors import InvalidInput
from dmfn.contract.predictions import FailedStudy, PredictionRow, Provenance, write_predictions
from dmfn.contract.study import Clinical

from .progress import Progress
from .reports import Reports
from .sdk import DmfnServerError, Prediction

log = logging.getLogger("dmfn.predict")

EXIT_OK = 0
EXIT_FAILED = 1
EXIT_USAGE = 2
#: Studies loaded from disk at a time per request in flight (bounds memory for big manifests);
#: the next such chunk is read while this one is predicted.
LOAD_AHEAD = 2
#: How the user names each reader argument: (input, reader argument) -> (command-line option,
#: manifest column). "image" is :func:`~dmfn.client.io.load_image`, "mask"
#: :func:`~dmfn.client.io.load_mask`; an ArgumentError about another argument keeps its wording.
INPUT_NAMES: dict[tuple[str, str], tuple[str, str]] = {
    ("image", "path"): ("IMAGE", "image_path"),
    ("image", "folder"): ("IMAGE", "image_path"),
    ("image", "series_uid"): ("--series-uid", "series_uid"),
    ("mask", "path"): ("--mask", "mask_path"),
    ("mask", "segment"): ("--segment", "segment"),
}
#: API argument -> flag, for the errors about the predictions file (--out).
OUT_FLAGS = {"out": "--out", "overwrite": "--overwrite"}


@dataclass(frozen=True)
class StudySource:
    """Where one study comes from: image (DICOM folder / NIfTI / NRRD), mask, non-image data.

    ``where`` is empty for the command line, else the manifest row (``manifest PATH line N``).
    """

    image_path: Path
    mask_path: Path
    segment: str | None
    ctc: tuple[str, ...]  # "VALUE" or "NAME=VALUE"
    age_years: str
    sex: str
    location: str
    image_id: str = ""
    where: str = ""
    series_uid: str | None = None
    patient_id: str = ""
    split: str = ""
    label: str = ""
    #: where the age and the sex came from (stored in the SR): "command line", a manifest
    #: column, or the DICOM header attribute
    age_source: str = "command line"
    sex_source: str = "command line"
    #: the study's and series' DICOM UIDs where known before reading (a PACS study), for audit
    study_uid: str = ""

    def without_paths(self, text: str) -> str:
        """``text`` with this study's file and folder paths (and files inside them) replaced by
        ``IMAGE`` / ``MASK``: folder names often carry a patient's name, which the audit trail
        must not hold."""
        for path, name in ((self.image_path, "IMAGE"), (self.mask_path, "MASK")):
            for form in sorted({str(path), str(path.resolve())}, key=len, reverse=True):
                text = re.sub(re.escape(form) + r"[^\s:,;]*", name, text)
        return text

    def explain(self, err: ValueError, step: str) -> ValueError:
        """``err``, raised while reading ``step`` ("image" or "mask"), in the user's terms.

        An :class:`ArgumentError` is shown under the option or column that gave the argument
        (:data:`INPUT_NAMES`); any other error already names its file and is kept as it is.
        Both are prefixed with the manifest row, if any.
        """
        if isinstance(err, ArgumentError) and (step, err.argument) in INPUT_NAMES:
            option, column = INPUT_NAMES[step, err.argument]
            return ValueError(_about(self.where, option, column, err.detail))
        return ValueError(_located(self.where, str(err)))


def _located(where: str, text: str) -> str:
    """``text`` prefixed with the manifest row ``where`` ("": the command line, unchanged)."""
    return f"{where}: {text}" if where else text


def _about(where: str, option: str, column: str, text: str) -> str:
    """``text`` about command-line ``option``, or about ``column`` of manifest row ``where``."""
    return _located(where, f"column '{column}': {text}" if where else f"{option}: {text}")


def ctc_values(items: Sequence[str], features: Sequence[str], where: str = "") -> dict[str, float]:
    """``VALUE`` items fill ``features`` in order; ``NAME=VALUE`` items name their feature.

    ``where``: the manifest row the items come from ("" for ``--ctc`` on the command line).
    """
    out: dict[str, float] = {}
    plain = [i for i in items if "=" not in i]
    named = [i for i in items if "=" in i]
    if plain and len(plain) != len(features):
        raise ValueError(
            _located(
                where,
                f"--ctc: the model expects {len(features)} CTC feature(s) "
                f"({', '.join(features)}); give that many values or NAME=VALUE pairs, got "
                f"{list(items)}",
            )
        )
    pairs = list(zip(features, plain, strict=False)) + [tuple(i.split("=", 1)) for i in named]
    for name, text in pairs:
        try:
            out[name.strip()] = float(text)
        except ValueError:
            message = f"CTC feature {name.strip()!r} must be a number, got {text!r}"
            raise ValueError(_about(where, "--ctc", name.strip(), message)) from None
    return out


def load_study(
    source: StudySource, ctc_features: Sequence[str], roi_margin_mm: float | None = None
) -> StudyFiles:
    """Read the image and mask of ``source`` and attach its CTC and clinical facts
    (:func:`dmfn.client.study_files.read_study_files`: the study, and the DICOM headers an SR
    references). ``roi_margin_mm`` (the model's ROI margin): read only the lesion box plus that
    margin, what the request sends (a DICOM series decodes only those slices); None: all.

    ValueError in the user's terms (:meth:`StudySource.explain`).
    """
    try:
        age = float(source.age_years)
    except ValueError:
        message = f"must be a number of years, got {source.age_years!r}"
        raise ValueError(_about(source.where, "--age", "age_years", message)) from None
    return read_study_files(
        source.image_path,
        source.mask_path,
        ctc_values(source.ctc, ctc_features, source.where),
        Clinical(age, source.sex, source.location),
        segment=source.segment,
        series_uid=source.series_uid,
        image_id=source.image_id,
        label=source.label or None,
        explain=source.explain,
        crop_margin_mm=roi_margin_mm,
    )


def read_sources(path: Path, ctc_features: Sequence[str]) -> list[StudySource]:
    """The studies of a manifest CSV, read by the one manifest reader
    (:func:`dmfn.client.manifest.read_manifest`, unlabelled); ValueError naming line and column."""
    manifest = read_manifest(path, None, ctc_features, labelled=False)
    return [
        StudySource(
            image_path=row.image_path,
            mask_path=row.mask_path,
            segment=row.segment,
            ctc=tuple(
                f"{name}={value!r}" for name, value in zip(ctc_features, row.ctc, strict=True)
            ),
            age_years=repr(row.age_years),
            sex=row.sex,
            location=row.location,
            image_id=row.image_id,
            where=f"manifest {manifest.path} line {row.line}",
            series_uid=row.series_uid,
            patient_id=row.patient_id,
            split=row.split or "",
            label=row.label or "",
            age_source="manifest column age_years",
            sex_source="manifest column sex",
        )
        for row in manifest.rows
    ]


def format_prediction(prediction: Prediction, indent: str = "") -> str:
    """Human-readable lines: the top-3 classes with probabilities, the malignant probability,
    the suggested management and the lesion measurements with their units (mm, mm^2, mm^3).

    The one formatter of predictions for people (``dmfn predict``, ``make demo``); every line
    starts with ``indent``.
    """
    lines = [f"study {prediction.image_id or '-'}  (model {prediction.model_version})"]
    width = max(len(label) for label, _ in prediction.top3)
    for rank, (label, prob) in enumerate(prediction.top3, start=1):
        lines.append(f"  {rank}. {label:<{width}}  {prob:6.1%}")
    lines.append(f"  malignant probability: {prediction.malignant_prob:.1%}")
    lines += _uncertainty_lines(prediction)
    lines.append(
        f"  suggested management:  {prediction.management_detail or prediction.management}"
        "  (a local policy, not from the paper)"
    )
    lines.append("  measurements:")
    name_width = max(len(name) for name in prediction.measurements)
    for name, value in prediction.measurements.items():
        unit = S.MEASUREMENT_UNITS.get(name, "")
        lines.append(f"    {name:<{name_width}}  {value:12.1f} {unit}".rstrip())
    return "\n".join(indent + line for line in lines)


def _uncertainty_lines(prediction: Prediction) -> list[str]:
    """The class sets and the OOD flag in words (nothing for a model without them)."""
    if not prediction.class_set:
        return []
    coverage = f"{prediction.coverage:.0%} " if prediction.coverage is not None else ""
    binary = " or ".join(prediction.binary_set)
    flag = (
        "UNUSUAL: unlike the training studies, read this answer with caution"
        if prediction.ood_flag
        else "no (like the training studies)"
    )
    return [
        f"  {coverage}class set:         {', '.join(prediction.class_set)}",
        f"  {coverage}benign/malignant:  {binary}",
        f"  out of distribution:   {flag} (score {prediction.ood_score:.2f})",
    ]


def _sources(
    study: StudySource | None, manifest: Path | None, ctc_features: Sequence[str]
) -> list[StudySource]:
    """The studies to send: ``study``, or those of ``manifest`` (which needs the CTC names)."""
    if manifest is not None:
        return read_sources(manifest, ctc_features)
    if study is None:
        raise InvalidInput("study", "give {study} or {manifest}",
                           mentions={"study": "study", "manifest": "manifest"})  # fmt: skip
    return [study]


def _chunks(items: list[StudySource], size: int) -> Iterator[list[StudySource]]:
    for start in range(0, len(items), size):
        yield items[start : start + size]


def _read_ahead(
    chunks: Iterator[list[StudySource]], ctc_features: Sequence[str], margin: float | None
) -> Iterator[tuple[list[StudySource], list[StudyFiles | Exception]]]:
    """Each chunk with its studies read (a ValueError, already in the user's terms, where one
    cannot be), the next chunk read by a worker thread while the caller predicts this one: the
    files of a manifest are read while the server works, and at most two chunks are in memory."""

    def read(chunk: list[StudySource]) -> list[StudyFiles | Exception]:
        loaded: list[StudyFiles | Exception] = []
        for source in chunk:
            try:
                loaded.append(load_study(source, ctc_features, margin))
            except ValueError as err:
                loaded.append(err)
        return loaded

    with ThreadPoolExecutor(1, thread_name_prefix="dmfn-read") as pool:
        current = next(chunks, None)
        pending = None if current is None else pool.submit(read, current)
        while current is not None and pending is not None:
            following = next(chunks, None)
            loaded = pending.result()
            pending = None if following is None else pool.submit(read, following)
            yield current, loaded
            current = following


class StudyOutput(Protocol):
    """Something made from each prediction besides the printout (the heat maps of
    ``--explain``): ``make`` per predicted study (ValueError or RuntimeError when it cannot),
    ``finish`` once after the last."""

    def make(self, source: StudySource, files: StudyFiles, prediction: Prediction) -> None: ...

    def finish(self) -> None: ...


#: What predicts: a DmfnClient or an in-process predictor with its interface (contract,
#: predict_many, a context manager).
Predictor = Any


def run(
    predictor: Predictor,
    *,
    study: StudySource | None = None,
    manifest: Path | None = None,
    concurrency: int = 4,
    out: Path | None = None,
    overwrite: bool = False,
    as_json: bool = False,
    reports: Reports | None = None,
    audit: AuditLog | None = None,
    explain: StudyOutput | None = None,
) -> int:
    """Predict ``study``, or the studies of the ``manifest`` CSV, with ``predictor`` (a
    :class:`~dmfn.client.sdk.DmfnClient`, or an in-process predictor with its interface),
    ``concurrency`` requests in flight; print them (``as_json``: one JSON list), write the
    predictions CSV ``out`` (an existing one only with ``overwrite``) and, with ``reports``, a
    DICOM SR per prediction (written and/or stored in a PACS); returns the exit status. A
    study refused before prediction appends a ``refused`` line to ``audit`` (the predictor
    writes the others; give it the same log), and audit lines that could not be written are
    counted on stderr. ``explain`` (heat maps, in-process only) gets each prediction too, and is
    finished after the last.
    Progress is shown for a manifest; one study's output is its prediction, or one line saying
    why there is none."""
    with predictor:
        try:
            contract = predictor.contract
            sources = _sources(study, manifest, contract.ctc_features)
            if reports is not None:
                reports.check(sources)
        except DmfnServerError as err:
            print(f"dmfn predict: {err}", file=sys.stderr)
            return EXIT_FAILED
        except ValueError as err:
            print(f"dmfn predict: {err}", file=sys.stderr)
            return EXIT_USAGE
        # read only what is sent; a stand-in predictor without a published margin reads all
        margin = contract.roi_margin_mm
        results: list[tuple[StudySource, Prediction | Exception]] = []
        report_failures: list[tuple[StudySource, Exception]] = []
        # one study: no progress lines, its prediction or its error is the whole output
        stream = sys.stderr if manifest is not None else io.StringIO()
        with Progress(len(sources), "dmfn predict", stream=stream) as progress:
            chunks = _chunks(sources, LOAD_AHEAD * concurrency)
            for chunk, loaded in _read_ahead(chunks, contract.ctc_features, margin):
                for source, files in zip(chunk, loaded, strict=True):
                    if audit is not None and isinstance(files, Exception):
                        audit.refused(  # a reference to the row, never a patient id
                            source.without_paths(str(files)),
                            study_uid=source.study_uid,
                            series_uid=(source.series_uid or "") if source.study_uid else "",
                            image_id=source.image_id or source.where or "command line",
                            model_sha256=contract.provenance.sha256,
                        )
                ok = [f.study for f in loaded if isinstance(f, StudyFiles)]
                answers = iter(predictor.predict_many(ok, concurrency, return_exceptions=True))
                chunk_results = [
                    (src, f if isinstance(f, Exception) else next(answers))
                    for src, f in zip(chunk, loaded, strict=True)
                ]
                outputs = [o for o in (reports, explain) if o is not None]
                for src, files, answer in zip(chunk, loaded, chunk_results, strict=True):
                    if not (isinstance(files, StudyFiles) and isinstance(answer[1], Prediction)):
                        continue
                    for output in outputs:
                        try:
                            output.make(src, files, answer[1])
                        except (ValueError, RuntimeError) as err:
                            report_failures.append((src, err))
                results += chunk_results
                progress.update(len(chunk), sum(isinstance(r, Exception) for _, r in chunk_results))
    if explain is not None:
        explain.finish()
    failed = [(src, r) for src, r in results if isinstance(r, Exception)]
    if out is not None:
        written = [(src, r) for src, r in results if isinstance(r, Prediction)]
        try:
            write_csv(out, contract.class_names, written, contract.provenance, overwrite, failed)
        except InvalidInput as err:  # the file appeared while predicting
            print(f"dmfn predict: {err.in_flags(OUT_FLAGS)}", file=sys.stderr)
            return EXIT_USAGE
        print(f"dmfn predict: wrote {out}", file=sys.stderr)
    if as_json:
        document = [
            {"image_path": str(src.image_path), "error": str(r)}
            if isinstance(r, Exception)
            else {"image_path": str(src.image_path), **r.to_dict()}
            for src, r in results
        ]
        print(json.dumps(document, indent=2))  # always a list, one entry per study
    elif out is None:
        for _, result in results:
            if not isinstance(result, Exception):
                print(format_prediction(result))
    for src, problem in failed:
        print(f"dmfn predict: {src.image_path}: {problem}", file=sys.stderr)
    for src, problem in report_failures:
        print(
            f"dmfn predict: {src.image_path}: an output was not written: {problem}", file=sys.stderr
        )
    if audit is not None and audit.failures:
        print(f"dmfn predict: audit: {audit.failures} line(s) could not be written to "
              f"{audit.path}", file=sys.stderr)  # fmt: skip
    if failed:
        usage = all(isinstance(e, ValueError) for _, e in failed) and len(results) == 1
        return EXIT_USAGE if usage else EXIT_FAILED
    return EXIT_FAILED if report_failures else EXIT_OK


def write_csv(
    path: Path,
    class_names: Sequence[str],
    results: Sequence[tuple[StudySource, Prediction]],
    provenance: Provenance,
    overwrite: bool = False,
    failed: Sequence[tuple[StudySource, Exception]] = (),
) -> Path:
    """The predictions CSV (:mod:`dmfn.contract.predictions`): one image row per study, then one
    patient row per patient (the mean of its images' probabilities), then one ``failed`` row per
    study of ``failed`` with its error (an evaluation reports it as an exclusion). A study
    without a patient id is its own patient. Written whole or not at all; an existing file is
    replaced only with ``overwrite`` (else :class:`~dmfn.contract.errors.InvalidInput` naming
    ``out``)."""
    images: list[PredictionRow] = []
    by_patient: dict[str, list[PredictionRow]] = {}
    for src, p in results:
        patient = src.patient_id or p.image_id or str(src.image_path)
        row = PredictionRow(
            "image", patient, p.malignant_prob, tuple(p.probs[c] for c in class_names),
            p.image_id, src.split, src.label, class_set=p.class_set, binary_set=p.binary_set,
            ood_score=p.ood_score if p.class_set else None,
            ood_flag=p.ood_flag if p.class_set else None,
        )  # fmt: skip
        images.append(row)
        by_patient.setdefault(patient, []).append(row)
    patients = [
        PredictionRow(
            "patient", pid, float(np.mean([r.malignant_prob for r in rows])),
            tuple(float(v) for v in np.mean([r.probs for r in rows], axis=0)), "",
            rows[0].split, rows[0].label,
        )
        for pid, rows in by_patient.items()
    ]  # fmt: skip
    failures = [
        FailedStudy(src.patient_id or src.image_id or str(src.image_path), src.image_id,
                    src.split, src.label, str(err))
        for src, err in failed
    ]  # fmt: skip
    return write_predictions(
        path, class_names, [*images, *patients], provenance, overwrite=overwrite,
        failures=failures,
    )  # fmt: skip
