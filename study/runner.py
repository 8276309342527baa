"""Running a study: stages of Ray Tune experiments, resumable at any point.

Stages, in order (each one Ray Tune `Tuner` per experiment):
  teachers  one `scratch` trial per teacher size x seed not yet in the zoo
  baseline  the student trained alone (`scratch`), several seeds
  search    per method (and, with budget `stratified`, per teacher size):
            OptunaSearch (TPE) over the method's define-by-run space, ASHA
  confirm   the best configuration of each method x teacher size, chosen on
            validation accuracy, rerun with several seeds
then the report. Every experiment's name carries a hash of its definition;
a finished experiment leaves a marker (`stages/<name>.json`) and is skipped
on the next run, an interrupted one is restored with `Tuner.restore`
(searcher state included) — so `kdstudy resume` is simply running again.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import subprocess
import time
from dataclasses import dataclass, field
from pathlib import Path

os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")
os.environ.setdefault("TUNE_WARN_EXCESSIVE_EXPERIMENT_CHECKPOINT_SYNC_THRESHOLD_S", "0")
os.environ.setdefault("RAY_AIR_NEW_OUTPUT", "0")

import ray  # noqa: E402
from ray import tune  # noqa: E402

from trainables import storage  # noqa: E402
from trainables.config import size_key  # noqa: E402
from trainables.trainable import tune_trainable  # noqa: E402

from .progress import Progress  # noqa: E402
from .results import ParquetSink  # noqa: E402
from .spaces import make_space, method_params  # noqa: E402
from .spec import Spec  # noqa: E402
from .zoo import Zoo, teacher_jobs, teacher_table  # noqa: E402

log = logging.getLogger(__name__)
METRIC, MODE = "best_val_acc", "max"


def code_version() -> str:
    try:
        from importlib.metadata import version

        v = version("kdstudy")
    except Exception:
        v = "dev"
    try:
        rev = subprocess.run(["git", "rev-parse", "--short", "HEAD"], capture_output=True, text=True, timeout=5,
                             cwd=Path(__file__).resolve().parent.parent).stdout.strip()
    except Exception:
        rev = ""
    return f"{v}+{rev}" if rev else v


def init_ray(address: str | None = None) -> None:
    """Connect to a cluster (`auto`, `ray://...`) or start a local Ray; dashboard off by default."""
    if ray.is_initialized():
        return
    kwargs = {"log_to_driver": False}
    if address:
        ray.init(address=address, **kwargs)
    else:
        ray.init(include_dashboard=False, **kwargs)


def _digest(obj) -> str:
    return hashlib.sha256(json.dumps(obj, sort_keys=True, default=str).encode()).hexdigest()[:8]


@dataclass
class Experiment:
    """One Tuner: a stage's trials over a fixed base config."""

    stage: str
    label: str
    base: dict
    grid: list[dict] | None = None         # one trial per job (no searcher)
    space: dict | None = None              # searched parameters (OptunaSearch)
    constants: dict = field(default_factory=dict)
    trials: int = 0
    max_t: int = 1

    @property
    def name(self) -> str:
        # code_version is provenance (every row records it), not identity: a resume after a
        # commit, or from a checkout at another revision, must continue the same experiments
        base = {k: v for k, v in self.base.items() if k != "code_version"}
        ident = {"base": base, "grid": self.grid, "constants": self.constants, "trials": self.trials,
                 "space": {k: vars(v) for k, v in (self.space or {}).items()}}
        return f"{self.stage}-{self.label}-{_digest(ident)}"


class StudyRunner:
    def __init__(self, spec: Spec, progress: Progress | None = None, local: bool = True):
        self.spec = spec
        self.local = local  # a Ray started here (no autoscaler that could add GPU nodes later)
        self.root = spec.study_uri
        self.results_uri = storage.join(self.root, "results")
        self.tune_uri = storage.join(self.root, "tune")
        self.zoo = Zoo(storage.join(self.root, "zoo"))
        self.progress = progress or Progress()
        self.version = code_version()

    # ---------------------------------------------------------------- the plan
    def common_base(self, stage: str, method: str) -> dict:
        s = self.spec
        return {"study": s.name, "stage": stage, "method": method, "seed": 0, "dataset": s.dataset,
                "student": s.student, "train": dict(s.train), "runtime": dict(s.runtime), "hp": {},
                "code_version": self.version}

    def run(self) -> str:
        self.save_spec()
        self.run_teachers()
        self.run_baseline()
        best = self.run_search()
        self.run_confirm(best)
        return self.root

    def save_spec(self) -> None:
        storage.write_bytes(storage.join(self.root, "spec.json"), json.dumps(self.spec.raw, indent=1).encode())

    def run_teachers(self) -> None:
        s = self.spec
        if not s.trains_teachers:
            return
        missing = [j for j in teacher_jobs(s) if self.zoo.get(j["key"]) is None]
        if not missing:
            self.progress.say(f"teachers: all {len(teacher_jobs(s))} in the zoo, none retrained")
            return
        base = self.common_base("teachers", "scratch")
        base["role"] = "teacher"
        base["train"]["epochs"] = s.teachers["epochs"]
        jobs = [{"seed": j["seed"], "student": j["model"],
                 "export": {"uri": self.zoo.uri(j["key"]), "epochs": s.teachers["export_epochs"]}} for j in missing]
        self.run_experiment(Experiment("teachers", "ladder", base, grid=jobs, max_t=s.teachers["epochs"]))
        still = [j for j in missing if self.zoo.get(j["key"]) is None]
        if still:
            raise RuntimeError(f"{len(still)} teacher(s) failed to train: "
                               + ", ".join(f"size {j['size']} seed {j['seed']}" for j in still))

    def run_baseline(self) -> None:
        s = self.spec
        if s.baseline_seeds <= 0:
            return
        base = self.common_base("baseline", "scratch")
        self.run_experiment(Experiment("baseline", "scratch", base,
                                       grid=[{"seed": i} for i in range(s.baseline_seeds)], max_t=s.train["epochs"]))

    def method_base(self, stage: str, m) -> dict:
        s = self.spec
        base = self.common_base(stage, m.name)
        base["hp"] = {k: v for k, v in m.fixed.items() if k not in ("lr", "weight_decay")}
        if m.cls.needs_teacher or m.cls.online_teacher:
            base["hp"]["budget_mode"] = s.budget  # recorded in hparams_json for the capacity-gap chart
        for k in ("lr", "weight_decay"):
            if k in m.fixed:
                base["train"][k] = m.fixed[k]
        if m.cls.needs_teacher:
            base["teachers"] = teacher_table(s, self.zoo)
        if m.cls.online_teacher:
            opts = {k: v for k, v in s.teachers.items() if k not in ("sizes", "seeds", "epochs", "export_epochs")}
            base["teachers"] = {size_key(z): {**opts, "size": z} for z in m.teacher_sizes}
        if m.assistant_sizes:
            opts = {k: v for k, v in s.student.items() if k != "size"}
            base["assistants"] = {size_key(z): {**opts, "size": z} for z in m.assistant_sizes}
        return base

    def _max_t(self, m, base) -> int:
        gens = base["hp"].get("generations") or (m.cls.hparams["generations"].default
                                                 if "generations" in m.cls.hparams else 1)
        if m.name == "takd":
            gens = 2
        return int(base["train"]["epochs"]) * int(gens)

    def run_search(self) -> list[dict]:
        """Search every method; returns the best config per method x teacher size."""
        s = self.spec
        best: list[dict] = []
        for m in s.methods.values():
            base = self.method_base("search", m)
            uses_teacher = m.cls.needs_teacher or m.cls.online_teacher
            export_epochs = s.teachers["export_epochs"] if s.teachers else []
            if uses_teacher and s.budget == "stratified":
                per = []
                for size in m.teacher_sizes:
                    space = method_params(m, None, export_epochs)
                    exp = Experiment("search", f"{m.name}-t{size_key(size)}", base, space=space,
                                     constants={"teacher_size": size}, trials=m.trials, max_t=self._max_t(m, base))
                    per.extend(self.run_experiment(exp))
                results = per
            else:
                space = method_params(m, m.teacher_sizes if uses_teacher else None, export_epochs)
                exp = Experiment("search", m.name, base, space=space, trials=m.trials, max_t=self._max_t(m, base))
                results = self.run_experiment(exp)
            best.extend(_best_per_teacher(m.name, results))
        return best

    def run_confirm(self, best: list[dict]) -> None:
        s = self.spec
        if s.confirm_seeds <= 0 or not best:
            return
        for m in s.methods.values():  # one experiment per method: every best config x every seed
            mine = [b for b in best if b["method"] == m.name]
            if not mine:
                continue
            base = self.method_base("confirm", m)
            jobs = [{**{k: v for k, v in b["config"].items() if k != "seed"}, "seed": seed}
                    for b in mine for seed in range(s.confirm_seeds)]
            self.run_experiment(Experiment("confirm", m.name, base, grid=jobs, max_t=self._max_t(m, base)))

    # ---------------------------------------------------------------- one experiment
    def marker_uri(self, exp: Experiment) -> str:
        return storage.join(self.root, "stages", f"{exp.name}.json")

    def run_experiment(self, exp: Experiment) -> list[dict]:
        """Run (or restore, or skip if finished) one experiment; returns its trial summaries."""
        marker = self.marker_uri(exp)
        if storage.exists(marker):
            done = json.loads(storage.read_bytes(marker))
            self.progress.say(f"{exp.stage} {exp.label}: finished earlier ({len(done)} trials), skipped")
            return done
        s = self.spec
        trainable = tune.with_parameters(tune_trainable, base=exp.base)
        trainable = tune.with_resources(trainable, self.resources())
        exp_path = storage.join(self.tune_uri, exp.name)
        n = len(exp.grid) if exp.grid is not None else exp.trials
        self.progress.start_stage(exp.stage, exp.label, n)
        sink = ParquetSink(self.results_uri, exp.stage)
        if tune.Tuner.can_restore(_tune_path(exp_path)):
            self.progress.say(f"{exp.stage} {exp.label}: resuming an interrupted run")
            tuner = tune.Tuner.restore(_tune_path(exp_path), trainable=trainable, resume_unfinished=True,
                                       resume_errored=True)
        else:
            tuner = tune.Tuner(trainable, param_space=self.param_space(exp), tune_config=self.tune_config(exp),
                               run_config=tune.RunConfig(
                                   name=exp.name, storage_path=_tune_path(self.tune_uri), verbose=0,
                                   callbacks=[sink, self.progress.callback(exp.stage, exp.label)],
                                   failure_config=tune.FailureConfig(max_failures=s.max_failures),
                                   checkpoint_config=tune.CheckpointConfig(num_to_keep=2)))
        grid = tuner.fit()
        summaries = []
        for r in grid:
            if r.error is not None or not r.metrics:
                continue
            summaries.append({"trial_id": r.metrics.get("trial_id"), "config": _sampled(r.config),
                              METRIC: r.metrics.get(METRIC), "best_test_acc": r.metrics.get("best_test_acc")})
        failed = sum(1 for r in grid if r.error is not None)
        self.progress.end_stage(exp.stage, exp.label, len(summaries), failed)
        storage.write_bytes(marker, json.dumps(summaries, indent=1, default=str).encode())
        return summaries

    def resources(self) -> dict:
        res = {"cpu": self.spec.resources["cpu"]}
        gpu = self.spec.resources["gpu"]
        if gpu > 0:
            if self.local and ray.cluster_resources().get("GPU", 0) <= 0:
                self.progress.say(f"resources.gpu={gpu} but this machine's Ray has no GPU: trials run on CPU")
            else:
                res["gpu"] = gpu
        return res

    def param_space(self, exp: Experiment) -> dict | None:
        if exp.grid is not None:
            return {"job": tune.grid_search(exp.grid)}
        return None

    def tune_config(self, exp: Experiment) -> tune.TuneConfig:
        s = self.spec
        if exp.grid is not None:
            return tune.TuneConfig(num_samples=1, reuse_actors=True)
        from optuna.samplers import TPESampler
        from ray.tune.schedulers import ASHAScheduler
        from ray.tune.search.optuna import OptunaSearch

        sampler = TPESampler(seed=s.search_seed, n_startup_trials=max(2, exp.trials // 3))
        searcher = OptunaSearch(space=make_space(exp.space, exp.constants), metric=METRIC, mode=MODE,
                                sampler=sampler, storage=self.optuna_storage(exp), study_name=exp.name)
        scheduler = None
        if s.scheduler == "asha" and exp.max_t > s.grace_period:
            scheduler = ASHAScheduler(time_attr="training_iteration", max_t=exp.max_t,
                                      grace_period=s.grace_period, reduction_factor=3)
        return tune.TuneConfig(search_alg=searcher, scheduler=scheduler, metric=METRIC, mode=MODE,
                               num_samples=exp.trials, max_concurrent_trials=s.max_concurrent, reuse_actors=True)

    def optuna_storage(self, exp: Experiment):
        """A file-based Optuna storage beside the results (local studies), for optuna-dashboard."""
        if "://" in self.root and not self.root.startswith("file://"):
            return None
        import optuna

        path = Path(storage.resolve(self.root)[1]) / "optuna" / f"{exp.name}.journal"
        path.parent.mkdir(parents=True, exist_ok=True)
        return optuna.storages.JournalStorage(optuna.storages.journal.JournalFileBackend(str(path)))


def _tune_path(uri: str) -> str:
    return uri if "://" in uri else storage.resolve(uri)[1]


def _sampled(config: dict) -> dict:
    """The searcher's values of a trial config (without the stage's constants)."""
    return {k: v for k, v in config.items() if not k.startswith("_")}


def _best_per_teacher(method: str, results: list[dict]) -> list[dict]:
    """Best trial (by validation accuracy) per teacher size."""
    best: dict = {}
    for r in results:
        if r.get(METRIC) is None:
            continue
        size = r["config"].get("teacher_size")
        key = size_key(size) if size is not None else None
        if key not in best or r[METRIC] > best[key][METRIC]:
            best[key] = {**r, "method": method, "teacher_size": size}
    return list(best.values())


def run_study(spec: Spec, address: str | None = None, progress: Progress | None = None) -> str:
    init_ray(address)
    t0 = time.time()
    runner = StudyRunner(spec, progress, local=address is None)
    root = runner.run()
    runner.progress.say(f"study {spec.name} finished in {time.time() - t0:.0f} s; results in {runner.results_uri}")
    return root
