"""A local kdstudy Ray instance listens on loopback only and requires its token.

The instance runs in a subprocess (a driver script below) so the session-wide
test Ray instance of conftest.py, started with RAY_AUTH_MODE=disabled, is left
alone. The subprocess inherits that environment, RAY_AUTH_MODE=disabled
included: start_local_ray must override it. One run of the driver script
collects everything the tests below check.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

from study.localray import _is_loopback, listening_sockets

REPO = Path(__file__).resolve().parents[1]

DRIVER = textwrap.dedent(
    r'''
    import json, os, subprocess, sys, threading, time

    from study.localray import listening_sockets, ray_process_pids, start_local_ray, stop_local_ray

    out_path, log_dir = sys.argv[1], sys.argv[2]
    result = {"inherited_auth_mode": os.environ.get("RAY_AUTH_MODE")}
    facts = start_local_ray(num_cpus=1, log_dir=log_dir)
    result["facts"] = {k: v for k, v in facts.items() if k != "pids"}
    import ray
    from ray import tune

    seen = {}
    stop = threading.Event()

    def sample():
        while not stop.is_set():
            for s in listening_sockets(ray_process_pids()):
                seen[(s["pid"], s["proto"], s["ip"], s["port"])] = s
            stop.wait(0.3)

    sampler = threading.Thread(target=sample, daemon=True)
    sampler.start()

    @ray.remote
    def task():
        return os.environ.get("RAY_AUTH_MODE")

    @ray.remote
    class Counter:
        def __init__(self):
            self.n = 0

        def inc(self):
            self.n += 1
            return self.n

    result["task_auth_mode"] = ray.get(task.remote())
    c = Counter.remote()
    result["actor"] = [ray.get(c.inc.remote()) for _ in range(3)]

    def trainable(config):
        time.sleep(2)
        tune.report({"score": config["x"] * 2})

    grid = tune.Tuner(
        trainable,
        param_space={"x": 3},
        run_config=tune.RunConfig(storage_path=os.path.join(log_dir, "..", "tune"), name="t", verbose=0),
    ).fit()
    result["tune"] = [r.metrics.get("score") for r in grid]
    result["tune_errors"] = [str(e) for e in grid.errors]

    # Clients of the running instance, each in its own process.
    client = (
        "import ray, sys\n"
        "ray.init(address=sys.argv[1])\n"
        "@ray.remote\n"
        "def g():\n"
        "    return 'RAN'\n"
        "print('RESULT', ray.get(g.remote(), timeout=30))\n"
    )
    clients = {
        "no_token": {"RAY_AUTH_MODE": "disabled"},
        "mode_unset_no_token": {},
        "wrong_token": {"RAY_AUTH_MODE": "token", "RAY_AUTH_TOKEN": "0" * 64},
        "right_token": {"RAY_AUTH_MODE": "token", "RAY_AUTH_TOKEN_PATH": facts["token_path"]},
    }
    home = os.path.join(log_dir, "..", "empty-home")
    os.makedirs(home, exist_ok=True)
    result["clients"] = {}
    for name, extra in clients.items():
        env = {k: v for k, v in os.environ.items() if not k.startswith("RAY_AUTH")}
        env["HOME"] = home  # no ~/.ray/auth_token to fall back on
        env["RAY_NUM_REDIS_GET_RETRIES"] = "3"  # a refused client gives up after ~3 s, not 20
        env.update(extra)
        try:
            r = subprocess.run([sys.executable, "-c", client, facts["address"]], env=env,
                               capture_output=True, text=True, timeout=120)
            result["clients"][name] = {"rc": r.returncode, "ran": "RESULT RAN" in r.stdout,
                                       "auth_error": "InvalidAuthToken" in r.stderr or "AuthenticationError" in r.stderr,
                                       "tail": r.stderr[-600:]}
        except subprocess.TimeoutExpired:
            result["clients"][name] = {"rc": None, "ran": False, "auth_error": False, "tail": "timeout"}

    stop.set()
    sampler.join()
    for s in listening_sockets(ray_process_pids()):
        seen[(s["pid"], s["proto"], s["ip"], s["port"])] = s
    result["sockets"] = list(seen.values())
    result["token_file_mode"] = oct(os.stat(facts["token_path"]).st_mode & 0o777)
    stop_local_ray()
    result["token_removed"] = not os.path.exists(facts["token_path"])
    result["auth_mode_restored"] = os.environ.get("RAY_AUTH_MODE")
    with open(out_path, "w") as f:
        json.dump(result, f)
    '''
)


@pytest.fixture(scope="module")
def local_run(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("localray")
    script = tmp / "driver.py"
    script.write_text(DRIVER)
    out = tmp / "result.json"
    log_dir = tmp / "logs"
    env = dict(os.environ)
    env["RAY_AUTH_MODE"] = "disabled"  # what conftest sets; start_local_ray must override it
    env["RAY_ADDRESS"] = "127.0.0.1:1"  # start_local_ray starts its own instance, never joins this
    env["PYTHONPATH"] = os.pathsep.join([str(REPO), env.get("PYTHONPATH", "")]).rstrip(os.pathsep)
    r = subprocess.run([sys.executable, str(script), str(out), str(log_dir)], env=env, cwd=str(tmp),
                       capture_output=True, text=True, timeout=540)
    assert r.returncode == 0, r.stderr[-4000:]
    result = json.loads(out.read_text())
    result["log_dir"] = str(log_dir)
    return result


def test_local_run_listens_on_loopback_only(local_run):
    assert local_run["inherited_auth_mode"] == "disabled"
    assert local_run["facts"]["node_ip"] == "127.0.0.1"
    assert local_run["facts"]["address"].startswith("127.0.0.1:")
    assert local_run["task_auth_mode"] == "token"
    assert local_run["actor"] == [1, 2, 3]
    assert local_run["tune"] == [6] and not local_run["tune_errors"]
    socks = local_run["sockets"]
    names = {s["name"] for s in socks}
    # The GCS, the raylet and some core worker were seen listening, so the check is not vacuous.
    assert {"gcs_server", "raylet"} <= names, names
    exposed = [s for s in socks if not s["loopback"]]
    assert not exposed, exposed


def test_client_without_token_is_refused(local_run):
    clients = local_run["clients"]
    assert clients["right_token"]["ran"], clients["right_token"]["tail"]  # the check below is about the token
    for name in ("no_token", "mode_unset_no_token", "wrong_token"):
        c = clients[name]
        assert not c["ran"] and c["rc"] != 0, (name, c)
        assert c["auth_error"], (name, c["tail"])


def test_token_is_private_and_cleaned_up(local_run):
    assert local_run["facts"]["auth_mode"] == "token"
    assert local_run["token_file_mode"] == "0o600"
    assert local_run["token_removed"]
    assert local_run["auth_mode_restored"] == "disabled"


def test_ray_logs_land_in_log_dir(local_run):
    files = [p.name for p in Path(local_run["log_dir"]).rglob("*") if p.is_file()]
    assert any(n.startswith("gcs_server") for n in files), files
    assert any(n.startswith("raylet") for n in files), files


def test_loopback_classification():
    assert _is_loopback("127.0.0.1") and _is_loopback("::1") and _is_loopback("::ffff:127.0.0.1")
    assert not _is_loopback("0.0.0.0") and not _is_loopback("::") and not _is_loopback("192.0.2.2")


def test_listening_sockets_sees_a_loopback_listener():
    import socket

    with socket.socket() as srv, socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as udp:
        srv.bind(("127.0.0.1", 0))
        srv.listen()
        udp.bind(("127.0.0.1", 0))
        socks = listening_sockets([os.getpid()])
        mine = {(s["proto"], s["port"]) for s in socks}
        assert ("tcp", srv.getsockname()[1]) in mine
        assert ("udp", udp.getsockname()[1]) in mine
        assert all(s["loopback"] for s in socks if s["port"] in (srv.getsockname()[1], udp.getsockname()[1]))
