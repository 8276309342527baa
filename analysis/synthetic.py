"""Synthetic results studies with a planted answer, for tests and demos of the report.

`write_study` writes a study directory in the real layout
(``<root>/<study>/results/<stage>/*.parquet``, via `rows_to_table`) whose
distilled students reach `student_means[teacher_size]` on average, so a
reader's verdict can be checked against what was planted. It follows the
results contract: search trials on search seeds (disjoint from the confirm
seeds; every third one stopped by the scheduler, status ``stopped``), the
no-KD student (stage ``baseline``) and the top `confirm_configs`
configurations of each teacher size (stage ``confirm``) on the same confirm
seeds, each configuration with its ``config_id``.

The noise model (also used by `draw_arms` for vectorised Monte-Carlo
calibration): the accuracy of a run of arm a on seed s is
``mean_a + seed_s + run_{a,s}`` where ``seed_s`` (SD `seed_sd`) is shared by
every arm on that seed (same initialisation and data order) and
``run_{a,s}`` is the arm's own run noise; its validation and test accuracies
add split noise of their own. The paired SD of two arms is then
sqrt(2 (run_sd^2 + split_sd^2)) and the correlation of val and test
deviations run_sd^2 / (run_sd^2 + split_sd^2).
"""

from __future__ import annotations

import hashlib
import json
import math
import pathlib
from datetime import datetime, timedelta, timezone

import numpy as np
import pyarrow.parquet as pq

from .schema import rows_to_table

_T0 = datetime(2025, 1, 1, tzinfo=timezone.utc)


def split_noise(paired_sd: float, val_test_corr: float) -> tuple[float, float]:
    """(run_sd, split_sd) giving paired SD `paired_sd` between two arms and val/test correlation `val_test_corr`."""
    per_arm = paired_sd ** 2 / 2
    return math.sqrt(val_test_corr * per_arm), math.sqrt((1 - val_test_corr) * per_arm)


def draw_arms(rng, reps: int, means, seeds: int = 5, seed_sd: float = 1.8, paired_sd: float = 1.0,
              val_test_corr: float = 0.8) -> tuple[np.ndarray, np.ndarray]:
    """Val and test accuracies (percent) of `reps` replicate studies, vectorised.

    means: array (..., C) of planted mean accuracies (percent) per arm and
    configuration; returns (val, test) of shape (reps, ..., C, seeds). The seed
    effect is shared by every arm and configuration of a replicate.
    """
    means = np.asarray(means, dtype=float)
    return draw_runs(rng, np.broadcast_to(means, (reps,) + means.shape), seeds, seed_sd, paired_sd, val_test_corr)


def draw_runs(rng, means, seeds: int = 5, seed_sd: float = 1.8, paired_sd: float = 1.0,
              val_test_corr: float = 0.8) -> tuple[np.ndarray, np.ndarray]:
    """As `draw_arms`, with means that differ per simulated study: means (reps, ..., C) -> (val, test)
    of shape (reps, ..., C, seeds); the seed effect is shared by everything of one study."""
    means = np.asarray(means, dtype=float)
    run_sd, sp_sd = split_noise(paired_sd, val_test_corr)
    shape = means.shape + (seeds,)
    seed = rng.normal(0.0, seed_sd, (means.shape[0],) + (1,) * (means.ndim - 1) + (seeds,))
    run = means[..., None] + seed + rng.normal(0.0, run_sd, shape)
    return run + rng.normal(0.0, sp_sd, shape), run + rng.normal(0.0, sp_sd, shape)


def search_luck(rng, shape, trials: int = 3, landscape: float = 1.0, search_noise: float = 1.0,
                top_k: int | None = None) -> np.ndarray:
    """How far below the best configuration the ones a search chooses are (points, >= 0), vectorised.

    Each of the search's `trials` configurations falls short of the best
    configuration by an exponential gap of mean `landscape` (most configurations
    near the best, a few far below: the shape of a KD landscape), is measured once
    with noise of SD `search_noise` (one seed on the validation split), and the
    search keeps the configuration measured best (or its `top_k` best, for
    confirmation). Returns the true gap of the kept one, shape `shape` (with
    `top_k`: shape + (top_k,), best measured first): the search luck a confirm
    stage inherits.
    """
    gaps = rng.exponential(landscape, tuple(shape) + (trials,))
    measured = -gaps + rng.normal(0.0, search_noise, gaps.shape)
    order = np.argsort(-measured, axis=-1)[..., :top_k or 1]
    kept = np.take_along_axis(gaps, order, axis=-1)
    return kept if top_k else kept[..., 0]


def _curve(final: float, epochs: int, rng, noise: float, final_val: float | None = None,
           final_test: float | None = None) -> list[tuple[float, float]]:
    """(val, test) per epoch: rises to `final` at the second-to-last epoch then dips slightly.

    With `final_val` / `final_test` the best-val epoch (the second-to-last)
    has exactly those accuracies.
    """
    peak = max(1, epochs - 1)
    out = []
    for e in range(1, epochs + 1):
        level = final * (1 - 0.4 * math.exp(-3 * e / peak)) / (1 - 0.4 * math.exp(-3))
        if e > peak:
            level -= 0.004
        val = min(1.0, level + rng.normal(0, noise / 4))
        test = min(1.0, level - 0.005 + rng.normal(0, noise / 4))
        if e == peak and final_val is not None:
            val, test = final_val, final_test
        elif final_val is not None:
            val = min(val, final_val - 0.001)
        out.append((val, test))
    return out


def _trial_rows(base: dict, final: float, epochs: int, rng, noise: float, status: str = "ok",
                final_val: float | None = None, final_test: float | None = None, **extra) -> list[dict]:
    rows = []
    best = -1.0
    for e, (val, test) in enumerate(_curve(final, epochs, rng, noise, final_val, final_test), start=1):
        new_best = val > best
        best = max(best, val)
        if not (new_best or e == epochs):
            test = None  # the test split is evaluated only where it can be reported
        rows.append({**base, **extra, "epoch": e, "status": status, "val_acc": val, "test_acc": test,
                     "train_acc": min(1.0, val + 0.05), "train_loss": 1 - val, "val_loss": 1 - val,
                     "test_loss": None if test is None else 1 - test, "epoch_time_s": 0.5, "total_time_s": 0.5 * e,
                     "timestamp": _T0 + timedelta(seconds=len(base["trial_id"]) + e),
                     "node": "127.0.0.1", "device": "cpu", "code_version": "synthetic"})
    return rows


def _write(study_dir: pathlib.Path, stage: str, rows: list[dict], name: str = "part-0.parquet") -> None:
    if not rows:
        return
    folder = study_dir / "results" / stage
    folder.mkdir(parents=True, exist_ok=True)
    pq.write_table(rows_to_table(rows), folder / name)


def _config_id(params: dict) -> str:
    return hashlib.sha1(json.dumps(params, sort_keys=True, default=str).encode()).hexdigest()[:12]


def write_study(root, study: str = "synthetic", *, student_means: dict[float, float],
                teacher_accs: dict[float, float] | None = None, baseline: float | None = 0.70,
                seeds: int = 3, search_trials: int | dict[float, int] = 4, epochs: int = 6,
                noise: float = 0.004, trikd: bool = False, multiexit: bool = False,
                budget_mode: str | None = "per_teacher_size", seed: int = 0, seed_sd: float = 0.018,
                confirm_configs: int = 2, val_test_corr: float = 0.8,
                baseline_lrs: tuple = (1e-3,)) -> pathlib.Path:
    """Write a synthetic study; return its directory.

    student_means: teacher size -> the distilled student's mean final accuracy
    (planted as the best configuration in stage ``confirm``, ``seeds`` confirm
    seeds each, and as the best of the ``search`` trials). teacher_accs:
    teacher size -> the teacher's accuracy. Accuracies are in [0, 1]; `noise`
    is the paired SD of two arms on one seed, `seed_sd` the SD of the seed
    effect shared by all arms (see the module docstring). Confirm seeds are
    0 .. seeds-1; search seeds start at 1000. The second confirmed
    configuration is planted 1 point below the best. `baseline_lrs`: one
    no-KD configuration per learning rate, each planted 0.5 points below the
    previous one.
    """
    rng = np.random.default_rng(seed)
    study_dir = pathlib.Path(root) / study
    sizes = sorted(student_means)
    teacher_accs = teacher_accs or {s: 0.75 + 0.05 * i for i, s in enumerate(sizes)}
    common = {"study": study, "dataset": "synthetic", "generation": 0, "student_family": "mlp",
              "student_arch": "mlp-16", "student_params": 5_000, "student_flops": 1e4,
              "lr": 1e-3, "weight_decay": 5e-4, "batch_size": 128.0, "epochs": float(epochs)}
    seed_effect = rng.normal(0.0, seed_sd, seeds)
    run_sd, sp_sd = split_noise(noise, val_test_corr)

    def confirm_acc(mean, s):
        """(val, test) at the best-val epoch of a confirm/baseline run on confirm seed s."""
        run = mean + seed_effect[s] + rng.normal(0, run_sd)
        return min(1.0, run + rng.normal(0, sp_sd)), min(1.0, run + rng.normal(0, sp_sd))

    def teacher(size):
        return {"teacher_family": "mlp", "teacher_arch": f"mlp-{size:g}", "teacher_params": int(1000 * size ** 2),
                "teacher_flops": 2000.0 * size ** 2, "teacher_size": float(size), "teacher_acc": teacher_accs[size]}

    def hp(**params):
        return json.dumps({"lr": 1e-3, "weight_decay": 5e-4, **params})

    rows = []
    for size in sizes:
        for s in range(seeds):
            base = {**common, **teacher(size), "stage": "teachers", "method": "scratch", "role": "teacher",
                    "trial_id": f"teacher_{size:g}_{s}", "seed": s, "student_family": None, "student_arch": None,
                    "student_params": None, "student_flops": None, "teacher_acc": None, "hparams_json": hp(seed=s),
                    "config_id": _config_id({"teacher": size})}
            rows += _trial_rows(base, teacher_accs[size] + rng.normal(0, noise), epochs, rng, noise)
    _write(study_dir, "teachers", rows)

    def write_baseline(stage_rows, n_epochs, tag):
        for j, lr in enumerate(baseline_lrs):
            cid = _config_id({"method": "scratch", "epochs": n_epochs, "lr": lr})
            mean = baseline - 0.005 * j
            for s in range(seeds):
                v, t = confirm_acc(mean, s)
                base = {**common, "stage": "baseline", "method": "scratch", "role": "student",
                        "epochs": float(n_epochs), "lr": lr, "trial_id": f"baseline{tag}_{j}_{s}", "seed": s,
                        "hparams_json": hp(seed=s, epochs=n_epochs, lr=lr), "config_id": cid}
                stage_rows += _trial_rows(base, mean, n_epochs, rng, noise, final_val=v, final_test=t)

    if baseline is not None:
        rows = []
        write_baseline(rows, epochs, "")
        if trikd:
            write_baseline(rows, 3 * epochs, "_long")
        _write(study_dir, "baseline", rows)

    rows, configs = [], {}
    temps, alphas = [1.0, 2.0, 4.0, 8.0], [0.1, 0.5, 0.9]
    for size in sizes:
        n = search_trials[size] if isinstance(search_trials, dict) else search_trials
        configs[size] = []
        for i in range(n):
            T, a = (4.0, 0.9) if i == 0 else (float(rng.choice(temps)), float(rng.choice(alphas)))
            penalty = 0.0 if i == 0 else 0.01 + 0.03 * abs(math.log2(T / 4)) / 2 + 0.02 * (0.9 - a)
            params = {"temperature": T, "alpha": a, "teacher_size": size}
            if budget_mode:
                params["budget_mode"] = budget_mode
            stopped = i % 3 == 2  # ASHA stops some early
            cid = _config_id({"method": "kd", **params, "i": i})
            base = {**common, **teacher(size), "stage": "search", "method": "kd", "role": "student",
                    "trial_id": f"kd_{size:g}_{i}", "seed": 1000 + i, "temperature": T, "alpha": a,
                    "hparams_json": hp(seed=1000 + i, **params), "config_id": cid}
            trial_epochs = epochs if not stopped else max(2, epochs // 2)
            rows += _trial_rows(base, student_means[size] - penalty, trial_epochs, rng, noise,
                                status="stopped" if stopped else "ok")
            if not stopped:
                configs[size].append((i, T, a, params, cid))
    _write(study_dir, "search", rows[: len(rows) // 2], "a.parquet")
    _write(study_dir, "search", rows[len(rows) // 2:], "b.parquet")

    rows = []
    for size in sizes:
        for rank, (i, T, a, params, cid) in enumerate(configs[size][:confirm_configs]):
            mean = student_means[size] - 0.01 * rank
            for s in range(seeds):
                v, t = confirm_acc(mean, s)
                base = {**common, **teacher(size), "stage": "confirm", "method": "kd", "role": "student",
                        "trial_id": f"confirm_kd_{size:g}_{i}_{s}", "seed": s, "temperature": T, "alpha": a,
                        "hparams_json": hp(seed=s, **params), "config_id": cid}
                rows += _trial_rows(base, mean, epochs, rng, noise, final_val=v, final_test=t)

    if trikd:
        size = sizes[-1]
        for aw in (0.5, 1.0):
            cid = _config_id({"method": "trikd", "anchor_weight": aw})
            for s in range(seeds):
                tid = f"trikd_{aw:g}_{s}"
                for g in range(3):
                    for role, acc in (("student", 0.72 + 0.01 * g * aw), ("teacher", 0.78 + 0.005 * g)):
                        v, t = confirm_acc(acc, s)
                        base = {**common, **teacher(size), "stage": "confirm", "method": "trikd", "role": role,
                                "trial_id": tid, "seed": s, "anchor_weight": aw, "mutual_weight": 1.0,
                                "temperature": 4.0, "generations": 3.0, "generation": g,
                                "hparams_json": hp(seed=s, anchor_weight=aw, generations=3), "config_id": cid}
                        rows += _trial_rows(base, acc, epochs, rng, noise, final_val=v, final_test=t)

    if multiexit:
        for method, gain in (("multiexit", 0.02), ("multiexit_ce", 0.0)):
            cid = _config_id({"method": method})
            for s in range(seeds):
                for x in range(3):
                    base = {**common, "stage": "confirm", "method": method, "role": "student",
                            "trial_id": f"{method}_{s}", "seed": s, "exit": x, "exit_flops": 1e4 * (x + 1),
                            "distill_weight": 0.5 if method == "multiexit" else None,
                            "hparams_json": hp(seed=s), "config_id": cid}
                    acc = 0.6 + 0.05 * x + (gain * (2 - x) / 2)
                    v, t = confirm_acc(acc, s)
                    rows += _trial_rows(base, acc, epochs, rng, noise, final_val=v, final_test=t)
    _write(study_dir, "confirm", rows)
    return study_dir


def summary_from_arrays(val, test, sizes, base_val=None, base_test=None, method: str = "kd",
                        epochs: float = 6.0, search_val=None, replicate: int = 0) -> "pd.DataFrame":
    """A trial summary (one row per trial at its best-val epoch, as `load.trial_summary` returns)
    holding given confirm accuracies, for checking the DataFrame path against `capacity_gap.decide`.

    val, test: (S, C, k) percent for teacher sizes `sizes` (ascending), C
    configurations (ids c0, c1, ... in that order) and confirm seeds 0..k-1;
    base_val/base_test: (k,) the no-KD student (one configuration). NaN = no
    finished run (the row is written with status ``failed``). `replicate`: the
    search replicate the rows belong to (experiment names as `study.graph` gives
    them, one search trial per size marking the method as searched); concatenate
    the summaries of several replicates (the baseline once) for a replicated study.
    """
    import pandas as pd

    from .schema import COLUMNS

    rows = []
    S, C, k = np.shape(val)

    def row(**kw):
        r = {c: None for c in COLUMNS}
        r.update(study="sim", dataset="synthetic", generation=0, role="student", epochs=epochs, epoch=int(epochs),
                 best_epoch=int(epochs), n_epochs=int(epochs), diverged=False)
        r.update(kw)
        return r

    rep = f"-rep{replicate}" if replicate else ""
    for i, size in enumerate(sizes):
        rows.append(row(stage="search", method=method, trial_id=f"search_{method}_{size:g}{rep}", seed=1000,
                        teacher_size=float(size), teacher_params=float(1000 * size ** 2), config_id=f"s{rep}",
                        status="ok", val_acc=0.5, test_acc=0.5, experiment=f"search-{method}-t{size:g}{rep}-0000"))
        for c in range(C):
            for s in range(k):
                ok = np.isfinite(val[i, c, s])
                rows.append(row(stage="confirm", method=method, trial_id=f"{method}_{size:g}{rep}_c{c}_{s}", seed=s,
                                teacher_size=float(size), teacher_params=float(1000 * size ** 2),
                                config_id=f"c{c}{rep}", status="ok" if ok else "failed",
                                val_acc=val[i, c, s] / 100 if ok else None,
                                test_acc=test[i, c, s] / 100 if ok else None,
                                experiment=f"confirm-{method}-t{size:g}{rep}-0000"))
    if base_val is not None:
        for s in range(k):
            rows.append(row(stage="baseline", method="scratch", trial_id=f"base_{s}", seed=s, config_id="b0",
                            status="ok", val_acc=base_val[s] / 100, test_acc=base_test[s] / 100))
    frame = pd.DataFrame(rows)
    for col in ("seed",):
        frame[col] = frame[col].astype("int64")
    for col in ("val_acc", "test_acc", "teacher_size", "teacher_params", "epochs", "generations", "exit",
                "teacher_acc", "lr", "weight_decay"):
        frame[col] = frame[col].astype(float)
    return frame
