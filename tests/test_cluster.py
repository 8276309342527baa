"""Scale out: the cluster launcher config is valid, and a study runs across real Ray nodes.

The multi-node tests start their own Ray cluster on loopback (`ray start --head`
plus `ray start --address`, each `--block`ed in its own process group with a
private temp dir) and run the study driver as a separate `kdstudy run
--address` process, so the session's in-process Ray (`ray_local`) is never
touched. Teardown kills exactly the process groups these tests started (never
`ray stop`, which would stop every Ray on the machine).
"""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import textwrap
import time
from pathlib import Path
from types import SimpleNamespace

import pyarrow.dataset as pads
import pyarrow.parquet as pq
import pandas as pd
import pytest
import yaml

from analysis.schema import ROW_KEY

from trainables import plugins

from .conftest import micro_spec
from .test_plugins import env_with_repo, kdstudy, shadow_marks

REPO = Path(__file__).resolve().parent.parent
RAY = str(Path(sys.executable).with_name("ray"))


# --------------------------------------------------------------------------- cluster.yaml


def test_cluster_yaml_passes_rays_own_validator():
    from ray.autoscaler._private.util import prepare_config, validate_config

    raw = yaml.safe_load((REPO / "cluster.yaml").read_text())
    config = prepare_config(raw)
    validate_config(config)  # what `ray up` runs; raises on a schema error

    assert config["provider"]["type"] == "aws"
    head = config["available_node_types"][config["head_node_type"]]
    assert head["resources"].get("CPU", None) == 0  # no trial is scheduled on the head
    gpu_types = {n: t for n, t in config["available_node_types"].items() if t["resources"].get("GPU")}
    assert gpu_types, "an autoscaling GPU worker type"
    for t in config["available_node_types"].values():
        assert all(isinstance(v, int) for v in t["resources"].values())
    for t in gpu_types.values():
        assert t["min_workers"] == 0 and t["max_workers"] >= 1
    # the project is installed on every node from the synced working tree
    assert config["file_mounts"]["~/kdstudy"] == "."
    assert any("pip install" in c and "-e ." in c for c in config["setup_commands"])
    # the dashboard never listens beyond loopback; token auth on head and workers
    head_start = " ".join(config["head_start_ray_commands"])
    assert "--dashboard-host=127.0.0.1" in head_start and "0.0.0.0" not in head_start
    for cmds in (config["head_start_ray_commands"], config["worker_start_ray_commands"]):
        text = " ".join(cmds)
        assert "RAY_AUTH_MODE=token" in text and "RAY_AUTH_TOKEN=" in text
    assert "~/.ray/auth_token" in config["file_mounts"]
    # Ray-created security group: only its self-referencing rule and SSH, no extra open ports
    sg = config["provider"]["security_group"]
    assert sg["GroupName"] and sg.get("IpPermissions", []) == []


# --------------------------------------------------------------------------- a loopback cluster


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _children(pid: int) -> list[int]:
    """Every descendant of `pid` (from /proc), e.g. the worker processes a raylet forked."""
    parents: dict[int, list[int]] = {}
    for d in os.listdir("/proc"):
        if not d.isdigit():
            continue
        try:
            ppid = int(Path(f"/proc/{d}/stat").read_text().rsplit(")", 1)[1].split()[1])
        except (OSError, IndexError, ValueError):
            continue
        parents.setdefault(ppid, []).append(int(d))
    out, todo = [], [pid]
    while todo:
        for c in parents.get(todo.pop(), []):
            out.append(c)
            todo.append(c)
    return out


def _kill(pids) -> None:
    for p in pids:
        try:
            os.kill(p, signal.SIGKILL)
        except ProcessLookupError:
            pass


class LoopbackCluster:
    """A real multi-node Ray cluster on 127.0.0.1: a CPU-less head and 1-CPU workers."""

    def __init__(self, tmp: Path):
        self.tmp = tmp
        self.temp_dir = tmp / "ray"
        self.temp_dir.mkdir(parents=True, exist_ok=True)
        self.port = free_port()
        self.address = f"127.0.0.1:{self.port}"
        self.env = {
            **os.environ,
            "RAY_AUTH_MODE": "disabled", "RAY_USAGE_STATS_ENABLED": "0", "RAY_TMPDIR": str(self.temp_dir),
            "PYTHONPATH": os.pathsep.join([str(REPO), os.environ.get("PYTHONPATH", "")]).rstrip(os.pathsep),
            # notice a lost node within ~2 s instead of ~30 s
            "RAY_health_check_period_ms": "500", "RAY_health_check_timeout_ms": "500",
            "RAY_health_check_failure_threshold": "3",
        }
        self.head: subprocess.Popen | None = None
        self.workers: list[subprocess.Popen] = []

    def _start(self, args: list[str], log_name: str) -> subprocess.Popen:
        log = open(self.tmp / log_name, "w")
        proc = subprocess.Popen([RAY, "start", "--block", "--disable-usage-stats", "--node-ip-address=127.0.0.1",
                                 *args], env=self.env, stdout=log, stderr=subprocess.STDOUT,
                                start_new_session=True, cwd=REPO)
        deadline = time.time() + 90
        while time.time() < deadline:
            text = (self.tmp / log_name).read_text()
            if "Ray runtime started" in text:
                return proc
            if proc.poll() is not None:
                raise RuntimeError(f"ray start failed:\n{text[-3000:]}")
            time.sleep(0.3)
        raise TimeoutError(f"ray start did not come up in 90 s:\n{(self.tmp / log_name).read_text()[-3000:]}")

    def start(self, workers: int = 2) -> "LoopbackCluster":
        self.head = self._start(["--head", f"--port={self.port}", "--num-cpus=0", "--include-dashboard=false",
                                 f"--temp-dir={self.temp_dir}"], "head.log")
        for _ in range(workers):
            self.add_worker()
        return self

    def add_worker(self, cpus: int = 1, gpus: int = 0) -> subprocess.Popen:
        proc = self._start([f"--address={self.address}", f"--num-cpus={cpus}", f"--num-gpus={gpus}"],
                           f"worker{len(self.workers)}.log")
        self.workers.append(proc)
        return proc

    def node_id(self, worker: subprocess.Popen) -> str:
        """The Ray node id of a worker, read from its raylet's command line."""
        for pid in _children(worker.pid):
            try:
                args = Path(f"/proc/{pid}/cmdline").read_bytes().split(b"\0")
            except OSError:
                continue
            for a in args:
                if a.startswith(b"--node_id="):
                    return a.split(b"=", 1)[1].decode()
        raise LookupError(f"no raylet under process {worker.pid}")

    def kill_worker(self, worker: subprocess.Popen) -> None:
        """A lost machine: SIGKILL the node's processes and the trial workers its raylet forked."""
        _kill(_children(worker.pid) + [worker.pid])
        worker.wait(timeout=10)

    def stop(self) -> None:
        for proc in [*self.workers, self.head]:
            if proc is None:
                continue
            pids = _children(proc.pid) + [proc.pid]
            try:
                os.killpg(proc.pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
            _kill(pids)
            try:
                proc.wait(timeout=10)
            except subprocess.TimeoutExpired:
                pass


def write_spec(path: Path, spec: dict) -> Path:
    path.write_text(yaml.safe_dump(spec, sort_keys=False))
    return path


def driver(cluster: LoopbackCluster, *args: str, log: Path, cwd: Path = REPO,
           command: list[str] | None = None) -> subprocess.Popen:
    """`kdstudy ...` as its own process (the driver), logging to `log`."""
    return subprocess.Popen([*(command or [sys.executable, "-m", "study.cli"]), *args], cwd=cwd, env=cluster.env,
                            stdout=open(log, "w"), stderr=subprocess.STDOUT, start_new_session=True)


def finish(proc: subprocess.Popen, log: Path, timeout: float) -> str:
    try:
        proc.wait(timeout=timeout)
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)
        pytest.fail(f"driver did not finish in {timeout} s:\n{log.read_text()[-4000:]}")
    text = log.read_text()
    assert proc.returncode == 0, text[-4000:]
    return text


def read_rows(study: Path):
    files = sorted((study / "results").rglob("*.parquet"))
    if not files:
        return None
    return pads.dataset([str(f) for f in files], format="parquet").to_table().to_pandas()


def assert_rows_exactly_once(df, epochs: int) -> None:
    assert not df.duplicated(subset=ROW_KEY).any(), df[df.duplicated(subset=ROW_KEY, keep=False)]
    for trial_id, trial in df.groupby("trial_id"):
        assert sorted(trial["epoch"]) == list(range(1, epochs + 1)), (trial_id, sorted(trial["epoch"]))


@pytest.fixture(scope="module")
def cluster(tmp_path_factory):
    c = LoopbackCluster(tmp_path_factory.mktemp("cluster"))
    try:
        yield c.start(workers=2)
    finally:
        c.stop()


# --------------------------------------------------------------------------- multi-node


# --------------------------------------------------------------------------- plug-ins and the user's files


@pytest.fixture(scope="module")
def example(cluster, tmp_path_factory):
    """The worked plug-in example (examples/plugin, smaller: one teacher, four searched TTM trials,
    one confirm seed), run once with its report on the loopback cluster: `kdstudy` from a working
    directory holding the user's own study.py, analysis.py and trainables.py, the plug-in package
    beside the spec (on the driver's disk only, as far as Ray knows)."""
    from .test_plugins import copy_example, example_doc, kdstudy_command, shadowing_dir

    while sum(w.poll() is None for w in cluster.workers) < 2:  # an earlier test may have killed one
        cluster.add_worker(cpus=1)
    root = tmp_path_factory.mktemp("example")
    specs, imports = root / "specs", root / "imports.txt"
    copy_example(specs, imports)
    spec = write_spec(specs / "spec.yaml", example_doc(root / "results"))
    cwd = shadowing_dir(root / "cwd")
    log = root / "driver.log"
    t0 = time.time()
    p = driver(cluster, "run", str(spec), "--address", cluster.address, log=log, cwd=cwd, command=kdstudy_command())
    try:
        p.wait(timeout=300)
    except subprocess.TimeoutExpired:
        os.killpg(p.pid, signal.SIGKILL)
        pytest.fail(f"driver did not finish in 300 s:\n{log.read_text()[-4000:]}")
    proc = SimpleNamespace(returncode=p.returncode, stdout=log.read_text(), stderr="")  # one log, both streams
    return SimpleNamespace(root=root, specs=specs, spec=spec, cwd=cwd, imports=imports, proc=proc,
                           took=time.time() - t0, study=root / "results" / "plugin_test",
                           workers={cluster.node_id(w)[:12] for w in cluster.workers if w.poll() is None})


def test_plugin_beside_the_spec_reaches_both_workers_from_a_directory_of_users_files(example):
    """The example's plug-in is shipped with the job and imported from the shipped copy by every
    trial on both worker nodes; no process imports the user's own study.py, analysis.py or
    trainables.py of the driver's working directory (issue 17 item 1, issue 19 item 3). The study
    spreads over the nodes: the `node` column names both workers and never the CPU-less head."""
    from .test_plugins import shadow_marks

    assert example.proc.returncode == 0, example.proc.stdout[-4000:]
    assert shadow_marks(example.cwd) == []
    df = read_rows(example.study)
    assert set(df["stage"]) == {"teachers", "baseline", "search", "confirm"} and set(df["dataset"]) == {"waveform"}
    # every trial trains the plug-in's family on the plug-in's dataset: it imported the plug-in
    assert {n.split("/")[-1] for n in df["node"]} == example.workers  # both workers trained, the head none
    assert df["node"].str.fullmatch(r"[0-9.]+/[0-9a-f]{12}").all()  # "<ip>/<node id prefix>"


def test_example_runs_from_a_directory_that_shadows_kdstudys_packages(example):
    """19.3 on a real Ray (the loopback cluster): every trial imports kdstudy's packages (and the plug-in from the
    copy the job shipped), never the user's study.py / analysis.py / trainables.py."""
    p = example.proc
    assert p.returncode == 0, p.stdout[-3000:] + p.stderr[-3000:]
    assert shadow_marks(example.cwd) == []  # not imported by the driver, any experiment task or trial
    assert "FAILED" not in p.stdout + p.stderr
    imported = [line.split(" ", 1) for line in example.imports.read_text().splitlines()]
    driver = [f for _, f in imported if f.startswith(str(example.specs))]
    shipped = [f for _, f in imported if not f.startswith(str(example.specs))]
    assert driver, imported  # the driver imported it from beside the spec...
    assert shipped and all("runtime_resources" in f and "py_modules_files" in f for f in shipped), imported
    # ...every other process (experiment tasks, trials) from the copy shipped with the job
    assert len({pid for pid, _ in imported}) >= 3


def test_plugin_method_searched_and_confirmed_with_its_hyperparameters(example):
    """The plug-in's method, model family and dataset end to end: TTM's own hyperparameters in the
    Parquet map column, as columns of analysis.load, in the results table and the importance chart."""
    from analysis import load, trial_summary
    from analysis.landscape import importances
    from analysis.results_table import method_table

    assert example.proc.returncode == 0, example.proc.stderr[-3000:]
    study = example.study
    raw = pq.read_table(next((study / "results" / "search").glob("*.parquet")))
    hp = dict(raw.column("hparams")[0].as_py())
    assert {"gamma", "beta"} <= set(hp) and 0.05 <= hp["gamma"] <= 1.0 and 1.0 <= hp["beta"] <= 60.0
    df = load(study)
    students = df[df["stage"] != "teachers"]
    assert set(df["dataset"]) == {"waveform"} and students["student_arch"].str.startswith("residual_mlp-").all()
    ttm = df[df["method"] == "ttm"]
    assert set(ttm["stage"]) == {"search", "confirm"}
    assert ttm[ttm.stage == "search"]["trial_id"].nunique() == 4
    assert ttm["gamma"].notna().all() and ttm["beta"].notna().all()  # expanded, as any hyperparameter
    summary = trial_summary(df)
    confirm = summary[(summary.stage == "confirm") & (summary.method == "ttm")]
    assert (confirm["val_acc"] > 0.6).all()  # three classes: it learned (chance is 1/3)
    table = method_table(summary)
    row = table[table["method"] == "ttm"].iloc[0]
    assert "gamma=" in row["hyperparameters"] and "beta=" in row["hyperparameters"]
    imp, note = importances(summary, "ttm")
    assert note is None and set(imp) == {"gamma", "beta"}
    html = (study / "report" / "report.html").read_text()
    assert "ttm" in html and "gamma" in html and "beta" in html
    # the plug-in's label, recorded with the study from its registry entry as a built-in's, names it
    facts = json.loads((study / "methods.json").read_text())
    assert facts["ttm"]["label"] == "TTM (Zheng & Yang 2024)" and facts["ttm"]["kind"] == "kd"
    assert facts["scratch"]["label"] == "no-KD student (scratch)"
    assert "Capacity gap: TTM (Zheng &amp; Yang 2024)" in html


def test_status_and_report_import_no_plugin(example):
    """status and report read Parquet and JSON only: the plug-in (which records every import) and
    the shadowing files of the working directory are never imported."""
    assert example.proc.returncode == 0
    example.imports.unlink()
    code = ("import sys; from study.cli import main; a = main(['status', sys.argv[1]]); "
            "b = main(['report', sys.argv[1], '--no-png']); "
            "print('CODES', a, b, [m for m in sys.modules if m.startswith(('kdstudy_plugin_', 'ray'))][:3])")
    p = subprocess.run([sys.executable, "-P", "-c", code, str(example.study)], cwd=example.cwd, env=env_with_repo(),
                       capture_output=True, text=True, timeout=180)
    assert "CODES 0 0 []" in p.stdout, p.stdout[-2000:] + p.stderr[-2000:]
    assert not example.imports.exists() and shadow_marks(example.cwd) == []


def test_api_runs_a_dict_spec_and_loads_its_results(example):
    """`study.api.run` with the spec as a dict (plug-in paths relative to spec_dir) continues the
    same study (every experiment verified, nothing trained again) and returns its folder."""
    assert example.proc.returncode == 0
    code = textwrap.dedent(f"""
        import json, sys, yaml
        from study import api, run, load
        doc = yaml.safe_load(open({str(example.spec)!r}))
        folder = run(doc, spec_dir={str(example.specs)!r}, report=False)
        df = load(folder)
        import ray
        print("API", json.dumps({{"folder": folder, "rows": len(df), "methods": sorted(set(df["method"])),
                                 "ray_left": ray.is_initialized(), "same": api.run is run}}))
    """)
    p = subprocess.run([sys.executable, "-P", "-c", code], cwd=example.cwd, env=env_with_repo(),
                       capture_output=True, text=True, timeout=240)
    line = next((ln for ln in p.stdout.splitlines() if ln.startswith("API ")), None)
    assert line, p.stdout[-2000:] + p.stderr[-3000:]
    out = json.loads(line[4:])
    assert out["folder"] == str(example.study) and out["rows"] > 0 and "ttm" in out["methods"]
    assert out["same"] and not out["ray_left"]  # the Ray it started is shut down
    assert "finished earlier (verified), skipped" in p.stdout + p.stderr
    assert shadow_marks(example.cwd) == []


def test_an_edited_plugin_is_refused_on_resume_and_rerun(example):
    """A plug-in's source is part of the study's identity: after editing it, resume and run stop
    before Ray starts, naming the plug-in, both sha256 and the diff of its source."""
    assert example.proc.returncode == 0
    ttm = example.specs / "lab" / "ttm.py"
    original = ttm.read_text()
    ran = plugins.source_sha256(example.specs / "lab")
    ttm.write_text(original.replace('HParam(45.0, "float"', 'HParam(30.0, "float"'))
    now = plugins.source_sha256(example.specs / "lab")
    try:
        for args in (("resume", example.study), ("run", example.spec)):
            p = kdstudy(*args, "--no-report", cwd=example.cwd)
            assert p.returncode == 1, p.stdout[-2000:] + p.stderr[-2000:]
            err = p.stderr
            assert "plug-in ./lab/" in err and ran[:12] in err and now[:12] in err, err
            assert "-        \"beta\": HParam(45.0" in err and "+        \"beta\": HParam(30.0" in err, err
            assert "ttm.py (what the study ran)" in err and "Traceback" not in err
            assert ": started" not in p.stdout  # refused before any experiment (and before Ray)
    finally:
        ttm.write_text(original)
    # the copy the study kept is JSON, for the diff only: nothing in the study folder is importable
    kept = json.loads((example.study / "record" / "plugins" / f"{ran}.json").read_text())
    assert kept["files"]["ttm.py"] == original and not list(example.study.rglob("*.py"))


# --------------------------------------------------------------------------- lost worker


def test_lost_worker_trials_resume_from_checkpoint(cluster, tmp_path, data_root):
    """Kill a worker node mid-trial: its trial moves to the surviving node, resumes from its checkpoint."""
    epochs = 12
    spec = micro_spec(tmp_path, data_root, teachers=None, methods={}, confirm={"seeds": 2},
                      runtime={"checkpoint_every_s": 0},
                      search={"budget": "joint", "scheduler": "none", "max_concurrent": 2},
                      dataset={"name": "mnist1d", "num_samples": 4000, "root": data_root},
                      student={"family": "cnn1d", "size": 16},
                      train={"epochs": epochs, "batch_size": 64, "lr": 0.01}, failure={"max_failures": 3})
    victim = cluster.workers[0]
    victim_id = cluster.node_id(victim)[:12]
    log = tmp_path / "driver.log"
    p = driver(cluster, "run", str(write_spec(tmp_path / "spec.yaml", spec)), "--address", cluster.address,
               "--no-report", log=log)
    study = tmp_path / "results" / "micro"
    killed_trial, deadline = None, time.time() + 120
    while killed_trial is None and time.time() < deadline and p.poll() is None:
        time.sleep(0.2)
        try:
            df = read_rows(study)
        except Exception:  # a file being replaced at this instant
            continue
        if df is None:
            continue
        on_victim = df[(df["node"].str.endswith(victim_id)) & (df["stage"] == "baseline")]
        if len(on_victim) and on_victim["epoch"].max() >= 2:
            trial = on_victim["trial_id"].iloc[0]
            if df[df.trial_id == trial]["epoch"].max() < epochs - 2:
                cluster.kill_worker(victim)
                killed_trial = trial
    assert killed_trial, f"no trial seen mid-way on the victim node:\n{log.read_text()[-3000:]}"
    finish(p, log, timeout=180)

    df = read_rows(study)
    assert_rows_exactly_once(df[df.stage == "baseline"], epochs)
    assert df[df.stage == "baseline"]["trial_id"].nunique() == 2
    rows = df[df.trial_id == killed_trial].sort_values("epoch")
    # resumed, not restarted: the first epochs keep the dead node, the last ran elsewhere
    assert rows["node"].iloc[0].endswith(victim_id)
    assert not rows["node"].iloc[-1].endswith(victim_id)
    assert (rows["status"] == "ok").all()
    # Tune retried it on the surviving node; nothing counted as failed
    assert "baseline scratch: finished (2 ok," in log.read_text()


# --------------------------------------------------------------------------- fractional GPUs


def test_fractional_gpu_trials_share_one_gpu(cluster, tmp_path, data_root):
    """Two trials asking for half a GPU each are packed together on a node with one GPU.

    The node's GPU is declared to Ray (`--num-gpus=1`) on this CPU-only machine: Ray
    schedules by the declaration, and each trial falls back to the CPU for its work. The node
    joins the module's cluster for this test only (only it can hold a trial that asks for a GPU).
    """
    gpu_node = cluster.add_worker(cpus=2, gpus=1)
    try:
        spec = micro_spec(tmp_path, data_root, teachers=None, methods={}, confirm={"seeds": 2},
                          dataset={"name": "mnist1d", "num_samples": 4000, "root": data_root},
                          train={"epochs": 20, "batch_size": 64, "lr": 0.01},  # long enough to overlap
                          resources={"cpu": 0.5, "gpu": 0.5},
                          search={"budget": "joint", "scheduler": "none", "max_concurrent": 2})
        log = tmp_path / "driver.log"
        p = driver(cluster, "run", str(write_spec(tmp_path / "spec.yaml", spec)), "--address", cluster.address,
                   "--no-report", log=log)
        finish(p, log, timeout=150)
        df = read_rows(tmp_path / "results" / "micro")
        assert_rows_exactly_once(df, 20)
        assert {n.split("/")[-1] for n in df["node"]} == {cluster.node_id(gpu_node)[:12]}
        assert set(df["device"]) == {"cpu"}  # no CUDA here: the trial fell back to the CPU
        spans = []
        for _, trial in df.groupby("trial_id"):
            end = trial["timestamp"].max()
            start = trial["timestamp"].min() - pd.to_timedelta(trial["epoch_time_s"].iloc[0], unit="s")
            spans.append((start, end))
        (s1, e1), (s2, e2) = spans
        assert s1 < e2 and s2 < e1, spans  # the two trials ran at the same time on the one GPU
    finally:  # the later tests count on two one-CPU workers
        cluster.kill_worker(gpu_node)
        cluster.workers.remove(gpu_node)


# --------------------------------------------------------------------------- killed driver


def test_killed_driver_resumes_without_retraining_or_losing_rows(cluster, tmp_path, data_root):
    """SIGKILL the driver mid-search (no cleanup at all): resume continues the same trials."""
    import optuna

    from study.experiment import latest_trials

    epochs = 10
    spec = micro_spec(tmp_path, data_root, confirm={"seeds": 1, "top_k": 1},
                      teachers={"family": "mlp", "sizes": [8], "seeds": 1, "epochs": 2},
                      dataset={"name": "mnist1d", "num_samples": 3000, "root": data_root},
                      student={"family": "cnn1d", "size": 16}, runtime={"checkpoint_every_s": 0},
                      train={"epochs": epochs, "batch_size": 64, "lr": 0.01}, methods={"kd": {"trials": 2}},
                      search={"budget": "joint", "scheduler": "none", "max_concurrent": 2})
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
            last_epochs = df[df.stage == "search"].groupby("trial_id")["epoch"].max()
            if len(last_epochs) == 2 and last_epochs.max() >= 2 and last_epochs.min() < epochs:
                os.killpg(p.pid, signal.SIGKILL)  # the driver and nothing else
                p.wait(timeout=10)
                killed = True
    assert killed, f"the search never got going:\n{log.read_text()[-3000:]}"
    zoo_before = {str(f): f.stat().st_mtime_ns for f in (study / "zoo").rglob("*") if f.is_file()}
    partial = read_rows(study)
    search_before = partial[partial.stage == "search"]
    assert not list((study / "stages").glob("search-*.json"))

    log2 = tmp_path / "resume.log"
    out = finish(driver(cluster, "resume", str(study), "--address", cluster.address, "--no-report", log=log2),
                 log2, timeout=240)
    assert "finished earlier (verified), skipped" in out  # the teachers
    assert {str(f): f.stat().st_mtime_ns for f in (study / "zoo").rglob("*") if f.is_file()} == zoo_before
    df = read_rows(study)
    assert_rows_exactly_once(df[df.stage == "search"], epochs)
    assert set(df[df.stage == "search"]["trial_id"]) == set(search_before["trial_id"])  # continued, not replaced
    assert (df[df.stage == "search"]["status"] == "ok").all()
    j = next((study / "optuna").glob("search-kd-*.journal"))
    st = optuna.load_study(study_name=j.stem, storage=optuna.storages.JournalStorage(
        optuna.storages.journal.JournalFileBackend(str(j))))
    assert sorted(t.state.name for t in latest_trials(st, j.stem).values()) == ["COMPLETE", "COMPLETE"]


# --------------------------------------------------------------------------- the study fills its cluster


def test_experiments_of_different_methods_share_the_cluster(cluster, tmp_path, data_root):
    """2 methods x 2 teacher sizes on a head + 2 one-CPU workers: the slots stay busy while trials
    remain, and experiments of different methods run at the same time (Parquet timestamps)."""
    import importlib.util

    # head + 2 one-CPU workers (an earlier test of this module may have killed one)
    while sum(w.poll() is None for w in cluster.workers) < 2:
        cluster.add_worker(cpus=1)
    # trials of a few seconds each (on tiny ones an experiment's start-up would be most of the time)
    # every method x size a two-trial experiment that waits for its teacher only, as a search would
    # (no search: each method's fixed configuration confirmed on two seeds), and a two-trial baseline
    spec = micro_spec(tmp_path, data_root, confirm={"seeds": 2, "top_k": 1},
                      dataset={"name": "mnist1d", "num_samples": 3000, "root": data_root},
                      student={"family": "cnn1d", "size": 16},
                      teachers={"family": "mlp", "sizes": [8, 32], "seeds": 1, "epochs": 3},
                      train={"epochs": 8, "batch_size": 64, "lr": 0.01},
                      search={"budget": "stratified", "scheduler": "none", "max_concurrent": 1},
                      methods={"kd": {"trials": 0}, "dist": {"trials": 0}})
    log = tmp_path / "driver.log"
    p = driver(cluster, "run", str(write_spec(tmp_path / "spec.yaml", spec)), "--address", cluster.address,
               "--no-report", log=log)
    finish(p, log, timeout=400)
    util = importlib.util.spec_from_file_location("utilisation", REPO / "bench" / "utilisation.py")
    mod = importlib.util.module_from_spec(util)
    util.loader.exec_module(mod)
    from analysis.load import load

    spans = mod.trial_spans(load(tmp_path / "results" / "micro"))
    assert len(spans) == 2 + 2 + 2 * 2 * 2  # teachers, the baseline, two confirm trials per method x size
    busy = mod.busy_while_remaining(spans, slots=2)
    assert busy >= 0.8, f"slot-time busy while trials remained: {busy:.2f}"
    pairs = mod.overlaps(spans)
    methods = {frozenset((a.split("-")[1], b.split("-")[1])) for a, b, _ in pairs}
    assert len(methods) >= 2 and any(len(m) == 2 for m in methods), pairs  # different methods overlapped
