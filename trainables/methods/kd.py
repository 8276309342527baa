"""`kd`: Hinton, Vinyals & Dean 2015, "Distilling the Knowledge in a Neural Network".

loss = (1-α)·CE(s, y) + α·T²·KL(softmax(t/T) ‖ softmax(s/T)), KL summed over
classes and averaged over the batch; the pretrained teacher is frozen (eval
mode, no gradients) and its forward pass runs under no_grad.
"""

from __future__ import annotations

import torch

from ..losses import hinton_kd
from .base import FrozenTeacherMethod, HParam, Step, register


@register("kd")
class HintonKD(FrozenTeacherMethod):
    hparams = {
        "temperature": HParam(4.0, "float", 1.0, 20.0, log=True, help="softening temperature T"),
        "alpha": HParam(0.9, "float", 0.0, 1.0, help="weight of the soft-target term"),
    }

    def training_step(self, x, y):
        with torch.no_grad():
            t_logits = self.teacher(x)
        s_logits = self.student(x)
        terms = hinton_kd(s_logits, t_logits, y, self.hp["temperature"], self.hp["alpha"])
        return Step(terms=terms, logits=s_logits)
