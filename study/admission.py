"""The runner's admission policy: which ready experiment starts next, and whether one may start now.

One home for the rules `study.runner` follows and `study.plan` simulates (so the plan's makespan
is the runner's): ready experiments are considered critical path first (`launch_order`, by
`priority_rank`), and another one starts while the trials the running ones can still ask for
(`demand_of`) do not fill the slots, under the cap on experiments at once (`admits`).
"""

from __future__ import annotations


def priority_rank(exps, cost: dict[str, float]) -> dict[str, float]:
    """Upward rank: an experiment's own work plus the most work downstream of it (the runner and
    the simulation start ready experiments in this order, most first: critical path first)."""
    children: dict[str, list[str]] = {}
    for e in exps:
        for d in e.deps:
            children.setdefault(d, []).append(e.name)
    rank: dict[str, float] = {}
    for e in reversed(list(exps)):  # plan order has dependencies first
        rank[e.name] = cost.get(e.name, 0.0) + max((rank[c] for c in children.get(e.name, [])), default=0.0)
    return rank


def launch_order(exps, cost: dict[str, float]) -> list:
    """Experiments in the order the runner considers them: highest `priority_rank` first, ties in
    plan order."""
    exps = list(exps)
    rank = priority_rank(exps, cost)
    index = {e.name: i for i, e in enumerate(exps)}
    return sorted(exps, key=lambda e: (-rank[e.name], index[e.name]))


def demand_of(trials: int, ended: int, running: int, max_concurrent: int) -> int:
    """Slots a running experiment still claims: its unfinished trials, at most max_concurrent; once
    every trial has started, one fewer than it runs (a slot frees soon: the next experiment may
    start its Tuner meanwhile, so the slot does not wait for it)."""
    left = max(0, trials - ended)
    if left - running > 0:
        return min(max_concurrent, left)
    return max(0, running - 1)


def admits(demand: float, slots: float, running: int, max_experiments: int | None) -> bool:
    """The runner's admission rule: start another ready experiment while the trials the running ones
    can still ask for (each at most max_concurrent) do not fill the slots, and under the cap."""
    return demand < slots and (max_experiments is None or running < max_experiments)
