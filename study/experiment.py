"""Driving one experiment's Ray Tune `Tuner` (run inside a Ray task, one per experiment).

The driver (`study.runner`) hands `run_launch` a `Launch`: the experiment's
resolved constants, its grid jobs still to run (each with its `_trial_key`)
or its search budget, and where the study lives. Several of these tasks run
at once, each with its own Tuner, so all ready experiments share the cluster.

Nothing Tune writes is ever read back: every attempt starts a fresh Tuner
in a private local folder (never on study storage, never restored). What
must survive lives in study storage in forms that cannot run code:
Parquet rows (`study.results`), weights-only checkpoints
(`trainables.trainable`), and the Optuna study of a search as an Optuna
journal (JSON lines). On a new attempt, a search's journal is reconciled
first: trials left RUNNING by an interrupt, or FAILed, are re-queued with
the same parameters and the same trial key (so they continue from their
checkpoints), and only the trials still owed are sampled.
"""

from __future__ import annotations

import logging
import os
import shutil
import tempfile
from dataclasses import dataclass, field
from pathlib import Path

import ray

from trainables import storage

log = logging.getLogger(__name__)

METRIC, MODE = "best_val_acc", "max"


@dataclass
class Launch:
    """Everything a task needs to run one experiment (picklable, no paths in the identity)."""

    name: str
    stage: str
    method: str
    kind: str                       # grid | search
    base: dict                      # resolved constants (teachers table, paths, runtime)
    root: str                       # the study folder (local path or URI)
    jobs: list[dict] = field(default_factory=list)  # grid jobs still to run
    space: dict | None = None
    constants: dict = field(default_factory=dict)
    trials: int = 0                 # a search's budget
    owed: int = 0                   # trials the experiment owes in all (finished earlier included)
    max_t: int = 1
    scheduler: str = "none"
    grace_period: int = 2
    search_seed: int = 0            # the study's search.seed (a journal without a recorded sampler used it)
    sampler: str = "auto"           # search.sampler (study.samplers)
    sampler_seed: int = 0           # this search's own sampler seed (study.samplers.sampler_seed)
    search_seeds: list = field(default_factory=lambda: [0])  # seeds each search trial trains (one sub-trial each)
    resources: dict = field(default_factory=lambda: {"cpu": 1})
    max_concurrent: int = 2
    max_failures: int = 2
    board: object = None            # the driver's progress board (a Ray actor handle)
    tracking: dict = field(default_factory=dict)  # resolved tracker settings ({}: off; study.tracking)

    @property
    def results_uri(self) -> str:
        return storage.join(self.root, "results")

    @property
    def seeds_per_trial(self) -> int:
        return max(1, len(self.search_seeds))

    def sub_keys(self, key: str) -> list[str]:
        """The trial keys of a search trial's runs: the key itself with one seed per trial, else
        one `<key>-k<j>` per seed."""
        return sub_keys(key, self.seeds_per_trial)


def sub_keys(key: str, seeds_per_trial: int) -> list[str]:
    return [key] if seeds_per_trial <= 1 else [f"{key}-k{j}" for j in range(seeds_per_trial)]


# --------------------------------------------------------------------------- Optuna


def journal_uri(root: str, name: str) -> str:
    return storage.join(root, "optuna", f"{name}.journal")


class Journal:
    """An experiment's Optuna study as a journal file (JSON lines).

    On local storage the file is used in place (optuna-dashboard can open
    it); on a URI a local copy is used and copied back with `sync()`.
    """

    def __init__(self, root: str, name: str):
        self.uri = journal_uri(root, name)
        local = storage.local_path(self.uri)
        self.remote = local is None
        self.tmp = None
        if self.remote:
            self.tmp = tempfile.mkdtemp(prefix="kdstudy-journal-")
            self.path = os.path.join(self.tmp, f"{name}.journal")
            if storage.exists(self.uri):
                Path(self.path).write_bytes(storage.read_bytes(self.uri))
        else:
            self.path = local
            os.makedirs(os.path.dirname(self.path), exist_ok=True)
        self.repaired = repair_journal(self.path)

    def storage(self):
        import optuna

        return optuna.storages.JournalStorage(optuna.storages.journal.JournalFileBackend(self.path))

    def sync(self) -> None:
        if self.remote and os.path.exists(self.path):
            storage.write_bytes(self.uri, Path(self.path).read_bytes())

    def close(self, write_back: bool = True) -> None:
        """Copy back (remote storage, unless only read) and remove the local copy."""
        if write_back:
            self.sync()
        if self.tmp is not None:
            shutil.rmtree(self.tmp, ignore_errors=True)
            self.tmp = None


def repair_journal(path: str) -> bool:
    """Drop a torn last record (a driver killed mid-write); returns True if one was dropped.

    The journal is JSON lines: a line without its newline was never completed,
    and appending after it would corrupt the next record too. Dropping it loses
    only that one operation, which the reconciliation then redoes.
    """
    if not os.path.exists(path):
        return False
    with open(path, "rb+") as f:
        data = f.read()
        if not data or data.endswith(b"\n"):
            return False
        f.truncate(data.rfind(b"\n") + 1)
    log.warning("optuna journal %s ended in a torn record; it was dropped", path)
    return True


def load_study(journal: Journal, name: str, sampler=None):
    import optuna

    optuna.logging.set_verbosity(optuna.logging.WARNING)
    return optuna.create_study(storage=journal.storage(), study_name=name, direction="maximize",
                               sampler=sampler, load_if_exists=True)


def latest_trials(study, exp_name: str) -> dict:
    """{trial key: its latest Optuna trial}: a rerun of an interrupted trial keeps the key."""
    latest: dict = {}
    for t in study.get_trials(deepcopy=False):
        key = t.user_attrs.get("trial_key") or f"{exp_name}-s{t.number}"
        if key not in latest or t.number > latest[key].number:
            latest[key] = t
    return latest


def reconcile(study, exp_name: str, recorded=lambda key: True) -> tuple[int, int]:
    """Re-queue unfinished trials (same parameters, same trial key); return (finished, queued).

    Finished means COMPLETE or PRUNED (stopped by the scheduler) in the journal
    and an outcome in the results (`recorded(key)`). A trial left RUNNING (an
    interrupted driver), FAILed, or told to Optuna but not yet recorded in the
    results is enqueued again with its trial key, so it continues from its
    checkpoint and keeps its rows (the latest trial of a key is the one that counts).
    """
    from optuna.trial import TrialState

    finished = queued = 0
    for key, t in latest_trials(study, exp_name).items():
        if t.state in (TrialState.COMPLETE, TrialState.PRUNED) and recorded(key):
            finished += 1
        elif t.state == TrialState.WAITING:
            queued += 1
        else:
            if t.state == TrialState.RUNNING:
                study._storage.set_trial_state_values(t._trial_id, TrialState.FAIL)
            study.enqueue_trial(t.params, user_attrs={"trial_key": key}, skip_if_exists=False)
            queued += 1
    return finished, queued


def search_sampler(launch: Launch, journal: Journal) -> tuple:
    """(Optuna sampler, its record) of a search: the one its journal recorded, else the spec's
    (`search.sampler`, seeded per experiment), recorded in the journal before the first trial."""
    from . import samplers

    study = load_study(journal, launch.name)
    fresh = samplers.record(launch.sampler, launch.sampler_seed, samplers.n_initial(launch.trials))
    rec = samplers.recorded_sampler(study, fresh, launch.search_seed)
    if samplers.RECORD_KEY not in study.user_attrs:
        study.set_user_attr(samplers.RECORD_KEY, rec)
        journal.sync()
    return samplers.make_sampler(rec["name"], rec["seed"], launch.trials, launch.space or {},
                                 initial=rec["initial"]), rec


def make_searcher(launch: Launch, journal: Journal):
    """An OptunaSearch that names each trial by a stable key and tells Optuna the truth:
    a trial stopped early by the scheduler is PRUNED, an errored one FAIL.

    With several seeds per search trial (`search.seeds_per_trial: k`) an Optuna trial is
    a group of k Tune trials: the configuration Optuna proposed, trained on each search
    seed under its own trial key (`<key>-k<j>`, so their rows never collide and each
    continues from its own checkpoint). Optuna is told once, when all k have ended: the
    mean of their values (COMPLETE), PRUNED if the scheduler stopped any of them, FAIL if
    one failed. With one seed per trial nothing of this applies (the trial key is the key).
    """
    from optuna.trial import TrialState
    from ray.tune.search.optuna import OptunaSearch

    from .spaces import make_space

    k = launch.seeds_per_trial
    seeds = list(launch.search_seeds)

    class KeyedOptunaSearch(OptunaSearch):
        def __init__(self, *a, **kw):
            super().__init__(*a, **kw)
            self._open = None          # the group still handing out seeds
            self._member: dict = {}    # Tune trial id -> (group, seed index)

        def suggest(self, trial_id):
            if k > 1 and self._open is not None:
                group = self._open
            else:
                cfg = super().suggest(trial_id)
                if cfg is None:
                    return None
                ot = self._ot_trials.pop(trial_id) if k > 1 else self._ot_trials[trial_id]
                key = ot.user_attrs.get("trial_key") or f"{launch.name}-s{ot.number}"
                ot.set_user_attr("trial_key", key)
                journal.sync()
                group = {"ot": ot, "key": key, "cfg": cfg, "handed": 0, "ended": {}}
                if k == 1:
                    return {**cfg, "_trial_key": key}
                self._open = group
            j = group["handed"]
            group["handed"] += 1
            if group["handed"] == k:
                self._open = None
            self._member[trial_id] = (group, j)
            return {**group["cfg"], "seed": seeds[j], "_trial_key": launch.sub_keys(group["key"])[j]}

        def on_trial_result(self, trial_id, result):
            if k == 1:
                super().on_trial_result(trial_id, result)

        def _tell(self, ot, state, value):
            try:
                self._ot_study.tell(ot, value, state=state)
            except Exception as exc:  # e.g. a value Optuna refuses
                log.warning("optuna could not record trial %s: %s", ot.number, exc)
            journal.sync()

        def on_trial_complete(self, trial_id, result=None, error=False):
            from .results import outcome_of

            if error or not result or result.get(METRIC) is None:
                state, value = TrialState.FAIL, None
            elif outcome_of(result) == "stopped":
                state, value = TrialState.PRUNED, None
            else:
                state, value = TrialState.COMPLETE, float(result[METRIC])
            if k == 1:
                if trial_id in self._completed_trials or trial_id not in self._ot_trials:
                    return
                self._completed_trials.add(trial_id)
                self._tell(self._ot_trials[trial_id], state, value)
                return
            if trial_id not in self._member or trial_id in self._completed_trials:
                return
            self._completed_trials.add(trial_id)
            group, j = self._member[trial_id]
            group["ended"][j] = (state, value)
            if len(group["ended"]) < k:
                return
            states = [st for st, _ in group["ended"].values()]
            if TrialState.FAIL in states:
                self._tell(group["ot"], TrialState.FAIL, None)
            elif TrialState.PRUNED in states:
                self._tell(group["ot"], TrialState.PRUNED, None)
            else:
                self._tell(group["ot"], TrialState.COMPLETE,
                           sum(v for _, v in group["ended"].values()) / k)

    sampler, _ = search_sampler(launch, journal)
    return KeyedOptunaSearch(space=make_space(launch.space, launch.constants), metric=METRIC, mode=MODE,
                             sampler=sampler, storage=journal.storage(), study_name=launch.name)


# --------------------------------------------------------------------------- the task


def _named_trainable(exp_name: str):
    """The trainable under a name of its own.

    Tune registers trainables (and `with_parameters` constants) in a registry
    shared by the whole Ray job, keyed by the function's name: two experiments
    running at once with the same function would read each other's constants.
    Each experiment, each attempt, gets a uniquely named function.
    """
    import uuid

    from trainables.trainable import tune_trainable

    def trainable(config, base=None):
        return tune_trainable(config, base=base)

    unique = "kdstudy_" + "".join(c if c.isalnum() else "_" for c in exp_name) + "_" + uuid.uuid4().hex[:8]
    trainable.__name__ = trainable.__qualname__ = unique
    return trainable



def _log_to_file(root: str, name: str) -> None:
    """Ray, Tune and Optuna log lines of this experiment go to a file in the study folder."""
    logs = storage.local_path(storage.join(root, "logs"))
    if logs is None:
        return
    folder = Path(logs)
    folder.mkdir(parents=True, exist_ok=True)
    handler = logging.FileHandler(folder / f"{name}.log")
    handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(name)s: %(message)s"))
    for lg in (logging.getLogger(), logging.getLogger("ray"), logging.getLogger("optuna")):
        lg.addHandler(handler)
        lg.setLevel(logging.INFO)
    for lg in (logging.getLogger("ray"), logging.getLogger("ray.tune")):
        for h in list(lg.handlers):
            if isinstance(h, logging.StreamHandler) and not isinstance(h, logging.FileHandler):
                lg.removeHandler(h)


def run_launch(launch: Launch) -> dict:
    """Run what is left of one experiment; returns counts. The driver verifies from storage."""
    os.environ.setdefault("TUNE_WARN_EXCESSIVE_EXPERIMENT_CHECKPOINT_SYNC_THRESHOLD_S", "0")
    os.environ["RAY_AIR_NEW_OUTPUT"] = "0"
    # Tune's own files are never read back (see the module docstring): no per-result JSON/CSV/
    # TensorBoard logs of every report, and its experiment state saved seldom
    os.environ["TUNE_DISABLE_AUTO_CALLBACK_LOGGERS"] = "1"
    os.environ.setdefault("TUNE_GLOBAL_CHECKPOINT_S", "300")
    _log_to_file(launch.root, launch.name)
    from ray import tune
    from ray.tune.schedulers import ASHAScheduler

    from .results import ParquetSink

    board = launch.board

    def on_event(event, key, details):
        if board is not None:
            board.event.remote(launch.name, event, key, details)

    sink = ParquetSink(launch.results_uri, launch.stage, root=launch.root, on_event=on_event,
                       identity={"study": launch.base.get("study"), "method": launch.method,
                                 "experiment": launch.name, "dataset": launch.base.get("dataset", {}).get("name")})
    trainable = tune.with_resources(tune.with_parameters(_named_trainable(launch.name), base=launch.base),
                                    launch.resources)
    callbacks = [sink]
    if launch.tracking:  # trackers read the epoch's rows, which the sink takes out: they come first
        from .tracking import callbacks as tracker_callbacks

        callbacks = [*tracker_callbacks(launch, sink), sink]
    journal = None
    if launch.kind == "grid":
        if not launch.jobs:
            return {"ran": 0}
        param_space = {"job": tune.grid_search(launch.jobs)}
        tune_config = tune.TuneConfig(num_samples=1, reuse_actors=True, max_concurrent_trials=launch.max_concurrent)
        n = len(launch.jobs)
    else:
        journal = Journal(launch.root, launch.name)
        study = load_study(journal, launch.name)
        from .results import is_finished

        finished, queued = reconcile(study, launch.name,
                                     lambda key: all(is_finished(launch.results_uri, launch.stage, sub)
                                                     for sub in launch.sub_keys(key)))
        journal.sync()
        n = max(0, launch.trials - finished) * launch.seeds_per_trial  # Tune trials: one per seed
        if n == 0:
            return {"ran": 0}
        searcher = make_searcher(launch, journal)
        scheduler = None
        if launch.scheduler == "asha":
            scheduler = ASHAScheduler(time_attr="progress", max_t=launch.max_t, grace_period=launch.grace_period,
                                      reduction_factor=3, metric=METRIC, mode=MODE)
        param_space = None
        tune_config = tune.TuneConfig(search_alg=searcher, scheduler=scheduler,
                                      metric=None if scheduler else METRIC, mode=None if scheduler else MODE,
                                      num_samples=n, max_concurrent_trials=launch.max_concurrent, reuse_actors=True)
    if board is not None:
        board.begin.remote(launch.name, n)
    private = tempfile.mkdtemp(prefix="kdstudy-tune-")  # Tune's own files: local, private, never read back
    try:
        tuner = tune.Tuner(trainable, param_space=param_space, tune_config=tune_config,
                           run_config=tune.RunConfig(
                               name=launch.name, storage_path=private, verbose=0, callbacks=callbacks,
                               failure_config=tune.FailureConfig(max_failures=launch.max_failures),
                               checkpoint_config=tune.CheckpointConfig(num_to_keep=1)))
        tuner.fit()
    finally:
        if journal is not None:
            journal.close()
        shutil.rmtree(private, ignore_errors=True)
    return {"ran": n}


@ray.remote(num_cpus=0, max_retries=1)
def experiment_task(launch: Launch) -> dict:
    """One experiment's driver, as a Ray task (no resources: its trials hold them)."""
    return run_launch(launch)
