"""`scratch`: plain cross-entropy training, no teacher.

Trains the teacher ladder, the anchors and the no-KD baseline student.
"""

from __future__ import annotations

import torch.nn.functional as F

from .base import Method, Step, register


@register("scratch")
class Scratch(Method):
    """loss = CE(model(x), y). The model trained is `ctx.student`."""
    label = "no-KD student (scratch)"

    hparams = {}

    def __init__(self, ctx, hp):
        super().__init__(ctx, hp)
        self.student = ctx.build_model(ctx.student)

    def training_step(self, x, y):
        logits = self.student(x)
        return Step(terms={"ce": F.cross_entropy(logits.float(), y)}, logits=logits)
