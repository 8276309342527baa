"""What travels with a study's Ray job: kdstudy's own packages and the study's plug-ins.

Two things go wrong on Ray's defaults. Ray puts the driver's working directory first
on every worker's ``sys.path`` (unless the job's runtime environment has a
``working_dir``), so a ``study.py``, ``analysis.py`` or ``trainables.py`` of the user's
there is imported in place of kdstudy's packages, and run, in every worker. And a
plug-in file beside the spec is on the driver's disk only, not on another node's.
The job's runtime environment (``ray.init(runtime_env=...)``) fixes both:

* ``py_modules``: the folders of the ``study``, ``trainables`` and ``analysis``
  packages this driver imported (a checkout on ``PYTHONPATH``, or the installed
  ones), the copies of the study's file and package plug-ins
  (`trainables.plugins.stage`), and the module plug-ins found outside the installed
  packages (`trainables.plugins.shipped_roots`). Ray uploads each once (content
  addressed) and puts it first on every worker's ``PYTHONPATH``, on every node: the
  workers import exactly the driver's code, whatever each node has installed.
* ``working_dir``: a folder of its own holding only a note, so that Ray adds no
  working directory to the workers' path (and a worker starts in that folder).

`job_env(records)` builds it; `init_kwargs(env)` is what `ray.init` gets. Inside a job
submitted with ``ray job submit`` (which has a runtime environment of its own, e.g.
``--working-dir .``) the two are merged: the job's ``working_dir`` is kept (Ray then adds
no working directory either, and our packages come before it on the path) and
``py_modules`` are combined. Runtime environments with local folders can only be given
to ``ray.init``: a Ray started before kdstudy (a notebook's ``ray.init()``) should be
started with ``ray.init(runtime_env=study.api.runtime_env(spec))``; without it, trials
import plug-ins from their recorded paths, which exist only on the driver's machine.
"""

from __future__ import annotations

import atexit
import hashlib
import importlib.util
import json
import os
import shutil
import tempfile
from contextlib import contextmanager
from pathlib import Path

from trainables import plugins

#: kdstudy's packages a worker imports (studies/ holds only YAML the driver reads)
PACKAGES = ("study", "trainables", "analysis")
#: never uploaded: compiled files (a worker compiles its own)
EXCLUDES = ["__pycache__", "*.pyc"]
#: where a job submitted with `ray job submit` finds its runtime environment (set by Ray)
_JOB_CONFIG_ENV = "RAY_JOB_CONFIG_JSON_ENV_VAR"
_OVERRIDE_ENV = "RAY_OVERRIDE_JOB_RUNTIME_ENV"

NOTE = ("This folder is the working directory of a kdstudy Ray job's workers. It holds nothing else,\n"
        "so that no file of the driver's working directory shadows kdstudy's packages in a worker.\n")

_staged: dict[str, str] = {}  # digest of the records -> the folder of their copies (this process)


def package_dir(name: str) -> str:
    """The folder of one of kdstudy's packages as this process imports it (found without importing)."""
    import sys

    mod = sys.modules.get(name)
    if mod is not None and getattr(mod, "__file__", None):
        return os.path.dirname(os.path.abspath(mod.__file__))
    spec = importlib.util.find_spec(name)
    if spec is None or not spec.origin:
        raise RuntimeError(f"kdstudy's package {name!r} cannot be found")
    return os.path.dirname(os.path.abspath(spec.origin))


def _folder_for(records: list[dict]) -> str:
    """A private folder with the staged plug-in copies and the working directory's note, one per
    set of plug-in sources in this process (removed at exit)."""
    digest = hashlib.sha256(json.dumps([(r.get("module"), r.get("sha256")) for r in records],
                                       sort_keys=True).encode()).hexdigest()[:16]
    folder = _staged.get(digest)
    if folder is None or not os.path.isdir(folder):
        folder = tempfile.mkdtemp(prefix=f"kdstudy-job-{digest[:8]}-")
        os.makedirs(os.path.join(folder, "workdir"))
        Path(folder, "workdir", "README.txt").write_text(NOTE)
        if not _staged:
            atexit.register(_remove_staged)
        _staged[digest] = folder
    return folder


def _remove_staged() -> None:
    for folder in _staged.values():
        shutil.rmtree(folder, ignore_errors=True)
    _staged.clear()


def job_env(records: list[dict] | tuple = ()) -> dict:
    """The runtime environment of a study's Ray job (see the module docstring). Raises
    `trainables.plugins.PluginError` if a plug-in changed since its record was made."""
    records = list(records or ())
    folder = _folder_for(records)
    copies = plugins.stage(records, os.path.join(folder, "plugins"))
    modules = [package_dir(p) for p in PACKAGES] + copies + plugins.shipped_roots(records)
    return {"working_dir": os.path.join(folder, "workdir"), "py_modules": modules, "excludes": list(EXCLUDES)}


def submitted_job_env() -> dict | None:
    """The runtime environment of the Ray job this driver runs in (``ray job submit``), else None."""
    raw = os.environ.get(_JOB_CONFIG_ENV)
    if not raw:
        return None
    try:
        env = json.loads(raw).get("runtime_env")
    except (ValueError, AttributeError):
        return None
    return env if isinstance(env, dict) else {}


def merged(env: dict, job: dict | None) -> tuple[dict, bool]:
    """`env` merged with a submitted job's own environment `job`; (what ray.init gets, whether Ray
    must let it override the job's fields)."""
    if job is None:
        return env, False
    out = dict(env)
    override = False
    if job.get("working_dir"):
        out.pop("working_dir")  # the job's stays: Ray adds no working directory for it either
    if job.get("py_modules"):
        out["py_modules"] = list(env["py_modules"]) + [m for m in job["py_modules"] if m not in env["py_modules"]]
        override = True
    if job.get("excludes"):
        out["excludes"] = sorted(set(env["excludes"]) | set(job["excludes"]))
        override = True
    return out, override


@contextmanager
def init_kwargs(env: dict):
    """``ray.init`` keyword arguments for `env` (within a submitted job: merged with the job's)."""
    runtime_env, override = merged(env, submitted_job_env())
    saved = os.environ.get(_OVERRIDE_ENV)
    if override:
        os.environ[_OVERRIDE_ENV] = "1"
    try:
        yield {"runtime_env": runtime_env}
    finally:
        if override:
            if saved is None:
                os.environ.pop(_OVERRIDE_ENV, None)
            else:
                os.environ[_OVERRIDE_ENV] = saved
