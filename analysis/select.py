"""Choosing which trials a chart reports: confirmed runs first, configurations chosen on validation.

All selection here uses ``val_acc`` only; ``test_acc`` is carried along to be
reported, never compared.
"""

from __future__ import annotations

import json

import pandas as pd

from .schema import HPARAM_COLUMNS

#: hparams_json keys that identify a run rather than a configuration
_RUN_KEYS = {"seed", "trial_id", "storage_path", "study", "stage"}


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
    """Keep, within each group of `group_cols`, the configuration with best mean val_acc.

    `score` (aligned with `rows`) marks which rows count toward the mean (for
    example the final exit only); by default every row counts. Means are over
    seeds (trials) of the same configuration.
    """
    if rows.empty:
        return rows
    if not group_cols:
        kept = best_config(rows.assign(_all=0), ["_all"], score)
        return kept.drop(columns="_all")
    rows = rows.assign(_config=config_key(rows))
    scored = rows if score is None else rows[score.reindex(rows.index).fillna(False).astype(bool)]
    per_trial = scored.groupby(group_cols + ["_config", "trial_id"], dropna=False)["val_acc"].mean().reset_index()
    per_config = per_trial.groupby(group_cols + ["_config"], dropna=False)["val_acc"].mean().reset_index()
    per_config = per_config.sort_values("val_acc", ascending=False, na_position="last", kind="stable")
    chosen = per_config.drop_duplicates(subset=group_cols, keep="first")
    keep = rows.merge(chosen[group_cols + ["_config"]], on=group_cols + ["_config"], how="inner")
    return keep.drop(columns="_config")
