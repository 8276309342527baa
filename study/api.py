"""kdstudy from Python (a notebook, a script): run a spec, get its study folder, read its results.

    from study import api

    folder = api.run("examples/plugin/spec.yaml")        # a YAML file, or a dict as the YAML would read
    df = api.load(folder)                                # analysis.load: a row per trial x epoch x role x exit
    print(api.status(folder))                            # the table `kdstudy status` prints

`run` does what ``kdstudy run`` does (the spec and its plug-ins checked first, the
preflight, the study, the report) and returns the study folder; `resume` continues a
study from its folder as ``kdstudy resume`` does. Where the command line prints a line
and exits with a code, these raise: `study.spec.SpecError` for a spec (or plug-in) with
problems, `PreflightError` for what the preflight found (both before Ray starts),
`study.folder.SpecMismatch` for a spec or plug-in source that differs from the
study's, `StudyFailed` (with ``.folder`` and ``.outcome``) when experiments failed.

Ray: when none is initialized in this process, `run` starts one (local, or the
cluster at ``address``) for the study and shuts it down at the end, so a later run
with other plug-ins gets a job of its own. A Ray you started yourself is used as it
is; start it with ``ray.init(runtime_env=api.runtime_env(spec))`` so that the study's
plug-ins and kdstudy's own packages reach every node and no file of your working
directory shadows them (`study.jobenv`).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

__all__ = ["PreflightError", "StudyFailed", "load", "load_spec", "resume", "run", "runtime_env", "status"]


class PreflightError(RuntimeError):
    """What stops a study before Ray starts (dataset files, storage, zoo entries, trackers...)."""

    def __init__(self, problems: list[str]):
        self.problems = list(problems)
        super().__init__("; ".join(self.problems))


class StudyFailed(RuntimeError):
    """The study ran but did not finish: experiments failed (or could not start because of them)."""

    def __init__(self, folder: str, outcome):
        self.folder, self.outcome = folder, outcome
        lines = [f"experiment {n} failed: {r}" for n, r in outcome.failed.items()]
        lines += [f"experiment {n} not run: it needs {d}" for n, d in outcome.blocked.items()]
        super().__init__(f"study {folder} did not finish: " + "; ".join(lines)
                         + f" (fix the cause, then resume({folder!r}))")


def load_spec(spec: str | Path | dict, storage: str | None = None, name: str | None = None,
              spec_dir: str | Path | None = None):
    """The validated `study.spec.Spec` of a YAML file or a spec dict, its plug-ins imported first.

    A dict's relative paths (``plugins: [./my_loss.py]``) are relative to `spec_dir`
    (default: the working directory). `storage` and `name` replace the spec's."""
    from .spec import load_spec as load_file
    from .spec import load_spec_plugins, parse_spec

    overrides = {"storage": None if storage is None else str(storage), "name": name}
    if isinstance(spec, dict):
        raw = {**spec, **{k: v for k, v in overrides.items() if v is not None}}
        base = str(Path(spec_dir).resolve()) if spec_dir is not None else str(Path.cwd())
        load_spec_plugins(raw, base, "spec (dict)")
        return parse_spec(raw, source="spec (dict)", spec_dir=base)
    return load_file(spec, overrides)


def run(spec: str | Path | dict, *, storage: str | None = None, name: str | None = None,
        spec_dir: str | Path | None = None, address: str | None = None, extend: bool = False,
        report: bool = True, num_cpus: int | None = None) -> str:
    """Run (or continue) the study of `spec` and return its folder (``<storage>/<name>``).

    `address`: a Ray cluster (``auto``, ``ray://host:10001``); default a private local Ray.
    `extend`: accept more confirm seeds or search trials for an existing study. `report`:
    write ``report.html`` at the end (as ``kdstudy run`` does; PNGs if the spec asks)."""
    s = load_spec(spec, storage=storage, name=name, spec_dir=spec_dir)
    return _run(s, s.study_uri, address, report=report, extend=extend, num_cpus=num_cpus)


def resume(path: str | Path, *, address: str | None = None, report: bool = True,
           num_cpus: int | None = None) -> str:
    """Continue the study in folder `path` (wherever it was copied) and return its folder."""
    from .cli import _resume_plugins
    from .folder import StudyFolder
    from .spec import SpecError

    folder = StudyFolder(str(path))
    _resume_plugins(folder)
    s = folder.saved_spec()
    if s is None:
        raise SpecError([f"{path} is not a kdstudy study folder (no spec.json)"], str(path))
    return _run(s, folder.root, address, report=report, num_cpus=num_cpus)


def runtime_env(spec: str | Path | dict, spec_dir: str | Path | None = None) -> dict:
    """The runtime environment a study's Ray job needs, for ``ray.init(runtime_env=...)`` when you
    start Ray yourself: kdstudy's packages and the spec's plug-ins, shipped to every node."""
    from .jobenv import job_env

    return job_env(load_spec(spec, spec_dir=spec_dir).plugin_sources)


def load(path: str | Path, **kwargs: Any):
    """A study's results as one pandas DataFrame (`analysis.load`; every hyperparameter a column)."""
    from analysis import load as load_results

    return load_results(path, **kwargs)


def status(path: str | Path, **kwargs: Any) -> str:
    """The table ``kdstudy status`` prints: per stage and method, how trials ended and the results."""
    from analysis import status_table

    return status_table(path, **kwargs)


def _run(spec, root: str, address: str | None, report: bool, extend: bool = False,
         num_cpus: int | None = None) -> str:
    import ray

    from .folder import StudyFolder
    from .preflight import preflight, preflight_warnings
    from .runner import run_study

    root = StudyFolder(root).root
    problems = preflight(spec, root, local=address is None)
    if problems:
        raise PreflightError(problems)
    for w in preflight_warnings(spec, local=address is None):
        print(f"kdstudy: warning: {w}")
    started_here = not ray.is_initialized()
    try:
        root, outcome = run_study(spec, root=root, address=address, extend=extend, num_cpus=num_cpus)
    finally:
        if started_here and ray.is_initialized():
            from .cli import _shutdown_ray

            _shutdown_ray()
    if report:
        from .cli import _report

        _report(root, None, spec.report_png)
    if outcome.failed or outcome.blocked:
        raise StudyFailed(root, outcome)
    return root
