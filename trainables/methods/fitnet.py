"""`fitnet`: FitNets, hints for thin deep nets (Romero, Ballas, Kahou, Chassang, Gatta & Bengio, ICLR 2015).

A trainable regressor r (`trainables.connectors.ConvReg`: conv/deconv, BN,
ReLU, as RepDistiller's) maps the student's guided layer to the teacher's
hint layer, and the student learns to predict the hint:

    loss = CE(s, y) + λ · mean (r(f_s) − f_t)²            (the hint loss of paper Eq. 3)

f_s, f_t: the output of stage `hint_stage` (0-based) of student and teacher,
the ``stage:<i>`` tap. Defaults as RepDistiller runs FitNets on CIFAR-100
(`--distill hint -a 0 -b 100 --hint_layer 2`): λ = 100, the middle residual
stage (its feature list is [stem, stage 1, stage 2, stage 3, pooled], so
``hint_layer 2`` is ``stage:1`` here), CE at weight 1, no KD term. The paper
writes ½‖·‖²; RepDistiller's `HintLoss` is `nn.MSELoss()` (the mean, no ½),
followed here.

**Single stage, with a weight**, as RepDistiller (and mdistiller) run it: the
hint loss is added to the cross-entropy from the first epoch. The paper trains
in two stages (the student up to its guided layer with the hint loss alone,
then the whole student with KD); RepDistiller's number comes from the single
stage, which also fits kdstudy's one budget per generation. The regressor is
trained with the student (same optimiser, learning rate and weight decay, as
in RepDistiller's `trainable_list`) and dropped afterwards: it counts in
`connector_params`, not in the deployed student.

Reference (RepDistiller, 240 epochs, all 50k images, last epoch): resnet32x4
→ resnet8x4 73.50 (student alone 72.50); resnet56 → resnet20 69.21.
"""

from __future__ import annotations

from ..connectors import ConvReg
from ..feature_losses import FITNET_WEIGHT, hint_loss
from ..losses import cross_entropy
from ._feature import FeatureMethod
from .base import HParam, Step, register

#: RepDistiller's `--hint_layer 2` (of [stem, stage 1, stage 2, stage 3, pooled]) as a 0-based stage
HINT_STAGE = 1


@register("fitnet")
class FitNet(FeatureMethod):
    label = "FitNets (Romero et al. 2015)"
    hparams = {
        "hint_weight": HParam(FITNET_WEIGHT, "float", 10.0, 1000.0, log=True, help="weight λ of the hint loss"),
        "hint_stage": HParam(HINT_STAGE, "int", -16, 15, searched=False,
                             help="stage (0-based, negative from the end) whose output is the hint / guided "
                                  "layer, in teacher and student"),
    }

    @classmethod
    def feature_taps(cls, hp=None):
        tap = f"stage:{int((hp or {}).get('hint_stage', HINT_STAGE))}"
        return {"student": [tap], "teacher": [tap]}

    @property
    def tap(self) -> str:
        return f"stage:{int(self.hp['hint_stage'])}"

    def build_connectors(self, student_shapes, teacher_shapes):
        return {"regressor": ConvReg(student_shapes[self.tap], teacher_shapes[self.tap])}

    def apply_connectors(self, s_feats, t_feats):
        return self.connectors["regressor"](s_feats[self.tap])

    def training_step(self, x, y):
        f = self.forward_both(x)
        terms = {
            "ce": cross_entropy(f.student_logits, y),
            "hint": self.hp["hint_weight"] * hint_loss(self.apply_connectors(f.student, f.teacher),
                                                       f.teacher[self.tap]),
        }
        return Step(terms=terms, logits=f.student_logits)
