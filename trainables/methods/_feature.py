"""What the feature-distillation methods share (`fitnet`, `at`, `sp`, `pkt`, `crd`, `reviewkd`).

A feature method is a frozen-teacher method that declares the taps it reads
(`feature_taps(hp)`, names of `trainables.models.taps`: ``"penultimate"``,
``"stage:<i>"``, ``"stages"``, ``"stages:preact"``, ...) and gets them from
`forward_both(x)`: one forward of the student (with its graph) and one of the
frozen teacher (under no_grad, eval mode), logits and features together.

Its **connectors** (FitNets' regressor, CRD's embedding heads and memory bank,
ReviewKD's fusion path) are built in `__init__` from the tapped shapes, which
are known before training (`tap_shapes`, a meta forward), and are owned as
``self.connectors`` (an `nn.ModuleDict`), submodules of the method. So they
are moved with it (`.to(device)`), optimised with the student (they are in
`trainable_parameters()`, the one list the loop's optimiser, gradient clipping
and the benchmark read), checkpointed and resumed with it (`state_dict()`,
buffers such as CRD's bank and Z included), and never part of the deployed
student: `connector_modules()` names them, the loop counts them apart in the
results (`connector_params`, `connector_flops`). Nothing here is specific to a
model family: any family with the taps a method names will do.

Everything used here is what a plug-in method can use too: `FrozenTeacherMethod`,
the taps, `Context` (`num_train_samples`, `train_labels`), `needs_sample_index`.
"""

from __future__ import annotations

from itertools import chain
from typing import Any, Iterator

import torch
from torch import nn
from torch.utils.flop_counter import FlopCounterMode

from ..models.measure import meta_state
from .base import FrozenTeacherMethod

#: samples in the meta batch the connectors' FLOPs are counted on (then divided by it)
_FLOP_BATCH = 2


def _meta_features(shapes: dict[str, Any]) -> dict[str, Any]:
    """Meta tensors of a batch of `_FLOP_BATCH` for tapped per-sample shapes (lists for "stages")."""

    def one(shape):
        return torch.zeros((_FLOP_BATCH, *shape), device="meta")

    return {k: [one(s) for s in v] if isinstance(v, list) else one(v) for k, v in shapes.items()}


class _ConnectorRun(nn.Module):
    """Runs `method.apply_connectors` with the connectors as its submodules (so
    `torch.func.functional_call` can swap their state for meta stand-ins)."""

    def __init__(self, method: "FeatureMethod"):
        super().__init__()
        self.connectors = method.connectors
        self._apply = method.apply_connectors

    def forward(self, s_feats, t_feats):
        return self._apply(s_feats, t_feats)


class FeatureMethod(FrozenTeacherMethod):
    """A frozen-teacher method distilling tapped features, through trainable connectors if it has any."""
    kind = "feature"

    def __init__(self, ctx, hp: dict):
        super().__init__(ctx, hp)  # the student, the frozen teacher and their taps
        self.student_shapes = self.tap_shapes("student")
        self.teacher_shapes = self.tap_shapes("teacher")
        self.check_shapes(self.student_shapes, self.teacher_shapes)
        self.connectors = nn.ModuleDict(self.build_connectors(self.student_shapes, self.teacher_shapes))

    # -- what a feature method defines -----------------------------------------------------
    def check_shapes(self, student_shapes: dict[str, Any], teacher_shapes: dict[str, Any]) -> None:
        """Raise ValueError (one line) if the tapped features cannot be paired (default: any can)."""

    def build_connectors(self, student_shapes: dict[str, Any], teacher_shapes: dict[str, Any]) -> dict[str, nn.Module]:
        """The method's trainable connectors, from the tapped per-sample shapes (default: none)."""
        return {}

    def apply_connectors(self, s_feats: dict[str, Any], t_feats: dict[str, Any]) -> Any:
        """What the connectors compute from one batch's tapped features, the loss aside (the
        training step uses it; `connector_flops` counts it). Default: nothing."""
        return None

    # -- what the loop reads ---------------------------------------------------------------
    def trainable_parameters(self) -> Iterator[nn.Parameter]:
        return chain(self.student.parameters(), self.connectors.parameters())

    def connector_modules(self) -> list[nn.Module]:
        return [self.connectors] if len(self.connectors) else []

    def connector_flops(self) -> float:
        """Forward FLOPs per sample of `apply_connectors`, counted on meta tensors of the tapped
        shapes with the connectors' state swapped for meta stand-ins: no arithmetic, nothing of the
        real state read or changed (CRD's bank stays as it is), on any device."""
        if not len(self.connectors):
            return 0.0
        runner = _ConnectorRun(self)
        state = {f"connectors.{k}": v for k, v in meta_state(self.connectors).items()}
        flags = [(m, m.training) for m in self.connectors.modules()]
        self.connectors.eval()
        try:
            with torch.no_grad(), FlopCounterMode(display=False) as counter:
                torch.func.functional_call(runner, state, (_meta_features(self.student_shapes),
                                                           _meta_features(self.teacher_shapes)), strict=False)
        finally:
            for m, flag in flags:
                m.training = flag
        return counter.get_total_flops() / _FLOP_BATCH


def levels_text(shapes) -> str:
    """Per-sample shapes as a short text for error messages."""
    return ", ".join("x".join(map(str, s)) for s in shapes)
