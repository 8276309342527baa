"""`takd`: Teacher Assistant Knowledge Distillation (Mirzadeh et al., AAAI 2020).

A chain teacher → assistant → student, every link Hinton KD at the same
(temperature, alpha):

    loss = (1−α)·CE(s, y) + α·T²·KL(softmax(t/T) ‖ softmax(s/T))

One trial, two generations:
  generation 0: the assistant (`ctx.extra["assistant"]`, an intermediate-size
    model; random init) is trained by KD from the frozen pretrained teacher
    (`ctx.teacher` with its checkpoint). Rows have role "assistant". The
    generation ends with the assistant's *best-validation* weights
    (`keep_best_weights`), as the authors' code reloads its
    `..._best.pth.tar` before the next link.
  generation 1: the assistant is frozen and the student (random init) is
    trained by KD from it. Rows have role "student".

Protocol reading: the paper distils the TA from the teacher (it is not
pre-trained on labels alone first) and then the student from the TA; both
steps use KD with λ (= α) and T. The paper tunes λ and T per run by TPE; here
both links share one (T, α) pair, searched by the study. Each link gets the
trial's full epoch budget.

Reproducing the paper's numbers: the authors' `train.py` computes the soft
term with `nn.KLDivLoss()` (mean over batch × classes); set
`kd_reduction: mean` for that (default `batchmean`, Hinton's form).
"""

from __future__ import annotations

import statistics

import torch

from ..losses import KD_REDUCTIONS, hinton_kd
from ..options import REQUIRED, Option
from .base import HParam, Method, Step, freeze, register


@register("takd")
class TeacherAssistantKD(Method):
    label = "TAKD (Mirzadeh et al. 2020)"
    kind = "remedy"
    hparams = {
        "temperature": HParam(4.0, "float", 1.0, 20.0, log=True, help="softening temperature T (both links)"),
        "alpha": HParam(0.9, "float", 0.0, 1.0, help="weight of the soft-target term (both links)"),
        "kd_reduction": HParam("batchmean", "categorical", choices=KD_REDUCTIONS, searched=False,
                               help="KL reduction: batchmean (Hinton) or mean over batch x classes (TAKD's code)"),
    }
    needs_teacher = True
    spec_options = {
        "assistant_sizes": Option(REQUIRED, ("array",), "the teacher-assistant sizes to try (student family); "
                                  "searched as assistant_size", items=("integer", "string")),
    }

    def __init__(self, ctx, hp):
        super().__init__(ctx, hp)
        assistant = ctx.extra.get("assistant")
        if not assistant:
            raise ValueError("takd needs an assistant model config (config key 'assistant')")
        self.teacher = freeze(ctx.load_model(ctx.teacher))
        self.assistant = ctx.build_model(assistant)
        self.student = ctx.build_model(ctx.student)
        self._generation = 0

    @classmethod
    def planned_generations(cls, hp=None) -> int:
        return 2

    @classmethod
    def sample_flops(cls, model_flops, student, teacher, generations=2, options=None):
        """The mean of the two generations' epochs: the assistant A trained from the frozen teacher,
        then the student from the frozen A; A is the mean over the `assistant_sizes` searched
        (the student's family)."""
        sizes = (options or {}).get("assistant_sizes") or [student.get("size")]
        A = statistics.fmean(model_flops({**student, "size": z}) for z in sizes)
        S = model_flops(student)
        T = model_flops(teacher) if teacher is not None else 0.0
        return (3 * A + T + 3 * S + A) / 2, (A + S) / 2

    def start_generation(self, generation: int) -> None:
        self._generation = generation
        if generation >= 1:
            freeze(self.assistant)

    def keep_best_weights(self, generation: int):
        """The assistant's generation ends with its best-validation weights."""
        return self.assistant if generation == 0 else None

    def frozen_modules(self):
        return [self.teacher] + ([self.assistant] if self._generation >= 1 else [])

    def _pair(self):
        """(the model trained now, its frozen teacher)."""
        return (self.assistant, self.teacher) if self._generation == 0 else (self.student, self.assistant)

    def trainable_parameters(self):
        return self._pair()[0].parameters()

    def training_step(self, x, y):
        learner, teacher = self._pair()
        with torch.no_grad():
            t_logits = teacher(x)
        logits = learner(x)
        terms = hinton_kd(logits, t_logits, y, self.hp["temperature"], self.hp["alpha"], self.hp["kd_reduction"])
        return Step(terms=terms, logits=logits)

    def eval_logits(self, x):
        if self._generation == 0:
            return {("assistant", None): self.assistant(x)}
        return {("student", None): self.student(x)}
