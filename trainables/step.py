"""What the loop and the benchmark share: the method's context, its optimiser and schedule, one step.

`trainables.loop.run_trial` trains with these, and `kdstudy bench`
(`trainables.bench`) measures exactly these, so the benchmark measures the
step the loop runs:

- `build_context(...)`: the `Context` a method builds its models from, every
  model placed by the trial's `DevicePlan` (device, layout, compile). Frozen
  models load their weights through `load_weights(cfg)` (the loop reads the
  zoo checkpoint; the benchmark passes None: random weights stand in).
- `build_optimizer`, `build_schedule`: over `Method.trainable_parameters()`,
  the one source of the parameters a method optimises.
- `TrainStep`: one optimisation step -- the sum of the method's loss terms,
  backward, gradient clipping, optimiser step, schedule step, the method's
  `after_step` -- with the epoch's loss, accuracy and terms accumulated on the
  device and read once per epoch (`TrainStep.read`), so a step never waits
  for the device.
"""

from __future__ import annotations

from typing import Callable

import torch

from . import models as models_mod
from .device import DevicePlan
from .methods import Context, Method, Step

SCHEDULES = ("onecycle", "cosine", "step", "constant")
OPTIMIZERS = ("sgd", "adamw")


def build_context(student: dict, teacher: dict | None, num_classes: int, in_shape, plan: DevicePlan,
                  load_weights: Callable[[dict], dict] | None, assistant: dict | None = None,
                  num_train_samples: int = 0, train_labels: torch.Tensor | None = None) -> Context:
    """The `Context` of a method: fresh models and frozen ones, all placed by `plan`.

    `load_weights(cfg)` returns the state dict of a frozen model's config (a
    zoo checkpoint); None builds frozen models with random weights (the benchmark).
    `num_train_samples` and `train_labels` describe the training split (CRD's memory bank).
    """

    def build(cfg: dict) -> torch.nn.Module:
        return plan.place(models_mod.build_model(cfg, in_shape, num_classes))

    def load(cfg: dict) -> torch.nn.Module:
        model = models_mod.build_model(cfg, in_shape, num_classes)
        if load_weights is not None:
            model.load_state_dict(load_weights(cfg))
        return plan.place(model)

    return Context(student=student, teacher=teacher, num_classes=num_classes, build_model=build, load_model=load,
                   num_train_samples=num_train_samples, train_labels=train_labels,
                   extra={"assistant": assistant, "in_shape": in_shape, "device": plan.device})


def build_optimizer(params, train: dict, plan: DevicePlan | None = None):
    """The optimiser of `train` (sgd | adamw) over the parameters that require gradients."""
    name = train.get("optimizer", "adamw")
    lr, wd = float(train.get("lr", 1e-3)), float(train.get("weight_decay", 0.0))
    fused = plan.optimizer_options() if plan is not None else {}
    params = [p for p in params if p.requires_grad]
    if name == "sgd":
        return torch.optim.SGD(params, lr=lr, weight_decay=wd, momentum=float(train.get("momentum", 0.9)),
                               nesterov=bool(train.get("nesterov", True)), **fused)
    if name == "adamw":
        return torch.optim.AdamW(params, lr=lr, weight_decay=wd, **fused)
    raise ValueError(f"unknown optimizer {name!r}; choose one of {OPTIMIZERS}")


def build_schedule(opt, train: dict, steps_per_epoch: int):
    """A per-step LR schedule over the generation's whole training."""
    name = train.get("schedule", "onecycle")
    total = max(1, int(train["epochs"]) * steps_per_epoch)
    if name == "onecycle":
        return torch.optim.lr_scheduler.OneCycleLR(opt, max_lr=[g["lr"] for g in opt.param_groups], total_steps=total)
    if name == "cosine":
        return torch.optim.lr_scheduler.CosineAnnealingLR(opt, T_max=total)
    if name == "step":
        milestones = [int(f * total) for f in train.get("milestones", (0.5, 0.75))]
        return torch.optim.lr_scheduler.MultiStepLR(opt, milestones=milestones, gamma=float(train.get("gamma", 0.1)))
    if name == "constant":
        return torch.optim.lr_scheduler.LambdaLR(opt, lambda _: 1.0)
    raise ValueError(f"unknown schedule {name!r}; choose one of {SCHEDULES}")


class TrainStep:
    """One optimisation step of a method, and the epoch's metrics kept on the device.

    Built once per generation over `params` (the method's
    `trainable_parameters()`, listed once: clipping and the optimiser see the
    same list). `step(x, y)` (or `step(x, y, index)` for a method that sets
    `needs_sample_index`: each sample's row in the training split) runs

        terms = method.training_step(x, y[, index])      (in the plan's autocast)
        loss  = sum(terms)
        zero grads; loss.backward(); clip to `grad_clip` (if set); opt.step(); sched.step()
        method.after_step(step)

    and adds the batch's loss, correct predictions and terms to device-side
    sums; `read()` returns the epoch's means (one host synchronisation) and
    `reset()` starts the next epoch.
    """

    def __init__(self, method: Method, params: list, opt, sched, plan: DevicePlan, grad_clip: float | None = None):
        self.method, self.params, self.opt, self.sched, self.plan = method, list(params), opt, sched, plan
        self.grad_clip = float(grad_clip) if grad_clip else None
        self.reset()

    def reset(self) -> None:
        device = self.plan.device
        self.loss_sum = torch.zeros((), device=device)
        self.correct = torch.zeros((), device=device, dtype=torch.long)
        self.term_sums: dict[str, torch.Tensor] = {}
        self.seen = 0

    def __call__(self, xb: torch.Tensor, yb: torch.Tensor, index: torch.Tensor | None = None) -> Step:
        with self.plan.autocast():
            step = self.method.training_step(xb, yb) if index is None else self.method.training_step(xb, yb, index)
        loss = sum(step.terms.values())
        self.opt.zero_grad(set_to_none=True)
        loss.backward()
        if self.grad_clip:
            torch.nn.utils.clip_grad_norm_(self.params, self.grad_clip)
        self.opt.step()
        self.sched.step()
        self.method.after_step(step)
        n = yb.numel()
        self.seen += n
        self.loss_sum += loss.detach().float() * n
        self.correct += (step.logits.detach().argmax(1) == yb).sum()
        for k, v in step.terms.items():
            self.term_sums[k] = self.term_sums.get(k, 0) + v.detach().float() * n
        return step

    def read(self) -> tuple[float, float, dict[str, float]]:
        """(mean training loss, training accuracy, mean of each term) of the batches since `reset`."""
        seen = max(1, self.seen)
        return (float(self.loss_sum) / seen, float(self.correct) / seen,
                {k: float(v) / seen for k, v in self.term_sums.items()})
