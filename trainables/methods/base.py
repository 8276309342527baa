"""What a distillation method is, and the registry that finds one by name.

A method owns the models it trains (as submodules, so `.to(device)` and
`state_dict()` cover them), declares its hyperparameters, and turns one
batch into named loss terms. The shared loop (`trainables.loop`) sums the
terms, steps the optimizer over `trainable_parameters()`, evaluates every
model in `eval_logits()`, checkpoints `state_dict()` and reports. Adding a
method never touches the loop: write one file in this package and decorate
its class with `@register("name")`.

Features beyond logits come from **feature taps** (`trainables.models.taps`,
where the names are documented): a method declares what it reads with the
classmethod ``feature_taps(hp) -> {"student": [names], "teacher": [names]}``
(default: nothing, and then no hook is installed anywhere), e.g.
``{"student": ["stages", "penultimate"], "teacher": ["stages", "penultimate"]}``.
`FrozenTeacherMethod` serves them: ``forward_both(x)`` returns a `Forward` with
the student's logits and features (with their graph) and the frozen teacher's
(computed under ``no_grad``, in eval mode), all from one forward pass of each
model; ``tap_shapes(role)`` gives each feature's per-sample shape before
training (for connectors: a FitNets regressor, CRD's embedding heads), from a
meta forward that costs nothing. A method with its own models uses
``Taps(model, names)`` the same way. The taps work for every model family
(built-in, torchvision, plug-in), compiled or not, channels_last or not, under
bf16 autocast (the features are then bf16, like the logits: cast them with
``.float()`` where a loss needs float32).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Callable, ClassVar, Iterator

import torch
from torch import nn

from ..models.taps import Taps


@dataclass(frozen=True)
class HParam:
    """One searchable hyperparameter: its default and its search range.

    kind is "float", "int" or "categorical"; low/high (and log) bound the
    numeric kinds; choices lists a categorical's values.
    """

    default: Any
    kind: str = "float"
    low: float | None = None
    high: float | None = None
    log: bool = False
    choices: tuple | None = None
    help: str = ""
    #: searched by default when a spec does not mention it (False: held at its default)
    searched: bool = True

    def check(self, name: str, value: Any) -> str | None:
        """Return an error message if `value` is not allowed, else None."""
        if self.kind == "categorical":
            if value not in (self.choices or ()):
                return f"{name}={value!r} is not one of {list(self.choices or ())}"
            return None
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            return f"{name} must be a number, got {value!r}"
        if self.kind == "int" and int(value) != value:
            return f"{name} must be an integer, got {value!r}"
        if self.low is not None and value < self.low:
            return f"{name}={value} is below its minimum {self.low}"
        if self.high is not None and value > self.high:
            return f"{name}={value} is above its maximum {self.high}"
        return None


@dataclass
class Step:
    """What a method returns for one training batch.

    terms: named scalar loss terms; the loop minimises their sum and logs each.
    logits: the student's logits on the batch (for training accuracy).
    """

    terms: dict[str, torch.Tensor]
    logits: torch.Tensor


@dataclass
class Context:
    """Everything a method needs to build its models; given by the loop.

    build_model(model_cfg) -> nn.Module builds a fresh, randomly initialised
    model of the dataset's input shape and class count (seeded by the loop).
    load_teacher(model_cfg) -> nn.Module builds a model and loads the frozen
    pretrained weights named in model_cfg["checkpoint"].
    num_train_samples: the size of the training split (a memory bank indexed by the
    sample index of `Method.needs_sample_index` has this many rows).
    train_labels: the training split's labels (int64, on the CPU), in sample-index order
    (`train_labels[index]` is the label of the sample a batch's `index` names; CRD draws its
    negatives from the other classes with them); None where the loop has none to give.
    """

    student: dict
    teacher: dict | None
    num_classes: int
    build_model: Callable[[dict], nn.Module]
    load_model: Callable[[dict], nn.Module]
    extra: dict = field(default_factory=dict)
    num_train_samples: int = 0
    train_labels: torch.Tensor | None = None


class Method(nn.Module):
    """Base class of a distillation method (see the module docstring)."""

    name: ClassVar[str] = ""
    #: hyperparameters of the method, by any name but a fixed results column's (`seed`, `val_acc`, ...):
    #: every one is searched, recorded in the results (`hparams`) and shown by the report
    hparams: ClassVar[dict[str, HParam]] = {}
    #: True if the method distils from a frozen pretrained teacher (from the zoo)
    needs_teacher: ClassVar[bool] = False
    #: True if the method trains its own teacher alongside the student (DML, TriKD);
    #: the study then passes a teacher config without a checkpoint
    online_teacher: ClassVar[bool] = False
    #: True if the method distils from an early epoch of its frozen teacher (ESKD): the study then
    #: searches `teacher_epoch` over the teacher checkpoints it keeps (`teachers.export_epochs`,
    #: required) unless the spec fixes it, and refuses an imported teacher (it has no such epochs)
    early_teacher: ClassVar[bool] = False
    #: True if the method trains a multi-exit student (reports one row per exit)
    multi_exit: ClassVar[bool] = False
    #: True if `training_step(x, y, index)` wants each sample's row in the training split
    #: (0 .. ctx.num_train_samples - 1; CRD's memory bank); False: `training_step(x, y)`
    needs_sample_index: ClassVar[bool] = False
    #: options of the method's spec section beyond trials, space, teacher_sizes and confirm_seeds
    #: (`trainables.options.Option`s, e.g. TAKD's assistant_sizes): validated by the spec, in its
    #: JSON Schema, and given to the study as `MethodSpec.options`
    spec_options: ClassVar[dict[str, Any]] = {}
    #: how the report names the method (chart legends, comparisons), e.g. "DIST (Huang et al. 2022)";
    #: empty: its registered name. Not inherited (a subclass is another method: it names itself or
    #: goes by its registered name). Recorded with the study (``methods.json``) for the report
    label: ClassVar[str] = ""
    #: the method's group on the report's capacity-gap comparison chart (one of `KINDS`): "kd"
    #: (distillation from logits or relations, the default), "remedy" (a remedy for the capacity
    #: gap, drawn bold) or "feature" (feature distillation, dash-dot; `FeatureMethod`'s default)
    kind: ClassVar[str] = "kd"

    @classmethod
    def facts(cls) -> dict:
        """What the study records of the method for the report (``methods.json``; `analysis`
        never imports `trainables`): its label and kind and the flags that shape its rows."""
        return {"label": cls.__dict__.get("label") or cls.name, "kind": cls.kind, "needs_teacher": bool(cls.needs_teacher),
                "online_teacher": bool(cls.online_teacher), "early_teacher": bool(cls.early_teacher),
                "multi_exit": bool(cls.multi_exit), "generations": cls.planned_generations()}

    def __init__(self, ctx: Context, hp: dict):
        super().__init__()
        self.ctx = ctx
        self.hp = {k: hp.get(k, spec.default) for k, spec in self.hparams.items()}

    # -- what the planner asks before a trial exists -------------------------
    @classmethod
    def planned_generations(cls, hp: dict | None = None) -> int:
        """How many generations a trial with hyperparameters `hp` trains (each gets the full
        epoch budget), known without building the models: a scheduler's max_t is
        `train.epochs × planned_generations(hp)`. Default: the `generations`
        hyperparameter where the method has one (its value in `hp`, else its default), else 1."""
        if "generations" in cls.hparams:
            return int((hp or {}).get("generations", cls.hparams["generations"].default))
        return 1

    @classmethod
    def sample_flops(cls, model_flops: Callable[[dict], float], student: dict, teacher: dict | None,
                     generations: int = 1, options: dict | None = None) -> tuple[float, float]:
        """(training, evaluation) FLOP-equivalents per sample of one epoch of a trial, averaged over
        its `generations`: what the planner charges for the models' passes (a forward counts its
        FLOPs, a backward twice them; `loss_flops` adds the loss). `model_flops(cfg)` gives a model
        config's forward FLOPs per sample; `student` and `teacher` are the trial's model configs
        (teacher None without one); `options` the method's spec options (`spec_options`).
        Default, from the flags: the student trains (3 forwards' worth) and is evaluated (one);
        a frozen teacher (`needs_teacher`) adds a forward in training; an online teacher
        (`online_teacher`) trains and is evaluated as the student is. A method with other models
        (an anchor, an assistant) says what they cost by overriding this."""
        S = model_flops(student)
        T = model_flops(teacher) if teacher is not None else 0.0
        if cls.online_teacher:
            return 3 * S + 3 * T, S + T
        if cls.needs_teacher:
            return 3 * S + T, S
        return 3 * S, S

    @classmethod
    def loss_flops(cls, batch_size: int) -> float:
        """Work of the method's loss per training batch beyond the models' passes, in
        FLOP-equivalents (forward and backward): what the planner adds to its estimate of
        an epoch. Default 0 (losses linear in the batch are negligible beside the models)."""
        return 0.0

    @classmethod
    def feature_taps(cls, hp: dict | None = None) -> dict[str, list[str]]:
        """The features the method reads beyond logits, by tap name, per role:
        ``{"student": [...], "teacher": [...]}`` (see `trainables.models.taps` for the names;
        `hp` are the trial's hyperparameters, for methods whose taps depend on them). Default:
        none, and then no hook is installed."""
        return {}

    # -- what the loop calls -------------------------------------------------
    @property
    def generations(self) -> int:
        """How many generations to train (each gets the full epoch budget)."""
        return type(self).planned_generations(self.hp)

    def start_generation(self, generation: int) -> None:
        """Called before generation `generation` (0-based) starts training."""

    def start_epoch(self, epoch: int) -> None:
        """Called before each epoch (1-based, within the generation) starts training (e.g. a warm-up)."""

    def keep_best_weights(self, generation: int) -> nn.Module | None:
        """A model whose best-validation weights generation `generation` should end with.

        The loop keeps a copy of this model's weights at the epoch of best
        validation accuracy (of the model the generation reports) and loads them
        back into it when the generation ends, so a later generation builds on
        the best epoch, not the last (TAKD's assistant). None (default): the
        generation ends with its last-epoch weights. Without a validation split
        the last epoch is kept.
        """
        return None

    def trainable_parameters(self) -> Iterator[nn.Parameter]:
        """Parameters the optimizer updates (default: the student's)."""
        return self.student.parameters()

    def connector_modules(self) -> list[nn.Module]:
        """Trainable modules of the method beyond its models: connectors such as a FitNets
        regressor, CRD's embedding heads, ReviewKD's fusion path. They are submodules of the
        method (so `state_dict()` checkpoints and resumes them), their parameters are among
        `trainable_parameters()` (optimised with the student), and they are never part of a
        deployed model: the results rows count them apart (`connector_params`,
        `connector_flops`), not in `student_params` / `student_flops`. Default: none."""
        return []

    def connector_flops(self) -> float:
        """Forward FLOPs per training sample of `connector_modules()` (the results'
        `connector_flops`; the loss's own arithmetic is not included). Default 0."""
        return 0.0

    def training_step(self, x: torch.Tensor, y: torch.Tensor, index: torch.Tensor | None = None) -> Step:
        """One batch's loss terms; `index` (int64, on the batch's device) only when the method
        sets `needs_sample_index` (methods that do not may define `training_step(self, x, y)`)."""
        raise NotImplementedError

    def after_step(self, step: Step) -> None:
        """Called after each optimizer step (e.g. to adapt a temperature)."""

    def eval_logits(self, x: torch.Tensor) -> dict[tuple[str, int | None], torch.Tensor]:
        """Logits of every reported model: {(role, exit or None): logits}."""
        return {("student", None): self.student(x)}

    def train(self, mode: bool = True):
        """Frozen models (teacher, anchor) stay in eval mode."""
        super().train(mode)
        for m in self.frozen_modules():
            m.eval()
        return self

    def frozen_modules(self) -> list[nn.Module]:
        """Models that never learn in this method (kept in eval mode, no grad)."""
        return []

    def current_temperature(self) -> float | None:
        """The temperature in force now, for methods that schedule it."""
        return None

    def row_facts(self, role: str, exit: int | None) -> dict:
        """Extra results columns for the rows of (role, exit), e.g. an exit's FLOPs."""
        return {}


@dataclass
class Forward:
    """One batch through the student and the frozen teacher: logits and the tapped features
    ({tap name: tensor, or list of tensors for "stages"}); the teacher's carry no graph."""

    student_logits: torch.Tensor
    student: dict[str, Any]
    teacher_logits: torch.Tensor
    teacher: dict[str, Any]


class FrozenTeacherMethod(Method):
    """A method that distils a fresh student from a frozen pretrained teacher (from the zoo).

    The features the class declares in `feature_taps` are tapped on both models
    (``self.student_taps``, ``self.teacher_taps``) and served by `forward_both`.
    """

    needs_teacher = True

    def __init__(self, ctx: Context, hp: dict):
        super().__init__(ctx, hp)
        self.student = ctx.build_model(ctx.student)
        self.teacher = freeze(ctx.load_model(ctx.teacher))
        taps = type(self).feature_taps(self.hp)
        self.student_taps = Taps(self.student, taps.get("student", ()))
        self.teacher_taps = Taps(self.teacher, taps.get("teacher", ()))

    def frozen_modules(self) -> list[nn.Module]:
        return [self.teacher]

    def forward_both(self, x: torch.Tensor) -> Forward:
        """Teacher (no grad, eval mode) then student on one batch, with their tapped features."""
        with torch.no_grad():
            t_logits, t_feats = self.teacher_taps(x)
        s_logits, s_feats = self.student_taps(x)
        return Forward(s_logits, s_feats, t_logits, t_feats)

    def student_and_teacher_logits(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """The student's logits and the frozen teacher's (computed without a graph) for one batch."""
        f = self.forward_both(x)
        return f.student_logits, f.teacher_logits

    def tap_shapes(self, role: str) -> dict[str, Any]:
        """Per-sample shapes of the features tapped on ``role`` ("student" or "teacher"), known
        before training (a meta forward: no arithmetic, the models untouched)."""
        taps = {"student": self.student_taps, "teacher": self.teacher_taps}[role]
        return taps.shapes(self.ctx.extra["in_shape"])


_REGISTRY: dict[str, type[Method]] = {}
#: the groups of `Method.kind`
KINDS = ("kd", "remedy", "feature")
#: keys a trial's configuration routes elsewhere (`trainables.config.resolve`): never a hyperparameter
ROUTED_KEYS = ("seed", "student", "teacher", "assistant", "export", "role", "teacher_size", "assistant_size",
               "teacher_epoch")


def hparam_name_problem(name: str) -> str | None:
    """Why a method may not declare a hyperparameter called `name` (None: it may): it would be
    routed elsewhere by the trial's configuration, or has the name of a fixed results column."""
    from analysis.schema import hparam_name_problem as column_problem  # the schema knows its columns

    if isinstance(name, str) and (name.startswith("_") or name in ROUTED_KEYS):
        return (f"hyperparameter {name!r} is a name the trial's configuration uses for something else "
                f"(names starting with '_', {', '.join(ROUTED_KEYS)}); call it otherwise")
    return column_problem(name)


def register(name: str):
    """Class decorator: make a Method available under `name`."""

    def deco(cls: type[Method]) -> type[Method]:
        if name in _REGISTRY and _REGISTRY[name] is not cls:
            raise ValueError(f"method {name!r} is registered twice")
        bad = [why for why in map(hparam_name_problem, cls.hparams) if why]
        if cls.kind not in KINDS:
            bad.append(f"kind {cls.kind!r} is not one of {list(KINDS)}")
        if not isinstance(cls.label, str):
            bad.append(f"label must be a string, got {cls.label!r}")
        if bad:
            raise ValueError(f"method {name!r} ({cls.__module__}.{cls.__qualname__}): {bad[0]}")
        cls.name = name
        _REGISTRY[name] = cls
        return cls

    return deco


def get_method(name: str) -> type[Method]:
    from . import _load_all  # noqa: F401  (imports every method file once)

    try:
        return _REGISTRY[name]
    except KeyError:
        raise KeyError(f"unknown method {name!r}; known: {sorted(_REGISTRY)}") from None


def available_methods() -> dict[str, type[Method]]:
    from . import _load_all  # noqa: F401

    return dict(sorted(_REGISTRY.items()))


def freeze(model: nn.Module) -> nn.Module:
    """Put a model in eval mode with gradients off (a frozen teacher or anchor)."""
    model.eval()
    for p in model.parameters():
        p.requires_grad_(False)
    return model
