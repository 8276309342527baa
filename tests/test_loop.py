"""The shared loop trains for real, reports honest rows, and resumes."""

from __future__ import annotations

import math

from analysis.schema import rows_to_table
from study.results import to_schema_row
from trainables.loop import LocalHooks, run_trial


def config(data_root, **over):
    cfg = {
        "study": "t", "stage": "adhoc", "method": "scratch", "seed": 0,
        "dataset": {"name": "mnist1d", "num_samples": 2000, "root": data_root},
        "student": {"family": "cnn1d", "size": 16},
        "train": {"epochs": 6, "batch_size": 64, "lr": 0.01, "weight_decay": 5e-4},
        "runtime": {"device": "cpu"}, "hp": {},
    }
    cfg.update(over)
    return cfg


def test_tiny_trainable_learns_well_above_chance(data_root):
    hooks = run_trial(config(data_root))
    last = hooks.rows[-1]
    assert last["epoch"] == 6 and last["role"] == "student"
    # 10 classes: chance is 0.10; a small 1-D CNN reaches far more in a few epochs
    assert last["val_acc"] > 0.4, last
    assert last["test_acc"] > 0.4, last
    assert hooks.rows[0]["train_loss"] > last["train_loss"]
    # every row maps onto the results schema
    table = rows_to_table([to_schema_row(r) for r in hooks.rows])
    assert table.num_rows == 6
    assert table.column("student_params")[0].as_py() > 0


def test_resume_from_checkpoint_matches_uninterrupted(data_root):
    full = run_trial(config(data_root, train={"epochs": 3, "batch_size": 64, "lr": 0.01}))

    class StopAfter(LocalHooks):
        def report(self, metrics, rows, state, final=False):
            super().report(metrics, rows, state)
            if metrics["epoch"] == 2:
                raise KeyboardInterrupt  # the process dies after epoch 2's checkpoint

    first = StopAfter()
    try:
        run_trial(config(data_root, train={"epochs": 3, "batch_size": 64, "lr": 0.01}), first)
    except KeyboardInterrupt:
        pass
    resumed = LocalHooks(state=first.state)
    run_trial(config(data_root, train={"epochs": 3, "batch_size": 64, "lr": 0.01}), resumed)
    assert [r["epoch"] for r in resumed.rows] == [2, 3]  # the checkpoint's epoch is reported again (idempotent)
    assert math.isclose(resumed.rows[-1]["val_acc"], full.rows[-1]["val_acc"])
    assert math.isclose(resumed.rows[-1]["train_loss"], full.rows[-1]["train_loss"], rel_tol=1e-5)
    assert math.isclose(resumed.rows[0]["val_acc"], full.rows[1]["val_acc"])  # the replayed epoch 2
