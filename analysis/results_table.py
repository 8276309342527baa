"""Result tables as pandas DataFrames (the report and the CLI render them).

All accuracies are in percent; differences in accuracy points. Every choice
behind a row (epoch, configuration, peak teacher size, baseline
configuration) was made on validation accuracy; test accuracy is only
reported. Comparisons are paired by confirm seed and decided as *shown*,
*equivalent* (within delta) or *inconclusive* (*cannot tell* below 3 pairs),
Holm-adjusted within their family (see README, "How to read a verdict").

* `method_table`: per method x teacher size (the capacity-gap ladder)
* `multiexit_table`: multi-exit distillation vs exit-wise CE per exit
* `generations_table`: each curriculum method (TriKD's) per generation vs the no-KD student
* `verdict_frame`: any list of PairedVerdict as rows
* `verdict_settings`: delta and level from ``<study>/spec.json``
"""

from __future__ import annotations

import json
import math
import posixpath

import numpy as np
import pandas as pd

from . import capacity_gap, generations, multiexit
from .select import config_ids, finished, hparams_of, hparams_text
from .stats import mean_ci

DEFAULT_DELTA = 0.5
DEFAULT_LEVEL = 0.95

METHOD_COLUMNS = [
    "method", "teacher_size", "teacher_origin", "teacher_params", "peak", "hyperparameters", "config_id", "source", "k",
    "test_acc", "test_low", "test_high", "val_acc", "teacher_acc",
    "diff_vs_no_kd", "diff_low", "diff_high", "diff_level", "outcome_vs_no_kd", "sd_vs_no_kd", "seeds_needed_vs_no_kd",
    "largest_minus_this", "largest_minus_low", "largest_minus_high", "outcome_largest_vs_this", "largest_minus_level",
    "no_kd_test_acc", "epochs", "generations", "total_epochs", "search_trials", "configs_confirmed",
    "no_kd_config", "no_kd_epochs", "no_kd_configs", "no_kd_search_trials", "no_kd_rule",
    "search_replicates", "test_acc_by_replicate",
]


def verdict_settings(path) -> tuple[float, float]:
    """(delta, level) from the study's ``spec.json`` field ``verdict: {delta, level}`` (defaults 0.5, 0.95)."""
    from .load import locate

    try:
        loc = locate(path)
        with loc.fs.open_input_stream(posixpath.join(loc.study_dir, "spec.json")) as f:
            spec = json.loads(f.read().decode())
    except (OSError, ValueError, FileNotFoundError):
        return DEFAULT_DELTA, DEFAULT_LEVEL
    v = spec.get("verdict") or {} if isinstance(spec, dict) else {}
    delta = float(v.get("delta", DEFAULT_DELTA)) if isinstance(v, dict) else DEFAULT_DELTA
    level = float(v.get("level", DEFAULT_LEVEL)) if isinstance(v, dict) else DEFAULT_LEVEL
    return delta, level


def all_comparisons(summary: pd.DataFrame, delta: float = DEFAULT_DELTA,
                    level: float = DEFAULT_LEVEL) -> list:
    """Every paired comparison of a study as PairedVerdicts: per method the capacity-gap family
    (largest teacher vs each smaller size), the methods x sizes vs the no-KD student, multi-exit
    distillation vs exit-wise CE per exit and TriKD per generation vs the no-KD student."""
    out = []
    verdicts = capacity_gap.verdicts(summary, delta, level)
    for v in verdicts:
        out += list(v.sizes)
    for v in verdicts:
        out += list(v.vs_baseline_sizes)
    out += multiexit.exit_comparisons(summary, delta, level)
    out += [v for *_, v, _ in generations.generation_comparisons(summary, delta, level)]
    return out


def verdict_frame(verdicts) -> pd.DataFrame:
    """One row per PairedVerdict (its `as_dict`)."""
    return pd.DataFrame([v.as_dict() for v in verdicts])


def _pct_ci(values) -> tuple[float, float, float]:
    ci = mean_ci(100.0 * np.asarray(values, dtype=float))
    return ci.mean, ci.low, ci.high


def method_table(summary: pd.DataFrame, delta: float = DEFAULT_DELTA, level: float = DEFAULT_LEVEL,
                 verdicts: list | None = None) -> pd.DataFrame:
    """Per distillation method x teacher size: the chosen configuration and what it achieved.

    Columns (percent / points): test_acc mean and t-interval (test_low,
    test_high) over the k confirm seeds; val_acc (the mean the choice was made
    on); teacher_acc (the teacher's own test accuracy, stage teachers);
    diff_vs_no_kd with its Holm-adjusted interval (diff_low, diff_high at
    confidence diff_level) and outcome, sd of the paired differences and the
    seeds needed to resolve delta; largest_minus_this: the largest teacher's
    student minus this size's, with its interval and outcome (the capacity-gap
    family; empty on the largest size; largest_minus_level its Holm-adjusted confidence);
    With search replicates (`search.replicates`: R > 1, `search_replicates`), the configuration, its
    test and validation means and the budgets are search replicate 0's; test_acc_by_replicate holds
    every replicate's own mean (replicate order), and the differences and outcomes are the
    replicates' combined ones (`capacity_gap.combine`: the mean of their estimates, the union of
    their intervals, a claim only where every replicate makes it).
    peak = chosen on validation; the budgets
    (epochs, generations, total_epochs per model, search trials at that size,
    configurations confirmed) beside the no-KD student's (config, epochs,
    configurations it was chosen among, scratch search trials, rule).
    """
    datas = [capacity_gap.capacity_data(summary, m) for m in capacity_gap.capacity_methods(summary)]
    datas = [d for d in datas if not d.students.empty]
    if verdicts is None:
        verdicts = capacity_gap.verdicts_of(datas, delta, level)
    rows = []
    for data, v in zip(datas, verdicts):
        teachers = (data.teachers.set_index("teacher_size")["mean"] if not data.teachers.empty
                    else pd.Series(dtype=float))
        vs_largest = list(v.sizes) + [None]  # the largest teacher minus each smaller size; none on the largest
        base_by_size = list(v.vs_baseline_sizes)
        if len(base_by_size) != len(data.sizes):
            base_by_size = [None] * len(data.sizes)
        info = data.baseline_info or {}
        base_mean = float(np.nanmean(data.baseline_test)) if np.isfinite(data.baseline_test).any() else math.nan
        for i, size in enumerate(data.sizes):
            cfg_row = data.config_table.iloc[i]
            runs = data.students[data.students["teacher_size"] == size]
            mean, lo, hi = _pct_ci(runs["test_acc"].dropna())
            pv = vs_largest[i] if len(vs_largest) == len(data.sizes) else None
            bv = base_by_size[i]
            gens = cfg_row["generations"] or 1.0
            rows.append({
                "method": data.method, "teacher_size": size,
                "teacher_origin": "imported" if size in data.imported else "trained",
                "teacher_params": runs["teacher_params"].iloc[0] if len(runs) else math.nan,
                "peak": bool(cfg_row["peak"]), "hyperparameters": cfg_row["hyperparameters"],
                "config_id": cfg_row["config_id"], "source": data.source, "k": int(cfg_row["k"]),
                "test_acc": mean, "test_low": lo, "test_high": hi, "val_acc": cfg_row["val_mean"],
                "teacher_acc": 100.0 * teachers.get(size, math.nan),
                "diff_vs_no_kd": bv.estimate if bv else math.nan, "diff_low": bv.ci[0] if bv else math.nan,
                "diff_high": bv.ci[1] if bv else math.nan, "diff_level": bv.level if bv else math.nan,
                "outcome_vs_no_kd": bv.outcome if bv else None, "sd_vs_no_kd": bv.sd if bv else math.nan,
                "seeds_needed_vs_no_kd": bv.seeds_needed if bv else None,
                "largest_minus_this": pv.estimate if pv else math.nan,
                "largest_minus_low": pv.ci[0] if pv else math.nan, "largest_minus_high": pv.ci[1] if pv else math.nan,
                "outcome_largest_vs_this": pv.outcome if pv else None,
                "largest_minus_level": pv.level if pv else math.nan,
                "no_kd_test_acc": base_mean, "epochs": cfg_row["epochs"], "generations": gens,
                "total_epochs": None if cfg_row["epochs"] is None else cfg_row["epochs"] * gens,
                "search_trials": int(cfg_row["search_trials"]), "configs_confirmed": int(cfg_row["configs_confirmed"]),
                "no_kd_config": info.get("config_id"), "no_kd_epochs": info.get("epochs"),
                "no_kd_configs": info.get("n_configs"), "no_kd_search_trials": info.get("search_trials"),
                "no_kd_rule": info.get("rule"),
                "search_replicates": 1 + len(data.replicas),
                "test_acc_by_replicate": [mean] + [  # replicate 0's is this row's own
                    _pct_ci(d.students.loc[d.students["teacher_size"] == size, "test_acc"].dropna())[0]
                    for d in data.replicas],
            })
    return pd.DataFrame(rows, columns=METHOD_COLUMNS)


def multiexit_table(summary: pd.DataFrame, delta: float = DEFAULT_DELTA, level: float = DEFAULT_LEVEL) -> pd.DataFrame:
    """Per exit: multi-exit distillation and exit-wise CE (configs chosen on final-exit val), paired difference.

    One row per multi-exit distillation method (`method`, from the rows: `multiexit.exit_methods`;
    multiexit with the adaptive temperature, multiexit_const with a constant one) and exit. Columns: method,
    exit, exit_flops, the distillation method's (`multiexit_acc`) and exit-wise
    CE's test accuracy (mean over seeds, %), their hyperparameters, k, diff
    (points) with its Holm-adjusted interval over methods and exits, outcome,
    sd, seeds_needed.
    """
    cols = ["method", "exit", "exit_flops", "multiexit_acc", "multiexit_ce_acc", "k", "diff", "diff_low",
            "diff_high", "diff_level", "outcome", "sd", "seeds_needed", "multiexit_hyperparameters",
            "multiexit_ce_hyperparameters"]
    runs = multiexit.exit_runs(summary)
    verdicts = multiexit.exit_comparisons(summary, delta, level)
    if not verdicts:
        return pd.DataFrame(columns=cols)
    ce = runs[multiexit.BASELINE]
    rows = []
    for v in verdicts:
        method, x = v.a.split(" ", 1)[0], int(v.a.rsplit(" ", 1)[1])
        kd = runs[method]
        a, b = kd[kd["exit"] == x], ce[ce["exit"] == x]
        rows.append({"method": method, "exit": x, "exit_flops": a["exit_flops"].median(),
                     "multiexit_acc": 100 * a["test_acc"].mean(),
                     "multiexit_ce_acc": 100 * b["test_acc"].mean(), "k": v.k, "diff": v.estimate,
                     "diff_low": v.ci[0], "diff_high": v.ci[1], "diff_level": v.level, "outcome": v.outcome,
                     "sd": v.sd, "seeds_needed": v.seeds_needed,
                     "multiexit_hyperparameters": hparams_text(a.iloc[0]) if len(a) else "",
                     "multiexit_ce_hyperparameters": hparams_text(b.iloc[0]) if len(b) else ""})
    return pd.DataFrame(rows, columns=cols)


def generations_table(summary: pd.DataFrame, delta: float = DEFAULT_DELTA,
                      level: float = DEFAULT_LEVEL) -> pd.DataFrame:
    """Per curriculum method (TriKD, or a plug-in's; `generations.generation_methods`) x teacher
    size x generation: the student's test accuracy and its paired difference to the no-KD student.

    The configuration is chosen on the last generation's student val_acc; the
    baseline of generation g is the one trained (g + 1) x epochs when it
    exists (else the method's epochs). Columns: method, teacher_size, generation,
    hyperparameters, student_acc (%), online_teacher_acc (% of the chosen
    trials' online teacher, for information only), no_kd_acc, no_kd_epochs,
    k, diff, diff_low, diff_high, diff_level, outcome, sd, seeds_needed.
    """
    cols = ["method", "teacher_size", "generation", "hyperparameters", "student_acc", "online_teacher_acc",
            "no_kd_acc", "no_kd_epochs", "k", "diff", "diff_low", "diff_high", "diff_level", "outcome", "sd",
            "seeds_needed"]
    comps = generations.generation_comparisons(summary, delta, level)
    if not comps:
        return pd.DataFrame(columns=cols)
    rows = []
    for method in dict.fromkeys(c[0] for c in comps):
        runs = generations.generation_runs(summary, method)
        teachers = finished(summary[(summary["stage"] == "confirm") & (summary["method"] == method)
                                    & (summary["role"] == "teacher") & summary["trial_id"].isin(runs["trial_id"])])
        for _, size, g, v, info in (c for c in comps if c[0] == method):
            mine = runs[(runs["teacher_size"] == size) & (runs["generation"] == g)]
            online = teachers[(teachers["generation"] == g) & teachers["trial_id"].isin(mine["trial_id"])]
            rows.append({"method": method, "teacher_size": None if size < 0 else size, "generation": g,
                         "hyperparameters": hparams_text(mine.iloc[0]) if len(mine) else "",
                         "student_acc": 100 * mine["test_acc"].mean(),
                         "online_teacher_acc": 100 * online["test_acc"].mean() if len(online) else math.nan,
                         "no_kd_acc": info.get("test_acc", math.nan), "no_kd_epochs": info.get("epochs"), "k": v.k,
                         "diff": v.estimate,
                         "diff_low": v.ci[0], "diff_high": v.ci[1], "diff_level": v.level, "outcome": v.outcome,
                         "sd": v.sd, "seeds_needed": v.seeds_needed})
    return pd.DataFrame(rows, columns=cols)


# ------------------------------------------------------------------ display tables (the report renders these)


def _num(v, fmt="{:.2f}") -> str:
    return "" if v is None or (isinstance(v, float) and not math.isfinite(v)) else fmt.format(v)


def _diff_text(est, lo, hi, outcome, k, needed=None, level=None) -> str:
    """'+0.60 [+0.09, +1.11] 97.5% (n=5) shown': the interval with its own (Holm-adjusted) confidence."""
    if est is None or (isinstance(est, float) and not math.isfinite(est)):
        return ""
    at = f" {100 * level:.4g}%" if level is not None and math.isfinite(level) else ""
    text = f"{est:+.2f} [{lo:+.2f}, {hi:+.2f}]{at} (n={k}) {outcome or ''}".strip()
    if outcome == "inconclusive" and needed:
        text += f"; ~{int(needed)} seeds to resolve δ"
    return text


def _size_text(v) -> str:
    if v is None or (isinstance(v, float) and not math.isfinite(v)):
        return "—"
    return f"{v:g}"


#: how the multi-exit table's caption names each temperature rule (`multiexit.temperature_rule`)
_RULES = {"adaptive": "an adaptive temperature", "constant": "a constant temperature"}

#: what the confidence printed with each interval is
_HOLM = ("each interval is printed with its own confidence, Holm's step-down level (the comparison ranked r-th "
         "of m by p-value is drawn at 1 - 0.05/(m - r + 1) until one is not rejected), so it excludes 0 exactly "
         "when Holm rejects")


def _shown_hparams(summary: pd.DataFrame, mt: pd.DataFrame) -> tuple[list[str], str]:
    """Per row of `method_table`: its hyperparameters that were searched (took several values in its
    method's search) or differ between the rows; and the rest once, as 'name=value, ...' (grouped
    by method where only some rows have them)."""
    rows = summary.assign(_cfg=config_ids(summary)) if not summary.empty else summary
    params = []
    for r in mt.itertuples(index=False):
        mine = rows[(rows["method"] == r.method) & (rows["_cfg"] == r.config_id)]
        params.append(hparams_of(mine.iloc[0]) if len(mine) else {})
    searched: dict[str, set] = {}
    for method in set(mt["method"]):
        trials = rows[(rows["method"] == method) & (rows["stage"] == "search")].drop_duplicates("_cfg")
        seen: dict[str, set] = {}
        for _, row in trials.iterrows():
            for k, v in hparams_of(row).items():
                seen.setdefault(k, set()).add(repr(v))
        searched[method] = {k for k, vals in seen.items() if len(vals) > 1}
    values: dict[str, set] = {}
    for p in params:
        for k, v in p.items():
            values.setdefault(k, set()).add(repr(v))
    differ = {k for k, vals in values.items() if len(vals) > 1}
    shown = [", ".join(_kv(k, v) for k, v in p.items() if k in differ or k in searched.get(m, ()))
             for p, m in zip(params, mt["method"])]
    everywhere, per_method = {}, {}
    for p, m in zip(params, mt["method"]):
        for k, v in p.items():
            if k in differ or k in searched.get(m, ()):
                continue
            if all(k in q for q in params):
                everywhere.setdefault(k, v)
            else:
                per_method.setdefault(m, {}).setdefault(k, v)
    fixed = ", ".join(_kv(k, v) for k, v in everywhere.items())
    fixed += "".join(f"; {m}: " + ", ".join(_kv(k, v) for k, v in kv.items()) for m, kv in per_method.items())
    return shown, fixed.lstrip("; ")


def _kv(k, v) -> str:
    return f"{k}={v:g}" if isinstance(v, (int, float)) and not isinstance(v, bool) else f"{k}={v}"


def tables(df: pd.DataFrame, delta: float = DEFAULT_DELTA, level: float = DEFAULT_LEVEL) -> list[tuple]:
    """The report's results tables, formatted: (title, frame, caption, name[, header]) per table; the
    header (the method table's hyperparameters that are the same in every row) goes above it."""
    from .load import trial_summary

    summary = trial_summary(df)
    out = []
    mt = method_table(summary, delta, level)
    if not mt.empty:
        shown, fixed = _shown_hparams(summary, mt)
        n_reps = int(mt["search_replicates"].max())
        replicated = n_reps > 1
        rows = []
        for r, hp in zip(mt.itertuples(index=False), shown):
            budget = f"{_num(r.epochs, '{:g}')} epochs"
            if r.generations and r.generations != 1:
                budget += f" × {r.generations:g} generations"
            rows.append({
                "method": r.method,
                "teacher size": _size_text(r.teacher_size) + (" (imported)" if r.teacher_origin == "imported" else ""),
                "teacher params": _num(r.teacher_params, "{:,.0f}"),
                "chosen hyperparameters": " ".join(x for x in (hp, "(peak on val)" if r.peak else "") if x) or "—",
                "test % (mean ± 95% CI)": f"{r.test_acc:.2f} ± {(r.test_high - r.test_low) / 2:.2f}"
                if math.isfinite(r.test_acc) else "",
                "vs no-KD, paired by seed": _diff_text(r.diff_vs_no_kd, r.diff_low, r.diff_high, r.outcome_vs_no_kd,
                                                        r.k, r.seeds_needed_vs_no_kd, r.diff_level),
                "largest teacher minus this": _diff_text(r.largest_minus_this, r.largest_minus_low,
                                                          r.largest_minus_high, r.outcome_largest_vs_this, r.k,
                                                          level=r.largest_minus_level),
                "teacher's own test %": _num(r.teacher_acc),
                "no-KD test %": _num(r.no_kd_test_acc),
                "seeds": r.k, "budget": budget, "search trials": r.search_trials,
                "configs confirmed": r.configs_confirmed,
                "no-KD budget": f"{_num(r.no_kd_epochs, '{:g}')} epochs, best of {r.no_kd_configs or 1} config(s)"
                                + (f", {r.no_kd_search_trials} search trials" if r.no_kd_search_trials else ""),
            })
            if replicated:
                rows[-1]["test % per search replicate"] = " · ".join(
                    f"r{i} {_num(t)}" for i, t in enumerate(r.test_acc_by_replicate))
        out.append(("Results per method and teacher size", pd.DataFrame(rows),
                    f"Test accuracy (%) of the configuration chosen on validation, mean over the confirm seeds "
                    f"± the {level:.0%} t-interval half-width. Differences are in points, paired by seed, "
                    f"Holm-adjusted within their family: {_HOLM}; outcomes: shown / equivalent (within "
                    f"δ = {delta:g}) / inconclusive (with the seeds needed to resolve δ) / cannot tell (fewer than "
                    f"3 pairs). Hyperparameters: those searched or that differ between rows."
                    + (f" With {n_reps} search replicates, the configuration, its test "
                       f"% and the budgets are search replicate 0's (each replicate's own test % beside them); the "
                       f"differences combine every replicate: the mean of their estimates, the union of their "
                       f"intervals, and a claim only where every replicate makes it." if replicated else ""),
                    "results", f"Same in every row: {fixed}." if fixed else ""))
    me = multiexit_table(summary, delta, level)
    if not me.empty:
        frame = pd.DataFrame({
            "method": me["method"],
            "exit": me["exit"], "FLOPs to exit": me["exit_flops"].map(lambda v: _num(v, "{:,.0f}")),
            "distillation test %": me["multiexit_acc"].map(_num), "multiexit_ce test %": me["multiexit_ce_acc"].map(_num),
            "distillation minus CE, paired": [_diff_text(r.diff, r.diff_low, r.diff_high, r.outcome, r.k, r.seeds_needed,
                                                         r.diff_level)
                                              for r in me.itertuples(index=False)],
            "distillation hyperparameters": me["multiexit_hyperparameters"]})
        out.append(("Multi-exit distillation vs exit-wise cross-entropy, per exit", frame,
                    "".join(f"{m}: {_RULES.get(multiexit.temperature_rule(summary, m), 'no temperature')}; "
                            for m in dict.fromkeys(me["method"]))
                    + "each method's configuration chosen on the final exit's validation accuracy; paired by seed, "
                    f"Holm-adjusted over the methods and exits: {_HOLM}.", "results_multiexit"))
    tk = generations_table(summary, delta, level)
    for method, tm in tk.groupby("method", sort=True):
        frame = pd.DataFrame({
            "teacher size": tm["teacher_size"].map(_size_text), "generation": tm["generation"],
            "student test %": tm["student_acc"].map(_num), "online teacher test %": tm["online_teacher_acc"].map(_num),
            "no-KD test %": tm["no_kd_acc"].map(_num), "no-KD epochs": tm["no_kd_epochs"].map(lambda v: _num(v, "{:g}")),
            "student minus no-KD, paired": [_diff_text(r.diff, r.diff_low, r.diff_high, r.outcome, r.k, r.seeds_needed,
                                                       r.diff_level)
                                            for r in tm.itertuples(index=False)],
            "hyperparameters": tm["hyperparameters"]})
        out.append((f"{method} per generation", frame,
                    "The student of each generation (generation 0 has no anchor); each compared with the no-KD "
                    "student trained as many epochs as the student's curriculum so far, when the study has it; "
                    f"Holm-adjusted over the generations: {_HOLM}.",
                    f"results_{method}"))
    return out
