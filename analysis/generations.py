"""Curriculum generations (TriKD's, or any method's): student and online-teacher test accuracy per
generation, per anchor weight.

A method gets this chart when its rows show a curriculum: an online teacher reported beside the
student (rows of role ``teacher``) over more than one generation (`generation_methods`, read from
the rows, so a plug-in method that trains such a curriculum is charted as TriKD is). Each (trial,
generation, role) is taken at its best-val epoch. Runs come from stage ``confirm`` when it has the
method's rows, else from every stage holding them; within each anchor weight the configuration
with the best mean student val_acc at the last generation is kept, and its seeds give mean and
95% CI.
"""

from __future__ import annotations

import pandas as pd
import plotly.graph_objects as go

from .select import best_config, reported_stage
from .figstyle import finish, y_range_with_bars
from .stats import summarize


def generation_methods(summary: pd.DataFrame) -> list[str]:
    """The methods whose rows show a curriculum: an online teacher (role ``teacher``) and a
    generation after the first, sorted by name."""
    if summary.empty or not {"method", "role", "generation"} <= set(summary.columns):
        return []
    rows = summary[summary["role"].isin(["student", "teacher"]) & summary["generation"].notna()]
    out = []
    for method, grp in rows.groupby("method", sort=True):
        if (grp["role"] == "teacher").any() and (grp["generation"] >= 1).any():
            out.append(str(method))
    return out


def generation_data(summary: pd.DataFrame, method: str) -> tuple[pd.DataFrame, str]:
    """Per (anchor_weight, generation, role) of `method`: mean, low, high, n of test_acc; plus the stage used."""
    rows, stage = reported_stage(summary, [method])
    rows = rows[rows["role"].isin(["student", "teacher"])]
    if rows.empty:
        return pd.DataFrame(columns=["anchor_weight", "generation", "role", "mean", "low", "high", "n"]), stage
    last_gen = rows.groupby("trial_id")["generation"].transform("max")
    score = (rows["role"] == "student") & (rows["generation"] == last_gen)
    rows = best_config(rows.assign(anchor_weight=rows["anchor_weight"].fillna(-1.0)), ["anchor_weight"], score)
    out = summarize(rows, ["anchor_weight", "generation", "role"], "test_acc")
    return out, stage


def figure(summary: pd.DataFrame, method: str, label: str | None = None) -> go.Figure | None:
    """`method`'s test accuracy vs generation: one line per anchor weight and role; None without its
    rows. `label`: how the title names the method (default: its name)."""
    data, stage = generation_data(summary, method)
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
    return finish(fig, f"{label or method} generations: student and online-teacher test accuracy",
                  f"stage: {stage}; mean ± 95% CI over seeds; solid: student, dashed: online teacher",
                  legend_rows=1 + len(fig.data) // 4)


def generation_runs(summary: pd.DataFrame, method: str) -> pd.DataFrame:
    """`method`'s student rows (every generation) of the configuration chosen on validation per teacher size.

    Stage ``confirm`` only, finished trials; the configuration with the best
    mean val_acc of the student at its last generation; the online teacher's
    rows (role teacher) are never the method's result and are left out.
    """
    from .select import config_ids

    rows = summary[(summary["stage"] == "confirm") & (summary["method"] == method) & (summary["role"] == "student")]
    if rows.empty:
        return rows
    rows = rows.assign(teacher_size=rows["teacher_size"].fillna(-1.0), config_id=config_ids(rows))
    last_gen = rows.groupby("trial_id")["generation"].transform("max")
    return best_config(rows, ["teacher_size"], rows["generation"] == last_gen)


def generation_comparisons(summary: pd.DataFrame, delta: float = 0.5, level: float = 0.95) -> list:
    """The student of every curriculum method (`generation_methods`) at every generation minus the
    no-KD student, paired by seed.

    One Holm family per method and teacher size over the generations. Generation g is
    compared with the baseline configuration (chosen on validation) whose
    epochs equal (g + 1) x the method's epochs when one exists, else with the
    method's epochs. Returns a list of (method, teacher_size, generation, PairedVerdict, baseline info).
    """
    from .select import choose_baseline
    from .stats import compare

    out = []
    for method in generation_methods(summary):
        runs = generation_runs(summary, method)
        if runs.empty:
            continue
        for size, grp in runs.groupby("teacher_size", sort=True):
            epochs = grp["epochs"].dropna()
            ep = float(epochs.iloc[0]) if len(epochs) else None
            pairs, infos, gens = [], [], sorted(grp["generation"].dropna().astype(int).unique())
            for g in gens:
                base, info = choose_baseline(summary, None if ep is None else (g + 1) * ep, ep)
                a = grp[grp["generation"] == g].drop_duplicates("seed").set_index("seed")["test_acc"] * 100
                b = base.drop_duplicates("seed").set_index("seed")["test_acc"] * 100
                size_txt = "" if size < 0 else f" (teacher size {size:g})"
                b_ep = "" if info.get("epochs") is None else f" ({info['epochs']:g} epochs)"
                pairs.append((f"{method}{size_txt} student at generation {g}", f"no-KD student{b_ep}", a, b))
                infos.append({**info, "test_acc": float(b.mean()) if len(b) else float("nan")})
            family = f"{method} generations vs no-KD student" + ("" if size < 0 else f", teacher size {size:g}")
            verdicts = compare(pairs, family=family, delta=delta, level=level)
            out += [(method, float(size), g, v, info) for g, v, info in zip(gens, verdicts, infos)]
    return out
