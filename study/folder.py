"""A study folder: its spec (written once), its stage markers, and where things live.

    <study>/spec.json             the spec as first run (never overwritten)
    <study>/spec-extend-N.json    a later spec that extended the study (`run --extend`)
    <study>/lock.json             the running driver's lease (study.lock)
    <study>/stages/<exp>.json     an experiment verified finished, with its trials
    <study>/results/<stage>/      Parquet rows, one file per trial
    <study>/checkpoints/, errors/, optuna/, zoo/, logs/, report/

The study's identity is its *content*: the spec's fields that decide what
is trained (never its storage path, name, resources or runtime). Running a
spec with other content against an existing study is refused with the
difference; `--extend` accepts only changes that add work to the same
design (more confirm seeds, more search trials).
"""

from __future__ import annotations

import difflib
import json
import os
import posixpath
from datetime import datetime, timezone

from trainables import storage

from .spec import Spec, SpecError, parse_spec

#: spec fields that do not change what a study trains
NOT_CONTENT = ("name", "storage", "description", "resources", "runtime", "failure", "report", "tracking")


class SpecMismatch(RuntimeError):
    """The spec differs from the one the study was started with."""


def normalize_root(path: str) -> str:
    """The study folder as one canonical string (`/x//store/s8/` and `/x/store/s8` are one study)."""
    if "://" in path:
        scheme, rest = path.split("://", 1)
        return f"{scheme}://{posixpath.normpath(rest).lstrip('/') if scheme != 'file' else posixpath.normpath(rest)}"
    return os.path.normpath(os.path.abspath(os.path.expanduser(path)))


def content(spec: Spec) -> dict:
    """What decides a study's trials, as plain JSON."""
    raw = {k: v for k, v in (spec.raw or {}).items() if k not in NOT_CONTENT}
    ds = dict(raw.get("dataset") or {})
    ds.pop("root", None)
    ds.pop("download", None)
    raw["dataset"] = ds
    return json.loads(json.dumps(raw, sort_keys=True, default=str))


def diff(old: dict, new: dict) -> str:
    a = json.dumps(old, indent=1, sort_keys=True).splitlines()
    b = json.dumps(new, indent=1, sort_keys=True).splitlines()
    return "\n".join(difflib.unified_diff(a, b, "study (spec.json)", "this spec", lineterm="", n=1))


def _extension_ok(old: dict, new: dict) -> list[str]:
    """Problems that make `new` more than an extension of `old` (empty: it extends it)."""
    problems = []

    def strip(d: dict) -> dict:
        d = json.loads(json.dumps(d))
        d.get("confirm", {}).pop("seeds", None)
        for m in (d.get("methods") or {}).values():
            if isinstance(m, dict):
                m.pop("trials", None)
        return d

    if strip(old) != strip(new):
        problems.append("only confirm.seeds and methods.<name>.trials may change with --extend")
    if int((new.get("confirm") or {}).get("seeds", 5)) < int((old.get("confirm") or {}).get("seeds", 5)):
        problems.append("confirm.seeds may only grow")
    for name, m in (new.get("methods") or {}).items():
        o = (old.get("methods") or {}).get(name) or {}
        if isinstance(m, dict) and int(m.get("trials", 8)) < int(o.get("trials", 8)):
            problems.append(f"methods.{name}.trials may only grow")
    return problems


class StudyFolder:
    def __init__(self, root: str):
        self.root = normalize_root(root)

    def uri(self, *parts: str) -> str:
        return storage.join(self.root, *parts)

    # ------------------------------------------------------------------ spec
    def spec_files(self) -> list[str]:
        files = []
        if storage.exists(self.uri("spec.json")):
            files.append(self.uri("spec.json"))
        n = 1
        while storage.exists(self.uri(f"spec-extend-{n}.json")):
            files.append(self.uri(f"spec-extend-{n}.json"))
            n += 1
        return files

    def saved_spec(self) -> Spec | None:
        """The study's current spec (the latest extension), read as JSON data."""
        files = self.spec_files()
        if not files:
            return None
        try:
            raw = json.loads(storage.read_bytes(files[-1]))
        except (ValueError, UnicodeDecodeError) as exc:
            raise SpecError([f"cannot read {files[-1]}: {exc}"], files[-1]) from None
        raw = {k: v for k, v in raw.items() if k != "kdstudy"} if isinstance(raw, dict) else raw
        return parse_spec(raw, source=files[-1])

    def adopt(self, spec: Spec, extend: bool = False, version: str = "") -> None:
        """Record `spec` for a new study, or check it against the study's (raising SpecMismatch)."""
        saved = self.saved_spec()
        record = {**spec.raw, "kdstudy": {"saved": datetime.now(timezone.utc).isoformat(), "code_version": version}}
        if saved is None:
            storage.write_bytes(self.uri("spec.json"), json.dumps(record, indent=1, default=str).encode())
            return
        old, new = content(saved), content(spec)
        if old == new:
            return
        text = diff(old, new)
        if not extend:
            raise SpecMismatch(f"{self.root} holds a study with another spec; use a new `name` for a new study, "
                               f"or `--extend` to add seeds or trials:\n{text}")
        problems = _extension_ok(old, new)
        if problems:
            raise SpecMismatch("cannot extend the study: " + "; ".join(problems) + "\n" + text)
        n = len(self.spec_files())
        storage.write_bytes(self.uri(f"spec-extend-{n}.json"), json.dumps(record, indent=1, default=str).encode())

    # ------------------------------------------------------------------ markers
    def marker_uri(self, name: str) -> str:
        return self.uri("stages", f"{name}.json")

    def marker(self, name: str) -> dict | None:
        uri = self.marker_uri(name)
        if not storage.exists(uri):
            return None
        try:
            data = json.loads(storage.read_bytes(uri))
        except (ValueError, UnicodeDecodeError):
            return None  # a torn marker is no marker: the experiment is verified again
        return data if isinstance(data, dict) and data.get("name") == name else None

    def write_marker(self, name: str, data: dict) -> None:
        storage.write_bytes(self.marker_uri(name), json.dumps({**data, "name": name}, indent=1, default=str).encode())
