"""CT backbones, the tabular branch and the three model kinds (dmfn, cnn, tabular).

Importing this package registers every built-in backbone (RegNetX/Y and the self-regulated
ResNets).
"""

from . import regnet as regnet
from . import selfreg as selfreg
from .fusion import (
    DEFAULT_FUSION,
    DMFN,
    FUSION_KINDS,
    MODEL_KINDS,
    CNNBaseline,
    ModelConfig,
    TabularBaseline,
    TwoInputModel,
    build_model,
    create_model,
)
from .registry import (
    DEFAULT_BACKBONE,
    Backbone,
    BackboneInfo,
    create_backbone,
    get_backbone_info,
    list_backbones,
    register_backbone,
    unregister_backbone,
)
from .tabular import TabularEncoder, fit_standardisation

__all__ = [
    "DEFAULT_BACKBONE",
    "DEFAULT_FUSION",
    "DMFN",
    "FUSION_KINDS",
    "MODEL_KINDS",
    "Backbone",
    "BackboneInfo",
    "CNNBaseline",
    "ModelConfig",
    "TabularBaseline",
    "TabularEncoder",
    "TwoInputModel",
    "build_model",
    "create_backbone",
    "create_model",
    "fit_standardisation",
    "get_backbone_info",
    "list_backbones",
    "register_backbone",
    "unregister_backbone",
]
