"""Experiment trackers for real: a micro study logs to MLflow (file store), W&B (offline) and
TensorBoard, and each tracker's own reader gets back what the study's Parquet rows say."""

from __future__ import annotations

import glob
import json
import os
import struct
import subprocess
import sys
from pathlib import Path

import pyarrow.dataset as pads
import pytest

from study.folder import content
from study.graph import plan
from study.spec import SpecError, parse_spec

from .conftest import micro_spec

mlflow = pytest.importorskip("mlflow", reason="the mlflow extra is not installed (pip install 'kdstudy[test]')")
pytest.importorskip("wandb", reason="the wandb extra is not installed (pip install 'kdstudy[test]')")
pytest.importorskip("tensorboard", reason="the tensorboard extra is not installed (pip install 'kdstudy[test]')")

ROOT = Path(__file__).resolve().parent.parent


def _spec(tmp_path, data_root, **over):
    return micro_spec(tmp_path, data_root, name="trk",
                      teachers={"family": "mlp", "sizes": [8], "seeds": 1, "epochs": 2},
                      train={"epochs": 2, "batch_size": 128, "lr": 0.01}, **over)


@pytest.fixture(scope="module")
def tracked(tmp_path_factory, data_root, ray_local):
    """One micro study (a teacher, a KD search trial) with all three trackers on."""
    from study.runner import run_study

    tmp = tmp_path_factory.mktemp("tracked")
    os.environ.setdefault("WANDB_SILENT", "true")
    os.environ["MLFLOW_ALLOW_FILE_STORE"] = "true"  # this process reads MLflow's file store back
    spec = parse_spec(_spec(tmp, data_root, methods={"kd": {"trials": 1}}, tracking={
        "mlflow": {"uri": str(tmp / "mlruns")},
        "wandb": {"project": "kdstudy-test", "mode": "offline"},
        "tensorboard": True}))
    root, outcome = run_study(spec)
    assert not outcome.failed and not outcome.blocked
    rows = pads.dataset(str(Path(root) / "results"), format="parquet").to_table().to_pandas()
    return Path(root), tmp, spec, rows


def _val(rows, key: str, role: str) -> dict[int, float]:
    r = rows[(rows.trial_id == key) & (rows.role == role) & rows.exit.isna()]
    return dict(zip(r.epoch.astype(int), r.val_acc))


def test_spec_tracking_is_not_study_content(tmp_path, data_root):
    plain = parse_spec(_spec(tmp_path, data_root))
    tracked = parse_spec(_spec(tmp_path, data_root, tracking={"tensorboard": True, "mlflow": {"uri": "x"}}))
    assert plain.tracking == {} and tracked.tracking["tensorboard"] == {"dir": None}
    assert content(plain) == content(tracked)  # a study gains a tracker without a spec mismatch
    assert [e.name for e in plan(plain)] == [e.name for e in plan(tracked)]
    with pytest.raises(SpecError) as err:
        parse_spec(_spec(tmp_path, data_root, tracking={"wandb": {"mode": "cloud"}, "comet": {}}))
    text = str(err.value)
    assert "tracking.wandb.project: is required" in text and "tracking.wandb.mode" in text
    assert "tracking.comet: unknown field" in text


def test_mlflow_runs_read_back(tracked):
    from mlflow.tracking import MlflowClient

    root, tmp, spec, rows = tracked
    client = MlflowClient(str(tmp / "mlruns"))
    exp = client.get_experiment_by_name("trk")  # the study is one experiment, named after it
    runs = client.search_runs([exp.experiment_id])
    assert sorted(r.info.run_name for r in runs) == sorted(rows.trial_id.unique())
    for run in runs:
        tags, params, key = run.data.tags, run.data.params, run.info.run_name
        assert run.info.status == "FINISHED" and tags["outcome"] == "ok"
        stage = rows[rows.trial_id == key].stage.iloc[0]
        assert tags["stage"] == stage and tags["study"] == "trk" and tags["trial"] == key
        assert tags["seed"] == str(int(rows[rows.trial_id == key].seed.iloc[0]))
        role = "teacher" if stage == "teachers" else "student"
        history = {m.step: m.value for m in client.get_metric_history(run.info.run_id, f"{role}/val_acc")}
        assert history == pytest.approx(_val(rows, key, role))  # the study's own numbers, per epoch
        if stage == "search":
            assert tags["method"] == "kd" and tags["teacher_size"] == "8" and params["teacher_size"] == "8"
            hp = json.loads(rows[rows.trial_id == key].hparams_json.iloc[0])
            assert float(params["temperature"]) == pytest.approx(hp["temperature"])
            assert float(params["alpha"]) == pytest.approx(hp["alpha"])
            assert "loss/kd" in run.data.metrics or any(k.startswith("loss/") for k in run.data.metrics)
            assert run.data.metrics["best_val_acc"] == pytest.approx(max(_val(rows, key, "student").values()))
        # nothing of Tune's raw result (its rows, its bookkeeping) is a metric
        assert not {"rows", "done", "time_total_s", "pid"} & set(run.data.metrics)


def _wandb_records(path: str) -> list:
    """The records of a W&B transaction log (.wandb: a LevelDB-style log of wandb's protobuf Records)."""
    from wandb.proto import wandb_internal_pb2 as pb

    data = Path(path).read_bytes()
    assert data[:4] == b":W&B"
    pos, block, pending, out = 7, 32768, b"", []
    while pos + 7 <= len(data):
        if block - pos % block < 7:  # a block's tail too short for a header is padding
            pos += block - pos % block
            continue
        _crc, length, kind = struct.unpack("<IHB", data[pos:pos + 7])
        if kind == 0 and length == 0:
            break
        pending += data[pos + 7:pos + 7 + length]
        pos += 7 + length
        if kind in (1, 4):  # a full record, or the last piece of one
            rec = pb.Record()
            rec.ParseFromString(pending)
            out.append(rec)
            pending = b""
    return out


def _items(items) -> dict:
    """W&B items: a key with a '/' is stored as its parts (`nested_key`)."""
    return {i.key or "/".join(i.nested_key): json.loads(i.value_json) for i in items}


def test_wandb_offline_runs_written(tracked):
    root, tmp, spec, rows = tracked
    files = glob.glob(str(root / "wandb" / "wandb" / "offline-run-*" / "run-*.wandb"))
    assert len(files) == rows.trial_id.nunique()  # one offline run per trial, under the study folder
    seen = set()
    for f in files:
        records = _wandb_records(f)
        kinds = [r.WhichOneof("record_type") for r in records]
        assert "run" in kinds, f"{f} ({os.path.getsize(f)} bytes) holds no run record: {kinds}"
        run = next(r.run for r in records if r.WhichOneof("record_type") == "run")
        key = run.display_name
        seen.add(key)
        assert run.run_group == "trk" and run.project == "kdstudy-test"
        stage = rows[rows.trial_id == key].stage.iloc[0]
        assert run.job_type == stage and stage in run.tags
        role = "teacher" if stage == "teachers" else "student"
        history = {}
        config = _items(run.config.update)
        for r in records:
            if r.WhichOneof("record_type") == "history":
                items = _items(r.history.item)
                if f"{role}/val_acc" in items:
                    history[items["_step"]] = items[f"{role}/val_acc"]
            elif r.WhichOneof("record_type") == "config":
                config.update(_items(r.config.update))
        assert history == pytest.approx(_val(rows, key, role))
        assert config["outcome"] == "ok" and config["kdstudy/stage"] == stage
        if stage == "search":
            assert "temperature" in config and config["teacher_size"] == 8
    assert seen == set(rows.trial_id)


def test_tensorboard_scalars_read_back(tracked):
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    root, tmp, spec, rows = tracked
    for key, trial in rows.groupby("trial_id"):
        folder = root / "tensorboard" / trial.experiment.iloc[0] / key
        acc = EventAccumulator(str(folder))
        acc.Reload()
        role = "teacher" if trial.stage.iloc[0] == "teachers" else "student"
        scalars = {e.step: e.value for e in acc.Scalars(f"{role}/val_acc")}
        assert scalars == pytest.approx(_val(rows, key, role), abs=1e-6)  # float32 in the event file
        assert "hparams" in acc.PluginTagToContent("hparams") or acc.PluginTagToContent("hparams")


HIDE_MLFLOW = """
import importlib.machinery, sys
class Hidden(importlib.machinery.PathFinder):  # this interpreter cannot find mlflow
    @classmethod
    def find_spec(cls, name, path=None, target=None):
        return None if name.split(".")[0] == "mlflow" else super().find_spec(name, path, target)
sys.meta_path[:] = [Hidden if f is importlib.machinery.PathFinder else f for f in sys.meta_path]
from study.cli import main
code = main(sys.argv[1:])
import ray, study.experiment, study.runner
print("ray started:", ray.is_initialized())
print("trackers imported:", [m for m in ("mlflow", "wandb", "tensorboardX", "tensorboard") if m in sys.modules])
sys.exit(code)
"""


def test_a_tracker_not_installed_is_one_error_before_ray(tmp_path, data_root):
    """The CLI names the missing package and its extra, exits 2, and starts no Ray; checking the
    trackers imports none of them, nor do the runner and the experiment driver."""
    spec = _spec(tmp_path, data_root, tracking={"mlflow": {"uri": str(tmp_path / "ml")}, "tensorboard": True,
                                                "wandb": {"project": "p", "mode": "offline"}})
    path = tmp_path / "spec.yaml"
    path.write_text(json.dumps(spec))
    out = subprocess.run([sys.executable, "-c", HIDE_MLFLOW, "run", str(path), "--no-report"], cwd=ROOT,
                         capture_output=True, text=True, timeout=120, env={**os.environ, "PYTHONPATH": str(ROOT)})
    assert out.returncode == 2, out.stdout + out.stderr
    assert out.stderr.strip().splitlines() == [
        "kdstudy: tracking.mlflow: the mlflow package is not installed (pip install 'kdstudy[mlflow]')"]
    assert "ray started: False" in out.stdout and "trackers imported: []" in out.stdout
    assert not list(tmp_path.rglob("spec.json"))  # the study never started


def _outcome_trainable(config):
    """Reports one epoch as the training loop does, then ends the way `mode` says."""
    from ray import tune

    from trainables import storage
    from trainables.trainable import error_uri

    mode, key = config["mode"], config["_trial_key"]
    row = {"study": "out", "stage": "search", "trial_id": key, "method": "kd", "dataset": "mnist1d", "seed": 3,
           "role": "student", "generation": 0, "exit": None, "epoch": 1, "status": "ok",
           "experiment": "search-kd-x", "hparams": {"lr": 0.1, "temperature": 4.0}, "val_acc": 0.5,
           "train_loss": 1.25, "teacher_size": 32.0, "loss_terms_json": json.dumps({"kd": 0.5, "ce": 0.75})}
    tune.report({"val_acc": 0.5, "best_val_acc": 0.5, "epoch": 1, "generation": 0, "progress": 1,
                 "progress_total": 2 if mode == "stopped" else 1,
                 "status": "diverged" if mode == "diverged" else "ok", "rows": [row]})
    if mode == "failed":
        storage.write_bytes(error_uri(config["root"], key), b"RuntimeError: the loss exploded")
        raise RuntimeError("the loss exploded")


def _fit_outcomes(root, settings, modes):
    from ray import tune

    from study.experiment import Launch
    from study.results import ParquetSink
    from study.tracking import callbacks

    launch = Launch(name="search-kd-x", stage="search", method="kd", kind="grid", base={"study": "out"},
                    root=str(root), tracking=settings)
    sink = ParquetSink(str(root / "results"), "search", root=str(root))
    jobs = [{"mode": m, "_trial_key": f"search-kd-x-{m}", "root": str(root)} for m in modes]
    tuner = tune.Tuner(tune.with_resources(_outcome_trainable, {"cpu": 1}),
                       param_space=tune.grid_search(jobs),
                       tune_config=tune.TuneConfig(reuse_actors=True, max_concurrent_trials=2),
                       run_config=tune.RunConfig(storage_path=str(root / "tune"), verbose=0,
                                                 callbacks=[*callbacks(launch, sink), sink],
                                                 failure_config=tune.FailureConfig(max_failures=0)))
    tuner.fit()


class _Trial:
    """What the callbacks read of a Tune trial (for a driver's later attempt, without a Tuner)."""

    def __init__(self, key: str):
        self.trial_id, self.config, self.last_result = f"again-{key}", {"_trial_key": key}, {}

    def init_local_path(self):
        pass


def _second_attempt(root, settings, key):
    """A later driver runs the trial again: it reports its epoch once more and completes."""
    from study.experiment import Launch
    from study.results import ParquetSink
    from study.tracking import callbacks

    launch = Launch(name="search-kd-x", stage="search", method="kd", kind="grid", base={"study": "out"},
                    root=str(root), tracking={k: v for k, v in settings.items() if k != "tensorboard"})
    (mlflow_cb,) = callbacks(launch, ParquetSink(str(root / "results"), "search", root=str(root)))
    trial = _Trial(key)
    row = {"study": "out", "stage": "search", "method": "kd", "role": "student", "exit": None, "epoch": 1,
           "seed": 3, "teacher_size": 32.0, "hparams": {"lr": 0.1, "temperature": 4.0}, "val_acc": 0.5}
    trial.last_result = {"progress": 1, "progress_total": 1, "status": "ok", "rows": [row]}
    mlflow_cb.setup()
    mlflow_cb.on_trial_result(0, [], trial, trial.last_result)
    mlflow_cb.on_trial_complete(0, [], trial)
    assert not mlflow_cb._broken


def test_each_outcome_reaches_the_trackers(tmp_path, ray_local):
    """ok, stopped (by the scheduler), diverged and failed (with its error line) as kdstudy records
    them; a trial run again continues its MLflow run instead of starting a second one."""
    from mlflow.tracking import MlflowClient
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator
    from tensorboard.plugins.hparams import plugin_data_pb2

    from study.tracking import resolve

    os.environ["MLFLOW_ALLOW_FILE_STORE"] = "true"
    settings = resolve({"mlflow": {"uri": str(tmp_path / "mlruns"), "experiment": "outcomes"},
                        "tensorboard": {"dir": str(tmp_path / "tb")}}, str(tmp_path), "out")
    modes = ["ok", "stopped", "diverged", "failed"]
    _fit_outcomes(tmp_path, settings, modes)
    _second_attempt(tmp_path, settings, "search-kd-x-ok")
    client = MlflowClient(str(tmp_path / "mlruns"))
    runs = client.search_runs([client.get_experiment_by_name("outcomes").experiment_id])
    by_key = {r.info.run_name: r for r in runs}
    assert len(runs) == 4 and set(by_key) == {f"search-kd-x-{m}" for m in modes}
    for m in modes:
        run = by_key[f"search-kd-x-{m}"]
        assert run.data.tags["outcome"] == m
        assert run.info.status == ("FAILED" if m == "failed" else "FINISHED")
        assert run.data.params == {"lr": "0.1", "temperature": "4.0", "seed": "3", "teacher_size": "32"}
        assert run.data.tags["teacher_size"] == "32" and run.data.tags["seed"] == "3"
        assert run.data.metrics["student/train_loss"] == 1.25 and run.data.metrics["loss/ce"] == 0.75
    assert by_key["search-kd-x-failed"].data.tags["error"] == "RuntimeError: the loss exploded"
    ok = by_key["search-kd-x-ok"].info.run_id
    assert [m.step for m in client.get_metric_history(ok, "student/val_acc")] == [1, 1]  # both attempts, one run
    for m in modes:
        folder = tmp_path / "tb" / "out" / "search-kd-x" / f"search-kd-x-{m}"
        acc = EventAccumulator(str(folder))
        acc.Reload()
        assert [e.value for e in acc.Scalars("student/val_acc")][:1] == [0.5]
        start = acc.PluginTagToContent("hparams")["_hparams_/session_start_info"]
        info = plugin_data_pb2.HParamsPluginData.FromString(start).session_start_info
        assert info.hparams["outcome"].string_value == m and info.hparams["temperature"].number_value == 4.0


def test_the_driver_creates_the_mlflow_experiment_once_before_experiments_start(tmp_path, caplog):
    """Experiments start at once, each in its own process; had each created the study's MLflow
    experiment, two of them would race (a file store then holds two experiments of one name, each
    with part of the runs). The driver creates it first (`tracking.prepare`), once, and a tracker
    that cannot be prepared only warns."""
    from mlflow.tracking import MlflowClient

    from study import tracking

    os.environ["MLFLOW_ALLOW_FILE_STORE"] = "true"
    settings = tracking.resolve({"mlflow": {"uri": str(tmp_path / "mlruns")}}, str(tmp_path / "study"), "race")
    tracking.prepare(settings)
    tracking.prepare(settings)  # a resumed study finds it
    client = MlflowClient(str(tmp_path / "mlruns"))
    assert [e.name for e in client.search_experiments()].count("race") == 1
    # what each experiment's callback then does finds the one experiment instead of creating another
    from ray.air.integrations.mlflow import MLflowLoggerCallback

    callback = MLflowLoggerCallback(tracking_uri=str(tmp_path / "mlruns"), experiment_name="race")
    callback.setup()
    assert callback.mlflow_util.experiment_id == client.get_experiment_by_name("race").experiment_id
    assert [e.name for e in client.search_experiments()].count("race") == 1
    blocked = tmp_path / "a-file"  # where the store's folder would be: nothing can be created there
    blocked.write_text("")
    with caplog.at_level("WARNING"):
        tracking.prepare({"mlflow": {"uri": str(blocked / "mlruns"), "experiment": "x", "file_store": True}})
    assert "could not prepare experiment 'x'" in caplog.text


def test_a_failing_tracker_never_fails_the_study(tmp_path, caplog):
    """A tracker that cannot write warns once and is off for the experiment; the results sink is untouched."""
    from types import SimpleNamespace

    from study.experiment import Launch
    from study.results import ParquetSink
    from study.tracking import callbacks, resolve

    blocked = tmp_path / "not-a-folder"
    blocked.write_text("a file where MLflow wants its folder")
    settings = resolve({"mlflow": {"uri": str(blocked / "mlruns")}}, str(tmp_path), "broken")
    launch = Launch(name="search-kd-x", stage="search", method="kd", kind="grid", base={}, root=str(tmp_path),
                    tracking=settings)
    sink = ParquetSink(str(tmp_path / "results"), "search", root=str(tmp_path))
    (tracker,) = callbacks(launch, sink)
    trial = SimpleNamespace(trial_id="t1", config={"_trial_key": "search-kd-x-s0"}, last_result={"progress": 1})
    row = {"role": "student", "exit": None, "epoch": 1, "val_acc": 0.5, "hparams": {"lr": 0.1}}
    with caplog.at_level("WARNING", logger="study.tracking"):
        tracker.setup()
        for _ in range(3):
            tracker.on_trial_result(0, [], trial, {"progress": 1, "rows": [row]})
        tracker.on_trial_complete(0, [], trial)
    warnings = [r for r in caplog.records if "mlflow tracking failed" in r.getMessage()]
    assert len(warnings) == 1 and "off for the rest of experiment search-kd-x" in warnings[0].getMessage()


def test_preflight_names_what_a_tracker_lacks(tmp_path, monkeypatch):
    from study.tracking import problems

    monkeypatch.delenv("WANDB_API_KEY", raising=False)
    monkeypatch.delenv("WANDB_BASE_URL", raising=False)
    netrc = tmp_path / "netrc"
    netrc.write_text("machine example.org login me password secret\n")
    monkeypatch.setenv("NETRC", str(netrc))
    online = {"wandb": {"project": "p", "mode": "online"}}
    assert problems(online, str(tmp_path)) == [
        "tracking.wandb: mode online needs a W&B login (WANDB_API_KEY or `wandb login`); mode: offline writes "
        "the runs locally (`wandb sync` uploads them later)"]
    netrc.write_text("machine api.wandb.ai login user password 0123456789abcdef\n")
    netrc.chmod(0o600)
    assert problems(online, str(tmp_path)) == []  # `wandb login` wrote this
    assert problems({"wandb": {"project": "p", "mode": "offline"}}, str(tmp_path)) == []
    assert problems({"tensorboard": {"dir": None}}, "s3://bucket/kd/study") == [
        "tracking.tensorboard.dir: the study is on s3://bucket/kd/study, which TensorBoard cannot write to; "
        "give a local or shared folder"]
    assert problems({"tensorboard": {"dir": str(tmp_path)}}, "s3://bucket/kd/study") == []
    assert problems({}, "s3://bucket/kd/study") == []
