"""The central chart: distilled-student accuracy against teacher size, and a verdict from the data.

For each distillation method the reported model is the student (last
generation, final exit). Per teacher size the configuration is chosen among
the confirmed ones (stage ``confirm``, each run on every confirm seed) by its
mean val_acc over seeds, and its test accuracy is reported; the *peak*
teacher size is the one whose chosen configuration has the best mean
val_acc. Test accuracy never chooses anything. Without confirm rows the best
finished search trial (on val_acc) per teacher size is shown, one run each,
and nothing is tested.

The verdict (see README, "How to read a verdict") compares, paired by seed, the largest teacher
with every smaller teacher size (one Holm family, fixed before the data are
seen; the headline member is the largest teacher minus the peak, or minus
the runner-up when the peak is the largest) and the method at every teacher size with the no-KD student
(stage ``baseline``, the configuration chosen on validation among those with
the method's epochs budget; one Holm family over the methods and sizes when
built with `verdicts`). Each comparison is *shown*, *equivalent within
delta* or *inconclusive* (or *cannot tell* with fewer than 3 paired seeds).

The decisions are computed on arrays by `decide` so that the same code is
simulated in tests/test_calibration.py.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

import numpy as np
import pandas as pd
import plotly.graph_objects as go

from . import search as search_mod
from .labels import KIND_LINES, method_kind, method_label
from .select import choose, choose_baseline, config_ids, finished, hparams_text, reported_rows
from .stats import (CANNOT_TELL, EQUIVALENT, INCONCLUSIVE, OUTCOMES, SHOWN, PairedVerdict, compare,
                    mean_ci, paired_family, summarize)

#: capacity-gap statuses
GAP, NO_GAP, LARGEST_BETTER = "capacity gap", "no capacity gap", "largest teacher better"
@dataclass
class CapacityData:
    """Everything the chart and the verdict of one method need.

    The DataFrame fields hold accuracies in [0, 1] (as in the results); the
    arrays `val` and `test` hold percent. `val`/`test` have shape
    (sizes, configs, seeds): every confirmed configuration of every teacher
    size (configurations sorted by id, NaN-padded) on the seeds `seeds`.
    """

    method: str
    source: str  # "confirm" or "search"
    # the chosen config per size, one row per run: teacher_size, teacher_params, seed, test_acc, val_acc, ...
    students: pd.DataFrame
    teachers: pd.DataFrame  # per teacher_size: teacher_params, mean, low, high, n
    teacher_source: str
    baseline: np.ndarray  # no-KD student test accuracies (chosen baseline config), one per seed
    search_trials: dict = field(default_factory=dict)  # teacher_size -> number of search trials (any status)
    budget_mode: str = "not recorded"
    sizes: list = field(default_factory=list)
    seeds: list = field(default_factory=list)
    configs: list = field(default_factory=list)  # per size: config ids (sorted)
    val: np.ndarray = field(default_factory=lambda: np.zeros((0, 0, 0)))
    test: np.ndarray = field(default_factory=lambda: np.zeros((0, 0, 0)))
    chosen: list = field(default_factory=list)  # per size: chosen config id
    peak_size: float | None = None
    config_table: pd.DataFrame = field(default_factory=pd.DataFrame)
    baseline_val: np.ndarray = field(default_factory=lambda: np.zeros(0))  # percent, aligned with `seeds`
    baseline_test: np.ndarray = field(default_factory=lambda: np.zeros(0))
    baseline_info: dict = field(default_factory=dict)
    epochs: float | None = None
    generations: float | None = None
    replicate: int = 0  # the search replicate these data are of
    replicas: list = field(default_factory=list)  # CapacityData of search replicates 1, 2, ... (search.replicates)
    resolutions: list = field(default_factory=list)  # analysis.search.Resolution of this replicate's searches
    seeds_per_trial: int = 1  # seeds each search trial trained (search.seeds_per_trial)
    imported: list = field(default_factory=list)  # teacher sizes whose teacher was imported, not trained


def imported_sizes(rows: pd.DataFrame) -> list[float]:
    """Teacher sizes whose teacher was imported from a weights file (`teacher_origin`), not trained."""
    if "teacher_origin" not in rows or rows.empty:
        return []
    mine = rows[(rows["teacher_origin"] == "imported") & rows["teacher_size"].notna()]
    return sorted(float(s) for s in mine["teacher_size"].unique())


@dataclass(frozen=True)
class Verdict:
    """What the data say about the capacity gap of one method, and about the method vs the no-KD student."""

    method: str
    status: str  # "capacity gap" | "no capacity gap" | "largest teacher better" | "inconclusive" | "cannot tell"
    peak_teacher: str | None
    largest_teacher: str | None
    gap: PairedVerdict | None  # the headline comparison (largest - peak, or largest - runner-up)
    sizes: tuple = ()  # the largest teacher - every smaller size (one Holm family), sizes ascending
    vs_baseline: PairedVerdict | None = None  # the method at the peak size - no-KD student
    vs_baseline_sizes: tuple = ()  # the method at every size - no-KD student
    text: str = ""
    delta: float = 0.5
    level: float = 0.95
    replicates: tuple = ()  # with search replicates: each replicate's own Verdict (this one combines them)

    @property
    def diff_points(self) -> float | None:
        return None if self.gap is None else self.gap.estimate

    @property
    def ci_points(self) -> tuple[float, float] | None:
        return None if self.gap is None else self.gap.ci


def capacity_methods(summary: pd.DataFrame) -> list[str]:
    """Distillation methods with student rows and a teacher size in search or confirm.

    Told from the rows, not from method names, so a plug-in method is treated as a built-in one
    would be: rows without a teacher size (training from scratch, self-distillation) distil from
    no ladder, and a multi-exit student (rows with an exit index, charted per exit by the
    multi-exit figures) is no single student to put on the ladder chart."""
    rows = summary[
        summary["stage"].isin(["search", "confirm"])
        & (summary["role"] == "student")
        & summary["teacher_size"].notna()
        & summary["exit"].isna()
    ]
    return sorted(rows["method"].dropna().unique())


def _label(size: float, params: float) -> str:
    size_txt = f"{size:g}"
    if params is not None and not (isinstance(params, float) and math.isnan(params)):
        return f"size {size_txt} ({_fmt_params(params)} params)"
    return f"size {size_txt}"


def _fmt_params(p: float) -> str:
    for unit, div in (("M", 1e6), ("k", 1e3)):
        if p >= div:
            return f"{p / div:.3g}{unit}"
    return f"{p:.0f}"


def _budget_mode(search_rows: pd.DataFrame) -> str:
    from .landscape import recorded_budget_mode

    return recorded_budget_mode(search_rows) or "not recorded"


# --------------------------------------------------------------------------- decisions on arrays

def take(arr: np.ndarray, index: np.ndarray, axis: int) -> np.ndarray:
    """arr with `axis` removed by picking `index` (shape of arr without that axis and the seed axis)."""
    idx = np.expand_dims(np.expand_dims(index, axis if axis >= 0 else axis + 1), -1)
    return np.take_along_axis(arr, idx, axis=axis).squeeze(axis)


def decide(val: np.ndarray, test: np.ndarray, base_test: np.ndarray | None, delta: float = 0.5,
           level: float = 0.95) -> dict:
    """The capacity-gap and baseline decisions of one method, vectorised over leading axes.

    val, test: (..., S, C, k) percent (NaN = no finished run), sizes ascending,
    configs in id order; base_test: (..., k) the chosen no-KD student per seed.

    The gap family is fixed before looking at the data: the largest teacher
    minus every smaller teacher size (S - 1 comparisons, Holm-adjusted), so
    that choosing the peak on the validation accuracy of the same runs cannot
    bias it. The peak (best mean val over seeds) picks the headline member:
    the largest minus the peak, or, when the peak is the largest, the largest
    minus the runner-up on validation.

    Returns: config (..., S) the chosen config per size, peak (...,),
    head (...,) the headline member (index of the smaller size), gap
    (paired_family of test[largest] - test[s] for s < largest, (..., S-1)),
    status (..., ) the capacity-gap status (see `gap_status`), and base
    (paired_family of test[s] - base, (..., S)) or None.
    """
    cfg = choose(val, axis=-2)
    v = take(val, cfg, axis=-2)  # (..., S, k)
    t = take(test, cfg, axis=-2)
    peak = choose(v, axis=-2)  # (...,)
    S = v.shape[-2]
    largest = S - 1
    out = {"config": cfg, "peak": peak, "head": None, "gap": None, "base": None,
           "status": np.full(np.shape(peak), CANNOT_TELL, dtype=object)}
    if S > 1:
        gap = paired_family(t[..., largest:, :] - t[..., :largest, :], delta=delta, level=level)  # (..., S-1)
        runner = choose(v[..., :largest, :], axis=-2)
        head = np.where(peak == largest, runner, peak)
        out.update(head=head, gap=gap, status=gap_status(gap, head, delta))
    if base_test is not None:
        out["base"] = paired_family(t - base_test[..., None, :], delta=delta, level=level)
    return out


def decide_replicates(val: np.ndarray, test: np.ndarray, base_test: np.ndarray | None, delta: float = 0.5,
                      level: float = 0.95) -> dict:
    """`decide` for a study of R search replicates, vectorised: val, test (..., R, S, C, k), base_test
    (..., R, k) (each replicate's no-KD student; the same runs when the baseline is not searched).

    Every replicate is decided on its own (`decide`), then combined as `combine` does: a status only
    where every replicate reaches it (else inconclusive, or cannot tell), each comparison by
    `analysis.search.across_arrays`, and no claim at all where the study's estimated search luck
    (`analysis.search.pooled_luck` of the chosen configurations' confirm accuracies) is more than R
    replicates absorb. Returns {"replicates": decide's output with the R axis, "status": (...,),
    "gap": (..., S-1) combined outcome codes, "base": (..., S) or None, "luck": (...,), "luck_ok"}.
    """
    d = decide(val, test, base_test, delta, level)
    R = val.shape[-4]
    st = d["status"]
    # the study's own estimate of its search luck (the chosen configurations' spread over replicates)
    chosen = take(test, d["config"], axis=-2)  # (..., R, S, k)
    luck = search_mod.pooled_luck(chosen) if R > 1 else np.full(st.shape[:-1], np.nan)
    ok = ~(luck > search_mod.calibrated_luck(R)) if R > 1 else np.ones(st.shape[:-1], dtype=bool)
    same = (st == st[..., :1]).all(axis=-1)
    any_cannot = (st == CANNOT_TELL).any(axis=-1)
    status = np.where(same, st[..., 0], np.where(any_cannot, CANNOT_TELL, INCONCLUSIVE)).astype(object)
    status = np.where(~ok & np.isin(status, [GAP, NO_GAP, LARGEST_BETTER]), INCONCLUSIVE, status).astype(object)
    out = {"replicates": d, "status": status, "gap": None, "base": None, "luck": luck, "luck_ok": ok}
    if d["gap"] is not None:
        g = d["gap"]
        out["gap"] = search_mod.across_arrays(g["outcome"], g["estimate"], g["eq_low"], g["eq_high"], delta, axis=-2,
                                              luck_ok=ok[..., None])
    if d["base"] is not None:
        b = d["base"]
        out["base"] = search_mod.across_arrays(b["outcome"], b["estimate"], b["eq_low"], b["eq_high"], delta,
                                               axis=-2, luck_ok=ok[..., None])
    return out


def gap_status(gap: dict, head, delta: float) -> np.ndarray:
    """The capacity-gap status per family (vectorised) from `paired_family` output of largest - smaller sizes.

    * "capacity gap": some smaller teacher is shown better than the largest (Holm over the family);
    * "largest teacher better": else, the headline member is shown with the largest better;
    * "no capacity gap": else, the headline member is equivalent within delta and no member's
      equivalence interval reaches below -delta (the largest is not worse than any smaller size by delta);
    * "cannot tell" when the headline member has fewer than 3 pairs; else "inconclusive".
    """
    out_codes = np.asarray(gap["outcome"])
    head = np.asarray(head)
    pick = lambda a: np.take_along_axis(np.asarray(a), head[..., None], axis=-1)[..., 0]  # noqa: E731
    shown_worse = ((out_codes == 1) & (gap["estimate"] < 0)).any(axis=-1)
    h_out, h_est = pick(out_codes), pick(gap["estimate"])
    testable = out_codes != 0
    noninferior = np.where(testable, gap["eq_low"] > -delta, True).all(axis=-1)
    return np.select(
        [shown_worse, (h_out == 1) & (h_est > 0), (h_out == 2) & noninferior, h_out == 0],
        [GAP, LARGEST_BETTER, NO_GAP, CANNOT_TELL], default=INCONCLUSIVE).astype(object)


# --------------------------------------------------------------------------- data from a trial summary

def _percent_grid(runs: pd.DataFrame, sizes, configs, seeds, column: str) -> np.ndarray:
    out = np.full((len(sizes), max([len(c) for c in configs] + [1]), len(seeds)), np.nan)
    pos_seed = {s: i for i, s in enumerate(seeds)}
    for i, (size, cfgs) in enumerate(zip(sizes, configs)):
        pos_cfg = {c: j for j, c in enumerate(cfgs)}
        sub = runs[runs["teacher_size"] == size]
        for cfg, seed, value in zip(sub["config_id"], sub["seed"], sub[column]):
            out[i, pos_cfg[cfg], pos_seed[seed]] = 100.0 * value
    return out


def capacity_data(summary: pd.DataFrame, method: str) -> CapacityData:
    """Gather students, teachers, the no-KD student and the budgets of `method` from a trial summary.

    With search replicates (`search.replicates`) the data are replicate 0's, and `replicas` holds
    each further replicate's, each gathered from the rows a study of that replicate alone would
    have (`analysis.search.of_replicate`)."""
    reps = search_mod.replicates(summary)
    data = _capacity_data(search_mod.of_replicate(summary, reps[0]), method, reps[0])
    for r in reps[1:]:
        data.replicas.append(_capacity_data(search_mod.of_replicate(summary, r), method, r))
    return data


def _capacity_data(summary: pd.DataFrame, method: str, replicate: int = 0) -> CapacityData:
    students_all = reported_rows(summary)
    mine_all = students_all[(students_all["method"] == method) & students_all["teacher_size"].notna()]
    mine = finished(mine_all)
    confirm = mine[mine["stage"] == "confirm"]
    search = mine[mine["stage"] == "search"]
    if not confirm.empty:
        source, pool = "confirm", confirm
    else:
        source = "search"
        ordered = search.assign(config_id=config_ids(search))
        ordered = ordered.sort_values(["val_acc", "trial_id"], ascending=[False, True], na_position="last",
                                      kind="stable")
        pool = ordered.drop_duplicates(subset=["teacher_size"], keep="first")
    pool = pool.assign(config_id=config_ids(pool))
    # one run per (config, seed): the last-finished duplicate would be a bug upstream; keep the first trial id
    pool = pool.sort_values("trial_id", kind="stable").drop_duplicates(["teacher_size", "config_id", "seed"])
    sizes = sorted(float(s) for s in pool["teacher_size"].unique())
    configs = [sorted(pool.loc[pool["teacher_size"] == s, "config_id"].unique()) for s in sizes]

    epochs = _first(pool, "epochs")
    generations = _first(pool, "generations")
    total = None if epochs is None else epochs * (generations or 1.0)
    base_runs, base_info = choose_baseline(summary, total, epochs)
    seeds = sorted(set(int(s) for s in pool["seed"].dropna()) | set(int(s) for s in base_runs["seed"].dropna()))
    val = _percent_grid(pool, sizes, configs, seeds, "val_acc")
    test = _percent_grid(pool, sizes, configs, seeds, "test_acc")
    base_by_seed = base_runs.drop_duplicates("seed").set_index("seed")
    base_val = np.array([100.0 * base_by_seed["val_acc"].get(s, np.nan) for s in seeds])
    base_test = np.array([100.0 * base_by_seed["test_acc"].get(s, np.nan) for s in seeds])

    chosen, peak = [], None
    if sizes:
        cfg = choose(val, axis=-2)
        chosen = [configs[i][int(cfg[i])] for i in range(len(sizes))]
        peak = sizes[int(choose(take(val, cfg, axis=-2), axis=-2))]
    keep = pd.DataFrame({"teacher_size": sizes, "config_id": chosen})
    runs = pool.merge(keep, on=["teacher_size", "config_id"], how="inner") if sizes else pool.iloc[0:0]
    params = mine_all.groupby("teacher_size")["teacher_params"].median()
    out_cols = ["teacher_size", "teacher_params", "seed", "trial_id", "config_id", "test_acc", "val_acc",
                "teacher_acc"]
    runs = runs.assign(teacher_params=runs["teacher_size"].map(params))[out_cols]
    runs = runs.sort_values(["teacher_size", "seed"]).reset_index(drop=True)

    teacher_rows = finished(summary[(summary["stage"] == "teachers") & (summary["role"] == "teacher")])
    teacher_rows = teacher_rows[teacher_rows["teacher_size"].isin(sizes)]
    online = summary[(summary["method"] == method) & (summary["role"] == "teacher")
                     & summary["trial_id"].isin(runs["trial_id"]) & (summary["stage"] == source)]
    if not online.empty:  # a method that trains its own (online) teacher, e.g. TriKD: that teacher's accuracy
        last = online.groupby("trial_id")["generation"].transform("max").fillna(0)
        online = online[online["generation"].fillna(0) == last]
        teachers = summarize(online, ["teacher_size"], "test_acc")
        teacher_source = "online teacher, last generation"
    elif not teacher_rows.empty:
        teachers = summarize(teacher_rows, ["teacher_size"], "test_acc")
        teacher_source = "stage teachers"
    else:
        per_teacher = mine.dropna(subset=["teacher_acc"]).drop_duplicates(["teacher_size", "seed", "teacher_acc"])
        teachers = summarize(per_teacher, ["teacher_size"], "teacher_acc")
        teacher_source = "teacher_acc column"
    teachers["teacher_params"] = teachers["teacher_size"].map(params)

    search_all = summary[(summary["stage"] == "search") & (summary["method"] == method)]
    search_trials = search_all["trial_id"].map(search_mod.search_trial_of)
    counts = search_trials.groupby(search_all["teacher_size"]).nunique().to_dict()
    runs_per = search_all.groupby(search_trials)["seed"].nunique()
    seeds_per_trial = int(runs_per.max()) if len(runs_per) else 1
    rows = []
    for i, size in enumerate(sizes):
        chosen_rows = runs[runs["teacher_size"] == size]
        first = pool[(pool["teacher_size"] == size) & (pool["config_id"] == chosen[i])].iloc[0]
        with np.errstate(invalid="ignore"):
            val_mean = float(np.nanmean(val[i, configs[i].index(chosen[i])])) if len(seeds) else math.nan
        rows.append({"teacher_size": size, "config_id": chosen[i], "hyperparameters": hparams_text(first),
                     "val_mean": val_mean, "configs_confirmed": len(configs[i]) if source == "confirm" else 0,
                     "k": int(chosen_rows["test_acc"].notna().sum()), "epochs": _num(first.get("epochs")),
                     "generations": _num(first.get("generations")) or 1.0,
                     "search_trials": int(counts.get(size, 0)), "peak": size == peak})
    return CapacityData(
        method=method, source=source, students=runs, teachers=teachers, teacher_source=teacher_source,
        baseline=base_runs["test_acc"].to_numpy(dtype=float),
        search_trials={float(k): int(v) for k, v in counts.items()},
        budget_mode=_budget_mode(search_all), sizes=sizes, seeds=seeds, configs=configs, val=val, test=test,
        chosen=chosen, peak_size=peak, config_table=pd.DataFrame(rows), baseline_val=base_val,
        baseline_test=base_test, baseline_info=base_info, epochs=epochs, generations=generations,
        replicate=replicate, resolutions=search_mod.resolutions(summary, method), seeds_per_trial=seeds_per_trial,
        imported=[z for z in imported_sizes(summary) if z in sizes],
    )


def _num(v):
    return None if v is None or pd.isna(v) else float(v)


def _first(rows: pd.DataFrame, column: str):
    values = rows[column].dropna() if column in rows else pd.Series(dtype=float)
    return float(values.iloc[0]) if len(values) else None


# --------------------------------------------------------------------------- verdicts

def _budget_text(data: CapacityData) -> str:
    counts = data.search_trials
    epochs = "not recorded" if data.epochs is None else f"{data.epochs:g}"
    gens = data.generations or 1.0
    parts = [f"Budgets: {data.method} trains {epochs} epochs x {gens:g} generation{'s' if gens != 1 else ''} "
             f"per model"]
    if counts:
        each = f" (each trained on {data.seeds_per_trial} seeds)" if data.seeds_per_trial > 1 else ""
        parts.append("search trials per teacher size " + ", ".join(f"{k:g}: {v}" for k, v in sorted(counts.items()))
                     + each)
    else:
        parts.append("no search trials recorded")
    if data.source == "confirm" and not data.config_table.empty:
        parts.append("configurations confirmed per size " + ", ".join(
            f"{r.teacher_size:g}: {r.configs_confirmed}" for r in data.config_table.itertuples()))
    info = data.baseline_info or {}
    if info.get("config_id") is not None:
        b_ep = "?" if info.get("epochs") is None else f"{info['epochs']:g}"
        recipe = ", ".join(f"{k}={info[k]:g}" for k in ("lr", "weight_decay") if info.get(k) is not None)
        parts.append(f"no-KD student {b_ep} epochs ({recipe}; chosen on validation among {info['n_configs']} "
                     f"configuration(s), rule: {info['rule']}; {info['search_trials']} scratch search trials)")
    text = f"Budget mode: {data.budget_mode}. " + "; ".join(parts) + "."
    if counts and len(set(counts.values())) > 1:
        text += " WARNING: search budgets per teacher size were unequal, which can favour the better-searched sizes."
    return text


def _size_label(data: CapacityData, size: float) -> str:
    params = data.students.groupby("teacher_size")["teacher_params"].first() if not data.students.empty else {}
    return _label(size, params.get(size) if hasattr(params, "get") else None)


def verdicts(summary: pd.DataFrame, delta: float = 0.5, level: float = 0.95) -> list[Verdict]:
    """The verdict of every capacity method, the method-vs-baseline comparisons Holm-adjusted over all
    methods and teacher sizes together (one family)."""
    datas = [capacity_data(summary, m) for m in capacity_methods(summary)]
    datas = [d for d in datas if not d.students.empty]
    return verdicts_of(datas, delta, level)


def verdicts_of(datas: list[CapacityData], delta: float = 0.5, level: float = 0.95) -> list[Verdict]:
    """As `verdicts`, from CapacityData already built.

    With search replicates every replicate is decided as a study of its own (its own Holm families:
    replicate r of every searched method, the shared data of methods without a search), and each
    method's verdict combines its replicates (`combine`)."""
    n_rep = max([1 + len(d.replicas) for d in datas] or [1])
    if n_rep == 1:
        return _verdicts_one(datas, delta, level)
    per_rep = []
    for i in range(n_rep):
        ds = [d if i == 0 or not d.replicas else d.replicas[i - 1] for d in datas
              if i == 0 or not d.replicas or len(d.replicas) >= i]
        per_rep.append({v.method: v for v in _verdicts_one([d for d in ds if not d.students.empty], delta, level)})
    return [combine(d, [pr[d.method] for pr in per_rep if d.method in pr], delta, level) for d in datas]


def _verdicts_one(datas: list[CapacityData], delta: float = 0.5, level: float = 0.95) -> list[Verdict]:
    """The verdicts of one study (one search replicate): the method-vs-baseline family over all methods."""
    pairs, owner = [], []
    for data in datas:
        for j, v in enumerate(_baseline_pairs(data)):
            pairs.append(v)
            owner.append((data.method, j))
    fam = compare(pairs, family="methods vs no-KD student", delta=delta, level=level)
    per_method: dict[str, list] = {}
    for (method, _), pv in zip(owner, fam):
        per_method.setdefault(method, []).append(pv)
    return [verdict(d, delta, level, _baseline=per_method.get(d.method, [])) for d in datas]


def _baseline_pairs(data: CapacityData) -> list:
    """(a_label, b_label, a, b) per teacher size: the chosen config vs the chosen no-KD student, by seed."""
    if not data.sizes or not np.isfinite(data.baseline_test).any():
        return []
    cfg = choose(data.val, axis=-2)
    t = take(data.test, cfg, axis=-2)
    base = pd.Series(data.baseline_test, index=data.seeds)
    return [(f"{data.method} at teacher {_size_label(data, s)}", "no-KD student",
             pd.Series(t[i], index=data.seeds), base) for i, s in enumerate(data.sizes)]


_LEADS = {GAP: "CAPACITY GAP", NO_GAP: "NO CAPACITY GAP (equivalent within delta)",
          LARGEST_BETTER: "LARGEST TEACHER BETTER (shown)",
          INCONCLUSIVE: "capacity gap INCONCLUSIVE", CANNOT_TELL: "capacity gap: cannot tell"}


def verdict(data: CapacityData, delta: float = 0.5, level: float = 0.95, _baseline=None) -> Verdict:
    """Decide from the data whether a larger teacher made a worse student, and how the method compares
    with the no-KD student (see the module docstring and README, "How to read a verdict").

    Alone, the method-vs-baseline family is this method's teacher sizes; `verdicts` builds it over all methods.
    These are the data of one search replicate; `combine` joins the verdicts of several.
    """
    budget = _budget_text(data)
    method = data.method
    base_family = (compare(_baseline_pairs(data), family="methods vs no-KD student", delta=delta, level=level)
                   if _baseline is None else list(_baseline))
    sizes = data.sizes
    prefix = f"{method} (from {data.source}): "
    if not sizes:
        return Verdict(method, CANNOT_TELL, None, None, None, text=f"{prefix}cannot tell: no finished student "
                       f"runs. {budget}", delta=delta, level=level)
    cfg = choose(data.val, axis=-2)
    v = take(data.val, cfg, axis=-2)
    t = take(data.test, cfg, axis=-2)
    peak_i = int(choose(v, axis=-2))
    largest_i = len(sizes) - 1
    peak_label = _size_label(data, sizes[peak_i])
    largest_label = _size_label(data, sizes[largest_i])
    vs_base = base_family[peak_i] if len(base_family) == len(sizes) else None
    notes = _notes(data, [data])
    if len(sizes) < 2:
        text = (f"{prefix}cannot tell about a capacity gap: only one teacher size ({largest_label}). "
                f"{_baseline_text(method, base_family, vs_base)}{notes} {budget}")
        return Verdict(method, CANNOT_TELL, peak_label, largest_label, None, (), vs_base, tuple(base_family),
                       text, delta, level)
    largest_series = pd.Series(t[largest_i], index=data.seeds)
    pairs = [(f"{method} student of the largest teacher {largest_label}",
              f"{method} student of teacher {_size_label(data, sizes[i])}", largest_series, pd.Series(t[i], index=data.seeds))
             for i in range(largest_i)]
    family = compare(pairs, family=f"{method}: largest teacher vs each smaller teacher size", delta=delta,
                     level=level)
    if peak_i != largest_i:
        head_i = peak_i
        where = f"the student peaks (on validation) at teacher {peak_label}; largest minus peak:"
    else:
        head_i = int(choose(v[:largest_i], axis=-2))
        where = (f"the student peaks (on validation) at the largest teacher {largest_label}; "
                 f"largest minus the runner-up {_size_label(data, sizes[head_i])}:")
    head = family[head_i]
    arrays = {"outcome": np.array([OUTCOMES.index(f.outcome) for f in family]),
              "estimate": np.array([f.estimate for f in family]), "eq_low": np.array([f.eq_ci[0] for f in family])}
    status = str(gap_status(arrays, np.array(head_i), delta))
    text = _verdict_text(prefix + _LEADS[status], where, head, family, method, base_family, vs_base, notes, budget)
    return Verdict(method, status, peak_label, largest_label, head, tuple(family), vs_base, tuple(base_family),
                   text, delta, level)


def _verdict_text(lead: str, where: str, head: PairedVerdict, family, method: str, base_family, vs_base,
                  notes: str, budget: str) -> str:
    """Capacity gap (headline, then every other size shown better or worse than the largest), the
    method-vs-no-KD family summarised and its headline, notes on the searches, the budgets."""
    text = f"{lead}: {where} {head.text}"
    others = [f.text for f in family if f is not head and f.outcome == SHOWN]
    if others:
        text += " Also: " + " ".join(others)
    return f"{text} {_baseline_text(method, base_family, vs_base)}{notes} {budget}"


def family_summary(method: str, base_family) -> str:
    """How the method did against the no-KD student at every teacher size, in one sentence."""
    if not base_family:
        return ""
    def sizes_of(sel):
        return [_size_of(v.a) for v in base_family if sel(v)]
    groups = [("SHOWN better", lambda v: v.outcome == SHOWN and v.estimate > 0),
              ("SHOWN worse", lambda v: v.outcome == SHOWN and v.estimate < 0),
              ("EQUIVALENT", lambda v: v.outcome == EQUIVALENT),
              ("INCONCLUSIVE", lambda v: v.outcome == INCONCLUSIVE),
              ("cannot tell", lambda v: v.outcome == CANNOT_TELL)]
    parts = []
    for name, sel in groups:
        found = sizes_of(sel)
        if found or name != "cannot tell":
            parts.append(f"{name} at {len(found)}" + (f" ({', '.join(found)})" if found else ""))
    n = len(base_family)
    return f"{method} vs the no-KD student at {n} teacher size{'s' if n != 1 else ''}: " + ", ".join(parts) + "."


def _size_of(label: str) -> str:
    """'kd at teacher size 16 (256k params)' -> 'size 16'."""
    key = " at teacher "
    return label.split(key, 1)[1].split(" (")[0] if key in label else label


def _baseline_text(method: str, base_family, vs_base) -> str:
    if vs_base is None:
        return "No no-KD student (stage baseline, finished) to compare with."
    summary = family_summary(method, base_family)
    return f"{summary} At the peak: {vs_base.text}" if len(base_family) > 1 else vs_base.text


def _notes(data: CapacityData, members: list) -> str:
    """What the searches behind these verdicts resolved, and (one search) what SHOWN is about."""
    res = [r for d in members for r in d.resolutions]
    parts = [search_mod.resolution_note(res)] if res else []
    if res and len(members) == 1 and data.source == "confirm":
        parts.append("One search per teacher size: these verdicts are about the configurations it chose; "
                     "search.replicates: 2 or more tests whether other searches agree.")
    return "".join(" " + p for p in parts if p)


def combine(data: CapacityData, members: list[Verdict], delta: float = 0.5, level: float = 0.95) -> Verdict:
    """One method's verdict over its search replicates (`members`, replicate 0 first): every comparison
    combined by `analysis.search.across` (a claim only where every replicate makes it), the
    capacity-gap status only where every replicate reaches it."""
    if len(members) == 1:
        return members[0]
    datas = [data] + list(data.replicas)
    ids = [d.replicate for d in datas][:len(members)]
    method, n = data.method, len(members)
    luck, per_size = _luck(datas)
    limit = search_mod.calibrated_luck(n)
    too_lucky = np.isfinite(luck) and luck > limit
    statuses = [m.status for m in members]
    status = search_mod.agree(statuses) or (CANNOT_TELL if CANNOT_TELL in statuses else INCONCLUSIVE)
    if too_lucky and status in (GAP, NO_GAP, LARGEST_BETTER):
        status = INCONCLUSIVE
    family = _aligned([m.sizes for m in members], ids, luck)
    base_family = _aligned([m.vs_baseline_sizes for m in members], ids, luck)
    peaks = [m.peak_teacher for m in members]
    peak = max(dict.fromkeys(peaks), key=peaks.count)  # the most common, ties to replicate 0's
    vs_base = next((v for v in base_family if peak and v.a.endswith(peak)), None) if base_family else None
    heads = [m.gap.comparison for m in members if m.gap is not None]
    head = None
    if heads:
        want = max(dict.fromkeys(heads), key=heads.count)
        head = next((f for f in family if f.comparison == want), None)
    prefix = f"{method} (from {data.source}, {n} search replicates): "
    if too_lucky and search_mod.agree(statuses) not in (None, INCONCLUSIVE, CANNOT_TELL):
        lead = _LEADS[status] + f" (every replicate reaches {statuses[0]}, but search luck is too large to claim it)"
    elif search_mod.agree(statuses):
        lead = _LEADS[status] + ("" if status in (INCONCLUSIVE, CANNOT_TELL) else " (in every replicate)")
    else:
        lead = _LEADS[status] + " (replicates disagree: " + ", ".join(
            f"replicate {i} {s}" for s, i in zip(statuses, ids)) + ")"
    notes = _notes(data, datas) + _luck_note(datas, luck, per_size)
    budget = _budget_text(data) + f" Each of the {n} search replicates has this budget."
    if head is None:
        text = f"{prefix}{lead}. {_baseline_text(method, base_family, vs_base)}{notes} {budget}"
    else:
        where = f"peaks (on validation) per replicate: {', '.join(p or '?' for p in peaks)}; headline:"
        text = _verdict_text(prefix + lead, where, head, family, method, base_family, vs_base, notes, budget)
    largest = members[0].largest_teacher
    return Verdict(method, status, peak, largest, head, tuple(family), vs_base, tuple(base_family), text, delta,
                   level, replicates=tuple(members))


def _aligned(families: list, ids: list, luck: float | None = None) -> list[PairedVerdict]:
    """Comparisons present in every replicate's family (replicate 0's order), combined."""
    common = [f.comparison for f in families[0] if all(any(g.comparison == f.comparison for g in fam)
                                                      for fam in families[1:])]
    out = []
    for c in common:
        members = [next(g for g in fam if g.comparison == c) for fam in families]
        out.append(search_mod.across(members, ids, luck))
    return out


def _luck(datas: list[CapacityData]) -> tuple[float, list]:
    """The method's search luck estimated from its replicates (`analysis.search.pooled_luck`, per size
    on the confirm seeds every replicate has): (pooled SD, [(SD, size, seeds)])."""
    found = []
    for size in datas[0].sizes:
        series = []
        for d in datas:
            if size not in d.sizes or d.source != "confirm":
                continue
            t = take(d.test, choose(d.val, axis=-2), axis=-2)[d.sizes.index(size)]
            series.append(pd.Series(t, index=d.seeds))
        sd, n = search_mod.luck_sd(series) if len(series) == len(datas) else (math.nan, 0)
        if np.isfinite(sd):
            found.append((sd, size, n))
    pooled = math.sqrt(float(np.mean([f[0] ** 2 for f in found]))) if found else math.nan
    return pooled, found


def _luck_note(datas: list[CapacityData], sd: float, found: list) -> str:
    """How far apart the replicates' chosen configurations landed, against what R replicates absorb."""
    if not found:
        return ""
    worst = max(found)
    limit = search_mod.calibrated_luck(len(datas))
    text = (f" Search luck: the {len(datas)} replicates' chosen configurations differ by an estimated SD of "
            f"{sd:.2f} points beyond the confirm seeds' noise (largest at teacher {_size_label(datas[0], worst[1])}: "
            f"{worst[0]:.2f})")
    if sd > limit:
        return text + (f", more than the {limit:g} that {len(datas)} replicates absorb (tests/test_calibration.py), "
                       f"so no claim is made: raise search.replicates (3 replicates absorb "
                       f"{search_mod.calibrated_luck(3):g} point), or shrink the luck with more trials or "
                       f"search.seeds_per_trial.")
    return text + f", within the {limit:g} that {len(datas)} replicates absorb."


# --------------------------------------------------------------------------- headlines

#: the outcome word a headline starts with, per capacity-gap status
_WORDS = {GAP: "CAPACITY GAP", NO_GAP: "NO CAPACITY GAP", LARGEST_BETTER: "LARGEST TEACHER BETTER",
          INCONCLUSIVE: "capacity gap INCONCLUSIVE", CANNOT_TELL: "capacity gap: cannot tell"}


def _short_size(label: str) -> str:
    """'kd student of teacher size 16 (9.1k params)' -> 'size 16'."""
    rest = label.rsplit("teacher ", 1)[-1]
    return rest.split(" (")[0]


def _number(v: PairedVerdict, equivalence: bool = False) -> str:
    """'+0.60 points [+0.09, +1.11] (97.5% CI)': the estimate and the interval its outcome rests on."""
    lo, hi = v.eq_ci if equivalence else v.ci
    union = " over every search replicate" if "search replicates" in v.text else ""
    if equivalence:
        what = f"equivalence interval, inside ±{v.delta:g}{union}"
    else:
        what = (f"{100 * v.level:.1f}% CI" if v.level == v.level else "CI") + (", Holm" if v.family_size > 1 else "") + union
    return f"{v.estimate:+.2f} points [{lo:+.2f}, {hi:+.2f}] ({what})"


def headline(v: Verdict) -> tuple[str, str]:
    """A verdict at a glance: (headline, second line).

    The headline is the outcome word, the one number that matters and its interval: the
    capacity-gap comparison (the largest teacher minus the peak, or minus the runner-up), or,
    with a single teacher size, the method against the no-KD student. The second line is the
    method against the no-KD student at the peak (empty when that is the headline). The full
    sentence, budgets, search resolution and seeds needed stay in `Verdict.text`."""
    base = v.vs_baseline
    base_line = ""
    if base is not None:
        word = base.outcome.upper() + ((" better" if base.estimate > 0 else " worse") if base.outcome == SHOWN else "")
        if base.outcome == CANNOT_TELL:
            base_line = f"vs the no-KD student at {_short_size(base.a)}: cannot tell, {base.k} paired seeds"
        else:
            base_line = (f"vs the no-KD student at {_short_size(base.a)}: {word}, "
                         f"{_number(base, base.outcome == EQUIVALENT)}, {base.k} paired seeds")
    if v.gap is None:
        why = "one teacher size" if len(v.sizes) == 0 and v.largest_teacher else "no finished student runs"
        head = f"{v.method}: {_WORDS[CANNOT_TELL]} ({why})"
        return (f"{v.method}: {base_line}" if base_line else head), (head.split(": ", 1)[1] if base_line else "")
    g = v.gap
    if v.status == GAP:  # the size shown better than the largest (the most, if several)
        g = min((f for f in v.sizes if f.outcome == SHOWN and f.estimate < 0), key=lambda f: f.estimate, default=g)
    largest = _short_size(g.a)
    if g.outcome == CANNOT_TELL:
        number = f"{g.k} paired seeds"
    else:
        number = f"{_number(g, v.status == NO_GAP)}, {g.k} paired seeds"
    return f"{v.method}: {_WORDS[v.status]}, largest teacher ({largest}) minus {_short_size(g.b)}: {number}", base_line


def figure(data: CapacityData, result: Verdict | None = None) -> go.Figure:
    """Student and teacher accuracy vs teacher parameters (log x), baseline as a band.

    Each teacher size is a tick labelled with its size and parameter count
    (and the student's points carry the same label); error bars are 95%
    t-intervals over seeds and are never clipped: the y range holds every bar.
    """
    from .figstyle import finish, y_range_with_bars

    students = summarize(data.students, ["teacher_size"], "test_acc")
    students["teacher_params"] = students["teacher_size"].map(
        data.students.groupby("teacher_size")["teacher_params"].first())
    teachers = data.teachers.copy()
    use_params = bool(students["teacher_params"].notna().all()
                      and (teachers.empty or teachers["teacher_params"].notna().all()))
    xcol = "teacher_params" if use_params else "teacher_size"
    fig = go.Figure()

    def err(frame):
        return dict(type="data", symmetric=False, array=100 * (frame["high"] - frame["mean"]).fillna(0),
                    arrayminus=100 * (frame["mean"] - frame["low"]).fillna(0), visible=True, thickness=1.5)

    def tick(size, params):
        mark = " (imported)" if float(size) in data.imported else ""
        if use_params and params == params and params is not None:
            return f"size {size:g}{mark}<br>{_fmt_params(params)} params"
        return f"size {size:g}{mark}"

    base = mean_ci(data.baseline)
    extra = []
    if base.n:
        if base.n >= 2:
            fig.add_hrect(y0=100 * base.low, y1=100 * base.high, fillcolor="gray", opacity=0.15, line_width=0)
            extra += [100 * base.low, 100 * base.high]
        extra.append(100 * base.mean)
        # a legend entry for the band (the shape itself has none)
        fig.add_trace(go.Scatter(x=[None], y=[None], mode="lines", line=dict(dash="dot", color="gray", width=2),
                                 name=f"no-KD student: {100 * base.mean:.2f}%"
                                      + (" (band: 95% CI" if base.n >= 2 else " (") + f", n={base.n})"))
        fig.add_hline(y=100 * base.mean, line_dash="dot", line_color="gray")
    if not teachers.empty:
        t = teachers.sort_values(xcol)
        fig.add_trace(go.Scatter(x=t[xcol], y=100 * t["mean"], error_y=err(t), mode="lines+markers",
                                 name=f"teacher's own accuracy ({data.teacher_source})",
                                 line=dict(dash="dash", color="#7f7f7f"), marker=dict(symbol="square"),
                                 customdata=t[["teacher_size", "n"]],
                                 hovertemplate="teacher size %{customdata[0]}<br>%{y:.2f}%<br>n=%{customdata[1]}"
                                               "<extra></extra>"))
    s = students.sort_values(xcol)
    label = "mean ± 95% CI over confirm seeds" if data.source == "confirm" else "best search trial per size, one run"
    fig.add_trace(go.Scatter(
        x=s[xcol], y=100 * s["mean"], error_y=err(s), mode="lines+markers+text",
        name=f"{data.method} student ({label})", line=dict(width=3, color="#1f77b4"), marker=dict(size=9),
        text=[tick(z, p).replace("<br>", ", ") for z, p in zip(s["teacher_size"], s["teacher_params"])],
        textposition=["top right"] * (len(s) - 1) + ["top left"], textfont=dict(size=10, color="#1f77b4"),
        cliponaxis=False,
        customdata=s[["teacher_size", "n"]],
        hovertemplate="teacher size %{customdata[0]}<br>%{y:.2f}%<br>n=%{customdata[1]}<extra></extra>"))
    cols = list(dict.fromkeys(["teacher_size", xcol, "teacher_params"]))
    ticks = s[cols].drop_duplicates("teacher_size")
    if not teachers.empty:
        more = teachers[~teachers["teacher_size"].isin(ticks["teacher_size"])]
        ticks = pd.concat([ticks, more[cols]])
    ticks = ticks.sort_values(xcol)
    fig.update_xaxes(type="log", tickmode="array", tickvals=list(ticks[xcol]),
                     ticktext=[tick(z, p) for z, p in zip(ticks["teacher_size"], ticks["teacher_params"])],
                     title_text="teacher (size, parameters; log scale)" if use_params else "teacher size (log scale)")
    lo, hi = y_range_with_bars(fig, extra)
    fig.update_yaxes(range=[lo, hi + 0.04 * (hi - lo)], title_text="test accuracy (%) at best-val epoch")
    xs = [v for v in ticks[xcol] if v and v > 0]
    if xs:  # room for the outermost point labels
        fig.update_xaxes(range=[math.log10(min(xs)) - 0.3, math.log10(max(xs)) + 0.3])
    subtitle = f"verdict: {result.status}" if result is not None else None
    if data.imported:  # whose teachers this study did not train
        subtitle = "; ".join(filter(None, [subtitle, "imported teacher (weights from a file, not trained here): "
                                           "size " + ", ".join(f"{z:g}" for z in data.imported)]))
    return finish(fig, f"Capacity gap — {data.method}: student test accuracy vs teacher size (source: {data.source})",
                  subtitle,
                  legend_rows=2)


def comparison_figure(datas: list[CapacityData], methods: dict | None = None) -> go.Figure | None:
    """Every distillation method's student accuracy vs teacher size on one chart (None for fewer than 2).

    The capacity-gap question for the remedies: does DIST / logit standardisation /
    DKD / TAKD / ESKD keep the student improving (or flat) where Hinton KD falls
    off with larger teachers? And do the feature methods (FitNets, AT, SP, PKT,
    CRD, ReviewKD; dash-dot) suffer from the gap as logit methods do? One line per
    method (mean ± 95% CI over seeds from its own source, confirm or search), the
    teachers' own accuracy and the no-KD baseline band once (from the first
    method's data, which all share). `methods` are the facts the study recorded of
    its methods (``methods.json``): each line is named by its method's label and
    drawn by its kind (`KIND_LINES`), a plug-in's as a built-in's.
    """
    from .figstyle import finish, y_range_with_bars

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
        name = method_label(methods, d.method) + f" ({d.source})"
        line = dict(KIND_LINES[method_kind(methods, d.method)])
        fig.add_trace(go.Scatter(x=st[xcol], y=100 * st["mean"], error_y=err(st), mode="lines+markers",
                                 name=name, line=line,
                                 customdata=st[["teacher_size", "n"]],
                                 hovertemplate="size %{customdata[0]}<br>%{y:.2f}%<br>n=%{customdata[1]}"))
    fig.update_yaxes(range=y_range_with_bars(fig), title_text="test accuracy (%) at the selected epoch")
    ticks = pd.concat([st[["teacher_size", "teacher_params"]] for _, st in per_method]
                      + ([teachers[["teacher_size", "teacher_params"]]] if not teachers.empty else []))
    ticks = ticks.drop_duplicates("teacher_size").sort_values(xcol)  # every teacher size, with its parameters
    fig.update_xaxes(type="log", tickmode="array", tickvals=list(ticks[xcol]),
                     ticktext=[f"size {z:g}<br>{_fmt_params(p)} params" if use_params else f"size {z:g}"
                               for z, p in zip(ticks["teacher_size"], ticks["teacher_params"])],
                     title_text="teacher (size, parameters; log scale)" if use_params else "teacher size (log scale)")
    return finish(fig, "Capacity gap by method: student test accuracy vs teacher size",
                  "mean ± 95% CI over seeds; KD, the capacity-gap remedies and the feature methods (dash-dot) "
                  "side by side",
                  legend_rows=1 + len(fig.data) // 3)
