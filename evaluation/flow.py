"""The flow of patients and images into the analysis (STARD 2015, item 19): how many the
manifest holds, how many were predicted, which were excluded and why, and how many were
analysed. A paper must report its exclusions; a failed study that silently leaves the table
would bias every number after it."""

from __future__ import annotations

from collections import Counter
from collections.abc import Sequence

from dmfn.client.manifest import Manifest
from dmfn.contract.predictions import PredictionTable

#: Why an image of the manifest is missing from the analysis when the predictions file does not
#: record it at all (neither predicted nor failed).
NOT_IN_FILE = "not in the predictions file"
#: At most this many excluded studies are listed one by one (all are counted).
LISTED = 50


def patient_flow(
    table: PredictionTable,
    analysed: Sequence[str],
    split: str | None,
    manifest: Manifest | None = None,
) -> dict[str, object]:
    """The flow of the evaluated ``split`` (None: every row) from ``manifest`` (when given) and
    the predictions ``table`` (its predicted rows and its failed studies) to the ``analysed``
    patients. Counts images (studies) and patients; each exclusion keeps its reason."""

    def in_split(row_split: str) -> bool:
        return split is None or not row_split or row_split == split

    rows_in = [r for r in table.rows if in_split(r.split)]
    # image rows are the studies; a file of patient rows only counts one study per patient
    image_rows = [r for r in rows_in if r.level == "image"] or rows_in
    predicted_images = {(r.patient_id, r.image_id) for r in image_rows}
    predicted_patients = {r.patient_id for r in rows_in}
    failed = [f for f in table.failures if in_split(f.split)]
    excluded: list[dict[str, str]] = [
        {"patient_id": f.patient_id, "image_id": f.image_id, "reason": f.error or "failed"}
        for f in failed
    ]
    out: dict[str, object] = {"split": split}
    warnings: list[str] = []
    analysed_set = set(analysed)
    if manifest is not None:
        rows = [r for r in manifest.rows if in_split(r.split)]
        in_manifest = {"patients": len({r.patient_id for r in rows}), "images": len(rows)}
        out["manifest"] = in_manifest
        if in_manifest["patients"] != len(analysed_set):
            warnings.append(
                f"the manifest holds {in_manifest['patients']} patient(s) of this split; "
                f"{len(analysed_set)} were analysed"
            )
        recorded = predicted_images | {(f.patient_id, f.image_id) for f in failed}
        recorded_patients = {pid for pid, _ in recorded}
        image_level = any(r.level == "image" for r in rows_in)
        for r in rows:
            missing = (
                (r.patient_id, r.image_id) not in recorded
                if image_level
                else r.patient_id not in recorded_patients
            )
            if missing:
                excluded.append(
                    {"patient_id": r.patient_id, "image_id": r.image_id, "reason": NOT_IN_FILE}
                )
        known = {r.patient_id for r in rows}
        strangers = sorted(predicted_patients - known)
        if strangers:
            warnings.append(
                f"{len(strangers)} predicted patient(s) of the evaluated split are not in the "
                f"manifest (e.g. {strangers[:3]})"
            )
    lost = sorted(predicted_patients - analysed_set)
    if lost:
        warnings.append(f"{len(lost)} predicted patient(s) were not analysed (e.g. {lost[:3]})")
    excluded_patients = sorted({e["patient_id"] for e in excluded} - predicted_patients)
    note = ""
    if excluded and not excluded_patients:
        note = "every excluded image's patient was analysed from its other images"
    out.update({
        "predicted": {"patients": len(predicted_patients), "images": len(predicted_images)},
        "excluded": {
            "images": len(excluded),
            "patients_without_any_prediction": len(excluded_patients),
            "reasons": dict(Counter(e["reason"] for e in excluded).most_common()),
            "listed": excluded[:LISTED],
            "note": note,
        },
        "analysed": {"patients": len(analysed_set)},
        "warnings": warnings,
    })  # fmt: skip
    return out
