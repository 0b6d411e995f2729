"""The DICOM SR of each prediction of ``dmfn predict``: written to a file (``--sr``) and/or stored
into the study on a PACS (``--store``).

An SR is made from the same :class:`~dmfn.client.sdk.Prediction` whichever path predicted it
(:func:`dmfn.client.sr.build_prediction_sr`), in the CT's study, referencing the CT series and
the mask (a DICOM SEG segment, or a mask file by name and sha256).
"""

from __future__ import annotations

import re
import sys
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING

import pydicom

from dmfn.client.sdk import Prediction
from dmfn.client.sr import ClinicalUsed, MaskReference, build_prediction_sr, save_sr
from dmfn.client.study_files import StudyFiles
from dmfn.contract.errors import InvalidInput
from dmfn.contract.outfile import check_new
from dmfn.contract.study import Study

if TYPE_CHECKING:
    from .predict import StudySource

#: API argument -> flag, for the errors about an SR file.
SR_FLAGS = {"sr": "--sr", "out": "--sr", "overwrite": "--overwrite"}
#: Characters kept in a report's file name (the rest become "_").
_SAFE = re.compile(r"[^A-Za-z0-9._-]")


def safe_name(text: str) -> str:
    """``text`` as a file-name stem: letters, digits and ``._-`` (others become ``_``), not
    starting with a dot."""
    return _SAFE.sub("_", text).lstrip(".") or "study"


def mask_reference(files: StudyFiles, mask_path: Path) -> MaskReference:
    """What an SR says of the mask of ``files``: the SEG's segment that was read, or the mask
    file's name and sha256 (``mask_path``)."""
    if files.mask_dataset is not None and files.mask_segment is not None:
        return MaskReference.from_seg(files.mask_dataset, files.mask_segment)
    return MaskReference.from_file(mask_path)


def clinical_used(
    study: Study, age_source: str, sex_source: str, other_source: str
) -> ClinicalUsed:
    """The clinical facts ``study`` was predicted with and their sources (the CTC values and
    the compartment come from ``other_source``), for the SR."""
    clinical = study.clinical
    return ClinicalUsed(
        age_years=None if clinical is None else clinical.age_years,
        age_source=age_source,
        sex=None if clinical is None else clinical.sex,
        sex_source=sex_source,
        ctc=dict(study.ctc),
        ctc_source=other_source,
        compartment=None if clinical is None else clinical.location,
        compartment_source=other_source,
    )


@dataclass
class Reports:
    """Where the SRs go: ``sr`` (a file for one study, a folder when ``folder``), and/or
    ``store`` (a PACS's store call). Files that exist are refused unless ``overwrite``."""

    sr: Path | None
    overwrite: bool = False
    folder: bool = False
    store: Callable[[pydicom.Dataset], None] | None = None
    written: list[Path] = field(default_factory=list)

    def path_for(self, source: StudySource) -> Path | None:
        """The SR file of ``source``: ``sr`` itself, or ``<sr>/<image id>_sr.dcm``."""
        if self.sr is None:
            return None
        if not self.folder:
            return self.sr
        name = source.image_id or source.image_path.name
        return self.sr / f"{safe_name(name)}_sr.dcm"

    def check(self, sources: Sequence[StudySource]) -> None:
        """Before any work: every study is a DICOM series (an SR belongs to its study) and no
        SR file would be replaced without ``overwrite``; ValueError naming --sr otherwise."""
        for source in sources:
            if not source.image_path.is_dir():
                where = f"{source.where}: " if source.where else ""
                raise ValueError(
                    f"{where}--sr: a DICOM SR belongs to the study of a DICOM CT series, but "
                    f"{source.image_path} is a file"
                )
            path = self.path_for(source)
            if path is not None:
                try:
                    check_new(path, self.overwrite, "sr")
                except InvalidInput as err:
                    raise ValueError(err.in_flags(SR_FLAGS)) from None
        names = [self.path_for(s) for s in sources]
        if self.folder and len(set(names)) != len(names):
            raise ValueError("--sr: two studies of the manifest have the same image_id")

    def make(self, source: StudySource, files: StudyFiles, prediction: Prediction) -> None:
        """Build the SR of ``prediction`` for ``source`` (its files ``files``), write it and/or
        store it; one line on stderr says where it went. ValueError or RuntimeError (the PACS)
        when it cannot be made or stored."""
        if files.series is None:
            raise ValueError("--sr: the image is not a DICOM series")
        mask = mask_reference(files, source.mask_path)
        ctc_source = "manifest" if source.where else "command line"
        used = clinical_used(files.study, source.age_source, source.sex_source, ctc_source)
        dataset = build_prediction_sr(
            prediction, files.series.headers, mask=mask, clinical_used=used
        )
        path = self.path_for(source)
        if path is not None:
            try:
                save_sr(dataset, path, overwrite=self.overwrite)
            except InvalidInput as err:  # the file appeared while predicting
                raise ValueError(err.in_flags(SR_FLAGS)) from None
            self.written.append(path)
            print(f"dmfn predict: wrote the DICOM SR {path}", file=sys.stderr)
        if self.store is not None:
            self.store(dataset)
            print(
                f"dmfn predict: stored the DICOM SR {dataset.SOPInstanceUID} into study "
                f"{dataset.StudyInstanceUID}",
                file=sys.stderr,
            )
