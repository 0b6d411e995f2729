"""How hard the synthetic CT is to read (synth/difficulty.py): the confusable appearances change
the image only, the calibrated values come from the data file, the draws follow the knobs."""

from __future__ import annotations

import csv
import dataclasses
import json
from importlib import resources
from pathlib import Path

import numpy as np
import pytest

from dmfn.contract.taxonomy import load_taxonomy
from dmfn.synth.ceilings import bayes_ceilings
from dmfn.synth.cohort import (
    LOOKS_NAME,
    generate_cohort,
    get_preset,
    plan_cohort,
    render_image,
    sample_acquisition,
    sample_subject,
)
from dmfn.synth.compartments import load_compartments
from dmfn.synth.difficulty import (
    CONFUSIONS_FILE,
    PatientLook,
    draw_look,
    enhance,
    load_difficulty,
)

TAX = load_taxonomy()


def _data() -> dict:
    return json.loads(resources.files("dmfn.synth").joinpath("data", CONFUSIONS_FILE).read_text())


def test_the_calibrated_values_load_from_the_data_file() -> None:
    knobs = _data()["knobs"]
    calibrated = load_difficulty("calibrated", known=list(TAX.names))
    for name, value in knobs.items():
        assert getattr(calibrated, name) == pytest.approx(value), name
    assert calibrated.mode == "calibrated"
    easy = load_difficulty("easy")
    assert (easy.confusion_prob, easy.enhancement_spread, easy.hu_offset_sd_hu) == (0, 0, 0)
    assert set(calibrated.partners) == set(TAX.names)  # every class has its partners and reasons
    assert all(p.reason for partners in calibrated.partners.values() for p in partners)
    with pytest.raises(ValueError, match="argument 'appearance'"):
        load_difficulty("hard")


def test_a_bad_confusion_file_is_refused_naming_what(tmp_path: Path) -> None:
    data = _data()
    data["partners"]["cyst"].append(["no_such_class", 1.0, "x"])
    path = tmp_path / "c.json"
    path.write_text(json.dumps(data))
    with pytest.raises(ValueError, match="unknown class in 'cyst' -> 'no_such_class'"):
        load_difficulty(path=path, known=list(TAX.names))
    data = _data()
    data["knobs"]["confusion_prob"] = 1.5
    path.write_text(json.dumps(data))
    with pytest.raises(ValueError, match="confusion_prob"):
        load_difficulty(path=path)


def test_draws_follow_the_knobs() -> None:
    d = dataclasses.replace(load_difficulty(), confusion_prob=0.4, enhancement_spread=0.2)
    rng = np.random.default_rng(0)
    looks = [draw_look(rng, "cyst", d) for _ in range(20_000)]
    confused = [k.appearance for k in looks if k.appearance != "cyst"]
    assert len(confused) / len(looks) == pytest.approx(0.4, abs=0.015)
    weights = {p.label: p.weight for p in d.partners["cyst"]}
    for label, weight in weights.items():
        share = confused.count(label) / len(confused)
        assert share == pytest.approx(weight / sum(weights.values()), abs=0.02), label
    factors = np.array([k.enhancement for k in looks])
    assert factors.min() >= 0.8 and factors.max() <= 1.2
    offsets = np.array([k.hu_offset_hu for k in looks])
    assert offsets.std() == pytest.approx(d.hu_offset_sd_hu, rel=0.05)
    # the matrix the ceilings use says the same
    m = d.appearance_matrix(list(TAX.names))
    np.testing.assert_allclose(m.sum(axis=1), 1.0)
    assert m[TAX.names.index("cyst"), TAX.names.index("cyst")] == pytest.approx(0.6)


def test_enhancement_scales_enhancing_tissue_only() -> None:
    d = load_difficulty()
    hu = np.float32([-100.0, 10.0, 35.0, 60.0, 150.0, 600.0])  # fat, fluid, .., calcium
    out = enhance(hu, PatientLook("x", enhancement=1.2), d)
    np.testing.assert_allclose(out, [-100.0, 10.0, 35.0, 65.0, 173.0, 600.0])


@pytest.mark.slow
def test_confusable_appearances_change_the_image_only(tmp_path: Path) -> None:
    """For one seed, the calibrated and the easy cohort have the same patients (label, CTC, age,
    sex, compartment, images), and only the lesion's look differs."""
    calibrated = generate_cohort(
        tmp_path / "c", "tiny", seed=11, n_patients=40, dry_run=True, readers_per_group=0
    )
    easy = generate_cohort(
        tmp_path / "e",
        "tiny",
        seed=11,
        n_patients=40,
        dry_run=True,
        appearance="easy",
        readers_per_group=0,
    )
    assert calibrated.read_text() == easy.read_text()  # the manifests: every column
    rows = {
        name: list(csv.DictReader((tmp_path / name / LOOKS_NAME).read_text().splitlines()))
        for name in ("c", "e")
    }
    assert [r["patient_id"] for r in rows["c"]] == [r["patient_id"] for r in rows["e"]]
    assert all(r["appearance"] == r["label"] for r in rows["e"])
    if load_difficulty().confusion_prob > 0:
        assert any(r["confused"] == "true" for r in rows["c"])
    # the rendered image of a confused patient differs, its mask's compartment does not move
    preset = get_preset("tiny")
    plans = plan_cohort(40, 11)
    forced = dataclasses.replace(load_difficulty(), confusion_prob=1.0)
    plan = next(p for p in plans if forced.partners.get(p.label))
    a = sample_subject(plan, 11, preset, difficulty=load_difficulty("easy"))
    b = sample_subject(plan, 11, preset, difficulty=forced)
    assert a.look.appearance == plan.label and b.look.appearance != plan.label
    assert a.anatomy.body_ax == b.anatomy.body_ax and a.table_z_mm == b.table_z_mm
    assert a.lesion.compartment == b.lesion.compartment == plan.location
    rng = np.random.default_rng(0)
    acq = sample_acquisition(rng, preset, a.lesion, a.table_z_mm, None)
    hu_a, _ = render_image(a, acq, np.random.default_rng(1))
    hu_b, _ = render_image(b, acq, np.random.default_rng(1))
    assert not np.array_equal(hu_a, hu_b)


def test_the_image_ceiling_falls_with_the_confusion_probability() -> None:
    names = list(TAX.names)
    d = load_difficulty()
    got = []
    for p in (0.0, 0.3, 0.6):  # (at p = 1 the partners themselves become a code: not monotone)
        m = dataclasses.replace(d, confusion_prob=p).appearance_matrix(names)
        ceilings = {c.features: c for c in bayes_ceilings(TAX, load_compartments(), 20_000, 3, m)}
        got.append(ceilings["ct"].binary_auc)
        assert ceilings["ct+ctc+compartment"].binary_auc >= ceilings["ct"].binary_auc - 0.01
    assert got[0] == pytest.approx(1.0) and got[0] > got[1] > got[2]


def test_the_fused_ceiling_of_a_ct_score_of_given_auc() -> None:
    """The paper-facing computation: a useless CT score adds nothing to the tabular ceiling, a
    better one more, never past 1."""
    from dmfn.synth.ceilings import fused_binary_ceiling

    table = load_compartments()
    tabular = {c.features: c for c in bayes_ceilings(TAX, table, 40_000, 5)}["ctc+compartment"]
    values = [fused_binary_ceiling(TAX, table, a, 40_000, 5) for a in (0.5, 0.71, 0.9)]
    assert values[0] == pytest.approx(tabular.binary_auc, abs=0.01)
    assert values[0] < values[1] < values[2] < 1.0
    with pytest.raises(ValueError, match="ct_auc"):
        fused_binary_ceiling(TAX, table, 1.0)


def test_the_ceilings_auc_counts_pairs_like_the_rank_sum() -> None:
    """The ceilings' Mann-Whitney AUC (binary search in sorted scores) equals the rank-sum
    formula, ties counted one half, exactly."""
    from scipy import stats

    from dmfn.synth.ceilings import _auc

    rng = np.random.default_rng(4)
    for n1, n0 in ((1, 1), (7, 3), (400, 900)):
        positive = rng.integers(0, 12, n1).astype(float)  # many ties
        negative = rng.integers(0, 10, n0).astype(float)
        ranks = stats.rankdata(np.concatenate([positive, negative]))
        expected = (ranks[:n1].sum() - n1 * (n1 + 1) / 2) / (n1 * n0)
        assert _auc(positive, negative) == expected
