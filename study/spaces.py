"""Define-by-run search spaces for OptunaSearch.

`make_space(...)` returns a picklable callable (a `functools.partial` of the
module-level `define_space`): Ray ships the searcher to the process that
drives the experiment.
Only the parameters a method has are suggested; constants are returned and
merged into the trial's config by Tune.
"""

from __future__ import annotations

import functools

from typing import TYPE_CHECKING

from .ranges import Range

if TYPE_CHECKING:
    from .spec import MethodSpec


def define_space(trial, params: tuple, constants: dict):
    """Suggest every parameter in `params` ((name, Range) pairs); return the constants."""
    for name, r in params:
        if r.kind == "categorical":
            trial.suggest_categorical(name, list(r.choices))
        elif r.kind == "int":
            trial.suggest_int(name, int(r.low), int(r.high), log=r.log)
        else:
            trial.suggest_float(name, float(r.low), float(r.high), log=r.log)
    return dict(constants)


def method_params(method: "MethodSpec", teacher_sizes: list | None, export_epochs: list) -> dict[str, Range]:
    """The searched parameters of one method's search, teacher size included when given."""
    params = dict(method.search)
    if teacher_sizes:
        params["teacher_size"] = Range("categorical", choices=tuple(teacher_sizes))
    early = method.cls is not None and method.cls.early_teacher  # its teacher's epoch is searched
    if early and "teacher_epoch" not in params and "teacher_epoch" not in method.fixed:
        params["teacher_epoch"] = Range("categorical", choices=tuple(export_epochs))
    if method.assistant_sizes and "assistant_size" not in method.fixed:
        params["assistant_size"] = Range("categorical", choices=tuple(method.assistant_sizes))
    return params


def make_space(params: dict[str, Range], constants: dict):
    return functools.partial(define_space, params=tuple(sorted(params.items())), constants=dict(constants))
