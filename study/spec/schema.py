"""The spec's JSON Schema, generated from the same typed definition that validates a spec.

`json_schema()` describes what is registered now (plug-ins included, once imported):
JSON Schema draft-07, the newest draft editors' YAML support (yaml-language-server,
VS Code's YAML extension) validates in full. Ready specs point at the committed copy,
`studies/kdstudy.schema.json`, with their first line
``# yaml-language-server: $schema=./kdstudy.schema.json``; `kdstudy schema > FILE`
writes a new one (with a spec's plug-ins: `kdstudy schema SPEC`).

The schema is a guide for editors; `kdstudy validate` has the last word (it also
builds every model at the dataset's shape, checks teacher sizes against the ladder,
and so on).
"""

from __future__ import annotations

import json

from .model import spec_models

DRAFT = "http://json-schema.org/draft-07/schema#"


def json_schema() -> dict:
    """The spec's JSON Schema (draft-07) for the registries as they are now."""
    schema = spec_models().root.model_json_schema(ref_template="#/definitions/{model}")
    defs = schema.pop("$defs", {})
    out = {"$schema": DRAFT, "title": "kdstudy study spec", **_clean(schema)}
    out["definitions"] = {k: _clean(v) for k, v in sorted(defs.items())}
    return out


def schema_text() -> str:
    """`json_schema()` as the text written to `studies/kdstudy.schema.json` (stable: sorted keys)."""
    return json.dumps(json_schema(), indent=1, sort_keys=True, ensure_ascii=False) + "\n"


#: bounds pydantic leaves under their Python names when a validator wraps the type (Optional[Int])
_BOUNDS = {"ge": "minimum", "le": "maximum", "gt": "exclusiveMinimum", "lt": "exclusiveMaximum"}


def _clean(node):
    """Draft-07 and editor friendly: no generated titles, no `discriminator` (an OpenAPI keyword),
    no `default: null` (a field that is absent is at its default), bounds by their JSON Schema names."""
    if isinstance(node, dict):
        out = {}
        numeric = node.get("type") in ("integer", "number")
        for k, v in node.items():
            if numeric and k in _BOUNDS:
                out[_BOUNDS[k]] = v
                continue
            if k == "title" and isinstance(v, str) or k == "discriminator":
                continue
            if k == "default" and v is None:
                continue
            out[k] = _clean(v) if k not in ("properties", "definitions") else {p: _clean(s) for p, s in v.items()}
        return out
    if isinstance(node, list):
        return [_clean(v) for v in node]
    return node
