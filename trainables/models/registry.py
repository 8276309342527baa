"""The model-family registry: one entry per family, holding every fact kdstudy knows about it.

A model config is ``{"family": str, "size": int | str, **options}``; a teacher
ladder is a list of sizes of one family. A family registers itself with
``@register_family`` (the built-in families in this package call it exactly as
a plug-in does); everything else asks the entry:

* how to build a model (``build(cfg, in_shape, num_classes, multi_exit)``), with the
  config already merged with the family's option defaults and validated;
* its human architecture name (``arch_name``), its options (``options``: name ->
  `trainables.options.Option`, plus ``size_options(size)`` where they depend on the
  size, as a torchvision model's constructor options do), what a size is (``size``:
  an `Option`; ``sizes``: the closed list of sizes where there is one; ``sizes_hint``);
* how sizes are ordered (``size_order(cfg, num_classes) -> float``; default: the
  numeric size itself; a family of named sizes orders them, e.g. by parameter count);
* whether a multi-exit variant exists (``multi_exit``);
* where its features are, for feature taps (``stages``, ``preact_stages``,
  ``penultimate``: functions of the built model returning `TapPoint`s or module
  paths; see `trainables.models.taps`);
* ``adapt_state_dict(cfg, state) -> state``: how a weights file made elsewhere
  maps onto the built model (the hook imported teachers use; default: as is).
"""

from __future__ import annotations

import difflib
import math
from dataclasses import dataclass
from typing import Any, Callable

from torch import nn

from ..options import REQUIRED, Option, normalize
from .common import TapPoint

__all__ = [
    "Family",
    "arch_name",
    "available_families",
    "build_model",
    "close_names",
    "family_entry",
    "family_option_specs",
    "family_options",
    "family_size_spec",
    "family_sizes",
    "family_sizes_hint",
    "register_family",
    "size_order",
    "supports_multi_exit",
]

#: what a size is unless a family says otherwise: a positive integer (depth, width, layers)
INTEGER_SIZE = Option(REQUIRED, ("integer",), "the family's size knob", minimum=1)

TapFn = Callable[[nn.Module], "list[TapPoint | str] | None"]


@dataclass(frozen=True)
class Family:
    """One registered model family (see the module docstring for what each field means)."""

    name: str
    build: Callable[[dict, tuple[int, ...], int, bool], nn.Module]
    arch_name: Callable[[dict], str]
    check: Callable[[dict], str | None] | None
    options: dict[str, Option]
    sizes_hint: str
    multi_exit: bool = False
    size: Option = INTEGER_SIZE
    sizes: Callable[[], list] | None = None
    size_order: Callable[[dict, int], float] | None = None
    size_options: Callable[[Any], dict[str, Option]] | None = None
    stages: TapFn | None = None
    preact_stages: TapFn | None = None
    penultimate: Callable[[nn.Module], "TapPoint | str | None"] | None = None
    adapt_state_dict: Callable[[dict, dict], dict] | None = None


_FAMILIES: dict[str, Family] = {}


def register_family(
    name: str,
    *,
    options: dict[str, Any],
    sizes_hint: str,
    arch_name: Callable[[dict], str],
    check: Callable[[dict], str | None] | None = None,
    multi_exit: bool = False,
    size: Option | None = None,
    sizes: Callable[[], list] | None = None,
    size_order: Callable[[dict, int], float] | None = None,
    size_options: Callable[[Any], dict[str, Option]] | None = None,
    stages: TapFn | None = None,
    preact_stages: TapFn | None = None,
    penultimate: Callable[[nn.Module], "TapPoint | str | None"] | None = None,
    adapt_state_dict: Callable[[dict, dict], dict] | None = None,
):
    """Decorator registering a builder ``fn(cfg, in_shape, num_classes, multi_exit) -> nn.Module``.

    ``options``: name -> `Option` (or a bare default, its JSON type inferred);
    ``check(cfg) -> error or None`` sees the merged config (size and options);
    the other keywords are the facts of the module docstring (all optional).
    """

    def deco(fn):
        if name in _FAMILIES:
            raise ValueError(f"model family {name!r} registered twice")
        _FAMILIES[name] = Family(
            name=name, build=fn, arch_name=arch_name, check=check, options=normalize(options),
            sizes_hint=sizes_hint, multi_exit=multi_exit, size=size or INTEGER_SIZE, sizes=sizes,
            size_order=size_order, size_options=size_options, stages=stages, preact_stages=preact_stages,
            penultimate=penultimate, adapt_state_dict=adapt_state_dict,
        )
        return fn

    return deco


def available_families() -> list[str]:
    """Names of the registered model families, sorted."""
    return sorted(_FAMILIES)


def family_entry(name: Any) -> Family:
    """The registry entry of a family (every fact about it); ValueError naming the known ones."""
    if name not in _FAMILIES:
        close = close_names(name, available_families()) if isinstance(name, str) else []
        hint = f" (did you mean {', '.join(close)}?)" if close else ""
        raise ValueError(f"unknown model family {name!r}{hint}; available: {available_families()}")
    return _FAMILIES[name]


def close_names(word: str, names, n: int = 4) -> list[str]:
    """Up to `n` of `names` spelled like `word` (for "did you mean" in error messages)."""
    names = list(names)
    out = difflib.get_close_matches(word, names, n=n, cutoff=0.6)
    out += [m for m in names if word and word.lower() in m.lower() and m not in out]
    return out[:n]


def family_sizes_hint(family: str) -> str:
    """What `size` means for a family and which values are allowed (for error messages)."""
    return family_entry(family).sizes_hint


def family_size_spec(family: str) -> Option:
    """What a size of this family may be (JSON type, minimum), as an `Option`."""
    return family_entry(family).size


def family_sizes(family: str) -> list | None:
    """The closed list of a family's sizes (e.g. torchvision's model names), or None when open."""
    fam = family_entry(family)
    return list(fam.sizes()) if fam.sizes is not None else None


def family_option_specs(family: str, size: Any = None) -> dict[str, Option]:
    """The options a family accepts besides `size`, each as an `Option` (default, types, help).

    With a ``size``, the options of that size are included where a family's options
    depend on it (a torchvision model's constructor options). Their defaults describe
    what the constructor does when the option is not given; unlike the family's own
    options they are never merged into a config (the constructor applies them itself).
    Every family also accepts ``multi_exit`` (bool, default False); see `supports_multi_exit`.
    """
    fam = family_entry(family)
    out = dict(fam.options)
    if size is not None and fam.size_options is not None and fam.size.check("size", size) is None:
        out.update(fam.size_options(size))
    return out


def family_options(family: str, size: Any = None) -> dict[str, Any]:
    """The options a family accepts besides `size`, with their defaults (see `family_option_specs`;
    an option without a default maps to None)."""
    return {k: (None if o.required else o.default) for k, o in family_option_specs(family, size).items()}


def supports_multi_exit(family: str) -> bool:
    """Whether ``multi_exit: True`` is allowed for this family."""
    return family_entry(family).multi_exit


def _size_error(fam: Family, size: Any) -> str | None:
    err = fam.size.check("size", size)
    if err is None:
        return None
    if fam.size.types == ("integer",) and fam.size.minimum == 1:
        return (f"model size for family {fam.name!r} must be a positive integer, got {size!r}; "
                f"size is the {fam.sizes_hint}")
    return f"model size for family {fam.name!r}: {err}; size is the {fam.sizes_hint}"


def resolve(cfg: dict) -> tuple[Family, dict, bool]:
    """Look up the family, merge option defaults, validate; raise ValueError."""
    if not isinstance(cfg, dict) or "family" not in cfg or "size" not in cfg:
        raise ValueError(
            f"a model config needs 'family' and 'size' keys, got {cfg!r}"
        )
    fam = family_entry(cfg["family"])
    err = _size_error(fam, cfg["size"])
    if err:
        raise ValueError(err)
    for key, opt in fam.options.items():  # the given options' types and bounds (defaults are trusted)
        if key in cfg:
            err = opt.check(f"option {key!r}", cfg[key])
            if err:
                raise ValueError(f"model {fam.name!r}: {err}")
    merged = {**{k: o.default for k, o in fam.options.items() if not o.required}, **cfg}
    multi_exit = bool(merged.get("multi_exit", False))
    if multi_exit and not fam.multi_exit:
        supported = [n for n in available_families() if _FAMILIES[n].multi_exit]
        raise ValueError(
            f"multi_exit is not supported for family {fam.name!r}; "
            f"families with multi-exit variants: {supported}"
        )
    err = fam.check(merged) if fam.check is not None else None
    if err:
        raise ValueError(f"model {fam.name!r}: {err}")
    return fam, merged, multi_exit


def build_model(cfg: dict, in_shape: tuple[int, ...], num_classes: int) -> nn.Module:
    """Build a randomly initialised model of ``cfg`` for inputs of ``in_shape``
    (one sample, without the batch dimension) and ``num_classes`` classes.

    Keys of ``cfg`` that are not options of the family (e.g. a ``checkpoint``
    path) are ignored here; `family_option_specs` lists the recognised ones.
    The model remembers its family (``model.kd_family``) so feature taps find
    its stages.
    """
    fam, merged, multi_exit = resolve(cfg)
    model = fam.build(merged, tuple(int(d) for d in in_shape), int(num_classes), multi_exit)
    model.kd_family = fam.name
    return model


def arch_name(cfg: dict) -> str:
    """Human architecture name: mlp-2x32, cnn1d-w16, resnet56, resnet32x4,
    wrn-40-2, plain_cnn-10, tv-resnet18; multi-exit variants end in ``-me``."""
    fam, merged, multi_exit = resolve(cfg)
    return fam.arch_name(merged) + ("-me" if multi_exit else "")


def size_order(cfg: dict, num_classes: int = 1000) -> float:
    """A number that orders the sizes of a family from small to large.

    For a numeric size it is the size itself (so the results' ``teacher_size`` of the
    built-in ladders is unchanged); a family of named sizes says how it orders them
    (torchvision: the parameter count of the model for ``num_classes`` classes).
    """
    fam, merged, _ = resolve(cfg)
    if fam.size_order is not None:
        return float(fam.size_order(merged, int(num_classes)))
    size = merged["size"]
    if isinstance(size, bool) or not isinstance(size, (int, float)) or not math.isfinite(size):
        raise ValueError(f"model family {fam.name!r} has non-numeric sizes ({size!r}) and no size_order")
    return float(size)
