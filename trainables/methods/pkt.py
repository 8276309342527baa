"""`pkt`: probabilistic knowledge transfer (Passalis & Tefas, ECCV 2018).

DRAFT: not registered until the models' feature taps land (wave 2).

Cosine-similarity kernels of the penultimate embeddings of a mini-batch,
shifted to [0, 1] and row-normalised into conditional probabilities, for
teacher (t) and student (s):

    loss = CE(s, y) + λ · mean_{i,j} t_ij · log((t_ij + ε) / (s_ij + ε))    (paper Eq. 10, authors' code)

λ = 30000, ε = 1e-7, as RepDistiller runs it (`--distill pkt -a 0 -b 30000`,
the pooled `feat[-1]`; the loss is the PKT authors' `cosine_similarity_loss`,
averaged over all b² pairs, hence the weight). Embedding widths may differ.
Reference (RepDistiller, 240 epochs): resnet32x4 → resnet8x4 73.64.
"""

from __future__ import annotations

from ..feature_losses import PKT_WEIGHT, pkt_loss
from ..losses import cross_entropy
from ._feature import FeatureMethod
from .base import HParam, Step


# DRAFT: @register("pkt") once the feature taps exist
class ProbabilisticKT(FeatureMethod):
    hparams = {
        "pkt_weight": HParam(PKT_WEIGHT, "float", 3000.0, 300000.0, log=True, help="weight λ of the PKT loss"),
    }

    @classmethod
    def feature_taps(cls, hp):
        return {"student": ["penultimate"], "teacher": ["penultimate"]}

    def training_step(self, x, y):
        s_logits, s_feats, _, t_feats = self.forward_features(x)
        terms = {
            "ce": cross_entropy(s_logits, y),
            "pkt": self.hp["pkt_weight"] * pkt_loss(s_feats["penultimate"], t_feats["penultimate"]),
        }
        return Step(terms=terms, logits=s_logits)
