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
CPU (see `trainables.device`). When a trial
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

#: sampled keys that identify a run rather than a configuration
RUN_KEYS = ("seed", "_trial_key")


def config_id(sampled: dict) -> str:
    """Hash of a trial's configuration without its seed: confirm reruns of one config share it."""
    sampled = dict(sampled.get("job", sampled))
    conf = {k: v for k, v in sampled.items() if k not in RUN_KEYS}
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


class TuneHooks:
    """Connects the loop to Ray Tune: results out; checkpoints in and out of study storage."""

    def __init__(self, trial_key: str, root: str | None, every_s: float = 30.0, stage: str = ""):
        self.trial_id = trial_key
        self.root = root
        self.every_s = every_s
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
        trial_config = resolve(base, sampled)
        trial_config["config_id"] = config_id(sampled)
        trial_config["started_at"] = started
        # the trial uses a GPU exactly when Ray gave it one: a `num_gpus=0` worker keeps the
        # CUDA_VISIBLE_DEVICES it inherited (Ray >= 2.4x), so visibility says nothing (trainables.device)
        trial_config.setdefault("runtime", {})["gpu_ids"] = [str(g) for g in ray.get_gpu_ids()]
        every = float(trial_config.get("runtime", {}).get("checkpoint_every_s", 30.0))
        from .loop import run_trial  # torch is imported by the trial's process only
        run_trial(trial_config, TuneHooks(key, root, every, stage=trial_config.get("stage", "")))
    except Exception as exc:
        if root:
            last = (traceback.format_exception_only(type(exc), exc)[-1].strip() or type(exc).__name__)[:2000]
            try:
                storage.write_bytes(error_uri(root, key), last.encode())
            except OSError:
                pass
        raise
