"""Multi-exit networks: test accuracy per exit against cumulative FLOPs, distillation vs exit-wise CE.

The methods are those whose rows have an exit index (`exit_methods`, read from the rows, so a
plug-in multi-exit method is charted and compared as the built-ins are): multi-exit
distillation with the authors' adaptive temperature (`multiexit`), with a constant temperature
(`multiexit_const`), and the exit-wise cross-entropy baseline (`multiexit_ce`) every other one
is compared with. A method's temperature rule is read from its rows too (`temperature_rule`): a
``temperature`` hyperparameter is a constant T, a recorded ``temperature_now`` without one an
adaptive T.

Each (trial, exit) is taken at its best-val epoch for that exit. Runs come from
``confirm`` when it has these methods, else from every stage holding them; per
method the configuration with the best mean final-exit val_acc is kept, and
its seeds give mean and 95% CI. `section_text` says, with the study's own
numbers, which temperature the adaptive rule reached and whether (and from
which temperature on) distillation cost the final exit.
"""

from __future__ import annotations

import json

import pandas as pd
import plotly.graph_objects as go

from .labels import method_label
from .select import best_config, finished, reported_stage
from .figstyle import finish, y_range_with_bars
from .stats import summarize

#: the exit-wise cross-entropy baseline every multi-exit distillation method is compared with
BASELINE = "multiexit_ce"


def exit_methods(summary: pd.DataFrame) -> list[str]:
    """The methods whose student rows have an exit index (multi-exit students), sorted by name."""
    if summary.empty or not {"method", "role", "exit"} <= set(summary.columns):
        return []
    rows = summary[(summary["role"] == "student") & summary["exit"].notna()]
    return sorted(str(m) for m in rows["method"].dropna().unique())


def distillation_methods(summary: pd.DataFrame) -> list[str]:
    """The multi-exit methods but the exit-wise CE baseline."""
    return [m for m in exit_methods(summary) if m != BASELINE]


def temperature_rule(summary: pd.DataFrame, method: str) -> str | None:
    """"constant" (the method's rows have a ``temperature`` hyperparameter), "adaptive" (they
    record the temperature in force, ``temperature_now``, and have no such hyperparameter) or
    None (no temperature: the CE baseline)."""
    rows = summary[summary["method"] == method]
    if rows.empty:
        return None
    if _hparam(rows.iloc[0], "temperature") is not None:
        return "constant"
    if "temperature_now" in rows and rows["temperature_now"].notna().any():
        return "adaptive"
    return None


def exit_data(summary: pd.DataFrame) -> tuple[pd.DataFrame, str]:
    """Per (method, exit): exit_flops, mean, low, high, n of test_acc; plus the stage used."""
    rows, stage = reported_stage(summary, exit_methods(summary))
    rows = rows[(rows["role"] == "student") & rows["exit"].notna()]
    if rows.empty:
        return pd.DataFrame(columns=["method", "exit", "mean", "low", "high", "n", "exit_flops"]), stage
    last_exit = rows.groupby("trial_id")["exit"].transform("max")
    rows = best_config(rows, ["method"], rows["exit"] == last_exit)
    out = summarize(rows, ["method", "exit"], "test_acc")
    flops = rows.groupby(["method", "exit"])["exit_flops"].median().rename("exit_flops").reset_index()
    return out.merge(flops, on=["method", "exit"], how="left"), stage


def _flops(v: float) -> str:
    for unit, div in (("G", 1e9), ("M", 1e6), ("k", 1e3)):
        if v >= div:
            return f"{v / div:.3g}{unit}"
    return f"{v:.3g}"


def figure(summary: pd.DataFrame, methods: dict | None = None) -> go.Figure | None:
    """Accuracy vs cumulative FLOPs per exit; None without multi-exit rows. `methods`: the facts the
    study recorded of its methods (``methods.json``), whose labels name the lines."""
    data, stage = exit_data(summary)
    if data.empty:
        return None
    use_flops = data["exit_flops"].notna().all()
    xcol = "exit_flops" if use_flops else "exit"
    fig = go.Figure()
    for method, grp in data.groupby("method", sort=True):
        grp = grp.sort_values("exit")
        fig.add_trace(go.Scatter(
            x=grp[xcol], y=100 * grp["mean"], mode="lines+markers", name=method_label(methods, method),
            error_y=dict(type="data", symmetric=False, array=100 * (grp["high"] - grp["mean"]).fillna(0),
                         arrayminus=100 * (grp["mean"] - grp["low"]).fillna(0)),
            customdata=grp[["exit", "n"]],
            hovertemplate="exit %{customdata[0]}<br>%{x:.3s} FLOPs<br>%{y:.2f}%<br>n=%{customdata[1]}",
        ))
    fig.update_yaxes(range=y_range_with_bars(fig))  # whole error bars, even past 0 or 100
    fig.update_layout(xaxis_title="cumulative FLOPs per sample (log; one point per exit)" if use_flops else "exit",
                      yaxis_title="test accuracy (%) at best-val epoch")
    if use_flops:
        ticks = data.drop_duplicates("exit").sort_values("exit")
        fig.update_xaxes(type="log", tickmode="array", tickvals=list(ticks["exit_flops"]),
                         ticktext=[f"exit {int(e)}<br>{_flops(f)} FLOPs"
                                   for e, f in zip(ticks["exit"], ticks["exit_flops"])])
    return finish(fig, "Multi-exit: test accuracy vs cumulative FLOPs per exit (the anytime curve)",
                  f"stage: {stage}; mean ± 95% CI over seeds")


def exit_runs(summary: pd.DataFrame) -> dict[str, pd.DataFrame]:
    """Per multi-exit method (`exit_methods`): the runs of its configuration chosen on validation.

    Stage ``confirm`` only, finished student trials; the configuration with
    the best mean final-exit val_acc over seeds; one row per (trial, exit) at
    that exit's best-val epoch.
    """
    rows = summary[(summary["stage"] == "confirm") & summary["method"].isin(exit_methods(summary))
                   & (summary["role"] == "student") & summary["exit"].notna()]
    if rows.empty:
        return {}
    last_exit = rows.groupby("trial_id")["exit"].transform("max")
    chosen = best_config(rows, ["method"], rows["exit"] == last_exit)
    return {m: grp for m, grp in chosen.groupby("method", sort=True)}


def comparison_label(method: str, exit_: int, rule: str | None = None) -> str:
    """The label of the comparison of `method` with exit-wise CE at one exit (starts with the method,
    ends with the exit index); `rule`: its temperature rule (`temperature_rule`)."""
    return f"{method} (distillation{f', {rule} T' if rule else ''}) at exit {exit_}"


def exit_comparisons(summary: pd.DataFrame, delta: float = 0.5, level: float = 0.95) -> list:
    """Each multi-exit distillation method minus exit-wise CE at every exit, paired by seed.

    One Holm family over all (method, exit) pairs. Returns a list of
    PairedVerdict (labels from `comparison_label`; empty without CE and a
    distillation method).
    """
    from .stats import compare

    runs = exit_runs(summary)
    if BASELINE not in runs:
        return []
    ce = runs[BASELINE]
    pairs = []
    for method in distillation_methods(summary):
        if method not in runs:
            continue
        kd, rule = runs[method], temperature_rule(summary, method)
        exits = sorted(set(kd["exit"].dropna().astype(int)) & set(ce["exit"].dropna().astype(int)))
        for x in exits:
            a = kd[kd["exit"] == x].drop_duplicates("seed").set_index("seed")["test_acc"] * 100
            b = ce[ce["exit"] == x].drop_duplicates("seed").set_index("seed")["test_acc"] * 100
            pairs.append((comparison_label(method, x, rule), f"exit-wise CE (multiexit_ce) at exit {x}", a, b))
    return compare(pairs, family="multi-exit distillation vs exit-wise CE, per exit", delta=delta, level=level)


# ------------------------------------------------------------------ temperatures


def _hparam(row, name: str):
    """A hyperparameter of a summary row: its column where the schema has one, else hparams_json."""
    v = row.get(name) if hasattr(row, "get") else None
    if v is not None and v == v:
        return float(v)
    try:
        hp = json.loads(row.get("hparams_json") or "{}")
    except (TypeError, ValueError):
        return None
    v = hp.get(name)
    return float(v) if isinstance(v, (int, float)) and not isinstance(v, bool) else None


def final_exit_runs(summary: pd.DataFrame) -> pd.DataFrame:
    """Every finished run (search and confirm) of the multi-exit methods at its final exit's best-val epoch,
    with the temperature it trained at: `temperature` (constant T), or for the adaptive rule the T in
    force at that epoch (`temperature_now`). Columns: stage, method, trial_id, seed, T, val_acc, test_acc."""
    cols = ["stage", "method", "trial_id", "seed", "T", "val_acc", "test_acc"]
    if summary.empty or "method" not in summary:
        return pd.DataFrame(columns=cols)
    rows = finished(summary[summary["method"].isin(exit_methods(summary)) & (summary["role"] == "student")
                            & summary["exit"].notna()])
    if rows.empty:
        return pd.DataFrame(columns=cols)
    rows = rows[rows["exit"] == rows.groupby("trial_id")["exit"].transform("max")]
    out = []
    for _, r in rows.iterrows():
        t = _hparam(r, "temperature")  # a constant T; else the T in force (an adaptive rule); else none
        if t is None:
            t = r.get("temperature_now")
            t = float(t) if t is not None and t == t else None
        out.append({"stage": r["stage"], "method": r["method"], "trial_id": r["trial_id"], "seed": r.get("seed"),
                    "T": t, "val_acc": r["val_acc"], "test_acc": r["test_acc"]})
    return pd.DataFrame(out, columns=cols)


def adaptive_temperature(summary: pd.DataFrame, method: str) -> dict | None:
    """The temperature `method`'s adaptive rule reached: median, min, max and n over its reported runs
    (confirm if it has any, else every run), at the final exit's best-val epoch; None without them."""
    runs = final_exit_runs(summary)
    runs = runs[(runs["method"] == method) & runs["T"].notna()]
    if runs.empty:
        return None
    if (runs["stage"] == "confirm").any():
        runs = runs[runs["stage"] == "confirm"]
    t = runs["T"].astype(float)
    return {"median": float(t.median()), "min": float(t.min()), "max": float(t.max()), "n": int(len(t)),
            "stage": "confirm" if (runs["stage"] == "confirm").all() else "+".join(sorted(runs["stage"].unique()))}


def temperature_effect(summary: pd.DataFrame) -> pd.DataFrame:
    """Final-exit validation accuracy of every distillation run against exit-wise CE, by temperature.

    One row per distillation run: method, stage, T, val_acc (%), and `vs_ce`:
    its final-exit val_acc minus the mean final-exit val_acc of all CE runs
    (points). Validation only: a descriptive view of all the study's runs,
    single seeds in the search; the paired verdicts (`exit_comparisons`) are
    the evidence. Sorted by T.
    """
    runs = final_exit_runs(summary)
    ce = runs[runs["method"] == BASELINE]["val_acc"].dropna()
    dist = runs[runs["method"].isin(distillation_methods(summary)) & runs["T"].notna() & runs["val_acc"].notna()]
    if ce.empty or dist.empty:
        return pd.DataFrame(columns=["method", "stage", "T", "val_acc", "vs_ce"])
    ref = 100 * float(ce.mean())
    out = dist.assign(val_acc=100 * dist["val_acc"], vs_ce=100 * dist["val_acc"] - ref)
    return out[["method", "stage", "T", "val_acc", "vs_ce"]].sort_values(["T", "method"]).reset_index(drop=True)


def costly_from(effect: pd.DataFrame, delta: float) -> float | None:
    """The lowest temperature from which every run's final exit is more than `delta` points below CE
    (validation), or None when no such temperature exists among the runs."""
    if effect.empty:
        return None
    worse = (effect["vs_ce"] < -delta).to_numpy()
    t = effect["T"].to_numpy()
    for i in range(len(t)):
        if worse[i:].all():
            return float(t[i])
    return None


def section_text(summary: pd.DataFrame, delta: float = 0.5, level: float = 0.95) -> list[str]:
    """The lines above the multi-exit figure: the temperature each adaptive rule reached, each
    distillation method against exit-wise CE at the final exit (paired, from `exit_comparisons`),
    and from which temperature on distillation cost the final exit in this study's runs."""
    lines = []
    methods = distillation_methods(summary)
    rules = {m: temperature_rule(summary, m) for m in methods}
    reached = {m: adaptive_temperature(summary, m) for m in methods if rules[m] == "adaptive"}
    for method, r in reached.items():
        if r is None:
            continue
        spread = "" if r["n"] < 2 else f" (from {r['min']:.2f} to {r['max']:.2f})"
        lines.append(f"The adaptive rule ({method}) raised the temperature from 1 to {r['median']:.2f}{spread} "
                     f"by the final exit's best-validation epoch (median of {r['n']} {r['stage']} run(s)).")
    verdicts = exit_comparisons(summary, delta, level)
    runs = exit_runs(summary)
    for method in methods:
        mine = [v for v in verdicts if v.a.startswith(method + " ")]
        if not mine:
            continue
        final = max(mine, key=lambda v: int(v.a.rsplit(" ", 1)[1]))
        if rules[method] == "constant":
            t = _hparam(runs[method].iloc[0], "temperature") if method in runs else None
            how = f"at constant T = {t:.3g} (chosen on validation)" if t is not None else "at constant T"
        elif rules[method] == "adaptive":
            r = reached.get(method)
            how = f"with the adaptive T (reached {r['median']:.2f})" if r else "with the adaptive T"
        else:
            how = f"({method})"
        est, (lo, hi) = final.estimate, final.ci
        outcome = final.outcome.upper() + ((" worse" if est < 0 else " better") if final.outcome == "shown" else "")
        lines.append(f"Final exit, distillation {how} minus exit-wise CE: {est:+.2f} points "
                     f"[{lo:+.2f}, {hi:+.2f}], {outcome} (test, paired over {final.k} seeds, "
                     f"Holm over the methods and exits).")
    effect = temperature_effect(summary)
    if not effect.empty:
        parts = []
        for method in sorted(methods, key=lambda m: rules[m] == "adaptive"):  # the constant Ts first, by T
            mine = effect[effect["method"] == method]
            if mine.empty:
                continue
            prefix = "" if sum(rules[m] == rules[method] for m in methods) < 2 else f"{method} "
            if rules[method] == "adaptive":
                t0, t1 = mine["T"].min(), mine["T"].max()
                span = f"{t0:.2f}" if t0 == t1 else f"{t0:.2f}-{t1:.2f}"
                n = f", {len(mine)} runs" if len(mine) > 1 else ""
                parts.append(f"{prefix}adaptive (T {span}{n}): {mine['vs_ce'].mean():+.1f}")
            else:
                for t, grp in mine.groupby("T", sort=True):
                    n = f" ({len(grp)} runs)" if len(grp) > 1 else ""
                    parts.append(f"{prefix}T {t:.2f}: {grp['vs_ce'].mean():+.1f}{n}")
        shown = "; ".join(parts)
        cut = costly_from(effect, delta)
        if cut is None:
            when = (f"no temperature among these runs cost the final exit more than {delta:g} points throughout"
                    if (effect["vs_ce"] >= -delta).all() else
                    f"the runs more than {delta:g} points below CE do not start at one temperature")
        else:
            when = f"every run at T ≥ {cut:.2f} lost more than {delta:g} points of the final exit"
        lines.append(f"Final exit minus exit-wise CE by temperature (validation, points, mean over the study's "
                     f"runs at that T; search runs are single seeds): {shown}. In this study {when}.")
    return lines
