"""`wrn`: Wide ResNets WRN-d-k of Zagoruyko & Komodakis (depth 6n+4, option width = k)."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from ..options import Option
from .common import SingleExit, classifier_input, init_weights, need_image
from .registry import register_family


class WideBasic(nn.Module):
    """Pre-activation wide block (BN-ReLU-conv3x3, BN-ReLU-[dropout]-conv3x3);
    when the shape changes the shortcut is a 1x1 conv of the activated input."""

    def __init__(self, cin: int, cout: int, stride: int, dropout: float):
        super().__init__()
        self.bn1 = nn.BatchNorm2d(cin)
        self.conv1 = nn.Conv2d(cin, cout, 3, stride, 1, bias=False)
        self.bn2 = nn.BatchNorm2d(cout)
        self.conv2 = nn.Conv2d(cout, cout, 3, 1, 1, bias=False)
        self.dropout = nn.Dropout(dropout) if dropout > 0 else nn.Identity()
        self.shortcut = None
        if stride != 1 or cin != cout:
            self.shortcut = nn.Conv2d(cin, cout, 1, stride, bias=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        a = F.relu(self.bn1(x))
        out = self.conv1(a)
        out = self.conv2(self.dropout(F.relu(self.bn2(out))))
        return out + (x if self.shortcut is None else self.shortcut(a))


class WideResNet(SingleExit):
    """Wide ResNet WRN-d-k (Zagoruyko & Komodakis, "Wide Residual Networks",
    BMVC 2016): 3x3 stem of 16 channels, three groups of n = (d-4)/6
    pre-activation blocks with 16k/32k/64k channels (strides 1, 2, 2),
    BN-ReLU, global average pool, linear."""

    def __init__(self, in_channels: int, depth: int, k: int, num_classes: int, dropout: float):
        super().__init__()
        n = (depth - 4) // 6
        widths = [16 * k, 32 * k, 64 * k]
        self.stem = nn.Conv2d(in_channels, 16, 3, 1, 1, bias=False)
        blocks, cin = [], 16
        for i, w in enumerate(widths):
            for j in range(n):
                blocks.append(WideBasic(cin, w, 2 if (i > 0 and j == 0) else 1, dropout))
                cin = w
        self.blocks = nn.Sequential(*blocks)
        self.bn = nn.BatchNorm2d(cin)
        self.embedding_dim = cin
        self.classifier = nn.Linear(cin, num_classes)
        self.blocks_per_group = n
        init_weights(self)

    def features(self, x: torch.Tensor) -> torch.Tensor:
        h = F.relu(self.bn(self.blocks(self.stem(x))))
        return h.mean(dim=(2, 3))


def wrn_stages(model: WideResNet) -> list[str]:
    """Each group's output (the residual sum of its last block, before any BN-ReLU: the
    network is pre-activation), as RepDistiller's WRN returns its block outputs."""
    n = model.blocks_per_group
    return [f"blocks.{(g + 1) * n - 1}" for g in range(3)]


def wrn_preact_stages(model: WideResNet) -> list[str]:
    """Each group's output after the BN that precedes its next ReLU (the next group's first
    ``bn1``, the final ``bn`` for the last group): RepDistiller's WRN with ``preact=True``."""
    n = model.blocks_per_group
    return [f"blocks.{n}.bn1", f"blocks.{2 * n}.bn1", "bn"]


def _check_wrn(c: dict) -> str | None:
    d = c["size"]
    if d < 10 or (d - 4) % 6:
        return f"depth (size) must be 6n+4 with n >= 1, such as 10, 16, 28, 40; got {d}"
    p = c["dropout"]
    if isinstance(p, bool) or not isinstance(p, (int, float)) or not 0 <= p < 1:
        return f"option 'dropout' must be a number in [0, 1), got {p!r}"
    return None


@register_family(
    "wrn",
    options={"width": Option(2, ("integer",), "widen factor k (wrn-40-2: width 2)", minimum=1),
             "dropout": Option(0.0, ("number",), "dropout between the convolutions of a block, in [0, 1)",
                               minimum=0)},
    sizes_hint="depth 6n+4 such as 16, 28, 40; option width = widen factor k (wrn-40-2: size 40, width 2)",
    arch_name=lambda c: f"wrn-{c['size']}-{c['width']}",
    check=_check_wrn,
    stages=wrn_stages,
    preact_stages=wrn_preact_stages,
    penultimate=classifier_input,
)
def build_wrn(cfg, in_shape, num_classes, multi_exit):
    need_image("wrn", in_shape)
    return WideResNet(in_shape[0], cfg["size"], cfg["width"], num_classes, float(cfg["dropout"]))
