"""``dmfn predict --dicomweb URL --study-uid UID``: a study from a PACS to a prediction, and its
DICOM SR back into the study with ``--store``.

The CT series and the SEG are downloaded into a private temporary folder (mode 0700, removed
afterwards) and read by the same readers as local files, so a study from a PACS is checked
exactly like one on disk. The PACS is written to only after a prediction succeeded, and only with
``store``: a refused study leaves the PACS as it was.
"""

from __future__ import annotations

import sys
import tempfile
from dataclasses import dataclass
from pathlib import Path

import pydicom

from dmfn.client.dicomweb import Pacs, PacsError, PacsStudyError
from dmfn.client.header_facts import patient_facts
from dmfn.contract.audit import AuditLog

from .predict import EXIT_FAILED, EXIT_USAGE, Predictor, StudyOutput, StudySource, run
from .reports import Reports


@dataclass(frozen=True)
class PacsRequest:
    """What to fetch and with which non-image facts (``age_years``/``sex`` None: the header's)."""

    study_uid: str
    ctc: tuple[str, ...]
    location: str
    age_years: str | None = None
    sex: str | None = None
    series_uid: str | None = None
    seg_series_uid: str | None = None
    segment: str | None = None


def run_pacs(
    predictor: Predictor,
    pacs: Pacs,
    request: PacsRequest,
    *,
    sr: Path | None = None,
    store: bool = False,
    overwrite: bool = False,
    out: Path | None = None,
    as_json: bool = False,
    audit: AuditLog | None = None,
    explain: StudyOutput | None = None,
) -> int:
    """Fetch ``request``'s study from ``pacs``, predict it with ``predictor``, write its SR to
    ``sr`` and/or store it into the study (``store``); print what was chosen and why. Returns
    the exit status (2 for a study that cannot be predicted as it is, 1 when the PACS fails).
    A study refused here appends a ``refused`` line to ``audit``."""

    def refused(err: Exception) -> None:
        if audit is not None:
            audit.refused(err, study_uid=request.study_uid, series_uid=request.series_uid or "",
                          model_sha256=predictor.contract.provenance.sha256)  # fmt: skip

    with tempfile.TemporaryDirectory(prefix="dmfn-pacs-") as folder:
        try:
            fetched = pacs.fetch(
                request.study_uid,
                Path(folder),
                series_uid=request.series_uid,
                seg_series_uid=request.seg_series_uid,
            )
        except PacsStudyError as err:
            refused(err)
            print(f"dmfn predict: {err}", file=sys.stderr)
            return EXIT_USAGE
        except PacsError as err:
            refused(err)
            print(f"dmfn predict: {err}", file=sys.stderr)
            return EXIT_FAILED
        print(f"dmfn predict: {fetched.choice.explain()}", file=sys.stderr)
        print(f"dmfn predict: SEG series {fetched.seg_series_uid}", file=sys.stderr)
        try:
            header = _first_header(fetched.ct_folder)
            age, sex = patient_facts(header, request.age_years, request.sex)
        except ValueError as err:
            refused(err)
            print(f"dmfn predict: {err}", file=sys.stderr)
            return EXIT_USAGE
        print(f"dmfn predict: age {age} years, sex {sex}", file=sys.stderr)
        source = StudySource(
            fetched.ct_folder,
            fetched.seg_path,
            request.segment,
            request.ctc,
            age.value,
            sex.value,
            request.location,
            series_uid=fetched.series_uid,
            age_source=age.source,
            sex_source=sex.source,
            study_uid=request.study_uid,
        )
        reports = None
        if sr is not None or store:
            reports = Reports(sr, overwrite=overwrite, store=pacs.store if store else None)
        return run(predictor, study=source, out=out, overwrite=overwrite, as_json=as_json,
                   reports=reports, audit=audit, explain=explain)  # fmt: skip


def _first_header(folder: Path) -> pydicom.Dataset:
    """The header of one CT file of ``folder`` (any: the patient and study modules are
    shared)."""
    first = min(folder.iterdir())
    return pydicom.dcmread(first, stop_before_pixels=True)
