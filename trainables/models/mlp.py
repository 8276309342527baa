"""`mlp`: a multi-layer perceptron; size = hidden width, option depth = hidden layers."""

from __future__ import annotations

import math

import torch
from torch import nn

from ..options import Option
from .common import SingleExit, classifier_input
from .registry import register_family


class MLP(SingleExit):
    """Multi-layer perceptron: flatten, `depth` hidden layers of `width` units with ReLU, linear head."""

    def __init__(self, in_features: int, width: int, depth: int, num_classes: int):
        super().__init__()
        layers: list[nn.Module] = []
        d = in_features
        for _ in range(depth):
            layers += [nn.Linear(d, width), nn.ReLU(inplace=True)]
            d = width
        self.body = nn.Sequential(*layers)
        self.classifier = nn.Linear(width, num_classes)
        self.embedding_dim = width

    def features(self, x: torch.Tensor) -> torch.Tensor:
        return self.body(x.flatten(1))


def mlp_stages(model: MLP) -> list[str]:
    """Each hidden layer's output (after its ReLU)."""
    return [f"body.{i}" for i in range(1, len(model.body), 2)]


@register_family(
    "mlp",
    options={"depth": Option(2, ("integer",), "hidden layers", minimum=1)},
    sizes_hint="hidden width (e.g. 32, 128, 512); option depth = hidden layers (default 2)",
    arch_name=lambda c: f"mlp-{c['depth']}x{c['size']}",
    stages=mlp_stages,
    penultimate=classifier_input,
)
def build_mlp(cfg, in_shape, num_classes, multi_exit):
    return MLP(math.prod(in_shape), cfg["size"], cfg["depth"], num_classes)
