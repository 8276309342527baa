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


def trikd_runs(summary: pd.DataFrame) -> pd.DataFrame:
    """TriKD student rows (every generation) of the configuration chosen on validation per teacher size.

    Stage ``confirm`` only, finished trials; the configuration with the best
    mean val_acc of the student at its last generation; the online teacher's
    rows (role teacher) are never the method's result and are left out.
    """
    from .select import config_ids

    rows = summary[(summary["stage"] == "confirm") & summary["method"].isin(METHODS) & (summary["role"] == "student")]
    if rows.empty:
        return rows
    rows = rows.assign(teacher_size=rows["teacher_size"].fillna(-1.0), config_id=config_ids(rows))
    last_gen = rows.groupby("trial_id")["generation"].transform("max")
    return best_config(rows, ["teacher_size"], rows["generation"] == last_gen)


def generation_comparisons(summary: pd.DataFrame, delta: float = 0.5, level: float = 0.95) -> list:
    """TriKD student at every generation minus the no-KD student, paired by seed.

    One Holm family per teacher size over the generations. Generation g is
    compared with the baseline configuration (chosen on validation) whose
    epochs equal (g + 1) x the TriKD epochs when one exists, else with the
    TriKD epochs. Returns a list of (teacher_size, generation, PairedVerdict, baseline info).
    """
    from .select import choose_baseline
    from .stats import compare

    runs = trikd_runs(summary)
    out = []
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
            pairs.append((f"trikd{size_txt} student at generation {g}", f"no-KD student{b_ep}", a, b))
            infos.append({**info, "test_acc": float(b.mean()) if len(b) else float("nan")})
        family = "trikd generations vs no-KD student" + ("" if size < 0 else f", teacher size {size:g}")
        verdicts = compare(pairs, family=family, delta=delta, level=level)
        out += [(float(size), g, v, info) for g, v, info in zip(gens, verdicts, infos)]
    return out
