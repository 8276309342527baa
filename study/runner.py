"""Running a study: its experiment graph, all ready experiments at once, on Ray.

`run_study(spec, root)`:
1. the study folder adopts the spec (a new study records it; an existing one
   must hold the same content, see `study.folder`) and the driver takes the
   study's lock (`study.lock`);
2. `study.graph.plan` gives the experiments and their dependencies;
3. every experiment whose dependencies are finished is launched as a Ray
   task (no resources; on the driver's node) that drives its own Tuner
   (`study.experiment`), so experiments of different methods and teacher
   sizes share the cluster, limited by its resources; `resources.max_experiments`
   caps how many run at once;
4. when a task ends, the driver verifies the experiment from study storage:
   every trial it owes has rows whose outcome is ok, stopped (by the
   scheduler) or diverged — a search also in its Optuna journal. Only then is
   the marker `stages/<name>.json` written (each trial with its results file's
   size and sha256). An experiment with failed trials is reported failed (with
   the errors), its dependents are not started, and the next run retries it.
   An interrupt (Ctrl-C) cancels the running tasks and writes no marker for them;
5. on a later run, a finished experiment counts as finished only while its
   results are what was verified: a trial whose file is missing or changed is
   trained again, and only it (`StudyRunner.check_results`).

Identity never depends on where the study lives (see `study.graph`), zoo
references are relative to the study folder, and nothing read back from
the folder can execute code: Parquet, JSON, Optuna journals and weights-only
checkpoints. `kdstudy resume PATH` is a run of the spec saved at PATH.
"""

from __future__ import annotations

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

from analysis.schema import TERMINAL_OK  # noqa: E402
from analysis.select import ranked  # noqa: E402
from trainables import storage  # noqa: E402
from trainables.config import size_key  # noqa: E402

from . import graph, tracking  # noqa: E402
from .experiment import METRIC, Launch, experiment_task  # noqa: E402
from .folder import StudyFolder  # noqa: E402
from .lock import StudyLock  # noqa: E402
from .admission import admits, demand_of, launch_order  # noqa: E402
from .progress import Board, Progress  # noqa: E402
from .results import (damaged_runs, damaged_teacher_text, first_line, read_trial,  # noqa: E402
                      read_trial_file, results_file, teacher_lost)
from .samplers import sampler_seed  # noqa: E402
from .spec import Spec  # noqa: E402
from .zoo import Zoo, stage_import, teacher_jobs, teacher_table  # noqa: E402

log = logging.getLogger(__name__)


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


def init_ray(address: str | None = None, num_cpus: int | None = None, log_dir: str | None = None,
             plugin_sources: list | tuple = ()) -> bool:
    """Connect to a cluster (`auto`, `ray://...`) or start a private local Ray: bound to
    127.0.0.1 only, token authentication on whatever the environment says (study.localray).
    The job ships kdstudy's packages and the study's plug-ins to every node, and no worker
    imports from the driver's working directory (`study.jobenv`). Returns False when Ray was
    already initialized in this process (it is used as it is)."""
    if ray.is_initialized():
        return False
    from . import jobenv

    with jobenv.init_kwargs(jobenv.job_env(plugin_sources)) as env:
        if address:
            ray.init(address=address, log_to_driver=False, logging_level=logging.WARNING, **env)
            return True
        from .localray import start_local_ray

        start_local_ray(num_cpus=num_cpus, log_dir=log_dir, logging_level=logging.WARNING, **env)
    return True


class ExperimentFailed(RuntimeError):
    pass


class StudyLockLost(RuntimeError):
    """This driver's lock was taken over by another driver."""


@dataclass
class Outcome:
    finished: list[str] = field(default_factory=list)
    failed: dict[str, str] = field(default_factory=dict)   # name -> reason
    blocked: dict[str, str] = field(default_factory=dict)  # name -> the failed dependency


class StudyRunner:
    def __init__(self, spec: Spec, root: str, progress: Progress | None = None, local: bool = True,
                 lock: StudyLock | None = None):
        self.spec = spec
        self.lock = lock
        self.folder = StudyFolder(root)
        self.root = self.folder.root
        self.local = local  # a Ray started here (no autoscaler that could add GPU nodes later)
        self.results_uri = storage.join(self.root, "results")
        self.zoo = Zoo(storage.join(self.root, "zoo"))
        self.progress = progress or Progress()
        self.version = code_version()
        self.exps = graph.plan(spec)
        self.by_name = {e.name: e for e in self.exps}
        self.board = None
        self.zoo_jobs = {j["key"]: j for j in teacher_jobs(spec)}
        self.zoo_content = {k: j["content"] for k, j in self.zoo_jobs.items()}
        self.repairs: dict[str, list[dict]] = {}  # search experiment -> its lost trials to train again
        self.preset_failures: dict[str, str] = {}  # experiment -> why it cannot run (found before it started)
        self.config_ids = self.folder.config_ids()  # "sampled" in a study begun by an older kdstudy
        self.tracking = tracking.resolve(getattr(spec, "tracking", None) or {}, self.root, spec.name)

    # ---------------------------------------------------------------- the graph
    def run(self) -> Outcome:
        outcome = Outcome()
        state = self.finished_earlier()
        for name, reason in self.preset_failures.items():
            self._fail(self.by_name[name], state, outcome, reason)
        skipped = sum(1 for v in state.values() if v == "done")
        if skipped:
            self.progress.say(f"{skipped} of {len(self.exps)} experiments finished earlier (verified), skipped")
        if self.tracking and skipped < len(self.exps):  # what the experiments' trackers share, made once here
            tracking.prepare(self.tracking)
        self.board = Board.options(**self._on_this_node()).remote()
        running: dict = {}  # ObjectRef -> (experiment name, its Launch)
        order = self.priority_order()
        cap = self.spec.resources.get("max_experiments")
        self._snapshot = {}
        try:
            while True:
                slots = self.slots()
                for e in order:
                    # the runner's policy (kdstudy plan simulates the same): ready experiments start in
                    # priority order while the running ones cannot fill the slots
                    if state[e.name] != "todo" or not admits(self.demand(running), slots, len(running), cap):
                        continue
                    bad = [d for d in e.deps if state[d] in ("failed", "blocked")]
                    if bad:
                        state[e.name] = "blocked"
                        outcome.blocked[e.name] = bad[0]
                        continue
                    if any(state[d] != "done" for d in e.deps):
                        continue
                    try:
                        launch = self.prepare(e)
                    except Exception as exc:
                        self._fail(e, state, outcome, f"{type(exc).__name__}: {exc}")
                        continue
                    if launch.kind == "grid" and not launch.jobs or launch.kind == "search" and launch.trials == 0:
                        self._settle(e, state, outcome)
                        continue
                    self.progress.say(f"{graph_label(e)}: started ({self._describe(launch)})")
                    ref = experiment_task.options(**self._on_this_node()).remote(launch)
                    running[ref] = (e.name, launch)
                    state[e.name] = "running"
                if not running:
                    break
                self.check_lock()
                ready, _ = ray.wait(list(running), num_returns=1, timeout=1.0)
                for ref in ready:
                    name, launch = running.pop(ref)
                    e = self.by_name[name]
                    try:
                        ray.get(ref)
                    except Exception as exc:  # the experiment's driver task itself failed
                        self._fail(e, state, outcome, _short(exc))
                        continue
                    self._settle(e, state, outcome)
                self._render([v[0] for v in running.values()])
        except BaseException:
            for ref in running:
                ray.cancel(ref, force=True, recursive=True)
            raise
        finally:
            self.progress.close()
        return outcome

    def check_lock(self) -> None:
        """Stop (cancelling what runs) once another driver has taken the study over: this one's
        heartbeat stalled for a whole lease, and two drivers must never write markers side by side."""
        if self.lock is not None and self.lock.lost:
            raise StudyLockLost(f"another driver took the study over ({self.lock.uri}); this one stops, "
                                f"leaving its running experiments unfinished")

    def finished_earlier(self) -> dict[str, str]:
        """"done" for each experiment whose marker covers every trial it owes now, whose results are
        still what was verified, and whose dependencies are done too; "todo" otherwise. A study
        extended with more seeds or search trials (`run --extend`) keeps its markers, but they no
        longer cover it: the experiment is run again for its new trials only, and a confirm whose
        search grew is run again after it (its top-k may have changed). A finished trial whose results
        file is damaged or missing is trained again (`check_results`)."""
        state = {e.name: "todo" for e in self.exps}
        markers = {e.name: self.folder.marker(e.name) for e in self.exps}
        lost = self.check_results(markers)
        for e in self.exps:  # plan order: dependencies first
            marker = markers[e.name]
            if e.name in self.preset_failures:
                state[e.name] = "failed"
                continue
            if marker is None or e.name in lost or any(state[d] != "done" for d in e.deps):
                continue
            have = {t.get("trial_key") for t in marker.get("trials", [])}
            try:
                covered = len(have) >= e.trials if e.kind == "search" else \
                    {j["_trial_key"] for j in self.grid_jobs(e)} <= have
            except Exception:  # what it owes cannot be known now: verify it again
                covered = False
            if covered:
                state[e.name] = "done"
        return state

    def check_results(self, markers: dict) -> dict[str, list[dict]]:
        """The trials of finished experiments whose results are no longer what was verified, by
        experiment; each is trained again, and nothing else is.

        A marker records each trial's results file with its size and sha256. A file that is missing,
        or whose size or checksum changed (a truncated copy, a damaged disk), is moved to
        `results/<stage>/_damaged/` (never read, never overwritten), its trial's checkpoint is removed
        (it would only restore the last epoch's rows) and the trial is flagged in the marker; a later
        run reruns flagged trials, continuing from their own new checkpoints. A trial is rerun under its
        own key, configuration and seed (a search trial outside Optuna, with its recorded parameters, so
        the search's recorded values and the top-k its confirm was built on stand; one the scheduler
        stopped is stopped again where it was). A teacher is never trained again: its zoo entry
        (sha256-verified) is what finished experiments distilled from, and a retrained one would
        differ. Its experiment fails with a line naming the file (`kdstudy run` names it before Ray
        starts, see `study.preflight`)."""
        from concurrent.futures import ThreadPoolExecutor

        todo = [(e, t) for e in self.exps if markers.get(e.name) for t in markers[e.name].get("trials", [])
                if not t.get("lost")]
        with ThreadPoolExecutor(max_workers=16) as pool:  # remote storage: one read per file, in parallel
            bad = list(pool.map(lambda et: damaged_runs(self.results_uri, et[0].stage, et[1]), todo))
        found: dict[str, list[tuple[dict, list[tuple[dict, str]]]]] = {}
        for (e, t), runs in zip(todo, bad):
            if runs:
                found.setdefault(e.name, []).append((t, runs))
        verified = {r.get("trial_key") for m in markers.values() if m for t in m.get("trials", [])
                    for r in (t.get("runs") or [t])}
        self._set_aside_unreadable(verified)
        lost: dict[str, list[dict]] = {}
        for e in self.exps:
            marker = markers.get(e.name)
            if not marker:
                continue
            damaged = found.get(e.name, [])
            if e.stage == "teachers":
                damaged = [(t, runs[0][1]) for t, runs in damaged if teacher_lost(t, runs[0][1])]
                if damaged:
                    t, why = damaged[0]
                    self.preset_failures[e.name] = damaged_teacher_text(e.stage, t["trial_key"], why)
                continue
            for t, runs in damaged:
                for run, why in runs:
                    self._set_aside(e, run["trial_key"], why)
                    run["lost"] = why  # (a trial's own flag when it is its one run)
                t["lost"] = runs[0][1]
            if damaged:
                self.folder.write_marker(e.name, marker)  # the flags survive an interrupted rerun
            flagged = [t for t in marker.get("trials", []) if t.get("lost")]
            if not flagged:
                continue
            lost[e.name] = flagged
            if e.kind != "search" or len(marker.get("trials", [])) < e.trials:
                continue  # a grid reruns its trials without rows; a search that grew (--extend) samples anew
            runs = [(t, r) for t in flagged for r in (t.get("runs") or [t]) if r.get("lost")]
            unknown = [r for t, r in runs if t.get("status") == "stopped" and not r.get("progress")]
            if unknown:  # a marker of an older kdstudy: where the scheduler stopped it is not recorded
                self.preset_failures[e.name] = (
                    f"results file results/{e.stage}/{unknown[0]['trial_key']}.parquet of a trial the scheduler "
                    f"stopped is not what was verified ({unknown[0]['lost']}), and its marker does not record "
                    f"where it stopped: restore the file from a copy of the study")
                continue
            # those not trained again yet (a rerun cut by an interrupt continues from its checkpoint)
            # (a damaged run of a k-seed search trial is trained again alone, on its own seed)
            self.repairs[e.name] = [{**t["config"], **({"seed": r["seed"]} if r is not t else {}),
                                     "_trial_key": r["trial_key"],
                                     **({"_stop_after": r["progress"]} if r.get("progress") else {})}
                                    for t, r in runs if not self._ended(e, r["trial_key"])]
        return lost

    def _set_aside_unreadable(self, verified: set) -> None:
        """An unfinished trial's results file that cannot be read (damaged outside kdstudy: its own writes
        are atomic) is set aside like a verified one, and the trial starts again from its beginning."""
        import pyarrow.fs as pafs

        fs, path = storage.resolve(self.results_uri)
        if fs.get_file_info(path).type != pafs.FileType.Directory:
            return
        for info in fs.get_file_info(pafs.FileSelector(path, recursive=True)):
            rel = info.path[len(path):].strip("/").split("/")
            if info.type != pafs.FileType.File or len(rel) != 2 or not rel[1].endswith(".parquet"):
                continue
            stage, key = rel[0], rel[1][:-len(".parquet")]
            owner = next((e for e in self.exps if e.stage == stage and key.startswith(e.name + "-")), None)
            if key in verified or owner is None:
                continue
            try:
                read_trial(self.results_uri, stage, key)
            except Exception as exc:  # pyarrow raises several types for a torn file
                self._set_aside(owner, key, f"it cannot be read ({first_line(exc)})", verified=False)

    def _ended(self, e: graph.Experiment, key: str) -> bool:
        try:
            rows = read_trial(self.results_uri, e.stage, key)
        except Exception:
            return False
        return bool(rows) and rows[-1].get("status") in TERMINAL_OK

    def _set_aside(self, e: graph.Experiment, key: str, why: str, verified: bool = True) -> None:
        """Move a damaged results file out of the results (kept for a look), drop its trial's checkpoint."""
        from trainables.trainable import checkpoint_uri

        uri = results_file(self.results_uri, e.stage, key)
        rel = f"results/{e.stage}/{key}.parquet"
        kept = ""
        if storage.exists(uri):
            stamp = time.strftime("%Y%m%dT%H%M%S", time.gmtime())
            dest = storage.join(self.results_uri, e.stage, "_damaged", f"{key}.{stamp}.parquet")
            fs, path = storage.resolve(uri)
            fs.create_dir(storage.resolve(dest)[1].rsplit("/", 1)[0], recursive=True)
            fs.move(path, storage.resolve(dest)[1])
            kept = f" (kept as results/{e.stage}/_damaged/{key}.{stamp}.parquet)"
        ckpt = checkpoint_uri(self.root, key)
        if storage.exists(ckpt):
            fs, path = storage.resolve(ckpt)
            fs.delete_file(path)
        if verified:
            self.progress.say(f"{graph_label(e)}: results file {rel} is not what was verified: {why}{kept}; "
                              f"its trial is trained again")
        else:
            self.progress.say(f"{graph_label(e)}: results file {rel} of an unfinished trial: {why}{kept}; "
                              f"that trial starts again from its first epoch")

    def priority_order(self) -> list[graph.Experiment]:
        """Experiments by their work plus the most work downstream of them (critical path first):
        when slots are scarce the chain that decides the study's end starts first."""
        from .plan import DurationModel

        try:
            works = DurationModel(self.spec).works(self.exps)
            cost = {n: sum(t.seconds for t in w.trials) for n, w in works.items()}
        except Exception:  # an estimate only: never a reason not to run
            cost = {e.name: 1.0 for e in self.exps}
        return launch_order(self.exps, cost)

    def slots(self) -> float:
        """Trials the cluster can run at once now (an autoscaler may add more later)."""
        res, per = ray.cluster_resources(), self.resources()
        slots = res.get("CPU", 1) / max(per.get("cpu", 1), 1e-9)
        if per.get("gpu"):
            slots = min(slots, res.get("GPU", 0) / per["gpu"])
        return max(1.0, slots)

    def demand(self, running: dict) -> float:
        """Trials the running experiments can still ask for (each at most max_concurrent at a time)."""
        total = 0.0
        for name, launch in running.values():
            st = self._snapshot.get(name)
            n = st.owed if st is not None and st.owed else (len(launch.jobs) if launch.kind == "grid"
                                                               else launch.trials * launch.seeds_per_trial)
            ended = (st.done + st.stopped + st.diverged + st.failed) if st is not None else 0
            running_now = len(st.running) if st is not None else 0
            total += demand_of(n, ended, running_now, self.spec.max_concurrent)
        return total

    def _render(self, running: list[str]) -> None:
        try:
            exps, lines = ray.get(self.board.snapshot.remote(), timeout=5)
        except Exception:
            return
        self._snapshot = exps
        self.progress.show(exps, running, lines)

    def _on_this_node(self) -> dict:
        """Experiment drivers and the board run beside this driver (they read the study folder)."""
        from ray.util.scheduling_strategies import NodeAffinitySchedulingStrategy

        node = ray.get_runtime_context().get_node_id()
        return {"scheduling_strategy": NodeAffinitySchedulingStrategy(node_id=node, soft=True)}

    def _describe(self, launch: Launch) -> str:
        n = launch.owed
        left = len(launch.jobs) if launch.kind == "grid" else launch.trials
        extra = f", {n - left} finished earlier" if left < n else ""
        return f"{n} trial(s){extra}"

    def _fail(self, e, state, outcome, reason: str) -> None:
        state[e.name] = "failed"
        outcome.failed[e.name] = reason
        self.progress.say(f"{graph_label(e)}: FAILED — {reason}")

    def _settle(self, e, state, outcome) -> None:
        """Verify a finished task's experiment from storage; marker only if every owed trial ended normally."""
        try:
            trials = self.verify(e)
        except ExperimentFailed as exc:
            self._fail(e, state, outcome, str(exc))
            return
        except Exception as exc:  # unreadable storage (a damaged file): this experiment fails, not the study
            self._fail(e, state, outcome, f"could not verify it: {type(exc).__name__}: {_short(exc)}")
            return
        self.check_lock()
        counts = {}
        for t in trials:
            counts[t["status"]] = counts.get(t["status"], 0) + 1
        self.folder.write_marker(e.name, {"stage": e.stage, "method": e.method, "label": e.label,
                                          "finished_at": time.time(), "counts": counts, "trials": trials})
        state[e.name] = "done"
        outcome.finished.append(e.name)
        ok = [t[METRIC] for t in trials if t.get(METRIC) is not None and t["status"] == "ok"]
        best = f", best single-run val {100 * max(ok):.1f}%" if ok else ""  # the status table averages seeds
        desc = ", ".join(f"{v} {k}" for k, v in sorted(counts.items()))
        self.progress.say(f"{graph_label(e)}: finished ({desc}{best})")

    # ---------------------------------------------------------------- one experiment
    def base(self, e: graph.Experiment) -> dict:
        """The experiment's constants plus what only this run knows: paths, runtime, zoo entries."""
        base = json.loads(json.dumps(e.base))
        base["runtime"] = {**self.spec.runtime, "gpu_fraction": self.spec.resources.get("gpu")}
        base["dataset"] = dict(self.spec.dataset)  # with its local root
        base["paths"] = {"root": self.root}
        base["code_version"] = self.version
        base["experiment"] = e.name
        if self.spec.plugin_sources:  # imported by every trial before it builds its method
            base["plugins"] = self.spec.plugin_sources
        if self.config_ids != "content":
            base["config_ids"] = self.config_ids
        if e.teacher_sizes:
            in_shape, classes = self.spec.shape
            base["teachers"] = teacher_table(self.spec, self.zoo, sizes=e.teacher_sizes, in_shape=in_shape,
                                             num_classes=classes)
        return base

    def launch(self, e: graph.Experiment, base: dict, **kw) -> Launch:
        s = self.spec
        return Launch(name=e.name, stage=e.stage, method=e.method, base=base, root=self.root,
                      resources=self.resources(), max_concurrent=s.max_concurrent, max_failures=s.max_failures,
                      max_t=e.max_t, scheduler=e.scheduler, grace_period=s.grace_period, search_seed=s.search_seed,
                      sampler=s.sampler, sampler_seed=sampler_seed(s.search_seed, e.label),
                      search_seeds=e.search_seeds, board=self.board, tracking=self.tracking, **kw)

    def prepare(self, e: graph.Experiment) -> Launch:
        base = self.base(e)
        if e.kind == "search" and self.repairs.get(e.name):  # lost trials only, outside Optuna
            return self.launch(e, base, kind="grid", jobs=self.repairs.pop(e.name), owed=e.trials)
        if e.kind == "search":
            return self.launch(e, base, kind="search", space=e.space, constants=e.constants, trials=e.trials,
                               owed=e.trials)
        jobs = self.grid_jobs(e)
        todo = [j for j in jobs if not self._done(e, j)]
        if e.method == graph.IMPORT:  # the weights file, fitted, into the zoo entry its trial evaluates
            in_shape, classes = self.spec.shape
            for job in todo:
                job["export"]["staged_sha256"], job["export"]["meta"]["source"] = stage_import(
                    self.zoo, self.zoo_jobs[job["_zoo_key"]], in_shape, classes)
        return self.launch(e, base, kind="grid", jobs=todo, owed=len(jobs))

    def grid_jobs(self, e: graph.Experiment) -> list[dict]:
        """Every job of a grid experiment, each with its `_trial_key`."""
        if e.stage == "teachers":
            jobs = []
            for j in e.jobs:
                job = {k: v for k, v in j.items() if k != "_zoo_key"}
                job["export"] = {"uri": self.zoo.uri(j["_zoo_key"]),
                                 "epochs": [] if e.method == graph.IMPORT else self.spec.teachers["export_epochs"],
                                 # meta.json records what its key hashes (the entry proves which it is)
                                 "meta": {"key_content": self.zoo_content[j["_zoo_key"]]}}
                job["_trial_key"] = graph.trial_key(e.name, {k: v for k, v in j.items() if k != "export"})
                job["_zoo_key"] = j["_zoo_key"]
                jobs.append(job)
            return jobs
        configs: list[dict] = [dict(c) for c in e.extra_jobs]  # the baseline's variants; a confirm without search
        if e.from_search:
            configs += self.top_configs(e)
        jobs = []
        for conf in configs:
            n = conf.pop("_seeds", len(e.seeds))  # a baseline variant needed on fewer seeds
            for seed in e.seeds[:n]:
                job = {**conf, "seed": seed}
                job["_trial_key"] = graph.trial_key(e.name, job)
                jobs.append(job)
        return jobs

    def top_configs(self, e: graph.Experiment) -> list[dict]:
        """The top-k configurations of the experiment's search, chosen on validation accuracy
        (per teacher size for a joint search) by `analysis.select.ranked`. Scheduler-stopped trials
        are never chosen."""
        marker = self.folder.marker(e.from_search)
        if marker is None:
            raise ExperimentFailed(f"its search {e.from_search} is not finished")
        trials = [t for t in marker["trials"] if t["status"] == "ok" and t.get(METRIC) is not None]
        groups: dict = {}
        for t in trials:
            size = t["config"].get("teacher_size") if e.per_teacher_size else None
            groups.setdefault(None if size is None else size_key(size), []).append(t)
        chosen = []
        for group in groups.values():  # analysis's selection rule: best mean val first, ties by key
            order = ranked([t[METRIC] for t in group], [t["trial_key"] for t in group])
            chosen += [{k: v for k, v in group[i]["config"].items() if k not in ("seed", "_trial_key")}
                       for i in order[:e.top_k]]
        if not chosen:
            raise ExperimentFailed(f"its search {e.from_search} has no trial that trained to the end to confirm")
        return chosen

    def _done(self, e: graph.Experiment, job: dict) -> bool:
        if e.stage == "teachers" and self.zoo.get(job["_zoo_key"]) is not None:
            return True
        rows = read_trial(self.results_uri, e.stage, job["_trial_key"])
        return bool(rows) and rows[-1].get("status") in TERMINAL_OK

    def verify(self, e: graph.Experiment) -> list[dict]:
        """Every trial the experiment owes, with its outcome; raises ExperimentFailed otherwise."""
        if e.kind == "search":
            return self._verify_search(e)
        trials, problems = [], []
        for job in self.grid_jobs(e):
            key = job["_trial_key"]
            if e.stage == "teachers" and self.zoo.get(job["_zoo_key"]) is not None:
                if e.method == graph.IMPORT:  # its weights, architecture and identity, before any use
                    try:
                        self.check_imported(job)
                    except Exception as exc:
                        problems.append((key, "failed", str(exc)))
                        continue
                trials.append({"trial_key": key, "config": _public(job), "status": "ok",
                               "file": _file_of(self.results_uri, e.stage, key)})
                continue
            rows, info = read_trial_file(self.results_uri, e.stage, key)
            status = rows[-1].get("status") if rows else None
            if status not in TERMINAL_OK:
                problems.append((key, status, (rows[-1].get("error") if rows else None)))
                continue
            if e.stage == "teachers":  # it ended, yet there is no complete zoo entry
                problems.append((key, "failed", "its loss diverged (NaN): no weights for the zoo; lower the "
                                 "teachers' learning rate" if status == "diverged"
                                 else "evaluated, but its zoo entry is incomplete" if e.method == graph.IMPORT
                                 else "trained, but its zoo entry is incomplete"))
                continue
            trials.append({"trial_key": key, "config": _public(job), "status": status,
                           METRIC: _best_val(rows), "file": info})
        if problems:
            raise ExperimentFailed(_problem_text(problems, len(trials) + len(problems)))
        return trials

    def check_imported(self, job: dict) -> None:
        """An imported teacher's completed entry: the entry of its key (sha256 of its weights, their fit
        to its architecture), with the accuracies its evaluation measured."""
        meta = self.zoo.get(job["_zoo_key"])
        in_shape, classes = self.spec.shape
        self.zoo.verify(meta, in_shape, classes, job=self.zoo_jobs[job["_zoo_key"]])
        if meta.get("acc") is None or meta.get("origin") != "imported":
            raise ExperimentFailed(f"zoo entry {self.zoo.uri(job['_zoo_key'])} holds no evaluation of the "
                                   f"imported teacher")

    def _verify_search(self, e: graph.Experiment) -> list[dict]:
        from optuna.trial import TrialState

        from .experiment import Journal, latest_trials, load_study, sub_keys

        journal = Journal(self.root, e.name)
        try:
            latest = latest_trials(load_study(journal, e.name), e.name)
        finally:
            journal.close(write_back=False)  # read only; a remote journal's local copy is removed
        trials, problems = [], []
        for key, t in sorted(latest.items(), key=lambda kv: kv[1].number):
            # a search trial of k seeds is k runs, each with its rows under its own key
            subs = sub_keys(key, e.seeds_per_trial)
            runs = [read_trial_file(self.results_uri, e.stage, sub) for sub in subs]
            statuses = [rows[-1].get("status") if rows else None for rows, _ in runs]
            bad = next((i for i, st in enumerate(statuses) if st not in TERMINAL_OK), None)
            if t.state not in (TrialState.COMPLETE, TrialState.PRUNED) or bad is not None:
                status = statuses[bad] if bad is not None else statuses[0]
                rows = runs[bad if bad is not None else 0][0]
                problems.append((key, "failed" if t.state == TrialState.FAIL or status == "failed" else status,
                                 rows[-1].get("error") if rows else None))
                continue
            status = "stopped" if "stopped" in statuses else ("diverged" if "diverged" in statuses else "ok")
            entry = {"trial_key": key, "config": {**t.params, **e.constants}, "status": status,
                     METRIC: t.value if t.state == TrialState.COMPLETE else None}
            if len(subs) == 1:
                entry["file"] = runs[0][1]
                if status == "stopped":  # where the scheduler stopped it: a rerun stops there too
                    entry["progress"] = _progress(runs[0][0])
            else:  # each run's file, seed and stop, so that a damaged run is trained again alone
                entry["runs"] = [{"trial_key": sub, "seed": seed, "file": info,
                                  **({"progress": _progress(rows)} if st == "stopped" else {})}
                                 for sub, seed, (rows, info), st in zip(subs, e.search_seeds, runs, statuses)]
            trials.append(entry)
        if problems:
            raise ExperimentFailed(_problem_text(problems, len(trials) + len(problems)))
        if len(trials) < e.trials:
            raise ExperimentFailed(f"{len(trials)} of {e.trials} trials finished (interrupted)")
        return trials

    def resources(self) -> dict:
        if getattr(self, "_resources", None) is not None:
            return self._resources
        res = {"cpu": self.spec.resources["cpu"]}
        gpu = self.spec.resources["gpu"]
        if gpu > 0:
            if self.local and ray.cluster_resources().get("GPU", 0) <= 0:
                self.progress.say(f"resources.gpu={gpu} but this machine's Ray has no GPU: trials run on CPU")
            else:
                res["gpu"] = gpu
        self._resources = res
        return res


def graph_label(e: graph.Experiment) -> str:
    return f"{e.stage} {e.label}"


def _public(job: dict) -> dict:
    return {k: v for k, v in job.items() if not k.startswith("_") and k != "export"}


def _best_val(rows: list[dict]) -> float | None:
    """Best validation accuracy of the trained model's reported result (student, final exit)."""
    role = "teacher" if rows and rows[0].get("stage") == "teachers" else "student"
    mine = [r for r in rows if r.get("role") == role and r.get("val_acc") is not None]
    if not mine:
        return None
    last_exit = max((r["exit"] for r in mine if r.get("exit") is not None), default=None)
    mine = [r for r in mine if r.get("exit") == last_exit]
    return max(r["val_acc"] for r in mine)


def _progress(rows: list[dict]) -> int | None:
    """Epochs a trial trained over all its generations (the loop's `progress`), from its rows."""
    best = None
    for r in rows:
        if r.get("epoch") is None:
            continue
        per_gen = r.get("epochs") or 0
        p = int(r.get("generation") or 0) * int(per_gen) + int(r["epoch"])
        best = p if best is None else max(best, p)
    return best


def _file_of(results_uri: str, stage: str, key: str) -> dict | None:
    """What a marker records of a trial's results file, without parsing it (None: no file)."""
    from .results import file_record

    uri = results_file(results_uri, stage, key)
    if not storage.exists(uri):
        return None
    return file_record(stage, key, storage.read_bytes(uri))


def _problem_text(problems, total) -> str:
    failed = [p for p in problems if p[1] == "failed"]
    unfinished = [p for p in problems if p[1] != "failed"]
    parts = []
    if failed:
        err = next((p[2] for p in failed if p[2]), "no error recorded")
        parts.append(f"{len(failed)} of {total} trials failed (last error: {err})")
    if unfinished:
        parts.append(f"{len(unfinished)} of {total} trials unfinished")
    return "; ".join(parts)


def _short(exc: BaseException) -> str:
    text = str(exc).strip().splitlines()
    return (text[-1] if text else type(exc).__name__)[:500]


def _record_dataset(folder: StudyFolder, spec: Spec) -> None:
    """The dataset's facts beside the spec, for the report (the preflight has already read them)."""
    from trainables.data import dataset_facts

    try:
        folder.record_dataset(dataset_facts(spec.dataset).to_json())
    except Exception as exc:  # a description only: never the reason a study does not run
        log.warning("dataset facts not recorded: %s", exc)


def _record_methods(folder: StudyFolder, spec: Spec) -> None:
    """The facts of the study's methods (and of its no-KD baseline) beside the spec, for the report:
    what it names and groups them by, read from their registry entries, plug-ins' as built-ins'."""
    from trainables.methods import get_method

    try:
        folder.record_methods({name: get_method(name).facts() for name in ["scratch", *spec.methods]})
    except Exception as exc:  # a description only: never the reason a study does not run
        log.warning("method facts not recorded: %s", exc)


def run_study(spec: Spec, root: str | None = None, address: str | None = None, progress: Progress | None = None,
              extend: bool = False, num_cpus: int | None = None) -> tuple[str, Outcome]:
    """Run (or continue) the study at `root` (default: the spec's storage/name)."""
    folder = StudyFolder(root or spec.study_uri)
    lock = StudyLock(folder.root)
    lock.acquire()  # before the spec is recorded: a refused second driver leaves no trace
    try:
        folder.adopt(spec, extend=extend, version=code_version())
        _record_dataset(folder, spec)
        _record_methods(folder, spec)
        local = storage.local_path(folder.root)
        logs = None if local is None else os.path.join(local, "logs", "ray")
        init_ray(address, num_cpus=num_cpus, log_dir=logs, plugin_sources=spec.plugin_sources)
        t0 = time.time()
        runner = StudyRunner(spec, folder.root, progress, local=address is None, lock=lock)
        outcome = runner.run()
        took = time.time() - t0
        if outcome.failed or outcome.blocked:
            runner.progress.say(f"study {spec.name} stopped after {took:.0f} s (this run, from Ray ready): "
                                f"{len(outcome.failed)} experiment(s) failed, {len(outcome.blocked)} not started "
                                "because of them")
        else:
            runner.progress.say(f"study {spec.name} finished in {took:.0f} s (this run, from Ray ready; `kdstudy "
                                f"status` gives the study's span over all its runs); results in {runner.results_uri}")
        return folder.root, outcome
    finally:
        lock.release()
