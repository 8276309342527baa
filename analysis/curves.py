"""Learning curves: one panel per method (small multiples), val_acc (solid) and test_acc (dots) per epoch.

Only the reported model is drawn (`load.final_models` rules: the student,
the teachers in stage ``teachers``; multi-exit trials at their final exit).
Within a panel each teacher size has its own colour (no colour repeats);
search trials are drawn faint, every other run bold. TriKD generations are laid
end to end on a cumulative epoch axis, each generation its own segment (the
line breaks where a generation restarts, and a dotted vertical line marks it).
"""

from __future__ import annotations

import math

import pandas as pd
import plotly.graph_objects as go
from plotly.subplots import make_subplots

from .figstyle import finish, palette


def curve_rows(df: pd.DataFrame) -> pd.DataFrame:
    """Rows to draw, with ``x`` = cumulative epoch over generations, a ``panel`` and a ``colour_key``."""
    wanted = df["role"] == df["stage"].map(lambda s: "teacher" if s == "teachers" else "student")
    rows = df[wanted]
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
    rows["panel"] = rows["method"].where(rows["stage"] != "teachers", "teachers (scratch)")
    rows.loc[(rows["stage"] == "baseline") & (rows["method"] == "scratch"), "panel"] = "scratch (no-KD student)"
    rows["colour_key"] = rows["teacher_size"].map(lambda v: "no teacher" if pd.isna(v) else f"teacher size {v:g}")
    return rows.sort_values(["stage", "trial_id", "generation", "x"])


def _segments(grp: pd.DataFrame, metric: str) -> tuple[list, list]:
    """x and y with a break (None) between generations, so a restart is not joined to the previous run."""
    xs, ys = [], []
    for _, gen in grp.groupby("generation", sort=True):
        if xs:
            xs.append(None)
            ys.append(None)
        xs += gen["x"].tolist()
        ys += (100 * gen[metric]).tolist()
    return xs, ys


def figure(df: pd.DataFrame) -> go.Figure | None:
    """Small multiples of val and test accuracy per epoch, a panel per method; None when there are no rows."""
    rows = curve_rows(df)
    if rows.empty:
        return None
    order = ["teachers (scratch)", "scratch (no-KD student)"]
    panels = [p for p in order if p in set(rows["panel"])] + sorted(set(rows["panel"]) - set(order))
    keys = sorted(rows["colour_key"].unique(), key=lambda k: (k != "no teacher", float(k.split()[-1])
                                                              if k != "no teacher" else 0.0))
    colour = dict(zip(keys, palette(len(keys))))
    ncols = 2 if len(panels) > 1 else 1
    nrows = math.ceil(len(panels) / ncols)
    fig = make_subplots(rows=nrows, cols=ncols, subplot_titles=panels, shared_yaxes=False,
                        vertical_spacing=min(0.12, 0.5 / max(1, nrows)), horizontal_spacing=0.08)
    shown = set()
    for k, panel in enumerate(panels):
        r, c = k // ncols + 1, k % ncols + 1
        prow = rows[rows["panel"] == panel]
        for (stage, trial), grp in prow.groupby(["stage", "trial_id"], sort=True):
            key = grp["colour_key"].iloc[0]
            bold = stage != "search"
            for metric, dash in (("val_acc", "solid"), ("test_acc", "dot")):
                g = grp.dropna(subset=[metric]) if metric == "test_acc" else grp
                xs, ys = _segments(g, metric)
                fig.add_trace(go.Scatter(
                    x=xs, y=ys, mode="lines" if metric == "val_acc" else "lines+markers",
                    name=key, legendgroup=key, showlegend=key not in shown and metric == "val_acc",
                    legendrank=1 + keys.index(key),
                    line=dict(color=colour[key], dash=dash, width=2 if bold else 1),
                    marker=dict(size=3), opacity=1.0 if bold else 0.45, connectgaps=False,
                    hovertemplate=f"{stage}/{trial}<br>{metric}<br>epoch %{{x}}<br>%{{y:.2f}}%<extra>{key}</extra>",
                ), row=r, col=c)
                if metric == "val_acc":
                    shown.add(key)
        starts = prow[prow["generation"] > 0].groupby("generation")["offset"].min()
        for x0 in starts:
            fig.add_vline(x=x0 + 0.5, line_dash="dot", line_color="#aaa", row=r, col=c)
        fig.update_xaxes(title_text="epoch" + (" (generations end to end)" if not starts.empty else ""),
                         row=r, col=c)
        fig.update_yaxes(title_text="accuracy (%)" if c == 1 else None, row=r, col=c)
    return finish(fig, "Learning curves by method",
                  "solid: val accuracy, dotted: test accuracy (only at best-val and last epochs); "
                  "faint: search trials; colour: teacher size",
                  height=260 + 300 * nrows, legend_title="colour: ",
                  legend_rows=1 + len(keys) // 6)
