"""The tabular branch: CTC features + clinical facts -> standardised -> MLP -> embedding.

The input row is the ``TABULAR`` tensor of :mod:`dmfn.contract.schema`: the K CTC features (pg/ml)
followed by the clinical fields (age in years, sex 1 = male, location one-hot anterior / middle /
posterior). Standardisation constants (mean, std per column) come from the training split and live
in registered buffers, so they are saved with the weights and exported with the graph.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import torch
from torch import nn

#: A column whose training-split standard deviation is below this is left unscaled (std = 1).
MIN_STD = 1e-6


def _as_vector(
    value: Sequence[float] | np.ndarray | torch.Tensor, name: str, n: int
) -> torch.Tensor:
    t = torch.as_tensor(np.asarray(value, dtype=np.float64)).to(torch.float32)
    if t.ndim != 1 or t.numel() != n:
        raise ValueError(
            f"argument '{name}': must be a vector of length {n}, got shape {tuple(t.shape)}"
        )
    if not bool(torch.isfinite(t).all()):
        raise ValueError(f"argument '{name}': must be finite, got {t.tolist()}")
    return t


def fit_standardisation(
    features: np.ndarray | torch.Tensor,
) -> tuple[list[float], list[float]]:
    """Per-column mean and std of training-split rows ``[N, T]`` (N >= 2).

    Columns whose std is below :data:`MIN_STD` (e.g. a location never seen in training) get std 1
    so that they pass through centred but unscaled. Returns plain lists (JSON-serialisable, for
    the model config).

    Raises:
        ValueError: not 2-D, fewer than 2 rows, or non-finite values.
    """
    x = np.asarray(features.detach().cpu() if isinstance(features, torch.Tensor) else features)
    if x.ndim != 2 or x.shape[0] < 2 or x.shape[1] < 1:
        raise ValueError(f"argument 'features': must have shape [N >= 2, T >= 1], got {x.shape}")
    x = x.astype(np.float64)
    if not np.isfinite(x).all():
        raise ValueError("argument 'features': must be finite (impute missing values first)")
    mean = x.mean(axis=0)
    std = x.std(axis=0, ddof=0)
    std = np.where(std < MIN_STD, 1.0, std)
    return mean.tolist(), std.tolist()


class Standardise(nn.Module):
    """``(x - mean) / std`` with constants in buffers ``mean`` and ``std`` ([T] float32)."""

    mean: torch.Tensor
    std: torch.Tensor

    def __init__(
        self,
        mean: Sequence[float] | np.ndarray | torch.Tensor,
        std: Sequence[float] | np.ndarray | torch.Tensor,
        n_features: int,
    ) -> None:
        super().__init__()
        mean_t = _as_vector(mean, "tabular_mean", n_features)
        std_t = _as_vector(std, "tabular_std", n_features)
        if bool((std_t <= 0).any()):
            raise ValueError(
                f"argument 'tabular_std': every entry must be > 0, got {std_t.tolist()}"
            )
        self.register_buffer("mean", mean_t)
        self.register_buffer("std", std_t)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return (x - self.mean) / self.std


class TabularEncoder(nn.Module):
    """Standardise -> Linear -> ReLU -> Dropout -> Linear -> ReLU: ``[B, T]`` -> ``[B, embed_dim]``."""

    def __init__(
        self,
        n_tabular: int,
        mean: Sequence[float] | np.ndarray | torch.Tensor,
        std: Sequence[float] | np.ndarray | torch.Tensor,
        *,
        embed_dim: int = 64,
        dropout: float = 0.1,
    ) -> None:
        super().__init__()
        if n_tabular < 1:
            raise ValueError(f"argument 'n_tabular': must be >= 1, got {n_tabular}")
        self.standardise = Standardise(mean, std, n_tabular)
        self.mlp = nn.Sequential(
            nn.Linear(n_tabular, embed_dim),
            nn.ReLU(inplace=True),
            nn.Dropout(dropout),
            nn.Linear(embed_dim, embed_dim),
            nn.ReLU(inplace=True),
        )
        self.num_features = embed_dim

    def forward(self, tabular: torch.Tensor) -> torch.Tensor:
        """``tabular``: ``[B, T]`` float32 raw values (pg/ml, years, 0/1) -> ``[B, embed_dim]``."""
        return self.mlp(self.standardise(tabular))
