"""`reviewkd`: distilling knowledge via knowledge review (Chen, Liu, Zhao & Jia, CVPR 2021).

The student's stage outputs and its penultimate (pooled) features are the
levels, shallowest first. A residual review path of attention-based fusion
modules runs from the deepest level to the shallowest
(`trainables.connectors.ReviewPath`, the authors' `ReviewKD` + `ABF`): each
level's features are mapped to a shared middle width (min(512, the deepest
stage's width), as the authors' min(512, pooled width)) and fused with the residual of all deeper levels by two spatial
attention maps, then mapped to the teacher's shape at that level (paper
Sec. 3.2, Fig. 2(d) and 3). Each output is compared with the teacher's feature
of its level by the hierarchical context loss (Sec. 3.3,
`feature_losses.hcl_loss`: MSE at the full size and at 4×4, 2×2, 1×1 pooled
levels, weights 1, 1/2, 1/4, 1/8, normalised):

    loss = CE(s, y) + min((epoch − 1) / warm-up, 1) · λ · Σ_levels HCL(review(F_s)_level, F_t,level)

As the authors' CIFAR-100 code (dvlab-research/ReviewKD `CIFAR-100/train.py`,
`model/reviewkd.py`, `script/reviewKD.sh`): λ = 5 for resnet32x4 → resnet8x4
(`--kd-loss-weight 5.0`; their other pairs: WRN and ShuffleNetV1 students 5,
ShuffleNetV2 8, resnet56 → resnet20 0.6, resnet110 → resnet32 1), a linear
warm-up over 20 epochs (`min(1, epoch / 20)` with their epoch counted from 0,
written here with the 1-based epoch, so the first epoch trains on CE alone;
mdistiller's port uses epoch / 20 from epoch 1), CE at weight 1, no KD term.
The student's levels are its stage outputs after their ReLU (the ``stages``
tap) and its pooled features (``penultimate``, a (D,) vector treated as a
(D, 1, 1) map); the teacher's are its stage outputs *before* their last ReLU
(``stages:preact``, the authors' `preact=True`) and its pooled features.
`reviewkd_teacher_stages: post` takes the teacher's post-activation stage
outputs instead, for families whose pre-activations are not tensors (a
torchvision ResNet adds and activates in place): a deviation, recorded in the
trial's hyperparameters. The review path is trained with the student (the
authors optimise it in the same SGD as the student) and dropped afterwards
(`connector_params`). For the 1-D CNNs, whose penultimate features are the
flattened last stage rather than a pooled one, the deepest level is that
flattened vector.

Reference: 75.63, resnet32x4 → resnet8x4 (CIFAR-100, the paper's table on the
CRD setting, all 50k images; the authors' README has no CIFAR table). Their
recipe differs from RepDistiller's: SGD with Nesterov momentum 0.9, lr 0.1,
batch 128, weight decay 5e-4, 240 epochs, ×0.1 at 150/180/210.
"""

from __future__ import annotations

from ..connectors import REVIEWKD_MAX_MID_CHANNELS, ReviewPath
from ..feature_losses import REVIEWKD_WARMUP_EPOCHS, REVIEWKD_WEIGHT, hcl_loss
from ..losses import cross_entropy
from ._feature import FeatureMethod, levels_text
from .base import HParam, Step, register

#: the teacher's stage taps: before the last ReLU (the authors'), or after it
TEACHER_STAGES = {"preact": "stages:preact", "post": "stages"}


@register("reviewkd")
class ReviewKD(FeatureMethod):
    label = "ReviewKD (Chen et al. 2021)"
    hparams = {
        "reviewkd_weight": HParam(REVIEWKD_WEIGHT, "float", 0.1, 16.0, log=True, help="weight λ of the review loss"),
        "kd_warmup_epochs": HParam(REVIEWKD_WARMUP_EPOCHS, "int", 0, 1000, searched=False,
                                   help="epochs over which the review loss ramps up linearly (0: none)"),
        "reviewkd_teacher_stages": HParam("preact", "categorical", choices=tuple(TEACHER_STAGES), searched=False,
                                          help="the teacher's stage outputs before their last activation (the "
                                               "authors') or after it (families without pre-activation taps)"),
    }

    @classmethod
    def feature_taps(cls, hp=None):
        which = (hp or {}).get("reviewkd_teacher_stages", cls.hparams["reviewkd_teacher_stages"].default)
        return {"student": ["stages", "penultimate"], "teacher": [TEACHER_STAGES[which], "penultimate"]}

    def __init__(self, ctx, hp):
        super().__init__(ctx, hp)
        self._epoch = 1

    @property
    def teacher_stages(self) -> str:
        return TEACHER_STAGES[self.hp["reviewkd_teacher_stages"]]

    def levels(self, feats: dict, stages: str) -> list:
        return [*feats[stages], feats["penultimate"]]

    def check_shapes(self, student_shapes, teacher_shapes):
        s, t = self.levels(student_shapes, "stages"), self.levels(teacher_shapes, self.teacher_stages)
        if len(s) != len(t):
            raise ValueError(f"reviewkd pairs levels one to one: the student has {len(s) - 1} stages "
                             f"({levels_text(s[:-1])}), the teacher {len(t) - 1} ({levels_text(t[:-1])})")

    def build_connectors(self, student_shapes, teacher_shapes):
        return {"review": ReviewPath(self.levels(student_shapes, "stages"),
                                     self.levels(teacher_shapes, self.teacher_stages), REVIEWKD_MAX_MID_CHANNELS)}

    def apply_connectors(self, s_feats, t_feats):
        return self.connectors["review"](self.levels(s_feats, "stages"))

    def start_epoch(self, epoch: int) -> None:
        self._epoch = epoch

    def warmup_factor(self) -> float:
        """min((epoch − 1) / warm-up, 1) with the 1-based epoch: the authors' min(1, epoch / warm-up)
        with theirs counted from 0 (1 without warm-up)."""
        w = int(self.hp["kd_warmup_epochs"])
        return 1.0 if w <= 0 else min((self._epoch - 1) / w, 1.0)

    def training_step(self, x, y):
        f = self.forward_both(x)
        outs = self.apply_connectors(f.student, f.teacher)
        targets = self.connectors["review"].as_maps(self.levels(f.teacher, self.teacher_stages))
        terms = {
            "ce": cross_entropy(f.student_logits, y),
            "review": self.warmup_factor() * self.hp["reviewkd_weight"] * hcl_loss(outs, targets),
        }
        return Step(terms=terms, logits=f.student_logits)
