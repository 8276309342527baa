"""The central chart: distilled-student accuracy against teacher size, and a verdict from the data.

For each distillation method: the student's test accuracy (at its best-val
epoch) against the teacher's parameter count (log x), mean and 95% t-interval
over seeds, from stage ``confirm`` when it has the method, else the best trial
(on val_acc) per teacher size from ``search`` (one run each, so no interval).
Beside it, the teachers' own accuracy and the no-KD student (stage
``baseline``) as a band. `verdict` says whether the largest teacher gives a
significantly worse student than the best teacher (bootstrap CI on the
difference excluding 0) and whether KD beat the no-KD baseline.
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass, field

import numpy as np
import pandas as pd
import plotly.graph_objects as go

from .select import best_config
from .stats import accuracy_range, bootstrap_diff, mean_ci, summarize

#: methods that are not distillation from a teacher ladder
NON_LADDER_METHODS = {"scratch", "multiexit", "multiexit_ce"}
#: the modern remedies for the capacity gap, with the label the comparison chart gives them
REMEDIES = {
    "dist": "DIST (Huang et al. 2022)",
    "lskd": "logit-standardised KD (Sun et al. 2024)",
    "dkd": "DKD (Zhao et al. 2022)",
    "takd": "TAKD (Mirzadeh et al. 2020)",
    "eskd": "ESKD (Cho & Hariharan 2019)",
}


@dataclass
class CapacityData:
    """Everything the chart and the verdict of one method need (accuracies in [0, 1])."""

    method: str
    source: str  # "confirm" or "search"
    students: pd.DataFrame  # one row per run: teacher_size, teacher_params, seed, test_acc, val_acc
    teachers: pd.DataFrame  # per teacher_size: teacher_params, mean, low, high, n
    teacher_source: str
    baseline: np.ndarray  # no-KD student test accuracies, one per seed
    search_trials: dict = field(default_factory=dict)  # teacher_size -> number of search trials
    budget_mode: str = "not recorded"


@dataclass(frozen=True)
class Verdict:
    """What the data say about the capacity gap of one method."""

    method: str
    status: str  # "capacity gap" | "no capacity gap" | "cannot tell"
    peak_teacher: str | None
    largest_teacher: str | None
    largest_worse: bool | None
    diff_points: float | None  # mean(largest) - mean(peak), in accuracy points
    ci_points: tuple[float, float] | None
    beats_baseline: bool | None
    text: str


def capacity_methods(summary: pd.DataFrame) -> list[str]:
    """Distillation methods with student rows and a teacher size in search or confirm."""
    rows = summary[
        summary["stage"].isin(["search", "confirm"])
        & (summary["role"] == "student")
        & summary["teacher_size"].notna()
        & ~summary["method"].isin(NON_LADDER_METHODS)
    ]
    return sorted(rows["method"].dropna().unique())


def _final_student_rows(summary: pd.DataFrame) -> pd.DataFrame:
    """Student rows at each trial's last generation and last exit (the model reported)."""
    rows = summary[summary["role"] == "student"]
    if rows.empty:
        return rows
    last_gen = rows.groupby(["stage", "trial_id"])["generation"].transform("max")
    rows = rows[rows["generation"] == last_gen]
    last_exit = rows.groupby(["stage", "trial_id"])["exit"].transform("max")
    return rows[rows["exit"].isna() | (rows["exit"] == last_exit)]


def _label(size: float, params: float) -> str:
    size_txt = f"{size:g}"
    if not (isinstance(params, float) and math.isnan(params)) and params is not None:
        return f"size {size_txt} ({_fmt_params(params)} params)"
    return f"size {size_txt}"


def _fmt_params(p: float) -> str:
    for unit, div in (("M", 1e6), ("k", 1e3)):
        if p >= div:
            return f"{p / div:.3g}{unit}"
    return f"{p:.0f}"


def _budget_mode(search_rows: pd.DataFrame) -> str:
    for text in search_rows.get("hparams_json", pd.Series(dtype=object)).dropna():
        try:
            mode = json.loads(text).get("budget_mode")
        except (ValueError, AttributeError):
            continue
        if mode:
            return str(mode)
    return "not recorded"


def capacity_data(summary: pd.DataFrame, method: str) -> CapacityData:
    """Gather students, teachers, baseline and search budgets of `method` from a trial summary."""
    students_all = _final_student_rows(summary)
    mine = students_all[(students_all["method"] == method) & students_all["teacher_size"].notna()]
    confirm = mine[mine["stage"] == "confirm"]
    search = mine[mine["stage"] == "search"]
    if not confirm.empty:
        source = "confirm"
        runs = best_config(confirm, ["teacher_size"])
    else:
        source = "search"
        ordered = search.sort_values("val_acc", ascending=False, na_position="last", kind="stable")
        runs = ordered.drop_duplicates(subset=["teacher_size"], keep="first")
    runs = runs[["teacher_size", "teacher_params", "seed", "trial_id", "test_acc", "val_acc", "teacher_acc"]].copy()
    params = mine.groupby("teacher_size")["teacher_params"].median()
    runs["teacher_params"] = runs["teacher_size"].map(params)
    runs = runs.sort_values(["teacher_size", "seed"]).reset_index(drop=True)

    teacher_rows = summary[(summary["stage"] == "teachers") & (summary["role"] == "teacher")]
    teacher_rows = teacher_rows[teacher_rows["teacher_size"].isin(runs["teacher_size"])]
    if not teacher_rows.empty:
        teachers = summarize(teacher_rows, ["teacher_size"], "test_acc")
        teacher_source = "stage teachers"
    else:
        per_teacher = mine.dropna(subset=["teacher_acc"]).drop_duplicates(["teacher_size", "seed", "teacher_acc"])
        teachers = summarize(per_teacher, ["teacher_size"], "teacher_acc")
        teacher_source = "teacher_acc column"
    teachers["teacher_params"] = teachers["teacher_size"].map(params)

    baseline_rows = students_all[
        (students_all["stage"] == "baseline") & (students_all["method"] == "scratch")
    ]
    baseline_runs = best_config(baseline_rows, []) if not baseline_rows.empty else baseline_rows
    counts = search.groupby("teacher_size")["trial_id"].nunique().to_dict()
    return CapacityData(
        method=method,
        source=source,
        students=runs,
        teachers=teachers,
        teacher_source=teacher_source,
        baseline=baseline_runs["test_acc"].to_numpy(dtype=float),
        search_trials={float(k): int(v) for k, v in counts.items()},
        budget_mode=_budget_mode(summary[(summary["stage"] == "search") & (summary["method"] == method)]),
    )


def _budget_text(data: CapacityData) -> str:
    counts = data.search_trials
    if not counts:
        return f"Budget mode: {data.budget_mode}; no search trials recorded."
    listing = ", ".join(f"{k:g}: {v}" for k, v in sorted(counts.items()))
    text = f"Budget mode: {data.budget_mode}; search trials per teacher size: {listing}."
    if len(set(counts.values())) > 1:
        text += " WARNING: search budgets per teacher size were unequal, which can favour the better-searched sizes."
    return text


def verdict(data: CapacityData, n_boot: int = 10_000, seed: int = 0) -> Verdict:
    """Decide from the data whether a larger teacher made a worse student.

    The peak is the teacher size with the highest mean student test accuracy;
    the gap is significant when the bootstrap 95% CI of mean(largest) -
    mean(peak) lies below 0. Needs at least 2 seeds per teacher size.
    """
    runs = data.students.dropna(subset=["test_acc"])
    per_size = runs.groupby("teacher_size")["test_acc"]
    sizes = sorted(per_size.groups)
    budget = _budget_text(data)
    if not sizes:
        return Verdict(data.method, "cannot tell", None, None, None, None, None, None,
                       f"cannot tell: no finished student runs for {data.method}. {budget}")
    means = per_size.mean()
    params = data.students.groupby("teacher_size")["teacher_params"].first()
    peak, largest = float(means.idxmax()), float(sizes[-1])
    peak_label, largest_label = _label(peak, params.get(peak)), _label(largest, params.get(largest))
    baseline_text, beats = _baseline_text(data, runs[runs["teacher_size"] == peak]["test_acc"], n_boot, seed)
    prefix = f"{data.method} (from {data.source}): "
    if per_size.size().min() < 2:
        text = (f"{prefix}cannot tell: needs at least 2 seeds per teacher size "
                f"(have {per_size.size().min()}); the student peaks at teacher {peak_label} on a single run.")
        return Verdict(data.method, "cannot tell", peak_label, largest_label, None, None, None, beats,
                       f"{text} {baseline_text} {budget}")
    if len(sizes) < 2:
        text = f"{prefix}cannot tell: only one teacher size ({largest_label})."
        return Verdict(data.method, "cannot tell", peak_label, largest_label, None, None, None, beats,
                       f"{text} {baseline_text} {budget}")
    if peak == largest:
        text = (f"{prefix}no capacity gap: the student peaks at the largest teacher {largest_label} "
                f"({100 * means[peak]:.2f}%); the largest teacher is not significantly worse.")
        return Verdict(data.method, "no capacity gap", peak_label, largest_label, False, 0.0, (0.0, 0.0), beats,
                       f"{text} {baseline_text} {budget}")
    diff = bootstrap_diff(per_size.get_group(largest), per_size.get_group(peak), n_boot=n_boot, seed=seed)
    d, lo, hi = 100 * diff.diff, 100 * diff.low, 100 * diff.high
    worse = diff.high < 0
    if worse:
        text = (f"{prefix}capacity gap: student peaks at teacher {peak_label}; the largest teacher "
                f"{largest_label} is worse by {-d:.2f} points (95% CI [{-hi:.2f}, {-lo:.2f}]).")
        status = "capacity gap"
    else:
        text = (f"{prefix}no capacity gap: the student peaks at teacher {peak_label}, but the largest teacher "
                f"{largest_label} is not significantly worse ({d:+.2f} points, 95% CI [{lo:.2f}, {hi:.2f}]).")
        status = "no capacity gap"
    return Verdict(data.method, status, peak_label, largest_label, worse, d, (lo, hi), beats,
                   f"{text} {baseline_text} {budget}")


def _baseline_text(data: CapacityData, best: pd.Series, n_boot: int, seed: int) -> tuple[str, bool | None]:
    m = data.method
    base = data.baseline[np.isfinite(data.baseline)]
    if base.size == 0:
        return "No no-KD baseline (stage baseline) to compare with.", None
    best = best.to_numpy(dtype=float)
    if base.size < 2 or best.size < 2:
        d = 100 * (best.mean() - base.mean())
        return (f"{m} at the best teacher vs the no-KD student: {d:+.2f} points "
                "(not testable: needs at least 2 seeds each)."), None
    diff = bootstrap_diff(best, base, n_boot=n_boot, seed=seed)
    d, lo, hi = 100 * diff.diff, 100 * diff.low, 100 * diff.high
    if diff.low > 0:
        return f"{m} beat the no-KD baseline by {d:.2f} points (95% CI [{lo:.2f}, {hi:.2f}]).", True
    if diff.high < 0:
        return f"{m} was worse than the no-KD baseline by {-d:.2f} points (95% CI [{-hi:.2f}, {-lo:.2f}]).", False
    return (f"{m} did not significantly beat the no-KD baseline ({d:+.2f} points, "
            f"95% CI [{lo:.2f}, {hi:.2f}])."), False


def figure(data: CapacityData, result: Verdict | None = None) -> go.Figure:
    """Student and teacher accuracy vs teacher parameters (log x), baseline as a band."""
    students = summarize(data.students, ["teacher_size"], "test_acc")
    students["teacher_params"] = students["teacher_size"].map(
        data.students.groupby("teacher_size")["teacher_params"].first())
    use_params = students["teacher_params"].notna().all() and data.teachers["teacher_params"].notna().all()
    xcol = "teacher_params" if use_params else "teacher_size"
    fig = go.Figure()

    def err(frame):
        return dict(type="data", symmetric=False, array=100 * (frame["high"] - frame["mean"]).fillna(0),
                    arrayminus=100 * (frame["mean"] - frame["low"]).fillna(0), visible=True)

    base = mean_ci(data.baseline)
    if base.n:
        if base.n >= 2:
            fig.add_hrect(y0=100 * base.low, y1=100 * base.high, fillcolor="gray", opacity=0.2, line_width=0)
        fig.add_hline(y=100 * base.mean, line_dash="dot", line_color="gray",
                      annotation_text=f"no-KD student (n={base.n})", annotation_position="bottom right")
    if not data.teachers.empty:
        t = data.teachers.sort_values(xcol)
        fig.add_trace(go.Scatter(x=t[xcol], y=100 * t["mean"], error_y=err(t), mode="lines+markers",
                                 name=f"teacher's own accuracy ({data.teacher_source})",
                                 line=dict(dash="dash", color="#7f7f7f"),
                                 customdata=t[["teacher_size", "n"]],
                                 hovertemplate="size %{customdata[0]}<br>%{y:.2f}%<br>n=%{customdata[1]}"))
    s = students.sort_values(xcol)
    label = "confirm runs, mean ± 95% CI over seeds" if data.source == "confirm" else "best search trial per teacher size"
    fig.add_trace(go.Scatter(x=s[xcol], y=100 * s["mean"], error_y=err(s), mode="lines+markers",
                             name=f"{data.method} student ({label})", line=dict(width=3),
                             customdata=s[["teacher_size", "n"]],
                             hovertemplate="size %{customdata[0]}<br>%{y:.2f}%<br>n=%{customdata[1]}"))
    title = f"Capacity gap — {data.method}: student test accuracy vs teacher size (source: {data.source})"
    if result is not None:
        title += f"<br><sup>{result.status}</sup>"
    fig.update_yaxes(range=accuracy_range(fig))  # intervals of few seeds can pass 0 or 100
    fig.update_layout(title=title, yaxis_title="test accuracy (%) at best-val epoch",
                      xaxis_title="teacher parameters (log)" if use_params else "teacher size (log)",
                      legend=dict(orientation="h", y=-0.2), template="plotly_white")
    fig.update_xaxes(type="log")
    return fig


def comparison_figure(datas: list[CapacityData]) -> go.Figure | None:
    """Every distillation method's student accuracy vs teacher size on one chart (None for fewer than 2).

    The capacity-gap question for the remedies: does DIST / logit standardisation /
    DKD / TAKD / ESKD keep the student improving (or flat) where Hinton KD falls
    off with larger teachers? One line per method (mean ± 95% CI over seeds from
    its own source, confirm or search), the teachers' own accuracy and the no-KD
    baseline band once (from the first method's data, which all share).
    """
    datas = [d for d in datas if not d.students.empty]
    if len(datas) < 2:
        return None
    per_method = []
    for d in datas:
        st = summarize(d.students, ["teacher_size"], "test_acc")
        st["teacher_params"] = st["teacher_size"].map(d.students.groupby("teacher_size")["teacher_params"].first())
        per_method.append((d, st))
    teachers = datas[0].teachers
    use_params = all(st["teacher_params"].notna().all() for _, st in per_method) and (
        teachers.empty or teachers["teacher_params"].notna().all())
    xcol = "teacher_params" if use_params else "teacher_size"
    fig = go.Figure()

    def err(frame):
        return dict(type="data", symmetric=False, array=100 * (frame["high"] - frame["mean"]).fillna(0),
                    arrayminus=100 * (frame["mean"] - frame["low"]).fillna(0), visible=True)

    base = mean_ci(datas[0].baseline)
    if base.n:
        if base.n >= 2:
            fig.add_hrect(y0=100 * base.low, y1=100 * base.high, fillcolor="gray", opacity=0.2, line_width=0)
        fig.add_hline(y=100 * base.mean, line_dash="dot", line_color="gray",
                      annotation_text=f"no-KD student (n={base.n})", annotation_position="bottom right")
    if not teachers.empty:
        t = teachers.sort_values(xcol)
        fig.add_trace(go.Scatter(x=t[xcol], y=100 * t["mean"], error_y=err(t), mode="lines+markers",
                                 name="teacher's own accuracy", line=dict(dash="dash", color="#7f7f7f")))
    for d, st in per_method:
        st = st.sort_values(xcol)
        name = REMEDIES.get(d.method, d.method) + f" ({d.source})"
        fig.add_trace(go.Scatter(x=st[xcol], y=100 * st["mean"], error_y=err(st), mode="lines+markers",
                                 name=name, line=dict(width=3 if d.method in REMEDIES else 2),
                                 customdata=st[["teacher_size", "n"]],
                                 hovertemplate="size %{customdata[0]}<br>%{y:.2f}%<br>n=%{customdata[1]}"))
    fig.update_yaxes(range=accuracy_range(fig))
    fig.update_layout(title="Capacity gap by method: student test accuracy vs teacher size",
                      yaxis_title="test accuracy (%) at the selected epoch",
                      xaxis_title="teacher parameters (log)" if use_params else "teacher size (log)",
                      legend=dict(orientation="h", y=-0.2), template="plotly_white")
    fig.update_xaxes(type="log")
    return fig
