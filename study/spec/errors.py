"""Problems of a spec: `SpecError`, and pydantic's validation errors said the way kdstudy says them.

Every problem is one line, `<dotted.path>: <what is wrong and what is allowed>`, and
no value printed in it is longer than a line (long values are cut with "...").
"""

from __future__ import annotations

import types
import typing
from typing import Any, Literal, Union, get_args, get_origin

from pydantic import BaseModel, ValidationError

from .model import short


class SpecError(ValueError):
    """The spec has problems; `problems` lists one message per problem."""

    def __init__(self, problems: list[str], source: str = "spec"):
        self.problems = problems
        self.source = source
        if len(problems) == 1:
            text = f"{source}: {problems[0]}"
        else:
            text = f"{source}: {len(problems)} problem(s)\n" + "\n".join(f"  - {p}" for p in problems)
        super().__init__(text)


def key_text(key: Any, limit: int = 40) -> str:
    """A mapping key as it appears in a dotted path (odd or long keys quoted and cut)."""
    if isinstance(key, str) and key and key.isprintable() and " " not in key and len(key) <= limit:
        return key
    return short(key, limit)


def join(path: str, key: Any, index: bool = False) -> str:
    if index:
        return f"{path}[{key}]"
    return f"{path}.{key_text(key)}" if path else key_text(key)


def _unwrap(ann):
    """The annotation without Annotated[...] and Optional[...]."""
    while True:
        origin = get_origin(ann)
        if origin is typing.Annotated:
            ann = get_args(ann)[0]
        elif origin in (Union, types.UnionType):
            args = [a for a in get_args(ann) if a is not type(None)]
            if len(args) != 1:
                return ann
            ann = args[0]
        else:
            return ann


def _fields(model: type[BaseModel]) -> dict:
    return {(f.alias or name): f for name, f in model.model_fields.items()}


def _is_model(node) -> bool:
    return isinstance(node, type) and issubclass(node, BaseModel)


def allowed(model: type[BaseModel]) -> list[str]:
    return sorted(_fields(model))


def locate(model: type[BaseModel], loc: tuple, prefix: str):
    """(dotted path, the field's FieldInfo or None, the model owning the last key) of an error's loc."""
    path, node, field, owner = prefix, model, None, model
    for item in loc:
        if _is_model(node):
            owner = node
            field = _fields(node).get(item)
            path = join(path, item)
            node = _unwrap(field.annotation) if field is not None else None
            continue
        origin = get_origin(node)
        if origin is list:
            path = join(path, item, index=True)
            node = _unwrap(get_args(node)[0]) if get_args(node) else None
        elif origin is dict:
            path = join(path, item)
            node = _unwrap(get_args(node)[1]) if get_args(node) else None
        else:
            path = join(path, item, index=isinstance(item, int) and not isinstance(item, bool))
            node = None
        field = None
    return path, field, owner


def _choices(field) -> list | None:
    if field is None:
        return None
    ann = _unwrap(field.annotation)
    if get_origin(ann) is Literal:
        return list(get_args(ann))
    return None


def _word(value) -> str:
    return "true" if value is True else "false" if value is False else str(value)


def message(err: dict, field, owner) -> str:
    """One error of pydantic, in kdstudy's words."""
    kind, value, ctx = err["type"], err.get("input"), err.get("ctx") or {}
    got = short(value)
    if kind == "kdstudy":
        return str(ctx.get("message"))
    if kind == "missing":
        hint = getattr(field, "description", None)
        return f"is required ({hint})" if hint else "is required"
    if kind == "extra_forbidden":
        key = err["loc"][-1] if err["loc"] else None
        hint = getattr(owner, "extra_hints", {}).get(key) if isinstance(key, str) else None
        if hint:
            return hint
        names = allowed(owner)
        return f"unknown field; allowed: {', '.join(names)}" if names else "unknown field; this section takes none"
    if kind in ("int_type", "int_parsing", "int_from_float"):
        return f"must be an integer, got {got}"
    if kind in ("float_type", "float_parsing"):
        return f"must be a number, got {got}"
    if kind == "finite_number":
        return f"must be a finite number, got {got}"
    if kind in ("bool_type", "bool_parsing"):
        return f"must be true or false, got {got}"
    if kind in ("string_type", "string_too_short"):
        return f"must be a non-empty string, got {got}"
    if kind == "string_too_long":
        return f"must be at most {ctx.get('max_length')} characters, got {got}"
    if kind == "string_pattern_mismatch":
        return f"may contain only letters, digits, '-' and '_'; got {got}"
    if kind == "literal_error":
        words = _choices(field)
        allowed_words = ", ".join(map(_word, words)) if words else ctx.get("expected", "")
        return f"must be one of {allowed_words}; got {got}"
    if kind == "greater_than_equal":
        return f"must be at least {ctx.get('ge')}, got {got}"
    if kind == "less_than_equal":
        return f"must be at most {ctx.get('le')}, got {got}"
    if kind == "greater_than":
        return f"must be above {ctx.get('gt')}, got {got}"
    if kind == "less_than":
        return f"must be below {ctx.get('lt')}, got {got}"
    if kind in ("model_type", "model_attributes_type", "dict_type"):
        return f"must be a mapping, got {type(value).__name__}"
    if kind == "list_type":
        return f"must be a list, got {got}"
    if kind == "too_short":
        return "must be a non-empty list"
    if kind == "too_long":
        return f"must have at most {ctx.get('max_length')} items"
    if kind == "value_error":
        return str(err.get("msg", "")).removeprefix("Value error, ")
    return f"{err.get('msg', 'is not allowed')}; got {got}"


def problems_of(exc: ValidationError, model: type[BaseModel], prefix: str) -> list[str]:
    """One line per error of a section validated with `model`, each with its dotted path."""
    out = []
    for err in exc.errors(include_url=False):
        loc = tuple(err["loc"]) + tuple((err.get("ctx") or {}).get("at") or ())
        path, field, owner = locate(model, loc, prefix)
        text = f"{path}: {message(err, field, owner)}" if path else message(err, field, owner)
        if text not in out:
            out.append(text)
    return out
