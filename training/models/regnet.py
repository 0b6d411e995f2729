"""Design-space RegNetX / RegNetY backbones (Radosavovic et al., "Designing Network Design
Spaces", CVPR 2020), implemented here because torchvision cannot be installed beside our torch.

A RegNet is generated from six numbers (:class:`RegNetCfg`): block widths follow the line
``u_j = w0 + wa * j`` (j = 0..depth-1), quantised to powers of ``wm`` times ``w0`` and to
multiples of 8; consecutive blocks of equal width form a stage. Each block is the X block
(1x1 conv, 3x3 group conv with group width ``group_w``, 1x1 conv, residual); RegNetY adds a
squeeze-and-excitation unit of width ``se_ratio * block input width``. Stem: 3x3 conv stride 2 to
32 channels; every stage starts with a stride-2 block. The published settings are those of
pycls (``configs/dds_baselines/regnet{x,y}``), cross-checked with timm's table.

Input ``[B, in_chans, S, S]`` float32 (the three orthogonal views), output the globally pooled
features ``[B, num_features]``; ``num_features`` is the last stage width.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch
from torch import nn

from .registry import Backbone, apply_overrides, register_backbone

#: Block widths are rounded to multiples of this (pycls ``q``).
WIDTH_QUANTUM = 8


@dataclass(frozen=True)
class RegNetCfg:
    """One RegNet: the design-space parameters plus the fixed stem / input choices.

    w0: initial width (> 0); wa: slope (> 0); wm: width multiplier (> 1); depth: number of blocks;
    group_w: group width of the 3x3 convs; se_ratio: SE width / block input width (0 = no SE,
    RegNetX); bottle_ratio: bottleneck multiplier (1 in all published models); stem_width: stem
    channels; in_chans: input channels (3 views).
    """

    w0: int
    wa: float
    wm: float
    depth: int
    group_w: int
    se_ratio: float = 0.0
    bottle_ratio: float = 1.0
    stem_width: int = 32
    in_chans: int = 3

    def __post_init__(self) -> None:
        checks = (
            (
                "w0",
                self.w0 > 0 and self.w0 % WIDTH_QUANTUM == 0,
                f"> 0 and a multiple of {WIDTH_QUANTUM}",
            ),
            ("wa", self.wa > 0, "> 0"),
            ("wm", self.wm > 1, "> 1"),
            ("depth", self.depth >= 1, ">= 1"),
            ("group_w", self.group_w >= 1, ">= 1"),
            ("se_ratio", 0.0 <= self.se_ratio < 1.0, "in [0, 1)"),
            ("bottle_ratio", self.bottle_ratio > 0, "> 0"),
            ("stem_width", self.stem_width >= 1, ">= 1"),
            ("in_chans", self.in_chans >= 1, ">= 1"),
        )
        for name, ok, rule in checks:
            if not ok:
                raise ValueError(f"argument '{name}': must be {rule}, got {getattr(self, name)!r}")

    def stages(self) -> list[tuple[int, int, int]]:
        """Per stage ``(width, depth, group_width)`` after quantisation and group compatibility."""
        u = np.arange(self.depth) * self.wa + self.w0
        exponents = np.round(np.log(u / self.w0) / np.log(self.wm))
        widths = np.round(self.w0 * np.power(self.wm, exponents) / WIDTH_QUANTUM) * WIDTH_QUANTUM
        stage_widths, stage_depths = np.unique(widths.astype(int), return_counts=True)
        out = []
        for width, depth in zip(stage_widths.tolist(), stage_depths.tolist(), strict=True):
            bottleneck = max(1, int(width * self.bottle_ratio))
            group_w = min(self.group_w, bottleneck)
            bottleneck = max(group_w, int(round(bottleneck / group_w) * group_w))
            out.append((int(bottleneck / self.bottle_ratio), depth, group_w))
        return out


def conv_bn_act(
    c_in: int,
    c_out: int,
    kernel: int,
    *,
    stride: int = 1,
    groups: int = 1,
    act: bool = True,
) -> nn.Sequential:
    """Conv (no bias, 'same' padding for odd kernels) -> BatchNorm -> optional ReLU."""
    layers: list[nn.Module] = [
        nn.Conv2d(c_in, c_out, kernel, stride, kernel // 2, groups=groups, bias=False),
        nn.BatchNorm2d(c_out),
    ]
    if act:
        layers.append(nn.ReLU(inplace=True))
    return nn.Sequential(*layers)


def init_weights(module: nn.Module) -> None:
    """He (fan-out) init for convs, unit/zero BatchNorm, N(0, 0.01) linear layers (as pycls)."""
    for m in module.modules():
        if isinstance(m, nn.Conv2d):
            nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")
            if m.bias is not None:
                nn.init.zeros_(m.bias)
        elif isinstance(m, nn.BatchNorm2d | nn.BatchNorm1d):
            nn.init.ones_(m.weight)
            nn.init.zeros_(m.bias)
        elif isinstance(m, nn.Linear):
            nn.init.normal_(m.weight, std=0.01)
            nn.init.zeros_(m.bias)


class SqueezeExcite(nn.Module):
    """Channel attention: global mean -> 1x1 conv -> ReLU -> 1x1 conv -> sigmoid gate."""

    def __init__(self, channels: int, se_channels: int) -> None:
        super().__init__()
        self.reduce = nn.Conv2d(channels, se_channels, 1)
        self.expand = nn.Conv2d(se_channels, channels, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        s = x.mean(dim=(2, 3), keepdim=True)
        return x * torch.sigmoid(self.expand(torch.relu(self.reduce(s))))


class RegNetBlock(nn.Module):
    """X block (Y block with SE): 1x1 -> 3x3 group conv (stride) -> [SE] -> 1x1, + shortcut."""

    def __init__(
        self, w_in: int, w_out: int, stride: int, group_w: int, bottle_ratio: float, se_ratio: float
    ) -> None:
        super().__init__()
        w_b = round(w_out * bottle_ratio)
        self.conv_a = conv_bn_act(w_in, w_b, 1)
        self.conv_b = conv_bn_act(w_b, w_b, 3, stride=stride, groups=w_b // group_w)
        self.se = SqueezeExcite(w_b, round(se_ratio * w_in)) if se_ratio > 0 else nn.Identity()
        self.conv_c = conv_bn_act(w_b, w_out, 1, act=False)
        needs_projection = w_in != w_out or stride != 1
        self.shortcut = (
            conv_bn_act(w_in, w_out, 1, stride=stride, act=False)
            if needs_projection
            else nn.Identity()
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = self.conv_c(self.se(self.conv_b(self.conv_a(x))))
        return torch.relu(self.shortcut(x) + y)


class RegNet(Backbone):
    """RegNetX/Y feature extractor: ``[B, in_chans, S, S]`` -> ``[B, num_features]``.

    S must be >= 32 for the five stride-2 steps of a four-stage model to keep a non-empty map
    (S = 64 and 128 are the sizes the project uses).
    """

    def __init__(self, cfg: RegNetCfg) -> None:
        super().__init__()
        self.cfg = cfg
        self.stem = conv_bn_act(cfg.in_chans, cfg.stem_width, 3, stride=2)
        stages: list[nn.Module] = []
        w_in = cfg.stem_width
        for width, depth, group_w in cfg.stages():
            blocks = [
                RegNetBlock(
                    w_in if i == 0 else width,
                    width,
                    2 if i == 0 else 1,
                    group_w,
                    cfg.bottle_ratio,
                    cfg.se_ratio,
                )
                for i in range(depth)
            ]
            stages.append(nn.Sequential(*blocks))
            w_in = width
        self.stages = nn.Sequential(*stages)
        self.num_features = w_in
        init_weights(self)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """``x``: ``[B, in_chans, S, S]`` float32 -> pooled features ``[B, num_features]``."""
        return self.stages(self.stem(x)).mean(dim=(2, 3))


_PYCLS = "Radosavovic et al. CVPR 2020 / pycls dds_baselines"

#: The published design-space settings (pycls); Y models add SE with ratio 0.25.
REGNET_CFGS: dict[str, RegNetCfg] = {
    "regnetx_200mf": RegNetCfg(w0=24, wa=36.44, wm=2.49, depth=13, group_w=8),
    "regnetx_400mf": RegNetCfg(w0=24, wa=24.48, wm=2.54, depth=22, group_w=16),
    "regnetx_800mf": RegNetCfg(w0=56, wa=35.73, wm=2.28, depth=16, group_w=16),
    "regnety_200mf": RegNetCfg(w0=24, wa=36.44, wm=2.49, depth=13, group_w=8, se_ratio=0.25),
    "regnety_400mf": RegNetCfg(w0=48, wa=27.89, wm=2.09, depth=16, group_w=8, se_ratio=0.25),
    "regnety_800mf": RegNetCfg(w0=56, wa=38.84, wm=2.4, depth=14, group_w=16, se_ratio=0.25),
    # Tiny test models (not published): three stages of widths 16, 32, 64.
    "regnetx_tiny": RegNetCfg(w0=16, wa=16.0, wm=2.0, depth=4, group_w=8, stem_width=16),
    "regnety_tiny": RegNetCfg(
        w0=16, wa=16.0, wm=2.0, depth=4, group_w=8, se_ratio=0.25, stem_width=16
    ),
}


def _create(name: str, overrides: dict[str, object]) -> RegNet:
    return RegNet(apply_overrides(REGNET_CFGS[name], overrides))


@register_backbone("regnetx_200mf", family="regnet", published_params_m=2.7, source=_PYCLS)
def regnetx_200mf(**overrides: object) -> RegNet:
    """RegNetX-200MF."""
    return _create("regnetx_200mf", overrides)


@register_backbone("regnetx_400mf", family="regnet", published_params_m=5.2, source=_PYCLS)
def regnetx_400mf(**overrides: object) -> RegNet:
    """RegNetX-400MF."""
    return _create("regnetx_400mf", overrides)


@register_backbone("regnetx_800mf", family="regnet", published_params_m=7.3, source=_PYCLS)
def regnetx_800mf(**overrides: object) -> RegNet:
    """RegNetX-800MF."""
    return _create("regnetx_800mf", overrides)


@register_backbone("regnety_200mf", family="regnet", published_params_m=3.2, source=_PYCLS)
def regnety_200mf(**overrides: object) -> RegNet:
    """RegNetY-200MF."""
    return _create("regnety_200mf", overrides)


@register_backbone("regnety_400mf", family="regnet", published_params_m=4.3, source=_PYCLS)
def regnety_400mf(**overrides: object) -> RegNet:
    """RegNetY-400MF."""
    return _create("regnety_400mf", overrides)


@register_backbone("regnety_800mf", family="regnet", published_params_m=6.3, source=_PYCLS)
def regnety_800mf(**overrides: object) -> RegNet:
    """RegNetY-800MF."""
    return _create("regnety_800mf", overrides)


@register_backbone("regnetx_tiny", family="regnet", source="project test model")
def regnetx_tiny(**overrides: object) -> RegNet:
    """A ~0.1M-parameter RegNetX: the default CT backbone (``DEFAULT_BACKBONE``), small enough
    to train on a CPU."""
    return _create("regnetx_tiny", overrides)


@register_backbone("regnety_tiny", family="regnet", source="project test model")
def regnety_tiny(**overrides: object) -> RegNet:
    """A ~0.1M-parameter RegNetY (with SE) for fast tests."""
    return _create("regnety_tiny", overrides)
