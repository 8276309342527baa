"""`rkd`: Relational Knowledge Distillation (Park, Kim, Lu & Cho, CVPR 2019).

The student learns the *relations* among the teacher's embeddings of a
mini-batch rather than the embeddings themselves, on the penultimate
embeddings (the ``"penultimate"`` feature tap: the (B, D) input of the
classifier, for any model family, torchvision models included):

    loss = (1−α)·CE(s, y) + λ_D·L_dist(f_s, f_t) + λ_A·L_angle(f_s, f_t) [+ α·T²·KL(softmax(t/T) ‖ softmax(s/T))]

* L_dist (Eq. 5): Huber (smooth L1, δ = 1) between the pairwise-distance
  matrices, each divided by the mean of its own non-zero pairwise distances;
* L_angle (Eq. 7): Huber between the cosines of the angles of all triplets
  (normalised difference vectors and `bmm`, as in lenscloth/RKD);
  both in `trainables.losses`.

Defaults follow the authors' classification setting and RepDistiller:
λ_D = 25, λ_A = 50 on the last pooled feature, unnormalised. The authors'
classification code also adds Hinton KD (T = 4); here that term is optional
(α = 0 turns it off and leaves CE at weight 1, the RepDistiller "RKD" row);
α and T are held at their defaults unless a spec searches them.
Teacher and student embeddings may differ in dimension: RKD compares
relations, so no projection is needed. Each model runs one forward pass,
which yields both its logits and its embedding; the frozen teacher's under no_grad.
"""

from __future__ import annotations

from ..losses import cross_entropy, rkd_angle, rkd_distance, soft_kl
from .base import FrozenTeacherMethod, HParam, Step, register


@register("rkd")
class RelationalKD(FrozenTeacherMethod):
    label = "RKD (Park et al. 2019)"
    hparams = {
        "rkd_distance_weight": HParam(25.0, "float", 1.0, 100.0, log=True, help="weight λ_D of the distance loss"),
        "rkd_angle_weight": HParam(50.0, "float", 2.0, 200.0, log=True, help="weight λ_A of the angle loss"),
        "alpha": HParam(0.0, "float", 0.0, 1.0, searched=False,
                        help="weight of an optional Hinton KD term (0: off, CE at weight 1)"),
        "temperature": HParam(4.0, "float", 1.0, 20.0, log=True, searched=False,
                              help="temperature of the optional KD term"),
    }

    #: elementwise work per triplet of the angle loss, forward and backward, teacher and student
    #: (about 30 tensor operations over N³ values, memory-bound), in FLOP-equivalents at the
    #: planner's assumed CPU throughput (study.plan.ASSUMED_CPU_FLOPS, 5e10/s): measured on CPU runs
    #: of the quickstart, batch 128, 57 batches an epoch: 2.75 s against 0.31 s per epoch for Hinton
    #: KD (1,000 per triplet), and 3.91 s against 0.48 s on a quiet core (1,400)
    ANGLE_FLOPS_PER_TRIPLET = 1000.0

    @classmethod
    def loss_flops(cls, batch_size: int) -> float:
        return cls.ANGLE_FLOPS_PER_TRIPLET * float(batch_size) ** 3

    @classmethod
    def feature_taps(cls, hp=None):
        return {"student": ["penultimate"], "teacher": ["penultimate"]}

    def training_step(self, x, y):
        f = self.forward_both(x)
        fs, ft = f.student["penultimate"], f.teacher["penultimate"]
        s_logits, t_logits = f.student_logits, f.teacher_logits
        alpha = float(self.hp["alpha"])
        terms = {
            "ce": (1.0 - alpha) * cross_entropy(s_logits, y),
            "rkd_distance": self.hp["rkd_distance_weight"] * rkd_distance(fs, ft),
            "rkd_angle": self.hp["rkd_angle_weight"] * rkd_angle(fs, ft),
        }
        if alpha > 0:
            terms["kd"] = alpha * soft_kl(s_logits, t_logits.detach(), self.hp["temperature"])
        return Step(terms=terms, logits=s_logits)
