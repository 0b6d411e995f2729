"""What the generator allows: the AUC of the Bayes-optimal classifier that knows the true class
frequencies (Table 2), the class CTC distributions (Table 2's normal, truncated to > 0), the
compartment table (``dmfn.synth.compartments``, OUR assumption) and, for the image, the
appearance matrix of :mod:`dmfn.synth.difficulty` (P(the lesion takes class a's appearance |
class c)).

The image's ceiling is that of an ideal reader who recognises which class's appearance a lesion
took (``ct``): an upper bound, since the appearances of related classes overlap (the thymoma
subtypes, the two teratomas, the lymphomas). With the tissue around the lesion in view, the image
also shows the compartment (``ct+compartment``); lesion-only views do not.

No model trained on CTC and compartment can beat these on average, so they say how much of the
tabular signal each source carries: the compartment table is ours, so signal that comes from it
must not be credited to CTC. Computed by Monte Carlo: patients drawn from the generative model,
their exact posteriors, then the AUCs (binary: malignant vs benign by the posterior probability of
malignancy; multi-class: Hand & Till). Age and sex carry no class signal in the generator.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
from scipy import stats

from dmfn.contract.taxonomy import COMPARTMENTS, Taxonomy

from .compartments import CompartmentTable

FEATURES = (
    "ctc", "compartment", "ctc+compartment", "ct", "ct+compartment", "ct+ctc+compartment",
)  # fmt: skip


@dataclass(frozen=True)
class Ceiling:
    features: str
    binary_auc: float
    hand_till_auc: float


def _auc(positive: np.ndarray, negative: np.ndarray) -> float:
    """Mann-Whitney AUC with ties counted one half: the pairs a positive wins, by binary search
    in the sorted negatives (the same count as the rank-sum formula, without ranking both)."""
    ordered = np.sort(negative)
    needles = np.sort(positive)  # sorted needles: the binary searches walk memory in order
    below = np.searchsorted(ordered, needles, "left")
    tied = np.searchsorted(ordered, needles, "right") - below
    return float((below.sum() + 0.5 * tied.sum()) / (positive.size * negative.size))


def _hand_till(labels: np.ndarray, posterior: np.ndarray) -> float:
    present = np.unique(labels)
    members = {c: np.flatnonzero(labels == c) for c in present}  # once, not once per pair
    pairs = []
    for a in range(present.size):
        for b in range(a + 1, present.size):
            i, j = present[a], present[b]
            a_ij = _auc(posterior[members[i], i], posterior[members[j], i])
            a_ji = _auc(posterior[members[j], j], posterior[members[i], j])
            pairs.append((a_ij + a_ji) / 2)
    return float(np.mean(pairs))


@dataclass(frozen=True)
class _Drawn:
    """Patients drawn from the generative model: the class prior [C], their classes [n], the
    malignant mask [C] and the likelihoods [n, C] of their CTC and compartment under each class."""

    prior: np.ndarray
    labels: np.ndarray
    malignant: np.ndarray
    ctc_like: np.ndarray
    where_like: np.ndarray


def _draw_patients(
    taxonomy: Taxonomy, compartments: CompartmentTable, n: int, rng: np.random.Generator
) -> _Drawn:
    prior = np.array([c.n_total for c in taxonomy.classes], float)
    prior /= prior.sum()
    mean = np.array([c.ctc_mean_pg_ml for c in taxonomy.classes])
    sd = np.array([c.ctc_sd_pg_ml for c in taxonomy.classes])
    where = np.array([compartments.of(c) for c in taxonomy.names])  # [C, 3]
    labels = rng.choice(prior.size, size=n, p=prior)
    # CTC ~ N(mean, sd) truncated to > 0, by inverse CDF
    low = stats.norm.cdf(0.0, mean[labels], sd[labels])
    ctc = stats.norm.ppf(low + rng.random(n) * (1 - low), mean[labels], sd[labels])
    u = rng.random(n)[:, None]
    location = (u > np.cumsum(where[labels], axis=1)).sum(axis=1).clip(0, len(COMPARTMENTS) - 1)
    # the truncated normal's density is the normal's over P(> 0)
    ctc_like = stats.norm.pdf(ctc[:, None], mean, sd) / stats.norm.sf(0.0, mean, sd)
    return _Drawn(prior, labels, np.array(taxonomy.malignant_mask), ctc_like, where[:, location].T)


def bayes_ceilings(
    taxonomy: Taxonomy,
    compartments: CompartmentTable,
    n: int = 100_000,
    seed: int = 0,
    appearance: np.ndarray | None = None,
) -> list[Ceiling]:
    """The Bayes-optimal binary and Hand & Till AUCs of each of :data:`FEATURES` (Monte Carlo
    with ``n`` patients; the standard error is about 0.002 at the default). ``appearance``: the
    [C, C] appearance matrix over the taxonomy's classes; None leaves out the image's rows."""
    rng = np.random.default_rng(seed)
    d = _draw_patients(taxonomy, compartments, n, rng)
    prior, labels, malignant = d.prior, d.labels, d.malignant
    ctc_like, where_like = d.ctc_like, d.where_like
    sources = [
        ("ctc", ctc_like),
        ("compartment", where_like),
        ("ctc+compartment", ctc_like * where_like),
    ]
    if appearance is not None:
        # the appearance a lesion took, drawn independently of CTC and compartment given the class
        cumulative = np.cumsum(appearance[labels], axis=1)
        look = (rng.random(n)[:, None] > cumulative).sum(axis=1).clip(0, prior.size - 1)
        ct_like = appearance[:, look].T
        sources += [
            ("ct", ct_like),
            ("ct+compartment", ct_like * where_like),
            ("ct+ctc+compartment", ct_like * ctc_like * where_like),
        ]
    out = []
    for name, like in sources:
        joint = like * prior
        posterior = joint / joint.sum(axis=1, keepdims=True)
        p_malignant = posterior[:, malignant].sum(axis=1)
        is_malignant = malignant[labels]
        out.append(
            Ceiling(
                name,
                _auc(p_malignant[is_malignant], p_malignant[~is_malignant]),
                _hand_till(labels, posterior),
            )
        )
    return out


def fused_binary_ceiling(
    taxonomy: Taxonomy,
    compartments: CompartmentTable,
    ct_auc: float,
    n: int = 100_000,
    seed: int = 0,
) -> float:
    """The Bayes-optimal binary AUC from CTC, compartment and a CT score of binary AUC
    ``ct_auc``: a binormal score (unit variance, means ``d = sqrt(2) Phi^-1(ct_auc)`` apart for
    malignant against benign) independent of CTC and compartment given benign / malignant. The
    paper-facing question: what CT + CTC + compartment can reach when CT alone reaches
    ``ct_auc`` (no assumption about how the image carries it)."""
    if not 0.5 <= ct_auc < 1.0:
        raise ValueError(f"argument 'ct_auc': must be in [0.5, 1), got {ct_auc}")
    rng = np.random.default_rng(seed)
    drawn = _draw_patients(taxonomy, compartments, n, rng)
    joint = drawn.ctc_like * drawn.where_like * drawn.prior
    p_mal = joint[:, drawn.malignant].sum(axis=1) / joint.sum(axis=1)
    is_malignant = drawn.malignant[drawn.labels]
    d = math.sqrt(2.0) * stats.norm.ppf(ct_auc)
    score = rng.normal(size=n) + d * is_malignant
    # posterior log-odds: tabular log-odds + the score's log-likelihood ratio d * s - d^2 / 2
    eps = 1e-12
    log_odds = np.log(p_mal + eps) - np.log(1 - p_mal + eps) + d * score - d * d / 2
    return _auc(log_odds[is_malignant], log_odds[~is_malignant])
