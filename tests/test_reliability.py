"""Nothing is recorded as finished unless it finished.

Interrupts (SIGINT to the whole process group, as a terminal's Ctrl-C) during
teachers and during search, then resume from a moved folder and a relative
path with malicious pickles planted everywhere; a failing trial; two drivers;
an edited spec; damaged and swapped zoo weights; bad input caught before Ray;
a diverging trial; unsafe loading. The drivers are separate `kdstudy`
processes with their own local Ray, except where a test says otherwise.
"""

from __future__ import annotations

import json
import os
import pickle
import re
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import optuna
import pytest

from analysis.schema import ROW_KEY
from study import runner as runner_mod
from study.cli import main
from study.experiment import latest_trials
from study.folder import StudyFolder
from study.graph import plan
from study.lock import StudyLock, StudyLocked
from study.runner import run_study
from study.spec import SpecError, parse_spec
from study.zoo import teacher_jobs
from trainables.loop import LocalHooks, run_trial

from .conftest import micro_spec
from .test_cluster import REPO, assert_rows_exactly_once, read_rows, write_spec


# --------------------------------------------------------------------------- helpers


def _env(**extra) -> dict:
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(REPO), os.environ.get("PYTHONPATH", "")]).rstrip(":")}
    env.pop("RAY_ADDRESS", None)
    env.update(extra)
    return env


def cli(*args: str, log: Path, cwd: Path = REPO, **env) -> subprocess.Popen:
    """`kdstudy ...` as its own process group (as a terminal runs it), logging to `log`."""
    return subprocess.Popen([sys.executable, "-m", "study.cli", *args], cwd=cwd, env=_env(**env),
                            stdout=open(log, "w"), stderr=subprocess.STDOUT, start_new_session=True)


def wait(proc: subprocess.Popen, log: Path, timeout: float) -> tuple[int, str]:
    try:
        proc.wait(timeout=timeout)
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)
        pytest.fail(f"driver did not finish in {timeout} s:\n{log.read_text()[-4000:]}")
    return proc.returncode, log.read_text()


def interrupt_when(proc, log, study: Path, ready, timeout=240) -> tuple[int, str]:
    """SIGINT the driver's process group once `ready(rows)` holds; returns (exit code, output)."""
    deadline = time.time() + timeout
    while time.time() < deadline and proc.poll() is None:
        time.sleep(0.2)
        try:
            df = read_rows(study)
        except Exception:  # a file being replaced at this instant
            continue
        if df is not None and ready(df):
            os.killpg(proc.pid, signal.SIGINT)
            t0 = time.time()
            code, out = wait(proc, log, 60)
            assert time.time() - t0 < 30, "Ctrl-C must stop the study promptly"
            return code, out
    pytest.fail(f"never reached the interrupt point:\n{log.read_text()[-3000:]}")


class Payload:
    """A pickle that, if ever unpickled, creates a file (it must never exist)."""

    def __init__(self, marker: Path):
        self.marker = marker

    def __reduce__(self):
        return (os.system, (f"touch {self.marker}",))


def plant_pickles(study: Path, marker: Path) -> int:
    blob = pickle.dumps(Payload(marker))
    folders = [study] + [p for p in study.rglob("*") if p.is_dir()]
    names = ("tuner.pkl", "searcher-state-2026-11-30.pkl", "error.pkl", "trainable.pkl", "experiment_state.pkl")
    for folder in folders:
        for name in names:
            (folder / name).write_bytes(blob)
    for tune_dir in [study / "tune" / "exp"]:
        tune_dir.mkdir(parents=True, exist_ok=True)
        for name in names:
            (tune_dir / name).write_bytes(blob)
    return len(folders)


def _no_duplicates(df) -> None:
    assert not df.duplicated(subset=ROW_KEY).any(), df[df.duplicated(subset=ROW_KEY, keep=False)]


# --------------------------------------------------------------------------- interrupts and resume


def test_interrupts_then_resume_from_a_moved_folder_and_a_relative_path(tmp_path, data_root):
    # small batches: every epoch takes a while, so each interrupt surely lands mid-trial
    epochs, teacher_epochs = 6, 20
    spec = micro_spec(tmp_path, data_root, dataset={"name": "mnist1d", "num_samples": 3000, "root": data_root},
                      student={"family": "cnn1d", "size": 16},
                      teachers={"family": "cnn1d", "sizes": [8], "seeds": 1, "epochs": teacher_epochs},
                      train={"epochs": epochs, "batch_size": 16, "lr": 0.005},
                      methods={"kd": {"trials": 2}}, confirm={"seeds": 2, "top_k": 1},
                      runtime={"checkpoint_every_s": 0})
    spec_path = write_spec(tmp_path / "spec.yaml", spec)
    study = tmp_path / "results" / "micro"

    # 1. Ctrl-C while the teacher trains: exit 130, one line, no marker for what was cut
    log = tmp_path / "run1.log"
    code, out = interrupt_when(cli("run", str(spec_path), "--no-report", log=log), log, study,
                               lambda df: ((df.stage == "teachers") & (df.epoch >= 1)).any()
                               and df[df.stage == "teachers"]["epoch"].max() <= teacher_epochs - 10)
    assert code == 130, out
    assert f"interrupted; continue with `kdstudy resume {study}`" in out and "Traceback" not in out
    # the teacher was cut mid-training: no zoo entry, and no marker for its experiment
    teachers_exp = [e.name for e in plan(parse_spec(spec)) if e.stage == "teachers"]
    assert not list((study / "zoo").glob("*/meta.json"))
    assert not any((study / "stages" / f"{n}.json").exists() for n in teachers_exp)

    # 2. resume, then Ctrl-C twice while the search trains: still 130, no traceback, no search marker
    log = tmp_path / "run2.log"
    proc = cli("resume", str(study), "--no-report", log=log)

    def mid_search(df):
        s = df[df.stage == "search"]
        return len(s) and s.groupby("trial_id")["epoch"].max().min() >= 1 and s["epoch"].max() < epochs

    deadline = time.time() + 240
    while proc.poll() is None and time.time() < deadline:
        time.sleep(0.2)
        try:
            df = read_rows(study)
        except Exception:
            continue
        if df is not None and mid_search(df):
            os.killpg(proc.pid, signal.SIGINT)
            time.sleep(0.3)
            if proc.poll() is None:
                os.killpg(proc.pid, signal.SIGINT)
            break
    code, out = wait(proc, log, 60)
    assert code == 130 and "Traceback" not in out and "AttributeError" not in out, out
    assert not list((study / "stages").glob("search-*.json"))
    partial = read_rows(study)
    cut = partial[partial.stage == "search"]
    assert (cut["status"] == "running").any()  # what was cut says so

    # 3. the study moves; malicious pickles and a torn journal record wait in it; resume from a relative path
    moved = tmp_path / "elsewhere" / "renamed"
    moved.parent.mkdir()
    shutil.move(str(study), str(moved))
    marker = tmp_path / "PWNED"
    assert plant_pickles(moved, marker) > 5
    journal = next((moved / "optuna").glob("search-*.journal"))
    with open(journal, "ab") as f:
        f.write(b'{"op_code": 5, "worker_id": "x", "trial_id"')  # a torn last record
    log = tmp_path / "run3.log"
    code, out = wait(cli("resume", "renamed", "--no-report", log=log, cwd=moved.parent), log, 400)
    assert code == 0, out
    assert not marker.exists(), "something unpickled a planted payload"
    assert not (tmp_path / "results" / "micro").exists()  # continued in place, no sibling study

    df = read_rows(moved)
    _no_duplicates(df)
    for stage, trials in {"teachers": 1, "search": 2, "confirm": 2, "baseline": 2}.items():
        rows = df[df.stage == stage]
        assert rows["trial_id"].nunique() == trials, (stage, rows["trial_id"].unique())
        assert (rows["status"] == "ok").all(), rows.groupby("trial_id")["status"].unique()
        assert_rows_exactly_once(rows[rows.role == rows.role.iloc[0]].drop_duplicates(ROW_KEY),
                                 teacher_epochs if stage == "teachers" else epochs)
    # the trials cut in step 2 continued under their own keys: nothing was added beside them
    assert set(cut["trial_id"]) <= set(df[df.stage == "search"]["trial_id"])
    # Optuna: every trial of the search finished, none left RUNNING
    for j in (moved / "optuna").glob("*.journal"):
        st = optuna.load_study(study_name=j.stem, storage=optuna.storages.JournalStorage(
            optuna.storages.journal.JournalFileBackend(str(j))))
        latest = latest_trials(st, j.stem)
        assert len(latest) == 2 and all(t.state.name == "COMPLETE" for t in latest.values())
    assert len(list((moved / "stages").glob("*.json"))) == len(plan(parse_spec(spec)))


# --------------------------------------------------------------------------- a failing trial


def test_failed_trial_is_recorded_shown_and_retried(tmp_path, data_root):
    spec = micro_spec(tmp_path, data_root, teachers=None, methods={}, confirm={"seeds": 1, "top_k": 1},
                      failure={"max_failures": 0})
    spec_path = write_spec(tmp_path / "spec.yaml", spec)
    study = tmp_path / "results" / "micro"
    log = tmp_path / "fail.log"
    code, out = wait(cli("run", str(spec_path), "--no-report", log=log, KDSTUDY_INJECT_FAULT="baseline:2"), log, 200)
    assert code == 1, out
    assert "failed" in out and "injected fault at epoch 2" in out and "kdstudy resume" in out
    df = read_rows(study)
    assert set(df["status"]) == {"failed"} and df["error"].str.contains("injected fault").all()
    assert not list((study / "stages").glob("*.json"))
    # the next run retries it (it is not skipped) and finishes it under the same trial key
    log = tmp_path / "retry.log"
    code, out = wait(cli("resume", str(study), "--no-report", log=log), log, 200)
    assert code == 0, out
    again = read_rows(study)
    assert set(again["trial_id"]) == set(df["trial_id"]) and (again["status"] == "ok").all()
    assert again["error"].isna().all()


# --------------------------------------------------------------------------- two drivers, edited specs


def test_second_driver_is_refused_and_a_stale_lock_is_taken_over(tmp_path, data_root, capsys):
    spec = parse_spec(micro_spec(tmp_path, data_root))
    root = StudyFolder(spec.study_uri).root
    StudyFolder(root).adopt(spec)
    holder = StudyLock(root)
    holder.acquire()
    try:
        with pytest.raises(StudyLocked, match="in use by .* since"):
            StudyLock(root).acquire()
        spec_path = write_spec(tmp_path / "spec.yaml", micro_spec(tmp_path, data_root))
        assert main(["run", str(spec_path), "--no-report"]) == 1
        err = capsys.readouterr().err
        assert "in use by" in err and "pid" in err and "Traceback" not in err and len(err.strip().splitlines()) == 1
    finally:
        holder.release()
    # a killed driver's lock: its heartbeat stops, and after the lease the next driver takes over
    lock = Path(root) / "lock.json"
    lock.write_text(json.dumps({"token": "dead", "owner": "gone pid 1", "since": time.time() - 3600,
                                "heartbeat": time.time() - 120, "lease_s": 60}))
    taker = StudyLock(root)
    taker.acquire()
    assert json.loads(lock.read_text())["token"] == taker.token
    taker.release()
    assert not lock.exists()


def test_driver_whose_lock_was_taken_over_stops(tmp_path, data_root):
    spec = parse_spec(micro_spec(tmp_path, data_root))
    root = StudyFolder(spec.study_uri).root
    lock = StudyLock(root, lease_s=0.4)
    lock.acquire()
    try:
        runner = runner_mod.StudyRunner(spec, root, lock=lock)
        runner.check_lock()  # still ours
        # another driver took over (ours stalled for a whole lease): the next heartbeat notices
        (Path(root) / "lock.json").write_text(json.dumps({"token": "other", "owner": "elsewhere pid 7",
                                                          "heartbeat": time.time(), "lease_s": 60}))
        deadline = time.time() + 5
        while not lock.lost and time.time() < deadline:
            time.sleep(0.05)
        with pytest.raises(runner_mod.StudyLockLost, match="another driver took the study over"):
            runner.check_lock()
    finally:
        lock.release()
    assert json.loads((Path(root) / "lock.json").read_text())["token"] == "other"  # never removes theirs


def test_edited_spec_is_refused_with_the_difference(tmp_path, data_root, capsys):
    raw = micro_spec(tmp_path, data_root, confirm={"seeds": 2, "top_k": 1})
    StudyFolder(parse_spec(raw).study_uri).adopt(parse_spec(raw))
    saved = (tmp_path / "results" / "micro" / "spec.json").read_text()
    edited = {**raw, "teachers": {**raw["teachers"], "sizes": [8, 16]}}
    assert main(["run", str(write_spec(tmp_path / "edited.yaml", edited)), "--no-report"]) == 1
    err = capsys.readouterr().err
    assert "another spec" in err and "--extend" in err and re.search(r"^\+\s+16", err, re.M), err
    assert (tmp_path / "results" / "micro" / "spec.json").read_text() == saved  # never overwritten
    # --extend accepts more seeds (recorded beside spec.json), and refuses other changes
    folder = StudyFolder(parse_spec(raw).study_uri)
    folder.adopt(parse_spec({**raw, "confirm": {"seeds": 4, "top_k": 1}}), extend=True)
    assert (tmp_path / "results" / "micro" / "spec-extend-1.json").exists()
    assert folder.saved_spec().confirm_seeds == 4
    with pytest.raises(Exception, match="only confirm.seeds and methods"):
        folder.adopt(parse_spec(edited), extend=True)


def test_extended_study_runs_only_its_new_trials(tmp_path, data_root, ray_local):
    """`run --extend` with more confirm seeds and search trials: the finished experiments' markers no
    longer cover what they owe, so the new trials run, and nothing that finished runs again."""
    raw = micro_spec(tmp_path, data_root, teachers={"family": "mlp", "sizes": [8], "seeds": 1, "epochs": 2},
                     train={"epochs": 2, "batch_size": 128, "lr": 0.01},
                     methods={"kd": {"trials": 2}}, confirm={"seeds": 1, "top_k": 1})
    root, outcome = run_study(parse_spec(raw))
    assert not outcome.failed and not outcome.blocked
    before = read_rows(Path(root))
    wider = {**raw, "methods": {"kd": {"trials": 3}}, "confirm": {"seeds": 2, "top_k": 1}}
    with pytest.raises(Exception, match="--extend"):
        run_study(parse_spec(wider))
    root, outcome = run_study(parse_spec(wider), extend=True)
    assert not outcome.failed and not outcome.blocked
    after = read_rows(Path(root))
    _no_duplicates(after)
    # every row of the first run is still there, unchanged (nothing ran again)
    old = after.merge(before[["trial_id", "epoch", "role", "timestamp"]], on=["trial_id", "epoch", "role"],
                      suffixes=("", "_before"))
    assert len(old) == len(before) and (old["timestamp"] == old["timestamp_before"]).all()
    # the search has its third trial, the baseline and the confirm their second seed
    assert after.loc[after.stage == "search", "trial_id"].nunique() == 3
    for stage in ("baseline", "confirm"):
        part = after[after.stage == stage].drop_duplicates("trial_id")
        assert not part.duplicated(["config_id", "seed"]).any(), part
        assert part.groupby("config_id")["seed"].nunique().max() == 2, part  # a search that grew may pick anew
    assert after.loc[after.stage == "teachers", "trial_id"].nunique() == 1
    # and a plain resume now has nothing left to do
    _, outcome = run_study(parse_spec(wider))
    assert not outcome.failed and len(read_rows(Path(root))) == len(after)


# --------------------------------------------------------------------------- preflight: before Ray starts


@pytest.fixture
def no_ray(monkeypatch):
    """Fail the test if the runner starts or joins Ray."""
    def refuse(*a, **k):
        raise AssertionError("Ray was started")
    monkeypatch.setattr(runner_mod, "init_ray", refuse)


def _zoo_entry(spec, job) -> Path:
    """Train one tiny teacher into the study's zoo, as the teachers stage does."""
    root = Path(spec.study_uri) / "zoo" / job["key"]
    cfg = {"study": spec.name, "stage": "teachers", "method": "scratch", "seed": job["seed"], "role": "teacher",
           "dataset": spec.dataset, "student": job["model"], "train": {**spec.train, "epochs": 1},
           "runtime": {}, "hp": {}, "export": {"uri": str(root), "epochs": []}}
    run_trial(cfg, LocalHooks())
    return root


def test_damaged_and_swapped_zoo_weights_are_named_before_training(tmp_path, data_root, capsys, no_ray):
    raw = micro_spec(tmp_path, data_root)
    spec = parse_spec(raw)
    spec_path = write_spec(tmp_path / "spec.yaml", raw)
    jobs = {j["size"]: j for j in teacher_jobs(spec)}
    small, big = _zoo_entry(spec, jobs[8]), _zoo_entry(spec, jobs[32])
    model = small / "model.pt"
    good = model.read_bytes()

    flipped = bytearray(good)
    flipped[len(flipped) // 2] ^= 0xFF  # one bit flipped
    model.write_bytes(bytes(flipped))
    assert main(["run", str(spec_path), "--no-report"]) == 2
    err = capsys.readouterr().err
    assert str(model) in err and "sha256" in err and "Traceback" not in err

    # the big teacher's weights copied into the small entry (checksum updated too): the architecture check names it
    shutil.copy(big / "model.pt", model)
    meta = json.loads((small / "meta.json").read_text())
    import hashlib

    meta["sha256"] = hashlib.sha256(model.read_bytes()).hexdigest()
    (small / "meta.json").write_text(json.dumps(meta))
    assert main(["run", str(spec_path), "--no-report"]) == 2
    err = capsys.readouterr().err
    assert str(model) in err and "do not fit the architecture" in err

    model.unlink()
    assert main(["run", str(spec_path), "--no-report"]) == 2
    assert "missing" in capsys.readouterr().err

    (small / "meta.json").write_text("{not json")
    assert main(["run", str(spec_path), "--no-report"]) == 2
    err = capsys.readouterr().err
    assert str(small / "meta.json") in err and "corrupt" in err


def test_bad_input_is_reported_before_ray_starts(tmp_path, data_root, capsys, no_ray):
    raw = micro_spec(tmp_path, data_root, teachers=None, methods={},
                     dataset={"name": "cifar100", "root": str(tmp_path / "no-cifar-here")},
                     student={"family": "cifar_resnet", "size": 8})
    assert main(["run", str(write_spec(tmp_path / "cifar.yaml", raw)), "--no-report"]) == 2
    err = capsys.readouterr().err
    assert "cifar100: dataset files not found" in err and "no-cifar-here" in err and "Traceback" not in err
    assert len(err.strip().splitlines()) == 1

    for gpu in (1.5, 2):  # a trial trains on one GPU: more would be reserved and idle
        with pytest.raises(SpecError, match=r"resources.gpu: a fraction of one GPU in \[0, 1\]"):
            parse_spec(micro_spec(tmp_path, data_root, resources={"gpu": gpu}))
    parse_spec(micro_spec(tmp_path, data_root, resources={"gpu": 1}))

    import torch

    if not torch.cuda.is_available():
        cuda = micro_spec(tmp_path, data_root, teachers=None, methods={}, runtime={"device": "cuda"})
        assert main(["run", str(write_spec(tmp_path / "cuda.yaml", cuda)), "--no-report"]) == 2
        assert "runtime.device: cuda" in capsys.readouterr().err


# --------------------------------------------------------------------------- a diverging trial


def test_diverging_trial_is_an_outcome_and_the_study_goes_on(tmp_path, data_root, ray_local):
    """`scratch` searched at lr=10 with SGD diverges (NaN loss); it is recorded as such, not retried as an error."""
    raw = micro_spec(tmp_path, data_root, student={"family": "cnn1d", "size": 16}, teachers=None,
                     train={"epochs": 3, "batch_size": 128, "lr": 0.05, "optimizer": "sgd"},
                     failure={"max_failures": 1},
                     methods={"scratch": {"trials": 1, "space": {"lr": 10.0,
                                                                 "weight_decay": {"low": 0.0, "high": 1e-6}}}})
    root, outcome = run_study(parse_spec(raw))
    assert not outcome.failed
    df = read_rows(Path(root))
    bad = df[df.stage == "search"].sort_values("epoch")
    assert bad["trial_id"].nunique() == 1 and set(bad["status"]) == {"diverged"}
    last = bad.iloc[-1]
    assert last["train_loss"] != last["train_loss"]  # NaN at the epoch it diverged
    assert bad["epoch"].max() < 3


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
        for bad in ("pickle.load", "cloudpickle.load", "dill.load", "joblib.load",
                    "yaml.unsafe_load", "allow_pickle=True", "Tuner.restore", "tune.Tuner.restore"):
            assert bad not in text, f"{path} uses {bad}"
        for m in re.finditer(r"yaml\.load\(", text):  # only with the spec's safe loader
            assert "Loader=SpecLoader" in text[m.start(): text.find("\n", m.start())], path
    assert loads >= 1  # the loader is there, and it is weights-only
    import yaml

    from study.spec import SpecLoader

    assert issubclass(SpecLoader, yaml.SafeLoader)


def test_a_pickled_checkpoint_is_refused(tmp_path):
    from trainables import storage

    marker = tmp_path / "PWNED"
    evil = tmp_path / "state.pt"
    evil.write_bytes(pickle.dumps(Payload(marker)))
    with pytest.raises(storage.CorruptCheckpointError, match=re.escape(str(evil))):
        storage.load_state(str(evil))
    assert not marker.exists()


def test_file_uri_storage_end_to_end(tmp_path, data_root, ray_local, capsys):
    """With `storage: file://...` everything (spec, zoo, Optuna, results, markers) lives under the URI."""
    uri = f"file://{tmp_path}/remote"
    spec = parse_spec(micro_spec(tmp_path, data_root, storage=uri, confirm={"seeds": 1, "top_k": 1},
                                 teachers={"family": "mlp", "sizes": [8], "seeds": 1, "epochs": 2},
                                 train={"epochs": 2, "batch_size": 128, "lr": 0.01}, methods={"kd": {"trials": 1}}))
    root, outcome = run_study(spec)
    assert root == f"{uri}/micro" and not outcome.failed
    study = tmp_path / "remote" / "micro"
    assert {p.name for p in study.iterdir()} >= {"spec.json", "zoo", "optuna", "results", "stages", "checkpoints"}
    assert not (tmp_path / "results").exists()  # nothing beside the URI
    df = read_rows(study)
    assert set(df["stage"]) == {"teachers", "baseline", "search", "confirm"}
    assert_rows_exactly_once(df, 2)
    load = pytest.importorskip("analysis.load")
    assert len(load.load(root)) == len(df)  # readable through the URI too
    capsys.readouterr()
    run_study(spec)  # a second run finds every experiment finished, through the URI
    assert "finished earlier (verified), skipped" in capsys.readouterr().out
