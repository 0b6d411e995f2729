"""dmfn.preprocess: the preprocessing chain shared by training and serving.

Kernels run in the C++ extension ``dmfn.preprocess._core`` (OpenMP, GIL released); a plain NumPy
reference of every kernel lives in :mod:`dmfn.preprocess.reference`. Axes are (z, y, x), spacings
in mm in the same order, intensities in HU. The parameters (:class:`dmfn.contract.params.
PreprocessParams`) are part of the contract layer: they import without this extension.

The kernels return arrays whose memory (and their whole-volume scratch) comes from a small pool
of mapped buffers that is refilled when the arrays are freed, so repeated calls do not pay page
faults; :func:`release_cached_memory` hands the pooled buffers back to the OS.
"""

from dmfn.contract.params import pde_stability_bound

from . import _core
from .pde import denoise_pde
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


def release_cached_memory() -> None:
    """Unmap the buffers the C++ kernels keep for reuse (at most 3 of at least 1 MiB, 1 GiB in
    all; arrays still alive keep their memory and return it to the pool when freed)."""
    _core.release_cached_memory()


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
    "release_cached_memory",
    "resample_isotropic",
    "window",
]
