"""Which Optuna sampler finds better KD configurations at small budgets (no Ray).

    nice -n 15 python bench/samplers.py                       # the measurement in bench/RESULTS.md
    python bench/samplers.py --replicates 2 --budgets 3 --samplers tpe,qmc   # a quick look

Defaults: 8 replicates, 4 samplers (tpe, qmc, gp, random), budgets 3, 6, 12, 2 fresh
seeds per chosen configuration, MNIST-1D with 6,000 samples (4,320 train / 480 val,
the quickstart's 10,000 cut for CPU time: about 50 CPU-minutes, cached), 2 workers.

The setting is the quickstart's (studies/quickstart.yaml unless --spec):
its dataset, student, recipe and KD search space, distilling from one frozen
teacher of the ladder (--teacher-size, default the largest), trained once with
the spec's teacher recipe. Each search is what a study runs, without Ray: the
sampler from `study.samplers.make_sampler` (as `search.sampler` builds it),
Optuna's ask/tell with the study's define-by-run space (`study.spaces`), and
every trial trained for real by `trainables.loop.run_trial` on one search seed;
the search chooses its trial of best validation accuracy, as the confirm stage
does.

A search replicate r is a study with `search.seed: r`: trials train on seed r,
the sampler seed is `sampler_seed(r, "kd-t<size>")`. Every sampler at every
budget (3, 6, 12 trials) runs in every replicate; replicates are the unit of
the statistics, and samplers are compared paired by replicate.

A sampler is judged by the *true* quality of the configuration it chose: that
configuration retrained on fresh seeds (--eval-seeds, the same seeds for every
chosen configuration, 20000, 20001, ...), the mean of their best validation
accuracies. Never the noisy value it was chosen on, never test accuracy.

Printed per sampler x budget: the mean true quality over replicates with its
95% t-interval, the paired difference to today's TPE (mean and 95% interval
over replicates), the regret (best configuration found by any search minus
the chosen one), the spread of the chosen quality over replicates (the search
luck a verdict inherits), and how many searches resolved their winner (its
lead over the runner-up at least twice its binomial standard error on the
validation split).

Every training result is cached (JSON lines under --cache), keyed by teacher,
configuration and seed: a rerun, or a search that repeats a configuration,
costs nothing. --json writes every search and evaluation.
"""

from __future__ import annotations

import argparse
import glob
import hashlib
import json
import math
import os
import sys
import time
from concurrent.futures import ProcessPoolExecutor

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

EVAL_SEED0 = 20_000
_STATE: dict = {}


# --------------------------------------------------------------------------- training (in worker processes)

def _init_worker(setup: dict) -> None:
    import torch

    torch.set_num_threads(1)
    _STATE.clear()
    _STATE.update(setup)
    _STATE["cache"] = _load_cache(setup["cache"])
    _STATE["cache_file"] = os.path.join(setup["cache"], f"runs-{os.getpid()}.jsonl")


def _load_cache(folder: str) -> dict:
    cache = {}
    for path in glob.glob(os.path.join(folder, "runs-*.jsonl")):
        with open(path) as f:
            for line in f:
                if line.endswith("\n"):
                    rec = json.loads(line)
                    cache[rec["key"]] = rec["value"]
    return cache


def _key(params: dict, seed: int) -> str:
    return json.dumps([_STATE["teacher_key"], sorted((k, repr(v)) for k, v in params.items()), int(seed)])


def train(params: dict, seed: int) -> float:
    """Best validation accuracy of KD with `params` on `seed` (cached)."""
    from trainables.loop import LocalHooks, run_trial

    key = _key(params, seed)
    if key in _STATE["cache"]:
        return _STATE["cache"][key]
    cfg = json.loads(json.dumps(_STATE["trial"]))
    cfg["seed"] = int(seed)
    cfg["hp"].update(params)
    hooks = run_trial(cfg, LocalHooks())
    value = float(hooks.metrics[-1]["best_val_acc"])
    _STATE["cache"][key] = value
    with open(_STATE["cache_file"], "a") as f:
        f.write(json.dumps({"key": key, "value": value}) + "\n")
    return value


def run_search(task: tuple) -> dict:
    """One replicate of one sampler at every budget: {budget: [(params, value), ...]}."""
    import optuna

    from study.samplers import make_sampler, sampler_seed
    from study.spaces import define_space

    optuna.logging.set_verbosity(optuna.logging.ERROR)
    sampler, replicate, budgets = task
    params = _STATE["space"]
    seed = sampler_seed(replicate, _STATE["label"])
    out = {}
    t0 = time.time()
    for budget in budgets:
        study = optuna.create_study(direction="maximize", sampler=make_sampler(sampler, seed, budget, params))
        trials = []
        for _ in range(budget):
            trial = study.ask()
            define_space(trial, tuple(sorted(params.items())), {})
            value = train(dict(trial.params), replicate)
            study.tell(trial, value)
            trials.append((dict(trial.params), value))
        out[budget] = trials
    return {"sampler": sampler, "replicate": replicate, "searches": out, "seconds": time.time() - t0}


def run_eval(task: tuple) -> tuple:
    params, seed = task
    return json.dumps(sorted(params.items())), seed, train(params, seed)


# --------------------------------------------------------------------------- setup (driver)

def prepare(args) -> dict:
    """The trial config of the quickstart's KD (teacher trained once, cached) and its search space."""
    from study.graph import method_base
    from study.spec import load_spec
    from trainables.loop import LocalHooks, run_trial

    spec = load_spec(args.spec)
    kd = spec.methods["kd"]
    size = args.teacher_size if args.teacher_size is not None else spec.teacher_sizes[-1]
    os.makedirs(args.cache, exist_ok=True)
    dataset = {**spec.dataset, "root": os.path.join(args.cache, "data")}
    if args.num_samples:
        dataset["num_samples"] = args.num_samples
    tag = json.dumps({k: v for k, v in dataset.items() if k != "root"}, sort_keys=True)
    tdir = os.path.join(args.cache, f"teacher-{size}-{hashlib.sha256(tag.encode()).hexdigest()[:8]}")
    teacher_model = spec.teacher_model(size)
    if not os.path.exists(os.path.join(tdir, "meta.json")):
        print(f"training the teacher {teacher_model} ({spec.teachers['epochs']} epochs) ...", flush=True)
        run_trial({"study": "bench", "stage": "adhoc", "method": "scratch", "seed": 0, "role": "teacher",
                   "dataset": dataset, "student": teacher_model,
                   "train": {**spec.train, "epochs": spec.teachers["epochs"]}, "runtime": {"device": "cpu"},
                   "hp": {}, "export": {"uri": tdir}}, LocalHooks())
    meta = json.load(open(os.path.join(tdir, "meta.json")))
    teacher = {**teacher_model, "checkpoint": os.path.join(tdir, "model.pt"), "arch": meta["arch"],
               "params": meta["params"], "flops": meta["flops"], "acc": meta["acc"]}
    base = method_base(spec, "search", kd)
    trial = {"study": "bench", "stage": "adhoc", "method": "kd", "dataset": dataset, "student": spec.student,
             "teacher": teacher, "train": base["train"], "runtime": {"device": "cpu"}, "hp": dict(base["hp"])}
    from trainables.data import load_dataset

    val_size = int(len(load_dataset(dataset).val[1]))
    return {"trial": trial, "space": dict(kd.search), "label": f"kd-t{size}", "cache": args.cache,
            "teacher_key": f"{teacher_model}|{spec.teachers['epochs']}|{json.dumps(spec.train, sort_keys=True)}|{tag}",
            "val_size": val_size, "teacher_acc": meta["acc"], "teacher": teacher_model,
            "spec": args.spec, "size": size}


# --------------------------------------------------------------------------- statistics and the table

def t_interval(values, level=0.95):
    from analysis.stats import mean_ci

    ci = mean_ci(values, level)
    return ci.mean, ci.low, ci.high


def resolved(trials: list, n_val: int) -> tuple[float, float]:
    """(lead of the winner over the runner-up, its binomial SE), accuracies in [0, 1]."""
    vals = sorted((v for _, v in trials), reverse=True)
    if len(vals) < 2:
        return math.nan, math.nan
    p1, p2 = vals[0], vals[1]
    return p1 - p2, math.sqrt((p1 * (1 - p1) + p2 * (1 - p2)) / n_val)


def chosen(trials: list) -> dict:
    best = max(range(len(trials)), key=lambda i: (trials[i][1], -i))
    return trials[best][0]


def table(results: list, quality: dict, budgets: list, samplers: list, n_val: int) -> tuple[str, list]:
    import numpy as np

    reps = sorted({r["replicate"] for r in results})
    by = {(r["sampler"], r["replicate"]): r["searches"] for r in results}
    best_known = max(quality.values())
    q = {}
    for s in samplers:
        for b in budgets:
            for rep in reps:
                q[s, b, rep] = quality[json.dumps(sorted(chosen(by[s, rep][b]).items()))]
    lines = [f"{'sampler':8} {'trials':>6} {'true val acc % (95% CI)':>26} {'minus tpe (95% CI)':>24} "
             f"{'regret':>7} {'luck sd':>8} {'resolved':>9}"]
    rows = []
    for b in budgets:
        for s in samplers:
            vals = [100 * q[s, b, r] for r in reps]
            m, lo, hi = t_interval(vals)
            diff = [100 * (q[s, b, r] - q["tpe", b, r]) for r in reps] if "tpe" in samplers else []
            dm, dlo, dhi = t_interval(diff) if diff else (math.nan,) * 3
            regret = 100 * best_known - m
            sd = float(np.std(vals, ddof=1)) if len(vals) > 1 else math.nan
            res = [resolved(by[s, r][b], n_val) for r in reps]
            n_res = sum(1 for lead, se in res if lead >= 2 * se)
            rows.append({"sampler": s, "trials": b, "mean": m, "low": lo, "high": hi, "diff_tpe": dm,
                         "diff_low": dlo, "diff_high": dhi, "regret": regret, "luck_sd": sd,
                         "resolved": n_res, "replicates": len(reps)})
            dtxt = "—" if s == "tpe" else f"{dm:+.2f} [{dlo:+.2f}, {dhi:+.2f}]"
            lines.append(f"{s:8} {b:6d} {m:9.2f} [{lo:6.2f}, {hi:6.2f}]{'':3} {dtxt:>24} {regret:7.2f} "
                         f"{sd:8.2f} {n_res:>4d}/{len(reps):<4d}")
        lines.append("")
    return "\n".join(lines), rows


def _cpu() -> float:
    """CPU seconds of this process and its finished children (the worker pool)."""
    t = os.times()
    return t.user + t.system + t.children_user + t.children_system


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--spec", default=os.path.join(os.path.dirname(__file__), "..", "studies", "quickstart.yaml"))
    p.add_argument("--teacher-size", type=int, default=None)
    p.add_argument("--num-samples", type=int, default=6000, help="MNIST-1D samples (0: the spec's)")
    p.add_argument("--samplers", default="tpe,qmc,gp,random")
    p.add_argument("--budgets", default="3,6,12")
    p.add_argument("--replicates", type=int, default=8)
    p.add_argument("--eval-seeds", type=int, default=2)
    p.add_argument("--workers", type=int, default=2)
    p.add_argument("--cache", default=os.path.join(os.path.expanduser("~"), ".cache", "kdstudy-bench-samplers"))
    p.add_argument("--json", default=None, help="write every search and evaluation here")
    args = p.parse_args(argv)
    samplers = [s.strip() for s in args.samplers.split(",") if s.strip()]
    budgets = sorted(int(b) for b in args.budgets.split(","))
    t0, cpu0 = time.time(), _cpu()
    setup = prepare(args)
    print(f"setting: {args.spec}: student {setup['trial']['student']}, teacher {setup['teacher']} "
          f"(test acc {100 * setup['teacher_acc']:.1f}%), KD space {sorted(setup['space'])}, "
          f"recipe {setup['trial']['train']}, validation split {setup['val_size']} samples; "
          f"{args.replicates} replicates x {len(samplers)} samplers x budgets {budgets}, "
          f"{args.eval_seeds} fresh seeds per chosen configuration", flush=True)
    tasks = [(s, r, budgets) for r in range(args.replicates) for s in samplers]
    results = []
    with ProcessPoolExecutor(args.workers, initializer=_init_worker, initargs=(setup,)) as pool:
        for res in pool.map(run_search, tasks):
            results.append(res)
            print(f"  search {res['sampler']} replicate {res['replicate']}: {res['seconds']:.0f} s", flush=True)
        configs = {}
        for res in results:
            for trials in res["searches"].values():
                c = chosen(trials)
                configs[json.dumps(sorted(c.items()))] = c
        evals = [(c, EVAL_SEED0 + i) for c in configs.values() for i in range(args.eval_seeds)]
        print(f"evaluating {len(configs)} chosen configurations on {args.eval_seeds} fresh seeds ...", flush=True)
        per_config: dict = {}
        for key, seed, value in pool.map(run_eval, evals):
            per_config.setdefault(key, []).append(value)
    quality = {k: sum(v) / len(v) for k, v in per_config.items()}
    text, rows = table(results, quality, budgets, samplers, setup["val_size"])
    print()
    print(text)
    print(f"true val acc: the chosen configuration retrained on seeds {EVAL_SEED0}..{EVAL_SEED0 + args.eval_seeds - 1}"
          f" (mean best validation accuracy), mean over {args.replicates} search replicates; minus tpe: paired by "
          f"replicate; regret: best configuration any search found ({100 * max(quality.values()):.2f}%) minus the mean; "
          f"luck sd: SD over replicates of the chosen quality; resolved: winner's lead >= 2 binomial SE "
          f"(validation split of {setup['val_size']}). {time.time() - t0:.0f} s wall, {_cpu() - cpu0:.0f} s CPU.")
    if args.json:
        with open(args.json, "w") as f:
            json.dump({"setup": {k: v for k, v in setup.items() if k != "space"}, "space": sorted(setup["space"]),
                       "results": results, "quality": quality, "per_config": per_config, "rows": rows}, f,
                      indent=1, default=str)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
