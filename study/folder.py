"""A study folder: its spec (written once), its stage markers, and where things live.

    <study>/spec.json             the spec as first run (never overwritten)
    <study>/spec-extend-N.json    a later spec that extended the study (`run --extend`)
    <study>/dataset.json          the dataset's facts the study ran with (shape, classes, splits)
    <study>/methods.json          its methods' facts (label, kind, flags) the report names and groups them by
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

A plug-in's source is part of the study's identity too: each spec file records
its plug-ins (`kdstudy.plugin_sources`: ref, kind, module, path, sha256), and
`record/plugins/<sha256>.json` keeps the text of each source (JSON, read only to
show a difference, never imported or executed). Running or resuming the study
with a plug-in whose source differs from what the study ran (edited, added or
gone) is refused with the plug-in, the old and new sha256 and a unified diff of
the source.
"""

from __future__ import annotations

import difflib
import hashlib
import json
import os
import posixpath
from datetime import datetime, timezone
from pathlib import Path

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
#: under RECORD: the source text of each plug-in the study ran, by sha256 (for differences only)
PLUGIN_TEXTS = "plugins"
#: a plug-in's source is kept for differences only up to this size (its sha256 always)
MAX_PLUGIN_TEXT = 1 << 20


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


def plugin_texts(record: dict) -> dict[str, str] | None:
    """{file (relative to the plug-in): text} of a plug-in's source as it is now, for a difference
    (None: no source file, not text, or larger than MAX_PLUGIN_TEXT)."""
    from trainables.plugins import _py_files

    path = record.get("path")
    if not path:
        return None
    p = Path(path)
    try:
        files = [p] if p.is_file() else sorted(_py_files(p)) if p.is_dir() else []
        if not files or sum(f.stat().st_size for f in files) > MAX_PLUGIN_TEXT:
            return None
        return {(f.name if f == p else f.relative_to(p).as_posix()): f.read_text() for f in files}
    except (OSError, UnicodeDecodeError):
        return None


def plugin_difference(ran: list[dict], now: list[dict], old_texts) -> str | None:
    """What differs between the plug-ins a study ran (`ran`, as recorded) and the ones this run
    imports (`now`): one line per plug-in whose source is edited, new or gone, each edited one with
    a unified diff of its source when `old_texts(sha256)` has the study's copy. None: the same."""
    before = {r.get("ref"): r for r in ran if isinstance(r, dict)}
    after = {r.get("ref"): r for r in now}
    lines = []
    for ref in sorted(set(before) | set(after), key=str):
        b, a = before.get(ref), after.get(ref)
        if b is not None and a is not None and b.get("sha256") == a.get("sha256"):
            continue
        if a is None:
            lines.append(f"  plug-in {ref}: not imported by this run (the study ran with it, "
                         f"sha256 {str(b.get('sha256'))[:12]})")
            continue
        if b is None:
            lines.append(f"  plug-in {ref}: new (the study ran without it; sha256 {str(a.get('sha256'))[:12]}, "
                         f"{a.get('path')})")
            continue
        lines.append(f"  plug-in {ref}: sha256 {str(b.get('sha256'))[:12]} (what the study ran) -> "
                     f"{str(a.get('sha256'))[:12]} (now: {a.get('path')})")
        old, new = old_texts(b.get("sha256")), plugin_texts(a)
        if old is None or new is None:
            lines.append("    (no copy of " + ("the source the study ran" if old is None else "its source now")
                         + " to show the difference)")
            continue
        for name in sorted(set(old) | set(new)):
            text = list(difflib.unified_diff(old.get(name, "").splitlines(), new.get(name, "").splitlines(),
                                             f"{ref} {name} (what the study ran)", f"{ref} {name} (now)",
                                             lineterm="", n=2))
            lines += text[:200] + ([f"    ... ({len(text) - 200} more lines)"] if len(text) > 200 else [])
    return "\n".join(lines) if lines else None


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
        self._record_plugin_texts(spec.plugin_sources)

    def plugin_text_uri(self, sha256: str) -> str:
        return self.uri(RECORD, PLUGIN_TEXTS, f"{sha256}.json")

    def _record_plugin_texts(self, records: list[dict]) -> None:
        """Keep each plug-in's source text (JSON, for differences only; see the module docstring)."""
        for rec in records or ():
            sha = rec.get("sha256")
            if not sha or storage.exists(self.plugin_text_uri(sha)):
                continue
            texts = plugin_texts(rec)
            if texts is not None:
                doc = {"ref": rec.get("ref"), "kind": rec.get("kind"), "sha256": sha, "files": texts,
                       "note": "a copy of a plug-in's source, kept to show what changed; never imported"}
                storage.write_bytes(self.plugin_text_uri(sha), json.dumps(doc, indent=1).encode())

    def recorded_plugin_texts(self, sha256) -> dict[str, str] | None:
        """The source text the study kept of a plug-in (None: none kept, or unreadable)."""
        if not isinstance(sha256, str) or not sha256.isalnum():
            return None
        uri = self.plugin_text_uri(sha256)
        try:
            doc = json.loads(storage.read_bytes(uri)) if storage.exists(uri) else None
        except (OSError, ValueError, UnicodeDecodeError):
            return None
        files = doc.get("files") if isinstance(doc, dict) else None
        if not isinstance(files, dict) or not all(isinstance(v, str) for v in files.values()):
            return None
        return files

    def recorded_plugins(self) -> list[dict] | None:
        """The plug-ins the study ran with (its latest spec file's record; None: not recorded)."""
        files = self.spec_files()
        if not files:
            return None
        meta = self._read(files[-1]).get("kdstudy")
        got = meta.get("plugin_sources") if isinstance(meta, dict) else None
        return got if isinstance(got, list) else None

    def check_plugins(self, spec: Spec) -> None:
        """Raise SpecMismatch if this run would import plug-ins whose sources differ from the study's."""
        ran = self.recorded_plugins()
        if ran is None:  # a study begun before plug-ins were recorded
            return
        text = plugin_difference(ran, spec.plugin_sources, self.recorded_plugin_texts)
        if text:
            raise SpecMismatch(
                f"{self.root} ran with other plug-in sources than this run imports (a plug-in's source is part "
                f"of the study's identity): put the plug-in back as the study ran it, or run the spec as a new "
                f"study (another `name`):\n{text}")

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
        self.check_plugins(spec)
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
        self._record_description("dataset.json", facts)

    def record_methods(self, facts: dict) -> None:
        """Write ``methods.json``: {method: its facts} (`trainables.methods.Method.facts`: the label
        and kind the report names and groups it by, and the flags that shape its rows), for every
        method the study runs and its no-KD baseline. Descriptive, like ``dataset.json``: rewritten
        only when the facts changed (a relabelled method, an extended study)."""
        self._record_description("methods.json", facts)

    def _record_description(self, name: str, facts: dict) -> None:
        uri = self.uri(name)
        data = json.dumps(facts, indent=1, sort_keys=True, default=str).encode()
        if storage.exists(uri) and storage.read_bytes(uri) == data:
            return
        storage.write_bytes(uri, data)
