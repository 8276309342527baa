"""Typed options of registry entries (model families, datasets): one description per option.

A family or dataset declares its options as ``{name: Option(...)}`` (or, for
brevity, ``{name: default}``, whose JSON type is inferred from the default).
The same description serves three readers: the spec's validation (`check`),
the spec's JSON Schema (`json_schema`, so an editor completes and checks a
spec) and the error messages (`describe`). Method hyperparameters have their
own, richer description (`trainables.methods.HParam`: search ranges).
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

#: marks an option without a default (the spec must give it)
REQUIRED = object()

_JSON_OF = {bool: "boolean", int: "integer", float: "number", str: "string", list: "array", tuple: "array",
            dict: "object", type(None): "null"}


@dataclass(frozen=True)
class Option:
    """One option: its default, the JSON types it may take, bounds or choices, and what it means.

    ``types`` are JSON Schema type names ("integer", "number", "string", "boolean",
    "array", "object", "null"); "number" admits integers too. An empty ``types``
    admits any value (the entry's own ``check`` then has the last word).
    """

    default: Any = REQUIRED
    types: tuple[str, ...] = ()
    help: str = ""
    choices: tuple | None = None
    minimum: float | None = None
    maximum: float | None = None
    items: tuple[str, ...] = ()  # JSON types of an array's items (empty: any)

    @property
    def required(self) -> bool:
        return self.default is REQUIRED

    def check(self, name: str, value: Any) -> str | None:
        """An error message when `value` is not allowed, else None."""
        if self.choices is not None:
            if value not in self.choices:
                return f"{name} must be one of {', '.join(map(repr, self.choices))}; got {_short(value)}"
            return None
        if self.types and not any(_is(t, value) for t in self.types):
            return f"{name} must be {' or '.join(_WORDS.get(t, t) for t in self.types)}; got {_short(value)}"
        if isinstance(value, (int, float)) and not isinstance(value, bool):
            if isinstance(value, float) and not math.isfinite(value):
                return f"{name} must be a finite number; got {_short(value)}"
            if self.minimum is not None and value < self.minimum:
                return f"{name} must be at least {self.minimum}; got {_short(value)}"
            if self.maximum is not None and value > self.maximum:
                return f"{name} must be at most {self.maximum}; got {_short(value)}"
        if isinstance(value, (list, tuple)) and self.items:
            for v in value:
                if not any(_is(t, v) for t in self.items):
                    return f"{name} items must be {' or '.join(_WORDS.get(t, t) for t in self.items)}; got {_short(v)}"
        return None

    def json_schema(self) -> dict:
        """This option as a JSON Schema fragment."""
        out: dict[str, Any] = {}
        if self.help:
            out["description"] = self.help
        if self.choices is not None:
            out["enum"] = list(self.choices)
        elif self.types:
            out["type"] = list(self.types) if len(self.types) > 1 else self.types[0]
        if self.minimum is not None:
            out["minimum"] = self.minimum
        if self.maximum is not None:
            out["maximum"] = self.maximum
        if self.items:
            out["items"] = {"type": list(self.items) if len(self.items) > 1 else self.items[0]}
        if not self.required and _jsonable(self.default):
            out["default"] = self.default
        return out

    def describe(self) -> str:
        """A short human description for error messages: type and default."""
        kind = "/".join(self.choices and map(str, self.choices) or self.types) or "any"
        return f"{kind}, required" if self.required else f"{kind}, default {self.default!r}"


def option(value: Any) -> Option:
    """An `Option` as given, or one made from a bare default (its JSON type inferred)."""
    if isinstance(value, Option):
        return value
    kind = _JSON_OF.get(type(value))
    return Option(default=value, types=() if kind is None else (kind,))


def normalize(options: dict[str, Any] | None) -> dict[str, Option]:
    """Every option of a registry entry as an `Option`."""
    return {k: option(v) for k, v in (options or {}).items()}


def defaults(options: dict[str, Option]) -> dict[str, Any]:
    """The defaults of the options that have one."""
    return {k: o.default for k, o in options.items() if not o.required}


_WORDS = {"integer": "an integer", "number": "a number", "string": "a string", "boolean": "true or false",
          "array": "a list", "object": "a mapping", "null": "null"}


def _is(json_type: str, value: Any) -> bool:
    if json_type == "boolean":
        return isinstance(value, bool)
    if json_type == "integer":
        return isinstance(value, int) and not isinstance(value, bool)
    if json_type == "number":
        return isinstance(value, (int, float)) and not isinstance(value, bool)
    if json_type == "string":
        return isinstance(value, str)
    if json_type == "array":
        return isinstance(value, (list, tuple))
    if json_type == "object":
        return isinstance(value, dict)
    if json_type == "null":
        return value is None
    return True


def _jsonable(value: Any) -> bool:
    return value is None or isinstance(value, (bool, int, float, str)) or (
        isinstance(value, (list, tuple)) and all(_jsonable(v) for v in value))


def _short(value: Any, limit: int = 60) -> str:
    """A value for an error message, never longer than a line."""
    text = repr(value)
    return text if len(text) <= limit else text[: limit - 3] + "..."
