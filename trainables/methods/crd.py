"""`crd`: contrastive representation distillation (Tian, Krishnan & Isola, ICLR 2020).

DRAFT: not registered until the models' feature taps and the batches' sample
indices land (wave 2).

Linear + L2-normalised heads embed the penultimate features of student and
teacher (128-d); a memory bank holds every training sample's embeddings of
both; each sample is contrasted with its own bank entry (positive) and
K = 16384 entries of other samples (negatives) at temperature τ = 0.07:

    loss = CE(s, y) + β · [NCE(g_s(f_s) vs teacher bank) + NCE(g_t(f_t) vs student bank)]
           [+ α · T² · KL(softmax(t/T) ‖ softmax(s/T))]

NCE is the paper's Eq. 18 bound with h = P / (P + K/N), P = exp(e·m/τ)/Z, Z
estimated on the first batch (`trainables.crd`); the bank moves with momentum
0.5 after each batch. β = 0.8 and no KD term (α = 0) as RepDistiller's CRD
row (`--distill crd -a 0 -b 0.8`, 75.51 for resnet32x4 → resnet8x4); α = 1,
T = 4 is its CRD+KD row. Negatives are drawn from the other classes, as
RepDistiller's CIFAR sampler does, when the loop provides the training
labels (`crd_negatives: other_classes`), else uniformly (`uniform`).
The heads are trained with the student (the teacher's head too: the teacher
itself stays frozen); the bank and Z are buffers, checkpointed and resumed.

Needs, from the loop: each batch's positions in the training split
(`training_step(x, y, index)`), and in `ctx.extra` the training split's size
("train_size") and, for class-aware negatives, its labels ("train_labels").
"""

from __future__ import annotations

from ..crd import (CRD_EMBED_DIM, CRD_MOMENTUM, CRD_NEGATIVES, CRD_TEMPERATURE, CRD_WEIGHT, CRDLoss)
from ..losses import cross_entropy, soft_kl
from ._feature import FeatureMethod
from .base import HParam, Step


def _width(shape) -> int:
    n = 1
    for v in shape:
        n *= int(v)
    return n


# DRAFT: @register("crd") once the feature taps and sample indices exist
class ContrastiveRD(FeatureMethod):
    hparams = {
        "crd_weight": HParam(CRD_WEIGHT, "float", 0.1, 8.0, log=True, help="weight β of the contrastive loss"),
        "crd_temperature": HParam(CRD_TEMPERATURE, "float", 0.02, 0.5, log=True, searched=False,
                                  help="temperature τ of the contrastive scores"),
        "crd_negatives": HParam(CRD_NEGATIVES, "int", 1, 1 << 20, searched=False,
                                help="negatives K per sample, drawn from the memory bank"),
        "crd_momentum": HParam(CRD_MOMENTUM, "float", 0.0, 0.99, searched=False,
                               help="momentum μ of the memory bank's update"),
        "crd_embed_dim": HParam(CRD_EMBED_DIM, "int", 8, 4096, searched=False, help="width of the embedding heads"),
        "crd_negatives_from": HParam("other_classes", "categorical", choices=("other_classes", "uniform"),
                                     searched=False,
                                     help="negatives from the other classes (RepDistiller's CIFAR) or from all samples"),
        "alpha": HParam(0.0, "float", 0.0, 2.0, searched=False, help="weight of an optional Hinton KD term (CRD+KD: 1)"),
        "temperature": HParam(4.0, "float", 1.0, 20.0, log=True, searched=False, help="temperature of the KD term"),
    }

    @classmethod
    def feature_taps(cls, hp):
        return {"student": ["penultimate"], "teacher": ["penultimate"]}

    def build_connectors(self, student_shapes, teacher_shapes):
        extra = self.ctx.extra
        if "train_size" not in extra:
            raise ValueError("crd needs the training split's size (the loop's ctx.extra['train_size'])")
        labels = extra.get("train_labels") if self.hp["crd_negatives_from"] == "other_classes" else None
        if self.hp["crd_negatives_from"] == "other_classes" and labels is None:
            raise ValueError("crd_negatives_from: other_classes needs the training labels (ctx.extra['train_labels'])")
        return {"crd": CRDLoss(_width(student_shapes["penultimate"]), _width(teacher_shapes["penultimate"]),
                               int(extra["train_size"]), embed_dim=int(self.hp["crd_embed_dim"]),
                               negatives=int(self.hp["crd_negatives"]), temperature=self.hp["crd_temperature"],
                               momentum=self.hp["crd_momentum"], labels=labels)}

    def training_step(self, x, y, index=None):
        if index is None:
            raise ValueError("crd needs each batch's sample indices (positions in the training split)")
        s_logits, s_feats, t_logits, t_feats = self.forward_features(x)
        alpha = float(self.hp["alpha"])
        terms = {
            "ce": cross_entropy(s_logits, y),
            "crd": self.hp["crd_weight"] * self.connectors["crd"](s_feats["penultimate"], t_feats["penultimate"], index),
        }
        if alpha > 0:
            terms["kd"] = alpha * soft_kl(s_logits, t_logits, self.hp["temperature"])
        return Step(terms=terms, logits=s_logits)
