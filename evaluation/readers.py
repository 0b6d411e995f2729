"""The reader study: physicians' calls on the same patients as the model, laid out like the
paper's Table 3, and the model against each group of readers.

``readers.csv``: one row per reader and patient, columns ``reader_id``, ``group`` (``resident``,
``attending``, ``chief``, or your own), ``patient_id``, ``call`` (a class of the taxonomy, or
``benign`` / ``malignant``), optional ``score`` (the reader's confidence that the lesion is
malignant, any scale, larger = more likely), optional ``session`` (e.g. ``ct_only`` /
``ct_plus_ctc``) and optional ``simulated`` (``true`` for readers made by ``dmfn synth``).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from dmfn.contract.csvfile import csv_rows
from dmfn.contract.errors import InvalidInput
from dmfn.contract.management import UNCERTAIN, ManagementPolicy, load_management
from dmfn.contract.taxonomy import GROUPS, Taxonomy

from .analysis import SystemScores
from .proportions import diagnostic_from_calls, mcnemar, proportion_ci
from .roc import auc_delong, delong_paired

READER_COLUMNS: tuple[str, ...] = ("reader_id", "group", "patient_id", "call")


@dataclass(frozen=True)
class ReaderCall:
    reader_id: str
    group: str
    patient_id: str
    call: str
    called_malignant: bool
    called_class: int | None
    score: float | None
    session: str
    simulated: bool


def read_readers(path: str | Path, taxonomy: Taxonomy) -> list[ReaderCall]:
    """Read ``readers.csv``; InvalidInput naming the file, line and column of a bad row."""
    path = Path(path)
    calls = []
    with csv_rows(path, "readers", READER_COLUMNS) as (columns, rows):
        for line, row in rows:
            where = f"{path} line {line}"
            values = {c: (row.get(c) or "").strip() for c in columns}
            for c in READER_COLUMNS:
                if not values[c]:
                    raise InvalidInput(c, f"{where}: must not be empty")
            call = values["call"]
            if call in GROUPS:
                malignant, index = call == "malignant", None
            else:
                try:
                    index = taxonomy.index(call)
                except ValueError:
                    raise InvalidInput(
                        "call", f"{where}: unknown class {call!r} (a class or benign/malignant)"
                    ) from None
                malignant = bool(taxonomy.malignant_mask[index])
            score = None
            if values.get("score"):
                try:
                    score = float(values["score"])
                except ValueError:
                    raise InvalidInput("score", f"{where}: must be a number") from None
                if not np.isfinite(score):
                    raise InvalidInput("score", f"{where}: must be finite, got {score}")
            calls.append(
                ReaderCall(
                    values["reader_id"], values["group"], values["patient_id"], call, malignant,
                    index, score, values.get("session", ""),
                    values.get("simulated", "").lower() == "true",
                )
            )  # fmt: skip
    if not calls:
        raise InvalidInput("readers", f"{path}: has no rows")
    return calls


def _diag(truth_malignant: np.ndarray, called_malignant: np.ndarray, positive: str, ci: str):
    if positive == "malignant":
        return diagnostic_from_calls(truth_malignant, called_malignant, ci)
    return diagnostic_from_calls(1 - truth_malignant, ~called_malignant.astype(bool), ci)


def analyse_readers(
    calls: Sequence[ReaderCall],
    model: SystemScores,
    taxonomy: Taxonomy,
    model_threshold: float,
    positive: str = "malignant",
    ci_method: str = "wilson",
    path: str = "readers.csv",
    management: ManagementPolicy | None = None,
) -> dict[str, object]:
    """Per reader and per group (calls pooled over the group's readers): sensitivity,
    specificity, PPV, NPV, accuracy with intervals, the AUC where scores were given; the model
    against each group: paired DeLong (model score vs the group's mean score per patient, where
    every reader of the group gave scores), McNemar on the calls paired by patient (the group's
    majority call; a tie counts as the positive call) and the accuracy of the management decision
    (where calls are classes: the call's option under the ``management`` policy, dmfn's default
    when None, against the true class's; the model's decision is the policy's suggestion from its
    probabilities, an ``uncertain`` answer counting as not right). Split by session when there are
    several."""
    index = {p: i for i, p in enumerate(model.patient_ids)}
    unknown = sorted({c.patient_id for c in calls} - set(index))
    if unknown:
        raise InvalidInput(
            "readers",
            f"{path}: {len(unknown)} patient(s) missing from the predictions (e.g. {unknown[:3]}); "
            "the reader study needs the model's prediction for every patient the readers saw "
            "(pass --predictions of the split the readers read)",
        )
    y_model, score_model = model.binary(positive)
    model_called = score_model >= model_threshold
    model_right = model_called == (y_model == 1)
    policy = management or load_management()
    policy.check_covers(taxonomy.names)
    management = [policy.by_class[n] for n in taxonomy.names]
    sessions = sorted({c.session for c in calls})
    out: dict[str, object] = {
        "simulated": any(c.simulated for c in calls),
        "positive": positive,
        "sessions": {},
    }
    for session in sessions:
        subset = [c for c in calls if c.session == session]
        readers: dict[str, dict[str, object]] = {}
        for reader_id in sorted({c.reader_id for c in subset}):
            mine = [c for c in subset if c.reader_id == reader_id]
            idx = np.array([index[c.patient_id] for c in mine])
            called = np.array([c.called_malignant for c in mine])
            entry: dict[str, object] = {
                "group": mine[0].group,
                "n": len(mine),
                **_diag(model.malignant[idx], called, positive, ci_method).to_dict(),
            }
            scores = [c.score for c in mine]
            if all(s is not None for s in scores):
                y = model.malignant[idx] if positive == "malignant" else 1 - model.malignant[idx]
                s = np.array(scores, dtype=float) * (1 if positive == "malignant" else -1)
                entry["auc"] = auc_delong(y, s).to_dict()
            readers[reader_id] = entry
        groups: dict[str, dict[str, object]] = {}
        for group in sorted({c.group for c in subset}):
            mine = [c for c in subset if c.group == group]
            idx = np.array([index[c.patient_id] for c in mine])
            called = np.array([c.called_malignant for c in mine])
            entry = {
                "readers": sorted({c.reader_id for c in mine}),
                "n_calls": len(mine),
                **_diag(model.malignant[idx], called, positive, ci_method).to_dict(),
            }
            per_patient: dict[str, list[ReaderCall]] = {}
            for c in mine:
                per_patient.setdefault(c.patient_id, []).append(c)
            pids = [p for p in model.patient_ids if p in per_patient]
            pi = np.array([index[p] for p in pids])
            majority = np.array(
                [np.mean([c.called_malignant for c in per_patient[p]]) >= 0.5 for p in pids]
            )
            group_called = majority if positive == "malignant" else ~majority
            truth = y_model[pi] == 1
            entry["model_vs_group_mcnemar"] = mcnemar(
                model_right[pi], group_called == truth
            ).to_dict()
            patient_scores = {p: [c.score for c in per_patient[p]] for p in pids}
            if all(s is not None for v in patient_scores.values() for s in v):
                group_score = np.array(
                    [np.mean([float(s) for s in patient_scores[p] if s is not None]) for p in pids]
                )
                if positive == "benign":
                    group_score = -group_score
                entry["model_vs_group_delong"] = delong_paired(
                    y_model[pi], score_model[pi], group_score
                ).to_dict()
            classed = [(c, c.called_class) for c in mine if c.called_class is not None]
            if classed and model.classes is not None and model.probs is not None:
                right = sum(
                    management[k] == management[model.classes[index[c.patient_id]]]
                    for c, k in classed
                )
                entry["management_accuracy"] = proportion_ci(
                    right, len(classed), ci_method
                ).to_dict()
            groups[group] = entry
        read = np.array(sorted({index[c.patient_id] for c in subset}))
        model_malignant = model_called if positive == "malignant" else ~model_called
        session_out: dict[str, object] = {
            "model": {
                **_diag(
                    model.malignant[read], model_malignant[read], positive, ci_method
                ).to_dict(),
                "threshold": model_threshold,
                "n": int(read.size),
            },
            "readers": readers,
            "groups": groups,
        }
        if model.classes is not None and model.probs is not None:
            suggested = policy.suggest(model.probs[read], taxonomy.names)
            truth = [management[c] for c in model.classes[read]]
            right = sum(a == b for a, b in zip(suggested, truth, strict=True))
            session_out["model_management_accuracy"] = proportion_ci(
                int(right), len(truth), ci_method
            ).to_dict()
            session_out["model_management_uncertain"] = sum(a == UNCERTAIN for a in suggested)
        out["sessions"][session or "all"] = session_out  # type: ignore[index]
    return out
