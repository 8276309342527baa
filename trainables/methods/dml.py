"""`dml`: Deep Mutual Learning (Zhang, Xiang, Hospedales & Lu, CVPR 2018).

Two models learn together from random initialisation, each from the labels
and from the other's prediction (Eq. 2–3 of the paper):

    L_student = CE(s, y) + w·T²·KL(softmax(t/T) ‖ softmax(s/T))   (t detached)
    L_teacher = CE(t, y) + w·T²·KL(softmax(s/T) ‖ softmax(t/T))   (s detached)

The paper uses T = 1 and w = 1 (the defaults; T² = 1 then). Here the
"teacher" is the study's online teacher (`ctx.teacher`, usually larger,
built fresh and trained); both models are reported.

Reading chosen: the paper's Algorithm 1 updates Θ1, recomputes the
predictions, then updates Θ2 (sequential). The shared loop takes one
optimizer step per batch, so both models are updated simultaneously from
the same forward pass (each peer's prediction detached, so each model's
gradient comes only from its own loss) — the form most reimplementations
use; the difference is that Θ2's target on a batch is Θ1's prediction
before rather than after Θ1's step on that batch.
"""

from __future__ import annotations

import itertools

from ..losses import mutual_terms
from .base import HParam, Method, Step, register


@register("dml")
class DeepMutualLearning(Method):
    label = "DML (Zhang et al. 2018)"
    hparams = {
        "mutual_weight": HParam(1.0, "float", 0.1, 10.0, log=True, help="weight of each mutual KL term"),
        "temperature": HParam(1.0, "float", 1.0, 8.0, log=True, searched=False,
                              help="temperature of the mutual KL (1 in the paper)"),
    }
    online_teacher = True

    def __init__(self, ctx, hp):
        super().__init__(ctx, hp)
        if not ctx.teacher:
            raise ValueError("dml needs a teacher model config (the online peer)")
        self.student = ctx.build_model(ctx.student)
        self.teacher = ctx.build_model(ctx.teacher)

    def trainable_parameters(self):
        return itertools.chain(self.student.parameters(), self.teacher.parameters())

    def training_step(self, x, y):
        s, t = self.student(x), self.teacher(x)
        T, w = self.hp["temperature"], self.hp["mutual_weight"]
        terms = mutual_terms(s, t, y, T, w)
        terms.update({f"teacher_{k}": v for k, v in mutual_terms(t, s, y, T, w).items()})
        return Step(terms=terms, logits=s)

    def eval_logits(self, x):
        return {("student", None): self.student(x), ("teacher", None): self.teacher(x)}
