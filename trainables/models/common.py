"""Pieces the model families share: the single- and multi-exit bases, exit heads, pooling,
weight initialisation, small option checks, and `TapPoint` (where a named feature lives).

Every built-in model exposes

* ``features(x) -> (B, D)``: the penultimate embedding (pooled / flattened
  features right before the classifier), ``embedding_dim == D``;
* ``head(f) -> logits``; ``forward(x) == head(features(x))``;
* ``multi_exit`` (bool).

Multi-exit variants (Phuong & Lampert, ICCV 2019, "Distillation-based
training for multi-exit architectures") return a list of logits from
``forward``, earliest exit first, and carry ``num_exits``; their
``features``/``head`` are those of the final exit.

Methods do not rely on ``features``/``head`` (a torchvision or plug-in model
has neither): they read features through feature taps (`trainables.models.taps`),
which serve every family from the forward pass itself.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn


@dataclass(frozen=True)
class TapPoint:
    """Where a named feature lives in a model: a submodule and which of its tensors.

    path: dotted module path as in ``model.named_modules()`` ("" is the model itself);
    where: "output" (what the module returns) or "input" (its first positional argument);
    layout: "channels_first" (delivered as computed) or "channels_last" (a 4-D output the
    module computes as (B, H, W, C), e.g. a Swin stage, delivered as a (B, C, H, W) view).
    """

    path: str
    where: str = "output"
    layout: str = "channels_first"

    def __post_init__(self):
        if self.where not in ("output", "input"):
            raise ValueError(f"TapPoint.where must be 'output' or 'input', got {self.where!r}")
        if self.layout not in ("channels_first", "channels_last"):
            raise ValueError(f"TapPoint.layout must be 'channels_first' or 'channels_last', got {self.layout!r}")


def int_option(cfg: dict, key: str, low: int) -> str | None:
    """A family `check`'s problem with integer option `key` below `low` (None: fine)."""
    v = cfg[key]
    if isinstance(v, bool) or not isinstance(v, int) or v < low:
        return f"option {key!r} must be an integer >= {low}, got {v!r}"
    return None


def init_weights(module: nn.Module) -> None:
    """Kaiming-normal convolutions (He et al. 2015); BN and Linear keep nn defaults.

    A model on the meta device (shapes only: counts, checks) holds no values to draw: it is left
    as built (drawing on meta runs torch's slow reference kernels, seconds for a ResNet ladder)."""
    for m in module.modules():
        if isinstance(m, (nn.Conv1d, nn.Conv2d)) and not m.weight.is_meta:
            nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")
            if m.bias is not None:
                nn.init.zeros_(m.bias)


def need_image(family: str, in_shape: tuple[int, ...]) -> None:
    """Raise ValueError unless a family that needs images got an input shape (C, H, W)."""
    if len(in_shape) != 3:
        raise ValueError(
            f"model family {family!r} needs image inputs of shape (C, H, W), got {in_shape}"
        )


class SingleExit(nn.Module):
    """Base of single-exit models: subclasses define `features` and `classifier`."""

    multi_exit = False
    embedding_dim: int
    classifier: nn.Module

    def features(self, x: torch.Tensor) -> torch.Tensor:  # pragma: no cover
        raise NotImplementedError

    def head(self, f: torch.Tensor) -> torch.Tensor:
        return self.classifier(f)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.features(x))


class MultiExit(nn.Module):
    """Base of multi-exit models (Phuong & Lampert 2019).

    Subclasses define ``stages`` (an nn.ModuleList of backbone pieces) and
    ``exits`` (one head per stage, each taking the stage's output); the last
    exit is the normal classifier, so ``features``/``head`` are the final
    exit's pooled embedding and linear layer.
    """

    multi_exit = True
    stages: nn.ModuleList
    exits: nn.ModuleList
    embedding_dim: int

    @property
    def num_exits(self) -> int:
        return len(self.exits)

    def _stem(self, x: torch.Tensor) -> torch.Tensor:
        return x

    def forward_exits(self, x: torch.Tensor, last: int | None = None) -> list[torch.Tensor]:
        """Logits of exits 0..last (all by default), running only the backbone they need."""
        last = self.num_exits - 1 if last is None else last
        out, h = [], self._stem(x)
        for k in range(last + 1):
            h = self.stages[k](h)
            out.append(self.exits[k](h))
        return out

    def forward(self, x: torch.Tensor) -> list[torch.Tensor]:
        return self.forward_exits(x)

    def features(self, x: torch.Tensor) -> torch.Tensor:
        h = self._stem(x)
        for stage in self.stages:
            h = stage(h)
        return self.exits[-1].pool(h)

    def head(self, f: torch.Tensor) -> torch.Tensor:
        return self.exits[-1].fc(f)


class ExitHead(nn.Module):
    """An exit: ``pool`` (global average pool or flatten, to (B, D)) then ``fc``."""

    def __init__(self, pool: nn.Module, dim: int, num_classes: int):
        super().__init__()
        self.pool = pool
        self.fc = nn.Linear(dim, num_classes)

    def forward(self, h: torch.Tensor) -> torch.Tensor:
        return self.fc(self.pool(h))


class GlobalAvgPool(nn.Module):
    """Mean over all spatial/temporal positions, to (B, C)."""

    def forward(self, h: torch.Tensor) -> torch.Tensor:
        return h.mean(dim=tuple(range(2, h.dim())))


class Flatten(nn.Module):
    def forward(self, h: torch.Tensor) -> torch.Tensor:
        return h.flatten(1)


def classifier_input(model: nn.Module) -> TapPoint:
    """The penultimate tap of the built-in models: the input of the final linear layer
    (``classifier`` of a single-exit model, the last exit's ``fc`` of a multi-exit one)."""
    if getattr(model, "multi_exit", False):
        return TapPoint(f"exits.{len(model.exits) - 1}.fc", "input")
    return TapPoint("classifier", "input")
