"""Synthetic mediastinal cohort: chest CT phantoms with class-specific lesions, CTC levels and
clinical facts sampled from the paper's Tables 1 and 2 (see ``cohort`` for what is sampled how).

Synthetic data are for pipeline checks only; they carry no clinical meaning.
"""

from dmfn.synth.cohort import (
    GENERATOR_VERSION,
    MANIFEST_COLUMNS,
    PRESETS,
    SYNTH_MANIFEST_COLUMNS,
    TABLE1,
    Acquisition,
    CohortGenerationError,
    PatientPlan,
    Preset,
    Subject,
    generate_cohort,
    generate_patient,
    get_preset,
    plan_cohort,
    render_image,
    sample_acquisition,
    sample_subject,
)
from dmfn.synth.lesions import (
    APPEARANCES,
    AppearanceSpec,
    Lesion,
    PlacementError,
    sample_lesion,
    visible_fraction,
)

__all__ = [
    "APPEARANCES",
    "GENERATOR_VERSION",
    "MANIFEST_COLUMNS",
    "PRESETS",
    "SYNTH_MANIFEST_COLUMNS",
    "TABLE1",
    "Acquisition",
    "AppearanceSpec",
    "CohortGenerationError",
    "Lesion",
    "PatientPlan",
    "PlacementError",
    "Preset",
    "Subject",
    "generate_cohort",
    "generate_patient",
    "get_preset",
    "plan_cohort",
    "render_image",
    "sample_acquisition",
    "sample_lesion",
    "sample_subject",
    "visible_fraction",
]
