"""Synthetic results studies with a planted answer, for tests and demos of the report.

`write_study` writes a study directory in the real layout
(``<root>/<study>/results/<stage>/*.parquet``, via `rows_to_table`) whose
distilled students reach `student_means[teacher_size]` on average, so a
reader's verdict can be checked against what was planted.
"""

from __future__ import annotations

import json
import math
import pathlib
from datetime import datetime, timedelta, timezone

import numpy as np
import pyarrow.parquet as pq

from .schema import rows_to_table

_T0 = datetime(2025, 1, 1, tzinfo=timezone.utc)


def _curve(final: float, epochs: int, rng, noise: float) -> list[tuple[float, float]]:
    """(val, test) per epoch: rises to `final` at the second-to-last epoch then dips slightly."""
    peak = max(1, epochs - 1)
    out = []
    for e in range(1, epochs + 1):
        level = final * (1 - 0.4 * math.exp(-3 * e / peak)) / (1 - 0.4 * math.exp(-3))
        if e > peak:
            level -= 0.004
        val = min(1.0, level + rng.normal(0, noise / 4))
        test = min(1.0, level - 0.005 + rng.normal(0, noise / 4))
        out.append((val, test))
    return out


def _trial_rows(base: dict, final: float, epochs: int, rng, noise: float, **extra) -> list[dict]:
    rows = []
    for e, (val, test) in enumerate(_curve(final, epochs, rng, noise), start=1):
        rows.append({**base, **extra, "epoch": e, "status": "ok", "val_acc": val, "test_acc": test,
                     "train_acc": min(1.0, val + 0.05), "train_loss": 1 - val, "val_loss": 1 - val,
                     "test_loss": 1 - test, "epoch_time_s": 0.5, "total_time_s": 0.5 * e,
                     "timestamp": _T0 + timedelta(seconds=len(base["trial_id"]) + e),
                     "node": "127.0.0.1", "device": "cpu", "code_version": "synthetic"})
    return rows


def _write(study_dir: pathlib.Path, stage: str, rows: list[dict], name: str = "part-0.parquet") -> None:
    if not rows:
        return
    folder = study_dir / "results" / stage
    folder.mkdir(parents=True, exist_ok=True)
    pq.write_table(rows_to_table(rows), folder / name)


def write_study(root, study: str = "synthetic", *, student_means: dict[float, float],
                teacher_accs: dict[float, float] | None = None, baseline: float | None = 0.70,
                seeds: int = 3, search_trials: int | dict[float, int] = 4, epochs: int = 6,
                noise: float = 0.004, trikd: bool = False, multiexit: bool = False,
                budget_mode: str | None = "per_teacher_size", seed: int = 0) -> pathlib.Path:
    """Write a synthetic study; return its directory.

    student_means: teacher size -> the distilled student's mean final accuracy
    (planted in stage ``confirm``, ``seeds`` runs each, and as the best of the
    ``search`` trials). teacher_accs: teacher size -> the teacher's accuracy.
    """
    rng = np.random.default_rng(seed)
    study_dir = pathlib.Path(root) / study
    sizes = sorted(student_means)
    teacher_accs = teacher_accs or {s: 0.75 + 0.05 * i for i, s in enumerate(sizes)}
    common = {"study": study, "dataset": "synthetic", "generation": 0, "student_family": "mlp",
              "student_arch": "mlp-16", "student_params": 5_000, "student_flops": 1e4,
              "lr": 1e-3, "weight_decay": 5e-4, "batch_size": 128.0, "epochs": float(epochs)}

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
                    "student_params": None, "student_flops": None, "teacher_acc": None, "hparams_json": hp(seed=s)}
            rows += _trial_rows(base, teacher_accs[size] + rng.normal(0, noise), epochs, rng, noise)
    _write(study_dir, "teachers", rows)

    if baseline is not None:
        rows = []
        for s in range(seeds):
            base = {**common, "stage": "baseline", "method": "scratch", "role": "student",
                    "trial_id": f"baseline_{s}", "seed": s, "hparams_json": hp(seed=s)}
            rows += _trial_rows(base, baseline + rng.normal(0, noise), epochs, rng, noise)
        _write(study_dir, "baseline", rows)

    rows, best = [], {}
    temps, alphas = [1.0, 2.0, 4.0, 8.0], [0.1, 0.5, 0.9]
    for size in sizes:
        n = search_trials[size] if isinstance(search_trials, dict) else search_trials
        for i in range(n):
            T, a = (4.0, 0.9) if i == 0 else (float(rng.choice(temps)), float(rng.choice(alphas)))
            penalty = 0.0 if i == 0 else 0.01 + 0.03 * abs(math.log2(T / 4)) / 2 + 0.02 * (0.9 - a)
            params = {"temperature": T, "alpha": a, "teacher_size": size}
            if budget_mode:
                params["budget_mode"] = budget_mode
            base = {**common, **teacher(size), "stage": "search", "method": "kd", "role": "student",
                    "trial_id": f"kd_{size:g}_{i}", "seed": 0, "temperature": T, "alpha": a,
                    "hparams_json": hp(seed=0, **params)}
            trial_epochs = epochs if i % 3 != 2 else max(2, epochs // 2)  # ASHA stops some early
            rows += _trial_rows(base, student_means[size] - penalty, trial_epochs, rng, noise)
            if i == 0:  # the planted best configuration
                best[size] = (T, a, params)
    _write(study_dir, "search", rows[: len(rows) // 2], "a.parquet")
    _write(study_dir, "search", rows[len(rows) // 2:], "b.parquet")

    rows = []
    for size in sizes:
        T, a, params = best[size]
        for s in range(seeds):
            base = {**common, **teacher(size), "stage": "confirm", "method": "kd", "role": "student",
                    "trial_id": f"confirm_kd_{size:g}_{s}", "seed": s, "temperature": T, "alpha": a,
                    "hparams_json": hp(seed=s, **params)}
            rows += _trial_rows(base, student_means[size] + rng.normal(0, noise), epochs, rng, noise)
    _write(study_dir, "confirm", rows)

    if trikd:
        rows, size = [], sizes[-1]
        for aw in (0.5, 1.0):
            for s in range(seeds):
                tid = f"trikd_{aw:g}_{s}"
                for g in range(3):
                    for role, acc in (("student", 0.72 + 0.01 * g * aw), ("teacher", 0.78 + 0.005 * g)):
                        base = {**common, **teacher(size), "stage": "trikd", "method": "trikd", "role": role,
                                "trial_id": tid, "seed": s, "anchor_weight": aw, "mutual_weight": 1.0,
                                "temperature": 4.0, "generations": 3.0, "generation": g,
                                "hparams_json": hp(seed=s, anchor_weight=aw, generations=3)}
                        rows += _trial_rows(base, acc + rng.normal(0, noise), epochs, rng, noise)
        _write(study_dir, "trikd", rows)

    if multiexit:
        rows = []
        for method, gain in (("multiexit", 0.02), ("multiexit_ce", 0.0)):
            for s in range(seeds):
                for x in range(3):
                    base = {**common, "stage": "multiexit", "method": method, "role": "student",
                            "trial_id": f"{method}_{s}", "seed": s, "exit": x, "exit_flops": 1e4 * (x + 1),
                            "distill_weight": 0.5 if method == "multiexit" else None,
                            "hparams_json": hp(seed=s)}
                    acc = 0.6 + 0.05 * x + (gain * (2 - x) / 2)
                    rows += _trial_rows(base, acc + rng.normal(0, noise), epochs, rng, noise)
        _write(study_dir, "multiexit", rows)
    return study_dir
