"""Feature taps: named features of any model, delivered from the forward pass that yields its logits.

A method asks for features by name; `Taps(model, names)` installs forward hooks at
the modules that compute them (nothing at all when ``names`` is empty), and
``taps(x)`` returns ``(logits, {name: feature})`` from one ordinary forward of the
model (compiled or not, channels_last or not, under autocast or not: the features
are the very tensors the forward computed, with their graph).

Names
-----
``"logits"``
    the model's output, as its forward returns it (a list of exits' logits, earliest
    first, for a multi-exit model).
``"penultimate"``
    the (B, D) embedding the final classifier reads: the pooled / flattened features
    of a built-in model (what ``features(x)`` returns), the input of a torchvision
    model's last linear layer (before the dropout that precedes it, if any). A
    multi-exit model's is its final exit's.
``"stage:<i>"``
    the output of stage ``i`` (0-based; negative counts from the end), e.g.
    ``"stage:-1"`` the last. What the stages are is a fact of the family:
    the residual stages of a ResNet or WRN (the stem excluded), each conv layer of a
    1-D CNN, each hidden layer of an MLP, each resolution's last conv block of a plain
    CNN; for torchvision models their stage modules (``layer1..4`` of a ResNet, the
    blocks at each resolution of a MobileNet/EfficientNet, the encoder blocks of a
    ViT; see `trainables.models.torchvision`). 4-D features are (B, C, H, W).
``"stages"``
    every stage's output, first to last, as a list.
``"stage:<i>:preact"``, ``"stages:preact"``
    the same before the stage's final activation, where the family declares it
    (cifar_resnet: the residual sum before the last ReLU; wrn: after the BN that
    precedes the next ReLU: RepDistiller's ``preact=True`` features; torchvision
    ResNets add and activate in place, so their pre-activations do not exist as
    tensors and are not offered).
``"module:<dotted.path>"``, ``"module:<dotted.path>:input"``
    the output (or first positional input) of any submodule, by its path in
    ``model.named_modules()``: for foreign models and anything the names above do
    not cover.

RepDistiller's ``feat`` list of a CIFAR ResNet is ``[stem, stage 0, stage 1, stage 2,
pooled]``; here ``feat[1:-1]`` (what AT and SP use) is ``"stages"``, FitNets'
``hint_layer = 2`` is ``"stage:1"``, and ``feat[-1]`` is ``"penultimate"``.

Shapes are known before training: ``tap_shapes(model, names, in_shape)`` (or
``Taps.shapes``) runs the model once on a meta batch (no arithmetic; the model's
weights, buffers and compiled code are untouched) and returns each feature's shape
per sample (without the batch dimension): a tuple, or a list of tuples for
``"stages"``. The same probe checks that every tapped module runs exactly once per
forward and that no later in-place operation overwrites its tensor (tap the module
after an in-place ReLU, not the one before it), with a one-line error otherwise.

Where a family's stages and penultimate embedding are is declared in its registry
entry (``stages``, ``preact_stages``, ``penultimate``); a family that declares no
stages still serves ``"penultimate"`` (found generically: the input of its last
linear layer), ``"logits"`` and ``"module:..."``.
"""

from __future__ import annotations

import functools
import re
from typing import Any, Iterable, Sequence

import torch
from torch import nn

from .common import TapPoint
from .measure import meta_forward

__all__ = ["TapError", "Taps", "check_tap_names", "generic_penultimate", "stage_points", "tap_points",
           "tap_shapes"]

_STAGE = re.compile(r"^stage:(-?\d+)(:preact)?$")
_MODULE = re.compile(r"^module:([A-Za-z0-9_.]*?)(:input)?$")
LOGITS = "logits"


class TapError(ValueError):
    """A feature tap that cannot be served (bad name, missing stage, unsuitable module)."""


def check_tap_names(names: Iterable[str]) -> None:
    """Raise TapError for a name that is not one of the tap names (the model is not consulted)."""
    for name in names:
        if not isinstance(name, str) or not (
            name in ("logits", "penultimate", "stages", "stages:preact") or _STAGE.match(name) or _MODULE.match(name)
        ):
            raise TapError(f"unknown feature tap {name!r}; taps are 'logits', 'penultimate', 'stage:<i>', "
                           f"'stages', 'stage:<i>:preact', 'stages:preact', 'module:<path>', 'module:<path>:input'")


# --------------------------------------------------------------------------- where features live


def _family(model: nn.Module):
    from .registry import _FAMILIES

    return _FAMILIES.get(getattr(model, "kd_family", None))


def _model_label(model: nn.Module) -> str:
    fam = getattr(model, "kd_family", None)
    return f"{type(model).__name__} (family {fam})" if fam else type(model).__name__


def _point(p: TapPoint | str) -> TapPoint:
    return p if isinstance(p, TapPoint) else TapPoint(p)


def _cached(model: nn.Module, key: str, compute):
    cache = model.__dict__.setdefault("_kd_tap_cache", {})
    if key not in cache:
        cache[key] = compute()
    return cache[key]


def stage_points(model: nn.Module, preact: bool = False) -> list[TapPoint]:
    """Where the model's stages (or their pre-activations) are, from its family's entry."""
    fam = _family(model)
    fn = None if fam is None else (fam.preact_stages if preact else fam.stages)
    what = "pre-activation stages" if preact else "stages"
    if fn is None:
        raise TapError(f"{_model_label(model)} declares no {what} (a family declares them with "
                       f"register_family(..., {'preact_stages' if preact else 'stages'}=...)); "
                       f"tap its modules by name with 'module:<path>'")
    points = _cached(model, "preact" if preact else "stages", lambda: [_point(p) for p in (fn(model) or [])])
    if not points:
        raise TapError(f"{_model_label(model)} has no {what} to tap; tap modules with 'module:<path>'")
    return points


def generic_penultimate(model: nn.Module) -> TapPoint:
    """The input of the model's last ``nn.Linear`` (in registration order), taken before the
    dropout modules that directly precede it in the same container (dropout is not part of
    the embedding)."""
    linears = [p for p, m in model.named_modules() if isinstance(m, nn.Linear)]
    if not linears:
        raise TapError(f"{_model_label(model)} has no linear classifier, so no penultimate embedding "
                       f"can be found; tap a module with 'module:<path>'")
    path = linears[-1]
    parent_path, _, leaf = path.rpartition(".")
    siblings = list((model.get_submodule(parent_path) if parent_path else model).named_children())
    j = [n for n, _ in siblings].index(leaf)
    while j > 0 and isinstance(siblings[j - 1][1], nn.Dropout):
        j -= 1
    name = siblings[j][0]
    return TapPoint(f"{parent_path}.{name}" if parent_path else name, "input")


def penultimate_point(model: nn.Module) -> TapPoint:
    fam = _family(model)

    def find():
        p = fam.penultimate(model) if fam is not None and fam.penultimate is not None else None
        return _point(p) if p is not None else generic_penultimate(model)

    return _cached(model, "penultimate", find)


def tap_points(model: nn.Module, names: Sequence[str]) -> dict[str, Any]:
    """{name: TapPoint, list of TapPoints (``stages``), or "logits"} for a model; TapError if one
    cannot be served."""
    check_tap_names(names)
    modules = dict(model.named_modules())
    plan: dict[str, Any] = {}
    for name in names:
        if name == LOGITS:
            plan[name] = LOGITS
        elif name == "penultimate":
            plan[name] = penultimate_point(model)
        elif name in ("stages", "stages:preact"):
            plan[name] = stage_points(model, preact=name.endswith(":preact"))
        elif m := _STAGE.match(name):
            points = stage_points(model, preact=bool(m.group(2)))
            i = int(m.group(1))
            if not -len(points) <= i < len(points):
                raise TapError(f"feature tap {name!r}: {_model_label(model)} has {len(points)} stages "
                               f"(stage:0 .. stage:{len(points) - 1}, or negative from the end)")
            plan[name] = points[i]
        else:
            m = _MODULE.match(name)
            path = m.group(1)
            if path not in modules:
                from .registry import close_names

                close = close_names(path, [p for p in modules if p])
                hint = f"; did you mean {', '.join(close)}?" if close else "; see model.named_modules()"
                raise TapError(f"feature tap {name!r}: {_model_label(model)} has no module {path!r}{hint}")
            plan[name] = TapPoint(path, "input" if m.group(2) else "output")
    for pts in plan.values():
        for p in pts if isinstance(pts, list) else [pts]:
            if isinstance(p, TapPoint) and p.path not in modules:
                raise TapError(f"{_model_label(model)}: its family names module {p.path!r}, which it does not have")
    return plan


# --------------------------------------------------------------------------- hooks


def _keep_output(store: dict, on: list, key, module, args, output):
    if on[0]:
        store[key] = output


def _keep_input(store: dict, on: list, key, module, args):
    if on[0]:
        store[key] = args[0]


def _deliver(t: torch.Tensor, point: TapPoint) -> torch.Tensor:
    return t.permute(0, 3, 1, 2) if point.layout == "channels_last" else t


class Taps:
    """Named features of ``model`` from its own forward pass (see the module docstring).

    ``taps(x) -> (out, feats)``: ``out`` is ``model(x)``, ``feats`` maps each requested
    name to its tensor (a list of tensors for ``"stages"``). With no names, no hook is
    installed and ``feats`` is empty. Call it under ``torch.no_grad()`` for a frozen
    model, as for its logits. ``remove()`` takes the hooks off again.
    """

    def __init__(self, model: nn.Module, names: Sequence[str] = ()):
        self.model = model
        self.names = tuple(dict.fromkeys(names))
        self.plan = tap_points(model, self.names) if self.names else {}
        self._store: dict = {}
        self._on = [False]
        self._handles = []
        for point in self._points():
            mod = model.get_submodule(point.path) if point.path else model
            key = (point.path, point.where)
            if point.where == "output":
                h = mod.register_forward_hook(functools.partial(_keep_output, self._store, self._on, key))
            else:
                h = mod.register_forward_pre_hook(functools.partial(_keep_input, self._store, self._on, key))
            self._handles.append(h)

    def _points(self) -> list[TapPoint]:
        seen: dict = {}
        for pts in self.plan.values():
            for p in pts if isinstance(pts, list) else [pts]:
                if isinstance(p, TapPoint):
                    seen.setdefault((p.path, p.where), p)
        return list(seen.values())

    def __bool__(self) -> bool:
        return bool(self.names)

    def __call__(self, x: torch.Tensor, *args, **kwargs) -> tuple[Any, dict[str, Any]]:
        if not self.names:
            return self.model(x, *args, **kwargs), {}
        self._store.clear()
        self._on[0] = True
        try:
            out = self.model(x, *args, **kwargs)
        finally:
            self._on[0] = False
        feats = {name: self._get(name, plan, out) for name, plan in self.plan.items()}
        self._store.clear()
        return out, feats

    def _get(self, name: str, plan, out):
        if plan is LOGITS:
            return out
        if isinstance(plan, list):
            return [self._one(name, p) for p in plan]
        return self._one(name, plan)

    def _one(self, name: str, point: TapPoint) -> torch.Tensor:
        try:
            t = self._store[(point.path, point.where)]
        except KeyError:
            raise TapError(f"feature tap {name!r}: module {point.path!r} did not run in this forward") from None
        return _deliver(t, point)

    def shapes(self, in_shape: Sequence[int]) -> dict[str, Any]:
        """Each feature's shape per sample, from a meta forward (see the module docstring)."""
        return _probe(self.model, self.plan, tuple(in_shape))

    def remove(self) -> None:
        for h in self._handles:
            h.remove()
        self._handles.clear()


def tap_shapes(model: nn.Module, names: Sequence[str], in_shape: Sequence[int]) -> dict[str, Any]:
    """The per-sample shape of each named feature of ``model`` for inputs of ``in_shape``
    (without the batch dimension): a tuple, or a list of tuples for ``"stages"``; known
    before training, from a meta forward that touches nothing of the model's state."""
    names = tuple(dict.fromkeys(names))
    return _probe(model, tap_points(model, names), tuple(in_shape))


def _probe(model: nn.Module, plan: dict, in_shape: tuple[int, ...]) -> dict[str, Any]:
    points = {}
    for pts in plan.values():
        for p in pts if isinstance(pts, list) else [pts]:
            if isinstance(p, TapPoint):
                points[(p.path, p.where)] = p
    seen: dict = {}
    calls: dict = {}

    def record(key, value):
        calls[key] = calls.get(key, 0) + 1
        seen[key] = (value, value._version if isinstance(value, torch.Tensor) else None)

    handles = []
    for key, p in points.items():
        mod = model.get_submodule(p.path) if p.path else model
        if p.where == "output":
            handles.append(mod.register_forward_hook(lambda m, a, o, key=key: record(key, o)))
        else:
            handles.append(mod.register_forward_pre_hook(lambda m, a, key=key: record(key, a[0] if a else None)))
    try:
        out = meta_forward(model, (2, *in_shape))
    finally:
        for h in handles:
            h.remove()
    shapes: dict[str, Any] = {}

    def one(name: str, p: TapPoint):
        key = (p.path, p.where)
        what = f"the {'input' if p.where == 'input' else 'output'} of module {p.path!r}"
        if key not in seen:
            raise TapError(f"feature tap {name!r}: module {p.path!r} does not run in a forward of "
                           f"{_model_label(model)}")
        if calls[key] > 1:
            raise TapError(f"feature tap {name!r}: module {p.path!r} runs {calls[key]} times per forward; "
                           f"tap a module that runs once")
        t, version = seen[key]
        if not isinstance(t, torch.Tensor):
            raise TapError(f"feature tap {name!r}: {what} is a {type(t).__name__}, not a tensor")
        if t._version != version:
            raise TapError(f"feature tap {name!r}: {what} is changed in place later in the forward "
                           f"(e.g. by an in-place ReLU or +=); tap the module that does it instead")
        if p.layout == "channels_last" and t.dim() != 4:
            raise TapError(f"feature tap {name!r}: {what} is not 4-D (B, H, W, C)")
        if name == "penultimate" and t.dim() != 2:
            raise TapError(f"feature tap 'penultimate': {what} has shape {tuple(t.shape)}, not (B, D); "
                           f"tap a module with 'module:<path>'")
        return tuple(_deliver(t, p).shape[1:])

    for name, plan_ in plan.items():
        if plan_ is LOGITS:
            shapes[name] = [tuple(o.shape[1:]) for o in out] if isinstance(out, (list, tuple)) \
                else tuple(out.shape[1:])
        elif isinstance(plan_, list):
            shapes[name] = [one(name, p) for p in plan_]
        else:
            shapes[name] = one(name, plan_)
    return shapes
