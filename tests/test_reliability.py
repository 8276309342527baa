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
from types import SimpleNamespace

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

from .conftest import copy_study, micro_spec
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


@pytest.mark.long
def test_interrupts_then_resume_from_a_moved_folder_and_a_relative_path(tmp_path, data_root):
    # small batches: every epoch takes a while, so each interrupt surely lands mid-trial
    epochs, teacher_epochs = 4, 14
    spec = micro_spec(tmp_path, data_root, dataset={"name": "mnist1d", "num_samples": 3000, "root": data_root},
                      student={"family": "cnn1d", "size": 16},
                      teachers={"family": "cnn1d", "sizes": [8], "seeds": 1, "epochs": teacher_epochs},
                      train={"epochs": epochs, "batch_size": 16, "lr": 0.005},
                      methods={"kd": {"trials": 2}}, confirm={"seeds": 1, "top_k": 1},
                      runtime={"checkpoint_every_s": 0})
    spec_path = write_spec(tmp_path / "spec.yaml", spec)
    study = tmp_path / "results" / "micro"

    # 1. Ctrl-C while the teacher trains: exit 130, one line, no marker for what was cut
    log = tmp_path / "run1.log"
    code, out = interrupt_when(cli("run", str(spec_path), "--no-report", log=log), log, study,
                               lambda df: ((df.stage == "teachers") & (df.epoch >= 1)).any()
                               and df[df.stage == "teachers"]["epoch"].max() <= teacher_epochs - 8)
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
    for stage, trials in {"teachers": 1, "search": 2, "confirm": 1, "baseline": 1}.items():
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


@pytest.mark.long
def test_failed_trial_is_recorded_shown_and_retried(tmp_path, data_root, ray_local, capsys):
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
    # the next run (in this process, on the session's Ray: no fault injected there) retries it (it is
    # not skipped) and finishes it under the same trial key
    code = main(["resume", str(study), "--no-report"])
    assert code == 0, "".join(capsys.readouterr())
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


@pytest.mark.long
def test_extended_study_runs_only_its_new_trials(finished_micro, tmp_path, ray_local):
    """`run --extend` with more confirm seeds and search trials, on a copy of the session's finished
    micro study: the finished experiments' markers no longer cover what they owe, so the new trials
    run, and nothing that finished runs again."""
    study, raw = copy_study(finished_micro, tmp_path)
    before = read_rows(study)
    wider = {**raw, "methods": {"kd": {"trials": 3}}, "confirm": {**raw["confirm"], "seeds": 3}}
    with pytest.raises(Exception, match="--extend"):
        run_study(parse_spec(wider))
    root, outcome = run_study(parse_spec(wider), extend=True)
    assert not outcome.failed and not outcome.blocked
    assert Path(root) == study
    after = read_rows(study)
    _no_duplicates(after)
    # every row of the first run is still there, unchanged (nothing ran again)
    old = after.merge(before[["trial_id", "epoch", "role", "timestamp"]], on=["trial_id", "epoch", "role"],
                      suffixes=("", "_before"))
    assert len(old) == len(before) and (old["timestamp"] == old["timestamp_before"]).all()
    # the search has its third trial, the baseline and the confirm their third seed
    assert after.loc[after.stage == "search", "trial_id"].nunique() == 3
    for stage in ("baseline", "confirm"):
        part = after[after.stage == stage].drop_duplicates("trial_id")
        assert not part.duplicated(["config_id", "seed"]).any(), part
        assert part.groupby("config_id")["seed"].nunique().max() == 3, part  # a search that grew may pick anew
    assert after.loc[after.stage == "teachers", "trial_id"].nunique() == 2  # no teacher trained again
    # and a plain resume now has nothing left to do
    _, outcome = run_study(parse_spec(wider))
    assert not outcome.failed and len(read_rows(study)) == len(after)


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
           "runtime": {}, "hp": {}, "export": {"uri": str(root), "epochs": [], "meta": {"key_content": job["content"]}}}
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

    for gpu in (1.5, 2):  # a trial trains on one GPU: a fraction of it, at most all of it
        with pytest.raises(SpecError, match=r"resources.gpu: a fraction of one GPU"):
            parse_spec(micro_spec(tmp_path, data_root, resources={"gpu": gpu}))
    parse_spec(micro_spec(tmp_path, data_root, resources={"gpu": 1}))

    import torch

    if not torch.cuda.is_available():
        cuda = micro_spec(tmp_path, data_root, teachers=None, methods={}, runtime={"device": "cuda"})
        assert main(["run", str(write_spec(tmp_path / "cuda.yaml", cuda)), "--no-report"]) == 2
        assert "runtime.device: cuda" in capsys.readouterr().err


# --------------------------------------------------------------------------- a diverging trial


@pytest.mark.long
def test_diverging_trial_is_an_outcome_and_the_study_goes_on(tmp_path, data_root, ray_local):
    """`scratch` searched at lr=10 with SGD diverges (NaN loss); it is recorded as such, not retried as an error."""
    raw = micro_spec(tmp_path, data_root, student={"family": "cnn1d", "size": 16}, teachers=None,
                     train={"epochs": 3, "batch_size": 128, "lr": 0.05, "optimizer": "sgd"},
                     failure={"max_failures": 1},
                     methods={"scratch": {"trials": 1, "space": {"lr": 10.0,
                                                                 "weight_decay": {"low": 0.0, "high": 1e-6}}}})
    root, outcome = run_study(parse_spec(raw))
    # the search, the baseline's search and the baseline finish; only the confirm of a search whose
    # every trial diverged fails, naming why (there is nothing to confirm)
    assert any(n.startswith("search-scratch-") for n in outcome.finished), outcome
    assert [n.split("-")[:2] for n in outcome.failed] == [["confirm", "scratch"]], outcome
    assert "no trial that trained to the end" in next(iter(outcome.failed.values()))
    df = read_rows(Path(root))
    bad = df[df.experiment.fillna("").str.startswith("search-scratch-")].sort_values("epoch")
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


# --------------------------------------------------------------------------- records that were changed
#
# One small study, finished once for the module; each test below damages a copy of it.


@pytest.fixture
def finished_study(finished_micro):
    """The session's finished micro study (conftest's `finished_micro`, stored through a file:// URI):
    (its local folder, spec dict)."""
    return finished_micro.folder, finished_micro.raw


def test_file_uri_storage_end_to_end(finished_study, capsys):
    """The finished study was run through a file:// URI: everything lands under it, nothing beside it,
    it reads back through the URI, and a second run finds every experiment finished through it."""
    study, raw = finished_study
    base = study.parent.parent
    assert {p.name for p in study.iterdir()} >= {"spec.json", "zoo", "optuna", "results", "stages", "checkpoints"}
    assert sorted(p.name for p in base.iterdir()) == ["remote"]  # nothing beside the URI
    df = read_rows(study)
    assert set(df["stage"]) == {"teachers", "baseline", "search", "confirm"}
    assert_rows_exactly_once(df, 2)
    load = pytest.importorskip("analysis.load")
    assert len(load.load(raw["storage"] + "/micro")) == len(df)  # readable through the URI too
    capsys.readouterr()
    run_study(parse_spec(raw))  # a second run finds every experiment finished, through the URI
    assert "finished earlier (verified), skipped" in capsys.readouterr().out


def _copy(finished_study, tmp_path) -> tuple[Path, dict, Path]:
    """A copy of the finished study under tmp_path (storage moved there), its spec and a spec file for it."""
    study, raw = finished_study
    copy, raw = copy_study(SimpleNamespace(folder=study, raw=raw), tmp_path)
    return copy, raw, write_spec(tmp_path / "spec.yaml", raw)


def _optuna_trials(study: Path) -> dict:
    out = {}
    for j in (study / "optuna").glob("*.journal"):
        st = optuna.load_study(study_name=j.stem, storage=optuna.storages.JournalStorage(
            optuna.storages.journal.JournalFileBackend(str(j))))
        out[j.stem] = [(t.number, t.state.name, t.params, t.value) for t in st.trials]
    return out


def _bytes_of(study: Path) -> dict:
    return {p.relative_to(study): p.read_bytes() for p in (study / "results").rglob("*.parquet")}


def test_edited_spec_json_is_refused_with_the_difference(finished_study, tmp_path, capsys, no_ray):
    study, raw, spec_path = _copy(finished_study, tmp_path)
    saved = (study / "spec.json").read_text()
    assert json.loads(saved)["kdstudy"]["content_sha256"] and (study / "record" / "spec.json").read_text() == saved
    (study / "spec.json").write_text(saved.replace('"lr": 0.005', '"lr": 0.01'))
    for argv in (["resume", str(study), "--no-report"], ["run", str(spec_path), "--no-report"]):
        assert main(argv) == 1, argv  # as for an edited spec YAML
        err = capsys.readouterr().err
        assert "spec.json was edited after the study started" in err and "Traceback" not in err, err
        assert re.search(r'^-\s+"lr": 0.005', err, re.M) and re.search(r'^\+\s+"lr": 0.01', err, re.M), err
    # a study begun by an older kdstudy (no checksum, no record): its markers speak for what ran
    old = json.loads(saved)
    old["kdstudy"] = {"saved": old["kdstudy"]["saved"], "code_version": "0.1.0"}
    shutil.rmtree(study / "record")
    (study / "spec.json").write_text(json.dumps(old, indent=1).replace('"lr": 0.005', '"lr": 0.01'))
    assert main(["resume", str(study), "--no-report"]) == 1
    err = capsys.readouterr().err
    assert "does not describe what this study ran" in err and "baseline-scratch-" in err, err
    # put back, it resumes (and is recorded now: a later edit is refused with its difference)
    (study / "spec.json").write_text(json.dumps(old, indent=1))
    assert StudyFolder(str(study)).saved_spec() is not None
    StudyFolder(str(study)).adopt(parse_spec(raw))
    assert (study / "record" / "spec.json").exists()


def test_a_configuration_id_covers_the_whole_configuration(finished_study):
    from analysis import load
    from trainables.config import resolve
    from trainables.trainable import config_id

    df = load(finished_study[0]).drop_duplicates(["stage", "trial_id"])
    by = {stage: part for stage, part in df.groupby("stage")}
    # the seeds of one configuration share it, the confirm reruns share their search trial's
    assert by["baseline"]["config_id"].nunique() == 1 and by["baseline"]["seed"].nunique() == 2
    assert by["confirm"].groupby("config_id")["seed"].nunique().eq(2).all()
    assert set(by["confirm"]["config_id"]) <= set(by["search"]["config_id"])
    assert by["teachers"]["config_id"].nunique() == 2  # two sizes, two configurations
    from analysis.status import status_frame  # the status table groups a configuration's seeds, and only them

    frame = status_frame(load(finished_study[0])).set_index(["stage", "method"])
    assert frame.loc[("baseline", "scratch"), "result of"] == "mean of 2 seeds"
    # two baseline recipes (the edited-spec.json case) never share one; a seed, a path or a place do not count
    base = {"study": "s", "stage": "baseline", "method": "scratch", "seed": 0, "student": {"family": "mlp", "size": 16},
            "dataset": {"name": "mnist1d", "root": "/a"}, "train": {"epochs": 2, "lr": 0.005}, "runtime": {}, "hp": {}}
    one = config_id(resolve(base, {"seed": 10000, "_trial_key": "x"}))
    assert one != config_id(resolve({**base, "train": {"epochs": 2, "lr": 0.01}}, {"seed": 10000}))
    assert one == config_id(resolve({**base, "stage": "search", "dataset": {"name": "mnist1d", "root": "/b"},
                                     "experiment": "e", "paths": {"root": "/x"}}, {"seed": 10001}))
    # a study begun before: its scheme (the sampled values only) is kept, so its rows keep grouping
    assert config_id({"lr": 0.01, "seed": 3}, "sampled") == config_id({"lr": 0.01, "seed": 4}, "sampled")


def test_swapped_zoo_folders_are_named_before_any_trial(finished_study, tmp_path, capsys, no_ray):
    study, raw, spec_path = _copy(finished_study, tmp_path)
    a, b = sorted((study / "zoo").iterdir())
    assert json.loads((a / "meta.json").read_text())["key_content"]["model"]["size"] in (8, 32)
    tmp = study / "zoo" / "swap"
    a.rename(tmp), b.rename(a), tmp.rename(b)  # weights and meta together: each folder is self-consistent
    assert main(["resume", str(study), "--no-report"]) == 2
    err = capsys.readouterr().err
    assert f"zoo entry {a}" in err and "renamed or swapped" in err and "Traceback" not in err, err
    # entries written before meta.json recorded its key's content: compared with what the key expects
    for entry in (a, b):
        meta = json.loads((entry / "meta.json").read_text())
        del meta["key_content"]
        (entry / "meta.json").write_text(json.dumps(meta))
    assert main(["run", str(spec_path), "--no-report"]) == 2
    err = capsys.readouterr().err
    assert "renamed or swapped" in err and "differs in size" in err and "Traceback" not in err, err


@pytest.mark.long
def test_damaged_results_of_finished_experiments_are_trained_again(finished_study, tmp_path, capsys):
    """A truncated search and a truncated confirm file: `status` and `report` name the file in one line;
    `resume` trains those two trials again (nothing else), keeping the damaged files aside; a truncated
    baseline file, then `run`; a truncated teacher file stops before Ray with the file named."""
    from analysis import load

    study, raw, spec_path = _copy(finished_study, tmp_path)
    before = _bytes_of(study)
    journals = _optuna_trials(study)
    rows_before = load(study)
    victims = [sorted((study / "results" / stage).glob("*.parquet"))[0] for stage in ("search", "confirm")]
    for f in victims:
        with open(f, "r+b") as fh:
            fh.truncate(f.stat().st_size // 2)
    for argv in (["status", str(study)], ["report", str(study), "--no-png"]):
        assert main(argv) == 2
        err = capsys.readouterr().err
        assert any(str(v) in err for v in victims) and "Traceback" not in err, err
        assert len(err.strip().splitlines()) == 1, err
    assert main(["report", str(study), "--no-png", "--skip-bad"]) == 0
    assert main(["status", str(study), "--skip-bad"]) == 0
    capsys.readouterr()

    t0 = time.time()
    code = main(["resume", str(study)])  # in this process, on the session's Ray
    out = "".join(capsys.readouterr())
    print(f"resume (2 trials again) took {time.time() - t0:.1f} s")
    assert code == 0 and "Traceback" not in out, out
    assert out.count("is not what was verified") == 2 and "its trial is trained again" in out, out
    after = _bytes_of(study)
    changed = {p for p in after if after[p] != before.get(p)}
    assert {p.parent.name for p in changed if "_damaged" not in p.parts} == {"search", "confirm"}
    assert len([p for p in changed if "_damaged" not in p.parts]) == 2  # those two, nothing else
    assert len([p for p in after if "_damaged" in p.parts]) == 2  # the damaged files, kept aside
    assert _optuna_trials(study) == journals  # the search's record (and so the confirm's top-k) stands
    rows = load(study)
    assert len(rows) == len(rows_before) and set(rows["trial_id"]) == set(rows_before["trial_id"])
    assert (rows.drop_duplicates("trial_id")["status"] == "ok").all()
    assert (study / "report" / "report.html").exists()
    for victim in victims:  # the markers record the new files, size and checksum
        marker = json.loads(next((study / "stages").glob(f"{victim.parent.name}-*.json")).read_text())
        entry = next(t for t in marker["trials"] if t["trial_key"] == victim.stem)
        assert entry["file"]["size"] == victim.stat().st_size and "lost" not in entry

    # the same through `run` (in this process), for a baseline file that went missing, and a torn file
    # of an experiment not finished (its marker gone): set aside too, that trial starts again
    missing = sorted((study / "results" / "baseline").glob("*.parquet"))[0]
    missing.unlink()
    next((study / "stages").glob("confirm-*.json")).unlink()
    torn = sorted((study / "results" / "confirm").glob("*.parquet"))[-1]
    torn.write_bytes(torn.read_bytes()[:300])
    assert main(["run", str(spec_path), "--no-report"]) == 0
    out = capsys.readouterr().out
    assert "it is missing" in out and missing.exists(), out
    assert "of an unfinished trial: it cannot be read" in out and load(torn)["epoch"].tolist() == [1, 2], out

    # a teacher is never trained again (finished experiments distilled from its zoo entry): named before Ray
    teacher = sorted((study / "results" / "teachers").glob("*.parquet"))[0]
    teacher.write_bytes(teacher.read_bytes()[:100])
    refuse = pytest.MonkeyPatch()
    refuse.setattr(runner_mod, "init_ray", lambda *a, **k: pytest.fail("Ray was started"))
    try:
        assert main(["resume", str(study), "--no-report"]) == 2
    finally:
        refuse.undo()
    err = capsys.readouterr().err
    assert f"results/teachers/{teacher.name}" in err and "restore the file" in err and "Traceback" not in err, err
    assert len(err.strip().splitlines()) == 1


def test_a_lost_trial_the_scheduler_stopped_stops_again_where_it_stopped(tmp_path, data_root, ray_local):
    """A rerun of a stopped search trial (`_stop_after`) ends after the same epochs, as `stopped`."""
    from study.experiment import Launch, run_launch
    from study.results import read_trial

    spec = parse_spec(micro_spec(tmp_path, data_root, teachers=None, methods={"scratch": {"trials": 1}},
                                 train={"epochs": 3, "batch_size": 128, "lr": 0.01}))
    exp = next(e for e in plan(spec) if e.stage == "search")
    root = str(tmp_path / "study")
    base = {**exp.base, "runtime": {}, "paths": {"root": root}, "experiment": exp.name, "dataset": spec.dataset}
    run_launch(Launch(name=exp.name, stage="search", method="scratch", kind="grid", base=base, root=root,
                      jobs=[{"lr": 0.01, "_trial_key": "lost-s0", "_stop_after": 1}], owed=1, max_t=3))
    rows = read_trial(f"{root}/results", "search", "lost-s0")
    assert [r["epoch"] for r in rows] == [1] and rows[-1]["status"] == "stopped"
