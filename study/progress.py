"""Live progress of a study on the terminal: one line per event that matters.

Each experiment gets a Tune callback that counts trials started, finished and
failed, and prints the best validation accuracy so far when a trial ends.
"""

from __future__ import annotations

import sys
import time

from ray.tune import Callback


class Progress:
    def __init__(self, stream=None, quiet: bool = False):
        self.stream = stream or sys.stdout
        self.quiet = quiet
        self.t0 = time.time()

    def say(self, msg: str) -> None:
        if not self.quiet:
            print(f"[{time.time() - self.t0:6.0f}s] {msg}", file=self.stream, flush=True)

    def start_stage(self, stage: str, label: str, trials: int) -> None:
        self.say(f"{stage} {label}: {trials} trial(s)")

    def end_stage(self, stage: str, label: str, done: int, failed: int) -> None:
        self.say(f"{stage} {label}: done ({done} finished, {failed} failed)")

    def callback(self, stage: str, label: str) -> "ProgressCallback":
        return ProgressCallback(self, f"{stage} {label}")


class ProgressCallback(Callback):
    def __init__(self, progress: Progress, name: str):
        self.progress = progress
        self.name = name
        self.running: set = set()
        self.done = 0
        self.failed = 0
        self.best: float | None = None

    def __getstate__(self):  # picklable with the Tuner's state: drop the stream
        return {"name": self.name, "progress": None, "running": set(), "done": 0, "failed": 0, "best": None}

    def __setstate__(self, state):
        self.__dict__.update(state)
        self.progress = Progress()

    def on_trial_start(self, iteration, trials, trial, **info):
        self.running.add(trial.trial_id)

    def on_trial_complete(self, iteration, trials, trial, **info):
        self.running.discard(trial.trial_id)
        self.done += 1
        r = trial.last_result or {}
        val, test = r.get("best_val_acc"), r.get("best_test_acc")
        if val is not None and (self.best is None or val > self.best):
            self.best = val
        desc = f"val {val:.3f} test {test:.3f}" if val is not None and test is not None else "no result"
        best = f"{self.best:.3f}" if self.best is not None else "-"
        self.progress.say(f"{self.name}: trial {trial.trial_id} done ({desc}) | "
                          f"{self.done} done, {len(self.running)} running, {self.failed} failed | best val {best}")

    def on_trial_error(self, iteration, trials, trial, **info):
        self.running.discard(trial.trial_id)
        self.failed += 1
        status = (trial.last_result or {}).get("status", "error")
        self.progress.say(f"{self.name}: trial {trial.trial_id} failed ({status}) | "
                          f"{self.done} done, {len(self.running)} running, {self.failed} failed")
