"""Start a local Ray instance that only loopback can reach, with token auth on.

A plain local `ray.init()` in Ray 2.60 picks the machine's routable address as
its node address, so the GCS, the raylet (node manager and object manager),
every core worker (the driver included) and the runtime-env agent listen on
all interfaces (`::` / `0.0.0.0`) or on that address; and it honours an
inherited `RAY_AUTH_MODE=disabled`, after which anyone who reaches a port can
run code. `start_local_ray` fixes both for the Ray processes it starts:

* Bind: Ray only binds its gRPC servers and agents to loopback when the node
  address is exactly 127.0.0.1. `ray.init(_node_ip_address="127.0.0.1")` alone
  is not enough: `resolve_ip_for_localhost` turns a loopback address back into
  the routable one while "cluster mode" is on (the Linux default).
  `RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER=0` turns it off, which makes
  `get_node_ip_address()` answer 127.0.0.1; it is set in the environment (the
  Ray processes inherit it) and on the already imported constant. The
  dashboard is off (and its host is 127.0.0.1 if a caller turns it on); a
  local `ray.init` starts no Ray Client server.
* Token: `RAY_AUTH_MODE=token` whatever the environment says, and a fresh
  random token in a 0600 file inside a private 0700 directory, named by
  `RAY_AUTH_TOKEN_PATH` (so no writable HOME is needed and the token is not in
  any process environment). An inherited `RAY_AUTH_TOKEN` is removed for the
  session so it cannot take precedence. The driver and the worker processes
  (which inherit the raylet's environment) read the same file.

`stop_local_ray` shuts Ray down, restores the environment and removes the
token. `listening_sockets(pids)` lists what a set of processes listens on, for
tests and for `assert_loopback_only`.
"""

from __future__ import annotations

import atexit
import ipaddress
import os
import shutil
import tempfile
from typing import Iterable

LOOPBACK = "127.0.0.1"

# Environment this module sets for the Ray processes it starts.
_ENV_CLUSTER = "RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER"
_ENV_MODE = "RAY_AUTH_MODE"
_ENV_TOKEN = "RAY_AUTH_TOKEN"
_ENV_TOKEN_PATH = "RAY_AUTH_TOKEN_PATH"
_MANAGED_ENV = (_ENV_CLUSTER, _ENV_MODE, _ENV_TOKEN, _ENV_TOKEN_PATH, "RAY_USAGE_STATS_ENABLED")

# A unix socket path is at most 107 bytes; Ray puts
# <temp_dir>/session_<date>_<time>_<usec>_<pid>/sockets/plasma_store under its temp dir.
_MAX_TEMP_DIR_LEN = 40

_state: dict | None = None
_atexit_registered = False


def _refresh_ray_auth_config() -> None:
    """Make an already imported Ray see the new RAY_AUTH_* environment."""
    from ray._raylet import AuthenticationTokenLoader, Config

    Config.initialize("")
    AuthenticationTokenLoader.instance().reset_cache()


def _make_token(private_dir: str) -> str:
    """Write a fresh 256-bit token to private_dir/auth_token (0600); its path."""
    import secrets

    path = os.path.join(private_dir, "auth_token")
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    with os.fdopen(fd, "w") as f:
        f.write(secrets.token_hex(32))
    return path


def start_local_ray(num_cpus=None, num_gpus=None, log_dir=None, **kwargs) -> dict:
    """Start a local Ray instance bound to 127.0.0.1 with token auth on.

    Extra keyword arguments go to `ray.init` (they cannot override the bind or
    the address: it always starts a new instance, even when RAY_ADDRESS is set).
    Stop it with `stop_local_ray()` (also run at interpreter exit). `log_to_driver` defaults to False. With `log_dir`, Ray's own
    logs (GCS, raylet, agents, workers) are written under it when the path is
    short enough to hold Ray's unix sockets, else they are copied there by
    `stop_local_ray`.

    Returns facts about the instance: address (GCS host:port), node_ip,
    session_dir, logs_dir (Ray's live log directory; under `log_dir` when it
    is used in place), logs_copied_to (where `stop_local_ray` copies them when
    `log_dir` is too long to host Ray's sockets, else None), token_path,
    auth_mode and pids (the driver and every Ray process it started, at
    start time).
    """
    global _state, _atexit_registered
    import ray

    if ray.is_initialized():
        raise RuntimeError("Ray is already initialized in this process; call ray.shutdown() first")
    for key in ("address", "_node_ip_address", "dashboard_host"):
        if key in kwargs:
            raise ValueError(f"start_local_ray does not accept {key}: it always starts a local, loopback-only instance")

    saved_env = {k: os.environ.get(k) for k in _MANAGED_ENV}
    private_dir = tempfile.mkdtemp(prefix="kdray-auth-")  # 0700
    logs_target = os.path.abspath(log_dir) if log_dir else None
    temp_dir = None
    copy_logs = False
    if logs_target:
        os.makedirs(logs_target, exist_ok=True)
        if len(logs_target) <= _MAX_TEMP_DIR_LEN:
            temp_dir = logs_target
        else:
            copy_logs = True
    if temp_dir is None:
        temp_dir = tempfile.mkdtemp(prefix="kdray-")
        own_temp = True
    else:
        own_temp = False

    from ray._private import ray_constants

    saved_cluster_const = ray_constants.ENABLE_RAY_CLUSTER
    try:
        token_path = _make_token(private_dir)
        os.environ[_ENV_CLUSTER] = "0"
        os.environ[_ENV_MODE] = "token"
        os.environ[_ENV_TOKEN_PATH] = token_path
        os.environ.pop(_ENV_TOKEN, None)
        os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")
        ray_constants.ENABLE_RAY_CLUSTER = False
        _refresh_ray_auth_config()

        init_kwargs = dict(
            include_dashboard=False,
            log_to_driver=False,
        )
        init_kwargs.update(kwargs)
        init_kwargs.update(
            address="local",  # never an existing cluster named by RAY_ADDRESS
            num_cpus=num_cpus,
            num_gpus=num_gpus,
            _node_ip_address=LOOPBACK,
            dashboard_host=LOOPBACK,
            _temp_dir=temp_dir,
        )
        ctx = ray.init(**init_kwargs)
    except BaseException:
        _restore_env(saved_env)
        ray_constants.ENABLE_RAY_CLUSTER = saved_cluster_const
        try:
            _refresh_ray_auth_config()
        except Exception:
            pass
        shutil.rmtree(private_dir, ignore_errors=True)
        if own_temp:
            shutil.rmtree(temp_dir, ignore_errors=True)
        raise

    info = ctx.address_info
    session_dir = info.get("session_dir")
    facts = {
        "address": info.get("gcs_address"),
        "node_ip": info.get("node_ip_address"),
        "session_dir": session_dir,
        "logs_dir": os.path.join(session_dir, "logs") if session_dir else None,
        "logs_copied_to": os.path.join(logs_target, os.path.basename(session_dir)) if copy_logs and session_dir else None,
        "token_path": token_path,
        "auth_mode": "token",
        "pids": ray_process_pids(),
    }
    _state = {
        "saved_env": saved_env,
        "saved_cluster_const": saved_cluster_const,
        "private_dir": private_dir,
        "temp_dir": temp_dir if own_temp else None,
        "copy_logs_to": logs_target if copy_logs else None,
        "session_dir": session_dir,
    }
    if not _atexit_registered:
        atexit.register(_stop_at_exit)
        _atexit_registered = True
    if facts["node_ip"] != LOOPBACK:  # pragma: no cover - a Ray change would land here
        stop_local_ray()
        raise RuntimeError(f"Ray started on node address {facts['node_ip']!r}, not {LOOPBACK}")
    return facts


def _restore_env(saved: dict) -> None:
    for key, value in saved.items():
        if value is None:
            os.environ.pop(key, None)
        else:
            os.environ[key] = value


def stop_local_ray() -> None:
    """Shut down the instance of `start_local_ray`, restore the environment, drop the token."""
    global _state
    import ray

    ray.shutdown()
    if _state is None:
        return
    state, _state = _state, None
    from ray._private import ray_constants

    if state["copy_logs_to"] and state["session_dir"]:
        src = os.path.join(state["session_dir"], "logs")
        if os.path.isdir(src):
            shutil.copytree(src, os.path.join(state["copy_logs_to"], os.path.basename(state["session_dir"])), dirs_exist_ok=True)
    _restore_env(state["saved_env"])
    ray_constants.ENABLE_RAY_CLUSTER = state["saved_cluster_const"]
    try:
        _refresh_ray_auth_config()
    except Exception:
        pass
    shutil.rmtree(state["private_dir"], ignore_errors=True)
    if state["temp_dir"]:
        shutil.rmtree(state["temp_dir"], ignore_errors=True)


def _stop_at_exit() -> None:
    if _state is not None:
        stop_local_ray()


def ray_process_pids(root_pid: int | None = None) -> list[int]:
    """The driver (or `root_pid`) and all its descendants: GCS, raylet, agents, workers."""
    import ray  # noqa: F401  (Ray puts its bundled psutil on sys.path)
    import psutil

    root = psutil.Process(root_pid or os.getpid())
    return [root.pid] + [p.pid for p in root.children(recursive=True)]


def _is_loopback(ip: str) -> bool:
    addr = ipaddress.ip_address(ip.split("%", 1)[0])
    if isinstance(addr, ipaddress.IPv6Address) and addr.ipv4_mapped is not None:
        addr = addr.ipv4_mapped
    return addr.is_loopback


def listening_sockets(pids: Iterable[int]) -> list[dict]:
    """Listening TCP sockets and bound UDP sockets (IPv4 and IPv6) of `pids`.

    Each entry: pid, name, proto ("tcp"/"udp"), family (4/6), ip, port,
    loopback (bool). Processes that have exited are skipped.
    """
    import socket

    import ray  # noqa: F401
    import psutil

    out = []
    for pid in pids:
        try:
            proc = psutil.Process(pid)
            name = proc.name()
            conns = proc.net_connections(kind="inet")
        except (psutil.NoSuchProcess, psutil.ZombieProcess):
            continue
        for c in conns:
            if c.type == socket.SOCK_STREAM and c.status != psutil.CONN_LISTEN:
                continue
            if c.type == socket.SOCK_DGRAM and c.raddr:
                continue  # a connected UDP socket is a client
            if not c.laddr:
                continue
            out.append(
                {
                    "pid": pid,
                    "name": name,
                    "proto": "tcp" if c.type == socket.SOCK_STREAM else "udp",
                    "family": 6 if c.family == socket.AF_INET6 else 4,
                    "ip": c.laddr.ip,
                    "port": c.laddr.port,
                    "loopback": _is_loopback(c.laddr.ip),
                }
            )
    return out


def assert_loopback_only(pids: Iterable[int] | None = None) -> list[dict]:
    """Raise AssertionError naming every socket of the Ray processes not on loopback."""
    socks = listening_sockets(pids if pids is not None else ray_process_pids())
    exposed = [s for s in socks if not s["loopback"]]
    if exposed:
        raise AssertionError("Ray sockets not on loopback: " + "; ".join(f"{s['name']}({s['pid']}) {s['proto']} {s['ip']}:{s['port']}" for s in exposed))
    return socks
