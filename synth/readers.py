"""Simulated readers for the reader study: thoracic surgeons of three seniorities (resident,
attending, chief; ``readers_per_group`` each) calling a synthetic cohort's patients in the
paper's two sessions, with calls that depend on the case. Every row says ``simulated=true``.
The model, its assumptions and what the paper leaves open: ``docs/readers.md``.

**Targets** (``synth/data/reader_study.csv``, the one source; the rule of each row is named
there and applied by :func:`load_targets`). Each target is the probability of a right call for
benign and for malignant patients (Table 3 has benign as its positive class: its sensitivity is
P(called benign | benign), its specificity P(called malignant | malignant)); for class calls, an
AUC:

- ``ct_only`` binary: Table 3's benign classification rows, as reported;
- ``ct_plus_ctc`` binary: the text gives only AUCs (residents 0.711, attendings 0.805). A binary
  call's AUC is exactly (sensitivity + specificity) / 2, so both error rates of the group's
  ``ct_only`` row are scaled by one factor until their mean is 1 - AUC (the ratio of the
  group's two errors is kept). Chiefs with CTC: not reported; assumed unchanged;
- management (``ct_only``): the accuracy of the correct management decision (Table 3's column,
  the text's 0.711 / 0.839 / 0.907), split between benign and malignant patients like the row's
  errors (1 - sensitivity) : (1 - specificity). The row's sensitivity and specificity cannot hold
  together with its accuracy: no accuracy lies between them (the residents' and attendings' lie
  above both, the chiefs' below both);
- class calls (``ct_only``): the abstract's multi-class AUCs (0.541, 0.632, 0.787, test cohort),
  read as the macro one-vs-rest AUC of hard calls, mean over present classes of
  (sensitivity_k + specificity_k) / 2.

**Calls.** Reader ``r`` of group ``G`` is right on case ``i`` in task ``T`` (binary, management,
class) when ``alpha[G, s, T, g_i] - D[T, i] + C[s, i] + u[G, i] + v[r, i] + e > 0``:

- ``D[T, i] = cross * [the lesion looks like a class with another answer]
  + ambiguous * [its look has a partner class with another answer]
  + small * max(0, log2(small_below_mm / diameter_mm))``, where "answer" is the truth's group
  for the binary call, its management option for management, its class for class calls; the
  look and its partners come from ``synth/data/ct_confusions.json`` (``appearance.csv``);
- ``C[s, i]``: with CTC only, ``ctc_weight * LLR`` toward the truth, ``LLR = log p(CTC |
  malignant) / p(CTC | benign)`` from Table 2's class normals (a reader who weighs the CTC as
  its likelihood ratio); 0 without CTC;
- ``u[G, i] ~ N(0, group_case_sd^2)``, shared by the readers of a group (what the group's
  training makes of this case), ``v[r, i] ~ N(0, reader_case_sd^2)``, the reader's own, both the
  same in every session and task; ``e`` standard logistic, one per call;
- ``alpha`` is solved on the cohort at hand for each group, session, task and truth group
  (class calls: per group), so that the expected rate over the cohort equals the target
  whatever the mix of hard cases (expectation over ``u + v`` by Gauss-Hermite quadrature).

A wrong binary call is the other group. The class call follows the reader's binary call: right
with the class model's probability when the binary call is right, otherwise a class of the
called group, chosen by the mistake weights ``appearance_weight * [k is the look] + partner
weight of k + floor``; a wrong management call is another option, chosen by the same weights
summed over each option's classes.
"""

from __future__ import annotations

import csv
import logging
import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from importlib import resources
from pathlib import Path

import numpy as np
from scipy import optimize, stats
from scipy.special import expit

from dmfn.contract.management import ManagementPolicy, load_management
from dmfn.contract.taxonomy import Taxonomy, load_taxonomy
from dmfn.synth.cohort import PatientPlan
from dmfn.synth.difficulty import Partner, load_difficulty

log = logging.getLogger(__name__)

READERS_FILE = "readers_simulated.csv"
READER_COLUMNS = (
    "reader_id", "group", "patient_id", "session", "call", "class_call", "management",
    "simulated",
)  # fmt: skip
TARGETS_FILE = "reader_study.csv"
SESSIONS = ("ct_only", "ct_plus_ctc")
#: The session whose reading gives the class and management calls (the paper reports those
#: figures without CTC: Table 3 and the abstract).
CLASS_SESSION = "ct_only"
TASKS = ("binary", "management", "class")
RULES = (
    "as_reported", "scale_errors_to_auc", "same_as_ct_only", "scale_errors_to_accuracy",
    "macro_ovr_auc",
)  # fmt: skip
#: Where alpha is searched (logits); wider than any target in (0.001, 0.999) needs.
ALPHA_RANGE = (-40.0, 40.0)


@dataclass(frozen=True)
class ReaderModel:
    """The assumptions of the simulation (the paper gives none of them): logit weights of the
    difficulty, diameter below which a lesion counts as small (mm), SDs of the case effects
    (logits), the weight of the CTC's likelihood ratio and of the mistake choices."""

    cross: float = 2.0
    ambiguous: float = 0.5
    small: float = 1.0
    small_below_mm: float = 40.0
    group_case_sd: float = 1.0
    reader_case_sd: float = 0.5
    ctc_weight: float = 1.0
    appearance_weight: float = 3.0
    floor_weight: float = 0.1
    quadrature_nodes: int = 40

    def __post_init__(self) -> None:
        for name in ("cross", "ambiguous", "small", "group_case_sd", "reader_case_sd",
                     "ctc_weight", "appearance_weight"):  # fmt: skip
            value = getattr(self, name)
            if not (math.isfinite(value) and value >= 0):
                raise ValueError(f"{name}: must be finite and >= 0, got {value}")
        if not self.small_below_mm > 0 or not self.floor_weight > 0:
            raise ValueError(
                f"small_below_mm and floor_weight: must be > 0, got {self.small_below_mm}, "
                f"{self.floor_weight}"
            )

    @property
    def case_sd(self) -> float:
        """SD (logits) of ``u + v``, the case effect one reader carries."""
        return math.hypot(self.group_case_sd, self.reader_case_sd)


# --------------------------------------------------------------------------------- targets
@dataclass(frozen=True)
class Target:
    """One group's target in one session and task: P(right call | benign) and P(right call |
    malignant) (binary and management), or the macro one-vs-rest AUC of its class calls."""

    group: str
    session: str
    task: str
    right_benign: float | None
    right_malignant: float | None
    auc: float | None
    rule: str
    source: str

    def rates(self) -> tuple[float, float]:
        """(P(right | benign), P(right | malignant)); ValueError for a class-call target."""
        if self.right_benign is None or self.right_malignant is None:
            raise ValueError(f"{self.group} {self.session} {self.task}: has no right rates")
        return self.right_benign, self.right_malignant

    def goal_auc(self) -> float:
        """The class calls' macro AUC; ValueError for a binary or management target."""
        if self.auc is None:
            raise ValueError(f"{self.group} {self.session} {self.task}: has no AUC target")
        return self.auc


def _scale_errors(
    right_benign: float, right_malignant: float, mean_right: float
) -> tuple[float, float]:
    """Both error rates scaled by one factor so that the mean right rate is ``mean_right``."""
    errors = (1.0 - right_benign, 1.0 - right_malignant)
    factor = (1.0 - mean_right) / (sum(errors) / 2.0)
    scaled = tuple(1.0 - factor * e for e in errors)
    if not all(0.0 < s < 1.0 for s in scaled):
        raise ValueError(f"scaling the errors to {mean_right} leaves (0, 1): {scaled}")
    return scaled[0], scaled[1]


def load_targets(path: str | Path | None = None) -> list[Target]:
    """The targets of every group (file order = seniority order), session and task, from
    ``path`` (default the packaged ``synth/data/reader_study.csv``) with each row's rule
    applied (module docstring). ValueError naming the row that is wrong."""
    if path is None:
        text = resources.files("dmfn.synth").joinpath("data", TARGETS_FILE).read_text()
        where = TARGETS_FILE
    else:
        text, where = Path(path).read_text(), str(path)
    rows = list(csv.DictReader(text.splitlines()))

    def number(row: dict[str, str], key: str, line: int) -> float:
        try:
            value = float(row[key])
        except (KeyError, TypeError, ValueError):
            raise ValueError(
                f"{where} line {line}: {key} must be a number, got {row.get(key)!r}"
            ) from None
        if not 0.0 < value < 1.0:
            raise ValueError(f"{where} line {line}: {key} must be in (0, 1), got {value}")
        return value

    reported: dict[str, tuple[float, float]] = {}
    for line, row in enumerate(rows, start=2):
        if row.get("rule") not in RULES or row.get("task") not in TASKS:
            raise ValueError(
                f"{where} line {line}: rule must be one of {RULES} and task one of {TASKS}, got "
                f"{row.get('rule')!r}, {row.get('task')!r}"
            )
        if row["task"] == "binary" and row["session"] == "ct_only":
            if row.get("positive") != "benign":
                raise ValueError(f"{where} line {line}: positive must be benign (Table 3's)")
            reported[row["group"]] = (
                number(row, "sensitivity", line), number(row, "specificity", line),
            )  # fmt: skip
    out = []
    for line, row in enumerate(rows, start=2):
        group, rule = row["group"], row["rule"]
        benign = malignant = auc = None
        if rule in ("scale_errors_to_auc", "same_as_ct_only") and group not in reported:
            raise ValueError(f"{where} line {line}: no ct_only binary row for group {group!r}")
        if rule == "as_reported":
            benign, malignant = number(row, "sensitivity", line), number(row, "specificity", line)
        elif rule == "scale_errors_to_auc":
            benign, malignant = _scale_errors(*reported[group], number(row, "auc", line))
        elif rule == "same_as_ct_only":
            benign, malignant = reported[group]
        elif rule == "scale_errors_to_accuracy":
            benign, malignant = _scale_errors(
                number(row, "sensitivity", line), number(row, "specificity", line),
                number(row, "accuracy", line),
            )  # fmt: skip
        else:
            auc = number(row, "auc", line)
        out.append(Target(group, row["session"], row["task"], benign, malignant, auc, rule,
                          row.get("source", "")))  # fmt: skip
    groups = list(dict.fromkeys(t.group for t in out))
    for group in groups:
        have = {(t.session, t.task) for t in out if t.group == group}
        need = {(s, "binary") for s in SESSIONS} | {(CLASS_SESSION, "management"),
                                                    (CLASS_SESSION, "class")}  # fmt: skip
        if have != need:
            raise ValueError(f"{where}: group {group!r} needs exactly the rows {sorted(need)}")
    return out


# --------------------------------------------------------------------------------- the cases
@dataclass(frozen=True)
class Cases:
    """The cases the readers call, from the plans and ``appearance.csv``: class indices of the
    truth and of the look [N], malignant [N] bool, lesion diameter [N] mm, CTC [N] pg/ml."""

    patient_ids: tuple[str, ...]
    label: np.ndarray
    appearance: np.ndarray
    malignant: np.ndarray
    diameter_mm: np.ndarray
    ctc_pg_ml: np.ndarray


def cases_of(
    plans: Sequence[PatientPlan],
    looks: Mapping[str, Mapping[str, str]],
    taxonomy: Taxonomy,
    splits: Sequence[str] = ("test",),
) -> Cases:
    """The patients of ``splits`` with their looks (``looks``: patient id -> its
    ``appearance.csv`` row). ValueError naming a patient without a look or with another label."""
    chosen = [p for p in plans if p.split in splits]
    if not chosen:
        raise ValueError(f"argument 'splits': no patient in {list(splits)}")
    label, appearance, diameter = [], [], []
    for p in chosen:
        row = looks.get(p.patient_id)
        if row is None:
            raise ValueError(f"argument 'looks': no appearance row for patient {p.patient_id}")
        if row.get("label") != p.label:
            raise ValueError(
                f"argument 'looks': patient {p.patient_id} is {p.label!r} in the plan but "
                f"{row.get('label')!r} in its appearance row"
            )
        try:
            appearance.append(taxonomy.index(row["appearance"]))
            diameter.append(float(row["lesion_diameter_mm"]))
        except (KeyError, ValueError) as err:
            raise ValueError(f"argument 'looks': patient {p.patient_id}: {err}") from None
        label.append(taxonomy.index(p.label))
    d = np.array(diameter)
    if not (np.isfinite(d).all() and (d > 0).all()):
        raise ValueError("argument 'looks': lesion_diameter_mm must be finite and > 0")
    labels = np.array(label)
    return Cases(
        tuple(p.patient_id for p in chosen),
        labels,
        np.array(appearance),
        np.array(taxonomy.malignant_mask)[labels],
        d,
        np.array([p.ctc_level_pg_ml for p in chosen], dtype=float),
    )


def partner_matrix(taxonomy: Taxonomy, partners: Mapping[str, Sequence[Partner]]) -> np.ndarray:
    """[C, C]: the weight of class ``k`` among the partners of look ``a`` (0 if none)."""
    out = np.zeros((len(taxonomy), len(taxonomy)))
    for name, entries in partners.items():
        if name in taxonomy.names:
            for p in entries:
                if p.label in taxonomy.names:
                    out[taxonomy.index(name), taxonomy.index(p.label)] = p.weight
    return out


def difficulty(
    cases: Cases, answer: np.ndarray, partners: np.ndarray, model: ReaderModel
) -> np.ndarray:
    """``D`` [N] (logits) of the task whose answer for class ``c`` is ``answer[c]``."""
    crossed = answer[cases.appearance] != answer[cases.label]
    other = answer[None, :] != answer[:, None]  # [look, k]: k has another answer
    ambiguous = ((partners > 0) & other).any(axis=1)[cases.appearance]
    small = np.maximum(0.0, np.log2(model.small_below_mm / cases.diameter_mm))
    return model.cross * crossed + model.ambiguous * ambiguous + model.small * small


def ctc_llr(ctc_pg_ml: np.ndarray, taxonomy: Taxonomy) -> np.ndarray:
    """``log p(CTC | malignant) / p(CTC | benign)`` [N] under Table 2's class normals truncated
    to > 0, mixed by the classes' patient counts."""
    mean = np.array([c.ctc_mean_pg_ml for c in taxonomy.classes])
    sd = np.array([c.ctc_sd_pg_ml for c in taxonomy.classes])
    prior = np.array([c.n_total for c in taxonomy.classes], dtype=float)
    density = stats.norm.pdf(ctc_pg_ml[:, None], mean, sd) / stats.norm.sf(0.0, mean, sd)
    malignant = np.array(taxonomy.malignant_mask)
    p_mal = density[:, malignant] @ (prior[malignant] / prior[malignant].sum())
    p_ben = density[:, ~malignant] @ (prior[~malignant] / prior[~malignant].sum())
    tiny = np.finfo(float).tiny
    return np.log(np.maximum(p_mal, tiny)) - np.log(np.maximum(p_ben, tiny))


def mistake_weights(cases: Cases, partners: np.ndarray, model: ReaderModel) -> np.ndarray:
    """[N, C]: how much a wrong call of case ``i`` leans to class ``k`` (before masking the
    classes a mistake cannot be): its look, the look's partners, a floor for every class."""
    n, c = cases.label.size, partners.shape[0]
    weights = np.full((n, c), model.floor_weight) + partners[cases.appearance]
    weights[np.arange(n), cases.appearance] += model.appearance_weight
    return weights


def _normalise(weights: np.ndarray) -> np.ndarray:
    total = weights.sum(axis=1, keepdims=True)
    return np.divide(weights, total, out=np.zeros_like(weights), where=total > 0)


# --------------------------------------------------------------------------------- solving
class _Quadrature:
    """E[f(z)] for z ~ N(0, sd^2) by Gauss-Hermite quadrature."""

    def __init__(self, sd: float, nodes: int) -> None:
        x, w = np.polynomial.hermite_e.hermegauss(nodes)
        self.z = sd * x
        self.w = w / w.sum()

    def right(self, alpha: float, offset: np.ndarray) -> np.ndarray:
        """[N, nodes]: P(right | z) at the nodes."""
        return expit(alpha + offset[:, None] + self.z[None, :])

    def mean_right(self, alpha: float, offset: np.ndarray) -> np.ndarray:
        """[N]: P(right), expected over z."""
        return self.right(alpha, offset) @ self.w


def solve_alpha(offset: np.ndarray, target: float, quad: _Quadrature) -> float:
    """The alpha whose expected right rate over cases with ``offset`` [N] is ``target``."""

    def gap(alpha: float) -> float:
        return float(quad.mean_right(alpha, offset).mean()) - target

    return float(optimize.brentq(gap, *ALPHA_RANGE, xtol=1e-10))


def macro_auc_of_call_probabilities(label: np.ndarray, called: np.ndarray) -> float:
    """The expected macro one-vs-rest AUC of hard calls with P(call = k) = ``called[i, k]``:
    mean over the classes present (with cases and non-cases) of (sensitivity + specificity) /
    2, each the expected rate; NaN with fewer than two classes present."""
    aucs = []
    for k in np.unique(label):
        member = label == k
        if member.all():
            continue
        sensitivity = called[member, k].mean()
        specificity = 1.0 - called[~member, k].mean()
        aucs.append((sensitivity + specificity) / 2.0)
    return float(np.mean(aucs)) if aucs else math.nan


@dataclass(frozen=True)
class GroupPlan:
    """What one group's readers need: per session the binary alphas and offsets (benign,
    malignant via the truth), the class alpha and the management alphas and offsets."""

    name: str
    binary_alpha: Mapping[str, np.ndarray]  # session -> [N] alpha of each case's truth group
    binary_offset: Mapping[str, np.ndarray]  # session -> [N] -D + C
    class_alpha: float
    class_offset: np.ndarray
    management_alpha: np.ndarray  # [N]
    management_offset: np.ndarray


@dataclass(frozen=True)
class ReaderStudy:
    """The solved simulation of one cohort: the cases, each group's plan, the class-call and
    management mistake distributions."""

    cases: Cases
    groups: tuple[GroupPlan, ...]
    class_same: np.ndarray  # [N, C] a wrong class within the truth's group
    class_other: np.ndarray  # [N, C] a class of the other group
    options: tuple[str, ...]
    option_of_class: np.ndarray  # [C] option index
    management_wrong: np.ndarray  # [N, M] a wrong option
    model: ReaderModel

    def expected_class_calls(self, group: GroupPlan) -> np.ndarray:
        """[N, C]: P(a reader of ``group`` calls class k) in the class session."""
        quad = _Quadrature(self.model.case_sd, self.model.quadrature_nodes)
        return _class_calls(self.cases.label, self.class_same, self.class_other,
                            group.binary_alpha[CLASS_SESSION],
                            group.binary_offset[CLASS_SESSION], group.class_alpha,
                            group.class_offset, quad)  # fmt: skip


def _class_calls(
    label: np.ndarray,
    class_same: np.ndarray,
    class_other: np.ndarray,
    binary_alpha: np.ndarray,
    binary_offset: np.ndarray,
    class_alpha: float,
    class_offset: np.ndarray,
    quad: _Quadrature,
) -> np.ndarray:
    p_binary = expit(binary_alpha[:, None] + binary_offset[:, None] + quad.z[None, :])
    p_class = quad.right(class_alpha, class_offset)
    both = (p_binary * p_class) @ quad.w
    binary = p_binary @ quad.w
    out = (binary - both)[:, None] * class_same + (1.0 - binary)[:, None] * class_other
    out[np.arange(label.size), label] += both
    # a truth whose group has no other class: a right binary call is the right class
    lone = class_same.sum(axis=1) == 0
    out[lone, label[lone]] += (binary - both)[lone]
    return out


def _solve_class_alpha(
    group: str,
    goal: float,
    label: np.ndarray,
    class_same: np.ndarray,
    class_other: np.ndarray,
    binary_alpha: np.ndarray,
    binary_offset: np.ndarray,
    class_offset: np.ndarray,
    quad: _Quadrature,
) -> float:
    """The class alpha whose expected macro AUC of class calls is ``goal``. A cohort too small
    for it (fewer than two classes, or the goal out of reach of the group's binary calls, which
    a cohort of a few patients can make so) gets the nearest alpha, with a warning."""

    def gap(alpha: float) -> float:
        calls = _class_calls(label, class_same, class_other, binary_alpha, binary_offset, alpha,
                             class_offset, quad)  # fmt: skip
        return macro_auc_of_call_probabilities(label, calls) - goal

    low, high = gap(ALPHA_RANGE[0]), gap(ALPHA_RANGE[1])
    if math.isnan(low):
        log.warning("readers %s: fewer than two classes read, so no multi-class AUC to solve "
                    "for; class calls use alpha 0", group)  # fmt: skip
        return 0.0
    if not low <= 0.0 <= high:
        nearest = ALPHA_RANGE[0] if low > 0.0 else ALPHA_RANGE[1]
        log.warning("readers %s: a multi-class AUC of %.3f is out of reach on this cohort "
                    "(%.3f to %.3f); class calls use alpha %.0f", group, goal, goal + low,
                    goal + high, nearest)  # fmt: skip
        return nearest
    return float(optimize.brentq(gap, *ALPHA_RANGE, xtol=1e-8))


def plan_study(
    cases: Cases,
    taxonomy: Taxonomy,
    targets: Sequence[Target] | None = None,
    policy: ManagementPolicy | None = None,
    partners: Mapping[str, Sequence[Partner]] | None = None,
    model: ReaderModel | None = None,
) -> ReaderStudy:
    """Solve every group's alphas on ``cases`` (module docstring)."""
    model = model or ReaderModel()
    targets = list(targets) if targets is not None else load_targets()
    policy = policy or load_management()
    policy.check_covers(taxonomy.names)
    if partners is None:
        partners = load_difficulty(known=list(taxonomy.names)).partners
    weights = partner_matrix(taxonomy, partners)
    quad = _Quadrature(model.case_sd, model.quadrature_nodes)
    group_of_class = np.array(taxonomy.malignant_mask, dtype=int)
    options = policy.options
    option_of_class = np.array([options.index(policy.by_class[n]) for n in taxonomy.names])
    identity = np.arange(len(taxonomy))
    d_binary = difficulty(cases, group_of_class, weights, model)
    d_management = difficulty(cases, option_of_class, weights, model)
    d_class = difficulty(cases, identity, weights, model)
    toward_truth = np.where(cases.malignant, 1.0, -1.0)
    ctc = model.ctc_weight * toward_truth * ctc_llr(cases.ctc_pg_ml, taxonomy)
    session_offset = {"ct_only": -d_binary, "ct_plus_ctc": -d_binary + ctc}

    lean = mistake_weights(cases, weights, model)
    same_group = group_of_class[None, :] == group_of_class[cases.label][:, None]
    not_truth = identity[None, :] != cases.label[:, None]
    class_same = _normalise(lean * (same_group & not_truth))
    class_other = _normalise(lean * ~same_group)
    lean_options = lean @ np.eye(len(options))[option_of_class]  # [N, M]
    wrong_option = np.arange(len(options))[None, :] != option_of_class[cases.label][:, None]
    management_wrong = _normalise(lean_options * wrong_option)

    def per_truth(target: Target, offset: np.ndarray) -> np.ndarray:
        alpha = np.zeros(cases.label.size)
        for malignant, rate in zip((False, True), target.rates(), strict=True):
            mine = cases.malignant == malignant
            if mine.any():
                alpha[mine] = solve_alpha(offset[mine], rate, quad)
        return alpha

    by_key = {(t.group, t.session, t.task): t for t in targets}
    groups = []
    for name in dict.fromkeys(t.group for t in targets):
        binary_alpha = {
            s: per_truth(by_key[name, s, "binary"], session_offset[s]) for s in SESSIONS
        }
        management_alpha = per_truth(by_key[name, CLASS_SESSION, "management"], -d_management)
        goal = by_key[name, CLASS_SESSION, "class"].goal_auc()

        class_alpha = _solve_class_alpha(
            name, goal, cases.label, class_same, class_other, binary_alpha[CLASS_SESSION],
            session_offset[CLASS_SESSION], -d_class, quad,
        )  # fmt: skip
        groups.append(GroupPlan(name, binary_alpha, session_offset, class_alpha, -d_class,
                                management_alpha, -d_management))  # fmt: skip
    return ReaderStudy(cases, tuple(groups), class_same, class_other, options, option_of_class,
                       management_wrong, model)  # fmt: skip


# --------------------------------------------------------------------------------- drawing
def _pick(rng: np.random.Generator, probs: np.ndarray) -> np.ndarray:
    """One index per row of ``probs`` [N, K] (rows summing to 1), by inverse CDF; one uniform
    draw per row, always."""
    u = rng.random(probs.shape[0])
    cdf = np.cumsum(probs, axis=1)
    return np.minimum((u[:, None] >= cdf).sum(axis=1), probs.shape[1] - 1)


@dataclass(frozen=True)
class ReaderCalls:
    """One reader's calls on the cases: per session the binary call (malignant [N] bool); in
    the class session the class index [N] and the management option index [N]."""

    reader_id: str
    group: str
    called_malignant: Mapping[str, np.ndarray]
    class_call: np.ndarray
    management: np.ndarray


def draw_calls(study: ReaderStudy, seed: int, readers_per_group: int) -> list[ReaderCalls]:
    """Every reader's calls, reproducible from ``seed`` (a fixed number of draws per reader)."""
    rng = np.random.default_rng(np.random.SeedSequence(seed, spawn_key=(7,)))
    model, cases = study.model, study.cases
    n = cases.label.size
    out = []
    for group in study.groups:
        shared = rng.normal(0.0, model.group_case_sd, n)
        for k in range(readers_per_group):
            z = shared + rng.normal(0.0, model.reader_case_sd, n)
            called: dict[str, np.ndarray] = {}
            right: dict[str, np.ndarray] = {}
            for session in SESSIONS:
                p = expit(group.binary_alpha[session] + group.binary_offset[session] + z)
                right[session] = rng.random(n) < p
                called[session] = cases.malignant == right[session]
            class_right = rng.random(n) < expit(group.class_alpha + group.class_offset + z)
            same, other = _pick(rng, study.class_same), _pick(rng, study.class_other)
            binary_right = right[CLASS_SESSION]
            lone = study.class_same.sum(axis=1) == 0
            class_call = np.where(
                binary_right,
                np.where(class_right | lone, cases.label, same),
                other,
            )
            management_right = rng.random(n) < expit(
                group.management_alpha + group.management_offset + z
            )
            wrong = _pick(rng, study.management_wrong)
            truth_option = study.option_of_class[cases.label]
            one_option = study.management_wrong.sum(axis=1) == 0
            management = np.where(management_right | one_option, truth_option, wrong)
            out.append(ReaderCalls(f"{group.name}_{k + 1}", group.name, called, class_call,
                                   management))  # fmt: skip
    return out


def simulate_readers(
    plans: Sequence[PatientPlan],
    looks: Mapping[str, Mapping[str, str]],
    seed: int,
    out: Path,
    readers_per_group: int = 2,
    splits: Sequence[str] = ("test",),
    taxonomy: Taxonomy | None = None,
    model: ReaderModel | None = None,
) -> Path:
    """Write ``out/readers_simulated.csv``: every reader's calls on every patient of
    ``splits`` in both sessions (columns :data:`READER_COLUMNS`; the class and management calls
    in the ``ct_only`` rows, empty in the others); reproducible from ``seed``. ``looks``: patient
    id -> its ``appearance.csv`` row; ``taxonomy``: the cohort's (its grouping)."""
    taxonomy = taxonomy or load_taxonomy()
    cases = cases_of(plans, looks, taxonomy, splits)
    study = plan_study(cases, taxonomy, model=model)
    names, options = taxonomy.names, study.options
    rows = []
    for reader in draw_calls(study, seed, readers_per_group):
        for session in SESSIONS:
            with_class = session == CLASS_SESSION
            for i, patient in enumerate(cases.patient_ids):
                rows.append([
                    reader.reader_id, reader.group, patient, session,
                    "malignant" if reader.called_malignant[session][i] else "benign",
                    names[reader.class_call[i]] if with_class else "",
                    options[reader.management[i]] if with_class else "",
                    "true",
                ])  # fmt: skip
    path = Path(out) / READERS_FILE
    with path.open("w", newline="") as handle:
        writer = csv.writer(handle, lineterminator="\n")
        writer.writerow(READER_COLUMNS)
        writer.writerows(rows)
    return path
