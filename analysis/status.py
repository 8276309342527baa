"""A plain-text progress table of a study: per stage and method, how trials ended and the best result.

Every accuracy is in percent. The result of a trial is its reported model
(`load.final_models`: the student, at its last generation and final exit;
the teacher in stage ``teachers``) at its epoch of best validation accuracy.
"""

from __future__ import annotations

import pandas as pd

from .load import final_models, load, trial_outcomes, trial_summary
from .select import config_key

STAGE_ORDER = ["teachers", "baseline", "search", "confirm"]
#: outcome columns of the table, in order (see analysis.schema: status)
OUTCOMES = [("ok", "ok"), ("stopped", "stopped early"), ("diverged", "diverged"), ("failed", "failed"),
            ("running", "running")]
VAL_COL = "val %"
TEST_COL = "test %"


def _stage_key(stage: str) -> int:
    return STAGE_ORDER.index(stage) if stage in STAGE_ORDER else len(STAGE_ORDER)


def _config(models: pd.DataFrame) -> pd.Series:
    """The configuration of each trial: ``config_id`` when written (schema v2), else its hyperparameters."""
    key = config_key(models)
    if "config_id" in models:
        key = models["config_id"].where(models["config_id"].notna(), key)
    return key


def _result(models: pd.DataFrame) -> dict:
    """The configuration with the best mean val accuracy: its mean val/test (%) over seeds and how many."""
    models = models[models["val_acc"].notna()]
    if models.empty:
        return {VAL_COL: None, TEST_COL: None, "runs": None, "result of": None}
    config = models["trial_id"] if (models["stage"] == "search").all() else _config(models)
    per = models.assign(_c=config.values).groupby("_c", sort=False)
    means = per["val_acc"].mean().sort_values(ascending=False, kind="stable")
    best = per.get_group(means.index[0])
    test = best["test_acc"].dropna()
    n = len(best)
    return {
        VAL_COL: round(100 * best["val_acc"].mean(), 2),
        TEST_COL: round(100 * test.mean(), 2) if not test.empty else None,
        "runs": int(n),
        "result of": f"trial {best['trial_id'].iloc[0]}" if n == 1 else f"mean of {n} seeds",
    }


def status_frame(df: pd.DataFrame) -> pd.DataFrame:
    """Per (stage, method, teacher size): trials by outcome and the result (accuracies in %).

    Outcomes: ``ok`` (trained every epoch), ``stopped early`` (by the
    search's scheduler), ``diverged``, ``failed`` (raised an error) and
    ``running`` (unfinished); ``teacher`` (only when some teacher was imported)
    says whether the teacher of the row was trained here or imported from a
    weights file. The result is the configuration with the best
    mean val accuracy (the best trial in a search; the seeds of one
    configuration in baseline, teachers and confirm), its mean val accuracy
    and the mean test accuracy at the same epochs. ``last error`` is the last
    line of the error of the most recent failed trial.
    """
    if df.empty:
        return pd.DataFrame()
    outcomes = trial_outcomes(df)
    firsts = df.drop_duplicates(["stage", "trial_id"]).set_index(["stage", "trial_id"])
    sizes = firsts["teacher_size"]
    outcomes["teacher size"] = [sizes.get((st, t)) for st, t in zip(outcomes["stage"], outcomes["trial_id"])]
    origin = firsts["teacher_origin"] if "teacher_origin" in firsts else pd.Series(dtype=object)
    imported = {k for k, v in origin.items() if v == "imported"}  # (stage, trial) of an imported teacher
    models = final_models(trial_summary(df))
    out = []
    keys = ["stage", "method", "teacher size"]
    for (stage, method, size), grp in outcomes.groupby(keys, sort=False, dropna=False):
        row = {"stage": stage, "method": method, "teacher size": None if pd.isna(size) else f"{size:g}"}
        if imported:  # a column only when some teacher was imported from a weights file
            row["teacher"] = None if pd.isna(size) else "imported" if any(
                (st, t) in imported for st, t in zip(grp["stage"], grp["trial_id"])) else "trained"
        row["trials"] = int(len(grp))
        for key, label in OUTCOMES:
            row[label] = int((grp["outcome"] == key).sum())
        mine = models[(models["stage"] == stage) & models["trial_id"].isin(grp["trial_id"])]
        row.update(_result(mine))
        failed = grp[(grp["outcome"] == "failed")].sort_values("timestamp")
        errors = failed["error"].dropna()
        row["last error"] = errors.iloc[-1] if not errors.empty else (
            "(no error recorded)" if not failed.empty else None)
        out.append(row)
    frame = pd.DataFrame(out)
    frame["_o"] = frame["stage"].map(_stage_key)
    frame["_s"] = pd.to_numeric(frame["teacher size"], errors="coerce")
    return frame.sort_values(["_o", "stage", "method", "_s"]).drop(columns=["_o", "_s"]).reset_index(drop=True)


def failures(df: pd.DataFrame) -> pd.DataFrame:
    """One row per failed trial: stage, method, trial_id and the last line of its error."""
    outcomes = trial_outcomes(df)
    failed = outcomes[outcomes["outcome"] == "failed"]
    return failed[["stage", "method", "trial_id", "error"]].fillna({"error": "(no error recorded)"}).reset_index(
        drop=True)


#: what `wall_time` measures, said wherever it is shown (the report's header, `kdstudy status`)
WALL_TIME_MEANS = ("from the first results row to the last (every run and resume of the study, the pauses "
                   "between them included; the driver's last line gives one run's own time)")


def wall_time(df: pd.DataFrame) -> float:
    """Seconds from the first results row's timestamp to the last (NaN without timestamps)."""
    ts = df["timestamp"].dropna() if "timestamp" in df else pd.Series(dtype=object)
    return float("nan") if ts.empty else float((ts.max() - ts.min()).total_seconds())


def duration_text(seconds: float) -> str:
    """'1h 05m', '4m 09s', '12s' ('-' for NaN)."""
    if not seconds == seconds:
        return "-"
    seconds = int(round(seconds))
    h, rem = divmod(seconds, 3600)
    m, s = divmod(rem, 60)
    return f"{h}h {m:02d}m" if h else (f"{m}m {s:02d}s" if m else f"{s}s")


def _clip(text, width: int = 60):
    if not isinstance(text, str):
        return text
    return text if len(text) <= width else text[: width - 1] + "…"


def format_status(df: pd.DataFrame) -> str:
    """The plain-text table (and the failed trials with their errors) of loaded results."""
    frame = status_frame(df)
    if frame.empty:
        return "no trials"
    lines = []
    studies = sorted(df["study"].dropna().unique())
    if studies:
        lines.append(f"study {', '.join(studies)}: {len(trial_outcomes(df))} trials; "
                     "accuracies in %; each trial at its epoch of best val accuracy (test % at that epoch); "
                     "per row the best search trial, or the configuration with the best mean val % "
                     "averaged over its seeds")
    shown = frame.assign(**{"last error": frame["last error"].map(_clip)})
    if shown["last error"].isna().all():
        shown = shown.drop(columns="last error")
    lines.append(shown.to_string(index=False, na_rep="-"))
    wall = wall_time(df)
    if wall == wall:
        lines.append(f"wall time {duration_text(wall)}, {WALL_TIME_MEANS}")
    failed = failures(df)
    if not failed.empty:
        lines.append(f"\n{len(failed)} failed trial(s):")
        for _, r in failed.head(20).iterrows():
            lines.append(f"  {r['stage']}/{r['method']} {r['trial_id']}: {r['error']}")
        if len(failed) > 20:
            lines.append(f"  ... and {len(failed) - 20} more")
    skipped = df.attrs.get("skipped_files") or []
    if skipped:
        lines.append(f"\nskipped {len(skipped)} unreadable results file(s):")
        lines += [f"  {reason}" for _, reason in skipped]
    return "\n".join(lines)


def status_table(path, skip_bad: bool = False) -> str:
    """Plain-text table of stages for the study at `path` (see `format_status`)."""
    return format_status(load(path, skip_bad=skip_bad))
