"""The backbone registry: every CT backbone the project can build, by name.

A backbone maps the three orthogonal views ``[B, 3, S, S]`` (float32, windowed HU in [0, 1]) to an
embedding ``[B, F]`` and exposes ``num_features`` (= F). Families register three-line factories
with :func:`register_backbone`; names are unique (a model name identifies a clinical artifact, so a
second registration under the same name is an error, never a silent replacement).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, fields, replace
from typing import TypeVar

from torch import nn


class Backbone(nn.Module):
    """A CT backbone: ``[B, C, S, S]`` float32 -> ``[B, num_features]``."""

    num_features: int


BackboneFactory = Callable[..., Backbone]
ConfigT = TypeVar("ConfigT")


@dataclass(frozen=True)
class BackboneInfo:
    """Registry metadata of one backbone.

    ``published_params_m`` is the parameter count in millions that the source reports for the
    ImageNet model (1000-class linear classifier on top of the pooled features), ``None`` where
    the source publishes none.
    """

    name: str
    family: str
    factory: BackboneFactory
    published_params_m: float | None = None
    source: str = ""


_REGISTRY: dict[str, BackboneInfo] = {}
#: The backbone of `dmfn train` and create_model when none is named: the small RegNetX that every
#: reported result used (the paper-scale choice is compared in docs/training.md's ablation runs).
DEFAULT_BACKBONE = "regnetx_tiny"


def register_backbone(
    name: str,
    *,
    family: str,
    published_params_m: float | None = None,
    source: str = "",
) -> Callable[[BackboneFactory], BackboneFactory]:
    """Decorator registering ``factory(**overrides) -> nn.Module`` under ``name``.

    Raises:
        ValueError: ``name`` is empty, not lower-case snake case, or already registered.
    """
    if not name or name != name.strip().lower() or " " in name:
        raise ValueError(
            f"argument 'name': must be a non-empty lower-case identifier, got {name!r}"
        )

    def decorator(factory: BackboneFactory) -> BackboneFactory:
        if name in _REGISTRY:
            raise ValueError(
                f"argument 'name': backbone {name!r} is already registered "
                f"(by {_REGISTRY[name].factory.__module__}); names must be unique"
            )
        _REGISTRY[name] = BackboneInfo(name, family, factory, published_params_m, source)
        return factory

    return decorator


def unregister_backbone(name: str) -> None:
    """Remove ``name`` from the registry (for tests and plugins that register temporarily)."""
    get_backbone_info(name)
    del _REGISTRY[name]


def list_backbones(family: str | None = None) -> list[str]:
    """Sorted names of the registered backbones, optionally of one ``family`` only."""
    return sorted(n for n, info in _REGISTRY.items() if family is None or info.family == family)


def get_backbone_info(name: str) -> BackboneInfo:
    """Registry entry of ``name``.

    Raises:
        ValueError: unknown name; the message lists the known names.
    """
    try:
        return _REGISTRY[name]
    except (KeyError, TypeError):
        raise ValueError(
            f"argument 'backbone': unknown backbone {name!r}; known: {', '.join(list_backbones())}"
        ) from None


def create_backbone(name: str, **overrides: object) -> Backbone:
    """Build the backbone ``name`` with its family config fields replaced by ``overrides``.

    Args:
        name: a registered name (see :func:`list_backbones`).
        **overrides: config fields of the family (e.g. ``in_chans=1``, ``regulator="none"``).

    Returns:
        a :class:`Backbone` mapping ``[B, C, S, S]`` float32 to ``[B, num_features]``.

    Raises:
        ValueError: unknown name, unknown override field or an invalid field value.
    """
    return get_backbone_info(name).factory(**overrides)


def apply_overrides(cfg: ConfigT, overrides: dict[str, object]) -> ConfigT:
    """Return the frozen dataclass ``cfg`` with ``overrides`` replaced (validated by its
    ``__post_init__``).

    Raises:
        ValueError: an override names no field of ``cfg``; the message lists the fields.
    """
    names = [f.name for f in fields(cfg)]  # type: ignore[arg-type]
    unknown = sorted(set(overrides) - set(names))
    if unknown:
        raise ValueError(
            f"argument 'overrides': unknown field(s) {unknown} for {type(cfg).__name__}; "
            f"known: {', '.join(names)}"
        )
    return replace(cfg, **overrides)  # type: ignore[type-var]
