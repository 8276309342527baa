"""A plain-text progress table of a study: per stage and method, trials and their best result."""

from __future__ import annotations

import pandas as pd

from .load import load, trial_summary


def status_frame(df: pd.DataFrame) -> pd.DataFrame:
    """Per (stage, method): trials, finished, stopped early/running, diverged, best val_acc and its test_acc.

    A trial is *finished* when its last generation reached its ``epochs``
    hyperparameter without diverging; *stopped* covers trials cut by the
    scheduler or still running. Only the reported model counts (students; the
    teachers in stage ``teachers``; the last exit and last generation).
    """
    summary = trial_summary(df)
    role = summary["role"].where(summary["stage"] != "teachers", "teacher")
    rows = summary[(summary["role"] == role)]
    rows = rows[rows["generation"] == rows.groupby(["stage", "trial_id"])["generation"].transform("max")]
    rows = rows[rows["exit"].isna() | (rows["exit"] == rows.groupby(["stage", "trial_id"])["exit"].transform("max"))]
    out = []
    for (stage, method), grp in rows.groupby(["stage", "method"], sort=True):
        diverged = grp.groupby("trial_id")["diverged"].any()
        reached = (grp["epochs"].notna() & (grp["n_epochs"] >= grp["epochs"])).groupby(grp["trial_id"]).all()
        finished = reached & ~diverged
        best = grp.loc[grp["val_acc"].idxmax()] if grp["val_acc"].notna().any() else None
        out.append({
            "stage": stage, "method": method, "trials": int(grp["trial_id"].nunique()),
            "finished": int(finished.sum()), "stopped/running": int((~finished & ~diverged).sum()),
            "diverged": int(diverged.sum()),
            "best val_acc": None if best is None else round(100 * best["val_acc"], 2),
            "its test_acc": None if best is None else round(100 * best["test_acc"], 2),
            "best trial": None if best is None else best["trial_id"],
        })
    stage_order = {s: i for i, s in enumerate(["teachers", "baseline", "search", "confirm"])}
    frame = pd.DataFrame(out)
    if frame.empty:
        return frame
    frame["_o"] = frame["stage"].map(lambda s: stage_order.get(s, 99))
    return frame.sort_values(["_o", "stage", "method"]).drop(columns="_o").reset_index(drop=True)


def status_table(path) -> str:
    """Plain-text table of stages for the study at `path` (accuracies in %, test at the best-val epoch)."""
    frame = status_frame(load(path))
    if frame.empty:
        return "no trials"
    return frame.to_string(index=False, na_rep="-")
