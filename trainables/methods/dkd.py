"""`dkd`: Decoupled Knowledge Distillation (Zhao, Cui, Song, Qiu & Liang, CVPR 2022).

Classical KD couples a target-class term (TCKD) and a non-target-class term
(NCKD) whose weight 1 − p_t^T shrinks exactly when the teacher is confident
(paper, Eq. 1); DKD weighs them independently (paper, Eq. 7):

    loss = w_ce·CE(s, y) + min(epoch / warm-up, 1) · (α·TCKD + β·NCKD)

TCKD = T²·KL over the binary [p_target, 1 − p_target]; NCKD = T²·KL over the
non-target classes (target logit masked by −1000 before the softmax), both
averaged over the batch (`trainables.losses.dkd_terms`). The linear warm-up
of the distillation terms over the first `kd_warmup_epochs` epochs (1-based
epoch / warm-up, capped at 1) is in the authors' code
(megvii-research/mdistiller `DKD`, WARMUP = 20), not in the paper's equation.

Defaults are the authors' CIFAR-100 resnet32x4 → resnet8x4 setting: α = 1,
β = 8, T = 4, CE weight 1, warm-up 20 epochs (of 240). Reference: 76.32 on that
pair (DKD paper, CIFAR-100 table; RepDistiller protocol: all 50k training
images, 240 epochs). On short runs lower the warm-up with the epoch budget.
"""

from __future__ import annotations

from ..losses import cross_entropy, dkd_terms
from .base import FrozenTeacherMethod, HParam, Step, register


@register("dkd")
class DecoupledKD(FrozenTeacherMethod):
    label = "DKD (Zhao et al. 2022)"
    kind = "remedy"
    hparams = {
        "temperature": HParam(4.0, "float", 1.0, 8.0, log=True, help="softening temperature T"),
        "dkd_alpha": HParam(1.0, "float", 0.1, 4.0, log=True, searched=False, help="weight α of TCKD"),
        "dkd_beta": HParam(8.0, "float", 0.5, 16.0, log=True, help="weight β of NCKD"),
        "ce_weight": HParam(1.0, "float", 0.0, 2.0, searched=False, help="weight of the cross-entropy term"),
        "kd_warmup_epochs": HParam(20, "int", 0, 1000, searched=False,
                                   help="epochs over which the DKD terms ramp up linearly (0: none)"),
    }

    def __init__(self, ctx, hp):
        super().__init__(ctx, hp)
        self._epoch = 1

    def start_epoch(self, epoch: int) -> None:
        self._epoch = epoch

    def warmup_factor(self) -> float:
        """min(epoch / warm-up, 1) with the 1-based epoch, as in the authors' trainer (1 without warm-up)."""
        w = int(self.hp["kd_warmup_epochs"])
        return 1.0 if w <= 0 else min(self._epoch / w, 1.0)

    def training_step(self, x, y):
        s_logits, t_logits = self.student_and_teacher_logits(x)
        ramp = self.warmup_factor()
        dkd = dkd_terms(s_logits, t_logits, y, self.hp["temperature"], self.hp["dkd_alpha"], self.hp["dkd_beta"])
        terms = {"ce": self.hp["ce_weight"] * cross_entropy(s_logits, y), **{k: ramp * v for k, v in dkd.items()}}
        return Step(terms=terms, logits=s_logits)
