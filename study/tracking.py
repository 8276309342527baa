"""Experiment trackers, opt in: each trial a run in MLflow, Weights & Biases or TensorBoard.

The spec's `tracking:` section turns them on (off by default; this module
imports no tracker package unless one is configured):

    tracking:
      mlflow: {uri: ./mlruns, experiment: my-study}   # a folder (MLflow's file store) or a server URI
      wandb: {project: kd, entity: my-lab, mode: offline, group: my-study}
      tensorboard: {dir: ./tb}                         # or `true`: <study>/tensorboard

A study is one MLflow experiment (default: the study's name), one W&B group
(default: the study's name) and one TensorBoard folder, in which each trial is
a run named by its trial key (`study.graph`), with

* params: the hyperparameters in force (the method's defaults included), its
  seed and teacher size, read from the trial's own results rows;
* tags: study, stage, method, experiment, trial key, dataset, seed, teacher
  size, student and teacher architectures, and, when it ends, its outcome as
  kdstudy records it (`ok`, `stopped`, `diverged`, `failed`, with the error);
* metrics per epoch (step = epochs trained, generations included):
  `<role>/<metric>` for every model a row reports (`student/val_acc`,
  `teacher/test_acc`, `student/exit2/val_acc` of a multi-exit model),
  `loss/<term>` for the loss terms, `best_val_acc` / `best_test_acc` (the
  selection so far), `epoch`, `generation`, `time/epoch_s`.

The callbacks run where Tune's controller runs: in the experiment's driver
task (`study.experiment.run_launch`), on the study driver's node, so a local
folder is a folder of that machine. MLflow and W&B use the logger callbacks
Ray Tune ships (`ray.air.integrations.mlflow.MLflowLoggerCallback`, and
`...wandb.WandbLoggerCallback`, whose per-trial logging actor is one process
per W&B run, as W&B wants), fed kdstudy's rows instead of Tune's raw result
(which carries every row of the epoch and Tune's own bookkeeping). TensorBoard
is written here with tensorboardX (the writer Ray Tune uses): Tune's TBX
callback writes into the trial's Tune folder, which kdstudy keeps private and
removes. A tracker that fails (a server down) logs a warning in the
experiment's log and is off for the rest of that experiment; the study's
results are its Parquet rows, never the trackers.

A resumed trial continues its run: the MLflow run carrying its trial key, the
W&B run of the same id; TensorBoard adds an event file to the trial's folder.
"""

from __future__ import annotations

import hashlib
import json
import logging
import math
import netrc
import os
from importlib.util import find_spec
from urllib.parse import urlparse

log = logging.getLogger(__name__)

#: tracker -> (module it needs, the extra that installs it)
PACKAGES = {"mlflow": ("mlflow", "mlflow"), "wandb": ("wandb", "wandb"), "tensorboard": ("tensorboardX", "tensorboard")}
#: metric columns of a results row logged per model (`<role>[/exit<i>]/<column>`)
ROW_METRICS = ("train_loss", "train_acc", "val_loss", "val_acc", "test_loss", "test_acc")
#: a row's facts that become tags (and the seed and teacher size params too)
TAG_COLUMNS = ("study", "stage", "method", "experiment", "dataset", "seed", "teacher_size", "student_arch",
               "teacher_arch", "assistant_arch", "teacher_epoch")


# --------------------------------------------------------------------------- settings


def _local(path: str, base: str) -> str:
    return os.path.abspath(os.path.join(base, os.path.expanduser(path)))


def is_local_uri(uri: str) -> bool:
    """A folder on this machine (a path or file:), as opposed to a tracking server or database."""
    scheme = urlparse(uri).scheme
    return scheme in ("", "file") or (len(scheme) == 1 and os.name == "nt")


def resolve(tracking: dict, root: str, study: str, cwd: str | None = None) -> dict:
    """The spec's `tracking` with every default filled and every folder absolute.

    Called in the study driver (relative folders are relative to where
    `kdstudy run` was started, as the spec's storage is). `root` is the study
    folder; a tracker's default folder lies inside it when it is local.
    Returns {} when tracking is off.
    """
    if not tracking:
        return {}
    from trainables import storage

    cwd = cwd or os.getcwd()
    local_root = storage.local_path(root)
    out: dict = {"study": study, "root": root}
    if tracking.get("mlflow"):
        m = tracking["mlflow"]
        uri = m["uri"]
        if is_local_uri(uri):
            uri = _local(urlparse(uri).path if uri.startswith("file:") else uri, cwd)
        out["mlflow"] = {"uri": uri, "experiment": m.get("experiment") or study, "file_store": is_local_uri(uri)}
    if tracking.get("wandb"):
        w = tracking["wandb"]
        folder = os.environ.get("WANDB_DIR") or (os.path.join(local_root, "wandb") if local_root else None)
        out["wandb"] = {"project": w["project"], "entity": w.get("entity"), "mode": w.get("mode") or "online",
                        "group": w.get("group") or study,
                        "dir": _local(folder, cwd) if folder else _local(os.path.join("wandb", study), cwd)}
    if tracking.get("tensorboard") is not None and tracking.get("tensorboard") is not False:
        t = tracking["tensorboard"] if isinstance(tracking["tensorboard"], dict) else {}
        if t.get("dir"):
            folder = os.path.join(_local(t["dir"], cwd), study)
        else:
            folder = os.path.join(local_root, "tensorboard") if local_root else None
        out["tensorboard"] = {"dir": folder}
    return out


def problems(tracking: dict, root: str) -> list[str]:
    """What stops a configured tracker from working, found before Ray starts (imports nothing)."""
    if not tracking:
        return []
    from trainables import storage

    found = []
    for name, (module, extra) in PACKAGES.items():
        if tracking.get(name) and find_spec(module) is None:
            found.append(f"tracking.{name}: the {module} package is not installed "
                         f"(pip install 'kdstudy[{extra}]')")
    tb = tracking.get("tensorboard")
    if tb and not (isinstance(tb, dict) and tb.get("dir")) and storage.local_path(root) is None:
        found.append(f"tracking.tensorboard.dir: the study is on {root}, which TensorBoard cannot write to; "
                     "give a local or shared folder")
    w = tracking.get("wandb") or {}
    if w and (w.get("mode") or "online") == "online" and not _wandb_logged_in():
        found.append("tracking.wandb: mode online needs a W&B login (WANDB_API_KEY or `wandb login`); "
                     "mode: offline writes the runs locally (`wandb sync` uploads them later)")
    return found


def _wandb_logged_in() -> bool:
    if os.environ.get("WANDB_API_KEY"):
        return True
    host = urlparse(os.environ.get("WANDB_BASE_URL") or "https://api.wandb.ai").hostname or "api.wandb.ai"
    try:
        return netrc.netrc(os.environ.get("NETRC")).authenticators(host) is not None
    except (OSError, netrc.NetrcParseError):
        return False


# --------------------------------------------------------------------------- what a trial is


def _number(value) -> float | None:
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        return None
    value = float(value)
    return value if math.isfinite(value) else None


def _hparams(row: dict) -> dict:
    hp = row.get("hparams")
    if hp is None and row.get("hparams_json"):
        hp = row["hparams_json"]
    if isinstance(hp, str):
        try:
            hp = json.loads(hp)
        except ValueError:
            hp = {}
    return dict(hp or {})


def trial_facts(rows: list[dict], context: dict, key: str) -> tuple[dict, dict]:
    """(params, tags) of a trial from its first rows (or only the experiment's context if it has none)."""
    row = next((r for r in rows if r.get("role") in ("student", "teacher") and r.get("exit") is None), None)
    row = row or (rows[0] if rows else {})
    tags = {k: context.get(k) for k in ("study", "stage", "method", "experiment")}
    tags.update({k: row[k] for k in TAG_COLUMNS if row.get(k) is not None})
    tags["trial"] = key
    params = {k: v for k, v in _hparams(row).items() if v is not None}
    for k in ("seed", "teacher_size"):
        if row.get(k) is not None:
            params[k] = row[k]
    if isinstance(tags.get("teacher_size"), float) and tags["teacher_size"].is_integer():
        tags["teacher_size"] = int(tags["teacher_size"])
        params["teacher_size"] = tags["teacher_size"]
    return params, {k: v for k, v in tags.items() if v is not None}


def epoch_metrics(result: dict) -> tuple[int, dict[str, float]]:
    """(step, metrics) of one reported epoch: every model's row metrics, the loss terms, the best so far."""
    rows = result.get("rows") or []
    step = int(result.get("progress") or result.get("training_iteration") or 0)
    out: dict[str, float] = {}
    for r in rows:
        prefix = r.get("role") or "student"
        if r.get("exit") is not None:
            prefix += f"/exit{r['exit']}"
        for m in ROW_METRICS:
            v = _number(r.get(m))
            if v is not None:
                out[f"{prefix}/{m}"] = v
    if rows:
        first = rows[0]
        try:
            terms = json.loads(first.get("loss_terms_json") or "{}")
        except ValueError:
            terms = {}
        for term, v in (terms or {}).items():
            if _number(v) is not None:
                out[f"loss/{term}"] = float(v)
        for col, name in (("temperature_now", "temperature"), ("epoch_time_s", "time/epoch_s")):
            v = _number(first.get(col))
            if v is not None:
                out[name] = v
    for k in ("best_val_acc", "best_test_acc", "epoch", "generation"):
        v = _number(result.get(k))
        if v is not None:
            out[k] = v
    return step, out


def _text(value) -> str:
    return value if isinstance(value, str) else json.dumps(value, default=str)


# --------------------------------------------------------------------------- the callbacks


class _Trials:
    """What every tracker does the same way: a run per trial, begun at its first result.

    The run begins at the first result because the trial's hyperparameters in
    force (defaults included) and its facts come with its rows. Subclasses
    implement `_begin(trial, key, params, tags)`, `_log(trial, step, metrics)`
    and `_finish(trial, outcome, error)`. Each call is guarded: a tracker that
    fails logs a warning (in the experiment's log) and is not called again in
    this experiment, so a server that is down costs its timeouts once, not at
    every epoch; the study goes on.
    """

    tracker = "tracker"

    def _kd_init(self, context: dict, sink) -> None:
        self.context = context
        self.sink = sink  # the results sink: its trial keys and error lines are the study's
        self._begun: set = set()
        self._steps: dict = {}
        self._broken = False

    def _guard(self, what, *args) -> None:
        if self._broken:
            return
        try:
            what(*args)
        except Exception as exc:  # a tracker never fails (nor stalls) the study
            self._broken = True
            log.warning("%s tracking failed and is off for the rest of experiment %s (the study goes on; its "
                        "results are unaffected): %s", self.tracker, self.context.get("experiment"), exc,
                        exc_info=True)

    def _ensure(self, trial, rows) -> None:
        if trial.trial_id not in self._begun:
            self._begun.add(trial.trial_id)
            key = self.sink.trial_key(trial)
            params, tags = trial_facts(rows, self.context, key)
            self._begin(trial, key, params, tags)

    def _result(self, trial, result) -> None:
        self._ensure(trial, result.get("rows") or [])
        step, metrics = epoch_metrics(result)
        self._steps[trial.trial_id] = step
        if metrics:
            self._log(trial, step, metrics)

    def _end(self, trial, outcome: str, error: str | None) -> None:
        self._ensure(trial, [])
        self._finish(trial, outcome, error)
        self._begun.discard(trial.trial_id)

    # Tune's callback hooks ------------------------------------------------------
    def on_trial_start(self, iteration, trials, trial, **info):
        pass  # the run begins with the first result (see the class docstring)

    def on_trial_restore(self, iteration, trials, trial, **info):
        pass

    def on_trial_save(self, iteration, trials, trial, **info):
        pass

    def on_trial_result(self, iteration, trials, trial, result, **info):
        self._guard(self._result, trial, result)

    def on_trial_complete(self, iteration, trials, trial, **info):
        from .results import outcome_of

        self._guard(self._end, trial, outcome_of(trial.last_result), None)

    def on_trial_error(self, iteration, trials, trial, **info):
        self._guard(self._end, trial, "failed", self.sink.error_line(self.sink.trial_key(trial)))


def prepare(settings: dict) -> None:
    """In the study driver, before any experiment starts: create what all the experiments' trackers
    share, once. Experiments start at the same time, each in a process of its own, and two processes
    that both find no MLflow experiment of the study's name both create one (a file store then holds
    two experiments of one name, each with part of the runs; a server refuses the second, and that
    experiment's tracking goes off). A tracker that cannot be prepared never stops the study: its
    experiments try again on their own, as before."""
    m = (settings or {}).get("mlflow")
    if not m:
        return
    try:
        if m.get("file_store"):  # MLflow 3 keeps its file store only on request
            os.environ.setdefault("MLFLOW_ALLOW_FILE_STORE", "true")
        from mlflow.tracking import MlflowClient

        client = MlflowClient(m["uri"])
        if client.get_experiment_by_name(m["experiment"]) is None:
            try:
                client.create_experiment(m["experiment"])
            except Exception:  # another driver created it meanwhile
                if client.get_experiment_by_name(m["experiment"]) is None:
                    raise
    except Exception as exc:  # a tracker never fails the study
        log.warning("mlflow tracking: could not prepare experiment %r at %s (each experiment tries on its own; "
                    "the study goes on): %s", m["experiment"], m["uri"], exc)


def _mlflow_callback(settings: dict, context: dict, sink):
    from ray.air.integrations.mlflow import MLflowLoggerCallback

    class MLflowTrials(_Trials, MLflowLoggerCallback):
        """Tune's MLflow callback (tracking set-up, experiment, run bookkeeping, metric logging)
        with kdstudy's run: params and tags from the rows, the trial's run continued on resume."""

        tracker = "mlflow"

        def __init__(self):
            MLflowLoggerCallback.__init__(self, tracking_uri=settings["uri"], experiment_name=settings["experiment"])
            self._kd_init(context, sink)

        def setup(self, stop=None, num_samples=None, total_num_samples=None, **info):
            self._guard(MLflowLoggerCallback.setup, self)

        def _begin(self, trial, key, params, tags):
            client = self.mlflow_util._get_client()
            found = client.search_runs([self.mlflow_util.experiment_id], max_results=1,
                                       filter_string=f"tags.trial = '{key}' and tags.study = '{tags.get('study')}'")
            if found:  # a resumed trial continues its run; its outcome is not known again yet
                run_id = found[0].info.run_id
                client.update_run(run_id, status="RUNNING")
                for tag in ("outcome", "error"):
                    if tag in found[0].data.tags:
                        client.delete_tag(run_id, tag)
            else:
                run_id = self.mlflow_util.start_run(run_name=key, tags={k: _text(v) for k, v in tags.items()}
                                                    ).info.run_id
            self._trial_runs[trial] = run_id
            existing = found[0].data.params if found else {}
            self.mlflow_util.log_params(run_id=run_id, params_to_log={
                k: _text(v)[:6000] for k, v in params.items() if k not in existing})

        def _log(self, trial, step, metrics):
            self.mlflow_util.log_metrics(run_id=self._trial_runs[trial], metrics_to_log=metrics, step=step)

        def _finish(self, trial, outcome, error):
            client = self.mlflow_util._get_client()
            run_id = self._trial_runs[trial]
            client.set_tag(run_id, "outcome", outcome)
            if error:
                client.set_tag(run_id, "error", error[:5000])
            self.log_trial_end(trial, failed=outcome == "failed")
            del self._trial_runs[trial]

    if settings.get("file_store"):  # MLflow 3 keeps its file store only on request
        os.environ.setdefault("MLFLOW_ALLOW_FILE_STORE", "true")
    return MLflowTrials()


def wandb_run_id(study: str, key: str) -> str:
    """A W&B run id for a trial: the same across resumes (wherever the study folder moved), distinct
    across studies (a trial key names its experiment's content, which two studies of one spec share)."""
    return hashlib.sha256(f"{study}\n{key}".encode()).hexdigest()[:20]


def _wandb_callback(settings: dict, context: dict, sink):
    from ray.air.integrations.wandb import WandbLoggerCallback, _QueueItem, _WandbLoggingActor

    class FlushingActor(_WandbLoggingActor):
        """Tune's logging actor, which then shuts W&B's service down before it returns: Tune kills
        the actor as soon as it returns, and `finish()` alone can return before W&B's service has
        written the run's file (an offline run of a few bytes, seen on a busy machine)."""

        def run(self):
            try:
                super().run()
            finally:
                self._wandb.teardown()

    class WandbTrials(_Trials, WandbLoggerCallback):
        """Tune's W&B callback (one logging actor per run, its queue, the uploads at the end)
        with kdstudy's run: its id, name, group, job type (the stage), config and outcome."""

        tracker = "wandb"
        # result keys the logging actor puts in the run's config instead of its history
        AUTO_CONFIG_KEYS = [*WandbLoggerCallback.AUTO_CONFIG_KEYS, "outcome", "error"]
        _logger_actor_cls = FlushingActor

        def __init__(self):
            WandbLoggerCallback.__init__(self, project=settings["project"], group=settings["group"],
                                         entity=settings.get("entity"), mode=settings["mode"],
                                         dir=settings["dir"])
            self._kd_init(context, sink)

        def setup(self, stop=None, num_samples=None, total_num_samples=None, **info):
            if settings["mode"] != "offline":  # the API key check; offline runs need none
                self._guard(WandbLoggerCallback.setup, self)

        def _begin(self, trial, key, params, tags):
            os.makedirs(settings["dir"], exist_ok=True)
            trial.init_local_path()  # the logging actor starts in the trial's (Tune-private) folder
            config = {**params, **{f"kdstudy/{k}": v for k, v in tags.items()}}
            kwargs = {**self.kwargs, "id": wandb_run_id(context["study"], key), "name": key, "resume": "allow",
                      "reinit": True, "allow_val_change": True, "group": self.group, "project": self.project,
                      "config": config, "job_type": tags.get("stage"),
                      "tags": [str(tags[k]) for k in ("stage", "method") if k in tags],
                      # W&B's 90 s to start its service can pass on a node busy with trials starting
                      "settings": {"init_timeout": 600}}
            excludes = [*self._exclude_results, *self.excludes, "config"]
            self._start_logging_actor(trial, excludes, **kwargs)

        def _log(self, trial, step, metrics):
            self.log_trial_result(0, trial, {**metrics, "training_iteration": step})

        def _finish(self, trial, outcome, error):
            end = {"training_iteration": self._steps.get(trial.trial_id, 0), "outcome": outcome}
            if error:
                end["error"] = error
            self._trial_queues[trial].put((_QueueItem.RESULT, end))
            self.log_trial_end(trial, failed=outcome == "failed")

    return WandbTrials()


def _tensorboard_callback(settings: dict, context: dict, sink):
    from ray.tune import Callback
    from tensorboardX import SummaryWriter
    from tensorboardX.summary import hparams

    class TensorBoardTrials(_Trials, Callback):
        """Scalars per epoch and, when the trial ends, its hyperparameters, facts and outcome
        (TensorBoard's HPARAMS tab); one folder per trial: <dir>/<experiment>/<trial key>."""

        tracker = "tensorboard"

        def __init__(self):
            self.folder = settings["dir"]
            self._writers: dict = {}
            self._params: dict = {}
            self._last: dict = {}
            self._kd_init(context, sink)

        def _begin(self, trial, key, params, tags):
            path = os.path.join(self.folder, tags.get("experiment") or "experiment", key)
            self._writers[trial.trial_id] = SummaryWriter(path, flush_secs=30)
            self._params[trial.trial_id] = {**params, **{k: v for k, v in tags.items() if k not in params}}

        def _log(self, trial, step, metrics):
            writer = self._writers[trial.trial_id]
            for name, value in metrics.items():
                writer.add_scalar(name, value, global_step=step)
            writer.flush()
            self._last[trial.trial_id] = metrics

        def _finish(self, trial, outcome, error):
            writer = self._writers.pop(trial.trial_id)
            hp = {k: (v if isinstance(v, (bool, int, float, str)) else _text(v))
                  for k, v in self._params.pop(trial.trial_id, {}).items()}
            hp["outcome"] = outcome
            last = self._last.pop(trial.trial_id, {})
            final = {k: last[k] for k in ("best_val_acc", "best_test_acc") if k in last}
            for summary in hparams(hparam_dict=hp, metric_dict=final):
                writer.file_writer.add_summary(summary)
            if error:
                writer.add_text("error", error)
            writer.close()

        def on_experiment_end(self, trials, **info):
            for writer in self._writers.values():  # trials cut by an interrupt: what they logged stays
                writer.close()
            self._writers.clear()

    return TensorBoardTrials()


def callbacks(launch, sink) -> list:
    """Tune callbacks for the trackers `launch.tracking` turns on ([] when off).

    They must come before `sink` in the Tuner's callbacks: they read the
    epoch's rows, which the sink then takes out of the result.
    """
    settings = launch.tracking or {}
    if not any(settings.get(k) for k in PACKAGES):
        return []
    context = {"study": settings.get("study") or launch.base.get("study"), "root": settings.get("root", launch.root),
               "stage": launch.stage, "method": launch.method, "experiment": launch.name}
    out = []
    if settings.get("mlflow"):
        out.append(_mlflow_callback(settings["mlflow"], context, sink))
    if settings.get("wandb"):
        out.append(_wandb_callback(settings["wandb"], context, sink))
    if settings.get("tensorboard"):
        out.append(_tensorboard_callback(settings["tensorboard"], context, sink))
    return out
