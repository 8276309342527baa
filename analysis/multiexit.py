"""Multi-exit networks: test accuracy per exit against cumulative FLOPs, distillation vs exit-wise CE.

Each (trial, exit) is taken at its best-val epoch for that exit. Runs come from
``confirm`` when it has these methods, else from every stage holding them; per
method the configuration with the best mean final-exit val_acc is kept, and
its seeds give mean and 95% CI.
"""

from __future__ import annotations

import pandas as pd
import plotly.graph_objects as go

from .select import best_config, reported_stage
from .figstyle import finish, y_range_with_bars
from .stats import summarize

METHODS = ("multiexit", "multiexit_ce")


def exit_data(summary: pd.DataFrame) -> tuple[pd.DataFrame, str]:
    """Per (method, exit): exit_flops, mean, low, high, n of test_acc; plus the stage used."""
    rows, stage = reported_stage(summary, METHODS)
    rows = rows[(rows["role"] == "student") & rows["exit"].notna()]
    if rows.empty:
        return pd.DataFrame(columns=["method", "exit", "mean", "low", "high", "n", "exit_flops"]), stage
    last_exit = rows.groupby("trial_id")["exit"].transform("max")
    rows = best_config(rows, ["method"], rows["exit"] == last_exit)
    out = summarize(rows, ["method", "exit"], "test_acc")
    flops = rows.groupby(["method", "exit"])["exit_flops"].median().rename("exit_flops").reset_index()
    return out.merge(flops, on=["method", "exit"], how="left"), stage


def _flops(v: float) -> str:
    for unit, div in (("G", 1e9), ("M", 1e6), ("k", 1e3)):
        if v >= div:
            return f"{v / div:.3g}{unit}"
    return f"{v:.3g}"


def figure(summary: pd.DataFrame) -> go.Figure | None:
    """Accuracy vs cumulative FLOPs per exit; None without multi-exit rows."""
    data, stage = exit_data(summary)
    if data.empty:
        return None
    use_flops = data["exit_flops"].notna().all()
    xcol = "exit_flops" if use_flops else "exit"
    names = {"multiexit": "distillation (multiexit)", "multiexit_ce": "exit-wise CE (multiexit_ce)"}
    fig = go.Figure()
    for method, grp in data.groupby("method", sort=True):
        grp = grp.sort_values("exit")
        fig.add_trace(go.Scatter(
            x=grp[xcol], y=100 * grp["mean"], mode="lines+markers", name=names.get(method, method),
            error_y=dict(type="data", symmetric=False, array=100 * (grp["high"] - grp["mean"]).fillna(0),
                         arrayminus=100 * (grp["mean"] - grp["low"]).fillna(0)),
            customdata=grp[["exit", "n"]],
            hovertemplate="exit %{customdata[0]}<br>%{x:.3s} FLOPs<br>%{y:.2f}%<br>n=%{customdata[1]}",
        ))
    fig.update_yaxes(range=y_range_with_bars(fig))  # whole error bars, even past 0 or 100
    fig.update_layout(xaxis_title="cumulative FLOPs per sample (log; one point per exit)" if use_flops else "exit",
                      yaxis_title="test accuracy (%) at best-val epoch")
    if use_flops:
        ticks = data.drop_duplicates("exit").sort_values("exit")
        fig.update_xaxes(type="log", tickmode="array", tickvals=list(ticks["exit_flops"]),
                         ticktext=[f"exit {int(e)}<br>{_flops(f)} FLOPs"
                                   for e, f in zip(ticks["exit"], ticks["exit_flops"])])
    return finish(fig, "Multi-exit: test accuracy per exit",
                  f"stage: {stage}; mean ± 95% CI over seeds")


def exit_runs(summary: pd.DataFrame) -> dict[str, pd.DataFrame]:
    """Per method (multiexit, multiexit_ce): the runs of its configuration chosen on validation.

    Stage ``confirm`` only, finished student trials; the configuration with
    the best mean final-exit val_acc over seeds; one row per (trial, exit) at
    that exit's best-val epoch.
    """
    rows = summary[(summary["stage"] == "confirm") & summary["method"].isin(METHODS)
                   & (summary["role"] == "student") & summary["exit"].notna()]
    if rows.empty:
        return {}
    last_exit = rows.groupby("trial_id")["exit"].transform("max")
    chosen = best_config(rows, ["method"], rows["exit"] == last_exit)
    return {m: grp for m, grp in chosen.groupby("method", sort=True)}


def exit_comparisons(summary: pd.DataFrame, delta: float = 0.5, level: float = 0.95) -> list:
    """Multi-exit distillation minus exit-wise CE at every exit, paired by seed (one Holm family over exits).

    Returns a list of PairedVerdict, one per exit present in both methods (empty without both).
    """
    from .stats import compare

    runs = exit_runs(summary)
    if set(runs) != set(METHODS):
        return []
    kd, ce = runs["multiexit"], runs["multiexit_ce"]
    exits = sorted(set(kd["exit"].dropna().astype(int)) & set(ce["exit"].dropna().astype(int)))
    pairs = []
    for x in exits:
        a = kd[kd["exit"] == x].drop_duplicates("seed").set_index("seed")["test_acc"] * 100
        b = ce[ce["exit"] == x].drop_duplicates("seed").set_index("seed")["test_acc"] * 100
        pairs.append((f"multiexit (distillation) at exit {x}", f"exit-wise CE (multiexit_ce) at exit {x}", a, b))
    return compare(pairs, family="multiexit vs exit-wise CE, per exit", delta=delta, level=level)
