"""The three model kinds, all with one forward signature so that export and serving are uniform:

``forward(views [B, 3, S, S] float32, tabular [B, T] float32) -> logits [B, C] float32``

- ``dmfn``: CT backbone -> projection to ``embed_dim``; tabular branch -> ``embed_dim``; then
  one of the :data:`FUSION_KINDS` (the deep multimodal fusion network):

  - ``"concat"`` (the default, the paper's): concatenate the embeddings -> MLP -> logits;
  - ``"sum"`` (late fusion): ``logits = ct_head(ct_emb) + tab_head(tab_emb) + fusion_bias``,
    each head an MLP giving class logits from one modality. Softmax of a sum of logits is a
    normalised product of the two branches' distributions: a learned product of experts. The
    bias ``[C]`` is trained by the fused loss only. When auxiliary losses make each head a
    posterior that includes the class prior, the product must count the prior once, not twice
    (``p(y | a, b) ~ p(y | a) p(y | b) / p(y)``): pass ``class_prior`` to start the bias at
    ``-log p(y)`` (it is too far from 0 for the optimiser to get there within a training run);
  - ``"hybrid"``: the sum of both, ``ct_head + tab_head + fusion_bias + head(concat)``;
  - ``"experts"``: a weighted product of experts, ``w_ct * ct_head + w_tab * tab_head +
    fusion_bias`` with two learned scalar weights ``expert_weights``. Built to be composed from a
    separately trained CNN and tabular model (``dmfn train --init-ct / --init-tabular``): the
    weights start at the experts' inverse calibration temperatures and the bias at ``-log
    prior``, so before any training it is the post-hoc product of the two calibrated models.

  With ``aux_heads=True`` a concat model also gets the two unimodal heads, used only by
  :meth:`DMFN.forward_with_aux` to train each branch on its own loss (a remedy for modality
  imbalance, where the image branch dominates joint training); ``forward`` never runs them.
- ``cnn``: the same CT branch and head, no tabular input (monomodal baseline);
- ``tabular``: the tabular branch and head only (CTC + clinical baseline).

Views are the windowed [0, 1] axial, coronal and sagittal planes (channel order of the
preprocessing); tabular is the raw ``TABULAR`` row (CTC pg/ml, then clinical fields).
Every model carries ``config``: a JSON-serialisable dict such that ``create_model(**config)``
rebuilds the architecture before ``load_state_dict``.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch
from torch import nn

from .registry import DEFAULT_BACKBONE, Backbone, create_backbone, get_backbone_info
from .tabular import TabularEncoder

MODEL_KINDS = ("dmfn", "cnn", "tabular")
DEFAULT_EMBED_DIM = 128
DEFAULT_DROPOUT = 0.2
VIEW_CHANNELS = 3
#: How the dmfn model combines the CT and tabular embeddings (see the module docstring).
FUSION_KINDS = ("concat", "sum", "hybrid", "experts")
#: create_model's default, and the fusion of a model config that names none: the paper's.
DEFAULT_FUSION = "concat"


def _head(in_features: int, hidden: int, n_classes: int, dropout: float) -> nn.Sequential:
    """Dropout -> Linear -> ReLU -> Dropout -> Linear (logits)."""
    return nn.Sequential(
        nn.Dropout(dropout),
        nn.Linear(in_features, hidden),
        nn.ReLU(inplace=True),
        nn.Dropout(dropout),
        nn.Linear(hidden, n_classes),
    )


def _tie(logits: torch.Tensor, unused: torch.Tensor) -> torch.Tensor:
    """Add exactly 0 computed from ``unused`` (an empty slice summed), so that an input the model
    ignores stays an input of a traced/exported graph (the TorchScript ONNX exporter prunes unused
    inputs). No NaN/inf in ``unused`` can propagate: the slice has no elements."""
    return logits + unused.flatten(1)[:, :0].sum(dim=1, keepdim=True)


class CTEncoder(nn.Module):
    """Backbone -> Linear -> ReLU: ``[B, 3, S, S]`` -> ``[B, embed_dim]``."""

    def __init__(self, backbone: Backbone, embed_dim: int) -> None:
        super().__init__()
        self.backbone = backbone
        self.project = nn.Sequential(
            nn.Linear(backbone.num_features, embed_dim), nn.ReLU(inplace=True)
        )
        self.num_features = embed_dim

    def forward(self, views: torch.Tensor) -> torch.Tensor:
        return self.project(self.backbone(views))


class TwoInputModel(nn.Module):
    """A model ``forward(views, tabular) -> logits`` with its ``config`` (the keywords of
    :func:`create_model` that rebuild it) and the shared input checks (shapes only: static, no
    data-dependent control flow)."""

    config: dict[str, Any]

    def __init__(self, n_tabular: int) -> None:
        super().__init__()
        self.n_tabular = n_tabular

    def check_inputs(self, views: torch.Tensor, tabular: torch.Tensor) -> None:
        """Raise ValueError unless views is [B, 3, S, S] and tabular is [B, n_tabular].

        Skipped while tracing or exporting (shapes are symbolic there; the exporter fixes them).
        """
        if torch.jit.is_tracing() or torch.compiler.is_compiling():
            return
        if views.ndim != 4 or views.shape[1] != VIEW_CHANNELS or views.shape[2] != views.shape[3]:
            raise ValueError(
                f"argument 'views': must have shape [B, {VIEW_CHANNELS}, S, S], got {tuple(views.shape)}"
            )
        if tabular.ndim != 2 or tabular.shape[1] != self.n_tabular:
            raise ValueError(
                f"argument 'tabular': must have shape [B, {self.n_tabular}], got {tuple(tabular.shape)}"
            )
        if views.shape[0] != tabular.shape[0]:
            raise ValueError(
                "arguments 'views', 'tabular': batch sizes must match, got "
                f"{views.shape[0]} and {tabular.shape[0]}"
            )

    def forward_with_aux(
        self, views: torch.Tensor, tabular: torch.Tensor
    ) -> tuple[torch.Tensor, tuple[torch.Tensor, ...]]:
        """The logits and the unimodal logits for auxiliary losses: none here (only a dmfn
        model has unimodal heads)."""
        return self(views, tabular), ()


class DMFN(TwoInputModel):
    """Deep multimodal fusion of the CT and tabular embeddings (``fusion``: see the module doc).

    Submodules: ``ct``, ``tabular`` (the branches); ``head`` (MLP on the concatenation; "concat"
    and "hybrid"); ``ct_head``, ``tab_head`` (unimodal logits; "sum", "hybrid", or any fusion with
    ``aux_heads``); parameter ``fusion_bias`` ``[C]`` ("sum", "hybrid", "experts");
    ``expert_weights`` ``[2]`` ("experts"). A concat model
    without aux heads has exactly the modules (and state-dict keys) of the original DMFN.
    """

    def __init__(
        self,
        ct: CTEncoder,
        tab: TabularEncoder,
        n_classes: int,
        hidden: int,
        dropout: float,
        fusion: str = DEFAULT_FUSION,
        aux_heads: bool = False,
        class_prior: torch.Tensor | None = None,
    ) -> None:
        super().__init__(tab.standardise.mean.numel())
        self.ct = ct
        self.tabular = tab
        self.fusion = fusion
        self.head = (
            _head(ct.num_features + tab.num_features, hidden, n_classes, dropout)
            if fusion in ("concat", "hybrid")
            else None
        )
        unimodal = fusion != "concat" or aux_heads
        self.ct_head = _head(ct.num_features, hidden, n_classes, dropout) if unimodal else None
        self.tab_head = _head(tab.num_features, hidden, n_classes, dropout) if unimodal else None
        bias = torch.zeros(n_classes)
        if class_prior is not None:  # divide the product of two posteriors by the prior once
            bias = -class_prior.log()
            bias = bias - bias.mean()
        self.fusion_bias = nn.Parameter(bias) if fusion != "concat" else None
        self.expert_weights = nn.Parameter(torch.ones(2)) if fusion == "experts" else None

    @property
    def has_aux(self) -> bool:
        """True when :meth:`forward_with_aux` returns unimodal logits."""
        return self.ct_head is not None

    def _combine(
        self, ct_emb: torch.Tensor, tab_emb: torch.Tensor, unimodal: tuple[torch.Tensor, ...]
    ) -> torch.Tensor:
        """Fused logits from the embeddings and (for "sum"/"hybrid") the unimodal logits."""
        logits = None
        bias = self.fusion_bias  # every fusion but "concat" has one
        if bias is not None and self.expert_weights is not None:
            w = self.expert_weights
            logits = w[0] * unimodal[0] + w[1] * unimodal[1] + bias
        elif bias is not None:
            logits = unimodal[0] + unimodal[1] + bias
        if self.head is not None:
            joint = self.head(torch.cat((ct_emb, tab_emb), dim=1))
            logits = joint if logits is None else logits + joint
        return logits  # type: ignore[return-value]  # one of the two branches always runs

    def _unimodal(self, ct_emb: torch.Tensor, tab_emb: torch.Tensor) -> tuple[torch.Tensor, ...]:
        return (self.ct_head(ct_emb), self.tab_head(tab_emb))  # type: ignore[misc]

    def forward(self, views: torch.Tensor, tabular: torch.Tensor) -> torch.Tensor:
        """views ``[B, 3, S, S]``, tabular ``[B, T]`` -> logits ``[B, C]``."""
        self.check_inputs(views, tabular)
        ct_emb, tab_emb = self.ct(views), self.tabular(tabular)
        unimodal = self._unimodal(ct_emb, tab_emb) if self.fusion != "concat" else ()
        return self._combine(ct_emb, tab_emb, unimodal)

    def forward_with_aux(
        self, views: torch.Tensor, tabular: torch.Tensor
    ) -> tuple[torch.Tensor, tuple[torch.Tensor, ...]]:
        """Fused logits ``[B, C]`` and the unimodal logits ``(ct [B, C], tabular [B, C])`` for
        auxiliary losses (an empty tuple when the model has no unimodal heads). The fused logits
        equal :meth:`forward`'s for the same inputs and random state."""
        self.check_inputs(views, tabular)
        ct_emb, tab_emb = self.ct(views), self.tabular(tabular)
        unimodal = self._unimodal(ct_emb, tab_emb) if self.has_aux else ()
        return self._combine(ct_emb, tab_emb, unimodal), unimodal


class CNNBaseline(TwoInputModel):
    """Monomodal CT model: CT embedding -> MLP -> logits; ``tabular`` is accepted and ignored."""

    def __init__(
        self, ct: CTEncoder, n_tabular: int, n_classes: int, hidden: int, dropout: float
    ) -> None:
        super().__init__(n_tabular)
        self.ct = ct
        self.head = _head(ct.num_features, hidden, n_classes, dropout)

    def forward(self, views: torch.Tensor, tabular: torch.Tensor) -> torch.Tensor:
        """views ``[B, 3, S, S]``, tabular ``[B, T]`` (ignored) -> logits ``[B, C]``."""
        self.check_inputs(views, tabular)
        return _tie(self.head(self.ct(views)), tabular)


class TabularBaseline(TwoInputModel):
    """CTC + clinical model: tabular embedding -> MLP -> logits; ``views`` accepted and ignored."""

    def __init__(self, tab: TabularEncoder, n_classes: int, hidden: int, dropout: float) -> None:
        super().__init__(tab.standardise.mean.numel())
        self.tabular = tab
        self.head = _head(tab.num_features, hidden, n_classes, dropout)

    def forward(self, views: torch.Tensor, tabular: torch.Tensor) -> torch.Tensor:
        """views ``[B, 3, S, S]`` (ignored), tabular ``[B, T]`` -> logits ``[B, C]``."""
        self.check_inputs(views, tabular)
        return _tie(self.head(self.tabular(tabular)), views)


#: Per-class or per-column constants, as a sequence, an array or a tensor.
Constants = Sequence[float] | np.ndarray | torch.Tensor


def _floats(value: Constants | None) -> list[float] | None:
    if value is None:
        return None
    return np.asarray(torch.as_tensor(value).detach().cpu(), dtype=np.float64).ravel().tolist()


@dataclass(frozen=True)
class ModelConfig:
    """What defines a model: its kind, sizes, standardisation constants and fusion options.

    Attributes:
        kind: "dmfn" (CT + tabular), "cnn" (CT only) or "tabular" (CTC + clinical only).
        n_classes: number of taxonomy classes (>= 2).
        n_tabular: width T of the tabular row (K CTC features + 5 clinical fields).
        backbone: registered CT backbone name (ignored and stored as None for "tabular").
        tabular_mean, tabular_std: per-column standardisation constants from the training split
            (see :func:`~dmfn.training.models.tabular.fit_standardisation`); required for "dmfn"
            and "tabular", unused by "cnn".
        embed_dim: width of each branch embedding and of the head's hidden layer.
        dropout: dropout probability in [0, 1) of the tabular branch and the head.
        fusion: "dmfn" only: one of :data:`FUSION_KINDS` ("concat": the original architecture).
        aux_heads: "dmfn" only: add unimodal heads to a "concat" model for auxiliary losses
            (:meth:`DMFN.forward_with_aux`); "sum" and "hybrid" always have them.
        class_prior: "dmfn" with fusion "sum"/"hybrid" only, optional: training-split class
            frequencies ``[n_classes]`` (> 0) that initialise ``fusion_bias`` to ``-log prior``
            (centred). An initialisation only, like the seed: not in :meth:`to_dict` (the trained
            bias is in the state dict).
        overrides: backbone config fields (e.g. ``regulator="lstm"``).

    Raises ValueError (naming the field) on construction: unknown kind or backbone, bad sizes,
    missing or wrong-length standardisation constants, unknown fusion, fusion options for a kind
    other than "dmfn", a bad class prior.
    """

    kind: str
    n_classes: int
    n_tabular: int
    backbone: str | None = DEFAULT_BACKBONE
    tabular_mean: Constants | None = None
    tabular_std: Constants | None = None
    embed_dim: int = DEFAULT_EMBED_DIM
    dropout: float = DEFAULT_DROPOUT
    fusion: str = DEFAULT_FUSION
    aux_heads: bool = False
    class_prior: Constants | None = None
    overrides: dict[str, object] = field(default_factory=dict)

    @property
    def uses_ct(self) -> bool:
        return self.kind != "tabular"

    @property
    def uses_tabular(self) -> bool:
        return self.kind != "cnn"

    def __post_init__(self) -> None:
        kind = self.kind
        if kind not in MODEL_KINDS:
            raise ValueError(
                f"argument 'kind': unknown model kind {kind!r}; known: {', '.join(MODEL_KINDS)}"
            )
        for name, low in (("n_classes", 2), ("n_tabular", 1), ("embed_dim", 1)):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int | np.integer) or value < low:
                raise ValueError(f"argument '{name}': must be an integer >= {low}, got {value!r}")
        if not 0.0 <= self.dropout < 1.0:
            raise ValueError(f"argument 'dropout': must be in [0, 1), got {self.dropout!r}")
        if self.fusion not in FUSION_KINDS:
            raise ValueError(
                f"argument 'fusion': must be one of {FUSION_KINDS}, got {self.fusion!r}"
            )
        if not isinstance(self.aux_heads, bool):
            raise ValueError(f"argument 'aux_heads': must be a bool, got {self.aux_heads!r}")
        if kind != "dmfn" and (self.fusion != DEFAULT_FUSION or self.aux_heads):
            raise ValueError(
                f"arguments 'fusion', 'aux_heads': only for kind 'dmfn', got "
                f"fusion={self.fusion!r}, aux_heads={self.aux_heads!r} for kind {kind!r}"
            )
        if self.class_prior is not None and (kind != "dmfn" or self.fusion == "concat"):
            raise ValueError(
                "argument 'class_prior': only for kind 'dmfn' with fusion 'sum', 'hybrid' or "
                "'experts', got "
                f"kind {kind!r}, fusion {self.fusion!r}"
            )
        self.prior()  # checks its values
        if self.uses_tabular:
            self.standardisation()  # both are given
        if not self.uses_ct and self.overrides:
            raise ValueError(
                f"argument 'overrides': backbone overrides {sorted(self.overrides)} make no "
                "sense for kind 'tabular'"
            )
        if self.uses_ct:
            get_backbone_info(self.backbone)  # type: ignore[arg-type]  # raises with known names

    def standardisation(self) -> tuple[Constants, Constants]:
        """(``tabular_mean``, ``tabular_std``); ValueError naming the one that is missing."""
        mean, std = self.tabular_mean, self.tabular_std
        if mean is None or std is None:
            name = "tabular_mean" if mean is None else "tabular_std"
            raise ValueError(
                f"argument '{name}': required for kind {self.kind!r} (standardisation "
                "constants from the training split, see fit_standardisation)"
            )
        return mean, std

    def prior(self) -> torch.Tensor | None:
        """The class prior as float32 ``[n_classes]``, or None."""
        if self.class_prior is None:
            return None
        prior = torch.as_tensor(np.asarray(self.class_prior, dtype=np.float64)).to(torch.float32)
        n = int(self.n_classes)
        if prior.shape != (n,) or not bool(torch.isfinite(prior).all() & (prior > 0).all()):
            raise ValueError(
                f"argument 'class_prior': must be {n} finite values > 0, got {prior.tolist()}"
            )
        return prior

    def to_dict(self) -> dict[str, Any]:
        """The keywords such that ``create_model(**config.to_dict())`` rebuilds the model (the
        ``config`` of every model and checkpoint)."""
        return {
            "kind": self.kind,
            "backbone": self.backbone if self.uses_ct else None,
            "n_classes": int(self.n_classes),
            "n_tabular": int(self.n_tabular),
            "tabular_mean": _floats(self.tabular_mean) if self.uses_tabular else None,
            "tabular_std": _floats(self.tabular_std) if self.uses_tabular else None,
            "embed_dim": int(self.embed_dim),
            "dropout": float(self.dropout),
            **({"fusion": self.fusion, "aux_heads": self.aux_heads} if self.kind == "dmfn" else {}),
            **self.overrides,
        }


def build_model(config: ModelConfig) -> TwoInputModel:
    """The model of ``config`` (``forward(views, tabular) -> logits``), with ``model.config`` =
    :meth:`ModelConfig.to_dict`."""
    c = config
    n_classes, n_tabular, hidden = int(c.n_classes), int(c.n_tabular), c.embed_dim
    tab = (
        TabularEncoder(n_tabular, *c.standardisation(), embed_dim=c.embed_dim, dropout=c.dropout)
        if c.uses_tabular
        else None
    )
    ct = CTEncoder(create_backbone(c.backbone, **c.overrides), c.embed_dim) if c.uses_ct else None  # type: ignore[arg-type]
    model: TwoInputModel
    if c.kind == "dmfn":
        model = DMFN(ct, tab, n_classes, hidden, c.dropout, c.fusion, c.aux_heads, c.prior())  # type: ignore[arg-type]
    elif c.kind == "cnn":
        model = CNNBaseline(ct, n_tabular, n_classes, hidden, c.dropout)  # type: ignore[arg-type]
    else:
        model = TabularBaseline(tab, n_classes, hidden, c.dropout)  # type: ignore[arg-type]
    model.config = c.to_dict()
    return model


def create_model(kind: str, **fields: object) -> TwoInputModel:
    """:func:`build_model` of ``ModelConfig(kind, **fields)``; keywords that are not fields of
    :class:`ModelConfig` are backbone overrides (so ``create_model(**model.config)`` rebuilds a
    model)."""
    names = {f.name for f in dataclasses.fields(ModelConfig)} - {"kind", "overrides"}
    known = {k: v for k, v in fields.items() if k in names}
    overrides = {k: v for k, v in fields.items() if k not in names}
    return build_model(ModelConfig(kind, overrides=overrides, **known))  # type: ignore[arg-type]
