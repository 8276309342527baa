"""`pkt`: probabilistic knowledge transfer (Passalis & Tefas, ECCV 2018).

Cosine-similarity kernels of the penultimate embeddings of a mini-batch (the
``penultimate`` tap), shifted to [0, 1] and row-normalised into conditional
probabilities p_ij (paper Eqs. 8-9 with the cosine kernel), for teacher (t)
and student (s), compared by their KL divergence:

    loss = CE(s, y) + λ · mean_{i,j} t_ij · log((t_ij + ε) / (s_ij + ε))    (paper Eq. 10, as the authors' code)

λ = 30000, ε = 1e-7, as RepDistiller runs it (`--distill pkt -a 0 -b 30000`,
the pooled `feat[-1]`); the loss is the PKT authors' `cosine_similarity_loss`
(`feature_losses.pkt_loss`), which keeps the diagonal and averages over all b²
pairs instead of the paper's sum over j ≠ i, hence the large weight. Embedding
widths may differ. No connector.

Reference (RepDistiller, 240 epochs, all 50k images, last epoch): resnet32x4
→ resnet8x4 73.64; resnet56 → resnet20 70.34.
"""

from __future__ import annotations

from ..feature_losses import PKT_WEIGHT, pkt_loss
from ..losses import cross_entropy
from ._feature import FeatureMethod
from .base import HParam, Step, register


@register("pkt")
class ProbabilisticKT(FeatureMethod):
    label = "PKT (Passalis & Tefas 2018)"
    hparams = {
        "pkt_weight": HParam(PKT_WEIGHT, "float", 3000.0, 300000.0, log=True, help="weight λ of the PKT loss"),
    }

    @classmethod
    def feature_taps(cls, hp=None):
        return {"student": ["penultimate"], "teacher": ["penultimate"]}

    def training_step(self, x, y):
        f = self.forward_both(x)
        terms = {
            "ce": cross_entropy(f.student_logits, y),
            "pkt": self.hp["pkt_weight"] * pkt_loss(f.student["penultimate"], f.teacher["penultimate"]),
        }
        return Step(terms=terms, logits=f.student_logits)
