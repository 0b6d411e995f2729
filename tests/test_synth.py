"""Synthetic cohort generator (dmfn.synth): sampling, splits, files, appearance."""

from __future__ import annotations

import csv
import dataclasses
import json
import math
from collections import Counter
from pathlib import Path

import numpy as np
import pydicom
import pytest
from scipy import stats

from dmfn.client.io import load_dicom_series, load_mask, read_dicom_series
from dmfn.contract.taxonomy import COMPARTMENTS, load_taxonomy
from dmfn.synth import cli
from dmfn.synth.anatomy import LESION, render_chest
from dmfn.synth.cohort import (
    CONTRAST_AGENT,
    MANIFEST_COLUMNS,
    SPLITS,
    SYNTH_MANIFEST_COLUMNS,
    TABLE1,
    CohortGenerationError,
    PatientPlan,
    Subject,
    _rng,
    class_split_counts,
    generate_cohort,
    get_preset,
    manifest_row,
    plan_cohort,
    render_image,
    sample_acquisition,
    sample_subject,
)
from dmfn.synth.compartments import load_compartments, parse_compartments
from dmfn.synth.lesions import (
    APPEARANCES,
    lesion_values,
    paint_lesion,
    visible_fraction,
)
from dmfn.synth.placement import MIN_VISIBLE_FRACTION, check_grid

ROOT = Path(__file__).resolve().parents[1]
ARTIFACTS = ROOT / "test-artifacts" / "synth"
# Verbatim copies of the paper's tables live in tests/data.
TABLE1_CSV = Path(__file__).parent / "data" / "paper_table1.csv"
TAX = load_taxonomy()
SEED = 7


def _read_manifest(folder: Path) -> list[dict[str, str]]:
    with (folder / "manifest.csv").open() as fh:
        return list(csv.DictReader(fh))


@pytest.fixture(scope="module")
def tiny(tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("tiny")
    generate_cohort(out, "tiny", seed=SEED, workers=2)
    return out


# --------------------------------------------------------------------------- sampling
@pytest.fixture(scope="module")
def big_plan() -> list[PatientPlan]:
    return plan_cohort(6000, seed=11)


def test_class_frequencies_match_taxonomy(big_plan: list[PatientPlan]) -> None:
    counts = Counter(p.label for p in big_plan)
    observed = np.array([counts[c.name] for c in TAX.classes])
    freq = np.array([c.n_total for c in TAX.classes], float)
    expected = freq / freq.sum() * len(big_plan)
    assert stats.chisquare(observed, expected).pvalue > 1e-3


def test_ctc_per_class_matches_taxonomy(big_plan: list[PatientPlan]) -> None:
    for c in TAX.classes:
        values = np.array([p.ctc_level_pg_ml for p in big_plan if p.label == c.name])
        assert values.min() > 0.0
        if values.size < 40:
            continue
        # expected moments of N(mean, sd) truncated to > 0
        a = -c.ctc_mean_pg_ml / c.ctc_sd_pg_ml
        dist = stats.truncnorm(a, np.inf, loc=c.ctc_mean_pg_ml, scale=c.ctc_sd_pg_ml)
        se = dist.std() / math.sqrt(values.size)
        assert abs(values.mean() - dist.mean()) < 4.5 * se, c.name
        assert abs(values.std() / dist.std() - 1.0) < 0.25, c.name


def test_location_follows_the_compartment_table(big_plan: list[PatientPlan]) -> None:
    table = load_compartments()
    for c in TAX.classes:
        locs = [p.location for p in big_plan if p.label == c.name]
        probs = dict(zip(COMPARTMENTS, table.of(c.name), strict=True))
        assert {loc for loc in locs if probs[loc] == 0} == set(), c.name
        if len(locs) < 40:
            continue
        kept = [k for k in COMPARTMENTS if probs[k] > 0]
        observed = np.array([locs.count(k) for k in kept])
        expected = np.array([probs[k] for k in kept]) * len(locs)
        if observed.size > 1:
            assert stats.chisquare(observed, expected).pvalue > 1e-4, c.name


def test_age_and_sex_follow_table1_per_split(big_plan: list[PatientPlan]) -> None:
    for split in SPLITS:
        members = [p for p in big_plan if p.split == split]
        st = TABLE1[split]
        ages = np.array([p.age_years for p in members], float)
        assert abs(ages.mean() - st.age_mean) < 4.5 * st.age_sd / math.sqrt(ages.size) + 0.5
        assert abs(ages.std() / st.age_sd - 1.0) < 0.1
        male = np.mean([p.sex == "M" for p in members])
        se = math.sqrt(st.male_fraction * (1 - st.male_fraction) / len(members))
        assert abs(male - st.male_fraction) < 4.5 * se


def test_paper_sized_plan_has_paper_split_sizes_and_1500_images() -> None:
    plans = plan_cohort(1074, seed=3)
    sizes = Counter(p.split for p in plans)
    assert (sizes["train"], sizes["val"], sizes["test"]) == (434, 288, 352)
    images = Counter()
    for p in plans:
        images[p.split] += p.n_images
    assert (images["train"], images["val"], images["test"]) == (596, 419, 485)
    assert {p.n_images for p in plans} == {1, 2}


def test_paper_size_gives_table2_in_every_cell_and_other_sizes_scale_it() -> None:
    table2 = {c.name: (c.n_train, c.n_val, c.n_test) for c in TAX.classes}
    counts = Counter((p.label, p.split) for p in plan_cohort(1074, seed=9))
    for name, (train, val, test) in table2.items():
        assert (counts[name, "train"], counts[name, "val"], counts[name, "test"]) == (
            train,
            val,
            test,
        ), name
    total = sum(sum(v) for v in table2.values())
    for n in (30, 300):
        got = class_split_counts(n, TAX)
        assert got.sum() == n and (got.sum(axis=0) > 0).all()
        share = np.array(list(table2.values()), float) / total * n
        assert np.abs(got - share).max() < 1.0


@pytest.mark.parametrize("n", [3, 4, 7, 30])
def test_every_split_non_empty(n: int) -> None:
    assert {p.split for p in plan_cohort(n, seed=n)} == set(SPLITS)


def test_plan_is_deterministic_and_seed_dependent() -> None:
    assert plan_cohort(50, seed=5) == plan_cohort(50, seed=5)
    assert plan_cohort(50, seed=5) != plan_cohort(50, seed=6)


def test_table1_constants_match_reference_file() -> None:
    rows = {r["characteristic"]: r for r in csv.DictReader(TABLE1_CSV.read_text().splitlines())}
    for split, st in TABLE1.items():
        assert st.n_patients == int(rows["n_patients"][split])
        assert st.n_images == int(rows["n_ct_images"][split])
        assert st.age_mean == pytest.approx(float(rows["age_mean"][split]))
        assert st.age_sd == pytest.approx(float(rows["age_sd"][split]))
        assert st.male_fraction == pytest.approx(int(rows["male_n"][split]) / st.n_patients)
        assert st.ctc_mean == pytest.approx(float(rows["ctc_mean_pg_ml"][split]))
        assert st.ctc_sd == pytest.approx(float(rows["ctc_sd_pg_ml"][split]))
        assert st.locations == tuple(
            int(rows[f"location_{c}_n"][split]) for c in ("anterior", "middle", "posterior")
        )


def test_bad_arguments_raise_value_error(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="n_patients"):
        plan_cohort(2, seed=0)
    with pytest.raises(ValueError, match="preset"):
        get_preset("huge")
    with pytest.raises(ValueError, match="workers"):
        generate_cohort(tmp_path / "x", "tiny", workers=0)
    with pytest.raises(ValueError, match="seed"):
        generate_cohort(tmp_path / "x", "tiny", seed=-1)


# --------------------------------------------------------------------------- lesions
def _plan(label: str, location: str, index: int = 0, sex: str = "M") -> PatientPlan:
    group = next(c.group for c in TAX.classes if c.name == label)
    return PatientPlan(index, f"T{index}", label, group, "train", 10.0, 50, sex, location, 1)


def test_every_taxonomy_class_has_an_appearance() -> None:
    assert set(TAX.names) == set(APPEARANCES)


def test_lesion_sits_in_its_compartment() -> None:
    preset = get_preset("demo")
    table = load_compartments()
    for c in TAX.classes:
        places = [k for k, v in zip(COMPARTMENTS, table.of(c.name), strict=True) if v > 0]
        for location in places:
            for i in range(8):
                subject = sample_subject(_plan(c.name, location, i), SEED, preset, bake=False)
                got = subject.anatomy.compartment_of(tuple(subject.lesion.center))
                assert got == location, (c.name, location, i)


def test_lesion_size_capped_by_field_of_view() -> None:
    preset = get_preset("tiny")
    for i in range(10):
        subject = sample_subject(_plan("lymphoma", "anterior", i), SEED, preset, bake=False)
        assert subject.lesion.diameter_mm <= preset.max_lesion_mm + 1e-6


# --------------------------------------------------------------------------- lesion placement
def _rendered_visible_fraction(subject: Subject) -> float:
    """Visible fraction of the baked lesion, painted as in the images, on its check grid."""
    lesion = subject.lesion
    grid = check_grid(lesion.center, lesion.half_extent)
    inside, _ = lesion_values(lesion, grid)
    canvas = render_chest(subject.anatomy, grid, lambda cv: paint_lesion(lesion, cv))
    return float(np.count_nonzero(canvas.label == LESION) / np.count_nonzero(inside))


def test_visible_fraction_sees_organs_over_the_lesion() -> None:
    """The check itself: a small lesion moved into the heart or a vertebra is hidden, in a lung not."""
    subject = sample_subject(_plan("granuloma", "middle", 3), SEED, get_preset("demo"), bake=False)
    lesion, anatomy = subject.lesion, subject.anatomy
    assert lesion.diameter_mm <= 30.0
    assert visible_fraction(lesion, anatomy) >= MIN_VISIBLE_FRACTION
    heart = dataclasses.replace(lesion, center=np.array([18.0, -12.0, -58.0]))
    spine = dataclasses.replace(lesion, center=np.array([*anatomy.spine_center, 0.0]))
    lung = dataclasses.replace(lesion, center=np.array([-0.6 * anatomy.cavity_ax, 15.0, 40.0]))
    assert visible_fraction(heart, anatomy) < 0.05
    assert visible_fraction(spine, anatomy) < 0.05
    assert visible_fraction(lung, anatomy) > 0.95


@pytest.mark.parametrize(
    ("index", "location", "sex"),
    [(692, "middle", "M"), (692, "middle", "F"), (999, "anterior", "M"), (999, "anterior", "F")],
)
def test_paper_seed0_lesions_once_hidden_are_visible(index: int, location: str, sex: str) -> None:
    """Seed 0, paper preset: cysts drawn with these patient indices and compartments used to be
    painted over entirely (empty masks) before the placement rule; both sexes (the anatomy
    depends on it)."""
    preset = get_preset("paper")
    plan = PatientPlan(index, f"SYN{index + 1:05d}", "cyst", "benign", "train", 10.0, 50, sex,
                       location, 2)  # fmt: skip
    patient_id = plan.patient_id
    subject = sample_subject(plan, 0, preset)
    assert subject.anatomy.compartment_of(tuple(subject.lesion.center)) == location
    assert _rendered_visible_fraction(subject) >= MIN_VISIBLE_FRACTION
    lesion_mm3 = np.count_nonzero(subject.lesion.rho <= 1.0) * subject.lesion.field_mm**3
    first = None
    for k in range(plan.n_images):  # the written images: the mask keeps >= 70% of the volume
        rng = _rng(0, 1, plan.index, 10 + k)
        acq = sample_acquisition(rng, preset, subject.lesion, subject.table_z_mm, first)
        first = first or acq
        _, mask = render_image(subject, acq, rng)
        mask_mm3 = np.count_nonzero(mask) * float(np.prod(acq.spacing_mm))
        assert mask_mm3 >= MIN_VISIBLE_FRACTION * lesion_mm3, (patient_id, k)


def test_placements_of_many_patients_follow_the_rule() -> None:
    """Every lesion of 120 paper-preset patients sits in its compartment and is >= 70% visible."""
    preset = get_preset("paper")
    for plan in plan_cohort(preset.n_patients, 1)[:120]:
        subject = sample_subject(plan, 1, preset, bake=False)
        lesion = subject.lesion
        assert subject.anatomy.compartment_of(tuple(lesion.center)) == plan.location
        assert lesion.diameter_mm <= preset.max_lesion_mm + 1e-6
        fraction = visible_fraction(lesion, subject.anatomy)
        assert fraction >= MIN_VISIBLE_FRACTION, (plan.patient_id, plan.label, fraction)


def test_visibility_check_agrees_with_the_rendered_lesion() -> None:
    """The check uses the lobulated envelope; the baked lesion (with its margin field) agrees."""
    preset = get_preset("demo")
    for plan in plan_cohort(preset.n_patients, 2)[:12]:
        subject = sample_subject(plan, 2, preset)
        envelope = visible_fraction(subject.lesion, subject.anatomy)
        assert abs(_rendered_visible_fraction(subject) - envelope) < 0.05, plan.patient_id


def test_placement_is_deterministic_and_independent_of_baking() -> None:
    preset = get_preset("paper")
    for plan in plan_cohort(preset.n_patients, 0)[690:695]:
        a = sample_subject(plan, 0, preset, bake=False)
        b = sample_subject(plan, 0, preset)
        c = sample_subject(plan, 0, preset, bake=False)
        np.testing.assert_array_equal(a.lesion.center, b.lesion.center)
        np.testing.assert_array_equal(a.lesion.center, c.lesion.center)
        np.testing.assert_array_equal(a.lesion.half_extent, b.lesion.half_extent)
        assert a.anatomy == b.anatomy and a.lesion.field_seed == b.lesion.field_seed


def _median_lesion_hu(label: str, location: str, n: int = 4) -> list[float]:
    """Noise-free median HU of the baked lesion field of ``n`` patients."""
    preset = get_preset("demo")
    out = []
    for i in range(n):
        lesion = sample_subject(_plan(label, location, i), SEED, preset).lesion
        out.append(float(np.median(lesion.hu[lesion.rho <= 1.0])))
    return out


@pytest.mark.parametrize(
    ("label", "location", "lo", "hi"),
    [
        ("cyst", "anterior", -5.0, 65.0),
        ("lipoma", "anterior", -130.0, -75.0),
        ("thymoma_A", "anterior", 35.0, 95.0),
        ("thymoma_B3", "anterior", 25.0, 95.0),
        ("lymphoma", "middle", 30.0, 75.0),
        ("schwannoma", "posterior", 10.0, 60.0),
        ("carcinoid", "anterior", 55.0, 125.0),
    ],
)
def test_lesion_attenuation_matches_class(label: str, location: str, lo: float, hi: float) -> None:
    for median in _median_lesion_hu(label, location):
        assert lo <= median <= hi, (label, median)


def test_teratoma_has_fat_and_thymic_carcinoma_is_heterogeneous() -> None:
    preset = get_preset("demo")
    for i in range(3):
        les = sample_subject(_plan("mature_teratoma", "anterior", i), SEED, preset).lesion
        assert np.mean(les.hu[les.rho <= 1.0] < -50.0) > 0.01
    sd = {}
    for label in ("thymoma_A", "thymic_squamous_cell_carcinoma"):
        vals = []
        for i in range(3):
            les = sample_subject(_plan(label, "anterior", i), SEED, preset).lesion
            vals.append(float(np.std(les.hu[les.rho <= 1.0])))
        sd[label] = np.mean(vals)
    assert sd["thymic_squamous_cell_carcinoma"] > 1.5 * sd["thymoma_A"]


# --------------------------------------------------------------------------- the written cohort
@pytest.mark.slow
def test_manifest_columns_and_paths(tiny: Path) -> None:
    rows = _read_manifest(tiny)
    assert list(rows[0]) == list(SYNTH_MANIFEST_COLUMNS)
    assert set(MANIFEST_COLUMNS) < set(SYNTH_MANIFEST_COLUMNS)
    assert len({r["patient_id"] for r in rows}) == get_preset("tiny").n_patients
    for r in rows:
        assert (tiny / r["image_path"]).is_dir()
        assert (tiny / r["mask_path"]).is_file()
        assert (tiny / r["seg_path"]).is_file()
        assert r["sex"] in ("M", "F")
        assert r["location"] in COMPARTMENTS
        assert r["split"] in SPLITS
        assert r["group"] == TAX.classes[TAX.index(r["label"])].group
        assert float(r["ctc_level_pg_ml"]) > 0
    info = json.loads((tiny / "cohort.json").read_text())
    assert info["seed"] == SEED and info["preset"]["name"] == "tiny"
    assert info["n_images"] == len(rows) and "generator_version" in info


@pytest.mark.slow
def test_no_patient_in_two_splits(tiny: Path) -> None:
    rows = _read_manifest(tiny)
    split_of: dict[str, set[str]] = {}
    for r in rows:
        split_of.setdefault(r["patient_id"], set()).add(r["split"])
    assert all(len(s) == 1 for s in split_of.values())
    assert {r["split"] for r in rows} == set(SPLITS)


@pytest.mark.slow
def test_series_load_back_with_spacing_and_hu(tiny: Path) -> None:
    rows = _read_manifest(tiny)
    preset = get_preset("tiny")
    plans = {p.patient_id: p for p in plan_cohort(preset.n_patients, SEED)}
    for r in rows[:12]:  # re-rendering every image would double the cost of the cohort
        study = load_dicom_series(tiny / r["image_path"])
        plan = plans[r["patient_id"]]
        k = int(r["image_id"].rsplit("_", 1)[1]) - 1
        # re-render the same image: the written file must hold exactly those HU
        subject = sample_subject(plan, SEED, preset)
        first = None
        for j in range(k + 1):
            rng = _rng(SEED, 1, plan.index, 10 + j)
            acq = sample_acquisition(rng, preset, subject.lesion, subject.table_z_mm, first)
            first = first or acq
        hu, mask = render_image(subject, acq, rng)
        assert study.hu.shape == hu.shape
        np.testing.assert_allclose(study.spacing_mm, acq.spacing_mm, atol=1e-3)
        assert 0.6 - 1e-9 <= study.spacing_mm[1] <= 0.9 + 1e-9
        assert min(abs(study.spacing_mm[0] - s) for s in preset.slice_mm) < 1e-3
        np.testing.assert_array_equal(study.hu, hu)
        assert study.hu.min() >= -1024 and study.hu.max() <= 3071
        loaded_mask = load_mask(tiny / r["mask_path"], study)
        np.testing.assert_array_equal(loaded_mask, mask)
        assert loaded_mask.sum() > 0
        # physical sanity: air around the body, soft tissue / fluid / fat inside the lesion
        assert np.median(study.hu[:, :2, :2]) < -900 or np.median(study.hu) > -900
        lesion = study.hu[loaded_mask > 0].astype(float)
        assert -150.0 < np.median(lesion) < 200.0, r["label"]
    for r in rows:  # every series and mask loads, on the same grid; the SEG is the same mask
        study, reference = read_dicom_series(tiny / r["image_path"])
        nifti = load_mask(tiny / r["mask_path"], study)
        assert nifti.any()
        seg = load_mask(tiny / r["seg_path"], study, reference=reference)
        np.testing.assert_array_equal(seg, nifti)


@pytest.mark.slow
def test_headers_carry_sex_age_and_contrast_and_each_seg_its_series(tiny: Path) -> None:
    seg_uids = set()
    for r in _read_manifest(tiny):
        ct = pydicom.dcmread(next((tiny / r["image_path"]).glob("*.dcm")), stop_before_pixels=True)
        assert ct.PatientSex == r["sex"] and ct.PatientAge == f"{int(r['age_years']):03d}Y"
        assert ct.ContrastBolusAgent == CONTRAST_AGENT
        seg = pydicom.dcmread(tiny / r["seg_path"], stop_before_pixels=True)
        assert seg.ReferencedSeriesSequence[0].SeriesInstanceUID == ct.SeriesInstanceUID
        assert seg.SegmentSequence[0].SegmentAlgorithmType == "AUTOMATIC"
        assert seg.ContentDate == "20000101"
        seg_uids |= {seg.SeriesInstanceUID, seg.SOPInstanceUID}
    assert len(seg_uids) == 2 * len(_read_manifest(tiny))


@pytest.mark.slow
def test_series_read_by_simpleitk(tiny: Path) -> None:
    sitk = pytest.importorskip("SimpleITK")
    r = _read_manifest(tiny)[0]
    folder = tiny / r["image_path"]
    reader = sitk.ImageSeriesReader()
    reader.SetFileNames(reader.GetGDCMSeriesFileNames(str(folder)))
    image = reader.Execute()
    study = load_dicom_series(folder)
    np.testing.assert_array_equal(sitk.GetArrayFromImage(image), study.hu)  # (z, y, x)
    np.testing.assert_allclose(image.GetSpacing()[::-1], study.spacing_mm, atol=1e-3)
    np.testing.assert_allclose(image.GetOrigin(), study.origin_lps_mm, atol=1e-3)
    mask = sitk.ReadImage(str(tiny / r["mask_path"]))
    np.testing.assert_allclose(mask.GetOrigin(), image.GetOrigin(), atol=1e-3)
    np.testing.assert_array_equal(
        sitk.GetArrayFromImage(mask), load_mask(tiny / r["mask_path"], study)
    )


@pytest.mark.slow
def test_generation_independent_of_workers_and_deterministic(tmp_path: Path) -> None:
    a, b, c = tmp_path / "a", tmp_path / "b", tmp_path / "c"
    generate_cohort(a, "tiny", seed=3, workers=1, n_patients=3)
    generate_cohort(b, "tiny", seed=3, workers=2, n_patients=3)
    generate_cohort(c, "tiny", seed=4, workers=1, n_patients=3)
    assert (a / "manifest.csv").read_text() == (b / "manifest.csv").read_text()
    assert (a / "manifest.csv").read_text() != (c / "manifest.csv").read_text()
    for r in _read_manifest(a):
        sa = load_dicom_series(a / r["image_path"])
        sb = load_dicom_series(b / r["image_path"])
        np.testing.assert_array_equal(sa.hu, sb.hu)
        assert sa.spacing_mm == sb.spacing_mm and sa.image_id == sb.image_id
        assert (a / r["mask_path"]).read_bytes() == (b / r["mask_path"]).read_bytes()
        assert (a / r["seg_path"]).read_bytes() == (b / r["seg_path"]).read_bytes()


@pytest.mark.parametrize("workers", [1, 2])
def test_a_failing_patient_stops_the_run_and_is_named(tmp_path: Path, workers: int) -> None:
    """An unwritable output (a file where the images folder goes) fails in the first patient."""
    out = tmp_path / "out"
    out.mkdir()
    (out / "images").write_text("not a folder")
    with pytest.raises(CohortGenerationError, match=r"patient SYN0000\d \(") as exc:
        generate_cohort(out, "tiny", seed=3, workers=workers, n_patients=6, overwrite=True)
    assert exc.value.__cause__ is not None
    assert not (out / "manifest.csv").exists()
    assert cli.main(["--out", str(out), "--patients", "3", "--overwrite"]) == 1


def test_refuses_non_empty_output_unless_overwrite(tmp_path: Path) -> None:
    (tmp_path / "keep.txt").write_text("x")
    with pytest.raises(ValueError, match="not empty"):
        generate_cohort(tmp_path, "tiny", n_patients=3)
    assert cli.main(["--out", str(tmp_path), "--patients", "3"]) == 2
    assert cli.main(["--out", str(tmp_path), "--patients", "3", "--overwrite"]) == 0
    assert len(_read_manifest(tmp_path)) >= 3
    assert (tmp_path / "keep.txt").exists()


def test_cli_help_explains_every_option(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as exc:
        cli.main(["--help"])
    assert exc.value.code == 0
    text = capsys.readouterr().out
    for option in ("--preset", "--out", "--seed", "--workers", "--patients", "--overwrite"):
        assert option in text
    for preset in ("tiny", "demo", "paper"):
        assert preset in text


# --------------------------------------------------------------------------- renders
@pytest.mark.slow
def test_render_each_class_to_png() -> None:
    """Axial and coronal views through the lesion of two patients per class, mediastinal window.

    Saved to test-artifacts/synth/<class>.png for a human to check that each looks like CT and
    like its class.
    """
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    ARTIFACTS.mkdir(parents=True, exist_ok=True)
    preset = dataclasses.replace(
        get_preset("demo"), matrix=128, slice_mm=(2.0, 3.0), slice_weights=(0.5, 0.5)
    )
    for c in TAX.classes:
        fig, axes = plt.subplots(2, 2, figsize=(7, 7))
        probs = load_compartments().of(c.name)
        location = COMPARTMENTS[int(np.argmax(probs))]
        for i in range(2):
            plan = _plan(c.name, location, 100 + i, sex="MF"[i])
            subject = sample_subject(plan, SEED, preset)
            rng = _rng(SEED, 1, plan.index, 10)
            acq = sample_acquisition(rng, preset, subject.lesion, subject.table_z_mm)
            hu, mask = render_image(subject, acq, rng)
            assert mask.any()
            k = int(np.argmax(mask.sum(axis=(1, 2))))
            j = int(np.argmax(mask.sum(axis=(0, 2))))
            window = dict(cmap="gray", vmin=50 - 175, vmax=50 + 175)
            axes[i, 0].imshow(hu[k], **window)
            axes[i, 0].contour(mask[k], [0.5], colors="r", linewidths=0.4)
            axes[i, 0].set_title(f"axial, {acq.slice_mm:g} mm slices", fontsize=8)
            aspect = acq.slice_mm / acq.pixel_mm
            axes[i, 1].imshow(hu[::-1, j, :], aspect=aspect, **window)
            axes[i, 1].contour(mask[::-1, j, :], [0.5], colors="r", linewidths=0.4)
            axes[i, 1].set_title("coronal", fontsize=8)
            for ax in axes[i]:
                ax.axis("off")
        fig.suptitle(f"{c.display_name} ({location})", fontsize=10)
        fig.tight_layout()
        path = ARTIFACTS / f"{c.name}.png"
        fig.savefig(path, dpi=80)
        plt.close(fig)
        assert path.stat().st_size > 10_000


def test_appearance_table_is_data_for_every_class_of_the_taxonomy(tmp_path) -> None:
    import json

    from dmfn.contract.taxonomy import load_taxonomy
    from dmfn.synth.lesions import APPEARANCES, load_appearances

    assert list(APPEARANCES) == load_taxonomy().names
    for name, spec in APPEARANCES.items():
        assert spec.diameter_mm[0] < spec.diameter_mm[1], name
    bad = tmp_path / "bad.json"
    bad.write_text(json.dumps({"classes": {"cyst": {"diameter": [1, 2]}}}))
    with pytest.raises(ValueError, match="class 'cyst' has unknown fields \\['diameter'\\]"):
        load_appearances(bad)


# --------------------------------------------------------------------------- simulated readers
# The simulated readers' rates, correlation and case dependence: tests/test_readers.py.
@pytest.mark.slow
def test_generated_cohort_carries_labelled_simulated_readers(tiny: Path) -> None:
    info = json.loads((tiny / "cohort.json").read_text())
    assert "SIMULATED" in info["readers"]["note"]
    with (tiny / info["readers"]["file"]).open() as fh:
        rows = list(csv.DictReader(fh))
    test_ids = {r["patient_id"] for r in _read_manifest(tiny) if r["split"] == "test"}
    assert rows and {r["patient_id"] for r in rows} == test_ids


# --------------------------------------------------------------------- agreement with the paper
@pytest.mark.slow
def test_paper_dry_run_writes_table2_and_1500_images_in_seconds(tmp_path: Path, capsys) -> None:
    out = tmp_path / "paper"
    assert cli.main(["--preset", "paper", "--dry-run", "--out", str(out)]) == 0
    printed = capsys.readouterr().out
    assert "exactly the paper's Table 2" in printed and "Bayes-optimal" in printed
    rows = _read_manifest(out)
    assert len(rows) == 1500 and not (out / "images").exists()
    patients = {r["patient_id"]: (r["label"], r["split"]) for r in rows}
    counts = Counter(patients.values())
    for c in TAX.classes:
        assert [counts[c.name, s] for s in SPLITS] == [c.n_train, c.n_val, c.n_test], c.name
    info = json.loads((out / "cohort.json").read_text())
    assert info["dry_run"] is True and "DRY RUN" in info["note"]
    assert info["paper_agreement"]["table2_counts"]["exact"] is True
    # the same seed renders the same patients: the dry run's plan is the full run's
    assert rows[0] == {k: str(v) for k, v in manifest_row(plan_cohort(1074, 0)[0], 0).items()}


@pytest.mark.slow
def test_thymoma_grouping_regroups_types_a_and_ab_only(tmp_path: Path) -> None:
    table2 = load_taxonomy()
    other = load_taxonomy(grouping="thymoma_a_ab_benign")
    changed = [
        a.name for a, b in zip(table2.classes, other.classes, strict=True) if a.group != b.group
    ]
    assert changed == ["thymoma_A", "thymoma_AB"] and other.names == table2.names
    assert other.digest() != table2.digest()
    out = tmp_path / "regrouped"
    assert cli.main(["--preset", "tiny", "--patients", "200", "--dry-run", "--grouping",
                     "thymoma_a_ab_benign", "--out", str(out)]) == 0  # fmt: skip
    for r in _read_manifest(out):
        if r["label"] in ("thymoma_A", "thymoma_AB"):
            assert r["group"] == "benign"
    with pytest.raises(ValueError, match="argument 'grouping'"):
        load_taxonomy(grouping="who")


def test_compartment_table_is_replaceable_and_checked(tmp_path: Path, caplog) -> None:
    everywhere = tmp_path / "posterior.csv"
    everywhere.write_text(
        "class,anterior,middle,posterior\n" + "".join(f"{c.name},0,0,1\n" for c in TAX.classes)
    )
    out = tmp_path / "posterior"
    assert cli.main(["--patients", "30", "--dry-run", "--compartments", str(everywhere),
                     "--out", str(out)]) == 0  # fmt: skip
    assert {r["location"] for r in _read_manifest(out)} == {"posterior"}
    short = tmp_path / "short.csv"
    short.write_text("class,anterior,middle,posterior\ncyst,0.5,0.5,0\n")
    assert cli.main(["--dry-run", "--compartments", str(short), "--out", str(tmp_path / "x")]) == 2
    assert f"--compartments: {short} has no row for class(es)" in caplog.text
    with pytest.raises(ValueError, match="sum to 1"):
        parse_compartments("class,anterior,middle,posterior\ncyst,0.5,0.2,0\n", "t.csv")
    table = load_compartments()
    assert all(table.sources[n] for n in TAX.names), "every row names its source or 'assumption'"


def test_bayes_ceilings_credit_compartment_not_ctc() -> None:
    from dmfn.synth.ceilings import bayes_ceilings

    got = {c.features: c for c in bayes_ceilings(TAX, load_compartments(), n=40_000, seed=1)}
    assert got["ctc"].binary_auc == pytest.approx(0.668, abs=0.01)
    assert got["compartment"].binary_auc == pytest.approx(0.709, abs=0.015)
    assert got["ctc+compartment"].binary_auc == pytest.approx(0.801, abs=0.01)
    assert got["ctc+compartment"].hand_till_auc > got["ctc"].hand_till_auc


# --------------------------------------------------------------------------- contrast option
#: sha256 of the first four tiny-preset patients' first images (HU then mask bytes), seed 0, as
#: rendered by the generator before the ``contrast`` option existed (commit a35eec4): the default
#: (``enhanced``) must keep rendering exactly these.
ENHANCED_TINY_DIGEST = "aceb55a5879e8f1c289a52cc12c72214b7f7ef926212b8afd2af9b22a3ee280b"


def _first_images_digest(contrast: str | None) -> str:
    import hashlib

    from dmfn.synth.cohort import _rng, sample_acquisition, sample_subject

    preset = get_preset("tiny")
    h = hashlib.sha256()
    for plan in plan_cohort(preset.n_patients, 0)[:4]:
        options = {} if contrast is None else {"contrast": contrast}
        subject = sample_subject(plan, 0, preset, **options)
        rng = _rng(0, 1, plan.index, 10)
        acq = sample_acquisition(rng, preset, subject.lesion, subject.table_z_mm, None)
        hu, mask = render_image(subject, acq, rng)
        h.update(hu.tobytes())
        h.update(mask.tobytes())
    return h.hexdigest()


def test_default_contrast_renders_what_the_generator_rendered_before_the_option() -> None:
    assert _first_images_digest(None) == ENHANCED_TINY_DIGEST
    assert _first_images_digest("enhanced") == ENHANCED_TINY_DIGEST
    assert _first_images_digest("none") != ENHANCED_TINY_DIGEST


def test_default_cohort_files_do_not_mention_contrast(tmp_path: Path) -> None:
    default = generate_cohort(tmp_path / "a", "tiny", seed=0, dry_run=True, readers_per_group=0)
    none = generate_cohort(
        tmp_path / "b", "tiny", seed=0, dry_run=True, readers_per_group=0, contrast="none"
    )
    assert "contrast" not in json.loads((default.parent / "cohort.json").read_text())
    assert json.loads((none.parent / "cohort.json").read_text())["contrast"] == "none"
    # the same patients, images and paths: only the rendering differs
    assert default.read_bytes() == none.read_bytes()
    with pytest.raises(ValueError, match="contrast"):
        generate_cohort(tmp_path / "c", "tiny", contrast="arterial", dry_run=True)


def test_no_contrast_removes_the_enhancement_of_lesion_and_blood_pool() -> None:
    from dmfn.synth.cohort import UNENHANCED_ANATOMY_HU, sample_subject
    from dmfn.synth.difficulty import DEFAULT_APPEARANCE, load_difficulty

    difficulty = load_difficulty(DEFAULT_APPEARANCE)
    preset = get_preset("tiny")
    changed = 0
    for plan in plan_cohort(preset.n_patients, 0)[:6]:
        enhanced = sample_subject(plan, 0, preset)
        plain = sample_subject(plan, 0, preset, contrast="none")
        assert enhanced.lesion.hu is not None and plain.lesion.hu is not None
        excess = enhanced.lesion.hu - difficulty.unenhanced_hu
        enhancing = (excess > 0) & (excess <= difficulty.max_enhancement_hu * 1.25)
        # enhancing tissue drops to the unenhanced level; fat, fluid and calcium stay
        assert np.all(plain.lesion.hu[enhancing] <= enhanced.lesion.hu[enhancing] + 1e-3)
        assert np.allclose(plain.lesion.hu[~enhancing], enhanced.lesion.hu[~enhancing])
        assert not enhancing.any() or np.any(enhanced.lesion.hu - plain.lesion.hu > 1.0)
        changed += int(enhancing.any())
        assert (
            plain.anatomy.blood_hu == UNENHANCED_ANATOMY_HU["blood_hu"] < enhanced.anatomy.blood_hu
        )
        assert plain.lesion.diameter_mm == enhanced.lesion.diameter_mm  # same draws
    assert changed >= 3
