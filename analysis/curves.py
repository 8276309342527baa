"""Learning curves: val_acc (solid) and test_acc (dotted) per epoch for every trial.

Traces are legend-grouped by method and teacher size (click a legend entry to
hide a group) and a dropdown shows one method or one teacher size at a time.
TriKD generations are laid end to end (epochs are cumulative over
generations); multi-exit trials show their last exit; only the reported model
is drawn (students, or the teachers of stage ``teachers``).
"""

from __future__ import annotations

import pandas as pd
import plotly.express as px
import plotly.graph_objects as go


def curve_rows(df: pd.DataFrame) -> pd.DataFrame:
    """Rows to draw, with ``x`` = cumulative epoch over generations and a ``group`` label."""
    rows = df[(df["role"] == "student") | ((df["stage"] == "teachers") & (df["role"] == "teacher"))]
    if rows.empty:
        return rows
    last_exit = rows.groupby(["stage", "trial_id"])["exit"].transform("max")
    rows = rows[rows["exit"].isna() | (rows["exit"] == last_exit)].copy()
    per_gen = rows.groupby(["stage", "trial_id", "generation"])["epoch"].max().rename("gen_len").reset_index()
    per_gen = per_gen.sort_values(["stage", "trial_id", "generation"])
    per_gen["offset"] = per_gen.groupby(["stage", "trial_id"])["gen_len"].cumsum() - per_gen["gen_len"]
    rows = rows.merge(per_gen[["stage", "trial_id", "generation", "offset"]],
                      on=["stage", "trial_id", "generation"], how="left")
    rows["x"] = rows["epoch"] + rows["offset"]
    size = rows["teacher_size"].map(lambda v: "no teacher" if pd.isna(v) else f"teacher {v:g}")
    who = rows["method"].where(rows["stage"] != "teachers", "teacher ladder")
    rows["group"] = who + " · " + size
    return rows.sort_values(["stage", "trial_id", "x"])


def figure(df: pd.DataFrame) -> go.Figure | None:
    """One val and one test line per trial; None when there are no rows."""
    rows = curve_rows(df)
    if rows.empty:
        return None
    groups = sorted(rows["group"].unique())
    palette = px.colors.qualitative.Plotly
    colour = {g: palette[i % len(palette)] for i, g in enumerate(groups)}
    fig = go.Figure()
    meta = []  # (method, size label) per trace, for the dropdown
    for (stage, trial), grp in rows.groupby(["stage", "trial_id"], sort=True):
        first = grp.iloc[0]
        name = f"{stage}/{trial}"
        for metric, dash in (("val_acc", "solid"), ("test_acc", "dot")):
            fig.add_trace(go.Scatter(
                x=grp["x"], y=100 * grp[metric], mode="lines", name=first["group"],
                legendgroup=first["group"], showlegend=False,
                line=dict(color=colour[first["group"]], dash=dash, width=1.2),
                hovertemplate=f"{name}<br>{metric}<br>epoch %{{x}}<br>%{{y:.2f}}%<extra>{first['group']}</extra>",
            ))
            meta.append(tuple(first["group"].split(" · ", 1)))
    shown = set()
    for i, trace in enumerate(fig.data):  # one legend entry per group
        if trace.legendgroup not in shown:
            shown.add(trace.legendgroup)
            trace.showlegend = True
    buttons = [dict(label="all trials", method="update", args=[{"visible": [True] * len(meta)}])]
    for method in sorted({m for m, _ in meta}):
        buttons.append(dict(label=f"method: {method}", method="update",
                            args=[{"visible": [m == method for m, _ in meta]}]))
    for size in sorted({s for _, s in meta}):
        buttons.append(dict(label=size, method="update", args=[{"visible": [s == size for _, s in meta]}]))
    fig.update_layout(
        title="Learning curves (solid: val accuracy, dotted: test accuracy)",
        xaxis_title="epoch (cumulative over generations)", yaxis_title="accuracy (%)",
        updatemenus=[dict(buttons=buttons, direction="down", x=1.0, xanchor="right", y=1.15, yanchor="top")],
        legend=dict(title="method · teacher size", groupclick="togglegroup"), template="plotly_white",
    )
    return fig
