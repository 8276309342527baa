"""The hyperparameter landscape of the search stage.

* `scatter`: every sampled point of the search in its two searched
  hyperparameters (temperature × alpha for KD; a plug-in method's own
  parameters, whatever their names), coloured by the trial's best val_acc,
  one panel per teacher size; trials stopped
  early by the scheduler are open circles, failed trials grey crosses (a
  heatmap of a few cells hides how little was sampled).
* `importances`: Optuna's own parameter-importance evaluator (fANOVA when
  scikit-learn is installed, else Optuna's numpy-only PED-ANOVA) on an
  in-memory study rebuilt from the Parquet rows with
  ``optuna.trial.create_trial``; each trial's value is its best val_acc.
  Trials stopped early are left out (their val_acc is of a shorter budget);
  the teacher size is a parameter only when the search chose it (budget
  ``joint``), else importances are computed within each teacher size.
"""

from __future__ import annotations

import json
import logging
import math

import numpy as np
import optuna
import pandas as pd
import plotly.graph_objects as go
from plotly.subplots import make_subplots

from .load import hparam_columns

log = logging.getLogger(__name__)

#: hyperparameters that are integers when present
INT_PARAMS = {"batch_size", "epochs", "generations"}
MIN_TRIALS = 4
MAX_BINS = 6


def search_trials(summary: pd.DataFrame, method: str | None = None) -> pd.DataFrame:
    """One row per search trial (student, last generation, last exit) with its best val_acc."""
    rows = summary[(summary["stage"] == "search") & (summary["role"] == "student")]
    if method is not None:
        rows = rows[rows["method"] == method]
    if rows.empty:
        return rows
    rows = rows[rows["generation"] == rows.groupby("trial_id")["generation"].transform("max")]
    rows = rows[rows["exit"].isna() | (rows["exit"] == rows.groupby("trial_id")["exit"].transform("max"))]
    rows = rows.drop_duplicates("trial_id").copy()
    status = rows["status"].where(rows["status"].isin(["ok", "stopped", "diverged", "failed", "running"]), "ok")
    short = rows["epochs"].notna() & (rows["n_epochs"] < rows["epochs"]) if "n_epochs" in rows else False
    rows["outcome"] = status.where(~((status == "ok") & short), "stopped")
    return rows


def budget_mode(summary: pd.DataFrame, method: str) -> str | None:
    """The search budget recorded in the trials' hparams_json (stratified | joint | ...), if any."""
    return recorded_budget_mode(summary[(summary["stage"] == "search") & (summary["method"] == method)])


def recorded_budget_mode(rows: pd.DataFrame) -> str | None:
    """The first budget mode recorded in `rows`' hparams_json, if any."""
    for text in rows.get("hparams_json", pd.Series(dtype=object)).dropna():
        try:
            mode = json.loads(text).get("budget_mode")
        except (ValueError, AttributeError):
            continue
        if mode:
            return str(mode)
    return None


def teacher_size_searched(summary: pd.DataFrame, method: str) -> bool:
    """Whether the search itself picked the teacher size (budget ``joint``), so it is a hyperparameter."""
    return budget_mode(summary, method) == "joint"


_MARKS = {  # outcome -> (legend text, marker)
    "ok": ("trained fully", dict(symbol="circle", size=11, line=dict(width=1, color="#333"))),
    "diverged": ("diverged", dict(symbol="diamond", size=11, line=dict(width=1, color="#333"))),
    "stopped": ("stopped early by the scheduler (open)", dict(symbol="circle-open", size=11, line=dict(width=2))),
    "running": ("unfinished", dict(symbol="circle-open-dot", size=11, line=dict(width=2))),
}


def scatter_axes(trials: pd.DataFrame) -> tuple[str, str | None] | None:
    """The two searched hyperparameters a landscape plots (x, y) for one method's search trials:
    temperature × alpha where the trials have both and one varies, else the first two numeric
    hyperparameters that vary (`hparam_columns` order: a plug-in's own ones included); (x, None)
    when only one varies (plotted against the best val accuracy); None when none does."""
    numeric = [c for c in hparam_columns(trials) if c in trials and trials[c].notna().all()
               and pd.api.types.is_numeric_dtype(trials[c])]
    varied = [c for c in numeric if trials[c].nunique() >= 2]
    if {"temperature", "alpha"} <= set(numeric) and ({"temperature", "alpha"} & set(varied)):
        return "temperature", "alpha"
    if len(varied) >= 2:
        return varied[0], varied[1]
    return (varied[0], None) if varied else None


def _log_axis(values: pd.Series, ratio: float = 4.0) -> bool:
    """A log axis for a positive parameter spanning a factor of `ratio` or more (a temperature, a weight)."""
    v = values.astype(float)
    return bool((v > 0).all() and v.max() / v.min() >= ratio)


def scatter(summary: pd.DataFrame, method: str) -> go.Figure | None:
    """Every sampled point of `method`'s search in its two searched hyperparameters (`scatter_axes`:
    temperature × alpha for KD), coloured by best val accuracy; None if nothing varied.

    One panel per teacher size. Stopped, unfinished and diverged trials keep
    their colour but get their own marker; failed trials (no accuracy) are grey
    crosses. The subtitle counts each.
    """
    from .figstyle import finish

    trials = search_trials(summary, method)
    if trials.empty:
        return None
    axes = scatter_axes(trials)
    if axes is None:
        return None
    xname, yname = axes
    trials = trials.dropna(subset=[c for c in axes if c])
    if trials.empty:
        return None
    trials = trials.assign(size=trials["teacher_size"].fillna(-1.0), _x=trials[xname].astype(float),
                           _y=(trials[yname].astype(float) if yname else 100 * trials["val_acc"]))
    ylabel = yname or "best val %"
    sizes = sorted(trials["size"].unique())
    titles = [("no teacher size" if z < 0 else f"teacher size {z:g}") for z in sizes]
    fig = make_subplots(rows=1, cols=len(sizes), subplot_titles=titles, shared_yaxes=True,
                        horizontal_spacing=0.04)
    scored = trials[trials["val_acc"].notna() & (trials["outcome"] != "failed")]
    zmin, zmax = (100 * scored["val_acc"].min(), 100 * scored["val_acc"].max()) if not scored.empty else (0, 100)
    shown = set()
    for i, size in enumerate(sizes, start=1):
        panel = trials[trials["size"] == size]
        for outcome, (label, marker) in _MARKS.items():
            pts = panel[(panel["outcome"] == outcome) & panel["val_acc"].notna()]
            if pts.empty:
                continue
            colour = dict(color=100 * pts["val_acc"], coloraxis="coloraxis")
            if marker["symbol"].startswith("circle-open"):
                mk = {**marker, "line": {**marker["line"], **colour}, "color": 100 * pts["val_acc"],
                      "coloraxis": "coloraxis"}
            else:
                mk = {**marker, **colour}
            fig.add_trace(go.Scatter(
                x=pts["_x"], y=pts["_y"], mode="markers", marker=mk, name=label,
                legendgroup=outcome, showlegend=outcome not in shown,
                customdata=pts[["trial_id", "n_epochs"]].assign(v=100 * pts["val_acc"]),
                hovertemplate=f"%{{customdata[0]}}<br>{xname} %{{x:.3g}}, {ylabel} %{{y:.3g}}"
                              "<br>best val %{customdata[2]:.2f}%"
                              f"<br>%{{customdata[1]}} epochs ({outcome})<extra></extra>"), row=1, col=i)
            shown.add(outcome)
        bad = panel[(panel["outcome"] == "failed") | panel["val_acc"].isna()]
        if not bad.empty:
            fig.add_trace(go.Scatter(
                x=bad["_x"], y=bad["_y"] if yname else [zmin] * len(bad), mode="markers",
                name="failed (no accuracy)", marker=dict(symbol="x", size=10, color="#999"), legendgroup="failed",
                showlegend="failed" not in shown, customdata=bad[["trial_id"]],
                hovertemplate="%{customdata[0]}: failed<extra></extra>"), row=1, col=i)
            shown.add("failed")
    xs = trials["_x"]
    log_x = np.log10(xs) if _log_axis(xs) else None
    for i in range(1, len(sizes) + 1):
        if log_x is not None:
            lo, hi = float(log_x.min()), float(log_x.max())
            pad = max(0.08, 0.08 * (hi - lo))
            ticks = sorted(xs.unique()) if xs.nunique() <= 6 else [
                v for v in (0.01, 0.03, 0.1, 0.3, 0.5, 1, 2, 4, 8, 16, 32, 64, 128)
                if 10 ** (lo - pad) <= v <= 10 ** (hi + pad)]
            fig.update_xaxes(title_text=f"{xname} (log)", type="log", range=[lo - pad, hi + pad],
                             tickmode="array", tickvals=ticks, ticktext=[f"{v:g}" for v in ticks], row=1, col=i)
        else:
            fig.update_xaxes(title_text=xname, row=1, col=i)
    ys = trials["_y"].astype(float)
    if yname and _log_axis(ys, 20.0):  # a mixing weight such as alpha (0.1 .. 0.95) stays linear
        fig.update_yaxes(type="log")
    else:
        span = max(0.1, float(ys.max() - ys.min()))
        fig.update_yaxes(range=[float(ys.min()) - 0.1 * span, float(ys.max()) + 0.1 * span])
    fig.update_yaxes(title_text=ylabel, row=1, col=1)
    counts = trials["outcome"].value_counts()
    parts = [f"{counts.get(k, 0)} {name}" for k, name in
             (("ok", "trained fully"), ("stopped", "stopped early (open circles)"),
              ("diverged", "diverged (diamonds)"), ("failed", "failed (grey ×)"), ("running", "unfinished"))
             if counts.get(k, 0) or k in ("ok", "stopped", "failed")]
    fig.update_layout(coloraxis=dict(colorscale="Viridis", cmin=zmin, cmax=zmax,
                                     colorbar=dict(title=dict(text="best val %"), thickness=14)))
    what = f"{xname} × {yname}" if yname else f"{xname} (against best val accuracy)"
    return finish(fig, f"Search landscape — {method}: sampled {what}, coloured by best val accuracy",
                  f"{len(trials)} search trials: " + ", ".join(parts), height=460)


#: the former name of `scatter` (a heatmap of binned cells until the scatter replaced it)
heatmap = scatter


def _distribution(values: pd.Series, name: str):
    """Infer an Optuna distribution from observed values."""
    vals = values.dropna()
    if vals.map(lambda v: isinstance(v, str)).any():
        return optuna.distributions.CategoricalDistribution(sorted(vals.astype(str).unique()))
    vals = vals.astype(float)
    lo, hi = float(vals.min()), float(vals.max())
    if name in INT_PARAMS and (vals == vals.round()).all():
        return optuna.distributions.IntDistribution(int(lo), int(hi), log=lo >= 1 and hi / lo >= 100)
    return optuna.distributions.FloatDistribution(lo, hi, log=lo > 0 and hi / lo >= 100)


def evaluator_for(seed: int = 0):
    """Optuna's fANOVA evaluator (needs scikit-learn), else its PED-ANOVA evaluator (numpy only).

    Returns (evaluator, name).
    """
    try:
        return optuna.importance.FanovaImportanceEvaluator(seed=seed), "fANOVA"
    except ImportError:
        return optuna.importance.PedAnovaImportanceEvaluator(), "PED-ANOVA"


def importances(summary: pd.DataFrame, method: str, seed: int = 0,
                teacher_size: float | None = None) -> tuple[dict[str, float], str | None]:
    """Optuna importances of `method`'s searched parameters; ({}, note) when too few trials.

    Only trials that trained fully (not stopped early, failed or unfinished)
    with a finite best val_acc count. Parameters are the hyperparameter
    columns that take at least 2 distinct values among them, plus the teacher
    size when the search chose it (`teacher_size_searched`). `teacher_size`
    restricts to one stratum of a stratified search.
    """
    trials = search_trials(summary, method)
    if not trials.empty:
        trials = trials[trials["outcome"].isin(["ok", "diverged"]) & np.isfinite(trials["val_acc"].astype(float))]
        if teacher_size is not None:
            trials = trials[trials["teacher_size"] == teacher_size]
    where = f"{method}" + ("" if teacher_size is None else f" (teacher size {teacher_size:g})")
    if len(trials) < MIN_TRIALS:
        return {}, (f"{where}: parameter importance skipped: {len(trials)} fully trained search trials "
                    f"(need {MIN_TRIALS})")
    extra = ["teacher_size"] if teacher_size is None and teacher_size_searched(summary, method) else []
    cols = [c for c in hparam_columns(trials) + extra
            if c in trials and trials[c].notna().all() and trials[c].nunique() >= 2]
    if not cols:
        return {}, f"{where}: parameter importance skipped: no hyperparameter took 2 distinct values."
    dists = {c: _distribution(trials[c], c) for c in cols}
    study = optuna.create_study(direction="maximize", study_name=f"{method}-rebuilt")
    for _, row in trials.iterrows():
        params = {}
        for c in cols:
            d = dists[c]
            v = row[c]
            if isinstance(d, optuna.distributions.CategoricalDistribution):
                params[c] = str(v)
            elif isinstance(d, optuna.distributions.IntDistribution):
                params[c] = int(round(v))
            else:
                params[c] = float(v)
        study.add_trial(optuna.trial.create_trial(params=params, distributions=dists, value=float(row["val_acc"])))
    evaluator, _ = evaluator_for(seed)
    try:
        result = optuna.importance.get_param_importances(study, evaluator=evaluator)
    except (ValueError, RuntimeError, ZeroDivisionError) as exc:  # e.g. all values equal
        return {}, f"{where}: parameter importance skipped: {exc}"
    return {k: float(v) for k, v in result.items() if not math.isnan(v)}, None


def importance_figure(summary: pd.DataFrame, method: str, seed: int = 0) -> tuple[go.Figure | None, list[str]]:
    """Horizontal bars of Optuna importance for one method; (None, notes) when it does not qualify.

    With a stratified budget (each teacher size searched on its own) the
    teacher size is not a hyperparameter: importances are computed within
    each teacher size that has enough trials (one bar colour per size), else
    over all sizes pooled without it. The notes say which, and how many
    stopped trials were left out.
    """
    from .figstyle import finish, palette

    optuna.logging.set_verbosity(optuna.logging.WARNING)
    trials = search_trials(summary, method)
    if trials.empty:
        return None, []
    n_stopped = int((trials["outcome"] != "ok").sum() - (trials["outcome"] == "diverged").sum())
    notes = []
    searched_size = teacher_size_searched(summary, method)
    sizes = sorted(trials["teacher_size"].dropna().unique())
    groups: list[tuple[str, dict]] = []
    if not searched_size and len(sizes) > 1:
        per = {z: importances(summary, method, seed, teacher_size=z) for z in sizes}
        if all(imp for imp, _ in per.values()):
            groups = [(f"teacher size {z:g}", imp) for z, (imp, _) in per.items()]
            notes.append(f"{method}: the budget was stratified by teacher size, so importances are computed "
                         "within each teacher size; teacher size is not a hyperparameter here.")
    if not groups:
        imp, note = importances(summary, method, seed)
        if note:
            return None, [note]
        groups = [("all teacher sizes" if len(sizes) > 1 else method, imp)]
        if not searched_size and len(sizes) > 1:
            notes.append(f"{method}: the budget was stratified by teacher size (too few trials per size to "
                         "compute importances within each); trials of all sizes are pooled and teacher size is "
                         "not treated as a hyperparameter.")
    if n_stopped:
        notes.append(f"{method}: {n_stopped} search trial(s) stopped early, failed or unfinished are left out "
                     "(their val accuracy is not of the full budget).")
    fig = go.Figure()
    colours = palette(len(groups))
    for (label, imp), colour in zip(groups, colours):
        items = sorted(imp.items(), key=lambda kv: kv[1])
        fig.add_trace(go.Bar(x=[v for _, v in items], y=[k for k, _ in items], orientation="h", name=label,
                             marker_color=colour))
    name = evaluator_for(seed)[1]
    used = int(trials["outcome"].isin(["ok", "diverged"]).sum())
    fig.update_layout(barmode="group", xaxis_title="importance for best val accuracy (normalised to sum to 1)",
                      showlegend=len(groups) > 1)
    if searched_size:
        scope = "teacher size searched jointly, so it is a parameter"
    elif len(sizes) > 1:
        scope = ("within each teacher size (stratified budget)" if len(groups) > 1
                 else "teacher sizes pooled; stratified budget, so teacher size is not a parameter")
    else:
        scope = None
    finish(fig, f"Hyperparameter importance — {method}",
           f"Optuna {name} over {used} fully trained search trials"
           + (f"; {n_stopped} stopped early, failed or unfinished left out" if n_stopped else "")
           + (f"; {scope}" if scope else ""),
           height=max(360, 150 + 40 * sum(len(g[1]) for g in groups)))
    fig.update_yaxes(automargin=True)
    return fig, notes
