"""Choosing which trials a chart or a verdict reports: confirmed runs first, configurations chosen on validation.

All selection here uses ``val_acc`` only; ``test_acc`` is carried along to be
reported, never compared. Only finished measurements are ever chosen: trials
whose status is ``ok`` or ``diverged`` (a diverged trial is a real outcome of
its configuration); trials stopped by the scheduler, failed or still running
never count as a configuration's result.

**The rule** (its one home; the runner's top-k, the report, the verdicts and
their simulation all use it): the configuration with the best mean
validation accuracy over its seeds is chosen; ties go to the lowest
configuration id; a configuration without a finished measurement is never
chosen while another has one. `ranked` applies it to a list (the runner's
top-k of a search, `config_means` per group of a results frame), `choose` to
arrays of seeds, vectorised over leading axes (`analysis.capacity_gap.decide`
and tests/test_calibration.py), where index order is configuration-id order.
"""

from __future__ import annotations

import json
import math

import numpy as np
import pandas as pd

from .schema import HPARAM_COLUMNS

#: hparams_json keys that identify a run rather than a configuration
_RUN_KEYS = {"seed", "trial_id", "storage_path", "study", "stage"}


#: trial outcomes that are finished measurements (see schema.STATUSES)
FINISHED = ("ok", "diverged")


def finished(rows: pd.DataFrame) -> pd.DataFrame:
    """Rows of trials that are finished measurements (status ok or diverged)."""
    return rows[rows["status"].isin(FINISHED)]


def reported_rows(summary: pd.DataFrame) -> pd.DataFrame:
    """The model a method reports: role student, each trial's last generation and its final exit.

    (TriKD/TAKD trials hold several generations and TriKD also its online
    teacher; a multi-exit model is reported at its final exit.)
    """
    rows = summary[summary["role"] == "student"]
    if rows.empty:
        return rows
    last_gen = rows.groupby(["stage", "trial_id"])["generation"].transform("max")
    rows = rows[rows["generation"].fillna(0) == last_gen.fillna(0)]
    last_exit = rows.groupby(["stage", "trial_id"])["exit"].transform("max")
    return rows[rows["exit"].isna() | (rows["exit"] == last_exit)]


def config_ids(df: pd.DataFrame) -> pd.Series:
    """The ``config_id`` column where recorded, else `config_key` (version-1 files)."""
    if df.empty:
        return pd.Series([], dtype=object, index=df.index)
    ids = df["config_id"] if "config_id" in df else pd.Series(None, index=df.index, dtype=object)
    if ids.notna().all():
        return ids.astype(str)
    return ids.astype(object).where(ids.notna(), config_key(df))


def total_epochs(rows: pd.DataFrame) -> pd.Series:
    """Epochs each model of a method is trained in total: epochs x generations (generations null -> 1)."""
    return rows["epochs"] * rows["generations"].fillna(1.0)


def ranked(values, ids) -> list[int]:
    """Positions of `values` (mean validation accuracies), best first, by the rule (module docstring):
    higher first, ties by `ids` ascending (as strings), values that are not finite numbers last."""
    def key(i):
        v = values[i]
        ok = v is not None and isinstance(v, (int, float, np.integer, np.floating)) and math.isfinite(v)
        return (not ok, -float(v) if ok else 0.0, str(ids[i]))

    return sorted(range(len(values)), key=key)


def choose(val: np.ndarray, axis: int) -> np.ndarray:
    """The rule on arrays: index along `axis` (negative, counted on `val`) of the best mean val over seeds
    (the last axis, NaN = no finished run).

    Ties go to the first index; an entry with no finite val (no finished run)
    is never chosen while another has one (the order `ranked` gives when the
    index order is the configuration-id order).
    """
    fin = np.isfinite(val)
    with np.errstate(invalid="ignore", divide="ignore"):
        means = np.where(fin, val, 0.0).sum(axis=-1) / fin.sum(axis=-1)
    return np.argmax(np.where(np.isfinite(means), means, -np.inf), axis=axis + 1)


def config_means(rows: pd.DataFrame, group_cols: list[str]) -> pd.DataFrame:
    """Per group and configuration of finished trials: mean val_acc over seeds, seeds, trials.

    Sorted best first within each group by `ranked` (ties broken by configuration id, never by test).
    """
    rows = finished(rows)
    cols = list(group_cols) + ["config_id", "val_acc", "n_seeds", "n_trials"]
    if rows.empty:
        return pd.DataFrame(columns=cols)
    rows = rows.assign(config_id=config_ids(rows))
    keys = list(group_cols) + ["config_id"]
    per_trial = rows.groupby(keys + ["trial_id"], dropna=False).agg(val_acc=("val_acc", "mean"), seed=("seed", "first"))
    per_trial = per_trial.reset_index()
    out = per_trial.groupby(keys, dropna=False).agg(val_acc=("val_acc", "mean"), n_seeds=("seed", "nunique"),
                                                     n_trials=("trial_id", "nunique")).reset_index()
    groups = [out] if not group_cols else [g for _, g in out.groupby(list(group_cols), dropna=False, sort=True)]
    out = pd.concat([g.iloc[ranked(list(g["val_acc"]), list(g["config_id"]))] for g in groups])
    return out[cols].reset_index(drop=True)


def choose_config(rows: pd.DataFrame, group_cols: list[str]) -> pd.DataFrame:
    """Rows (finished trials) of the configuration with the best mean val_acc in each group, with their
    ``config_id``."""
    chosen = best_config(rows, group_cols)
    if chosen.empty:
        return rows.iloc[0:0].assign(config_id=pd.Series(dtype=object))
    return chosen.assign(config_id=config_ids(chosen))


def choose_baseline(summary: pd.DataFrame, epochs: float | None, own_epochs: float | None = None,
                    stage: str = "baseline") -> tuple[pd.DataFrame, dict]:
    """The no-KD student (method scratch, stage baseline) a method is compared with, chosen on validation.

    Among the baseline configurations whose ``epochs`` equal `epochs` (the
    method's total epochs per model) if any, else those with `own_epochs`
    (the method's own epochs), else all of them, the one with the best mean
    val_acc over seeds. Returns its rows (finished trials, one per seed) and a
    dict: config_id, epochs, lr, weight_decay, n_configs (candidates),
    n_configs_all, rule (which epochs rule applied), search_trials (scratch
    trials of stage search).
    """
    base = reported_rows(summary)
    base = base[(base["stage"] == stage) & (base["method"] == "scratch")]
    base = finished(base)
    search = summary[(summary["stage"] == "search") & (summary["method"] == "scratch")]
    info = {"config_id": None, "epochs": None, "lr": None, "weight_decay": None, "n_configs": 0,
            "n_configs_all": 0, "rule": "no baseline", "search_trials": int(search["trial_id"].nunique())}
    if base.empty:
        return base.assign(config_id=pd.Series(dtype=object)), info
    base = base.assign(config_id=config_ids(base))
    info["n_configs_all"] = int(base["config_id"].nunique())
    candidates, rule = base, "all baseline configurations (none matches the method's epochs)"
    for target, why in ((epochs, "same total epochs per model"), (own_epochs, "same epochs as the method")):
        if target is None or not np.isfinite(target):
            continue
        match = base[np.isclose(base["epochs"].astype(float), float(target))]
        if not match.empty:
            candidates, rule = match, why
            break
    runs = choose_config(candidates, [])
    first = runs.iloc[0]
    info.update(config_id=first["config_id"], epochs=_num(first.get("epochs")), lr=_num(first.get("lr")),
                weight_decay=_num(first.get("weight_decay")), n_configs=int(candidates["config_id"].nunique()),
                rule=rule)
    return runs, info


def _num(v):
    return None if v is None or (isinstance(v, float) and not np.isfinite(v)) or pd.isna(v) else float(v)


def hparams_of(row, columns=None) -> dict:
    """The hyperparameters of a chosen configuration (non-null ones only), in order: those its
    `hparams_json` records, whatever their names (a plug-in's too), the v2 named ones first."""
    from .load import hparam_names

    recorded = _recorded_hparams(row)
    if columns is None:
        columns = hparam_names(recorded) if recorded else [c for c in HPARAM_COLUMNS if c != "batch_size"]
        columns = [c for c in columns if c != "batch_size"]
    out = {}
    for c in columns:
        v = recorded.get(c, row.get(c))
        if v is not None and not (isinstance(v, float) and np.isnan(v)):
            out[c] = v
    return out


def hparams_text(row, columns=None) -> str:
    """`hparams_of` as 'name=value, ...'."""
    return ", ".join(f"{c}={v:g}" if isinstance(v, (int, float)) and not isinstance(v, bool) else f"{c}={v}"
                     for c, v in hparams_of(row, columns).items())


def _recorded_hparams(row) -> dict:
    text = row.get("hparams_json")
    try:
        value = json.loads(text) if isinstance(text, str) else {}
    except ValueError:
        value = {}
    return value if isinstance(value, dict) else {}


def config_key(df: pd.DataFrame) -> pd.Series:
    """A string per row naming its configuration (all hyperparameters except the seed)."""

    def one(row) -> str:
        text = row.get("hparams_json")
        if isinstance(text, str) and text:
            try:
                params = {k: v for k, v in json.loads(text).items() if k not in _RUN_KEYS}
                return json.dumps(params, sort_keys=True, default=str)
            except (ValueError, AttributeError):
                pass
        values = {c: row.get(c) for c in HPARAM_COLUMNS + ["teacher_size", "teacher_arch"]}
        return json.dumps({k: v for k, v in values.items() if pd.notna(v)}, sort_keys=True, default=str)

    if df.empty:
        return pd.Series([], dtype=object, index=df.index)
    return df.apply(one, axis=1)


def reported_stage(summary: pd.DataFrame, methods) -> tuple[pd.DataFrame, str]:
    """Rows of `methods` from stage ``confirm`` if it has any, else from all other stages.

    Returns (rows, stage label for the chart).
    """
    rows = summary[summary["method"].isin(list(methods))]
    confirmed = rows[rows["stage"] == "confirm"]
    if not confirmed.empty:
        return confirmed, "confirm"
    stages = sorted(rows["stage"].dropna().unique())
    return rows, "+".join(stages) if stages else "none"


def best_config(rows: pd.DataFrame, group_cols: list[str], score: pd.Series | None = None) -> pd.DataFrame:
    """Keep, within each group of `group_cols`, the configuration with best mean val_acc (`config_means`).

    `score` (aligned with `rows`) marks which rows count toward the mean (for
    example the final exit only); by default every row counts. Means are over
    seeds (trials) of the same configuration. Only finished trials (status ok
    or diverged) are candidates or kept.
    """
    if rows.empty:
        return rows
    rows = finished(rows)
    if rows.empty:
        return rows
    rows = rows.assign(_config=config_ids(rows))
    scored = rows if score is None else rows[score.reindex(rows.index).fillna(False).astype(bool)]
    means = config_means(scored.drop(columns="_config"), list(group_cols))
    if means.empty:
        return rows.iloc[0:0].drop(columns="_config")
    chosen = means.drop_duplicates(subset=list(group_cols), keep="first") if group_cols else means.head(1)
    chosen = chosen.rename(columns={"config_id": "_config"})[list(group_cols) + ["_config"]]
    keep = rows.merge(chosen, on=list(group_cols) + ["_config"], how="inner")
    return keep.drop(columns="_config")
