"""`kd`: Hinton, Vinyals & Dean 2015, "Distilling the Knowledge in a Neural Network".

loss = (1-α)·CE(s, y) + α·T²·KL(softmax(t/T) ‖ softmax(s/T)), KL summed over
classes and averaged over the batch; the pretrained teacher is frozen (eval
mode, no gradients) and its forward pass runs under no_grad.

`kd_reduction: mean` (not searched; default `batchmean`, the formula above)
divides the KL by batch × classes instead, as `nn.KLDivLoss()` does in the
TAKD authors' code: only for reproducing TAKD's numbers (see `soft_kl`).
"""

from __future__ import annotations

from ..losses import KD_REDUCTIONS, hinton_kd
from .base import FrozenTeacherMethod, HParam, Step, register


@register("kd")
class HintonKD(FrozenTeacherMethod):
    label = "Hinton KD (Hinton et al. 2015)"
    hparams = {
        "temperature": HParam(4.0, "float", 1.0, 20.0, log=True, help="softening temperature T"),
        "alpha": HParam(0.9, "float", 0.0, 1.0, help="weight of the soft-target term"),
        "kd_reduction": HParam("batchmean", "categorical", choices=KD_REDUCTIONS, searched=False,
                               help="KL reduction: batchmean (Hinton) or mean over batch x classes (TAKD's code)"),
    }

    def training_step(self, x, y):
        s_logits, t_logits = self.student_and_teacher_logits(x)
        terms = hinton_kd(s_logits, t_logits, y, self.hp["temperature"], self.hp["alpha"],
                          self.hp["kd_reduction"])
        return Step(terms=terms, logits=s_logits)
