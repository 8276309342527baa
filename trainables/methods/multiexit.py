"""`multiexit`, `multiexit_const` and `multiexit_ce`: training multi-exit networks (Phuong & Lampert, ICCV 2019).

The student is built as a multi-exit network (`{**ctx.student, "multi_exit": True}`)
whose forward pass returns the logits of every exit, earliest first.

`multiexit_ce` — the baseline ("classification only" in the authors' code,
mary-phuong/multiexit-distillation `ClassificationOnlyLoss`): the plain sum of
per-exit cross-entropies.

Distillation-based training (paper Eq. 5): the last exit K learns from the
labels, each earlier exit also from the last exit's softened, detached
prediction:

    L = g·[ (1−C)·CE(z_K, y) + Σ_{k<K} ( (1−C)·CE(z_k, y) + C·T²·CE(softmax(z_K/T).detach(), log_softmax(z_k/T)) ) ]

with C = `distill_weight` (0.5, the authors' CIFAR value). The soft term is a
cross-entropy with the soft target, as in the code (KL plus the target's
entropy, a constant for the student). g is the authors' global scale
`2.0 * 5 / n_exits` (their CIFAR config, 2·5/11 for the 11-exit MSDNet),
computed from this network's number of exits; it is a fixed constant, not a
hyperparameter. The authors ship this loss with two temperature rules, one
class each, and so does kdstudy, one method each (same loss, same code):

`multiexit` — the adaptive rule (`DistillationBasedLoss`, the authors'
default). T starts at 1.0; after every training step, if the batch-mean max
probability of the last exit at the current T (from that step's forward
pass) exceeds `maxprob` (0.5), T is multiplied by `temperature_factor`
(1.05); it never decreases. T is a buffer, so it is checkpointed and resumes
with the trial; the loop records it as temperature_now. On a 10-class problem
the rule drives T to 5–11, and the T²-weighted distillation of the early exits
can then dominate the shared trunk's gradient and cost the final exit
(issue 20: 15 points in the old quickstart); the report states the T it reached.

`multiexit_const` — a constant temperature (`DistillationLossConstTemp`):
the same loss with T = `temperature` throughout (the authors' example config
uses T = 4), a hyperparameter Optuna can search (declared range 1–8, log).

The two rules are two methods, not one method with a rule switch, so every
hyperparameter of a method applies to each of its trials (T only under the
constant rule; maxprob and the factor only under the adaptive one), each rule
is searched and confirmed on the shared paired seeds on its own, and the
report compares both with exit-wise CE.

Rows: one per exit, each with its cumulative FLOPs (`exit_flops`).
"""

from __future__ import annotations

import torch

from .. import models
from ..losses import adapt_temperature, multi_exit_ce, multi_exit_distillation
from .base import HParam, Method, Step, register


@register("multiexit_ce")
class MultiExitCE(Method):
    """Baseline: loss = Σ_k CE(z_k, y) over the exits of a multi-exit student."""
    label = "exit-wise CE (multiexit_ce)"

    hparams = {}
    multi_exit = True

    def __init__(self, ctx, hp):
        super().__init__(ctx, hp)
        self.student = ctx.build_model({**ctx.student, "multi_exit": True})
        in_shape = ctx.extra.get("in_shape")
        self._exit_flops = models.exit_flops(self.student, tuple(in_shape)) if in_shape is not None else None

    def exit_terms(self, exit_logits, y):
        return multi_exit_ce(exit_logits, y)

    def training_step(self, x, y):
        exit_logits = self.student(x)
        return Step(terms=self.exit_terms(exit_logits, y), logits=exit_logits[-1])

    def eval_logits(self, x):
        return {("student", k): z for k, z in enumerate(self.student(x))}

    def row_facts(self, role, exit):
        if self._exit_flops is None or exit is None:
            return {}
        return {"exit_flops": float(self._exit_flops[exit])}


DISTILL_WEIGHT = HParam(0.5, "float", 0.1, 0.9, help="C: weight of the distillation part of each early exit")


@register("multiexit")
class MultiExitDistillation(MultiExitCE):
    """Distillation-based multi-exit training with the adaptive temperature (module docstring)."""
    label = "multi-exit distillation, adaptive T (Phuong & Lampert 2019)"

    hparams = {
        "distill_weight": DISTILL_WEIGHT,
        "maxprob": HParam(0.5, "float", 0.1, 0.95, searched=False,
                          help="target mean max-probability of the last exit at T"),
        "temperature_factor": HParam(1.05, "float", 1.0, 1.2, searched=False,
                                     help="factor T is multiplied by while the last exit is too sure"),
    }

    def __init__(self, ctx, hp):
        super().__init__(ctx, hp)
        self.register_buffer("temperature", torch.ones((), dtype=torch.float32))
        self.global_scale = 2.0 * 5.0 / self.student.num_exits

    def exit_terms(self, exit_logits, y):
        return multi_exit_distillation(exit_logits, y, self.temperature, self.hp["distill_weight"], self.global_scale)

    def after_step(self, step):
        self.temperature.copy_(adapt_temperature(self.temperature, step.logits, float(self.hp["maxprob"]),
                                                 float(self.hp["temperature_factor"])))

    def current_temperature(self):
        return float(self.temperature)


@register("multiexit_const")
class MultiExitDistillationConstT(MultiExitCE):
    """Distillation-based multi-exit training at a constant temperature (module docstring)."""
    label = "multi-exit distillation, constant T (multiexit_const)"

    hparams = {
        "distill_weight": DISTILL_WEIGHT,
        "temperature": HParam(4.0, "float", 1.0, 8.0, log=True,
                              help="T, constant through training (4 in the authors' example config)"),
    }

    def __init__(self, ctx, hp):
        super().__init__(ctx, hp)
        self.global_scale = 2.0 * 5.0 / self.student.num_exits

    def exit_terms(self, exit_logits, y):
        return multi_exit_distillation(exit_logits, y, float(self.hp["temperature"]), self.hp["distill_weight"],
                                       self.global_scale)

    def current_temperature(self):
        return float(self.hp["temperature"])
