"""A study from a PACS over DICOMweb (QIDO-RS, WADO-RS), and a report back into it (STOW-RS).

:class:`Pacs` finds the study's CT series and its DICOM SEG, chooses the CT series by the
documented rule (:mod:`dmfn.client.series_choice`) and the SEG that references it, and downloads
both into a private temporary folder, where the same readers as for local files check and load
them (:func:`dmfn.client.study_files.read_study_files`). Nothing is sent to the PACS until
:meth:`Pacs.store`, which the caller runs only after a prediction succeeded.

Uses the field's client, dicomweb-client. Authentication: a bearer token read from a file
(never from the command line), and a CA certificate for an https PACS.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pydicom

from dmfn.client.io.errors import one_line
from dmfn.client.series_choice import SeriesCandidate, SeriesChoice, choose_series

log = logging.getLogger(__name__)

#: DICOM JSON tag of Modality, SeriesInstanceUID (QIDO-RS results are keyed by tag).
_MODALITY, _SERIES_UID = "00080060", "0020000E"
#: Modalities a study's CT image series and lesion masks have.
CT, SEG = "CT", "SEG"


class PacsError(RuntimeError):
    """The PACS could not be reached or answered with an error; the message says which call."""


class PacsStudyError(ValueError):
    """The study on the PACS cannot be predicted as it is (no CT, no SEG of the chosen series,
    several CT series and no rule that decides); nothing is written to the PACS."""


@dataclass(frozen=True)
class PacsStudy:
    """A study downloaded from the PACS: the chosen CT series' files and its SEG's file."""

    study_uid: str
    choice: SeriesChoice
    ct_folder: Path
    seg_path: Path
    seg_series_uid: str

    @property
    def series_uid(self) -> str:
        return self.choice.chosen.uid


def _header(metadata: dict[str, Any]) -> pydicom.Dataset:
    """A header from one instance's DICOM JSON (bulk data such as pixels left out)."""
    return pydicom.Dataset.from_json(metadata, bulk_data_uri_handler=lambda *_: b"")


def _value(item: dict[str, Any], tag: str) -> str:
    values = item.get(tag, {}).get("Value") or [""]
    return str(values[0])


def _referenced_series(header: pydicom.Dataset) -> set[str]:
    """The SeriesInstanceUIDs a SEG header references (ReferencedSeriesSequence)."""
    return {
        str(item.get("SeriesInstanceUID", ""))
        for item in header.get("ReferencedSeriesSequence", []) or []
    }


class Pacs:
    """A DICOMweb endpoint (``url``: the DICOMweb root, e.g. ``http://127.0.0.1:8042/dicom-web``).

    ``token`` is a bearer token (read it from a file: :func:`dmfn.client.credentials.read_key_file`),
    ``ca_cert`` a PEM bundle for https, ``timeout`` seconds per call.
    """

    def __init__(
        self,
        url: str,
        *,
        token: str | None = None,
        ca_cert: str | Path | None = None,
        timeout: float = 60.0,
    ) -> None:
        import requests
        from dicomweb_client.api import DICOMwebClient

        if not url.startswith(("http://", "https://")):
            raise ValueError(f"--dicomweb: must be an http(s):// URL, got {url!r}")
        session = requests.Session()
        if ca_cert is not None:
            session.verify = str(ca_cert)
        headers = {"Authorization": f"Bearer {token}"} if token else None
        self.url = url.rstrip("/")
        self._client = DICOMwebClient(self.url, session=session, headers=headers, timeout=timeout)

    def _call(self, what: str, function: Callable[..., Any], *args: Any, **kwargs: Any) -> Any:
        import requests

        try:
            return function(*args, **kwargs)
        except requests.HTTPError as err:
            status = err.response.status_code if err.response is not None else "?"
            raise PacsError(f"DICOMweb {self.url}: {what} failed with HTTP {status}") from None
        except requests.RequestException as err:
            raise PacsError(f"DICOMweb {self.url}: {what}: {one_line(err)}") from None

    def _series(self, study_uid: str) -> list[tuple[str, str]]:
        """(SeriesInstanceUID, Modality) of every series of the study."""
        found = self._call(
            f"searching the series of study {study_uid}",
            self._client.search_for_series,
            study_instance_uid=study_uid,
        )
        return [(_value(s, _SERIES_UID), _value(s, _MODALITY)) for s in found or []]

    def _headers(self, study_uid: str, series_uid: str) -> list[pydicom.Dataset]:
        metadata = self._call(
            f"reading the metadata of series {series_uid}",
            self._client.retrieve_series_metadata,
            study_uid,
            series_uid,
        )
        return [_header(m) for m in metadata or []]

    def fetch(
        self,
        study_uid: str,
        into: Path,
        *,
        series_uid: str | None = None,
        seg_series_uid: str | None = None,
    ) -> PacsStudy:
        """Download study ``study_uid``'s CT series (``series_uid``, else the rule's choice) and
        the SEG referencing it (``seg_series_uid``, needed only when several do) into folder
        ``into`` (``CT-<series uid>/`` and ``SEG-<series uid>/``, so that an error about a
        downloaded file names the series).

        Raises PacsStudyError for a study that cannot be predicted as it is, PacsError when the
        PACS fails.
        """
        where = f"study {study_uid} on {self.url}"
        series = self._series(study_uid)
        if not series:
            raise PacsStudyError(f"{where}: not found (no series)")
        modalities = sorted({m for _, m in series})
        ct_uids = [uid for uid, modality in series if modality == CT]
        if not ct_uids:
            raise PacsStudyError(
                f"{where} has no CT series (its series' modalities: {', '.join(modalities)})"
            )
        ct_headers = {uid: self._headers(study_uid, uid) for uid in ct_uids}
        candidates = [
            SeriesCandidate.of(headers[0], len(headers))
            for headers in ct_headers.values()
            if headers
        ]
        try:
            choice = choose_series(candidates, series_uid, where)
        except ValueError as err:
            raise PacsStudyError(str(err)) from None
        seg_uid = self._choose_seg(study_uid, series, choice.chosen.uid, seg_series_uid, where)
        ct_folder = into / f"CT-{choice.chosen.uid}"
        ct_folder.mkdir(parents=True)
        self._download(study_uid, choice.chosen.uid, ct_folder)
        seg_folder = into / f"SEG-{seg_uid}"
        seg_folder.mkdir()
        seg_files = self._download(study_uid, seg_uid, seg_folder)
        if len(seg_files) != 1:
            raise PacsStudyError(
                f"{where}: SEG series {seg_uid} holds {len(seg_files)} instances; give the one "
                "to use as its own series (--seg-uid)"
            )
        return PacsStudy(study_uid, choice, ct_folder, seg_files[0], seg_uid)

    def _choose_seg(
        self,
        study_uid: str,
        series: Sequence[tuple[str, str]],
        ct_uid: str,
        wanted: str | None,
        where: str,
    ) -> str:
        seg_uids = [uid for uid, modality in series if modality == SEG]
        if not seg_uids:
            raise PacsStudyError(f"{where} has no DICOM SEG: segment the lesion first")
        if wanted is not None and wanted not in seg_uids:
            raise PacsStudyError(
                f"--seg-uid {wanted} is not a SEG series of {where} (its SEG series: "
                f"{', '.join(seg_uids)})"
            )
        references = {
            uid: set().union(*(_referenced_series(h) for h in self._headers(study_uid, uid)))
            for uid in ([wanted] if wanted else seg_uids)
        }
        matching = [uid for uid, refs in references.items() if ct_uid in refs]
        if not matching:
            others = "; ".join(
                f"SEG {uid} references {', '.join(sorted(refs)) or 'no series'}"
                for uid, refs in references.items()
            )
            raise PacsStudyError(
                f"{where}: no SEG references the chosen CT series {ct_uid} ({others})"
            )
        if len(matching) > 1:
            raise PacsStudyError(
                f"{where}: {len(matching)} SEG series reference CT series {ct_uid}; give "
                f"--seg-uid, one of: {', '.join(matching)}"
            )
        return matching[0]

    def _download(self, study_uid: str, series_uid: str, folder: Path) -> list[Path]:
        datasets = self._call(
            f"retrieving series {series_uid}",
            self._client.retrieve_series,
            study_uid,
            series_uid,
        )
        paths = []
        for k, ds in enumerate(datasets or []):
            path = folder / f"{k:05d}.dcm"
            ds.save_as(path, enforce_file_format=True)
            paths.append(path)
        log.info("retrieved %d instances of series %s", len(paths), series_uid)
        return paths

    def store(self, dataset: pydicom.Dataset) -> None:
        """STOW-RS ``dataset`` into its study; PacsError unless the PACS stored it."""
        study_uid = str(dataset.StudyInstanceUID)
        answer = self._call(
            f"storing {dataset.get('Modality', 'an instance')} into study {study_uid}",
            self._client.store_instances,
            [dataset],
            study_instance_uid=study_uid,
        )
        failed = answer.get("FailedSOPSequence") if answer is not None else None
        if failed:
            reasons = ", ".join(str(item.get("FailureReason", "?")) for item in failed)
            raise PacsError(
                f"DICOMweb {self.url}: the PACS refused the report (failure reason {reasons})"
            )
