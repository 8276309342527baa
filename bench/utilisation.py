"""How busy a study kept its slots, from its own Parquet rows (no Ray).

    python bench/utilisation.py <study folder> [--slots N] [--wall SECONDS]

For every trial: its training and evaluation time (sum of `epoch_time_s` +
`eval_time_s`: the work), its set-up time (`setup_time_s`: process start,
imports, data, models — overhead), and its span (first epoch's start, from
its first row's timestamp minus that epoch's time, to its last row). Prints:

- compute utilisation = work / (slots x study span), the span from the first
  trial's start to the last trial's end (or `--wall`, the study's wall time
  as printed by `kdstudy run`, to include start-up and the report);
- slot-time busy while trials remain: the share of slot-seconds with a trial
  running, over the instants at which some trial had not started yet;
- per stage and method: trials, work, set-up per trial, non-training time
  per epoch (evaluation);
- which experiments of different methods overlapped in time.
"""

from __future__ import annotations

import argparse
import os
import sys

import numpy as np
import pandas as pd

sys.path.insert(0, os.path.join(os.path.dirname(__file__), ".."))

from analysis.load import load  # noqa: E402


def trial_spans(df: pd.DataFrame) -> pd.DataFrame:
    df = df.sort_values("timestamp")
    rows = []
    for key, g in df.groupby("trial_id"):
        first = g[g["epoch"] == g["epoch"].min()].iloc[0]
        # one row per reported (role, exit) of an epoch: count each epoch's times once
        per_epoch = g.drop_duplicates(["generation", "epoch"])
        epoch_s = float(per_epoch["epoch_time_s"].fillna(0).sum())
        eval_s = float(per_epoch["eval_time_s"].fillna(0).sum())
        first_work = float((first["epoch_time_s"] or 0) + (first.get("eval_time_s") or 0))
        setup = float(first.get("setup_time_s") or 0)
        t_first = first["timestamp"].timestamp()
        rows.append({"trial_id": key, "stage": first["stage"], "method": first["method"],
                     "experiment": first.get("experiment"), "start": t_first - first_work - setup,
                     "work_start": t_first - first_work, "end": g["timestamp"].max().timestamp(),
                     "train_s": epoch_s, "eval_s": eval_s, "setup_s": setup, "epochs": len(per_epoch)})
    return pd.DataFrame(rows)


def busy_while_remaining(spans: pd.DataFrame, slots: int, step: float = 0.25) -> float:
    """Share of slot-time with a trial running, over the instants when a trial was still to start."""
    t0, last_start = spans["start"].min(), spans["start"].max()
    if last_start <= t0:
        return float("nan")
    ts = np.arange(t0, last_start, step)
    running = ((spans["start"].to_numpy()[None, :] <= ts[:, None]) & (spans["end"].to_numpy()[None, :] > ts[:, None]))
    return float(np.minimum(running.sum(1), slots).mean() / slots)


def overlaps(spans: pd.DataFrame) -> list[tuple[str, str, float]]:
    exp = spans.groupby(["experiment", "method"]).agg(start=("start", "min"), end=("end", "max")).reset_index()
    out = []
    for i, a in exp.iterrows():
        for j, b in exp.iterrows():
            if j <= i or a["method"] == b["method"]:
                continue
            both = min(a["end"], b["end"]) - max(a["start"], b["start"])
            if both > 0:
                out.append((a["experiment"], b["experiment"], both))
    return out


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("study")
    p.add_argument("--slots", type=int, default=os.cpu_count())
    p.add_argument("--wall", type=float, help="the study's wall time in seconds (default: trial span)")
    a = p.parse_args(argv)
    spans = trial_spans(load(a.study))
    span = spans["end"].max() - spans["start"].min()
    work = spans["train_s"].sum() + spans["eval_s"].sum()
    print(f"trials {len(spans)}; trial span {span:.0f} s" + (f"; wall {a.wall:.0f} s" if a.wall else ""))
    print(f"work (train + eval) {work:.0f} s, of which training {spans['train_s'].sum():.0f} s; "
          f"set-up {spans['setup_s'].sum():.0f} s ({spans['setup_s'].mean():.1f} s per trial)")
    print(f"compute utilisation over the trial span: {work / (a.slots * span):.2f} ({a.slots} slots)")
    if a.wall:
        print(f"compute utilisation over the wall time: {work / (a.slots * a.wall):.2f}")
    print(f"slot-time busy while trials remained to start: {busy_while_remaining(spans, a.slots):.2f}")
    per = spans.groupby(["stage", "method"]).agg(trials=("trial_id", "count"), work_s=("train_s", "sum"),
                                                 eval_s=("eval_s", "sum"), setup_per_trial=("setup_s", "mean"),
                                                 epochs=("epochs", "sum"))
    per["eval_s_per_epoch"] = per["eval_s"] / per["epochs"]
    print(per.round(2).to_string())
    ov = overlaps(spans)
    print(f"experiments of different methods overlapping in time: {len(ov)} pairs"
          + (f", e.g. {ov[0][0]} and {ov[0][1]} for {ov[0][2]:.0f} s" if ov else ""))
    return 0


if __name__ == "__main__":
    sys.exit(main())
