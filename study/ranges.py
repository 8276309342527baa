"""A searched parameter's range: plain data, importable without torch (experiment drivers use it)."""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class Range:
    """One searched parameter: a numeric range or a list of choices."""

    kind: str  # float | int | categorical
    low: float | None = None
    high: float | None = None
    log: bool = False
    choices: tuple | None = None
