"""`sp`: similarity-preserving distillation (Tung & Mori, ICCV 2019).

DRAFT: not registered until the models' feature taps land (wave 2).

G̃ = row-normalise(Q Qᵀ) over the mini-batch, Q the flattened output of the
last stage (paper Eqs. 1-2), for teacher and student:

    loss = CE(s, y) + γ · ‖G̃_t − G̃_s‖_F² / b²             (paper Eqs. 3-4, one layer pair)

γ = 3000 on the last stage's output before pooling, as RepDistiller
(`--distill similarity -a 0 -b 3000`, `feat[-2]`) and mdistiller (`feats[-1]`)
run it. Widths and shapes may differ (only the b × b matrices are compared).
Reference (RepDistiller, 240 epochs): resnet32x4 → resnet8x4 72.94.
"""

from __future__ import annotations

from ..feature_losses import SP_WEIGHT, sp_loss
from ..losses import cross_entropy
from ._feature import FeatureMethod
from .base import HParam, Step

LAST_STAGE = "stage:-1"


# DRAFT: @register("sp") once the feature taps exist
class SimilarityPreserving(FeatureMethod):
    hparams = {
        "sp_weight": HParam(SP_WEIGHT, "float", 300.0, 30000.0, log=True, help="weight γ of the similarity loss"),
    }

    @classmethod
    def feature_taps(cls, hp):
        return {"student": [LAST_STAGE], "teacher": [LAST_STAGE]}

    def training_step(self, x, y):
        s_logits, s_feats, _, t_feats = self.forward_features(x)
        terms = {
            "ce": cross_entropy(s_logits, y),
            "sp": self.hp["sp_weight"] * sp_loss([s_feats[LAST_STAGE]], [t_feats[LAST_STAGE]]),
        }
        return Step(terms=terms, logits=s_logits)
