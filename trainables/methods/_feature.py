"""DRAFT, wired in wave 2: what the feature-distillation methods share.

A feature method declares the taps it needs (`feature_taps(hp)`, names as the
models' tap API takes them: "penultimate", "stage:<i>", "stages",
"module:<dotted.path>"), builds its connectors in `__init__` from the tapped
shapes (known before training), owns them as submodules (so `.to(device)`,
`state_dict()` and `trainable_parameters()` cover them: optimised and
checkpointed with the student, not part of the deployed student), and gets
logits and features of student and teacher from one forward each, the
frozen teacher's under no_grad.

The two functions below are the only places that speak to the models' taps
API; they assume (the models helper is building it):

    trainables.models.tap_shapes(model, names, in_shape) -> {name: shape | [shape, ...]}
    trainables.models.forward_with_taps(model, names, x) -> (logits, {name: tensor | [tensor, ...]})

with per-sample shapes (C, *spatial) / (D,), "stages" giving one entry per
stage (shallowest first) and "stage:-1" the last stage. Adapt them (only
them) to the API as it lands.
"""

from __future__ import annotations

from itertools import chain
from typing import Any, Iterator

import torch
from torch import nn

from .base import FrozenTeacherMethod


def tap_shapes(model: nn.Module, names: list[str], in_shape: tuple[int, ...]) -> dict[str, Any]:
    from .. import models

    return models.tap_shapes(model, names, in_shape)


def forward_with_taps(model: nn.Module, names: list[str], x: torch.Tensor) -> tuple[torch.Tensor, dict[str, Any]]:
    from .. import models

    return models.forward_with_taps(model, names, x)


class FeatureMethod(FrozenTeacherMethod):
    """A frozen-teacher method distilling tapped features through trainable connectors."""

    @classmethod
    def feature_taps(cls, hp: dict) -> dict[str, list[str]]:
        """{"student": [tap names], "teacher": [tap names]} for hyperparameters `hp`."""
        raise NotImplementedError

    def __init__(self, ctx, hp: dict):
        super().__init__(ctx, hp)
        self.taps = type(self).feature_taps(self.hp)
        in_shape = tuple(ctx.extra["in_shape"])
        self.student_shapes = tap_shapes(self.student, self.taps["student"], in_shape)
        self.teacher_shapes = tap_shapes(self.teacher, self.taps["teacher"], in_shape)
        self.connectors = nn.ModuleDict(self.build_connectors(self.student_shapes, self.teacher_shapes))

    def build_connectors(self, student_shapes: dict[str, Any], teacher_shapes: dict[str, Any]) -> dict[str, nn.Module]:
        """The method's trainable connectors, from the tapped shapes (default: none)."""
        return {}

    def trainable_parameters(self) -> Iterator[nn.Parameter]:
        return chain(self.student.parameters(), self.connectors.parameters())

    def connector_parameter_count(self) -> int:
        """Parameters trained beside the student (training cost, not the deployed student)."""
        return sum(p.numel() for p in self.connectors.parameters())

    def forward_features(self, x: torch.Tensor):
        """(student logits, student taps, teacher logits, teacher taps) from one forward each."""
        with torch.no_grad():
            t_logits, t_feats = forward_with_taps(self.teacher, self.taps["teacher"], x)
        s_logits, s_feats = forward_with_taps(self.student, self.taps["student"], x)
        return s_logits, s_feats, t_logits, t_feats
