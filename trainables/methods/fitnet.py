"""`fitnet`: FitNets, hints for thin deep nets (Romero, Ballas, Kahou, Chassang, Gatta & Bengio, ICLR 2015).

DRAFT: not registered until the models' feature taps land (wave 2).

A trainable regressor r (`trainables.connectors.ConvReg`: conv/deconv, BN,
ReLU) maps the student's guided layer to the teacher's hint layer:

    loss = CE(s, y) + λ · mean (r(f_s) − f_t)²            (hint loss, paper Eq. 3)

Single stage, as RepDistiller and mdistiller run it (`--distill hint -a 0 -b 100`):
the hint loss is added to the cross-entropy from the first epoch, λ = 100, on
the output of the middle residual stage (RepDistiller `--hint_layer 2`: of
[stem, stage 1, stage 2, stage 3, pooled], stage 2 of the three CIFAR ResNet
stages, i.e. `stage:1` counting from 0). The paper trains in two stages
(first the student up to its guided layer with the hint loss alone, then the
whole student with KD); RepDistiller's numbers (resnet32x4 → resnet8x4 73.50)
come from the single stage, which also fits kdstudy's one budget per
generation, so that is what this offers; the paper's second stage is the `kd`
method. The regressor is trained with the student and dropped afterwards.
"""

from __future__ import annotations

from ..connectors import ConvReg
from ..feature_losses import FITNET_WEIGHT, hint_loss
from ..losses import cross_entropy
from ._feature import FeatureMethod
from .base import HParam, Step


# DRAFT: @register("fitnet") once the feature taps exist
class FitNet(FeatureMethod):
    hparams = {
        "hint_weight": HParam(FITNET_WEIGHT, "float", 10.0, 1000.0, log=True, help="weight λ of the hint loss"),
        "hint_stage": HParam(1, "int", 0, 15, searched=False,
                             help="stage (from 0) whose output is the hint / guided layer, in teacher and student"),
    }

    @classmethod
    def feature_taps(cls, hp):
        tap = f"stage:{int(hp['hint_stage'])}"
        return {"student": [tap], "teacher": [tap]}

    def build_connectors(self, student_shapes, teacher_shapes):
        tap = self.taps["student"][0]
        return {"regressor": ConvReg(student_shapes[tap], teacher_shapes[tap])}

    def training_step(self, x, y):
        s_logits, s_feats, _, t_feats = self.forward_features(x)
        tap = self.taps["student"][0]
        terms = {
            "ce": cross_entropy(s_logits, y),
            "hint": self.hp["hint_weight"] * hint_loss(self.connectors["regressor"](s_feats[tap]), t_feats[tap]),
        }
        return Step(terms=terms, logits=s_logits)
