"""How the report names and groups a study's methods: from the facts the study recorded of them.

The runner writes ``<study>/methods.json`` ({method: {label, kind, ...}}, from each method's
registry entry, `trainables.methods.Method.facts`); the report reads it as data
(`analysis.report.read_method_facts`) and names each method by its label and draws it by its
kind, a plug-in's as a built-in's. A study written before the facts were recorded names its
methods by their registered names and draws them all as "kd".
"""

from __future__ import annotations

#: how `capacity_gap.comparison_figure` draws each `kind` a study records for its methods (``methods.json``):
#: the capacity-gap remedies bold, the feature methods dash-dot; a method without recorded facts
#: (a study written before they were recorded) is drawn as "kd" under its name
KIND_LINES = {"kd": dict(width=2), "remedy": dict(width=3), "feature": dict(width=2, dash="dashdot")}


def method_label(methods: dict | None, name: str) -> str:
    """The label a study recorded for method `name` (``methods.json``), else the name itself."""
    facts = (methods or {}).get(name)
    label = facts.get("label") if isinstance(facts, dict) else None
    return label if isinstance(label, str) and label else name


def method_kind(methods: dict | None, name: str) -> str:
    """The kind a study recorded for method `name` ("kd", "remedy", "feature"), else "kd"."""
    facts = (methods or {}).get(name)
    kind = facts.get("kind") if isinstance(facts, dict) else None
    return kind if kind in KIND_LINES else "kd"
