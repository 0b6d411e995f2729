"""dmfn.preprocess: the preprocessing chain shared by training and serving.

Kernels run in the C++ extension ``dmfn.preprocess._core`` (OpenMP, GIL released); a plain NumPy
reference of every kernel lives in :mod:`dmfn.preprocess.reference`. Axes are (z, y, x), spacings
in mm in the same order, intensities in HU. The parameters (:class:`dmfn.contract.params.
PreprocessParams`) are part of the contract layer: they import without this extension.
"""

from .pde import denoise_pde, pde_stability_bound
from .pipeline import PreprocessedStudy, preprocess_request, preprocess_study
from .spatial import (
    LesionMeasurements,
    RoiCrop,
    crop_roi,
    isotropic_shape,
    measure_lesion,
    orthogonal_views,
    resample_isotropic,
    window,
)

__all__ = [
    "LesionMeasurements",
    "PreprocessedStudy",
    "RoiCrop",
    "crop_roi",
    "denoise_pde",
    "isotropic_shape",
    "measure_lesion",
    "orthogonal_views",
    "pde_stability_bound",
    "preprocess_request",
    "preprocess_study",
    "resample_isotropic",
    "window",
]
