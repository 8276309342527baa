"""The teacher zoo: trained teachers stored by content, so none is trained twice.

A teacher's key is a hash of everything that decides its weights: dataset,
architecture, training recipe, epochs kept for ESKD, and seed. An entry is a
folder `<study>/zoo/<key>/` holding `model.pt` (weights of the
best-validation epoch), optional `epoch-N.pt`, and `meta.json`, written last,
whose presence marks the entry complete. meta.json names its files relative
to the entry (the study can be copied or moved) and records each file's
sha256 and the architecture; `Zoo.verify` checks both before any trial
distils from the entry, naming the file on a mismatch. Weights load with
weights_only=True.

The folder's name is the hash of the entry's content, and meta.json records
that content (`key_content`), so an entry proves which teacher it is: a
folder renamed or swapped with another (weights and meta together, each
self-consistent) no longer hashes to its name and is refused. Any kind of
entry works so (an imported teacher keyed by the hash of its weights file
records what it hashed). Entries written before `key_content` existed are
compared with what the spec expects of their key instead: family, size,
options, seed and epochs.

Imported teachers (the spec's `teachers.weights`, see `trainables.imported`)
are entries too, one per imported size whatever `teachers.seeds`: their key
hashes the dataset's identity, the teacher's model config and the weights
file's sha256 (with the `key` and `format` it is read by), never the file's
path, so the same file anywhere is the same teacher and an edited file is a new
one. The driver stages the file's state dict, fitted to the architecture, as
the entry's `model.pt` (`stage_import`); the evaluation trial of the teachers
stage measures it on the study's own validation and test splits and writes
meta.json (`origin: imported`, the source file's name and sha256, `key_content`),
which completes the entry as it does for a trained teacher.
"""

from __future__ import annotations

import hashlib
import json
import posixpath

from trainables import storage
from trainables.config import size_key
from trainables.data import identity_config


class ZooIntegrityError(storage.CorruptCheckpointError):
    """A zoo entry's weights do not match its meta.json (checksum or architecture)."""


def key_of(content: dict) -> str:
    """A zoo key: the hash of an entry's content (JSON data)."""
    blob = json.dumps(content, sort_keys=True, default=str).encode()
    return hashlib.sha256(blob).hexdigest()[:16]


def teacher_content(dataset: dict, model_cfg: dict, train: dict, seed: int, export_epochs=()) -> dict:
    """What decides a trained teacher's weights (its key hashes this), as JSON data."""
    payload = {
        "dataset": identity_config(dataset),
        "model": model_cfg, "train": train, "seed": int(seed), "export_epochs": sorted(export_epochs),
    }
    return json.loads(json.dumps(payload, sort_keys=True, default=str))


def teacher_key(dataset: dict, model_cfg: dict, train: dict, seed: int, export_epochs=()) -> str:
    return key_of(teacher_content(dataset, model_cfg, train, seed, export_epochs))


def imported_content(dataset: dict, model_cfg: dict, weights: dict, sha256: str) -> dict:
    """What decides an imported teacher (its key hashes this): the dataset, the model and the weights
    file's sha256 with how it is read (`key`, `format`) -- never where the file lies."""
    read = {"sha256": sha256, "format": weights.get("format", "auto")}
    if weights.get("key") is not None:
        read["key"] = weights["key"]
    payload = {"dataset": identity_config(dataset), "model": model_cfg, "imported": read}
    return json.loads(json.dumps(payload, sort_keys=True, default=str))


def imported_weights(spec) -> dict:
    """{size key: the spec's weights entry {path, key, format, sha256}} of the imported sizes."""
    t = spec.teachers or {}
    return {size_key(z): w for z, w in (t.get("weights") or {}).items()}


def weights_sha256(entry: dict) -> str:
    """The sha256 of an imported teacher's file: as the spec (or the study's spec.json) records it,
    else read from the file (raises `trainables.imported.WeightsError` naming it)."""
    if entry.get("sha256"):
        return entry["sha256"]
    from trainables.imported import file_sha256

    return file_sha256(entry["path"])


def _name(ref: str | None, default: str) -> str:
    """A file name inside the entry (older metas held absolute paths: keep the base name)."""
    return posixpath.basename(ref) if ref else default


class Zoo:
    """Teacher entries under `root` (a local path or URI)."""

    def __init__(self, root: str):
        self.root = root

    def uri(self, key: str) -> str:
        return storage.join(self.root, key)

    def get(self, key: str) -> dict | None:
        """The entry's meta (file references made absolute here), or None if absent or incomplete."""
        meta_uri = storage.join(self.uri(key), "meta.json")
        if not storage.exists(meta_uri):
            return None
        try:
            meta = json.loads(storage.read_bytes(meta_uri))
            if not isinstance(meta, dict):
                raise ValueError("not a JSON object")
        except (ValueError, UnicodeDecodeError) as exc:
            raise storage.CorruptCheckpointError(f"zoo entry {meta_uri} is corrupt: {exc}") from None
        meta["checkpoint"] = storage.join(self.uri(key), _name(meta.get("file"), "model.pt"))
        if not storage.exists(meta["checkpoint"]):
            raise FileNotFoundError(f"teacher checkpoint {meta['checkpoint']} is missing "
                                    f"(zoo entry {self.uri(key)} has meta.json but no model.pt)")
        for info in (meta.get("epoch_checkpoints") or {}).values():
            info["checkpoint"] = storage.join(self.uri(key), _name(info.get("file") or info.get("checkpoint"), ""))
            if "acc" not in info and "test_acc" in info:  # the early teacher's own (test) accuracy
                info["acc"] = info["test_acc"]
        meta["key"] = key
        return meta

    def verify(self, meta: dict, in_shape=None, num_classes=None, job: dict | None = None) -> None:
        """Check an entry before use: that it is the entry its key names (its recorded content hashes
        to the folder's name; for older entries, `job`'s model, seed and epochs match its meta), every
        weights file's sha256, and that the weights fit the architecture meta.json names. Raises
        ZooIntegrityError / CorruptCheckpointError naming the file."""
        self.check_identity(meta, job)
        files = [(meta["checkpoint"], meta.get("sha256"))]
        files += [(i["checkpoint"], i.get("sha256")) for i in (meta.get("epoch_checkpoints") or {}).values()]
        for uri, want in files:
            data = storage.read_bytes(uri)
            if want is not None and hashlib.sha256(data).hexdigest() != want:
                raise ZooIntegrityError(f"teacher weights {uri} do not match the sha256 in meta.json "
                                        f"(the file was changed or damaged)")
        state = storage.load_state(meta["checkpoint"])  # raises CorruptCheckpointError naming the file
        if in_shape is None:
            return
        from trainables.models import build_model

        cfg = {**(meta.get("options") or {}), "family": meta.get("family"), "size": meta.get("size")}
        try:
            expected = build_model(cfg, in_shape, num_classes).state_dict()
        except Exception as exc:
            raise ZooIntegrityError(f"zoo entry {self.uri(meta['key'])}: cannot build its architecture "
                                    f"{meta.get('arch')}: {exc}") from None
        got = state.get("model", {}) if isinstance(state, dict) else {}
        bad = [k for k, v in expected.items() if k not in got or tuple(got[k].shape) != tuple(v.shape)]
        if bad or set(got) - set(expected):
            raise ZooIntegrityError(f"teacher weights {meta['checkpoint']} do not fit the architecture "
                                    f"{meta.get('arch')} named in its meta.json (e.g. {(bad or sorted(set(got) - set(expected)))[0]})")


    def check_identity(self, meta: dict, job: dict | None = None) -> None:
        """Raise ZooIntegrityError if the entry's meta.json is not the one of its key (folder name)."""
        key, where = meta["key"], storage.join(self.uri(meta["key"]), "meta.json")
        content = meta.get("key_content")
        if content is not None:
            if key_of(content) != key:
                raise ZooIntegrityError(
                    f"zoo entry {self.uri(key)}: its meta.json ({where}) describes another entry "
                    f"({_describe(meta)}, key {key_of(content)}): a zoo folder is named by the hash of its "
                    f"content, so this folder was renamed or swapped with another; put it back under "
                    f"zoo/{key_of(content)}/ or remove it")
            return
        if job is None:
            return
        model, seed, epochs = job["model"], job["seed"], job.get("epochs")
        have = {**(meta.get("options") or {}), "family": meta.get("family"), "size": meta.get("size")}
        wrong = [k for k, v in model.items() if k in have and have[k] is not None
                 and (size_key(have[k]) != size_key(v) if k == "size" else have[k] != v)]
        if meta.get("seed") is not None and int(meta["seed"]) != int(seed):
            wrong.append("seed")
        if epochs is not None and meta.get("epochs") is not None and int(meta["epochs"]) != int(epochs):
            wrong.append("epochs")
        if wrong:
            expected = f"{model.get('family')} size {model.get('size')}, seed {seed}" + (
                f", {epochs} epochs" if epochs is not None else "")
            raise ZooIntegrityError(
                f"zoo entry {self.uri(key)}: its meta.json ({where}) describes {_describe(meta)}, but the key "
                f"{key} is the teacher {expected} (differs in {', '.join(wrong)}): the folder was renamed or "
                f"swapped with another; put it back or remove it")


def _describe(meta: dict) -> str:
    """A zoo entry in a few words, from its meta.json."""
    parts = [str(meta.get("arch") or f"{meta.get('family')} size {meta.get('size')}")]
    if meta.get("seed") is not None:
        parts.append(f"seed {meta['seed']}")
    if meta.get("epochs") is not None:
        parts.append(f"{meta['epochs']} epochs")
    return ", ".join(parts)


def teacher_jobs(spec) -> list[dict]:
    """One job per teacher size x seed: {size, seed, model, epochs, content, key} (`content` is what
    `key` hashes, recorded in the entry's meta.json); an imported size has one job, with `imported`
    (the spec's weights entry) and `epochs` None."""
    t = spec.teachers
    if not t:
        return []
    recipe = {**spec.train, "epochs": t["epochs"]}
    weights = imported_weights(spec)
    jobs = []
    for size in t["sizes"]:
        entry = weights.get(size_key(size))
        if entry is not None:
            model = spec.teacher_model(size)
            content = imported_content(spec.dataset, model, entry, weights_sha256(entry))
            jobs.append({"size": size, "seed": 0, "model": model, "epochs": None, "content": content,
                         "key": key_of(content), "imported": entry})
            continue
        for seed in range(t["seeds"]):
            model = spec.teacher_model(size)
            content = teacher_content(spec.dataset, model, recipe, seed, t["export_epochs"])
            jobs.append({"size": size, "seed": seed, "model": model, "epochs": t["epochs"], "content": content,
                         "key": key_of(content)})
    return jobs


def teacher_table(spec, zoo: Zoo, sizes=None, verify: bool = True, in_shape=None, num_classes=None) -> dict:
    """{size key: [model cfg with checkpoint and facts, one per seed]} for trials (`sizes`: a subset)."""
    table: dict[str, list[dict]] = {}
    wanted = None if sizes is None else {size_key(z) for z in sizes}
    for job in teacher_jobs(spec):
        if wanted is not None and size_key(job["size"]) not in wanted:
            continue
        meta = zoo.get(job["key"])
        if meta is None:
            raise FileNotFoundError(f"teacher {job['model']} seed {job['seed']} is not in the zoo ({zoo.uri(job['key'])})")
        if verify:
            zoo.verify(meta, in_shape, num_classes, job=job)
        entry = {**job["model"], "checkpoint": meta["checkpoint"], "arch": meta["arch"], "params": meta["params"],
                 "flops": meta["flops"], "acc": meta["acc"], "epoch_checkpoints": meta.get("epoch_checkpoints", {})}
        if meta.get("origin") == "imported":  # recorded in the rows (`teacher_origin`)
            entry["origin"] = "imported"
        table.setdefault(size_key(job["size"]), []).append(entry)
    return table


def stage_import(zoo: Zoo, job: dict, in_shape, num_classes) -> tuple[str, dict]:
    """Write an imported teacher's weights into its zoo entry as `model.pt` (the file read, its state
    dict extracted and fitted to the architecture; see `trainables.imported`), before its evaluation
    trial completes the entry. Returns (the sha256 of model.pt, the source file's record for meta.json).
    Raises `trainables.imported.WeightsError` (the file changed since the spec recorded its sha256,
    or does not fit)."""
    import io

    import torch

    from trainables.imported import WeightsError, load_teacher_weights, source_record

    entry = job["imported"]
    state, sha, how = load_teacher_weights(entry, job["model"], in_shape, num_classes)
    want = job["content"]["imported"]["sha256"]
    if sha != want:
        raise WeightsError(changed_text(entry, want, sha))
    buf = io.BytesIO()
    torch.save({"model": state}, buf)
    data = buf.getvalue()
    storage.write_bytes(storage.join(zoo.uri(job["key"]), "model.pt"), data)
    return hashlib.sha256(data).hexdigest(), source_record(entry, sha, how)


def changed_text(entry: dict, recorded: str, now: str) -> str:
    """An imported teacher's file that is not the one the study recorded (one line)."""
    return (f"{entry['path']} is not the file this study imported (sha256 {now[:12]}..., the study recorded "
            f"{recorded[:12]}...): an edited weights file is another teacher; put the file back, or run the "
            f"spec as a new study (another `name`)")
