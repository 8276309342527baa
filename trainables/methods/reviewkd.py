"""`reviewkd`: distilling knowledge via knowledge review (Chen, Liu, Zhao & Jia, CVPR 2021).

DRAFT: not registered until the models' feature taps land (wave 2).

The student's stage outputs and pooled penultimate features go through a
residual review path of attention-based fusion modules, deepest level first
(`trainables.connectors.ReviewPath`: each level fuses its features with the
residual of the deeper levels, then maps to the teacher's shape), and each
output is compared with the teacher's feature of that level by the
hierarchical context loss (`feature_losses.hcl_loss`: MSE at the full size and
at 4×4, 2×2, 1×1 pooled levels, weights 1, 1/2, 1/4, 1/8, normalised):

    loss = CE(s, y) + min(epoch / warm-up, 1) · λ · Σ_levels HCL(ABF path(F_s)_level, F_t,level)

As the authors' CIFAR-100 code (dvlab-research/ReviewKD `train.py`,
`model/reviewkd.py`): λ = 5 for resnet32x4 → resnet8x4 (`--kd-loss-weight
5.0`), a linear warm-up over 20 epochs (`min(1, epoch / 20)`, their epoch
counting from 0; here the 1-based epoch, as mdistiller's and kdstudy's DKD),
the three stage outputs plus the pooled features as levels, no KD term.
The authors take the *teacher's* stage outputs before their last ReLU
(`preact=True`), the student's after it: TEACHER_STAGES names the tap;
until the families expose pre-activation taps this draft uses the stage
outputs (post-ReLU) — a deviation to remove in wave 2.
Reference: the paper's CIFAR-100 table, resnet32x4 → resnet8x4 75.63 (the
authors' README has no CIFAR table; their recipe differs from RepDistiller's:
SGD with Nesterov, lr 0.1, batch 128, 240 epochs, decays at 150/180/210).
"""

from __future__ import annotations

from ..connectors import REVIEWKD_MAX_MID_CHANNELS, ReviewPath
from ..feature_losses import REVIEWKD_WARMUP_EPOCHS, REVIEWKD_WEIGHT, hcl_loss
from ..losses import cross_entropy
from ._feature import FeatureMethod
from .base import HParam, Step

#: the teacher's stage tap; the authors' is the pre-ReLU output of each stage (see the module docstring)
TEACHER_STAGES = "stages"


# DRAFT: @register("reviewkd") once the feature taps exist
class ReviewKD(FeatureMethod):
    hparams = {
        "reviewkd_weight": HParam(REVIEWKD_WEIGHT, "float", 0.3, 16.0, log=True, help="weight λ of the review loss"),
        "kd_warmup_epochs": HParam(REVIEWKD_WARMUP_EPOCHS, "int", 0, 1000, searched=False,
                                   help="epochs over which the review loss ramps up linearly (0: none)"),
    }

    @classmethod
    def feature_taps(cls, hp):
        return {"student": ["stages", "penultimate"], "teacher": [TEACHER_STAGES, "penultimate"]}

    def __init__(self, ctx, hp):
        super().__init__(ctx, hp)
        self._epoch = 1

    def build_connectors(self, student_shapes, teacher_shapes):
        s = [*student_shapes["stages"], student_shapes["penultimate"]]
        t = [*teacher_shapes[TEACHER_STAGES], teacher_shapes["penultimate"]]
        if len(s) != len(t):
            raise ValueError(f"reviewkd pairs levels one to one: the student has {len(s) - 1} stages, "
                             f"the teacher {len(t) - 1}")
        return {"review": ReviewPath(s, t, REVIEWKD_MAX_MID_CHANNELS)}

    def start_epoch(self, epoch: int) -> None:
        self._epoch = epoch

    def warmup_factor(self) -> float:
        w = int(self.hp["kd_warmup_epochs"])
        return 1.0 if w <= 0 else min(self._epoch / w, 1.0)

    def training_step(self, x, y):
        s_logits, s_feats, _, t_feats = self.forward_features(x)
        review = self.connectors["review"]
        outs = review([*s_feats["stages"], s_feats["penultimate"]])
        targets = review.as_maps([*t_feats[TEACHER_STAGES], t_feats["penultimate"]])
        terms = {
            "ce": cross_entropy(s_logits, y),
            "review": self.warmup_factor() * self.hp["reviewkd_weight"] * hcl_loss(outs, targets),
        }
        return Step(terms=terms, logits=s_logits)
