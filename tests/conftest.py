"""Shared fixtures: one real local Ray instance per test session, tiny specs."""

from __future__ import annotations

import os
import tempfile

import pytest

os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")
os.environ.setdefault("RAY_AUTH_MODE", "disabled")
os.environ.setdefault("RAY_TMPDIR", tempfile.mkdtemp(prefix="kdray-"))
os.environ.setdefault("TUNE_WARN_EXCESSIVE_EXPERIMENT_CHECKPOINT_SYNC_THRESHOLD_S", "0")


#: module fixtures that run a multi-minute scenario (a loopback cluster, a private SLURM, a local Ray of
#: the test's own, several studies): every test using one is marked `long`, so that `-m "not long"`
#: never builds them
LONG_FIXTURES = {"cluster", "example", "slurm", "two_studies", "tracked", "local_run", "feature_study"}


def pytest_collection_modifyitems(config, items):
    for item in items:
        if LONG_FIXTURES & set(getattr(item, "fixturenames", ())):
            item.add_marker(pytest.mark.long)


@pytest.fixture(scope="session")
def data_root(tmp_path_factory):
    """A dataset cache shared by the session's tests (MNIST-1D is generated once)."""
    root = tmp_path_factory.mktemp("data")
    return str(root)


@pytest.fixture(scope="session")
def ray_local():
    """A real local Ray instance (no dashboard, a few CPUs), started once."""
    import ray

    if not ray.is_initialized():
        ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False)
    yield ray
    ray.shutdown()


def micro_spec(tmp_path, data_root, **over) -> dict:
    """A study spec small enough to run end to end in seconds."""
    spec = {
        "name": "micro",
        "storage": str(tmp_path / "results"),
        "dataset": {"name": "mnist1d", "num_samples": 1000, "root": data_root},
        "student": {"family": "mlp", "size": 16},
        "teachers": {"family": "mlp", "sizes": [8, 32], "seeds": 1, "epochs": 3},
        "train": {"epochs": 3, "batch_size": 128, "lr": 0.01},
        # one trial at a time per experiment: Tune reuses the experiment's one actor for all its trials,
        # so each experiment pays a trial process's start-up (Ray, Tune, torch: most of a tiny trial) once
        "search": {"budget": "joint", "scheduler": "none", "max_concurrent": 1},
        "methods": {"kd": {"trials": 2}},
        "confirm": {"seeds": 1, "top_k": 1},
        "report": {"png": False},
    }
    spec.update(over)
    return spec


@pytest.fixture(scope="session")
def finished_micro(tmp_path_factory, data_root, ray_local):
    """One finished micro study, run once for the session and stored through a file:// URI: two
    teachers (sizes 8 and 32), the baseline, a joint KD search of two trials, both configurations
    confirmed on two paired seeds. Tests that only read it use `folder`; tests that change it work
    on a copy (`copy_study`). `output` is what the run printed, `took` its wall seconds."""
    import contextlib
    import io
    import time
    from pathlib import Path
    from types import SimpleNamespace

    from study.runner import run_study
    from study.spec import parse_spec

    base = tmp_path_factory.mktemp("finished")
    raw = micro_spec(base, data_root, teachers={"family": "mlp", "sizes": [8, 32], "seeds": 1, "epochs": 2},
                     train={"epochs": 2, "batch_size": 128, "lr": 0.005}, methods={"kd": {"trials": 2}},
                     confirm={"seeds": 2, "top_k": 2}, storage=f"file://{base}/remote")
    out, t0 = io.StringIO(), time.time()
    with contextlib.redirect_stdout(out):
        root, outcome = run_study(parse_spec(raw))
    took = time.time() - t0
    assert not outcome.failed and not outcome.blocked, (outcome, out.getvalue()[-3000:])
    assert root == f"file://{base}/remote/micro"
    return SimpleNamespace(folder=Path(base) / "remote" / "micro", uri=root, raw=raw, output=out.getvalue(),
                           took=took)


def copy_study(finished, dest) -> tuple:
    """A copy of a finished study under `dest` (its spec's storage moved there): (folder, spec dict)."""
    import shutil
    from pathlib import Path

    raw = {**finished.raw, "storage": str(Path(dest) / "results")}
    copy = Path(dest) / "results" / raw["name"]
    shutil.copytree(finished.folder, copy, ignore=shutil.ignore_patterns("lock.json"))
    return copy, raw
