"""What the generator's own tabular distributions allow: the AUC of the Bayes-optimal classifier
that knows the true class frequencies (Table 2), the class CTC distributions (Table 2's normal,
truncated to > 0) and the compartment table (``dmfn.synth.compartments``, OUR assumption).

No model trained on CTC and compartment can beat these on average, so they say how much of the
tabular signal each source carries: the compartment table is ours, so signal that comes from it
must not be credited to CTC. Computed by Monte Carlo: patients drawn from the generative model,
their exact posteriors, then the AUCs (binary: malignant vs benign by the posterior probability of
malignancy; multi-class: Hand & Till). Age and sex carry no class signal in the generator.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from scipy import stats

from dmfn.contract.taxonomy import COMPARTMENTS, Taxonomy

from .compartments import CompartmentTable

FEATURES = ("ctc", "compartment", "ctc+compartment")


@dataclass(frozen=True)
class Ceiling:
    features: str
    binary_auc: float
    hand_till_auc: float


def _auc(positive: np.ndarray, negative: np.ndarray) -> float:
    """Mann-Whitney AUC with ties counted one half."""
    ranks = stats.rankdata(np.concatenate([positive, negative]))
    n1, n0 = positive.size, negative.size
    return float((ranks[:n1].sum() - n1 * (n1 + 1) / 2) / (n1 * n0))


def _hand_till(labels: np.ndarray, posterior: np.ndarray) -> float:
    present = np.unique(labels)
    pairs = []
    for a in range(present.size):
        for b in range(a + 1, present.size):
            i, j = present[a], present[b]
            in_i, in_j = labels == i, labels == j
            a_ij = _auc(posterior[in_i, i], posterior[in_j, i])
            a_ji = _auc(posterior[in_j, j], posterior[in_i, j])
            pairs.append((a_ij + a_ji) / 2)
    return float(np.mean(pairs))


def bayes_ceilings(
    taxonomy: Taxonomy, compartments: CompartmentTable, n: int = 100_000, seed: int = 0
) -> list[Ceiling]:
    """The Bayes-optimal binary and Hand & Till AUCs from CTC alone, compartment alone and both
    (Monte Carlo with ``n`` patients; the standard error is about 0.002 at the default)."""
    rng = np.random.default_rng(seed)
    prior = np.array([c.n_total for c in taxonomy.classes], float)
    prior /= prior.sum()
    mean = np.array([c.ctc_mean_pg_ml for c in taxonomy.classes])
    sd = np.array([c.ctc_sd_pg_ml for c in taxonomy.classes])
    where = np.array([compartments.of(c) for c in taxonomy.names])  # [C, 3]
    malignant = np.array(taxonomy.malignant_mask)

    labels = rng.choice(prior.size, size=n, p=prior)
    # CTC ~ N(mean, sd) truncated to > 0, by inverse CDF
    low = stats.norm.cdf(0.0, mean[labels], sd[labels])
    ctc = stats.norm.ppf(low + rng.random(n) * (1 - low), mean[labels], sd[labels])
    u = rng.random(n)[:, None]
    location = (u > np.cumsum(where[labels], axis=1)).sum(axis=1).clip(0, len(COMPARTMENTS) - 1)

    # likelihoods [n, C]; the truncated normal's density is the normal's over P(> 0)
    ctc_like = stats.norm.pdf(ctc[:, None], mean, sd) / stats.norm.sf(0.0, mean, sd)
    where_like = where[:, location].T
    out = []
    for name, like in (
        ("ctc", ctc_like),
        ("compartment", where_like),
        ("ctc+compartment", ctc_like * where_like),
    ):
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
