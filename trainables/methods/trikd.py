"""`trikd`: Triplet Knowledge Distillation (Wang, Liu, Kan, Han, Wu & Shan 2023, arXiv 2305.15975).

Three models: an online teacher T (`ctx.teacher`, usually larger; random
init; trained), the student S (random init; trained) and a frozen anchor A
of the student's architecture. Per batch, with T = temperature:

    L_S = CE(s, y) + w_m·T²·KL(p_t ‖ p_s) + w_a·T²·KL(p_a ‖ p_s)
    L_T = CE(t, y) + w_m·T²·KL(p_s ‖ p_t) + w_a·T²·KL(p_a ‖ p_t)

(p_x = softmax(x/T); the peer's and the anchor's predictions detached). The
anchor term on the teacher confines it to solutions a student-sized model
can express, so its hints stay easy to mimic; the paper's ablation finds
CE + teacher KD + anchor KD the best combination.

Curriculum (`generations`, default 3): generation 0 has no anchor — plain
online mutual learning between T and S (the anchor terms are absent, not
zero-weighted). At the start of generation g ≥ 1 the anchor becomes a frozen
copy of generation g−1's student, and teacher and student are rebuilt from a
fresh random initialisation (the paper: "T and S start from random
initialisation"; the student of generation g is the anchor of g+1). Each
generation gets the trial's full epoch budget. Both roles are reported.

Readings chosen (the paper gives no code): T and the mutual/anchor weights
are hyperparameters with T = 1 and weights 1 by default, the Deep Mutual
Learning setting the online part builds on; the T² factor keeps gradient
scale when T ≠ 1. Teacher and student are updated simultaneously from one
forward pass (see `dml`).

Resuming: `start_generation(g)` rebuilds generation g's module structure
(an anchor for g ≥ 1) deterministically, so a checkpoint's state_dict —
anchor included — loads into it.
"""

from __future__ import annotations

import itertools

import torch

from ..losses import mutual_terms
from .base import HParam, Method, Step, freeze, register


@register("trikd")
class TripletKD(Method):
    label = "TriKD (Wang et al. 2023)"
    hparams = {
        "anchor_weight": HParam(1.0, "float", 0.1, 10.0, log=True, help="weight w_a of the KL toward the anchor"),
        "mutual_weight": HParam(1.0, "float", 0.1, 10.0, log=True, help="weight w_m of the teacher↔student KL"),
        "temperature": HParam(1.0, "float", 1.0, 8.0, log=True, searched=False, help="softening temperature T"),
        "generations": HParam(3, "int", 1, 6, searched=False,
                              help="curriculum generations (0: no anchor; g: anchor = student of g−1)"),
    }
    online_teacher = True

    @classmethod
    def sample_flops(cls, model_flops, student, teacher, generations=1, options=None):
        """The online pair's passes, plus the frozen anchor's forward (the student's architecture)
        in every generation after the first."""
        train, evaluated = super().sample_flops(model_flops, student, teacher, generations, options)
        return train + model_flops(student) * (generations - 1) / generations, evaluated

    def __init__(self, ctx, hp):
        super().__init__(ctx, hp)
        if not ctx.teacher:
            raise ValueError("trikd needs a teacher model config (the online teacher)")
        self.student = ctx.build_model(ctx.student)
        self.teacher = ctx.build_model(ctx.teacher)
        self.anchor = None
        self._generation = 0

    def start_generation(self, generation: int) -> None:
        self._generation = generation
        if generation == 0:
            return
        anchor = self.ctx.build_model(self.ctx.student)
        anchor.load_state_dict(self.student.state_dict())
        self.anchor = freeze(anchor)
        # both learners restart from a fresh random initialisation each generation
        self.teacher = self.ctx.build_model(self.ctx.teacher)
        self.student = self.ctx.build_model(self.ctx.student)

    def frozen_modules(self):
        return [self.anchor] if self.anchor is not None else []

    def trainable_parameters(self):
        return itertools.chain(self.student.parameters(), self.teacher.parameters())

    def training_step(self, x, y):
        s, t = self.student(x), self.teacher(x)
        a = None
        if self.anchor is not None:
            with torch.no_grad():
                a = self.anchor(x)
        T, wm, wa = self.hp["temperature"], self.hp["mutual_weight"], self.hp["anchor_weight"]
        terms = mutual_terms(s, t, y, T, wm, a, wa)
        terms.update({f"teacher_{k}": v for k, v in mutual_terms(t, s, y, T, wm, a, wa).items()})
        return Step(terms=terms, logits=s)

    def eval_logits(self, x):
        return {("student", None): self.student(x), ("teacher", None): self.teacher(x)}
