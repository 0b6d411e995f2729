"""dmfn.preprocess: the preprocessing chain shared by training and serving.

Kernels run in the C++ extension ``dmfn._preprocess`` (OpenMP, GIL released); a plain NumPy
reference of every kernel lives in :mod:`dmfn.preprocess.reference`. Axes are (z, y, x), spacings
in mm in the same order, intensities in HU.
"""

from .params import PreprocessParams
from .pde import denoise_pde, pde_stability_bound
from .pipeline import PreprocessedStudy, preprocess_study
from .spatial import (
    LesionMeasurements,
    crop_roi,
    measure_lesion,
    orthogonal_views,
    resample_isotropic,
    window,
)

__all__ = [
    "LesionMeasurements",
    "PreprocessParams",
    "PreprocessedStudy",
    "crop_roi",
    "denoise_pde",
    "measure_lesion",
    "orthogonal_views",
    "pde_stability_bound",
    "preprocess_study",
    "resample_isotropic",
    "window",
]
