"""The Ray Tune trainable: the shared loop with Tune's report and kdstudy's own checkpoints.

`tune_trainable(config, base=...)` is what an experiment hands to
`tune.Tuner` (through `tune.with_parameters`, so the experiment's constants
travel once through the object store). `config` holds only what the grid or
the searcher chose, plus `_trial_key`: the trial's stable identity in the
study (it names the trial's Parquet file and checkpoint, and survives a
restarted driver, unlike Tune's own trial ids).

Checkpoints are kdstudy's, not Tune's: a weights-only `torch.save` of the
loop's state at `<study>/checkpoints/<trial key>.pt`, written when the last
one is older than `runtime.checkpoint_every_s` (default 30 s) and at the end
of every generation. A retried trial, or one continued by `kdstudy resume`,
starts from there. Nothing Tune pickles is ever read back. The trial's device
is the GPU Ray gave it (`ray.get_gpu_ids()` in the trial's process), else the
CPU (see `trainables.device`). A study's plug-ins (`base["plugins"]`, their
records) are imported first, from the copies the job shipped to this node, each
checked against the source the driver recorded (`trainables.plugins.load_in_trial`).
When a trial
raises, the last line of the error goes to `<study>/errors/<trial key>.txt`
(plain text) for the driver to show, and the error propagates to Tune.
"""

from __future__ import annotations

import hashlib
import json
import os
import time
import traceback

import ray
from ray import tune

from . import storage
from .config import resolve

#: sampled keys that identify a run rather than a configuration (the "sampled" scheme)
RUN_KEYS = ("seed", "_trial_key")
#: keys of a resolved trial configuration that say where, when, by which experiment or with which
#: seed a trial runs, never what it trains
NOT_CONFIG = ("study", "stage", "seed", "experiment", "paths", "runtime", "code_version", "export", "config_id",
              "started_at", "config_ids", "plugins")
#: dataset keys that say where the data lies on this machine
DATA_LOCATION = ("root", "download")
#: facts of a model entry that are not its configuration: where its weights lie, which of a
#: ladder's seeds a trial drew, what it measured (architecture, parameters and FLOPs follow from it)
MODEL_FACTS = ("checkpoint", "acc", "val_acc", "epoch_checkpoints", "file", "sha256", "arch", "params", "flops",
               "key")


def config_id(config: dict, scheme: str = "content") -> str:
    """A trial's configuration as a 10-hex-digit hash, its seed left out: reruns of one configuration
    on several seeds share it, and so do a search trial and its confirm reruns.

    `config` is the resolved trial configuration (`trainables.config.resolve`): the method, the
    models (a teacher as its model configuration, not which of its seeds or where its weights lie),
    the dataset (not where it lies), the training recipe and every hyperparameter, fixed or
    searched. Two runs that differ in any of these have different ids (two baseline recipes never
    share one), whatever was searched. Scheme "sampled" is the hash older studies used (the sampled
    values only, `config` then being the sampled dict): a study keeps the scheme it began with.
    """
    if scheme == "sampled":
        sampled = dict(config.get("job", config))
        conf = {k: v for k, v in sampled.items() if k not in RUN_KEYS}
    else:
        conf = {k: v for k, v in config.items() if k not in NOT_CONFIG}
        if isinstance(conf.get("dataset"), dict):
            conf["dataset"] = {k: v for k, v in conf["dataset"].items() if k not in DATA_LOCATION}
        for role in ("student", "teacher", "assistant"):
            if isinstance(conf.get(role), dict):
                conf[role] = {k: v for k, v in conf[role].items() if k not in MODEL_FACTS}
    return hashlib.sha256(json.dumps(conf, sort_keys=True, default=str).encode()).hexdigest()[:10]


def checkpoint_uri(root: str, key: str) -> str:
    return storage.join(root, "checkpoints", f"{key}.pt")


def error_uri(root: str, key: str) -> str:
    return storage.join(root, "errors", f"{key}.txt")


_FRESH_PROCESS = True  # the first trial of this actor process pays for its start-up


def _started_at() -> float:
    """When this trial began, wall clock: the process's start for the first trial an actor runs
    (its imports are the trial's overhead), else now (a reused actor)."""
    global _FRESH_PROCESS
    if _FRESH_PROCESS:
        _FRESH_PROCESS = False
        try:
            import psutil

            return psutil.Process().create_time()
        except Exception:
            pass
    return time.time()


#: fault injection for the reliability tests: "<stage>:<epoch>" makes every trial of that stage
#: raise after reporting that epoch (read from the environment the Ray workers inherit)
FAULT_ENV = "KDSTUDY_INJECT_FAULT"


class InjectedFault(RuntimeError):
    """Raised on purpose by KDSTUDY_INJECT_FAULT (tests of failure handling)."""


class StopHere(Exception):
    """The trial has trained as far as it was asked to (`_stop_after`): it ends here, normally."""


class TuneHooks:
    """Connects the loop to Ray Tune: results out; checkpoints in and out of study storage.

    `stop_after` ends the trial once it has reported that much progress (epochs over all
    generations): a trial the scheduler stopped, trained again because its results were lost,
    stops where it stopped before (its outcome is `stopped` again)."""

    def __init__(self, trial_key: str, root: str | None, every_s: float = 30.0, stage: str = "",
                 stop_after: int | None = None):
        self.trial_id = trial_key
        self.root = root
        self.every_s = every_s
        self.stop_after = stop_after
        self.last_save = time.monotonic()
        fault = os.environ.get(FAULT_ENV, "")
        self.fault_epoch = int(fault.split(":")[1]) if fault.split(":")[0] == stage and ":" in fault else None

    def load_checkpoint(self):
        if not self.root:
            return None
        uri = checkpoint_uri(self.root, self.trial_id)
        return storage.load_state(uri) if storage.exists(uri) else None

    def report(self, metrics, rows, state, final=False):
        if state is not None and self.root and (final or time.monotonic() - self.last_save >= self.every_s):
            storage.save_state(state, checkpoint_uri(self.root, self.trial_id))
            self.last_save = time.monotonic()
        tune.report({**metrics, "rows": rows})
        if self.fault_epoch is not None and metrics.get("progress") == self.fault_epoch:
            raise InjectedFault(f"injected fault at epoch {self.fault_epoch} ({FAULT_ENV})")
        if self.stop_after is not None and (metrics.get("progress") or 0) >= self.stop_after \
                and metrics.get("progress", 0) < metrics.get("progress_total", 0):
            raise StopHere()


def tune_trainable(config: dict, base: dict | None = None) -> None:
    """Run one trial inside Ray Tune."""
    started = _started_at()
    base = base or {}
    sampled = dict(config.get("job", config))
    key = sampled.get("_trial_key") or tune.get_context().get_trial_id() or "unknown"
    paths = base.get("paths", {})
    root = paths.get("root")
    if root and storage.exists(error_uri(root, key)):  # an earlier attempt's error is not this one's
        fs, path = storage.resolve(error_uri(root, key))
        fs.delete_file(path)
    try:
        if base.get("plugins"):  # the study's plug-ins, checked against their recorded sources
            from .plugins import load_in_trial

            load_in_trial(base["plugins"])
        scheme = base.get("config_ids", "content")  # the scheme the study began with (study.folder)
        trial_config = resolve({k: v for k, v in base.items() if k != "config_ids"}, sampled)
        trial_config["config_id"] = config_id(sampled if scheme == "sampled" else trial_config, scheme)
        trial_config["started_at"] = started
        # the trial uses a GPU exactly when Ray gave it one: a `num_gpus=0` worker keeps the
        # CUDA_VISIBLE_DEVICES it inherited (Ray >= 2.4x), so visibility says nothing (trainables.device)
        trial_config.setdefault("runtime", {})["gpu_ids"] = [str(g) for g in ray.get_gpu_ids()]
        every = float(trial_config.get("runtime", {}).get("checkpoint_every_s", 30.0))
        from .loop import run_trial  # torch is imported by the trial's process only
        stop_after = sampled.get("_stop_after")
        run_trial(trial_config, TuneHooks(key, root, every, stage=trial_config.get("stage", ""),
                                          stop_after=None if stop_after is None else int(stop_after)))
    except StopHere:
        return
    except Exception as exc:
        if root:
            last = (traceback.format_exception_only(type(exc), exc)[-1].strip() or type(exc).__name__)[:2000]
            try:
                storage.write_bytes(error_uri(root, key), last.encode())
            except OSError:
                pass
        raise
