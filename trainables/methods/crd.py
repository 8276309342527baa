"""`crd`: contrastive representation distillation (Tian, Krishnan & Isola, ICLR 2020).

Linear + L2-normalised heads g_s, g_t embed the penultimate features of
student and teacher (the ``penultimate`` tap) in 128 dimensions; a memory
bank holds every training sample's embeddings of both; each sample is
contrasted with its own bank entry (the positive) and K = 16384 bank entries
of other samples (negatives), at temperature τ = 0.07:

    loss = CE(s, y) + β · [NCE(g_s(f_s) vs teacher bank) + NCE(g_t(f_t) vs student bank)]
           [+ w_kd · T² · KL(softmax(t/T) ‖ softmax(s/T))]

NCE is the bound of paper Eq. 18 with the critic of Eq. 10, h = P / (P + K/N),
P = exp(e·m/τ)/Z, N the training samples, Z estimated once on the first batch
(`trainables.crd`, the authors' `CRDLoss`/`ContrastMemory`); after each batch
its bank entries move with momentum 0.5: m ← normalise(0.5 m + 0.5 e).
Defaults are RepDistiller's (`train_student.py`: `--feat_dim 128 --nce_k 16384
--nce_t 0.07 --nce_m 0.5`; `--distill crd -a 0 -b 0.8`): β = 0.8, CE at
weight 1, no KD term (`kd_weight` 0); `kd_weight: 1, temperature: 4` is its
CRD+KD row (`-a 1 -b 0.8`). Negatives are K samples of the *other* classes,
drawn without replacement (with replacement where fewer exist), as
RepDistiller's CIFAR sampler (`CIFAR100InstanceSample`, mode "exact");
`crd_negatives_from: uniform` draws them from all samples with replacement
(the memory's own sampler). K should stay below the other-class samples
(49,500 on CIFAR-100, a third of them with the default K): a smaller training
split needs a smaller K (the MNIST-1D quickstart's features spec: 2048).

The heads are trained with the student (the teacher's head too; the teacher
stays frozen) and dropped afterwards (`connector_params`); the bank and Z are
buffers: checkpointed and resumed with the method, never optimised. The bank
holds 2 × N × 128 float32 values (51 MB for CIFAR's 50,000 images;
bench/RESULTS.md measures it and the time per epoch).

What it takes from the loop, as any plug-in could: each batch's positions in
the training split (`needs_sample_index`: `training_step(x, y, index)`), the
split's size (`Context.num_train_samples`) and, for class-aware negatives, its
labels in index order (`Context.train_labels`).

Reference (RepDistiller, 240 epochs, all 50k images, last epoch): resnet32x4
→ resnet8x4 75.51; resnet56 → resnet20 71.16 (its README lists no CRD+KD numbers).
"""

from __future__ import annotations

import math

from ..crd import CRD_EMBED_DIM, CRD_MOMENTUM, CRD_NEGATIVES, CRD_TEMPERATURE, CRD_WEIGHT, CRDLoss
from ..losses import cross_entropy, soft_kl
from ._feature import FeatureMethod
from .base import HParam, Step, register

NEGATIVES_FROM = ("other_classes", "uniform")


@register("crd")
class ContrastiveRD(FeatureMethod):
    label = "CRD (Tian et al. 2020)"
    needs_sample_index = True
    hparams = {
        "crd_weight": HParam(CRD_WEIGHT, "float", 0.1, 8.0, log=True, help="weight β of the contrastive loss"),
        "crd_temperature": HParam(CRD_TEMPERATURE, "float", 0.02, 0.5, log=True, searched=False,
                                  help="temperature τ of the contrastive scores"),
        "crd_negatives": HParam(CRD_NEGATIVES, "int", 1, 1 << 20, searched=False,
                                help="negatives K per sample, drawn from the memory bank (keep it below the "
                                     "samples of the other classes)"),
        "crd_momentum": HParam(CRD_MOMENTUM, "float", 0.0, 0.99, searched=False,
                               help="momentum μ of the memory bank's update"),
        "crd_embed_dim": HParam(CRD_EMBED_DIM, "int", 8, 4096, searched=False, help="width of the embedding heads"),
        "crd_negatives_from": HParam("other_classes", "categorical", choices=NEGATIVES_FROM, searched=False,
                                     help="negatives from the other classes (RepDistiller's CIFAR sampler) or "
                                          "from all samples"),
        "kd_weight": HParam(0.0, "float", 0.0, 2.0, searched=False,
                            help="weight of an optional Hinton KD term beside CE (CRD+KD: 1)"),
        "temperature": HParam(4.0, "float", 1.0, 20.0, log=True, searched=False, help="temperature of the KD term"),
    }

    @classmethod
    def feature_taps(cls, hp=None):
        return {"student": ["penultimate"], "teacher": ["penultimate"]}

    def build_connectors(self, student_shapes, teacher_shapes):
        ctx = self.ctx
        n = int(ctx.num_train_samples)
        if n < 2:
            raise ValueError(f"crd needs the training split's size (Context.num_train_samples), got {n}")
        labels = None
        if self.hp["crd_negatives_from"] == "other_classes":
            labels = ctx.train_labels
            if labels is None:
                raise ValueError("crd_negatives_from: other_classes needs the training split's labels "
                                 "(Context.train_labels); use crd_negatives_from: uniform without them")
        return {"crd": CRDLoss(math.prod(student_shapes["penultimate"]), math.prod(teacher_shapes["penultimate"]),
                               n, embed_dim=int(self.hp["crd_embed_dim"]), negatives=int(self.hp["crd_negatives"]),
                               temperature=self.hp["crd_temperature"], momentum=self.hp["crd_momentum"],
                               labels=labels)}

    def apply_connectors(self, s_feats, t_feats):
        """The embedding heads (the bank's scores are the loss's arithmetic)."""
        crd = self.connectors["crd"]
        return crd.embed_s(s_feats["penultimate"]), crd.embed_t(t_feats["penultimate"])

    def training_step(self, x, y, index=None):
        if index is None:
            raise ValueError("crd needs each batch's sample indices (positions in the training split)")
        f = self.forward_both(x)
        terms = {
            "ce": cross_entropy(f.student_logits, y),
            "crd": self.hp["crd_weight"] * self.connectors["crd"](f.student["penultimate"], f.teacher["penultimate"],
                                                                  index),
        }
        if float(self.hp["kd_weight"]) > 0:
            terms["kd"] = self.hp["kd_weight"] * soft_kl(f.student_logits, f.teacher_logits, self.hp["temperature"])
        return Step(terms=terms, logits=f.student_logits)
