"""Plug-ins: the researcher's own modules, which register methods, model families and datasets.

A plug-in is an ordinary Python module that calls the decorators the built-in
code calls (`trainables.methods.register`, `trainables.models.register_family`,
the data registry's `register_dataset`). It reaches kdstudy in two ways:

* a spec names it: ``plugins: [my_lab.kd, ./my_loss.py, ./my_pkg/]`` — a module
  name (importable from ``sys.path``), a ``.py`` file, or a package folder (with
  an ``__init__.py``; inside it, import its own files relatively:
  ``from . import losses``). Paths are relative to the spec's folder.
* an installed package announces it in the entry-point group ``kdstudy.plugins``
  (``[project.entry-points."kdstudy.plugins"] my_lab = "my_lab.kd"``); the entry
  point names a module, or ``module:function`` for a function called once with no
  arguments.

A file or package folder is imported under a module name derived from its
absolute path (`module_name_for`), never by putting its folder on ``sys.path``
(its neighbours would shadow other modules), so every process that imports it
again under the recorded name gets the same module, and a second import is a
no-op: nothing registers twice.

Each plug-in has a *record* (a plain JSON-able dict), what the study keeps of it
for identity and what a trial process needs to import it again::

    {"ref": "./my_loss.py", "kind": "file", "module": "kdstudy_plugin_my_loss_3f2a...",
     "path": "/abs/dir/my_loss.py", "sha256": "..."}

``kind`` is ``file``, ``package``, ``module`` or ``entry_point``; ``path`` is the file
or folder imported (for a module name or entry point: where it was found, or None);
``sha256`` hashes the source (a package: every ``.py`` file's relative path and
bytes). `describe` makes records without executing anything; `load_plugins`
imports and returns them; `load_records` imports recorded plug-ins in another
process, optionally from a copy of each file at another path, and can check that
the copy is the source the driver recorded.

**On a Ray cluster** the driver's disk is not a worker's. The driver copies each
file and package plug-in into a private folder under its module name (`stage`:
``<module>.py``, ``<module>/``), and the study's Ray job ships those copies to every
node with Ray's runtime environment (``py_modules``: each copy lands in a folder of
its own on the node's ``PYTHONPATH``, named as it was), together with the top-level
package of each module plug-in that is not installed (`shipped_roots`; installed
ones must be installed on every node, as kdstudy is). A trial process calls
`load_in_trial(records)`: each plug-in is imported from its shipped copy (found on
``sys.path`` under its module name, else at its recorded path when that exists on
this node), after checking that the source it is about to import is the one the
driver recorded (sha256): an edited file, or another version of a module installed
on one node, is refused with a line naming the plug-in and the node. Nothing is
ever imported from a study folder.

Every failure is a `PluginError` whose message is one line naming the plug-in
(and the file and line, for an error inside it).
"""

from __future__ import annotations

import hashlib
import importlib
import importlib.machinery
import importlib.metadata
import importlib.util
import os
import re
import shutil
import socket
import sys
import sysconfig
import traceback
from pathlib import Path
from typing import Any, Iterable

#: the entry-point group installed packages announce plug-ins in
ENTRY_POINT_GROUP = "kdstudy.plugins"
#: module names of plug-ins imported from a file or folder start with this
MODULE_PREFIX = "kdstudy_plugin_"

_MODULE_NAME = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*(\.[A-Za-z_][A-Za-z0-9_]*)*$")
_SKIP_DIRS = {"__pycache__", ".git", ".hg", ".svn", ".mypy_cache", ".pytest_cache"}


class PluginError(Exception):
    """A plug-in cannot be found, read or imported; ``str()`` is one line naming it."""

    def __init__(self, ref: str, message: str):
        self.ref = ref
        self.message = message
        super().__init__(f"plug-in {ref}: {message}")


# --------------------------------------------------------------------------- naming and finding


def is_path_ref(ref: str) -> bool:
    """A file or folder reference (``./x.py``, ``x.py``, ``pkg/``, ``/abs/pkg``), not a module name."""
    return "/" in ref or os.sep in ref or ref.endswith(".py") or ref.startswith(".")


def module_name_for(path: str | Path) -> str:
    """The module name a plug-in file or package folder is imported under (stable for its path)."""
    p = Path(path).resolve()
    stem = p.stem if p.is_file() or p.suffix == ".py" else p.name
    stem = re.sub(r"\W", "_", stem) or "plugin"
    return f"{MODULE_PREFIX}{stem}_{hashlib.sha256(str(p).encode()).hexdigest()[:12]}"


def _short(text: str, limit: int = 200) -> str:
    line = " ".join(str(text).split())
    return line if len(line) <= limit else line[: limit - 3] + "..."


def _locate(name: str):
    """The ModuleSpec of an importable module name, found without executing any module."""
    mod = sys.modules.get(name)
    if mod is not None and getattr(mod, "__spec__", None) is not None:
        return mod.__spec__
    parts = name.split(".")
    search = None
    spec = None
    for i in range(len(parts)):
        full = ".".join(parts[: i + 1])
        loaded = sys.modules.get(full)
        if loaded is not None and getattr(loaded, "__spec__", None) is not None:
            spec = loaded.__spec__
        else:
            try:
                spec = importlib.machinery.PathFinder.find_spec(full, search)
            except (ImportError, ValueError):
                spec = None
        if spec is None:
            return None
        search = spec.submodule_search_locations
        if i < len(parts) - 1 and search is None:
            return None  # a module, not a package: it has no submodules
    return spec


def _origin_path(spec) -> str | None:
    """The file or package folder a module spec stands for (None for built-in modules)."""
    if spec is None:
        return None
    if spec.submodule_search_locations:
        locations = list(spec.submodule_search_locations)
        if spec.origin and os.path.basename(spec.origin) == "__init__.py":
            return os.path.dirname(spec.origin)
        return locations[0] if locations else None
    if spec.origin and os.path.isfile(spec.origin):
        return spec.origin
    return None


def resolve(ref: str, base_dir: str | Path | None = None) -> dict:
    """A record for `ref` without its hash: {ref, kind, module, path}. Raises PluginError."""
    if not isinstance(ref, str) or not ref.strip():
        raise PluginError(repr(ref), "must be a module name, a .py file or a package folder")
    if is_path_ref(ref):
        base = Path(base_dir) if base_dir is not None else Path.cwd()
        path = (base / os.path.expanduser(ref)).resolve()
        if path.is_dir():
            if not (path / "__init__.py").is_file():
                raise PluginError(ref, f"{path} is a folder without __init__.py (a plug-in package needs one)")
            kind = "package"
        elif path.is_file():
            if path.suffix != ".py":
                raise PluginError(ref, f"{path} is not a .py file")
            kind = "file"
        else:
            raise PluginError(ref, f"no such file or folder: {path}")
        return {"ref": ref, "kind": kind, "module": module_name_for(path), "path": str(path)}
    if not _MODULE_NAME.match(ref):
        raise PluginError(ref, "is not a module name (a file needs its .py, a folder a trailing /)")
    spec = _locate(ref)
    if spec is None:
        raise PluginError(ref, f"no module named {ref!r} (is it installed, or on PYTHONPATH?)")
    return {"ref": ref, "kind": "module", "module": ref, "path": _origin_path(spec)}


def source_sha256(path: str | Path | None) -> str:
    """sha256 of a plug-in's source: a file's bytes, or a folder's .py files (relative paths and bytes)."""
    h = hashlib.sha256()
    if path is None:
        return h.hexdigest()
    p = Path(path)
    if p.is_file():
        h.update(p.read_bytes())
        return h.hexdigest()
    for file in sorted(_py_files(p)):
        rel = file.relative_to(p).as_posix()
        h.update(rel.encode() + b"\0")
        h.update(hashlib.sha256(file.read_bytes()).digest())
    return h.hexdigest()


def _py_files(folder: Path) -> list[Path]:
    out = []
    for root, dirs, files in os.walk(folder):
        dirs[:] = sorted(d for d in dirs if d not in _SKIP_DIRS and not d.startswith("."))
        out += [Path(root) / f for f in files if f.endswith(".py")]
    return out


def _with_hash(record: dict) -> dict:
    try:
        return {**record, "sha256": source_sha256(record.get("path"))}
    except OSError as exc:
        raise PluginError(record["ref"], f"cannot read {record.get('path')}: {_short(exc)}") from None


def installed() -> list[importlib.metadata.EntryPoint]:
    """The entry points of installed packages in the ``kdstudy.plugins`` group, by name."""
    try:
        eps = importlib.metadata.entry_points(group=ENTRY_POINT_GROUP)
    except Exception:  # broken package metadata must not stop kdstudy
        return []
    return sorted(eps, key=lambda ep: ep.name)


def _entry_record(ep) -> dict:
    spec = _locate(ep.module)
    return {"ref": f"entry-point:{ep.name}", "kind": "entry_point", "module": ep.module,
            "path": _origin_path(spec), "value": ep.value}


def describe(refs: Iterable[str] = (), base_dir: str | Path | None = None,
             entry_points: bool = True) -> list[dict]:
    """Records of the plug-ins `refs` (and installed entry points), found and hashed, never executed."""
    records, seen = [], set()
    for ref in refs:
        rec = _with_hash(resolve(ref, base_dir))
        if rec["module"] not in seen:
            seen.add(rec["module"])
            records.append(rec)
    if entry_points:
        for ep in installed():
            rec = _with_hash(_entry_record(ep))
            if rec["ref"] not in seen:
                seen.add(rec["ref"])
                records.append(rec)
    return records


# --------------------------------------------------------------------------- importing


def load_plugins(refs: Iterable[str] = (), base_dir: str | Path | None = None,
                 entry_points: bool = True) -> list[dict]:
    """Import the plug-ins `refs` (relative paths against `base_dir`, default the working
    directory) and, with `entry_points`, every installed ``kdstudy.plugins`` entry point;
    return their records. A plug-in already imported is not imported again. Raises
    PluginError (one line) at the first plug-in that cannot be imported."""
    records = describe(refs, base_dir, entry_points)
    for rec in records:
        import_record(rec)
    return records


def load_records(records: Iterable[dict], paths: dict[str, str] | None = None, check: bool = False) -> None:
    """Import recorded plug-ins in this process (e.g. a Ray trial), under their recorded module names.

    `paths` maps a record's module name to where its file or folder is on this machine
    (a copy shipped to a worker); by default the recorded path. With `check`, a plug-in
    whose source here differs from the record's sha256 is refused (PluginError): a file
    or folder as found at its path, a module or entry point as this process would import
    it (found without executing it)."""
    for rec in records:
        rec = dict(rec)
        if paths and rec.get("module") in paths:
            rec["path"] = paths[rec["module"]]
        if check:
            _check_source(rec)
        import_record(rec)


def _check_source(rec: dict) -> None:
    """Raise PluginError unless the source this process would import for `rec` is the recorded one."""
    kind, where = rec.get("kind"), _node()
    if kind in ("file", "package"):
        path = rec.get("path")
        try:
            got = source_sha256(path)
        except OSError as exc:
            raise PluginError(rec["ref"], f"cannot read {path} on {where}: {_short(exc)}") from None
        if got != rec.get("sha256"):
            raise PluginError(rec["ref"], f"{path} is not the source the study recorded "
                                          f"(sha256 {got[:12]}, recorded {str(rec.get('sha256'))[:12]})")
        return
    if not rec.get("path"):  # a module the driver found without a source file: nothing to compare
        return
    spec = _locate(rec["module"])
    path = _origin_path(spec)
    if path is None:
        raise PluginError(rec["ref"], f"no module named {rec['module']!r} on {where} (install it on every node, "
                                      f"as kdstudy is, or name its file or folder in the spec)")
    got = source_sha256(path)
    if got != rec.get("sha256"):
        raise PluginError(rec["ref"], f"{path} on {where} is not the source the study recorded "
                                      f"(sha256 {got[:12]}, recorded {str(rec.get('sha256'))[:12]}): install "
                                      f"the same version on every node")


def _node() -> str:
    try:
        return f"node {socket.gethostname()}"
    except OSError:  # pragma: no cover
        return "this node"


def import_record(record: dict) -> Any:
    """Import one plug-in from its record (no-op when its module is already imported); the module.

    A file or package plug-in already imported from another source (it was edited since this
    process imported it: its registrations are the old version's) is refused."""
    ref, kind, name, path = record["ref"], record.get("kind"), record["module"], record.get("path")
    if name in sys.modules and kind != "entry_point":
        module = sys.modules[name]
        had, want = getattr(module, "__kdstudy_sha256__", None), record.get("sha256")
        if kind in ("file", "package") and had and want and had != want:
            raise PluginError(ref, f"was imported by this process from another version of its source "
                                   f"(sha256 {had[:12]}, now {want[:12]}); its methods, families and datasets are "
                                   f"registered as they were: start a new Python process to use the edited one")
        return module
    try:
        if kind in ("file", "package"):
            module = _import_path(name, Path(path), package=kind == "package")
            if record.get("sha256"):
                module.__kdstudy_sha256__ = record["sha256"]
            return module
        if kind == "entry_point":
            return _import_entry_point(record)
        return importlib.import_module(name)
    except PluginError:
        raise
    except BaseException as exc:  # anything the plug-in's own code raises, SystemExit included
        if isinstance(exc, KeyboardInterrupt):
            raise
        raise PluginError(ref, _explain(exc, path)) from None


_CALLED: set[str] = set()


def _import_entry_point(record: dict):
    value = record.get("value") or record["module"]
    module_name, _, attr = value.partition(":")
    module = importlib.import_module(module_name.strip())
    if attr:
        obj = module
        for part in attr.strip().split("."):
            obj = getattr(obj, part)
        if callable(obj) and value not in _CALLED:
            _CALLED.add(value)
            obj()
    return module


def _import_path(name: str, path: Path, package: bool):
    init = path / "__init__.py" if package else path
    spec = importlib.util.spec_from_file_location(
        name, init, submodule_search_locations=[str(path)] if package else None)
    if spec is None or spec.loader is None:
        raise PluginError(str(path), "cannot be imported")
    module = importlib.util.module_from_spec(spec)
    sys.modules[name] = module
    try:
        spec.loader.exec_module(module)
    except BaseException:
        for key in [k for k in sys.modules if k == name or k.startswith(name + ".")]:
            del sys.modules[key]
        raise
    return module


def _explain(exc: BaseException, path: str | None) -> str:
    """One line: where in the plug-in's own files the error happened, and the error."""
    where = ""
    inside = (lambda f: path is not None and os.path.abspath(f).startswith(os.path.abspath(path)))
    if isinstance(exc, SyntaxError) and exc.filename:
        where = f"{exc.filename}, line {exc.lineno}: "
        text = f"{type(exc).__name__}: {exc.msg}"
    else:
        frames = [f for f in traceback.extract_tb(exc.__traceback__) if inside(f.filename)]
        if frames:
            where = f"{frames[-1].filename}, line {frames[-1].lineno}: "
        elif path:
            where = f"{path}: "
        text = f"{type(exc).__name__}: {exc}"
        if "registered twice" in str(exc):
            text += " (is one plug-in imported under two names? name each once)"
    return _short(where + text, 300)


# --------------------------------------------------------------------------- travelling to the workers

#: a file in each staged package copy naming its module (Ray names a shipped folder by its content
#: only: two copies of one package under two names would otherwise be one upload)
STAGE_MARK = ".kdstudy-module"


def stage(records: Iterable[dict], folder: str | Path) -> list[str]:
    """Copy the file and package plug-ins of `records` into `folder` under their module names
    (``<module>.py``, ``<module>/``) and return the copies' paths: what the study's Ray job ships
    to every node (``py_modules``). Each copy is checked against its record: a plug-in edited
    since the spec was read is refused (PluginError), so every trial imports what was recorded."""
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    out = []
    for rec in records:
        if rec.get("kind") not in ("file", "package"):
            continue
        src = Path(rec["path"])
        try:
            if rec["kind"] == "file":
                dest = folder / f"{rec['module']}.py"
                shutil.copyfile(src, dest)
            else:
                dest = folder / rec["module"]
                if dest.exists():
                    shutil.rmtree(dest)
                shutil.copytree(src, dest, ignore=_not_staged)
                (dest / STAGE_MARK).write_text(rec["module"] + "\n")
        except OSError as exc:
            raise PluginError(rec["ref"], f"cannot copy {src}: {_short(exc)}") from None
        got = source_sha256(dest)
        if got != rec.get("sha256"):
            raise PluginError(rec["ref"], f"{src} changed after the spec was read (sha256 {got[:12]}, read as "
                                          f"{str(rec.get('sha256'))[:12]}); run again")
        out.append(str(dest))
    return out


def _not_staged(folder: str, names: list[str]) -> set[str]:
    """What a package's copy leaves out: caches, hidden folders, compiled files, and ignore files
    (Ray would honour a ``.gitignore`` and drop what it names from the upload)."""
    out = set()
    for n in names:
        if n in _SKIP_DIRS or n.endswith(".pyc") or n in (".gitignore", ".rayignore"):
            out.add(n)
        elif n.startswith(".") and os.path.isdir(os.path.join(folder, n)):
            out.add(n)
    return out


def _installed_dirs() -> list[str]:
    paths = sysconfig.get_paths()
    dirs = {paths.get(k) for k in ("purelib", "platlib", "stdlib", "platstdlib")}
    try:
        import site

        dirs.update(site.getsitepackages())
        dirs.add(site.getusersitepackages())
    except (AttributeError, ImportError):  # pragma: no cover - a virtualenv without site helpers
        pass
    return [os.path.realpath(d) for d in dirs if d]


def shipped_roots(records: Iterable[dict]) -> list[str]:
    """The top-level package folders (or single-file modules) of module and entry-point plug-ins
    found outside the installed packages (on ``PYTHONPATH``, or installed in editable mode):
    they travel with the job too, so that a node which does not have them imports the driver's.
    Installed plug-ins are expected on every node (and checked there, `load_in_trial`)."""
    installed = _installed_dirs()
    out: list[str] = []
    for rec in records:
        if rec.get("kind") not in ("module", "entry_point") or not rec.get("path"):
            continue
        top = rec["module"].split(".")[0]
        if top in ("study", "trainables", "analysis", "studies"):
            continue  # kdstudy's own packages travel anyway
        path = _origin_path(_locate(top))
        if path is None:
            continue
        real = os.path.realpath(path)
        if any(real == d or real.startswith(d + os.sep) for d in installed):
            continue
        if path not in out:
            out.append(path)
    return out


def shipped_paths(records: Iterable[dict]) -> dict[str, str]:
    """{module name: path} of the file and package plug-ins shipped to this node: found on
    ``sys.path`` under their module names (where Ray's ``py_modules`` put them), without executing."""
    out = {}
    for rec in records:
        if rec.get("kind") not in ("file", "package"):
            continue
        try:
            spec = importlib.machinery.PathFinder.find_spec(rec["module"])
        except (ImportError, ValueError):
            spec = None
        path = _origin_path(spec)
        if path is not None:
            out[rec["module"]] = path
    return out


def load_in_trial(records: Iterable[dict]) -> None:
    """Import the study's plug-ins in a trial process (any node of the cluster), before it builds
    its method: each from its shipped copy (`shipped_paths`), else from its recorded path when that
    exists on this node, after checking that what is imported is the source the driver recorded.
    Raises PluginError (one line, naming the plug-in and the node)."""
    records = list(records)
    paths = shipped_paths(records)
    for rec in records:
        if rec.get("kind") in ("file", "package") and rec["module"] not in paths \
                and not (rec.get("path") and os.path.exists(rec["path"])):
            raise PluginError(rec["ref"], f"did not reach {_node()}: no shipped copy on sys.path and no "
                                          f"{rec.get('path')} there (kdstudy ships plug-ins with the Ray job it "
                                          f"starts; a Ray started before it must be given them: "
                                          f"study.api.runtime_env)")
    load_records(records, paths=paths, check=True)
