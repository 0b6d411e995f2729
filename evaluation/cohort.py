"""The cohort table (the paper's Table 1) from a manifest, and AUCs by subgroup.

Per split (patients, not images): the number of patients and images, age (mean, SD), sex,
compartment and CTC level (mean, SD). Each of validation and test is tested against training:
chi-square for sex and compartment (Pearson, no continuity correction, as R ``chisq.test`` on an
r x 2 or r x 3 table with ``correct = FALSE``), Mann-Whitney U (two-sided, with the normal
approximation and tie correction as R ``wilcox.test(exact = FALSE, correct = TRUE)``) for age and
CTC.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
from scipy import stats

from dmfn.client.manifest import Manifest, ManifestRow
from dmfn.contract.schema import LOCATIONS, SEXES

from .analysis import SystemScores, too_few_for_ci
from .roc import auc_delong

#: Age bands of the subgroup analysis, years (lower bound inclusive).
AGE_BANDS: tuple[tuple[str, float, float], ...] = (
    ("<40", 0.0, 40.0),
    ("40-59", 40.0, 60.0),
    (">=60", 60.0, 200.0),
)


def _patients(rows: Sequence[ManifestRow]) -> list[ManifestRow]:
    """The first row of each patient (clinical facts are per patient)."""
    seen: dict[str, ManifestRow] = {}
    for r in rows:
        seen.setdefault(r.patient_id, r)
    return list(seen.values())


def _mean_sd(values: Sequence[float]) -> dict[str, float]:
    a = np.asarray(values, dtype=float)
    return {"mean": float(a.mean()), "sd": float(a.std(ddof=1)) if a.size > 1 else 0.0}


def _chi2(a: Sequence[str], b: Sequence[str], levels: Sequence[str]) -> float:
    table = np.array([[sum(x == lv for x in group) for lv in levels] for group in (a, b)])
    table = table[:, table.sum(axis=0) > 0]
    if table.shape[1] < 2:
        return 1.0
    return float(stats.chi2_contingency(table, correction=False).pvalue)


def _mann_whitney(a: Sequence[float], b: Sequence[float]) -> float:
    return float(
        stats.mannwhitneyu(
            a, b, alternative="two-sided", method="asymptotic", use_continuity=True
        ).pvalue
    )


def cohort_table(manifest: Manifest) -> dict[str, object]:
    """Table 1 of the cohort: per split statistics and tests of validation and test vs training."""
    splits = {s: _patients(manifest.split(s)) for s in ("train", "val", "test")}
    out: dict[str, object] = {"splits": {}, "tests_vs_train": {}}
    for name, patients in splits.items():
        if not patients:
            continue
        ctc = [r.ctc[0] for r in patients]
        out["splits"][name] = {  # type: ignore[index]
            "patients": len(patients),
            "images": len(manifest.split(name)),
            "age_years": _mean_sd([r.age_years for r in patients]),
            "male": sum(r.sex == "M" for r in patients),
            "location": {loc: sum(r.location == loc for r in patients) for loc in LOCATIONS},
            "ctc": _mean_sd(ctc),
            "malignant": sum(r.group == "malignant" for r in patients),
        }
    train = splits["train"]
    for name in ("val", "test"):
        other = splits[name]
        if not train or not other:
            continue
        out["tests_vs_train"][name] = {  # type: ignore[index]
            "age_mann_whitney_p": _mann_whitney(
                [r.age_years for r in train], [r.age_years for r in other]
            ),
            "ctc_mann_whitney_p": _mann_whitney(
                [r.ctc[0] for r in train], [r.ctc[0] for r in other]
            ),
            "sex_chi2_p": _chi2([r.sex for r in train], [r.sex for r in other], SEXES),
            "location_chi2_p": _chi2(
                [r.location for r in train], [r.location for r in other], LOCATIONS
            ),
        }
    return out


def subgroup_aucs(
    s: SystemScores, manifest: Manifest, positive: str = "malignant"
) -> dict[str, dict[str, object]]:
    """The binary AUC with its DeLong interval by sex, age band and compartment (subgroups with
    both classes only; the others are listed with their counts)."""
    facts = {r.patient_id: r for r in _patients(manifest.rows)}
    y, score = s.binary(positive)
    rows = [facts.get(p) for p in s.patient_ids]
    groups: dict[str, dict[str, object]] = {"sex": {}, "age": {}, "location": {}}
    keys = {
        "sex": lambda r: r.sex,
        "age": lambda r: next(n for n, lo, hi in AGE_BANDS if lo <= r.age_years < hi),
        "location": lambda r: r.location,
    }
    order = {"sex": SEXES, "age": tuple(n for n, _, _ in AGE_BANDS), "location": LOCATIONS}
    for kind, key in keys.items():
        values = [key(r) if r is not None else None for r in rows]
        present = {v for v in values if v is not None}
        # the natural order (bands by age, not as text), then any level the order lacks
        for level in [
            *(v for v in order[kind] if v in present),
            *sorted(present - set(order[kind])),
        ]:
            inside = np.array([v == level for v in values])
            n_pos, n_neg = int(y[inside].sum()), int((1 - y[inside]).sum())
            if n_pos and n_neg:
                auc: dict[str, object] = dict(auc_delong(y[inside], score[inside]).to_dict())
            else:
                auc = {"auc": None, "n_positive": n_pos, "n_negative": n_neg}
            auc["too_few_for_ci"] = too_few_for_ci(n_pos, n_neg)
            groups[kind][level] = auc
    return groups
