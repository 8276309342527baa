"""deploy/: the KubeRay RayJob against KubeRay's own schema, and the SLURM script on a real
single-machine SLURM (two slurmd "nodes" on 127.0.0.1) started by the test."""

from __future__ import annotations

import json
import os
import shlex
import shutil
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import pytest
import yaml

ROOT = Path(__file__).resolve().parent.parent
RAYJOB = ROOT / "deploy" / "rayjob.yaml"
SBATCH = ROOT / "deploy" / "slurm.sbatch"
#: KubeRay v1.7.0's RayJob (ray.io/v1) openAPIV3Schema; where it came from: tests/data/README.md
SCHEMA = ROOT / "tests" / "data" / "kuberay-v1.7.0-rayjob-v1.schema.json"


# --------------------------------------------------------------------------- KubeRay


def _docs() -> dict:
    return {d["kind"]: d for d in yaml.safe_load_all(RAYJOB.read_text()) if d}


def _unknown_fields(value, schema, where="") -> list[str]:
    """Fields the schema does not declare (Kubernetes prunes them, `kubectl apply` refuses them)."""
    if schema.get("x-kubernetes-preserve-unknown-fields"):
        return []
    out = []
    if isinstance(value, dict) and "properties" in schema:
        for key, v in value.items():
            if key in schema["properties"]:
                out += _unknown_fields(v, schema["properties"][key], f"{where}.{key}")
            elif not schema.get("additionalProperties"):
                out.append(f"{where}.{key}")
    elif isinstance(value, dict) and isinstance(schema.get("additionalProperties"), dict):
        for key, v in value.items():
            out += _unknown_fields(v, schema["additionalProperties"], f"{where}.{key}")
    elif isinstance(value, list) and "items" in schema:
        for i, v in enumerate(value):
            out += _unknown_fields(v, schema["items"], f"{where}[{i}]")
    return out


def _problems(doc: dict) -> list[str]:
    import jsonschema

    schema = json.loads(SCHEMA.read_text())
    validator = jsonschema.Draft7Validator(schema)
    found = [f"{'.'.join(map(str, e.absolute_path))}: {e.message}" for e in validator.iter_errors(doc)]
    return found + [f"{f}: not in the schema" for f in _unknown_fields(doc, schema)]


def test_rayjob_validates_against_kuberays_schema():
    job = _docs()["RayJob"]
    assert job["apiVersion"] == "ray.io/v1"
    assert _problems(job) == []
    # the check can fail: a misspelt field, a wrong type, a missing required field
    bad = json.loads(json.dumps(job))
    bad["spec"]["rayClusterSpec"]["workerGroupSpecs"][0]["replicas"] = "two"
    bad["spec"]["rayClusterSpec"]["headGroupSpec"]["rayStartParam"] = {}
    del bad["spec"]["rayClusterSpec"]["workerGroupSpecs"][0]["groupName"]
    text = "\n".join(_problems(bad))
    assert "replicas: 'two' is not of type 'integer'" in text
    assert "headGroupSpec.rayStartParam: not in the schema" in text and "'groupName' is a required property" in text


def test_rayjob_runs_a_study_on_shared_storage_with_token_auth():
    from study.cli import build_parser

    docs = _docs()
    job, claim = docs["RayJob"], docs["PersistentVolumeClaim"]
    spec = job["spec"]
    cluster = spec["rayClusterSpec"]
    assert cluster["authOptions"]["mode"] == "token"
    assert cluster["rayVersion"] == __import__("ray").__version__  # the Ray kdstudy is tested with
    argv = shlex.split(spec["entrypoint"])
    assert argv[0] == "kdstudy"
    args = build_parser().parse_args(argv[1:])  # a command the CLI accepts
    assert args.cmd == "run" and args.address == "auto"
    assert claim["spec"]["accessModes"] == ["ReadWriteMany"]  # every pod writes the study folder

    def mounts(group):
        pod = group["template"]["spec"]
        volumes = {v["name"]: v for v in pod["volumes"]}
        return {m["mountPath"]: volumes[m["name"]] for c in pod["containers"] for m in c.get("volumeMounts", [])}

    head = mounts(cluster["headGroupSpec"])
    storage = next(p for p, v in head.items() if "persistentVolumeClaim" in v)
    assert head[storage]["persistentVolumeClaim"]["claimName"] == claim["metadata"]["name"]
    assert args.storage.startswith(storage + "/")  # the study folder is on the shared claim ...
    for group in cluster["workerGroupSpecs"]:  # ... which every worker mounts at the same path
        assert mounts(group)[storage]["persistentVolumeClaim"]["claimName"] == claim["metadata"]["name"]
    spec_dir = os.path.dirname(args.spec)
    assert "configMap" in head[spec_dir] and os.path.basename(args.spec) == "study.yaml"


# --------------------------------------------------------------------------- SLURM


def test_sbatch_script_refuses_to_run_outside_slurm():
    env = {k: v for k, v in os.environ.items() if not k.startswith("SLURM_")}
    out = subprocess.run(["bash", str(SBATCH), "spec.yaml"], capture_output=True, text=True, env=env, timeout=30)
    assert out.returncode == 2 and "run it with sbatch" in out.stderr
    out = subprocess.run(["bash", str(SBATCH)], capture_output=True, text=True, env=env, timeout=30)
    assert out.returncode == 2 and out.stderr.startswith("usage: sbatch deploy/slurm.sbatch SPEC")


def _free_ports(n: int) -> list[int]:
    socks = [socket.socket() for _ in range(n)]
    for s in socks:
        s.bind(("127.0.0.1", 0))
    ports = [s.getsockname()[1] for s in socks]
    for s in socks:
        s.close()
    return ports


SLURM_CONF = """\
ClusterName=kdstudytest
SlurmctldHost=localhost(127.0.0.1)
SlurmctldPort={ctld_port}
SlurmdPort={slurmd_port}
AuthType=auth/none
CredType=cred/none
SlurmUser=root
SlurmdUser=root
StateSaveLocation={dir}/state
SlurmdSpoolDir={dir}/spool/%n
SlurmctldPidFile={dir}/slurmctld.pid
SlurmdPidFile={dir}/slurmd-%n.pid
SlurmctldLogFile={dir}/slurmctld.log
SlurmdLogFile={dir}/slurmd-%n.log
ProctrackType=proctrack/linuxproc
TaskPlugin=task/none
JobAcctGatherType=jobacct_gather/none
AccountingStorageType=accounting_storage/none
JobCompType=jobcomp/none
SelectType=select/cons_tres
SelectTypeParameters=CR_CPU
MpiDefault=none
ReturnToService=2
NodeName=kd1 NodeHostname={host} NodeAddr=127.0.0.1 Port={port1} CPUs=1 State=UNKNOWN
NodeName=kd2 NodeHostname={host} NodeAddr=127.0.0.1 Port={port2} CPUs=1 State=UNKNOWN
PartitionName=kd Nodes=kd1,kd2 Default=YES MaxTime=INFINITE State=UP
"""


@pytest.fixture(scope="module")
def slurm():
    """A private SLURM cluster of two one-CPU nodes on this machine (slurmctld + two slurmd)."""
    missing = [c for c in ("slurmctld", "slurmd", "sbatch", "squeue", "scancel", "scontrol")
               if shutil.which(c) is None and not os.path.exists(f"/usr/sbin/{c}")]
    if missing:
        pytest.skip(f"SLURM is not installed ({', '.join(missing)} missing; apt-get install slurmctld slurmd "
                    "slurm-client)")
    if os.geteuid() != 0:
        pytest.skip("the test's slurmd must run as root (it starts jobs as the submitting user)")
    folder = Path(tempfile.mkdtemp(prefix="kdslurm-", dir="/tmp"))  # short: Ray's socket paths live below
    for sub in ("state", "spool"):
        (folder / sub).mkdir()
    ctld_port, slurmd_port, port1, port2 = _free_ports(4)
    conf = folder / "slurm.conf"
    conf.write_text(SLURM_CONF.format(dir=folder, host=socket.gethostname(), ctld_port=ctld_port,
                                      slurmd_port=slurmd_port, port1=port1, port2=port2))
    env = {**os.environ, "SLURM_CONF": str(conf)}
    sbin = lambda c: shutil.which(c) or f"/usr/sbin/{c}"  # noqa: E731
    procs = [subprocess.Popen([sbin("slurmctld"), "-D", "-c", "-f", str(conf)], env=env,
                              stdout=subprocess.DEVNULL, stderr=subprocess.STDOUT)]
    time.sleep(1)
    procs += [subprocess.Popen([sbin("slurmd"), "-D", "-N", node, "-f", str(conf)], env=env,
                               stdout=subprocess.DEVNULL, stderr=subprocess.STDOUT) for node in ("kd1", "kd2")]
    try:
        deadline = time.monotonic() + 30
        states = ""
        while time.monotonic() < deadline:
            states = subprocess.run(["sinfo", "--noheader", "--format=%T %D"], env=env, capture_output=True,
                                    text=True, timeout=10).stdout.split()
            if states[:2] == ["idle", "2"]:
                break
            time.sleep(0.5)
        else:
            logs = " | ".join(p.read_text()[-300:] for p in folder.glob("*.log"))
            pytest.skip(f"SLURM did not start here (sinfo: {' '.join(states) or 'no answer'}; {logs})")
        yield env, folder
    finally:
        subprocess.run(["scancel", "--quiet", "--partition=kd"], env=env, timeout=10, check=False)
        for p in procs:
            p.terminate()
        for p in procs:
            try:
                p.wait(timeout=20)
            except subprocess.TimeoutExpired:
                p.kill()
        shutil.rmtree(folder, ignore_errors=True)


def _sbatch(env: dict, folder: Path, nodes: int, *args: str, timeout: float = 300, during=None) -> tuple[str, str]:
    """Submit deploy/slurm.sbatch, wait for the job to end; (its output, the job id).
    `during(job, output so far)` is called while the job runs; True once it has acted."""
    job_env = {k: v for k, v in env.items() if not k.startswith(("RAY_", "SLURM_")) or k == "SLURM_CONF"}
    job_env.update({"PATH": f"{Path(sys.executable).parent}{os.pathsep}{env['PATH']}", "PYTHONPATH": str(ROOT),
                    "KDSTUDY": f"{sys.executable} -m study.cli", "PYTHON": sys.executable,
                    "KDSTUDY_NODE_IP": "127.0.0.1", "TMPDIR": str(folder)})
    out = subprocess.run(["sbatch", "--parsable", f"--nodes={nodes}", "--cpus-per-task=1",
                          f"--output={folder}/job-%j.out", str(SBATCH), *args],
                         env=job_env, capture_output=True, text=True, timeout=30)
    assert out.returncode == 0, out.stderr
    job = out.stdout.strip().split(";")[0]
    deadline = time.monotonic() + timeout
    log = folder / f"job-{job}.out"
    while time.monotonic() < deadline:
        queued = subprocess.run(["squeue", "--noheader", f"--jobs={job}"], env=env, capture_output=True, text=True,
                                timeout=10).stdout.strip()
        if not queued:
            break
        if during is not None and log.exists() and during(job, log.read_text()):
            during = None
        time.sleep(1)
    else:
        subprocess.run(["scancel", job], env=env, timeout=10)
        raise AssertionError(f"job {job} still running after {timeout} s:\n" + (folder / f"job-{job}.out").read_text())
    return (folder / f"job-{job}.out").read_text(), job


def _ray_processes_of(folder: Path, job: str) -> list[str]:
    import psutil

    marker = str(folder / f"kdray-{job}")
    found = []
    for p in psutil.process_iter(["cmdline"]):
        cmd = " ".join(p.info.get("cmdline") or [])
        if marker in cmd:
            found.append(cmd[:200])
    return found


@pytest.mark.slurm
def test_sbatch_runs_a_study_on_two_nodes_and_stops_ray(slurm, tmp_path, data_root):
    import pyarrow.dataset as pads

    env, folder = slurm
    spec = {"name": "slurmed", "storage": str(tmp_path / "shared"),  # one machine: every "node" sees it
            "dataset": {"name": "mnist1d", "num_samples": 1000, "root": data_root},
            "student": {"family": "mlp", "size": 16},
            "teachers": {"family": "mlp", "sizes": [8, 32], "seeds": 1, "epochs": 2},
            "train": {"epochs": 2, "batch_size": 128, "lr": 0.01}, "methods": {}, "confirm": {"seeds": 1},
            "report": {"png": False}}
    path = tmp_path / "spec.yaml"
    path.write_text(yaml.safe_dump(spec))
    out, job = _sbatch(env, folder, 2, str(path), "--no-report")
    assert "Ray cluster up: 2 node(s)" in out, out
    assert "the study driver exited with status 0" in out and "Ray stopped" in out, out
    study = tmp_path / "shared" / "slurmed"
    assert len(list((study / "stages").glob("teachers-*.json"))) == 2  # both experiments verified finished
    assert len(list((study / "stages").glob("baseline-*.json"))) == 1  # and the no-KD student on its seed
    rows = pads.dataset(str(study / "results"), format="parquet").to_table().to_pandas()
    assert set(rows.status) == {"ok"}
    rows = rows[rows.stage == "teachers"]
    assert rows.trial_id.nunique() == 2
    # each node has one CPU: teachers that trained at the same time did so on different nodes (whether the
    # two experiments overlap is up to their start-up times; on a loaded machine the first may end first)
    spans = rows.groupby("trial_id").agg(start=("timestamp", "min"), end=("timestamp", "max"), node=("node", "first"))
    (_, a), (_, b) = spans.iterrows()
    if a.start < b.end and b.start < a.end:
        assert a.node != b.node, spans
    assert _ray_processes_of(folder, job) == []


@pytest.mark.slurm
def test_sbatch_refuses_a_bad_spec_before_starting_ray(slurm, tmp_path):
    env, folder = slurm
    path = tmp_path / "spec.yaml"
    path.write_text("name: bad\nmethods: {kd: {trials: -1}}\n")
    out, job = _sbatch(env, folder, 1, str(path))
    assert "methods.kd.trials: must be at least 0" in out and "dataset: is required" in out, out
    assert "Ray cluster" not in out and not (folder / f"kdray-{job}").exists()


@pytest.mark.slurm
def test_sbatch_interrupts_the_study_before_the_time_limit(slurm, tmp_path, data_root):
    """The time limit's warning (--signal=B:USR1@300, sent here at once) interrupts the study
    cleanly: the driver says how to resume, and Ray is stopped."""
    env, folder = slurm
    spec = {"name": "limited", "storage": str(tmp_path / "shared"),
            "dataset": {"name": "mnist1d", "num_samples": 1000, "root": data_root},
            "student": {"family": "mlp", "size": 16}, "train": {"epochs": 400, "batch_size": 32},
            "methods": {}, "confirm": {"seeds": 1}, "report": {"png": False}}
    path = tmp_path / "spec.yaml"
    path.write_text(yaml.safe_dump(spec))

    def warn_once_training(job, text):
        if "baseline scratch: started" not in text:
            return False
        subprocess.run(["scancel", "--batch", "--signal=USR1", job], env=env, timeout=10, check=True)
        return True

    out, job = _sbatch(env, folder, 1, str(path), "--no-report", during=warn_once_training)
    assert "time limit near: interrupting the study" in out, out
    assert "continue with `kdstudy resume" in out and "the study driver exited with status 130" in out, out
    assert "Ray stopped" in out and _ray_processes_of(folder, job) == []
    assert not list((tmp_path / "shared" / "limited" / "stages").glob("baseline-*.json"))  # not called finished
