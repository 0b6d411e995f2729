"""Self-regulated ResNet ("RegNet" of Xu et al., "RegNet: self-regulated network for image
classification", IEEE TNNLS 34(11), 2023; arXiv:2101.00590) — the CT backbone the DMFN paper cites.

Each stage of a ResNet gets one convolutional RNN "regulator" (ConvGRU or ConvLSTM) whose state
runs across the blocks of the stage (block index = time step, weights shared within the stage,
state zero at the start of every stage). Block t feeds its first conv output X2 to the cell,
``H_t = cell(X2, H_{t-1})``, and receives ``ReLU(BN(H_t))`` concatenated to its features:

- basic block (ResNet-18/34): X2 = ReLU(BN(conv3x3_s(X1))); X3 = ReLU(BN(conv1x1([X2, H])));
  X4 = BN(conv3x3(X3)); out = ReLU(X1' + X4)  (Xu et al. eq. for the RegNet module);
- bottleneck (ResNet-50): X2 = ReLU(BN(conv1x1_s(X1))); X3 = ReLU(BN(conv3x3(X2)));
  X4 = ReLU(BN(conv1x1([X3, H]))) (the 1x1 "fusing" kernel W34); X5 = BN(conv1x1(X4));
  out = ReLU(X1' + X5).

Our reading where the paper leaves it open (documented choices): the stride of a stage's first
block sits in the block's first conv (as in He et al. 2016), so X2, X3 and H share one resolution;
the cell follows the paper's efficient ConvRNN: the 2N channels [X, H] are interleaved into N
groups, a grouped 1x1 conv mixes each (x_i, h_i) pair into the gates, a grouped 3x3 conv adds
spatial context per channel; hidden width = X2 width. ``regulator="none"`` gives the plain ResNet
(same stride placement), whose parameter count equals torchvision's.

Input ``[B, in_chans, S, S]`` float32, output ``[B, num_features]`` (global mean pool).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn

from .registry import Backbone, apply_overrides, register_backbone
from .regnet import conv_bn_act, init_weights

REGULATORS = ("gru", "lstm", "none")
BLOCKS = ("basic", "bottleneck")
#: Output channels / bottleneck width of a bottleneck block (He et al.).
BOTTLENECK_EXPANSION = 4

State = tuple[torch.Tensor, ...]


@dataclass(frozen=True)
class SelfRegCfg:
    """A self-regulated ResNet.

    block: "basic" | "bottleneck"; depths: blocks per stage; widths: per-stage width (bottleneck
    width for bottleneck blocks, whose output is 4x wider); regulator: "gru" | "lstm" | "none";
    stem_width: channels of the 7x7 stride-2 stem (followed by 3x3 stride-2 max pooling);
    in_chans: input channels (3 views).
    """

    block: str
    depths: tuple[int, ...]
    widths: tuple[int, ...]
    regulator: str = "gru"
    stem_width: int = 64
    in_chans: int = 3

    def __post_init__(self) -> None:
        if self.block not in BLOCKS:
            raise ValueError(f"argument 'block': must be one of {BLOCKS}, got {self.block!r}")
        if self.regulator not in REGULATORS:
            raise ValueError(
                f"argument 'regulator': must be one of {REGULATORS}, got {self.regulator!r}"
            )
        if not self.depths or len(self.depths) != len(self.widths):
            raise ValueError(
                "arguments 'depths', 'widths': must be non-empty and of equal length, got "
                f"{self.depths!r} and {self.widths!r}"
            )
        for name in ("depths", "widths"):
            if any(int(v) < 1 for v in getattr(self, name)):
                raise ValueError(
                    f"argument '{name}': every entry must be >= 1, got {getattr(self, name)!r}"
                )
        for name in ("stem_width", "in_chans"):
            if getattr(self, name) < 1:
                raise ValueError(f"argument '{name}': must be >= 1, got {getattr(self, name)!r}")


class GroupedGateConv(nn.Module):
    """The efficient ConvRNN transform of Xu et al.: ``[x, h]`` (N + N channels) interleaved
    into N pairs -> grouped 1x1 conv (each pair -> ``n_gates`` channels) -> grouped 3x3 conv
    (per channel group) -> ``[B, N, n_gates, H, W]``."""

    def __init__(self, channels: int, n_gates: int) -> None:
        super().__init__()
        self.channels, self.n_gates = channels, n_gates
        self.mix = nn.Conv2d(2 * channels, n_gates * channels, 1, groups=channels)
        self.spatial = nn.Conv2d(
            n_gates * channels, n_gates * channels, 3, padding=1, groups=channels
        )

    def forward(self, x: torch.Tensor, h: torch.Tensor) -> torch.Tensor:
        pairs = torch.stack((x, h), dim=2).flatten(1, 2)
        return self.spatial(self.mix(pairs)).unflatten(1, (self.channels, self.n_gates))


class ConvGRUCell(nn.Module):
    """ConvGRU: z, r = sigmoid(G([x, h])); n = tanh(G'([x, r*h])); h' = (1 - z) h + z n."""

    n_state = 1

    def __init__(self, channels: int) -> None:
        super().__init__()
        self.gates = GroupedGateConv(channels, 2)
        self.candidate = GroupedGateConv(channels, 1)

    def forward(self, x: torch.Tensor, state: State) -> tuple[torch.Tensor, State]:
        (h,) = state
        z, r = torch.sigmoid(self.gates(x, h)).unbind(2)
        n = torch.tanh(self.candidate(x, r * h).squeeze(2))
        h = (1 - z) * h + z * n
        return h, (h,)


class ConvLSTMCell(nn.Module):
    """ConvLSTM: i, f, o, g from G([x, h]); c' = f c + i g; h' = o tanh(c')."""

    n_state = 2

    def __init__(self, channels: int) -> None:
        super().__init__()
        self.gates = GroupedGateConv(channels, 4)

    def forward(self, x: torch.Tensor, state: State) -> tuple[torch.Tensor, State]:
        h, c = state
        i, f, o, g = self.gates(x, h).unbind(2)
        c = torch.sigmoid(f) * c + torch.sigmoid(i) * torch.tanh(g)
        h = torch.sigmoid(o) * torch.tanh(c)
        return h, (h, c)


#: The regulator cell of a stage, by its config name.
RegulatorCell = ConvGRUCell | ConvLSTMCell
_CELLS: dict[str, type[RegulatorCell]] = {"gru": ConvGRUCell, "lstm": ConvLSTMCell}


class RegulatedBlock(nn.Module):
    """One residual block; with ``regulated`` it takes and returns the stage's regulator state."""

    def __init__(self, block: str, c_in: int, width: int, stride: int, regulated: bool) -> None:
        super().__init__()
        self.regulated = regulated
        self.c_out = width * BOTTLENECK_EXPANSION if block == "bottleneck" else width
        if block == "basic":
            self.first = conv_bn_act(c_in, width, 3, stride=stride)
            self.middle: nn.Module = nn.Identity()
            self.last = conv_bn_act(width, self.c_out, 3, act=False)
        else:
            self.first = conv_bn_act(c_in, width, 1, stride=stride)
            self.middle = conv_bn_act(width, width, 3)
            self.last = conv_bn_act(width, self.c_out, 1, act=False)
        if regulated:
            self.state_norm = nn.Sequential(nn.BatchNorm2d(width), nn.ReLU(inplace=True))
            self.fuse = conv_bn_act(2 * width, width, 1)
        needs_projection = c_in != self.c_out or stride != 1
        self.shortcut = (
            conv_bn_act(c_in, self.c_out, 1, stride=stride, act=False)
            if needs_projection
            else nn.Identity()
        )

    def forward(
        self, x: torch.Tensor, cell: RegulatorCell | None, state: State | None
    ) -> tuple[torch.Tensor, State | None]:
        x2 = self.first(x)
        y = self.middle(x2)
        if cell is not None and state is not None:
            if len(state) == 0:  # first block of the stage: zero state of X2's shape
                state = tuple(torch.zeros_like(x2) for _ in range(cell.n_state))
            h, state = cell(x2, state)
            y = self.fuse(torch.cat((y, self.state_norm(h)), dim=1))
        return torch.relu(self.shortcut(x) + self.last(y)), state


class RegulatedStage(nn.Module):
    """The blocks of one stage plus their shared regulator cell (None for a plain ResNet)."""

    def __init__(self, cfg: SelfRegCfg, c_in: int, width: int, depth: int, stride: int) -> None:
        super().__init__()
        regulated = cfg.regulator != "none"
        self.cell = _CELLS[cfg.regulator](width) if regulated else None
        blocks = []
        for i in range(depth):
            blocks.append(
                RegulatedBlock(cfg.block, c_in, width, stride if i == 0 else 1, regulated)
            )
            c_in = blocks[-1].c_out
        self.blocks = nn.ModuleList(blocks)
        self.c_out = c_in

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        state: State | None = () if self.cell is not None else None
        for block in self.blocks:
            x, state = block(x, self.cell, state)
        return x


class SelfRegulatedResNet(Backbone):
    """Self-regulated ResNet feature extractor: ``[B, in_chans, S, S]`` -> ``[B, num_features]``.

    The stem divides S by 4 and every stage after the first by 2 more (S = 64 -> 2x2 at the end).
    """

    def __init__(self, cfg: SelfRegCfg) -> None:
        super().__init__()
        self.cfg = cfg
        self.stem = nn.Sequential(
            conv_bn_act(cfg.in_chans, cfg.stem_width, 7, stride=2),
            nn.MaxPool2d(3, stride=2, padding=1),
        )
        stages = []
        c_in = cfg.stem_width
        for i, (width, depth) in enumerate(zip(cfg.widths, cfg.depths, strict=True)):
            stages.append(RegulatedStage(cfg, c_in, int(width), int(depth), 1 if i == 0 else 2))
            c_in = stages[-1].c_out
        self.stages = nn.Sequential(*stages)
        self.num_features = c_in
        init_weights(self)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """``x``: ``[B, in_chans, S, S]`` float32 -> pooled features ``[B, num_features]``."""
        return self.stages(self.stem(x)).mean(dim=(2, 3))


_XU = "Xu et al. TNNLS 2023 (arXiv:2101.00590); no per-model parameter table used"
_RESNET_WIDTHS = (64, 128, 256, 512)

SELFREG_CFGS: dict[str, SelfRegCfg] = {}
for _rnn in ("gru", "lstm"):
    SELFREG_CFGS[f"selfreg_resnet18_{_rnn}"] = SelfRegCfg(
        "basic", (2, 2, 2, 2), _RESNET_WIDTHS, _rnn
    )
    SELFREG_CFGS[f"selfreg_resnet34_{_rnn}"] = SelfRegCfg(
        "basic", (3, 4, 6, 3), _RESNET_WIDTHS, _rnn
    )
    SELFREG_CFGS[f"selfreg_resnet50_{_rnn}"] = SelfRegCfg(
        "bottleneck", (3, 4, 6, 3), _RESNET_WIDTHS, _rnn
    )
    # Tiny test model (not published): two basic stages of two blocks, widths 8 and 16.
    SELFREG_CFGS[f"selfreg_tiny_{_rnn}"] = SelfRegCfg("basic", (2, 2), (8, 16), _rnn, stem_width=8)


def _create(name: str, overrides: dict[str, object]) -> SelfRegulatedResNet:
    return SelfRegulatedResNet(apply_overrides(SELFREG_CFGS[name], overrides))


@register_backbone("selfreg_resnet18_gru", family="selfreg", source=_XU)
def selfreg_resnet18_gru(**overrides: object) -> SelfRegulatedResNet:
    """ResNet-18 with a ConvGRU regulator per stage."""
    return _create("selfreg_resnet18_gru", overrides)


@register_backbone("selfreg_resnet18_lstm", family="selfreg", source=_XU)
def selfreg_resnet18_lstm(**overrides: object) -> SelfRegulatedResNet:
    """ResNet-18 with a ConvLSTM regulator per stage."""
    return _create("selfreg_resnet18_lstm", overrides)


@register_backbone("selfreg_resnet34_gru", family="selfreg", source=_XU)
def selfreg_resnet34_gru(**overrides: object) -> SelfRegulatedResNet:
    """ResNet-34 with a ConvGRU regulator per stage."""
    return _create("selfreg_resnet34_gru", overrides)


@register_backbone("selfreg_resnet34_lstm", family="selfreg", source=_XU)
def selfreg_resnet34_lstm(**overrides: object) -> SelfRegulatedResNet:
    """ResNet-34 with a ConvLSTM regulator per stage."""
    return _create("selfreg_resnet34_lstm", overrides)


@register_backbone("selfreg_resnet50_gru", family="selfreg", source=_XU)
def selfreg_resnet50_gru(**overrides: object) -> SelfRegulatedResNet:
    """ResNet-50 (bottleneck) with a ConvGRU regulator per stage."""
    return _create("selfreg_resnet50_gru", overrides)


@register_backbone("selfreg_resnet50_lstm", family="selfreg", source=_XU)
def selfreg_resnet50_lstm(**overrides: object) -> SelfRegulatedResNet:
    """ResNet-50 (bottleneck) with a ConvLSTM regulator per stage."""
    return _create("selfreg_resnet50_lstm", overrides)


@register_backbone("selfreg_tiny_gru", family="selfreg", source="project test model")
def selfreg_tiny_gru(**overrides: object) -> SelfRegulatedResNet:
    """A tiny self-regulated ResNet (ConvGRU) for fast tests."""
    return _create("selfreg_tiny_gru", overrides)


@register_backbone("selfreg_tiny_lstm", family="selfreg", source="project test model")
def selfreg_tiny_lstm(**overrides: object) -> SelfRegulatedResNet:
    """A tiny self-regulated ResNet (ConvLSTM) for fast tests."""
    return _create("selfreg_tiny_lstm", overrides)
