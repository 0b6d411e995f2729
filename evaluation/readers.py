"""The reader study: physicians' calls on the same patients as the model, laid out like the
paper's Table 3, and the paper's tests of the model against each group and each reader.

``readers.csv``: one row per reader, patient and session. Required columns: ``reader_id``,
``group`` (``resident``, ``attending``, ``chief``, or your own), ``patient_id``, ``session``
(``ct_only``, ``ct_plus_ctc``, or your own), ``call`` (``benign`` / ``malignant``),
``class_call`` (a class of the taxonomy, or empty) and ``management`` (an option of the
management policy, or empty). Optional: ``score`` (the reader's confidence that the lesion is
malignant, larger = more likely; used instead of the call for the reader's AUC) and
``simulated`` (``true`` for readers made by ``dmfn synth``).

The analysis, per session (docs/readers.md says why each choice):

- each reader: sensitivity, specificity, PPV, NPV, accuracy with intervals; the AUC of the call
  as a 0/1 score (that is (sensitivity + specificity) / 2), with its DeLong interval; the model
  against the reader by paired DeLong (``pROC::roc.test`` accepts a binary predictor), and by
  McNemar separately on the malignant patients and on the benign patients (sensitivity and
  specificity, whichever class is positive); management accuracy; the macro one-vs-rest AUC of
  the class calls (mean over the classes present of (sensitivity_k + specificity_k) / 2);
- each group: the same rates pooled over its readers (the mean reader), with intervals from a
  bootstrap over patients (a patient's calls by the group's readers are correlated, so calls
  are not independent cases); the mean of its readers' AUCs with the DeLong interval of the
  mean and the model against it by DeLong (contrast model - mean of the readers, readers
  fixed); McNemar against the group's majority call, a tie decided by :data:`TIE_RULE`.
"""

from __future__ import annotations

import hashlib
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from dmfn.contract.csvfile import csv_rows
from dmfn.contract.errors import InvalidInput
from dmfn.contract.management import UNCERTAIN, ManagementPolicy, load_management
from dmfn.contract.taxonomy import GROUPS, Taxonomy

from .analysis import SystemScores
from .metrics import macro_ovr_auc
from .proportions import diagnostic_from_calls, mcnemar, proportion_ci
from .roc import auc_delong, auc_mean_delong, delong_against_mean, delong_paired

READER_COLUMNS: tuple[str, ...] = (
    "reader_id", "group", "patient_id", "session", "call", "class_call", "management",
)  # fmt: skip
#: Reports list these first, in this order (seniority; without CTC, then with).
GROUP_ORDER: tuple[str, ...] = ("resident", "attending", "chief")
SESSION_ORDER: tuple[str, ...] = ("ct_only", "ct_plus_ctc")
TIE_RULE = (
    "a tie between a group's readers is decided by a coin seeded by the group and the patient id "
    "(SHA-256): reproducible, independent of the file's row order and of which class is positive"
)
#: How a group's intervals are computed (the number of replicates is the caller's).
GROUP_INTERVALS = "percentile bootstrap over patients"


@dataclass(frozen=True)
class ReaderCall:
    """One row of ``readers.csv`` (``line``: its line in the file)."""

    reader_id: str
    group: str
    patient_id: str
    session: str
    called_malignant: bool
    class_call: int | None
    management: str | None
    score: float | None
    simulated: bool
    line: int


def read_readers(path: str | Path, taxonomy: Taxonomy) -> list[ReaderCall]:
    """Read ``readers.csv``; InvalidInput naming the file, line and column of a bad row, or the
    missing columns of a file in the earlier format (no ``session``, ``class_call``,
    ``management``)."""
    path = Path(path)
    calls = []
    seen: dict[tuple[str, str, str], int] = {}
    group_of: dict[str, str] = {}
    try:
        with csv_rows(path, "readers", READER_COLUMNS) as (columns, rows):
            for line, row in rows:
                calls.append(_parse_row(path, line, row, columns, taxonomy))
                c = calls[-1]
                key = (c.reader_id, c.patient_id, c.session)
                if key in seen:
                    raise InvalidInput(
                        "readers",
                        f"{path} line {line}: reader {c.reader_id} calls patient {c.patient_id} "
                        f"in session {c.session} again (first on line {seen[key]})",
                    )
                seen[key] = line
                if group_of.setdefault(c.reader_id, c.group) != c.group:
                    raise InvalidInput(
                        "group",
                        f"{path} line {line}: reader {c.reader_id} is in group "
                        f"{group_of[c.reader_id]!r} on an earlier line, {c.group!r} here",
                    )
    except InvalidInput as err:
        if "missing required columns" in err.rule and "class_call" in err.rule:
            raise InvalidInput(
                "readers",
                f"{err.rule}. This is the earlier readers format: `call` now holds benign / "
                "malignant only, a class goes in `class_call`, a management decision in "
                "`management` (either may be empty), and `session` is required; regenerate "
                "simulated readers with `dmfn synth`",
            ) from None
        raise
    if not calls:
        raise InvalidInput("readers", f"{path}: has no rows")
    return calls


def _parse_row(
    path: Path, line: int, row: dict[str, str], columns: Sequence[str], taxonomy: Taxonomy
) -> ReaderCall:
    where = f"{path} line {line}"
    values = {c: (row.get(c) or "").strip() for c in columns}
    for c in ("reader_id", "group", "patient_id", "session", "call"):
        if not values[c]:
            raise InvalidInput(c, f"{where}: must not be empty")
    if values["call"] not in GROUPS:
        hint = " (a class goes in class_call)" if values["call"] in taxonomy.names else ""
        raise InvalidInput("call", f"{where}: must be benign or malignant, got "
                                   f"{values['call']!r}{hint}")  # fmt: skip
    index = None
    if values["class_call"]:
        try:
            index = taxonomy.index(values["class_call"])
        except ValueError:
            raise InvalidInput(
                "class_call", f"{where}: unknown class {values['class_call']!r}"
            ) from None
    score = None
    if values.get("score"):
        try:
            score = float(values["score"])
        except ValueError:
            raise InvalidInput("score", f"{where}: must be a number") from None
        if not np.isfinite(score):
            raise InvalidInput("score", f"{where}: must be finite, got {score}")
    return ReaderCall(
        values["reader_id"], values["group"], values["patient_id"], values["session"],
        values["call"] == "malignant", index, values["management"] or None, score,
        values.get("simulated", "").lower() == "true", line,
    )  # fmt: skip


def _ordered(names: set[str], first: Sequence[str]) -> list[str]:
    return [n for n in first if n in names] + sorted(names - set(first))


def tie_coin(group: str, patient_id: str) -> bool:
    """The :data:`TIE_RULE` coin of one group and patient: True = the malignant call."""
    return hashlib.sha256(f"{group}\x00{patient_id}".encode()).digest()[0] & 1 == 1


# --------------------------------------------------------------------------------- statistics
def macro_auc_of_calls(
    labels: np.ndarray, calls: np.ndarray, n_classes: int, weights: np.ndarray | None = None
) -> np.ndarray:
    """The macro one-vs-rest AUC of hard class calls: mean over the classes present (with cases
    and non-cases) of (sensitivity_k + specificity_k) / 2, which is the one-vs-rest AUC of the
    0/1 score ``call == k``. ``weights`` [B, N]: case multiplicities (bootstrap replicates);
    returns [B] (one value per row; [1] without weights)."""
    w = np.ones((1, labels.size)) if weights is None else np.asarray(weights, dtype=np.float64)
    truth = np.eye(n_classes)[labels]
    called = np.eye(n_classes)[calls]
    members = w @ truth
    others = w.sum(axis=1, keepdims=True) - members
    hits = w @ (truth * called)
    false = w @ ((1.0 - truth) * called)
    present = (members > 0) & (others > 0)
    with np.errstate(invalid="ignore", divide="ignore"):
        auc = (hits / members + 1.0 - false / others) / 2.0
    auc = np.where(present, auc, 0.0)
    return auc.sum(axis=1) / np.maximum(present.sum(axis=1), 1)


def _boot_weights(n: int, n_boot: int, seed: int) -> np.ndarray:
    """[n_boot, n] multiplicities of ``n`` patients resampled with replacement."""
    rng = np.random.default_rng(seed)
    draws = rng.integers(0, n, (n_boot, n))
    return np.stack([np.bincount(d, minlength=n) for d in draws]).astype(np.float64)


def _pooled(
    numerator: np.ndarray, denominator: np.ndarray, boot: np.ndarray
) -> dict[str, float | int | str]:
    """A proportion pooled over a group's calls (per-patient counts [N]) with its bootstrap
    interval over patients (``boot`` [B, N] multiplicities)."""
    x, n = int(numerator.sum()), int(denominator.sum())
    value = x / n if n else float("nan")
    den = boot @ denominator
    with np.errstate(invalid="ignore", divide="ignore"):
        replicates = (boot @ numerator) / den
    replicates = replicates[den > 0]
    low, high = (np.quantile(replicates, [0.025, 0.975]) if replicates.size
                 else (float("nan"), float("nan")))  # fmt: skip
    return {"value": value, "ci_low": float(low), "ci_high": float(high), "successes": x, "n": n,
            "ci_method": GROUP_INTERVALS}  # fmt: skip


def _interval(value: float, replicates: np.ndarray) -> dict[str, float | str]:
    low, high = np.quantile(replicates, [0.025, 0.975])
    return {"value": value, "ci_low": float(low), "ci_high": float(high),
            "ci_method": GROUP_INTERVALS}  # fmt: skip


@dataclass(frozen=True)
class _Reader:
    """One reader's calls in one session, as arrays over the session's patients [P] (``read``
    False where the reader did not call the patient)."""

    reader_id: str
    group: str
    read: np.ndarray
    called_malignant: np.ndarray
    score: np.ndarray | None  # malignancy confidence where every call has one
    class_call: np.ndarray  # class index, -1 = none
    management: np.ndarray  # option, "" = none


def _readers_of(
    calls: Sequence[ReaderCall], patients: dict[str, int], n: int
) -> dict[str, _Reader]:
    out = {}
    ids = {c.reader_id for c in calls}
    group_of = {c.reader_id: c.group for c in calls}
    for reader_id in sorted(ids, key=lambda r: (_group_rank(group_of[r]), r)):
        mine = [c for c in calls if c.reader_id == reader_id]
        idx = np.array([patients[c.patient_id] for c in mine])
        read = np.zeros(n, bool)
        read[idx] = True
        called = np.zeros(n, bool)
        called[idx] = [c.called_malignant for c in mine]
        score = None
        if all(c.score is not None for c in mine):
            score = np.zeros(n)
            score[idx] = [float(c.score or 0.0) for c in mine]
        classes = np.full(n, -1)
        classes[idx] = [-1 if c.class_call is None else c.class_call for c in mine]
        management = np.full(n, "", dtype=object)
        management[idx] = [c.management or "" for c in mine]
        out[reader_id] = _Reader(reader_id, group_of[reader_id], read, called, score, classes,
                                 management)  # fmt: skip
    return out


def _group_rank(group: str) -> int:
    return GROUP_ORDER.index(group) if group in GROUP_ORDER else len(GROUP_ORDER)


@dataclass(frozen=True)
class _Truth:
    """The session's patients [P]: truth and the model's score and calls, oriented to the
    positive class; the true class and the model's management decision where known."""

    positive: np.ndarray  # 0/1
    malignant: np.ndarray  # bool
    model_score: np.ndarray
    model_called: np.ndarray  # bool, positive
    classes: np.ndarray | None
    management: list[str] | None


def _reader_score(reader: _Reader, positive: str) -> np.ndarray:
    """The reader's score for the positive class: the confidence where given, else the call."""
    if reader.score is not None:
        return reader.score if positive == "malignant" else -reader.score
    called = reader.called_malignant if positive == "malignant" else ~reader.called_malignant
    return called.astype(float)


def _both_classes(y: np.ndarray) -> bool:
    return bool(y.any() and not y.all())


def _reader_entry(
    r: _Reader, t: _Truth, positive: str, ci_method: str, n_classes: int
) -> dict[str, object]:
    m = r.read
    called = r.called_malignant[m] if positive == "malignant" else ~r.called_malignant[m]
    entry: dict[str, object] = {
        "group": r.group,
        "n": int(m.sum()),
        **diagnostic_from_calls(t.positive[m], called, ci_method).to_dict(),
        "auc_from": "score" if r.score is not None else "call",
    }
    score = _reader_score(r, positive)[m]
    if _both_classes(t.positive[m]):
        entry["auc"] = auc_delong(t.positive[m], score).to_dict()
        entry["model_vs_reader_delong"] = delong_paired(
            t.positive[m], t.model_score[m], score
        ).to_dict()
    model_right = t.model_called == (t.positive == 1)
    reader_right = r.called_malignant == t.malignant
    for name, mask in (("malignant", t.malignant), ("benign", ~t.malignant)):
        sel = m & mask
        entry[f"mcnemar_{name}"] = {
            **mcnemar(model_right[sel], reader_right[sel]).to_dict(), "n": int(sel.sum()),
        }  # fmt: skip
    said = m & (r.management != "")
    if said.any() and t.management is not None:
        right = sum(r.management[i] == t.management[i] for i in np.flatnonzero(said))
        entry["management_accuracy"] = proportion_ci(right, int(said.sum()), ci_method).to_dict()
    classed = m & (r.class_call >= 0)
    if classed.any() and t.classes is not None:
        labels, calls = t.classes[classed], r.class_call[classed]
        entry["multiclass"] = {
            "macro_ovr_auc": float(macro_auc_of_calls(labels, calls, n_classes)[0]),
            "accuracy": proportion_ci(int((labels == calls).sum()), labels.size,
                                      ci_method).to_dict(),
        }  # fmt: skip
    return entry


def _group_entry(
    name: str,
    readers: Sequence[_Reader],
    t: _Truth,
    patient_ids: Sequence[str],
    positive: str,
    ci_method: str,
    n_classes: int,
    boot: np.ndarray,
) -> dict[str, object]:
    read = np.array([r.read for r in readers])  # [R, P]
    mal = np.array([r.called_malignant for r in readers])
    called = mal if positive == "malignant" else ~mal
    truth = (t.positive == 1)[None, :]
    tp = (read & called & truth).sum(axis=0)
    fn = (read & ~called & truth).sum(axis=0)
    fp = (read & called & ~truth).sum(axis=0)
    tn = (read & ~called & ~truth).sum(axis=0)
    entry: dict[str, object] = {
        "readers": [r.reader_id for r in readers],
        "n_patients": int(read.any(axis=0).sum()),
        "n_calls": int(read.sum()),
        "tp": int(tp.sum()), "fp": int(fp.sum()), "tn": int(tn.sum()), "fn": int(fn.sum()),
        "sensitivity": _pooled(tp, tp + fn, boot),
        "specificity": _pooled(tn, tn + fp, boot),
        "ppv": _pooled(tp, tp + fp, boot),
        "npv": _pooled(tn, tn + fn, boot),
        "accuracy": _pooled(tp + tn, tp + tn + fp + fn, boot),
    }  # fmt: skip
    common = read.all(axis=0)
    entry["n_patients_all_readers"] = int(common.sum())
    y = t.positive[common]
    if _both_classes(y):
        scores = np.array([_reader_score(r, positive)[common] for r in readers])
        entry["auc"] = auc_mean_delong(y, scores).to_dict()
        entry["model_vs_group_delong"] = delong_against_mean(
            y, t.model_score[common], scores
        ).to_dict()
    if common.any():
        share = mal[:, common].mean(axis=0)
        coin = np.array([tie_coin(name, patient_ids[i]) for i in np.flatnonzero(common)])
        majority = np.where(share == 0.5, coin, share > 0.5)
        majority_positive = majority if positive == "malignant" else ~majority
        entry["majority_call"] = diagnostic_from_calls(y, majority_positive, ci_method).to_dict()
        model_right = (t.model_called == (t.positive == 1))[common]
        majority_right = majority == t.malignant[common]
        for label, mask in (("malignant", t.malignant[common]), ("benign", ~t.malignant[common])):
            entry[f"mcnemar_{label}"] = {
                **mcnemar(model_right[mask], majority_right[mask]).to_dict(),
                "n": int(mask.sum()),
            }
    said = read & np.array([r.management != "" for r in readers])
    if said.any() and t.management is not None:
        truth_option = np.array(t.management, dtype=object)
        right = (said & np.array([r.management == truth_option for r in readers])).sum(axis=0)
        entry["management_accuracy"] = _pooled(right, said.sum(axis=0), boot)
    classed = read & np.array([r.class_call >= 0 for r in readers])
    if classed.any() and t.classes is not None:
        values, replicates = [], []
        for r, mask in zip(readers, classed, strict=True):
            if mask.any():
                labels, calls = t.classes[mask], r.class_call[mask]
                values.append(macro_auc_of_calls(labels, calls, n_classes)[0])
                replicates.append(macro_auc_of_calls(labels, calls, n_classes, boot[:, mask]))
        right = (classed & (np.array([r.class_call for r in readers]) == t.classes)).sum(axis=0)
        entry["multiclass"] = {
            "macro_ovr_auc": _interval(float(np.mean(values)), np.mean(replicates, axis=0)),
            "accuracy": _pooled(right, classed.sum(axis=0), boot),
        }
    return entry


def _model_entry(
    t: _Truth,
    model: SystemScores,
    idx: np.ndarray,
    threshold: float,
    ci_method: str,
    n_classes: int,
    policy: ManagementPolicy,
    names: Sequence[str],
    boot: np.ndarray,
) -> dict[str, object]:
    entry: dict[str, object] = {
        **diagnostic_from_calls(t.positive, t.model_called, ci_method).to_dict(),
        "threshold": threshold,
        "n": int(idx.size),
    }
    if _both_classes(t.positive):
        entry["auc"] = auc_delong(t.positive, t.model_score).to_dict()
    if model.probs is not None and t.classes is not None and t.management is not None:
        probs = model.probs[idx]
        suggested = policy.suggest(probs, names)
        right = sum(a == b for a, b in zip(suggested, t.management, strict=True))
        entry["management_accuracy"] = proportion_ci(int(right), idx.size, ci_method).to_dict()
        entry["management_uncertain"] = sum(a == UNCERTAIN for a in suggested)
        top1 = probs.argmax(axis=1)
        entry["multiclass"] = {
            "macro_ovr_auc_top1": _interval(
                float(macro_auc_of_calls(t.classes, top1, n_classes)[0]),
                macro_auc_of_calls(t.classes, top1, n_classes, boot),
            ),
            "macro_ovr_auc_probabilities": (
                macro_ovr_auc(t.classes, probs) if np.unique(t.classes).size > 1 else None
            ),
            "accuracy": proportion_ci(int((top1 == t.classes).sum()), idx.size,
                                      ci_method).to_dict(),
        }  # fmt: skip
    return entry


def analyse_readers(
    calls: Sequence[ReaderCall],
    model: SystemScores,
    taxonomy: Taxonomy,
    model_threshold: float,
    positive: str = "malignant",
    ci_method: str = "wilson",
    path: str = "readers.csv",
    management: ManagementPolicy | None = None,
    n_boot: int = 1000,
    seed: int = 0,
) -> dict[str, object]:
    """Per session: the model (at ``model_threshold``), every group and every reader, laid out
    like Table 3, and the model against each group and reader (module docstring). The model's
    management decision is the ``management`` policy's suggestion (dmfn's default when None)
    from its probabilities, an ``uncertain`` answer counting as not right; readers' management
    calls must be options of that policy. Group intervals: ``n_boot`` bootstrap replicates over
    patients from ``seed``."""
    if n_boot < 100:
        raise InvalidInput("n_boot", f"must be >= 100 replicates, got {n_boot}")
    index = {p: i for i, p in enumerate(model.patient_ids)}
    unknown = sorted({c.patient_id for c in calls} - set(index))
    if unknown:
        raise InvalidInput(
            "readers",
            f"{path}: {len(unknown)} patient(s) missing from the predictions (e.g. {unknown[:3]}); "
            "the reader study needs the model's prediction for every patient the readers saw "
            "(pass --predictions of the split the readers read)",
        )
    policy = management or load_management()
    policy.check_covers(taxonomy.names)
    for c in calls:
        if c.management is not None and c.management not in policy.options:
            raise InvalidInput(
                "management",
                f"{path} line {c.line}: {c.management!r} is not an option of the management "
                f"policy {policy.source} (options: {', '.join(policy.options)})",
            )
    y_all, score_all = model.binary(positive)
    n_classes = len(taxonomy)
    out: dict[str, object] = {
        "simulated": any(c.simulated for c in calls),
        "positive": positive,
        "tie_rule": TIE_RULE,
        "group_intervals": f"{GROUP_INTERVALS}, {n_boot} replicates, seed {seed}",
        "sessions": {},
    }
    sessions: dict[str, object] = {}
    for session in _ordered({c.session for c in calls}, SESSION_ORDER):
        subset = [c for c in calls if c.session == session]
        idx = np.array(sorted({index[c.patient_id] for c in subset}))
        patient_ids = [model.patient_ids[i] for i in idx]
        local = {p: k for k, p in enumerate(patient_ids)}
        called_model = score_all[idx] >= model_threshold
        classes = model.classes[idx] if model.classes is not None else None
        truth = _Truth(
            positive=y_all[idx],
            malignant=model.malignant[idx].astype(bool),
            model_score=score_all[idx],
            model_called=called_model,
            classes=classes,
            management=None if classes is None
            else [policy.by_class[taxonomy.names[k]] for k in classes],
        )  # fmt: skip
        boot = _boot_weights(idx.size, n_boot, seed)
        readers = _readers_of(subset, local, idx.size)
        groups = {}
        for name in _ordered({r.group for r in readers.values()}, GROUP_ORDER):
            mine = [r for r in readers.values() if r.group == name]
            groups[name] = _group_entry(name, mine, truth, patient_ids, positive, ci_method,
                                        n_classes, boot)  # fmt: skip
        sessions[session] = {
            "model": _model_entry(
                truth,
                model,
                idx,
                model_threshold,
                ci_method,
                n_classes,
                policy,
                taxonomy.names,
                boot,
            ),
            "groups": groups,
            "readers": {
                r.reader_id: _reader_entry(r, truth, positive, ci_method, n_classes)
                for r in readers.values()
            },
        }
    out["sessions"] = sessions
    return out
