"""Surviving failures: a killed driver, a diverging trial, damaged files, and unsafe loading.

The killed-driver test runs its own loopback Ray cluster and drives it from
separate `kdstudy` processes (see `tests/test_cluster.py`); the others use the
session's local Ray (`ray_local`) or no Ray at all.
"""

from __future__ import annotations

import os
import re
import shutil
import signal
import time
from pathlib import Path

import optuna
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from study.cli import main
from study.runner import run_study
from study.spec import parse_spec

from .conftest import micro_spec
from .test_cluster import cluster  # noqa: F401  (the fixture: one loopback cluster per module)
from .test_cluster import (REPO, assert_rows_exactly_once, driver, finish, read_rows, write_spec)


def _mtimes(root: Path) -> dict[str, int]:
    return {str(p): p.stat().st_mtime_ns for p in root.rglob("*") if p.is_file()}


def _optuna_trials(study: Path, prefix: str) -> list:
    """Every Optuna trial of the experiments whose journal starts with `prefix`."""
    trials = []
    for journal in sorted((study / "optuna").glob(f"{prefix}*.journal")):
        storage = optuna.storages.JournalStorage(optuna.storages.journal.JournalFileBackend(str(journal)))
        trials += optuna.load_study(study_name=journal.stem, storage=storage).trials
    return trials


# --------------------------------------------------------------------------- killed driver


def test_killed_driver_resumes_without_retraining_or_losing_rows(cluster, tmp_path, data_root):
    epochs = 10
    spec = micro_spec(tmp_path, data_root, baseline={"seeds": 0},
                      teachers={"family": "mlp", "sizes": [8], "seeds": 1, "epochs": 2},
                      dataset={"name": "mnist1d", "num_samples": 3000, "root": data_root},
                      student={"family": "cnn1d", "size": 16},
                      train={"epochs": epochs, "batch_size": 64, "lr": 0.01},
                      methods={"kd": {"trials": 2}})
    spec_path = write_spec(tmp_path / "spec.yaml", spec)
    study = tmp_path / "results" / "micro"
    log = tmp_path / "driver.log"
    p = driver(cluster, "run", str(spec_path), "--address", cluster.address, "--no-report", log=log)
    killed, deadline = False, time.time() + 150
    while not killed and time.time() < deadline and p.poll() is None:
        time.sleep(0.2)
        try:
            df = read_rows(study)
        except Exception:  # a file being replaced at this instant
            continue
        if df is not None and (df["stage"] == "search").any():
            search = df[df.stage == "search"]
            last_epochs = search.groupby("trial_id")["epoch"].max()
            # both trials started, and at least one is mid-way: the kill interrupts real work
            if len(last_epochs) == 2 and last_epochs.max() >= 2 and last_epochs.min() < epochs:
                os.killpg(p.pid, signal.SIGKILL)  # the driver and nothing else
                p.wait(timeout=10)
                killed = True
    assert killed, f"the search never got going:\n{log.read_text()[-3000:]}"
    zoo_before = _mtimes(study / "zoo")
    assert len([f for f in zoo_before if f.endswith("meta.json")]) == 1
    partial = read_rows(study)
    search_before = partial[partial.stage == "search"]
    assert search_before.groupby("trial_id")["epoch"].max().min() < epochs, "killed too late to show anything"

    log2 = tmp_path / "resume.log"
    out = finish(driver(cluster, "resume", str(study), "--address", cluster.address, log=log2), log2, timeout=180)
    assert "teachers: all 1 in the zoo, none retrained" in out
    assert "search kd: resuming an interrupted run" in out
    assert _mtimes(study / "zoo") == zoo_before  # no teacher retrained or rewritten

    df = read_rows(study)
    assert_rows_exactly_once(df[df.stage == "search"], epochs)
    assert_rows_exactly_once(df[df.stage == "teachers"], 2)
    assert set(df[df.stage == "search"]["trial_id"]) == set(search_before["trial_id"])  # resumed, not replaced
    # rows written before the kill survive as they were (the resumed trials continue after them)
    merged = search_before.merge(df, on=["trial_id", "epoch", "role"], suffixes=("", "_after"))
    assert len(merged) == len(search_before)
    assert (merged["val_acc"] == merged["val_acc_after"]).all()
    # Optuna saw exactly the two trials, both finished
    trials = _optuna_trials(study, "search-kd-")
    assert [t.state.name for t in trials] == ["COMPLETE", "COMPLETE"], trials


# --------------------------------------------------------------------------- diverging trial


@pytest.fixture(scope="module")
def diverging_study(tmp_path_factory, data_root, ray_local):
    """A study whose `scratch` search uses lr=10 with SGD (NaN loss at epoch 2); `kd` and the baseline are sane."""
    tmp = tmp_path_factory.mktemp("diverge")
    spec = micro_spec(tmp, data_root, student={"family": "cnn1d", "size": 16},
                      teachers={"family": "mlp", "sizes": [8], "seeds": 1, "epochs": 2},
                      train={"epochs": 3, "batch_size": 128, "lr": 0.05, "optimizer": "sgd"},
                      baseline={"seeds": 1}, failure={"max_failures": 1},
                      methods={"scratch": {"trials": 1, "space": {"lr": 10.0,
                                                                  "weight_decay": {"low": 0.0, "high": 1e-6}}},
                               "kd": {"trials": 2}})
    spec_path = write_spec(tmp / "spec.yaml", spec)
    root = Path(run_study(parse_spec(spec)))
    return spec_path, root


def test_diverging_trial_is_recorded_and_the_study_goes_on(diverging_study):
    _, root = diverging_study
    df = read_rows(root)
    search = df[df.stage == "search"]
    bad = search[search.method == "scratch"].sort_values("epoch")
    assert bad["trial_id"].nunique() == 1
    assert list(bad["status"]) == ["ok", "diverged"]  # diverged at epoch 2
    good, last = bad.iloc[0], bad.iloc[-1]
    # the diverged row carries the last good metrics
    for col in ("val_acc", "test_acc", "val_loss", "test_loss"):
        assert last[col] == good[col] or (pd_isnan(last[col]) and pd_isnan(good[col])), col
    assert good["val_acc"] == good["val_acc"]  # a real number
    assert pd_isnan(last["train_loss"])
    # Optuna was told the trial failed
    assert [t.state.name for t in _optuna_trials(root, "search-scratch-")] == ["FAIL"]
    # ... and the rest of the study finished normally
    kd = search[search.method == "kd"]
    assert kd["trial_id"].nunique() == 2 and (kd["status"] == "ok").all()
    assert_rows_exactly_once(kd, 3)
    assert [t.state.name for t in _optuna_trials(root, "search-kd-")] == ["COMPLETE", "COMPLETE"]
    assert (df[df.stage == "baseline"]["status"] == "ok").all()


def pd_isnan(x) -> bool:
    return x != x


# --------------------------------------------------------------------------- damaged files


def test_damaged_teacher_checkpoint_names_the_file(diverging_study, tmp_path, capsys):
    spec_path, root = diverging_study
    # a copy of the study: the same spec pointed at another storage, holding the same zoo
    storage = tmp_path / "copy"
    shutil.copytree(root, storage / root.name)
    model = next((storage / root.name / "zoo").rglob("model.pt"))

    model.write_bytes(model.read_bytes()[:100])  # truncated
    assert main(["run", str(spec_path), "--storage", str(storage), "--no-report"]) == 1
    err = capsys.readouterr().err
    assert str(model) in err and "corrupt" in err and "Traceback" not in err

    model.unlink()  # missing
    assert main(["run", str(spec_path), "--storage", str(storage), "--no-report"]) == 1
    err = capsys.readouterr().err
    assert str(model) in err and "missing" in err

    meta = model.parent / "meta.json"
    meta.write_text("{not json")
    assert main(["run", str(spec_path), "--storage", str(storage), "--no-report"]) == 1
    err = capsys.readouterr().err
    assert str(meta) in err and "corrupt" in err


def test_damaged_or_foreign_results_name_the_file(diverging_study, tmp_path):
    load = pytest.importorskip("analysis.load")
    _, root = diverging_study
    copy = tmp_path / "study"
    shutil.copytree(root / "results", copy / "results")
    assert len(load.load(copy)) > 0
    part = sorted((copy / "results" / "search").glob("*.parquet"))[0]

    original = part.read_bytes()
    part.write_bytes(original[: len(original) // 2])  # a torn write
    with pytest.raises(load.ResultsFileError, match=re.escape(str(part))):
        load.load(copy)

    table = pq.read_table(pa.BufferReader(original))  # another schema version
    table = table.replace_schema_metadata({b"kdstudy_schema_version": b"0"})
    pq.write_table(table, part)
    with pytest.raises(load.SchemaVersionError, match=re.escape(str(part))):
        load.load(copy)


# --------------------------------------------------------------------------- safety


PACKAGES = ("study", "trainables", "analysis")


def _sources():
    for pkg in PACKAGES:
        for path in sorted((REPO / pkg).rglob("*.py")):
            yield path, path.read_text()


def test_weights_load_weights_only_and_nothing_is_unpickled():
    loads = 0
    for path, text in _sources():
        for m in re.finditer(r"torch\.load\(", text):
            call = text[m.start(): text.find("\n", text.find(")", m.start()))]
            assert "weights_only=True" in call, f"{path}: {call}"
            loads += 1
        for bad in ("pickle.load", "cloudpickle.load", "dill.load", "joblib.load", "yaml.load(",
                    "yaml.unsafe_load", "allow_pickle=True"):  # np.load is safe without allow_pickle
            assert bad not in text, f"{path} uses {bad}"
    assert loads >= 1  # the loader is there, and it is weights-only


def test_runner_keeps_the_dashboard_private():
    text = (REPO / "study" / "runner.py").read_text()
    calls = re.findall(r"ray\.init\(([^)]*)\)", text)
    assert calls, "the runner starts or joins Ray"
    assert "0.0.0.0" not in text and "dashboard_host" not in text
    local = [c for c in calls if "address" not in c]
    assert local and all("include_dashboard=False" in c for c in local), calls
    # and no spec field or CLI flag can turn the dashboard on
    assert "dashboard" not in (REPO / "study" / "cli.py").read_text().replace("ray dashboard", "")


# --------------------------------------------------------------------------- storage is a URI


def test_file_uri_storage_end_to_end(tmp_path, data_root, ray_local, capsys):
    """With `storage: file://...` everything (spec, zoo, Tune, Optuna, results, markers) lives under the URI."""
    uri = f"file://{tmp_path}/remote"
    spec = parse_spec(micro_spec(tmp_path, data_root, storage=uri, baseline={"seeds": 1},
                                 teachers={"family": "mlp", "sizes": [8], "seeds": 1, "epochs": 2},
                                 train={"epochs": 2, "batch_size": 128, "lr": 0.01}, methods={"kd": {"trials": 1}}))
    root = run_study(spec)
    assert root == f"{uri}/micro"
    study = tmp_path / "remote" / "micro"
    assert {p.name for p in study.iterdir()} >= {"spec.json", "zoo", "tune", "optuna", "results", "stages"}
    assert not (tmp_path / "results").exists()  # nothing beside the URI
    df = read_rows(study)
    assert set(df["stage"]) == {"teachers", "baseline", "search"}
    assert_rows_exactly_once(df, 2)
    load = pytest.importorskip("analysis.load")
    assert len(load.load(root)) == len(df)  # readable through the URI too
    capsys.readouterr()
    run_study(spec)  # a second run finds every stage finished, through the URI
    assert capsys.readouterr().out.count("finished earlier") == 2
