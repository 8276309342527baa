"""The hyperparameter landscape of the search stage.

* `heatmap`: best val_acc over temperature x alpha, one panel per teacher size
  (values binned when the search sampled them continuously).
* `importances`: Optuna's own parameter-importance evaluator (fANOVA when
  scikit-learn is installed, else Optuna's numpy-only PED-ANOVA) on an
  in-memory study rebuilt from the Parquet rows with
  ``optuna.trial.create_trial``; each trial's value is its best val_acc.
"""

from __future__ import annotations

import logging
import math

import numpy as np
import optuna
import pandas as pd
import plotly.graph_objects as go
from plotly.subplots import make_subplots

from .schema import HPARAM_COLUMNS

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
    return rows.drop_duplicates("trial_id")


def _bins(values: pd.Series) -> pd.Series:
    """Labels for a heatmap axis: exact values if few, else equal-width (log when wide) bins."""
    distinct = np.sort(values.dropna().unique())
    if len(distinct) <= MAX_BINS:
        return values.map(lambda v: f"{v:.3g}")
    lo, hi = float(distinct[0]), float(distinct[-1])
    if lo > 0 and hi / lo >= 10:
        edges = np.geomspace(lo, hi, MAX_BINS + 1)
    else:
        edges = np.linspace(lo, hi, MAX_BINS + 1)
    edges[0], edges[-1] = -np.inf, np.inf
    cut = pd.cut(values, edges)
    inner = np.r_[lo, edges[1:-1], hi]
    labels = {iv: f"{inner[i]:.3g}–{inner[i + 1]:.3g}" for i, iv in enumerate(cut.cat.categories)}
    return cut.map(labels).astype(object)


def _order(labels: pd.Series) -> list[str]:
    return sorted(labels.dropna().unique(), key=lambda s: float(s.split("–")[0]))


def heatmap(summary: pd.DataFrame, method: str) -> go.Figure | None:
    """Best val_acc per (temperature, alpha) cell, one panel per teacher size; None if not searched."""
    trials = search_trials(summary, method).dropna(subset=["temperature", "alpha", "val_acc"])
    if trials.empty or (trials["temperature"].nunique() < 2 and trials["alpha"].nunique() < 2):
        return None
    trials = trials.assign(T=_bins(trials["temperature"]), A=_bins(trials["alpha"]),
                           size=trials["teacher_size"].fillna(-1.0))
    t_order, a_order = _order(trials["T"]), _order(trials["A"])
    sizes = sorted(trials["size"].unique())
    titles = [("no teacher size" if s < 0 else f"teacher size {s:g}") for s in sizes]
    fig = make_subplots(rows=1, cols=len(sizes), subplot_titles=titles, shared_yaxes=True)
    zmin, zmax = 100 * trials["val_acc"].min(), 100 * trials["val_acc"].max()
    for i, size in enumerate(sizes, start=1):
        cell = trials[trials["size"] == size].pivot_table(index="A", columns="T", values="val_acc", aggfunc="max")
        cell = cell.reindex(index=a_order, columns=t_order)
        counts = trials[trials["size"] == size].pivot_table(index="A", columns="T", values="trial_id",
                                                            aggfunc="count").reindex(index=a_order, columns=t_order)
        fig.add_trace(go.Heatmap(z=100 * cell.to_numpy(), x=t_order, y=a_order, zmin=zmin, zmax=zmax,
                                 coloraxis="coloraxis", customdata=counts.fillna(0).to_numpy(),
                                 hovertemplate="T %{x}<br>alpha %{y}<br>best val %{z:.2f}%<br>%{customdata} trials"
                                 "<extra></extra>"), row=1, col=i)
        fig.update_xaxes(title_text="temperature", type="category", row=1, col=i)
    fig.update_yaxes(title_text="alpha", type="category", row=1, col=1)
    fig.update_layout(title=f"{method}: best val accuracy (%) over temperature × alpha (search)",
                      coloraxis=dict(colorscale="Viridis", colorbar=dict(title="val %")), template="plotly_white")
    return fig


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


def importances(summary: pd.DataFrame, method: str, seed: int = 0) -> tuple[dict[str, float], str | None]:
    """Optuna importances of `method`'s searched parameters; ({}, note) when too few trials.

    Parameters are the hyperparameter columns (and teacher_size) that take at
    least 2 distinct values among the trials with a finite best val_acc.
    """
    trials = search_trials(summary, method)
    trials = trials[np.isfinite(trials["val_acc"].astype(float))] if not trials.empty else trials
    if len(trials) < MIN_TRIALS:
        return {}, f"{method}: parameter importance skipped: {len(trials)} search trials (need {MIN_TRIALS})."
    cols = [c for c in HPARAM_COLUMNS + ["teacher_size"]
            if c in trials and trials[c].notna().all() and trials[c].nunique() >= 2]
    if not cols:
        return {}, f"{method}: parameter importance skipped: no hyperparameter took 2 distinct values."
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
        return {}, f"{method}: parameter importance skipped: {exc}"
    return {k: float(v) for k, v in result.items() if not math.isnan(v)}, None


def importance_figure(summary: pd.DataFrame, methods: list[str], seed: int = 0) -> tuple[go.Figure | None, list[str]]:
    """Horizontal bars of Optuna importance per method; (None, notes) when no method qualifies."""
    rows, notes = [], []
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    for method in methods:
        imp, note = importances(summary, method, seed)
        if note:
            notes.append(note)
        rows += [{"method": method, "parameter": k, "importance": v} for k, v in imp.items()]
    if not rows:
        return None, notes
    data = pd.DataFrame(rows)
    fig = go.Figure()
    for method, grp in data.groupby("method", sort=True):
        fig.add_trace(go.Bar(x=grp["importance"], y=grp["parameter"], orientation="h", name=method))
    name = evaluator_for(seed)[1]
    fig.update_layout(title=f"Hyperparameter importance for best val accuracy (Optuna {name} on the search trials)",
                      xaxis_title="importance (fraction of variance)", barmode="group", template="plotly_white")
    return fig, notes
