"""A new, untrained model for a set of classes and the tabular rows it will see.

The start of every model dmfn makes outside ``dmfn train``: the serving benchmark's models
(speed does not depend on the weights) and the tests' tiny models (trained a few steps).
"""

from __future__ import annotations

import numpy as np
from torch import nn

from .models import create_model, fit_standardisation


def untrained_model(
    kind: str, backbone: str, n_classes: int, tabular: np.ndarray, **fields: object
) -> nn.Module:
    """A new ``kind`` model (:func:`~dmfn.training.models.create_model`) with ``backbone`` and
    ``n_classes`` outputs, its tabular input standardised on ``tabular`` [N, K+5] (N >= 2 rows,
    the CTC levels in pg/ml then the clinical fields); ``fields`` are further model options.
    Its weights come from torch's global generator (seed it first for the same model)."""
    mean, std = fit_standardisation(tabular)
    return create_model(
        kind,
        backbone=backbone,
        n_classes=n_classes,
        n_tabular=tabular.shape[1],
        tabular_mean=mean,
        tabular_std=std,
        **fields,
    )
