"""`kdstudy dashboard`: optuna-dashboard's own HTTP API lists every search of a study, read-only."""

from __future__ import annotations

import hashlib
import json
import os
import re
import signal
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.request
from pathlib import Path

import pytest

pytest.importorskip("optuna_dashboard", reason="the dashboard extra is not installed (pip install 'kdstudy[test]')")

import optuna  # noqa: E402
from optuna.storages import JournalStorage  # noqa: E402
from optuna.storages.journal import JournalFileBackend  # noqa: E402

ROOT = Path(__file__).resolve().parent.parent


def _search(folder: Path, name: str, n: int) -> None:
    """A search's journal as a study writes it: one Optuna study named after its experiment."""
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    store = JournalStorage(JournalFileBackend(str(folder / "optuna" / f"{name}.journal")))
    study = optuna.create_study(study_name=name, storage=store, direction="maximize", load_if_exists=True,
                                sampler=optuna.samplers.RandomSampler(seed=0))
    study.optimize(lambda t: t.suggest_float("temperature", 1.0, 8.0) / 10, n_trials=n)


def _snapshot(folder: Path) -> dict[str, str]:
    return {str(p.relative_to(folder)): hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted(folder.rglob("*")) if p.is_file()}


def _get(url: str):
    with urllib.request.urlopen(url, timeout=10) as r:
        return json.loads(r.read())


@pytest.fixture
def study(tmp_path):
    folder = tmp_path / "store" / "demo"
    (folder / "optuna").mkdir(parents=True)
    (folder / "spec.json").write_text(json.dumps({"name": "demo"}))
    _search(folder, "search-kd-aaaa1111", 3)
    _search(folder, "search-rkd-bbbb2222", 2)
    return folder


def _ignoring_sigint():
    signal.signal(signal.SIGINT, signal.SIG_IGN)


def _start(folder: Path, *extra: str, sigint_ignored: bool = False):
    """The dashboard as its own process; `sigint_ignored`: started as a shell's background job is
    (SIGINT ignored, inherited), which must not keep Ctrl-C from stopping it."""
    proc = subprocess.Popen([sys.executable, "-m", "study.cli", "dashboard", str(folder), "--port", "0", *extra],
                            cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                            env={**os.environ, "PYTHONPATH": str(ROOT), "PYTHONFAULTHANDLER": "1"},
                            preexec_fn=_ignoring_sigint if sigint_ignored else None)
    lines = []
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        line = proc.stdout.readline()
        if not line:
            break
        lines.append(line)
        m = re.search(r"(http://127\.0\.0\.1:\d+)/dashboard", line)
        if m:
            return proc, m[1], "".join(lines)
    proc.kill()
    raise AssertionError("no URL printed: " + "".join(lines) + proc.stderr.read())


def _stopped(proc, timeout: float = 30) -> int:
    """Its exit code once stopped; if it does not stop, every thread's stack (faulthandler, on SIGABRT)."""
    try:
        return proc.wait(timeout=timeout)
    except subprocess.TimeoutExpired:
        proc.send_signal(signal.SIGABRT)
        proc.wait(timeout=30)
        pytest.fail(f"the dashboard did not stop in {timeout} s; its threads:\n{proc.stderr.read()[-8000:]}")


def test_dashboard_lists_every_search_read_only(study):
    before = _snapshot(study)
    proc, base, out = _start(study, "--refresh", "0.5", sigint_ignored=True)
    try:
        assert "2 search(es)" in out and "read-only" in out
        summaries = _get(f"{base}/api/studies")["study_summaries"]
        names = {s["study_name"]: s for s in summaries}
        assert set(names) == {"search-kd-aaaa1111", "search-rkd-bbbb2222"}  # both journals, one storage
        kd = _get(f"{base}/api/studies/{names['search-kd-aaaa1111']['study_id']}")
        assert len(kd["trials"]) == 3 and kd["directions"] == ["maximize"]
        assert {p["name"] for t in kd["trials"] for p in t["params"]} == {"temperature"}
        # everything that would write is refused, and the study folder is never touched
        for method, path in (("POST", "/api/studies"), ("DELETE", f"/api/studies/{names['search-kd-aaaa1111']['study_id']}")):
            req = urllib.request.Request(f"{base}{path}", method=method, data=b"{}")
            with pytest.raises(urllib.error.HTTPError) as err:
                urllib.request.urlopen(req, timeout=10)
            assert err.value.code == 405
        assert _snapshot(study) == before
        # a running study: new trials and new searches appear, and each search keeps its id
        _search(study, "search-kd-aaaa1111", 2)
        _search(study, "search-dkd-0000cccc", 1)  # sorts first, but is new: it comes last
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline:  # the dashboard itself caches a study's trials for 2 s
            time.sleep(0.7)
            now = {s["study_name"]: s for s in _get(f"{base}/api/studies")["study_summaries"]}
            trials = _get(f"{base}/api/studies/{names['search-kd-aaaa1111']['study_id']}")["trials"]
            if len(now) == 3 and len(trials) == 5:
                break
        assert set(now) == set(names) | {"search-dkd-0000cccc"}
        assert all(now[n]["study_id"] == names[n]["study_id"] for n in names)
        assert len(trials) == 5
    finally:
        proc.send_signal(signal.SIGINT)
        code = _stopped(proc)
    assert code == 0 and "Traceback" not in proc.stderr.read()


def test_dashboard_stops_cleanly_on_sigterm(study):
    """`kill`, a service manager or `timeout` stop it as Ctrl-C does: exit 0, its scratch folder removed."""
    scratch = Path(tempfile.gettempdir())
    before = set(scratch.glob("kdstudy-dashboard-*"))
    proc, base, out = _start(study)
    assert _get(f"{base}/api/studies")["study_summaries"]
    mine = set(scratch.glob("kdstudy-dashboard-*")) - before
    assert len(mine) == 1, mine  # its in-memory copy's scratch folder
    proc.send_signal(signal.SIGTERM)
    assert _stopped(proc) == 0 and "Traceback" not in proc.stderr.read()
    assert not next(iter(mine)).exists()


def test_dashboard_bad_input_is_one_line(tmp_path):
    run = [sys.executable, "-m", "study.cli", "dashboard"]
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    out = subprocess.run([*run, str(tmp_path / "nothing")], cwd=ROOT, capture_output=True, text=True, env=env,
                         timeout=60)
    assert out.returncode == 2 and out.stderr.strip().count("\n") == 0
    assert "is not a kdstudy study folder" in out.stderr
    hide = ("import importlib.machinery, sys\n"
            "class Hidden(importlib.machinery.PathFinder):\n"
            "    @classmethod\n"
            "    def find_spec(cls, name, path=None, target=None):\n"
            "        return None if name.split('.')[0] == 'optuna_dashboard' else super().find_spec(name, path, target)\n"
            "sys.meta_path[:] = [Hidden if f is importlib.machinery.PathFinder else f for f in sys.meta_path]\n"
            "from study.cli import main\nsys.exit(main(sys.argv[1:]))\n")
    (tmp_path / "s" / "optuna").mkdir(parents=True)
    (tmp_path / "s" / "spec.json").write_text("{}")
    out = subprocess.run([sys.executable, "-c", hide, "dashboard", str(tmp_path / "s")], cwd=ROOT,
                         capture_output=True, text=True, env=env, timeout=60)
    assert out.returncode == 2
    assert out.stderr.strip() == "kdstudy: the dashboard needs optuna-dashboard (pip install 'kdstudy[dashboard]')"
