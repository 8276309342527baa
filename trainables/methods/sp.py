"""`sp`: similarity-preserving distillation (Tung & Mori, ICCV 2019).

The b × b similarities of a mini-batch's activations, G̃ = row-normalise(Q Qᵀ)
with Q the flattened output of the last stage (paper Eqs. 1-2), for teacher
and student, and

    loss = CE(s, y) + γ · ‖G̃_t − G̃_s‖_F² / b²             (paper Eqs. 3-4, one layer pair)

γ = 3000 on the last stage's output before pooling (the ``stage:-1`` tap), as
RepDistiller (`--distill similarity -a 0 -b 3000`, its `feat[-2]`) and
mdistiller (`feats[-1]`) run it: one pair, not every stage (Eq. 4 allows a sum
over pairs; the authors' CIFAR code uses the last). Widths and shapes may
differ: only the b × b matrices are compared.

Reference (RepDistiller, 240 epochs, all 50k images, last epoch): resnet32x4
→ resnet8x4 72.94; resnet56 → resnet20 69.67.
"""

from __future__ import annotations

from ..feature_losses import SP_WEIGHT, sp_loss
from ..losses import cross_entropy
from ._feature import FeatureMethod
from .base import HParam, Step, register

LAST_STAGE = "stage:-1"


@register("sp")
class SimilarityPreserving(FeatureMethod):
    label = "SP (Tung & Mori 2019)"
    hparams = {
        "sp_weight": HParam(SP_WEIGHT, "float", 300.0, 30000.0, log=True, help="weight γ of the similarity loss"),
    }

    @classmethod
    def feature_taps(cls, hp=None):
        return {"student": [LAST_STAGE], "teacher": [LAST_STAGE]}

    def training_step(self, x, y):
        f = self.forward_both(x)
        terms = {
            "ce": cross_entropy(f.student_logits, y),
            "sp": self.hp["sp_weight"] * sp_loss([f.student[LAST_STAGE]], [f.teacher[LAST_STAGE]]),
        }
        return Step(terms=terms, logits=f.student_logits)
