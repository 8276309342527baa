"""`at`: attention transfer (Zagoruyko & Komodakis, ICLR 2017, "Paying More Attention to Attention").

DRAFT: not registered until the models' feature taps land (wave 2).

For each pair j of stage outputs, Q = vec(mean_c f_c^p) / ‖·‖₂ (paper Eq. 1
with p = 2, normalised as in Eq. 2):

    loss = CE(s, y) + β · Σ_j mean_{b, positions} (Q_s,j − Q_t,j)²

β = 1000 on the plain sum over the three CIFAR ResNet stage outputs, as
RepDistiller runs it (`--distill attention -a 0 -b 1000`, `feat[1:-1]`) and the
authors' current code (`opt.beta * sum(loss_groups)`, `--beta 1e+3`); the
paper's β/2 with a p-norm per pair is written there as this mean of squares.
Maps of different sizes are compared after average-pooling the larger.
No connector: the maps average over channels, so widths may differ; the
student and teacher need the same number of stages.
Reference (RepDistiller, 240 epochs): resnet32x4 → resnet8x4 73.44.
"""

from __future__ import annotations

from ..feature_losses import AT_P, AT_WEIGHT, at_loss
from ..losses import cross_entropy
from ._feature import FeatureMethod
from .base import HParam, Step


# DRAFT: @register("at") once the feature taps exist
class AttentionTransfer(FeatureMethod):
    hparams = {
        "at_weight": HParam(AT_WEIGHT, "float", 100.0, 10000.0, log=True, help="weight β of the attention loss"),
        "at_p": HParam(float(AT_P), "float", 1.0, 4.0, searched=False, help="exponent p of the attention map"),
    }

    @classmethod
    def feature_taps(cls, hp):
        return {"student": ["stages"], "teacher": ["stages"]}

    def build_connectors(self, student_shapes, teacher_shapes):
        s, t = student_shapes["stages"], teacher_shapes["stages"]
        if len(s) != len(t):
            raise ValueError(f"at pairs stages one to one: the student has {len(s)} stages, the teacher {len(t)}")
        return {}

    def training_step(self, x, y):
        s_logits, s_feats, _, t_feats = self.forward_features(x)
        terms = {
            "ce": cross_entropy(s_logits, y),
            "at": self.hp["at_weight"] * at_loss(s_feats["stages"], t_feats["stages"], self.hp["at_p"]),
        }
        return Step(terms=terms, logits=s_logits)
