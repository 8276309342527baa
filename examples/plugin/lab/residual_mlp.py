"""`residual_mlp`: an MLP of pre-norm residual blocks; size = width, option `blocks`.

x -> Linear(in, width) -> `blocks` x [x + W2·GELU(W1·LayerNorm(x))] (W1: width -> 2·width,
W2: 2·width -> width) -> LayerNorm -> Linear(width, classes). The residual form of He et
al. 2016 (identity mappings, pre-activation) in an MLP: deeper and wider versions keep
training, so a ladder of widths is a ladder of capacities.
"""

from __future__ import annotations

import math

from torch import nn

from trainables.models import SingleExit, TapPoint, register_family
from trainables.options import Option


class Block(nn.Module):
    def __init__(self, width: int):
        super().__init__()
        self.norm = nn.LayerNorm(width)
        self.mlp = nn.Sequential(nn.Linear(width, 2 * width), nn.GELU(), nn.Linear(2 * width, width))

    def forward(self, x):
        return x + self.mlp(self.norm(x))


class ResidualMLP(SingleExit):
    def __init__(self, in_features: int, width: int, blocks: int, num_classes: int):
        super().__init__()
        self.stem = nn.Linear(in_features, width)
        self.blocks = nn.Sequential(*(Block(width) for _ in range(blocks)))
        self.norm = nn.LayerNorm(width)
        self.classifier = nn.Linear(width, num_classes)
        self.embedding_dim = width

    def features(self, x):
        return self.norm(self.blocks(self.stem(x.flatten(1))))


@register_family(
    "residual_mlp",
    options={"blocks": Option(2, ("integer",), "residual blocks", minimum=1)},
    sizes_hint="width of the residual stream (e.g. 16, 64, 256); option blocks (default 2)",
    arch_name=lambda c: f"residual_mlp-{c['blocks']}x{c['size']}",
    stages=lambda model: [f"blocks.{i}" for i in range(len(model.blocks))],
    penultimate=lambda model: TapPoint("classifier", "input"),
)
def build(cfg, in_shape, num_classes, multi_exit):
    return ResidualMLP(math.prod(in_shape), cfg["size"], cfg["blocks"], num_classes)
