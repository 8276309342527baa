"""`ttm`: Zheng & Yang, ICLR 2024, "Knowledge Distillation Based on Transformed Teacher Matching".

loss = CE(s, y) + β·KL(p_t^γ ‖ softmax(s)), KL summed over classes and averaged over the
batch, where p_t^γ is the teacher's probability vector raised to the power γ and
renormalised (the paper's power transform; γ = 1/T): p_t^γ = softmax(γ·t). Unlike
Hinton's KD only the teacher is softened: the student's logits enter at temperature 1
(the paper shows KD = TTM + a Rényi-entropy regulariser on the student). Defaults are
the authors' example run (vgg13 -> vgg8, CIFAR-100: `--ttm_l 0.1 -r 1 -b 45`).
"""

from __future__ import annotations

import torch.nn.functional as F

from trainables.losses import cross_entropy
from trainables.methods import FrozenTeacherMethod, HParam, Step, register


def ttm_loss(student_logits, teacher_logits, gamma: float):
    """KL(softmax(γ·t) ‖ softmax(s)): the teacher's power-transformed probabilities matched by the
    student's untempered ones (float32; the teacher's logits are used as given: detach them)."""
    target = F.log_softmax(gamma * teacher_logits.float(), dim=1)
    return F.kl_div(F.log_softmax(student_logits.float(), dim=1), target, reduction="batchmean", log_target=True)


@register("ttm")
class TransformedTeacherMatching(FrozenTeacherMethod):
    label = "TTM (Zheng & Yang 2024)"  # how the report names it (default: its registered name)
    hparams = {
        "gamma": HParam(0.1, "float", 0.05, 1.0, log=True, help="power γ of the teacher's probabilities (1/T)"),
        "beta": HParam(45.0, "float", 1.0, 100.0, log=True, help="weight β of the matching term"),
    }

    def training_step(self, x, y):
        s_logits, t_logits = self.student_and_teacher_logits(x)
        terms = {"ce": cross_entropy(s_logits, y),
                 "ttm": self.hp["beta"] * ttm_loss(s_logits, t_logits.detach(), self.hp["gamma"])}
        return Step(terms, s_logits)
