"""Synthetic cohort: patients, their CT images, patient-level splits, the manifest, in parallel.

Sampling (all driven by the taxonomy file and ``reference/cohort_table1.csv``):

- class: drawn with the taxonomy's patient frequencies (Table 2 totals);
- split: patient level, stratified by class, train/val/test in the paper's 434/288/352 ratio
  (a systematic allocation over the patients grouped by class, so every class is spread over
  the splits as evenly as its count allows and every split is non-empty from 3 patients on);
- age, sex: per split, from Table 1 (normal age clipped to 18-90 years);
- CTC level (pg/ml): the class's normal (mean, SD) of Table 2, truncated to > 0;
- location: the class's compartment probabilities; the lesion is placed in that compartment;
- images: per split, the fraction of patients with a second image matches Table 1
  (596/434, 419/288, 485/352 images per patient; 1500 images for 1074 patients). A second
  image is a new acquisition of the same lesion: other slice spacing, pixel spacing, noise and
  field of view, and a slight change of the patient's pose.

Determinism: the plan comes from ``SeedSequence(seed)``; each patient's anatomy, lesion and
acquisitions from ``SeedSequence(seed, spawn_key=(1, patient_index, stream))``, so the result
does not depend on the number of worker processes. Image arrays are (z, y, x), spacing mm, HU.
"""

from __future__ import annotations

import csv
import json
import logging
import math
import multiprocessing
import shutil
from collections.abc import Callable
from concurrent.futures import ProcessPoolExecutor, as_completed
from dataclasses import asdict, dataclass, replace
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
from scipy import ndimage

from dmfn.client.manifest import MANIFEST_COLUMNS, SPLITS
from dmfn.contract.errors import InvalidInput
from dmfn.contract.taxonomy import COMPARTMENTS, DEFAULT_GROUPING, Taxonomy, load_taxonomy
from dmfn.synth.anatomy import (
    LESION,
    ChestAnatomy,
    make_grid,
    render_chest,
    sample_anatomy,
)
from dmfn.synth.compartments import CompartmentTable, load_compartments
from dmfn.synth.difficulty import (
    DEFAULT_APPEARANCE,
    Difficulty,
    PatientLook,
    draw_look,
    enhance,
    load_difficulty,
)
from dmfn.synth.lesions import Lesion, mass_shift_mm, paint_lesion, sample_lesion

if TYPE_CHECKING:
    from dmfn.client.io.dicom import SeriesReference

log = logging.getLogger(__name__)

#: 2.0: confusable appearances, per-patient enhancement and scanner offset (synth/difficulty.py)
GENERATOR_VERSION = "2.1"  # 2.1: a DICOM SEG per mask; PatientSex/Age, contrast agent

MANIFEST_NAME = "manifest.csv"
#: The cohort manifest's columns: dmfn's manifest columns and ``seg_path``, the lesion mask as a
#: DICOM SEG of the image's series (``mask_path`` stays the NIfTI mask of the same voxels).
SYNTH_MANIFEST_COLUMNS: tuple[str, ...] = (
    *MANIFEST_COLUMNS[: MANIFEST_COLUMNS.index("mask_path") + 1],
    "seg_path",
    *MANIFEST_COLUMNS[MANIFEST_COLUMNS.index("mask_path") + 1 :],
)
#: ContrastBolusAgent of every synthetic series (the phantom's lesions are contrast-enhanced).
CONTRAST_AGENT = "IODINATED CONTRAST (synthetic)"
#: ``contrast`` options: ``enhanced`` (the default, 60-65 s after iodinated contrast) or ``none``
#: (the same patients scanned without contrast: an out-of-distribution acquisition, docs/ood.md).
CONTRASTS: tuple[str, ...] = ("enhanced", "none")
DEFAULT_CONTRAST = "enhanced"
#: Unenhanced attenuations (HU) of the enhancing anatomy when ``contrast`` is ``none``: blood
#: pool, myocardium and liver on a non-contrast chest CT (textbook values; fixed, so the draws of
#: the enhanced cohort are unchanged).
UNENHANCED_ANATOMY_HU = {
    "blood_hu": 40.0, "pa_hu": 40.0, "vein_hu": 40.0, "myocardium_hu": 40.0, "liver_hu": 60.0,
}  # fmt: skip
#: SegmentAlgorithmName of the synthetic masks.
SEG_ALGORITHM = "dmfn synth phantom"
INFO_NAME = "cohort.json"
#: Per patient: the class whose appearance its lesion took, the enhancement factor, the scanner
#: offset and the lesion's diameter (what makes a case hard to read; the simulated readers use it).
LOOKS_NAME = "appearance.csv"
LOOKS_COLUMNS = (
    "patient_id", "label", "appearance", "confused", "enhancement", "hu_offset_hu",
    "lesion_diameter_mm",
)  # fmt: skip
#: Thickest sub-slice (mm) rendered before averaging into a slice (partial-volume effect).
SUB_SLICE_MM = 1.25
HU_MIN, HU_MAX = -1024, 3071
#: Age limits (years) for the Table 1 normal.
AGE_RANGE = (18, 90)


@dataclass(frozen=True)
class Preset:
    """Size and acquisition settings of a generated cohort (mm where a length)."""

    name: str
    n_patients: int
    matrix: int  # in-plane pixels (square), a targeted mediastinal reconstruction
    pixel_mm: tuple[float, float] = (0.6, 0.9)
    slice_mm: tuple[float, ...] = (1.0, 1.25, 1.5, 2.0, 2.5, 3.0, 5.0)
    slice_weights: tuple[float, ...] = (0.14, 0.1, 0.1, 0.16, 0.16, 0.14, 0.2)
    z_margin_mm: tuple[float, float] = (10.0, 25.0)
    xy_margin_mm: float = 10.0

    @property
    def max_lesion_mm(self) -> float:
        """Largest lesion diameter that fits the largest field of view with its margin."""
        return self.matrix * self.pixel_mm[1] - 2.0 * self.xy_margin_mm


PRESETS: dict[str, Preset] = {
    "tiny": Preset(
        "tiny",
        30,
        96,
        slice_mm=(3.0, 5.0),
        slice_weights=(0.5, 0.5),
        z_margin_mm=(5.0, 10.0),
        xy_margin_mm=8.0,
    ),
    "demo": Preset("demo", 300, 160),
    "paper": Preset("paper", 1074, 192),
}


def get_preset(name: str, n_patients: int | None = None) -> Preset:
    """Preset ``name`` (tiny, demo, paper), optionally with another patient count (>= 3)."""
    if name not in PRESETS:
        raise ValueError(f"argument 'preset': must be one of {', '.join(PRESETS)}, got {name!r}")
    preset = PRESETS[name]
    if n_patients is not None:
        if int(n_patients) < 3:
            raise ValueError(
                f"argument 'n_patients': needs at least 3 (one per split), got {n_patients}"
            )
        preset = replace(preset, n_patients=int(n_patients))
    return preset


# ---------------------------------------------------------------------------------------------
# Table 1


@dataclass(frozen=True)
class SplitStats:
    """Table 1 column of one split: patients, CT images, age mean and SD (years), the fraction
    of men, and, not sampled but compared with what the generator gives, the CTC mean and SD
    (pg/ml) and the patients per compartment (anterior, middle, posterior)."""

    n_patients: int
    n_images: int
    age_mean: float
    age_sd: float
    male_fraction: float
    ctc_mean: float
    ctc_sd: float
    locations: tuple[int, int, int]


#: The paper's Table 1 per split (tests/data/paper_table1.csv holds the table; a test checks
#: these numbers against it). Table 1's CTC means cannot come from Table 2's class means mixed by
#: Table 2's own counts (docs/data.md); the generator follows Table 2, so it does not reproduce them.
TABLE1: dict[str, SplitStats] = {
    "train": SplitStats(434, 596, 53.81, 12.42, 197 / 434, 12.48, 5.23, (297, 94, 43)),
    "val": SplitStats(288, 419, 52.41, 13.63, 127 / 288, 11.02, 4.62, (211, 50, 27)),
    "test": SplitStats(352, 485, 53.76, 12.88, 162 / 352, 15.19, 6.58, (275, 54, 23)),
}


# ---------------------------------------------------------------------------------------------
# Planning (cheap, in the main process)


@dataclass(frozen=True)
class PatientPlan:
    """Everything drawn for a patient before any image is rendered."""

    index: int
    patient_id: str
    label: str
    group: str
    split: str
    ctc_level_pg_ml: float
    age_years: int
    sex: str
    location: str
    n_images: int


def _rng(seed: int, *key: int) -> np.random.Generator:
    return np.random.default_rng(np.random.SeedSequence(seed, spawn_key=key))


def class_split_counts(n_patients: int, taxonomy: Taxonomy) -> np.ndarray:
    """Patients per class and split [C, 3] (train, val, test): Table 2's counts
    (``n_train``, ``n_val``, ``n_test``) exactly when ``n_patients`` is their total, otherwise
    scaled to ``n_patients`` by largest remainders (every cell within one patient of its share,
    ties to the earlier cell), then every split given at least one patient."""
    table = np.array([[c.n_train, c.n_val, c.n_test] for c in taxonomy.classes], dtype=float)
    n = int(n_patients)
    share = table / table.sum() * n
    counts = np.floor(share).astype(np.int64)
    remainder = (share - counts).ravel()
    order = np.argsort(-remainder, kind="stable")[: n - int(counts.sum())]
    counts.ravel()[order] += 1
    for split in range(3):
        while counts[:, split].sum() == 0:
            # take a patient from the fullest cell of the fullest split (small n only)
            donor = int(np.argmax(counts.sum(axis=0)))
            cls = int(np.argmax(counts[:, donor]))
            counts[cls, donor] -= 1
            counts[cls, split] += 1
    return counts


def plan_cohort(
    n_patients: int,
    seed: int,
    taxonomy: Taxonomy | None = None,
    compartments: CompartmentTable | None = None,
) -> list[PatientPlan]:
    """Draw class, split, CTC, age, sex, location and image count for ``n_patients`` patients.
    Classes per split follow :func:`class_split_counts` (exactly Table 2 at the paper's size);
    patient order is shuffled."""
    if int(n_patients) < 3:
        raise ValueError(
            f"argument 'n_patients': needs at least 3 (one per split), got {n_patients}"
        )
    tax = taxonomy or load_taxonomy()
    table = compartments or load_compartments()
    table.check_covers(tax)
    for c in tax.classes:
        if c.n_total <= 0 or not c.ctc_sd_pg_ml > 0:
            raise ValueError(
                f"argument 'taxonomy': class {c.name!r} needs patient counts and a CTC mean/SD "
                "to be sampled"
            )
    rng = _rng(seed, 0)
    n = int(n_patients)
    counts = class_split_counts(n, tax)
    cells = [(c, s) for c in range(len(tax)) for s in range(3) for _ in range(counts[c, s])]
    order = rng.permutation(len(cells))
    labels = np.array([cells[i][0] for i in order])
    splits = np.array([cells[i][1] for i in order])

    n_images = np.ones(n, int)
    for k, split in enumerate(SPLITS):
        members = np.flatnonzero(splits == k)
        st = TABLE1[split]
        extra = round(members.size * (st.n_images / st.n_patients - 1.0))
        n_images[rng.permutation(members)[:extra]] += 1

    plans = []
    for i in range(n):
        cls = tax.classes[labels[i]]
        st = TABLE1[SPLITS[splits[i]]]
        age = round(float(np.clip(rng.normal(st.age_mean, st.age_sd), *AGE_RANGE)))
        sex = "M" if rng.random() < st.male_fraction else "F"
        ctc = _truncated_normal(rng, cls.ctc_mean_pg_ml, cls.ctc_sd_pg_ml)
        location = COMPARTMENTS[int(rng.choice(len(COMPARTMENTS), p=table.of(cls.name)))]
        plans.append(
            PatientPlan(
                index=i,
                patient_id=f"SYN{i + 1:05d}",
                label=cls.name,
                group=cls.group,
                split=SPLITS[splits[i]],
                ctc_level_pg_ml=max(round(ctc, 2), 0.01),  # > 0 after rounding too
                age_years=age,
                sex=sex,
                location=location,
                n_images=int(n_images[i]),
            )
        )
    return plans


def _truncated_normal(rng: np.random.Generator, mean: float, sd: float) -> float:
    """One draw of N(mean, sd) conditioned on > 0 (rejection; the paper's means are > 1 SD)."""
    while True:
        x = float(rng.normal(mean, sd))
        if x > 0.0:
            return x


# ---------------------------------------------------------------------------------------------
# Acquisition and rendering (in the workers)


@dataclass(frozen=True)
class Acquisition:
    """One CT reconstruction of a patient: grid (mm), pose, image quality."""

    pixel_mm: float
    slice_mm: float
    matrix: int
    x0_mm: float  # scanner x of column 0
    y0_mm: float  # scanner y of row 0
    z0_mm: float  # scanner z of slice 0
    n_slices: int
    pose_angle_rad: float
    pose_shift_mm: tuple[float, float, float]
    noise_hu: float  # SD of the CT noise in HU
    psf_mm: float  # in-plane Gaussian blur (SD, mm) of the reconstruction kernel

    @property
    def spacing_mm(self) -> tuple[float, float, float]:
        return (self.slice_mm, self.pixel_mm, self.pixel_mm)

    @property
    def origin_lps_mm(self) -> tuple[float, float, float]:
        return (self.x0_mm, self.y0_mm, self.z0_mm)


def sample_acquisition(
    rng: np.random.Generator,
    preset: Preset,
    lesion: Lesion,
    table_z_mm: float,
    first: Acquisition | None = None,
) -> Acquisition:
    """Draw a reconstruction that contains ``lesion`` with margins; ``first``: a repeat study."""
    ext = lesion.half_extent
    need = (2.0 * max(ext[0], ext[1]) + 2.0 * preset.xy_margin_mm) / preset.matrix
    pixel = float(np.clip(max(rng.uniform(*preset.pixel_mm), need), *preset.pixel_mm))
    choices = np.array(preset.slice_mm)
    weights = np.array(preset.slice_weights, float)
    if first is not None and len(choices) > 1:
        weights = np.where(choices == first.slice_mm, 0.0, weights)
    slice_mm = float(rng.choice(choices, p=weights / weights.sum()))
    if first is None:
        angle, shift = rng.normal(0.0, 0.01), np.array([rng.normal(0, 2), rng.normal(0, 2), 0.0])
    else:  # slight change of pose between the two studies
        angle = first.pose_angle_rad + rng.uniform(-0.05, 0.05)
        shift = np.array(first.pose_shift_mm) + rng.uniform(-5.0, 5.0, 3)
    shift = shift + np.array([0.0, 0.0, table_z_mm])
    c, s = math.cos(angle), math.sin(angle)
    cx, cy = lesion.center[0], lesion.center[1]
    centre = np.array([c * cx - s * cy, s * cx + c * cy]) + shift[:2]  # scanner coords
    # Field of view: between the mediastinum's centre and the lesion, still holding the lesion.
    fov = pixel * preset.matrix
    slack = max(fov / 2.0 - max(ext[0], ext[1]) - preset.xy_margin_mm, 0.0)
    toward_mid = -0.5 * (centre - shift[:2] - np.array([0.0, 10.0]))
    offset = np.clip(toward_mid + rng.normal(0.0, 5.0, 2), -slack, slack)
    fov_c = centre + offset
    z_lo = lesion.center[2] - ext[2] - rng.uniform(*preset.z_margin_mm) + shift[2]
    z_hi = lesion.center[2] + ext[2] + rng.uniform(*preset.z_margin_mm) + shift[2]
    n_slices = max(math.ceil((z_hi - z_lo) / slice_mm) + 1, 3)
    noise = float(np.clip(rng.uniform(10.0, 20.0) * math.sqrt(2.5 / slice_mm), 8.0, 32.0))
    return Acquisition(
        pixel_mm=round(pixel, 4),
        slice_mm=slice_mm,
        matrix=preset.matrix,
        x0_mm=round(float(fov_c[0] - pixel * (preset.matrix - 1) / 2.0), 3),
        y0_mm=round(float(fov_c[1] - pixel * (preset.matrix - 1) / 2.0), 3),
        z0_mm=round(float(z_lo), 3),
        n_slices=n_slices,
        pose_angle_rad=float(angle),
        pose_shift_mm=(float(shift[0]), float(shift[1]), float(shift[2] - table_z_mm)),
        noise_hu=noise,
        psf_mm=float(rng.uniform(0.45, 0.8)),
    )


@dataclass(frozen=True)
class Subject:
    """A patient's anatomy, lesion and look (shared by all of the patient's images)."""

    anatomy: ChestAnatomy
    lesion: Lesion
    table_z_mm: float
    look: PatientLook | None = None


def sample_look(plan: PatientPlan, seed: int, difficulty: Difficulty) -> PatientLook:
    """The patient's appearance, enhancement and scanner offset (its own random stream, so the
    plan and the other draws are the same in every appearance mode)."""
    return draw_look(_rng(seed, 1, plan.index, 3), plan.label, difficulty)


def sample_subject(
    plan: PatientPlan,
    seed: int,
    preset: Preset,
    bake: bool = True,
    difficulty: Difficulty | None = None,
    contrast: str = DEFAULT_CONTRAST,
) -> Subject:
    """The patient-level random draws of ``plan`` (deterministic for ``seed``).

    The lesion is drawn with the appearance of :func:`sample_look` (``difficulty``: default the
    calibrated mode) in the patient's own compartment, and its HU get the patient's enhancement.
    ``bake=False`` skips evaluating the lesion on its grid (geometry only, not renderable).
    ``contrast="none"``: the same draws, with the lesion's enhancement removed (enhancing tissue
    at ``unenhanced_hu``) and the blood pool, heart and liver at :data:`UNENHANCED_ANATOMY_HU`.
    """
    _check_contrast(contrast)
    difficulty = difficulty or load_difficulty(DEFAULT_APPEARANCE)
    look = sample_look(plan, seed, difficulty)
    anatomy = sample_anatomy(_rng(seed, 1, plan.index, 0), plan.sex)
    lesion = sample_lesion(
        _rng(seed, 1, plan.index, 1),
        look.appearance,
        plan.location,
        anatomy,
        preset.max_lesion_mm,
        bake=bake,
    )
    if bake and lesion.hu is not None:
        factor = look if contrast == DEFAULT_CONTRAST else replace(look, enhancement=0.0)
        lesion = replace(lesion, hu=enhance(lesion.hu, factor, difficulty))
    if contrast != DEFAULT_CONTRAST:
        anatomy = replace(anatomy, **UNENHANCED_ANATOMY_HU)
    anatomy = replace(anatomy, mass_shift_mm=mass_shift_mm(lesion, anatomy))
    table_z = float(_rng(seed, 1, plan.index, 2).uniform(-350.0, -150.0))
    return Subject(anatomy, lesion, table_z, look)


def _check_contrast(contrast: str) -> None:
    if contrast not in CONTRASTS:
        raise InvalidInput("contrast", f"must be one of {list(CONTRASTS)}, got {contrast!r}")


def render_image(
    subject: Subject, acq: Acquisition, rng: np.random.Generator
) -> tuple[np.ndarray, np.ndarray]:
    """Render one acquisition: (hu int16 (z, y, x) HU, mask uint8 (z, y, x) lesion = 1).

    Each slice averages ``ceil(slice_mm / 1.25)`` thin sub-slices (partial volume across the
    slice thickness), then gets the in-plane blur of the reconstruction kernel and correlated
    Gaussian noise of SD ``acq.noise_hu``. A voxel belongs to the mask when at least half of its
    sub-slices are lesion.
    """
    n_sub = max(1, math.ceil(acq.slice_mm / SUB_SLICE_MM - 1e-9))
    sub = (np.arange(n_sub) + 0.5) / n_sub - 0.5  # sub-slice offsets (fraction of the slice)
    z = acq.z0_mm + (np.arange(acq.n_slices)[:, None] + sub[None, :]) * acq.slice_mm
    x = acq.x0_mm + np.arange(acq.matrix) * acq.pixel_mm
    y = acq.y0_mm + np.arange(acq.matrix) * acq.pixel_mm
    grid = make_grid(
        x,
        y,
        z.ravel(),
        acq.pose_angle_rad,
        np.add(acq.pose_shift_mm, (0.0, 0.0, subject.table_z_mm)),
    )
    canvas = render_chest(subject.anatomy, grid, lambda cv: paint_lesion(subject.lesion, cv))
    shape4 = (acq.n_slices, n_sub, acq.matrix, acq.matrix)
    hu = canvas.hu.reshape(shape4).mean(axis=1)
    if subject.look is not None and subject.look.hu_offset_hu:
        body = hu > -900.0  # the scanner's calibration shifts tissue, not the air around it
        hu[body] += np.float32(subject.look.hu_offset_hu)
    mask = ((canvas.label == LESION).reshape(shape4).mean(axis=1) >= 0.5).astype(np.uint8)
    psf_px = acq.psf_mm / acq.pixel_mm
    hu = ndimage.gaussian_filter(hu, (0.0, psf_px, psf_px))
    noise = ndimage.gaussian_filter(
        rng.standard_normal(hu.shape, dtype=np.float32), (0.0, 0.75, 0.75)
    )
    noise *= acq.noise_hu / max(float(noise.std()), 1e-6)
    out = np.clip(np.rint(hu + noise), HU_MIN, HU_MAX).astype(np.int16)
    return out, mask


# ---------------------------------------------------------------------------------------------
# Writing


@dataclass(frozen=True)
class ImageRecord:
    """One manifest row plus the acquisition it came from and the patient's looks row."""

    row: dict[str, str]
    acquisition: Acquisition
    looks: dict[str, str] | None = None


def generate_patient(
    plan: PatientPlan,
    seed: int,
    preset: Preset,
    out_dir: str | Path,
    difficulty: Difficulty | None = None,
    contrast: str = DEFAULT_CONTRAST,
) -> list[ImageRecord]:
    """Render and write all images of one patient under ``out_dir``; return their records.

    Each image is a DICOM CT series (PatientSex, PatientAge and a ContrastBolusAgent in its
    headers), its lesion mask as NIfTI (``mask_path``) and as a DICOM SEG of that series
    (``seg_path``, SegmentAlgorithmType AUTOMATIC), all with UIDs from :func:`_uid_entropy`.
    ``contrast="none"`` renders the patient without contrast (no ContrastBolusAgent).
    """
    from dmfn.client.io.dicom_write import write_dicom_series
    from dmfn.client.io.nifti import write_nifti_mask
    from dmfn.client.io.seg import write_dicom_seg

    out_dir = Path(out_dir)
    subject = sample_subject(plan, seed, preset, difficulty=difficulty, contrast=contrast)
    records = []
    first = None
    for k in range(plan.n_images):
        rng = _rng(seed, 1, plan.index, 10 + k)
        acq = sample_acquisition(rng, preset, subject.lesion, subject.table_z_mm, first)
        first = first or acq
        hu, mask = render_image(subject, acq, rng)
        row = manifest_row(plan, k)
        image_id = row["image_id"]
        if not mask.any():  # the placement rule (lesions.sample_lesion) should prevent this
            raise RuntimeError(
                f"image {image_id}: the lesion mask is empty (the anatomy hides the lesion)"
            )
        image_rel, mask_rel = Path(row["image_path"]), Path(row["mask_path"])
        paths = write_dicom_series(
            hu,
            acq.spacing_mm,
            out_dir / image_rel,
            origin_lps_mm=acq.origin_lps_mm,
            patient_id=plan.patient_id,
            uid_entropy=_uid_entropy(seed, image_id),
            description=f"synthetic chest CT {image_id} (dmfn synth, not a patient)",
            series_number=k + 1,
            patient_sex=plan.sex,
            patient_age_years=plan.age_years,
            contrast_agent=CONTRAST_AGENT if contrast == DEFAULT_CONTRAST else "",
        )
        (out_dir / mask_rel).parent.mkdir(parents=True, exist_ok=True)
        write_nifti_mask(mask, acq.spacing_mm, out_dir / mask_rel, origin_lps_mm=acq.origin_lps_mm)
        write_dicom_seg(
            mask,
            _written_series(paths),
            out_dir / row["seg_path"],
            algorithm=SEG_ALGORITHM,
            uid_entropy=_uid_entropy(seed, image_id),
            series_number=100 + k + 1,
            overwrite=True,
        )
        records.append(ImageRecord(row, acq, looks_row(plan, subject)))
    return records


def looks_row(plan: PatientPlan, subject: Subject) -> dict[str, str]:
    """The :data:`LOOKS_NAME` row of a patient."""
    look = subject.look or PatientLook(plan.label)
    return {
        "patient_id": plan.patient_id,
        "label": plan.label,
        "appearance": look.appearance,
        "confused": str(look.appearance != plan.label).lower(),
        "enhancement": f"{look.enhancement:.3f}",
        "hu_offset_hu": f"{look.hu_offset_hu:.1f}",
        "lesion_diameter_mm": f"{subject.lesion.diameter_mm:.1f}",
    }


def _looks_only(plan: PatientPlan, seed: int, preset: Preset, difficulty: Difficulty) -> dict:
    """A dry run's looks row: the same draws without rendering (geometry only)."""
    return looks_row(plan, sample_subject(plan, seed, preset, bake=False, difficulty=difficulty))


def manifest_row(plan: PatientPlan, k: int) -> dict[str, str]:
    """The manifest row of image ``k`` (0-based) of ``plan`` (paths relative to the cohort)."""
    image_id = f"{plan.patient_id}_{k + 1}"
    return {
        "patient_id": plan.patient_id,
        "image_id": image_id,
        "image_path": (Path("images") / plan.patient_id / image_id).as_posix(),
        "mask_path": (Path("masks") / f"{image_id}.nii.gz").as_posix(),
        "seg_path": (Path("masks") / f"{image_id}_seg.dcm").as_posix(),
        "ctc_level_pg_ml": f"{plan.ctc_level_pg_ml:.2f}",
        "age_years": str(plan.age_years),
        "sex": plan.sex,
        "location": plan.location,
        "label": plan.label,
        "group": plan.group,
        "split": plan.split,
    }


def _written_series(paths: list[Path]) -> SeriesReference:
    """The :class:`SeriesReference` of a series just written (headers read back without pixel
    data, sorted along the normal; :func:`write_dicom_series` writes axial, z ascending)."""
    from dmfn.client.io.dicom import series_reference_of_files

    return series_reference_of_files(paths)


def _uid_entropy(seed: int, image_id: str) -> str:
    """The seed of every DICOM UID of one image: unique per image, the same for the same seed.

    Each image is its own study (the second image of a patient is a repeat study), so its
    StudyInstanceUID, SeriesInstanceUID, FrameOfReferenceUID and SOPInstanceUIDs all derive
    from this string and never collide with another image's, within or across patients.
    """
    return f"dmfn-synth:{seed}:{image_id}"


ProgressCallback = Callable[[int], None]


class CohortGenerationError(RuntimeError):
    """Generating one patient's images failed; the message names the patient."""


def _patient_failed(plan: PatientPlan, err: BaseException) -> CohortGenerationError:
    return CohortGenerationError(
        f"patient {plan.patient_id} ({plan.label}, {plan.location}) failed: "
        f"{type(err).__name__}: {err}"
    )


def generate_cohort(
    out_dir: str | Path,
    preset: str | Preset = "tiny",
    seed: int = 0,
    workers: int = 1,
    n_patients: int | None = None,
    overwrite: bool = False,
    readers_per_group: int = 2,
    progress: ProgressCallback | None = None,
    dry_run: bool = False,
    grouping: str = DEFAULT_GROUPING,
    compartments: str | Path | CompartmentTable | None = None,
    appearance: str = DEFAULT_APPEARANCE,
    confusions: str | Path | None = None,
    contrast: str = DEFAULT_CONTRAST,
) -> Path:
    """Generate a cohort into ``out_dir``; return the manifest path.

    ``dry_run`` plans the patients and writes ``manifest.csv``, ``cohort.json`` and the
    simulated readers without rendering any image (seconds; the image and mask paths are those a
    full run with the same seed would write). ``grouping`` regroups the taxonomy
    (:data:`dmfn.contract.taxonomy.GROUPINGS`; the manifest's ``group`` column follows it);
    ``compartments`` replaces the compartment table (:mod:`dmfn.synth.compartments`);
    ``appearance`` is ``calibrated`` (the default: confusable appearances, enhancement and scanner
    spread, :mod:`dmfn.synth.difficulty`) or ``easy`` (none of them: a toy for smoke tests);
    ``confusions`` replaces the data file of the calibrated mode (the calibration uses it);
    ``contrast="none"`` renders the same patients without contrast enhancement (recorded in
    ``cohort.json``; the default ``enhanced`` writes exactly what it wrote before the option).

    Writes ``images/<patient>/<image>/`` (a DICOM CT series each), ``masks/<image>.nii.gz``,
    ``manifest.csv`` (columns :data:`SYNTH_MANIFEST_COLUMNS`, paths relative to it) and
    ``cohort.json`` (generator version, seed, preset, counts). ``workers`` processes render the
    patients (1 = in this process); ``progress(n)`` is called after each patient with the number
    of images just written. Refuses a non-empty ``out_dir`` unless ``overwrite``, which first
    removes the generator's own outputs there. The first patient that fails stops the run
    (patients not started yet are cancelled, no manifest is written): CohortGenerationError
    naming the patient, chained to the worker's error.
    """
    if not isinstance(preset, Preset):
        preset = get_preset(preset, n_patients)
    elif n_patients is not None:
        preset = replace(preset, n_patients=int(n_patients))
    if not isinstance(readers_per_group, int) or readers_per_group < 0:
        raise InvalidInput(
            "readers_per_group", f"must be an integer >= 0, got {readers_per_group!r}"
        )
    if int(workers) < 1:
        raise InvalidInput("workers", f"must be >= 1, got {workers}")
    if not isinstance(seed, int) or seed < 0:
        raise InvalidInput("seed", f"must be a non-negative int, got {seed!r}")
    _check_contrast(contrast)
    out = Path(out_dir)
    if out.exists() and not out.is_dir():
        raise InvalidInput("out_dir", f"{out} exists and is not a directory")
    if out.is_dir() and any(out.iterdir()):
        if not overwrite:
            raise InvalidInput(
                "out_dir",
                f"{out} is not empty (pass {{overwrite}} to replace a previous cohort)",
                mentions={"overwrite": "overwrite=True"},
            )
        for name in ("images", "masks"):
            shutil.rmtree(out / name, ignore_errors=True)
        for name in (MANIFEST_NAME, INFO_NAME, LOOKS_NAME, "readers_simulated.csv"):
            (out / name).unlink(missing_ok=True)
    out.mkdir(parents=True, exist_ok=True)

    from dmfn.synth.paper_agreement import cohort_report

    taxonomy = load_taxonomy(grouping=grouping)
    table = (
        compartments
        if isinstance(compartments, CompartmentTable)
        else load_compartments(compartments)
    )
    difficulty = load_difficulty(appearance, confusions, known=list(taxonomy.names))
    plans = plan_cohort(preset.n_patients, seed, taxonomy, table)
    results: dict[int, list[ImageRecord]] = {}
    looks: dict[int, dict[str, str]] = {}
    if dry_run:
        rows = [manifest_row(p, k) for p in plans for k in range(p.n_images)]
        looks = {p.index: _looks_only(p, seed, preset, difficulty) for p in plans}
    elif workers == 1:
        for plan in plans:
            try:
                results[plan.index] = generate_patient(
                    plan, seed, preset, out, difficulty, contrast
                )
            except Exception as err:
                raise _patient_failed(plan, err) from err
            if progress:
                progress(len(results[plan.index]))
    else:
        ctx = multiprocessing.get_context("spawn")
        with ProcessPoolExecutor(max_workers=int(workers), mp_context=ctx) as pool:
            futures = {
                pool.submit(generate_patient, p, seed, preset, out, difficulty, contrast): p
                for p in plans
            }
            for fut in as_completed(futures):
                plan = futures[fut]
                try:
                    results[plan.index] = fut.result()
                except Exception as err:
                    # fail fast: drop the patients not started yet (running ones finish)
                    pool.shutdown(wait=True, cancel_futures=True)
                    raise _patient_failed(plan, err) from err
                if progress:
                    progress(len(results[plan.index]))

    if not dry_run:
        rows = [rec.row for i in sorted(results) for rec in results[i]]
        looks = {i: recs[0].looks for i, recs in results.items() if recs and recs[0].looks}
    with (out / LOOKS_NAME).open("w", newline="") as fh:
        writer = csv.DictWriter(fh, fieldnames=LOOKS_COLUMNS, lineterminator="\n")
        writer.writeheader()
        writer.writerows(looks[i] for i in sorted(looks))
    manifest = out / MANIFEST_NAME
    with manifest.open("w", newline="") as fh:
        writer = csv.DictWriter(fh, fieldnames=SYNTH_MANIFEST_COLUMNS, lineterminator="\n")
        writer.writeheader()
        writer.writerows(rows)
    info = {
        "generator": "dmfn.synth",
        "generator_version": GENERATOR_VERSION,
        "seed": seed,
        "preset": asdict(preset),
        "n_patients": len(plans),
        "n_images": len(rows),
        "patients_per_split": {s: sum(p.split == s for p in plans) for s in SPLITS},
        "taxonomy_sha256": taxonomy.digest(),
        "grouping": grouping,
        "difficulty": difficulty.knobs(),
        **({} if contrast == DEFAULT_CONTRAST else {"contrast": contrast}),
        "dry_run": dry_run,
        "note": "synthetic data for pipeline checks; not patients, no clinical meaning"
        + ("; DRY RUN: the manifest's images and masks were not rendered" if dry_run else ""),
        "paper_agreement": cohort_report(
            plans, taxonomy, table, appearance=difficulty.appearance_matrix(list(taxonomy.names))
        ),
    }
    if readers_per_group:
        from dmfn.synth.readers import READERS_FILE, simulate_readers

        looks_by_patient = {row["patient_id"]: row for row in looks.values()}
        simulate_readers(plans, looks_by_patient, seed, out, readers_per_group, taxonomy=taxonomy)
        info["readers"] = {
            "file": READERS_FILE,
            "per_group": readers_per_group,
            "note": "SIMULATED readers: case-dependent calls (the lesion's look and size; with "
            "CTC, its CTC level) with readers of a group correlated, each group's rates solved "
            "on this cohort to the paper's figures (synth/data/reader_study.csv, "
            "docs/readers.md)",
        }
    (out / INFO_NAME).write_text(json.dumps(info, indent=2) + "\n")
    if dry_run:
        log.info("planned %d images of %d patients into %s (dry run)", len(rows), len(plans), out)
    else:
        log.info("wrote %d images of %d patients to %s", len(rows), len(plans), out)
    return manifest


__all__ = [
    "COMPARTMENTS",
    "CONTRASTS",
    "MANIFEST_COLUMNS",
    "PRESETS",
    "SYNTH_MANIFEST_COLUMNS",
    "Acquisition",
    "CohortGenerationError",
    "PatientPlan",
    "Preset",
    "Subject",
    "generate_cohort",
    "generate_patient",
    "get_preset",
    "plan_cohort",
    "render_image",
    "sample_acquisition",
    "sample_subject",
]
