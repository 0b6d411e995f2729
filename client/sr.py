"""A DICOM Structured Report of one prediction: a TID 1500 Measurement Report (highdicom).

:func:`build_prediction_sr` turns a :class:`~dmfn.client.sdk.Prediction` into a Comprehensive 3D
SR in the CT's study (a new series) that references the CT series and the lesion mask (a DICOM
SEG segment, or a mask file by name and sha256); :func:`write_prediction_sr` writes it whole or
not at all; :func:`read_prediction_sr` reads the numbers back with highdicom. What each content
item holds and how the classes are coded: docs/dicom.md.

The SR is made from the ``Prediction``'s numbers and provenance only (never its
``model_version``, which differs between the served and the in-process path), so both paths
give the same SR. Apart from the SOP and series instance UIDs and the content date and time,
which the caller may fix, it is deterministic.
"""

from __future__ import annotations

import datetime
import hashlib
import warnings
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import highdicom as hd
import pydicom
from highdicom.sr import CodedConcept
from highdicom.sr.utils import find_content_items, get_coded_name, get_coded_value
from pydicom.sr.codedict import codes
from pydicom.uid import SegmentationStorage, generate_uid
from pydicom.valuerep import DT

import dmfn
from dmfn.client.sdk import Prediction
from dmfn.contract import schema as S
from dmfn.contract.codes import (
    PRIVATE_SCHEME,
    PRIVATE_SCHEME_NAME,
    PRIVATE_SCHEME_ORGANIZATION,
    ConceptCode,
    class_code,
    load_class_codes,
)
from dmfn.contract.errors import InvalidInput
from dmfn.contract.outfile import check_new, replacing
from dmfn.contract.taxonomy import load_taxonomy

#: Series number of the SR series (a new series in the CT's study).
DEFAULT_SERIES_NUMBER = 9001
MANUFACTURER = "dmfn"
SERIES_DESCRIPTION = "dmfn lesion classification (research use, not a diagnosis)"
TRACKING_LABEL = "mediastinal lesion 1"
#: highdicom's warning about the form of a patient name it copies from the evidence.
PERSON_NAME_WARNING = r"The string .* is unlikely to represent the intended person name"


def _private(value: str, meaning: str) -> CodedConcept:
    return CodedConcept(value, PRIVATE_SCHEME, meaning)


# Concept names of dmfn's private scheme (docs/dicom.md lists them).
CLASS_PROBABILITY = _private("CLASSPROB", "Class probability")
PREDICTED_PROBABILITY = _private("PREDPROB", "Probability of the predicted class")
MANAGEMENT = _private("MGMT", "Management suggestion (dmfn local policy, not the paper's)")
MANAGEMENT_DETAIL = _private("MGMTDETAIL", "Management suggestion in words (dmfn local policy)")
DISCLAIMER = _private("DISCLAIMER", "Disclaimer")
MODEL_NAME = _private("MODELNAME", "Model name")
MODEL_SHA256 = _private("MODELSHA256", "Model checkpoint sha256")
MODEL_TRAINED = _private("MODELTRAINED", "Model training date")
MODEL_SYNTHETIC = _private("SYNTHETIC", "Model trained on synthetic data")
MODEL_TEMPERATURE = _private("TEMPERATURE", "Model calibration temperature")
SOFTWARE_VERSION = _private("SWVERSION", "dmfn software version")
MASK_FILE = _private("MASKFILE", "Lesion mask file")
CLASS_SET = _private("CLASSSET", "Conformal class set (classes, most probable first)")
BINARY_SET = _private("BINARYSET", "Conformal benign/malignant set")
SET_COVERAGE = _private("SETCOVERAGE", "Stated coverage of the conformal sets")
OOD_SCORE = _private("OODSCORE", "Out-of-distribution score (energy)")
OOD_FLAG = _private("OODFLAG", "Out of distribution (unlike the training studies)")
MASK_SHA256 = _private("MASKSHA256", "Lesion mask file sha256")
CLINICAL_ITEMS: dict[str, CodedConcept] = {
    "age": _private("AGE", "Patient age used (years)"),
    "age_source": _private("AGESRC", "Source of the patient age used"),
    "sex": _private("SEX", "Patient sex used"),
    "sex_source": _private("SEXSRC", "Source of the patient sex used"),
    "ctc": _private("CTC", "CTC value used"),
    "ctc_source": _private("CTCSRC", "Source of the CTC value used"),
    "compartment": _private("COMPARTMENT", "Mediastinal compartment used"),
    "compartment_source": _private("COMPSRC", "Source of the compartment used"),
}
#: TID 1500 row 12, the report-level "Qualitative Evaluations" container.
QUALITATIVE_EVALUATIONS = CodedConcept("C0034375", "UMLS", "Qualitative Evaluations")
#: Measurement name of each ``schema.MEASUREMENT_FIELDS`` entry; fields not here are private.
MEASUREMENT_CONCEPTS: dict[str, CodedConcept] = {
    "volume_mm3": CodedConcept.from_code(codes.SCT.Volume),
    "max_axial_area_mm2": CodedConcept.from_code(codes.SCT.Area),
    "long_axis_mm": CodedConcept.from_code(codes.SCT.LongAxis),
    "short_axis_mm": CodedConcept.from_code(codes.SCT.ShortAxis),
    "craniocaudal_mm": _private("CCEXTENT", "Craniocaudal extent"),
}
#: UCUM unit of each ``schema.MEASUREMENT_UNITS`` spelling.
UCUM_UNITS: dict[str, CodedConcept] = {
    "mm": CodedConcept.from_code(codes.UCUM.Millimeter),
    "mm^2": CodedConcept.from_code(codes.UCUM.SquareMillimeter),
    "mm^3": CodedConcept.from_code(codes.UCUM.CubicMillimeter),
}
NO_UNITS = CodedConcept.from_code(codes.UCUM.NoUnits)
FINDING = CodedConcept.from_code(codes.DCM.Finding)
CANCER_PROBABILITY = CodedConcept.from_code(codes.DCM.ProbabilityOfCancer)
YES = CodedConcept.from_code(codes.SCT.Yes)
NO = CodedConcept.from_code(codes.SCT.No)


def disclaimer(synthetic: bool | None) -> str:
    """The plain-language disclaimer the SR carries (depends on the model's training data)."""
    data = {
        True: "The model was trained on synthetic data only; its output says nothing about "
        "real patients. ",
        False: "",
        None: "It is not known whether the model was trained on real or synthetic data. ",
    }[synthetic]
    return (
        "Research use only. This report was produced by the dmfn software, not by a physician, "
        f"and is not a diagnosis. {data}Probabilities are the model's outputs, not the chance "
        "that the patient has the disease. The management suggestion follows this site's local "
        "dmfn policy, not the published paper and not a clinical guideline."
    )


@dataclass(frozen=True)
class MaskReference:
    """The lesion mask a prediction used: a segment of a DICOM SEG (``seg``, ``segment_number``)
    or a non-DICOM mask file (``file_name`` and the sha256 of its bytes).

    Use :meth:`from_seg` or :meth:`from_file`.
    """

    seg: pydicom.Dataset | None = None
    segment_number: int | None = None
    file_name: str = ""
    file_sha256: str = ""

    def __post_init__(self) -> None:
        if self.seg is not None:
            if self.file_name or self.file_sha256:
                raise InvalidInput("mask", "give a SEG or a mask file, not both")
            if self.seg.get("SOPClassUID") != SegmentationStorage:
                raise InvalidInput("mask", "the dataset given as SEG is not a Segmentation")
            numbers = [int(s.SegmentNumber) for s in self.seg.get("SegmentSequence", [])]
            if self.segment_number not in numbers:
                raise InvalidInput(
                    "segment_number",
                    f"must be one of the SEG's segments {numbers}, got {self.segment_number}",
                )
        elif not self.file_name or len(self.file_sha256) != 64:
            raise InvalidInput("mask", "needs a SEG, or a file name and its 64-hex-digit sha256")

    @classmethod
    def from_seg(cls, seg: pydicom.Dataset, segment_number: int) -> MaskReference:
        """Segment ``segment_number`` of the DICOM SEG ``seg``."""
        return cls(seg=seg, segment_number=int(segment_number))

    @classmethod
    def from_file(cls, path: str | Path) -> MaskReference:
        """The mask file at ``path`` (NIfTI, NRRD): its name and the sha256 of its bytes."""
        path = Path(path)
        digest = hashlib.sha256(path.read_bytes()).hexdigest()
        return cls(file_name=path.name, file_sha256=digest)


@dataclass(frozen=True)
class ClinicalUsed:
    """The clinical facts a prediction used, and where each came from (e.g. ``"command
    line"``, ``"DICOM header PatientAge"``, ``"manifest"``); None / empty where not used.

    Attributes:
        age_years: age in years.
        sex: the sex as given to the model (``F``, ``M``).
        ctc: CTC feature name -> value (the unit the model's feature names, e.g. pg/ml).
        compartment: mediastinal compartment (``anterior``, ``middle``, ``posterior``).
    """

    age_years: float | None = None
    age_source: str = ""
    sex: str | None = None
    sex_source: str = ""
    ctc: Mapping[str, float] = field(default_factory=dict)
    ctc_source: str = ""
    compartment: str | None = None
    compartment_source: str = ""

    def texts(self) -> list[tuple[str, str]]:
        """(item key of ``CLINICAL_ITEMS``, text) pairs, in a fixed order, for the SR."""
        out: list[tuple[str, str]] = []
        if self.age_years is not None:
            out += [("age", f"{float(self.age_years):g}"), ("age_source", self.age_source)]
        if self.sex is not None:
            out += [("sex", self.sex), ("sex_source", self.sex_source)]
        for name in sorted(self.ctc):
            out.append(("ctc", f"{name} = {float(self.ctc[name])!r}"))
        if self.ctc:
            out.append(("ctc_source", self.ctc_source))
        if self.compartment is not None:
            out += [
                ("compartment", self.compartment),
                ("compartment_source", self.compartment_source),
            ]
        return [(key, text or "not recorded") for key, text in out]


# --------------------------------------------------------------------------- evidence
def _is_seg(ds: pydicom.Dataset) -> bool:
    return bool(ds.get("SOPClassUID") == SegmentationStorage)


def _check_evidence(
    evidence: Sequence[pydicom.Dataset], mask: MaskReference
) -> list[pydicom.Dataset]:
    """The CT slices of ``evidence`` in a fixed order; InvalidInput naming ``evidence`` when
    there is none, several studies or several image series, or a SEG of another series."""
    images = [ds for ds in evidence if not _is_seg(ds)]
    if not images:
        raise InvalidInput("evidence", "holds no image: give the CT series' datasets")
    segs = [ds for ds in evidence if _is_seg(ds)]
    if mask.seg is not None:
        segs.append(mask.seg)
    studies = sorted({str(ds.StudyInstanceUID) for ds in [*images, *segs]})
    if len(studies) > 1:
        raise InvalidInput("evidence", f"spans {len(studies)} studies {studies}; give one study")
    series = sorted({str(ds.SeriesInstanceUID) for ds in images})
    if len(series) > 1:
        raise InvalidInput("evidence", f"holds {len(series)} image series {series}; give one")
    for seg in segs:
        referenced = {str(s.SeriesInstanceUID) for s in seg.get("ReferencedSeriesSequence", [])}
        if referenced != set(series):
            raise InvalidInput(
                "evidence",
                f"the SEG {seg.SOPInstanceUID} references series {sorted(referenced)}, "
                f"not the CT series {series[0]}",
            )
    return sorted(images, key=lambda ds: (int(ds.get("InstanceNumber") or 0), ds.SOPInstanceUID))


# --------------------------------------------------------------------------- content
def _code(code: ConceptCode) -> CodedConcept:
    return CodedConcept(code.value, code.scheme, code.meaning)


def _display_names(names: Sequence[str]) -> dict[str, str]:
    """Display names of the default taxonomy for the classes it knows."""
    known = {c.name: c.display_name for c in load_taxonomy().classes}
    return {n: known.get(n, n) for n in names}


def _class_codes(prediction: Prediction) -> dict[str, CodedConcept]:
    table = load_class_codes()
    shown = _display_names(list(prediction.probs))
    return {n: _code(class_code(n, shown[n], table)) for n in prediction.probs}


def _predicted(prediction: Prediction) -> str:
    """The most probable class (the first of equals, in logit order)."""
    names = list(prediction.probs)
    if not names:
        raise InvalidInput("prediction", "has no class probabilities")
    return max(names, key=lambda n: float(prediction.probs[n]))


def _probability(
    name: CodedConcept, value: float, finding: CodedConcept | None
) -> hd.sr.Measurement:
    """A probability (unit "no units"), with the class it belongs to as a Finding modifier."""
    measurement = hd.sr.Measurement(name=name, value=float(value), unit=NO_UNITS)
    if finding is not None:
        item = hd.sr.CodeContentItem(
            name=FINDING, value=finding,
            relationship_type=hd.sr.RelationshipTypeValues.HAS_CONCEPT_MOD,
        )  # fmt: skip
        content = measurement[0].get("ContentSequence") or hd.sr.ContentSequence()
        content.append(item)
        measurement[0].ContentSequence = content
    return measurement


def _measurements(prediction: Prediction, classes: Mapping[str, CodedConcept]) -> list[Any]:
    """The lesion's size (mm, mm^2, mm^3), every class probability, the predicted class's
    probability and the malignant probability."""
    out: list[Any] = []
    for name in S.MEASUREMENT_FIELDS:
        if name in prediction.measurements:
            concept = MEASUREMENT_CONCEPTS.get(name, _private(name.upper()[:16], name))
            unit = UCUM_UNITS.get(S.MEASUREMENT_UNITS.get(name, ""), NO_UNITS)
            out.append(hd.sr.Measurement(concept, float(prediction.measurements[name]), unit))
    predicted = _predicted(prediction)
    out.append(_probability(PREDICTED_PROBABILITY, prediction.probs[predicted], classes[predicted]))
    out.append(_probability(CANCER_PROBABILITY, prediction.malignant_prob, None))
    for name, prob in prediction.probs.items():
        out.append(_probability(CLASS_PROBABILITY, prob, classes[name]))
    return out


def _algorithm(prediction: Prediction) -> hd.sr.AlgorithmIdentification:
    p = prediction.provenance
    return hd.sr.AlgorithmIdentification(
        name=p.name or "dmfn", version=dmfn.__version__,
        parameters=[f"{k}={v}" for k, v in p.columns().items() if v],
        manufacturer=MANUFACTURER,
    )  # fmt: skip


def _referenced_segment(seg: pydicom.Dataset, segment_number: int) -> hd.sr.ReferencedSegment:
    """The reference to segment ``segment_number`` of ``seg`` and the CT images it was drawn
    on (its ReferencedSeriesSequence). Built here: highdicom's ``from_segmentation`` fails on
    a SEG whose segment identification is shared by all frames, as highdicom writes them."""
    (series,) = seg.ReferencedSeriesSequence
    images = [
        hd.sr.SourceImageForSegmentation(i.ReferencedSOPClassUID, i.ReferencedSOPInstanceUID)
        for i in series.get("ReferencedInstanceSequence", [])
    ]
    return hd.sr.ReferencedSegment(
        sop_class_uid=seg.SOPClassUID, sop_instance_uid=seg.SOPInstanceUID,
        segment_number=segment_number, source_images=images or None,
        source_series=None if images else hd.sr.SourceSeriesForSegmentation(
            series.SeriesInstanceUID
        ),
    )  # fmt: skip


def _group(
    prediction: Prediction,
    images: Sequence[pydicom.Dataset],
    mask: MaskReference,
    tracking_uid: str,
) -> Any:
    """The lesion's measurement group: TID 1411 on the SEG's segment, else TID 1501 on the CT."""
    classes = _class_codes(prediction)
    common: dict[str, Any] = {
        "tracking_identifier": hd.sr.TrackingIdentifier(
            uid=tracking_uid, identifier=TRACKING_LABEL
        ),
        "finding_type": classes[_predicted(prediction)],
        "algorithm_id": _algorithm(prediction),
        "measurements": _measurements(prediction, classes),
    }
    if mask.seg is not None and mask.segment_number is not None:
        segment = _referenced_segment(mask.seg, mask.segment_number)
        return hd.sr.VolumetricROIMeasurementsAndQualitativeEvaluations(
            referenced_segment=segment, **common
        )
    sources = [hd.sr.SourceImageForMeasurementGroup.from_source_image(ds) for ds in images]
    return hd.sr.MeasurementsAndQualitativeEvaluations(source_images=sources, **common)


def _text(name: CodedConcept, value: str) -> hd.sr.TextContentItem:
    return hd.sr.TextContentItem(
        name=name, value=value, relationship_type=hd.sr.RelationshipTypeValues.CONTAINS
    )


def _code_item(name: CodedConcept, value: CodedConcept) -> hd.sr.CodeContentItem:
    return hd.sr.CodeContentItem(
        name=name, value=value, relationship_type=hd.sr.RelationshipTypeValues.CONTAINS
    )


def _evaluations(
    prediction: Prediction, mask: MaskReference, clinical: ClinicalUsed | None
) -> hd.sr.ContainerContentItem:
    """TID 1500's report-level Qualitative Evaluations: management, model, clinical facts used,
    the mask file, the disclaimer."""
    p = prediction.provenance
    management = _private(prediction.management[:64] or "none", prediction.management or "none")
    items: list[Any] = [
        _code_item(MANAGEMENT, management),
        _text(MANAGEMENT_DETAIL, prediction.management_detail or prediction.management),
        _text(MODEL_NAME, p.name or "not recorded"),
        _text(MODEL_SHA256, p.sha256 or "not recorded"),
        _text(MODEL_TRAINED, p.trained or "not recorded"),
    ]
    if p.synthetic is None:
        items.append(_text(MODEL_SYNTHETIC, "not recorded"))
    else:
        items.append(_code_item(MODEL_SYNTHETIC, YES if p.synthetic else NO))
    temperature = "not recorded" if p.temperature is None else repr(float(p.temperature))
    items += [_text(MODEL_TEMPERATURE, temperature), _text(SOFTWARE_VERSION, dmfn.__version__)]
    items += _uncertainty_items(prediction)
    for key, text in (clinical or ClinicalUsed()).texts():
        items.append(_text(CLINICAL_ITEMS[key], text))
    if mask.seg is None:
        items += [_text(MASK_FILE, mask.file_name), _text(MASK_SHA256, mask.file_sha256)]
    items.append(_text(DISCLAIMER, disclaimer(p.synthetic)))
    container = hd.sr.ContainerContentItem(
        name=QUALITATIVE_EVALUATIONS, relationship_type=hd.sr.RelationshipTypeValues.CONTAINS
    )
    container.ContentSequence = hd.sr.ContentSequence(items)
    return container


def _uncertainty_items(prediction: Prediction) -> list[Any]:
    """The conformal sets, their coverage and the OOD flag (none for a model without them)."""
    if not prediction.class_set:
        return []
    coverage = "not recorded" if prediction.coverage is None else repr(float(prediction.coverage))
    return [
        _text(CLASS_SET, " | ".join(prediction.class_set)),
        _text(BINARY_SET, " | ".join(prediction.binary_set)),
        _text(SET_COVERAGE, coverage),
        _text(OOD_SCORE, f"{prediction.ood_score:.6g}"),
        _code_item(OOD_FLAG, YES if prediction.ood_flag else NO),
    ]


def _coding_scheme_item() -> pydicom.Dataset:
    item = pydicom.Dataset()
    item.CodingSchemeDesignator = PRIVATE_SCHEME
    item.CodingSchemeName = PRIVATE_SCHEME_NAME
    item.CodingSchemeResponsibleOrganization = PRIVATE_SCHEME_ORGANIZATION
    return item


# --------------------------------------------------------------------------- public API
def build_prediction_sr(
    prediction: Prediction,
    evidence: Sequence[pydicom.Dataset],
    *,
    mask: MaskReference,
    clinical_used: ClinicalUsed | None = None,
    series_number: int = DEFAULT_SERIES_NUMBER,
    series_instance_uid: str | None = None,
    sop_instance_uid: str | None = None,
    content_datetime: datetime.datetime | None = None,
) -> hd.sr.Comprehensive3DSR:
    """The SR of ``prediction`` (docs/dicom.md), in the study of ``evidence``.

    Args:
        evidence: the CT series' slice datasets (headers suffice: read with
            ``stop_before_pixels=True``), all slices, plus the SEG when the mask is one.
        mask: the lesion mask the prediction used.
        clinical_used: the clinical facts used and their sources (None: not recorded).
        series_instance_uid, sop_instance_uid: the SR's UIDs (None: new ones).
        content_datetime: the SR's content and instance-creation date and time (None: now).

    Raises:
        InvalidInput: naming ``evidence`` for no images, several studies or image series, or a
            SEG of another series; naming ``prediction`` for one without probabilities.
    """
    images = _check_evidence(evidence, mask)
    sop_uid = sop_instance_uid or generate_uid()
    when = content_datetime or datetime.datetime.now()
    group = _group(prediction, images, mask, generate_uid(entropy_srcs=[sop_uid, TRACKING_LABEL]))
    p = prediction.provenance
    device = hd.sr.DeviceObserverIdentifyingAttributes(
        uid=generate_uid(entropy_srcs=[MANUFACTURER, p.name, p.sha256]),
        name=p.name or "dmfn", manufacturer_name=MANUFACTURER, model_name=p.name or "dmfn",
    )  # fmt: skip
    context = hd.sr.ObservationContext(
        observer_device_context=hd.sr.ObserverContext(
            observer_type=codes.cid270.Device, observer_identifying_attributes=device
        )
    )
    report = hd.sr.MeasurementReport(
        observation_context=context,
        procedure_reported=codes.SCT.ImagingProcedure,
        imaging_measurements=[group],
    )
    report[0].ContentSequence.append(_evaluations(prediction, mask, clinical_used))
    all_evidence = [*images, *([mask.seg] if mask.seg is not None else [])]
    with warnings.catch_warnings():
        # The patient's name is copied from the CT as it is; highdicom's advice on its form
        # (e.g. for "ANON") concerns the source, not this report.
        warnings.filterwarnings("ignore", PERSON_NAME_WARNING, UserWarning)
        sr = hd.sr.Comprehensive3DSR(
            evidence=all_evidence, content=report[0],
            series_instance_uid=series_instance_uid or generate_uid(),
            series_number=series_number, sop_instance_uid=sop_uid, instance_number=1,
            manufacturer=MANUFACTURER, series_description=SERIES_DESCRIPTION,
            content_date=when.date(), content_time=when.time(),
        )  # fmt: skip
    sr.InstanceCreationDate = sr.ContentDate
    sr.InstanceCreationTime = sr.ContentTime
    for equipment in sr.get("ContributingEquipmentSequence", []):  # highdicom itself, at "now"
        equipment.ContributionDateTime = DT(when)
    sr.SoftwareVersions = dmfn.__version__
    sr.CodingSchemeIdentificationSequence = [_coding_scheme_item()]
    return sr


def write_prediction_sr(
    prediction: Prediction,
    evidence: Sequence[pydicom.Dataset],
    path: str | Path,
    *,
    mask: MaskReference,
    clinical_used: ClinicalUsed | None = None,
    overwrite: bool = False,
    **options: Any,
) -> Path:
    """:func:`build_prediction_sr` written to ``path``, whole or not at all; an existing
    ``path`` is refused (InvalidInput naming ``out``) unless ``overwrite``. ``options`` are
    :func:`build_prediction_sr`'s keyword arguments (UIDs, series number, date)."""
    check_new(path, overwrite)  # before building: a refusal costs nothing
    sr = build_prediction_sr(
        prediction, evidence, mask=mask, clinical_used=clinical_used, **options
    )
    return save_sr(sr, path, overwrite=overwrite)


def save_sr(sr: pydicom.Dataset, path: str | Path, *, overwrite: bool = False) -> Path:
    """Write the SR ``sr`` (:func:`build_prediction_sr`) to ``path``, whole or not at all; an
    existing ``path`` is refused (InvalidInput naming ``out``) unless ``overwrite``."""
    target = check_new(path, overwrite)
    target.parent.mkdir(parents=True, exist_ok=True)
    with replacing(target, overwrite=overwrite, binary=True) as handle:
        pydicom.dcmwrite(handle, sr, enforce_file_format=True)
    return target


# --------------------------------------------------------------------------- reading back
def _finding_of(measurement: hd.sr.Measurement) -> str:
    for item in measurement[0].get("ContentSequence", []):
        if get_coded_name(item) == FINDING:
            value = get_coded_value(item)
            return str(value.value)
    return ""


def _report_evaluations(sr: pydicom.Dataset) -> dict[str, Any]:
    """Concept code value -> value (text, or the coded value) of the Qualitative Evaluations."""
    out: dict[str, Any] = {}
    for container in find_content_items(sr, name=QUALITATIVE_EVALUATIONS):
        for item in container.ContentSequence:
            name = get_coded_name(item)
            if item.ValueType == "TEXT":
                out[name.value] = str(item.TextValue)
            elif item.ValueType == "CODE":
                out[name.value] = get_coded_value(item)
    return out


def read_prediction_sr(path: str | Path) -> dict[str, Any]:
    """The numbers of an SR written by :func:`write_prediction_sr`, read back with highdicom.

    Returns a dict: ``probs`` (class name -> probability; a SNOMED-coded class is named
    through ``contract/data/class_codes.csv``), ``predicted`` (class name), ``predicted_prob``, ``malignant_prob``, ``management``,
    ``management_detail``, ``measurements`` (``schema.MEASUREMENT_FIELDS`` name -> value in mm,
    mm^2, mm^3), ``model_sha256``, ``model_synthetic`` (True, False or None), ``disclaimer``,
    ``class_set`` and ``binary_set`` (tuples of names; empty for a model without them) and
    ``ood_flag`` (True, False or None).
    """
    sr = hd.sr.srread(path)
    report = hd.sr.MeasurementReport.from_sequence(sr.content)
    groups = [
        *report.get_volumetric_roi_measurement_groups(),
        *report.get_image_measurement_groups(),
    ]
    if len(groups) != 1:
        raise InvalidInput("sr", f"{path}: expected one measurement group, found {len(groups)}")
    by_code = _code_to_name()
    probs: dict[str, float] = {}
    out: dict[str, Any] = {"measurements": {}}
    concept_field = {(c.scheme_designator, c.value): f for f, c in MEASUREMENT_CONCEPTS.items()}
    for m in groups[0].get_measurements():
        key = (m.name.scheme_designator, m.name.value)
        if m.name == CLASS_PROBABILITY:
            probs[by_code.get(_finding_of(m), _finding_of(m))] = float(m.value)
        elif m.name == PREDICTED_PROBABILITY:
            out["predicted_prob"] = float(m.value)
        elif m.name == CANCER_PROBABILITY:
            out["malignant_prob"] = float(m.value)
        elif key in concept_field:
            out["measurements"][concept_field[key]] = float(m.value)
    finding = groups[0].finding_type
    evaluations = _report_evaluations(sr)
    synthetic = evaluations.get(MODEL_SYNTHETIC.value)
    out.update(
        probs=probs,
        predicted=by_code.get(str(finding.value), str(finding.value)) if finding else "",
        management=str(evaluations[MANAGEMENT.value].meaning),
        management_detail=evaluations.get(MANAGEMENT_DETAIL.value, ""),
        model_sha256=evaluations.get(MODEL_SHA256.value, ""),
        model_synthetic=None if not isinstance(synthetic, CodedConcept) else synthetic == YES,
        disclaimer=evaluations.get(DISCLAIMER.value, ""),
        class_set=tuple(_split(evaluations.get(CLASS_SET.value, ""))),
        binary_set=tuple(_split(evaluations.get(BINARY_SET.value, ""))),
        ood_flag=None
        if not isinstance(evaluations.get(OOD_FLAG.value), CodedConcept)
        else evaluations[OOD_FLAG.value] == YES,
    )
    return out


def _split(text: str) -> list[str]:
    return [part.strip() for part in text.split("|") if part.strip()]


def _code_to_name() -> dict[str, str]:
    """SNOMED code value -> class name of the default class-code file."""
    return {c.value: name for name, c in load_class_codes().items()}


__all__ = [
    "DEFAULT_SERIES_NUMBER",
    "ClinicalUsed",
    "MaskReference",
    "build_prediction_sr",
    "disclaimer",
    "read_prediction_sr",
    "save_sr",
    "write_prediction_sr",
]
