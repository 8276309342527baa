"""`lskd`: logit-standardised KD (Sun, Ren, Li, Wang & Cao, "Logit Standardization in Knowledge Distillation", CVPR 2024).

Hinton KD after a z-score of each sample's teacher and student logits, so the
student has to match the teacher's logit *relations*, not their range:

    loss = w_ce·CE(s, y) + w_kd·T²·KL(softmax(Z(t)/T) ‖ softmax(Z(s)/T)),   Z(z) = (z − mean z) / (std z + 1e-7)

(`trainables.losses.standardized_kd`; paper Algorithm 1, T the "base
temperature"). As in the authors' code (sunshangquan/logit-standardization-KD,
mdistiller `KD` with `--logit-stand`): the CE and KD weights are separate, and
the KD weight is *not* bounded by 1 — their CIFAR-100 runs use base temperature
2 and KD weight 9 with CE weight 1 (the `cfg.py` default of that repository;
mdistiller's own KD default is 0.1 — doubtful, held as a parameter).

Reference: CIFAR-100 resnet32x4 → resnet8x4, KD 73.33 → KD + logit
standardisation 76.62 (the authors' README, log `kd,resnet32x4,resnet8x4,2,9`;
RepDistiller protocol: all 50k training images, 240 epochs).
"""

from __future__ import annotations

from ..losses import cross_entropy, standardized_kd
from .base import FrozenTeacherMethod, HParam, Step, register


@register("lskd")
class LogitStandardizedKD(FrozenTeacherMethod):
    label = "logit-standardised KD (Sun et al. 2024)"
    kind = "remedy"
    hparams = {
        "temperature": HParam(2.0, "float", 1.0, 8.0, log=True, help="base temperature T (after the z-score)"),
        "kd_weight": HParam(9.0, "float", 0.1, 20.0, log=True,
                            help="weight of the standardised KD term (not bounded by 1; 9 in the paper)"),
        "ce_weight": HParam(1.0, "float", 0.0, 2.0, searched=False, help="weight of the cross-entropy term"),
    }

    def training_step(self, x, y):
        s_logits, t_logits = self.student_and_teacher_logits(x)
        terms = {"ce": self.hp["ce_weight"] * cross_entropy(s_logits, y),
                 "kd": self.hp["kd_weight"] * standardized_kd(s_logits, t_logits, self.hp["temperature"])}
        return Step(terms=terms, logits=s_logits)
