"""`cifar_resnet`: the CIFAR ResNets of He et al. (depth 6n+2, option width multiplies channels)."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from ..options import Option
from .common import ExitHead, GlobalAvgPool, MultiExit, SingleExit, classifier_input, init_weights, need_image
from .registry import register_family


class BasicBlock(nn.Module):
    """ResNet basic block (He et al. CVPR 2016): two 3x3 conv-BN, identity or
    1x1 conv-BN projection shortcut, ReLU after the sum.

    ``preact`` (an identity, no parameters) marks the sum before the final ReLU,
    so the pre-activation output can be tapped (``stage:<i>:preact``)."""

    def __init__(self, cin: int, cout: int, stride: int):
        super().__init__()
        self.conv1 = nn.Conv2d(cin, cout, 3, stride, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(cout)
        self.conv2 = nn.Conv2d(cout, cout, 3, 1, 1, bias=False)
        self.bn2 = nn.BatchNorm2d(cout)
        self.shortcut = nn.Identity()
        if stride != 1 or cin != cout:
            self.shortcut = nn.Sequential(
                nn.Conv2d(cin, cout, 1, stride, bias=False), nn.BatchNorm2d(cout)
            )
        self.preact = nn.Identity()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = F.relu(self.bn1(self.conv1(x)))
        out = self.bn2(self.conv2(out))
        return F.relu(self.preact(out + self.shortcut(x)))


def _resnet_stages(cin: int, widths: list[int], n: int) -> tuple[list[nn.Sequential], int]:
    stages = []
    for i, w in enumerate(widths):
        blocks = []
        for j in range(n):
            blocks.append(BasicBlock(cin, w, 2 if (i > 0 and j == 0) else 1))
            cin = w
        stages.append(nn.Sequential(*blocks))
    return stages, cin


def _resnet_stem(in_channels: int, width: int) -> nn.Sequential:
    """The CIFAR ResNet stem: 3x3 conv, BN, ReLU."""
    return nn.Sequential(nn.Conv2d(in_channels, width, 3, 1, 1, bias=False), nn.BatchNorm2d(width),
                         nn.ReLU(inplace=True))


class CifarResNet(SingleExit):
    """CIFAR ResNet (He et al., "Deep Residual Learning for Image Recognition",
    CVPR 2016, Sec. 4.2): 3x3 stem, three stages of n basic blocks with
    16w/32w/64w channels (strides 1, 2, 2), global average pool, linear.
    Depth = 6n + 2. Shortcuts that change shape are 1x1 conv projections."""

    def __init__(self, in_channels: int, depth: int, width: int, num_classes: int):
        super().__init__()
        widths = [16 * width, 32 * width, 64 * width]
        self.stem = _resnet_stem(in_channels, widths[0])
        stages, out = _resnet_stages(widths[0], widths, (depth - 2) // 6)
        self.stages = nn.Sequential(*stages)
        self.embedding_dim = out
        self.classifier = nn.Linear(out, num_classes)
        init_weights(self)

    def features(self, x: torch.Tensor) -> torch.Tensor:
        return self.stages(self.stem(x)).mean(dim=(2, 3))


class MultiExitCifarResNet(MultiExit):
    """CIFAR ResNet with an exit (global average pool + linear) after each of
    its three stages; the last exit is the usual classifier."""

    def __init__(self, in_channels: int, depth: int, width: int, num_classes: int):
        super().__init__()
        widths = [16 * width, 32 * width, 64 * width]
        self.stem = _resnet_stem(in_channels, widths[0])
        stages, out = _resnet_stages(widths[0], widths, (depth - 2) // 6)
        self.stages = nn.ModuleList(stages)
        self.exits = nn.ModuleList([ExitHead(GlobalAvgPool(), w, num_classes) for w in widths])
        self.embedding_dim = out
        init_weights(self)

    def _stem(self, x: torch.Tensor) -> torch.Tensor:
        return self.stem(x)


def resnet_stages(model) -> list[str]:
    """The three residual stages' outputs (after the last block's ReLU), (B, 16w·2^i, H/2^i, W/2^i)."""
    return [f"stages.{i}" for i in range(len(model.stages))]


def resnet_preact_stages(model) -> list[str]:
    """The same stages before the last block's final ReLU (RepDistiller's ``preact=True``)."""
    return [f"stages.{i}.{len(stage) - 1}.preact" for i, stage in enumerate(model.stages)]


def _check_resnet(c: dict) -> str | None:
    d = c["size"]
    if d < 8 or (d - 2) % 6:
        return (
            f"depth (size) must be 6n+2 with n >= 1, such as "
            f"8, 14, 20, 32, 44, 56, 110; got {d}"
        )
    return None


def _resnet_name(c: dict) -> str:
    return f"resnet{c['size']}" + (f"x{c['width']}" if c["width"] != 1 else "")


@register_family(
    "cifar_resnet",
    options={"width": Option(1, ("integer",), "channel multiplier (resnet32x4: width 4)", minimum=1)},
    sizes_hint="depth 6n+2 such as 8, 14, 20, 32, 44, 56, 110; option width multiplies channels (resnet32x4: size 32, width 4)",
    arch_name=_resnet_name,
    check=_check_resnet,
    multi_exit=True,
    stages=resnet_stages,
    preact_stages=resnet_preact_stages,
    penultimate=classifier_input,
)
def build_cifar_resnet(cfg, in_shape, num_classes, multi_exit):
    need_image("cifar_resnet", in_shape)
    cls = MultiExitCifarResNet if multi_exit else CifarResNet
    return cls(in_shape[0], cfg["size"], cfg["width"], num_classes)
