"""The Ray Tune trainable: the shared loop with Tune's report and checkpoints.

`tune_trainable(config, base=...)` is what a stage hands to `tune.Tuner`
(through `tune.with_parameters`, so the stage's constants travel once through
the object store). `config` holds only what the searcher sampled; see
`trainables.config.resolve`. Each epoch the loop's report becomes one
`tune.report(metrics, checkpoint=...)`; the result carries the epoch's rows
under the key `rows` for the driver-side Parquet sink. A retried or restored
trial resumes from its last checkpoint.
"""

from __future__ import annotations

import os
import tempfile

from ray import tune

from . import storage
from .config import resolve
from .loop import run_trial

CHECKPOINT_FILE = "state.pt"


class TuneHooks:
    """Connects the loop to Ray Tune: checkpoints in, results and checkpoints out."""

    def __init__(self):
        self.trial_id = tune.get_context().get_trial_id() or "unknown"

    def load_checkpoint(self):
        ckpt = tune.get_checkpoint()
        if ckpt is None:
            return None
        with ckpt.as_directory() as d:
            return storage.load_state(os.path.join(d, CHECKPOINT_FILE))

    def report(self, metrics, rows, state):
        payload = {**metrics, "rows": rows}
        if state is None:
            tune.report(payload)
            return
        with tempfile.TemporaryDirectory() as d:
            storage.save_state(state, os.path.join(d, CHECKPOINT_FILE))
            tune.report(payload, checkpoint=tune.Checkpoint.from_directory(d))


def tune_trainable(config: dict, base: dict | None = None) -> None:
    """Run one trial inside Ray Tune."""
    trial_config = resolve(base or {}, config)
    run_trial(trial_config, TuneHooks())
