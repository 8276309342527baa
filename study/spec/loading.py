"""Reading a spec file: YAML 1.2 numbers, and limits that hostile or absurd input cannot pass.

A spec is small (the largest ready spec is under 3 KB). A file over `MAX_SPEC_BYTES`
is refused before it is read; YAML nested deeper than `MAX_DEPTH`, or whose aliases
would expand to more than `MAX_NODES` values (an alias bomb: a few hundred bytes
that expand to billions of values), is refused while it is composed, before any
value is built. Every refusal is one line.
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

import yaml
from yaml.composer import ComposerError
from yaml.nodes import MappingNode, SequenceNode

#: a spec file larger than this is refused before it is parsed
MAX_SPEC_BYTES = 1 << 20
#: values in the document once every alias is expanded
MAX_NODES = 100_000
#: nesting of mappings and lists
MAX_DEPTH = 64


class SpecLoader(yaml.SafeLoader):
    """PyYAML's safe loader reading floats as YAML 1.2 does, within the limits above.

    PyYAML implements YAML 1.1, where a float needs a dot: ``1e-3`` and
    ``5e-3`` load as strings, so ``lr: {low: 1e-3}`` would fail validation.
    This loader reads every YAML 1.2 float (``1e-3``, ``1E5``, ``.5``,
    ``+2.0e+1``, ``.inf``, ``.nan``) as a float; integers, booleans and
    strings are unchanged. (NaN and infinities are refused by validation.)
    """

    def __init__(self, stream):
        super().__init__(stream)
        self._depth = 0

    def compose_node(self, parent, index):
        self._depth += 1
        try:
            if self._depth > MAX_DEPTH:
                mark = self.peek_event().start_mark
                raise ComposerError(None, None, f"nested deeper than {MAX_DEPTH} levels", mark)
            return super().compose_node(parent, index)
        finally:
            self._depth -= 1

    def compose_document(self):
        node = super().compose_document()
        _check_expansion(node)
        return node


def _check_expansion(root) -> None:
    """Refuse a document whose aliases expand to more than MAX_NODES values, or refer to themselves."""
    sizes: dict[int, int] = {}
    active: set[int] = set()

    def size(node, depth: int = 0) -> int:
        key = id(node)
        if key in sizes:
            return sizes[key]
        if key in active:
            raise ComposerError(None, None, "an alias refers to the node that contains it", node.start_mark)
        if depth > MAX_DEPTH:
            raise ComposerError(None, None, f"nested deeper than {MAX_DEPTH} levels (through aliases)",
                                node.start_mark)
        if isinstance(node, SequenceNode):
            children = node.value
        elif isinstance(node, MappingNode):
            children = [n for pair in node.value for n in pair]
        else:
            sizes[key] = 1
            return 1
        active.add(key)
        total = 1
        for child in children:
            total += size(child, depth + 1)
            if total > MAX_NODES:
                raise ComposerError(None, None, f"aliases expand to more than {MAX_NODES:,} values "
                                    "(an alias bomb?)", node.start_mark)
        active.discard(key)
        sizes[key] = total
        return total

    if root is not None:
        size(root)


_FLOAT_12 = re.compile(r"""^(?:[-+]?(?:\.[0-9]+|[0-9]+(?:\.[0-9]*)?)(?:[eE][-+]?[0-9]+)?
    |[-+]?\.(?:inf|Inf|INF)|\.(?:nan|NaN|NAN))$""", re.X)
SpecLoader.yaml_implicit_resolvers = {k: list(v) for k, v in yaml.SafeLoader.yaml_implicit_resolvers.items()}
for _first in "-+.0123456789":
    # YAML 1.2 float after the 1.1 int resolver: `10` stays an int, `1e-3` becomes a float
    SpecLoader.yaml_implicit_resolvers.setdefault(_first, []).append(("tag:yaml.org,2002:float", _FLOAT_12))


class SpecYAMLError(ValueError):
    """The text is not a spec document: one line saying why (and where)."""


def load_yaml(text: str) -> Any:
    """Parse spec YAML with `SpecLoader` (scientific notation such as ``1e-3`` is a number).

    Raises SpecYAMLError (one line) for text over the size limit, invalid YAML, an
    alias bomb or nesting beyond the limit."""
    if len(text) > MAX_SPEC_BYTES:
        raise SpecYAMLError(f"the spec is {len(text) / 2**20:.1f} MiB; a spec is at most "
                            f"{MAX_SPEC_BYTES // 2**20} MiB")
    try:
        return yaml.load(text, Loader=SpecLoader)  # noqa: S506 - SpecLoader is a SafeLoader
    except yaml.YAMLError as exc:
        raise SpecYAMLError(_yaml_error(exc)) from None
    except (ValueError, RecursionError) as exc:  # e.g. an integer of more digits than Python converts
        raise SpecYAMLError(f"not valid YAML: {_line(exc)}") from None


def read_spec_text(path: Path) -> str:
    """The text of a spec file, refused (OSError / SpecYAMLError) when too large or not text."""
    with open(path, "rb") as f:
        size = f.seek(0, 2)
        if size > MAX_SPEC_BYTES:
            raise SpecYAMLError(f"the spec file is {size / 2**20:.1f} MiB; a spec is at most "
                                f"{MAX_SPEC_BYTES // 2**20} MiB")
        f.seek(0)
        data = f.read(MAX_SPEC_BYTES + 1)  # a pipe or device may report no size
    if len(data) > MAX_SPEC_BYTES:
        raise SpecYAMLError(f"the spec file is larger than {MAX_SPEC_BYTES // 2**20} MiB, the most a spec may be")
    return data.decode("utf-8")


def _line(exc: BaseException, limit: int = 160) -> str:
    text = " ".join(str(exc).split())
    return text if len(text) <= limit else text[: limit - 3] + "..."


def _yaml_error(exc: yaml.YAMLError) -> str:
    mark = getattr(exc, "problem_mark", None)
    problem = getattr(exc, "problem", None) or str(exc)
    where = f" at line {mark.line + 1}, column {mark.column + 1}" if mark is not None else ""
    context = getattr(exc, "context", None)
    text = f"{context}: {problem}" if context else problem
    return f"not valid YAML{where}: {_line(text)}"
