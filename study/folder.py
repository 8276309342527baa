"""A study folder: its spec (written once), its stage markers, and where things live.

    <study>/spec.json             the spec as first run (never overwritten)
    <study>/spec-extend-N.json    a later spec that extended the study (`run --extend`)
    <study>/dataset.json          the dataset's facts the study ran with (shape, classes, splits)
    <study>/record/               a second record of each spec file as it was written
    <study>/lock.json             the running driver's lease (study.lock)
    <study>/stages/<exp>.json     an experiment verified finished, with its trials (and their results
                                  files' sizes and sha256, checked on every later run)
    <study>/results/<stage>/      Parquet rows, one file per trial
    <study>/checkpoints/, errors/, optuna/, zoo/, logs/, report/

The study's identity is its *content*: the spec's fields that decide what
is trained (never its storage path, name, resources or runtime). Running a
spec with other content against an existing study is refused with the
difference; `--extend` accepts only changes that add work to the same
design (more confirm seeds, more search trials).

A spec file is a record of what the study ran, never an input: editing
`spec.json` by hand (to change `lr`, say) would make `resume` run another
study beside the old one. So every spec file holds the sha256 of its content
(`kdstudy.content_sha256`) and a byte copy of it goes to `record/` when it is
written. Reading the study's spec (`saved_spec`, for `run` and `resume`)
refuses a file whose content no longer matches its checksum, with its
difference to the record (what the study ran). Older studies have no
checksum: their record is written on their first run with this version, and
until then their stage markers speak for what ran. An experiment's name is a
hash of its content, so a marker whose name is not an experiment of the
recorded spec finished under another spec, and is refused too.
"""

from __future__ import annotations

import difflib
import hashlib
import json
import os
import posixpath
from datetime import datetime, timezone

from trainables import storage
from trainables.data import identity_config

from .spec import Spec, SpecError, parse_spec

#: spec fields that do not change what a study trains
NOT_CONTENT = ("name", "storage", "description", "resources", "runtime", "failure", "report", "tracking",
               "plugins")


#: how trials of a new study name their configuration (see `StudyFolder.config_ids`)
CONFIG_IDS = "content"
#: folder of the second record of each spec file (see the module docstring)
RECORD = "record"


class SpecMismatch(RuntimeError):
    """The spec differs from the one the study was started with."""


class SpecEdited(SpecMismatch):
    """A spec file of the study was edited after it was written (it is a record, not an input)."""


def normalize_root(path: str) -> str:
    """The study folder as one canonical string (`/x//store/s8/` and `/x/store/s8` are one study)."""
    if "://" in path:
        scheme, rest = path.split("://", 1)
        return f"{scheme}://{posixpath.normpath(rest).lstrip('/') if scheme != 'file' else posixpath.normpath(rest)}"
    return os.path.normpath(os.path.abspath(os.path.expanduser(path)))


def content(spec: Spec) -> dict:
    """What decides a study's trials, as plain JSON."""
    return content_of(spec.raw or {})


def content_of(raw: dict) -> dict:
    """`content` of a spec as written (a YAML mapping or a spec file's JSON, `kdstudy` block ignored)."""
    raw = {k: v for k, v in raw.items() if k not in NOT_CONTENT and k != "kdstudy"}
    ds = raw.get("dataset")
    raw["dataset"] = identity_config(ds) if isinstance(ds, dict) else (ds if ds is not None else {})
    return json.loads(json.dumps(raw, sort_keys=True, default=str))


def content_sha256(content: dict) -> str:
    """The checksum a spec file records of its content."""
    return hashlib.sha256(json.dumps(content, sort_keys=True, separators=(",", ":")).encode()).hexdigest()


def diff(old: dict, new: dict, old_label: str = "study (spec.json)", new_label: str = "this spec") -> str:
    a = json.dumps(old, indent=1, sort_keys=True).splitlines()
    b = json.dumps(new, indent=1, sort_keys=True).splitlines()
    return "\n".join(difflib.unified_diff(a, b, old_label, new_label, lineterm="", n=1))


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

    def _read(self, uri: str) -> dict:
        try:
            raw = json.loads(storage.read_bytes(uri))
        except (ValueError, UnicodeDecodeError) as exc:
            raise SpecError([f"cannot read {uri}: {exc}"], uri) from None
        if not isinstance(raw, dict):
            raise SpecError([f"{uri} is not a JSON object"], uri)
        return raw

    def record_uri(self, spec_file: str) -> str:
        return self.uri(RECORD, posixpath.basename(spec_file))

    def _recorded(self, spec_file: str) -> dict | None:
        """The second record of a spec file (None: absent or unreadable)."""
        uri = self.record_uri(spec_file)
        if not storage.exists(uri):
            return None
        try:
            raw = json.loads(storage.read_bytes(uri))
        except (OSError, ValueError, UnicodeDecodeError):
            return None
        return raw if isinstance(raw, dict) else None

    def check_record(self, spec_file: str, raw: dict) -> None:
        """Raise SpecEdited if the spec file `raw` (read from `spec_file`) was edited after it was written."""
        have = content_of(raw)
        meta = raw.get("kdstudy") if isinstance(raw.get("kdstudy"), dict) else {}
        want = meta.get("content_sha256")
        record = self._recorded(spec_file)
        original = content_of(record) if record is not None else None
        if want is not None:
            if content_sha256(have) == want:
                return
            why = "its content no longer matches the sha256 recorded in it (kdstudy.content_sha256)"
            if original is not None and content_sha256(original) != want:
                original = None  # the record is no help either
        else:  # written by a kdstudy without checksums: the record, once there is one, speaks
            if original is None or original == have:
                return
            why = f"it differs from its record {self.record_uri(spec_file)}"
        rel = posixpath.basename(spec_file)
        text = (diff(original, have, f"what the study ran ({RECORD}/{rel})", f"{rel} as it is now")
                if original is not None else "(no intact record of the original is left to compare with)")
        raise SpecEdited(
            f"{spec_file} was edited after the study started: {why}. A study's spec files record what it "
            f"ran and are never read as input; put the file back as it was (the record holds it), or run the "
            f"edited spec as a new study (another `name`), or `kdstudy run --extend` for more seeds or "
            f"trials:\n{text}")

    def check_markers(self, specs: list[tuple[str, dict]], latest: Spec) -> None:
        """Raise SpecEdited if an experiment finished here is not an experiment of the study's spec
        files (`specs`: (uri, raw) pairs, `latest` the last one parsed): its marker was written under
        another spec (an experiment's name is a hash of its content)."""
        from .graph import plan

        names = set(self.marker_names())
        if not names:
            return
        stray = names - {e.name for e in plan(latest)}
        for uri, raw in specs[:-1]:  # an extension may have replaced an experiment (a search where none was)
            if stray:
                stray -= {e.name for e in plan(parse_spec({k: v for k, v in raw.items() if k != "kdstudy"},
                                                          source=uri))}
        if stray:
            stray = sorted(stray)
            more = f" and {len(stray) - 3} more" if len(stray) > 3 else ""
            raise SpecEdited(
                f"{specs[-1][0]} does not describe what this study ran: experiment(s) {', '.join(stray[:3])}"
                f"{more} finished here (stages/) but are not experiments of it (an experiment's name is a hash of "
                f"its content): the spec file was edited, or was written by a kdstudy that named experiments "
                f"otherwise; put the spec file back as it was, or run the spec as a new study (another `name`)")

    def saved_spec(self) -> Spec | None:
        """The study's current spec (the latest extension), read as JSON data; every spec file is
        checked against its checksum and record, and the finished experiments against the spec
        files, first (SpecEdited names an edited one)."""
        files = self.spec_files()
        if not files:
            return None
        specs = [(uri, self._read(uri)) for uri in files]
        for uri, raw in specs:
            self.check_record(uri, raw)
        meta = specs[-1][1].get("kdstudy")
        spec_dir = meta.get("spec_dir") if isinstance(meta, dict) and isinstance(meta.get("spec_dir"), str) else None
        spec = parse_spec({k: v for k, v in specs[-1][1].items() if k != "kdstudy"}, source=files[-1],
                          spec_dir=spec_dir)
        self.check_markers(specs, spec)
        return spec

    def _write_spec(self, name: str, spec: Spec, version: str) -> None:
        """A spec file (with its content's checksum), then its second record (the same bytes)."""
        raw = json.loads(json.dumps(spec.raw, default=str))
        record = {**raw, "kdstudy": {"saved": datetime.now(timezone.utc).isoformat(), "code_version": version,
                                     "content_sha256": content_sha256(content_of(raw)),
                                     "config_ids": CONFIG_IDS, "spec_dir": spec.spec_dir,
                                     "plugin_sources": spec.plugin_sources}}
        data = json.dumps(record, indent=1, default=str).encode()
        storage.write_bytes(self.uri(name), data)
        storage.write_bytes(self.uri(RECORD, name), data)

    def _record_old_files(self) -> None:
        """A study begun by a kdstudy without records: record its (checked) spec files now."""
        for uri in self.spec_files():
            if not storage.exists(self.record_uri(uri)):
                storage.write_bytes(self.record_uri(uri), storage.read_bytes(uri))

    def config_ids(self) -> str:
        """How this study's trials name their configuration (`trainables.trainable.config_id`):
        "content" for studies begun by this version, "sampled" for older ones (so that rows written
        before and after an upgrade keep grouping into the same configurations)."""
        files = self.spec_files()
        if not files:
            return CONFIG_IDS
        meta = self._read(files[0]).get("kdstudy")
        return (meta.get("config_ids") if isinstance(meta, dict) else None) or "sampled"

    def adopt(self, spec: Spec, extend: bool = False, version: str = "") -> None:
        """Record `spec` for a new study, or check it against the study's (raising SpecMismatch)."""
        saved = self.saved_spec()
        if saved is None:
            self._write_spec("spec.json", spec, version)
            return
        self._record_old_files()
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
        self._write_spec(f"spec-extend-{n}.json", spec, version)

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

    def marker_names(self) -> list[str]:
        """Names of the experiments with a marker in ``stages/`` (any storage the study is on)."""
        import pyarrow.fs as pafs

        fs, path = storage.resolve(self.uri("stages"))
        if fs.get_file_info(path).type != pafs.FileType.Directory:
            return []
        return sorted(posixpath.basename(i.path)[:-5] for i in fs.get_file_info(pafs.FileSelector(path))
                      if i.type == pafs.FileType.File and i.path.endswith(".json"))

    def markers(self) -> dict[str, dict]:
        """Every readable marker of ``stages/``, by experiment name (a torn one is left out)."""
        found = {name: self.marker(name) for name in self.marker_names()}
        return {name: m for name, m in found.items() if m is not None}

    def write_marker(self, name: str, data: dict) -> None:
        storage.write_bytes(self.marker_uri(name), json.dumps({**data, "name": name}, indent=1, default=str).encode())

    # ------------------------------------------------------------------ dataset facts
    def record_dataset(self, facts: dict) -> None:
        """Write ``dataset.json``: the dataset facts the study runs with (shape, classes, split
        sizes, normalisation; `trainables.data.DatasetFacts.to_json`), which the report's header
        reads (`analysis` never imports `trainables`). Descriptive, not identity: rewritten only
        when the facts changed (a folder that gained images, say)."""
        uri = self.uri("dataset.json")
        data = json.dumps(facts, indent=1, sort_keys=True, default=str).encode()
        if storage.exists(uri) and storage.read_bytes(uri) == data:
            return
        storage.write_bytes(uri, data)
