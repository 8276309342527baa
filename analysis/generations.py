"""TriKD curriculum: student and online-teacher test accuracy per generation, per anchor weight.

Each (trial, generation, role) is taken at its best-val epoch. Runs come from
stage ``confirm`` when it has TriKD rows, else from every stage holding them;
within each anchor weight the configuration with the best mean student val_acc
at the last generation is kept, and its seeds give mean and 95% CI.
"""

from __future__ import annotations

import pandas as pd
import plotly.graph_objects as go

from .select import best_config, reported_stage
from .figstyle import finish, y_range_with_bars
from .stats import summarize

METHODS = ("trikd",)


def generation_data(summary: pd.DataFrame) -> tuple[pd.DataFrame, str]:
    """Per (anchor_weight, generation, role): mean, low, high, n of test_acc; plus the stage used."""
    rows, stage = reported_stage(summary, METHODS)
    rows = rows[rows["role"].isin(["student", "teacher"])]
    if rows.empty:
        return pd.DataFrame(columns=["anchor_weight", "generation", "role", "mean", "low", "high", "n"]), stage
    last_gen = rows.groupby("trial_id")["generation"].transform("max")
    score = (rows["role"] == "student") & (rows["generation"] == last_gen)
    rows = best_config(rows.assign(anchor_weight=rows["anchor_weight"].fillna(-1.0)), ["anchor_weight"], score)
    out = summarize(rows, ["anchor_weight", "generation", "role"], "test_acc")
    return out, stage


def figure(summary: pd.DataFrame) -> go.Figure | None:
    """Test accuracy vs generation: one line per anchor weight and role; None without TriKD rows."""
    data, stage = generation_data(summary)
    if data.empty:
        return None
    fig = go.Figure()
    for (aw, role), grp in data.groupby(["anchor_weight", "role"], sort=True):
        grp = grp.sort_values("generation")
        aw_txt = "none" if aw < 0 else f"{aw:g}"
        fig.add_trace(go.Scatter(
            x=grp["generation"], y=100 * grp["mean"], mode="lines+markers",
            name=f"{'student' if role == 'student' else 'online teacher'}, anchor weight {aw_txt}",
            legendgroup=f"aw={aw_txt}",
            line=dict(dash="solid" if role == "student" else "dash"),
            error_y=dict(type="data", symmetric=False, array=100 * (grp["high"] - grp["mean"]).fillna(0),
                         arrayminus=100 * (grp["mean"] - grp["low"]).fillna(0)),
            customdata=grp[["n"]], hovertemplate="generation %{x}<br>%{y:.2f}%<br>n=%{customdata[0]}",
        ))
    fig.update_yaxes(range=y_range_with_bars(fig))  # whole error bars, even past 0 or 100
    fig.update_layout(xaxis_title="generation (0 = no anchor)", yaxis_title="test accuracy (%) at best-val epoch")
    fig.update_xaxes(dtick=1)
    return finish(fig, "TriKD generations: student and online-teacher test accuracy",
                  f"stage: {stage}; mean ± 95% CI over seeds; solid: student, dashed: online teacher",
                  legend_rows=1 + len(fig.data) // 4)
