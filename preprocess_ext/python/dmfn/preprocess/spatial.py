"""PLACEHOLDER (being implemented): resampling, window, ROI, measurements, views."""


class LesionMeasurements:
    pass


def _todo(*args, **kwargs):
    raise NotImplementedError


resample_isotropic = window = crop_roi = measure_lesion = orthogonal_views = _todo
