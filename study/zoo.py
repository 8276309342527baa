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


def teacher_key(dataset: dict, model_cfg: dict, train: dict, seed: int, export_epochs=()) -> str:
    payload = {
        "dataset": identity_config(dataset),
        "model": model_cfg, "train": train, "seed": int(seed), "export_epochs": sorted(export_epochs),
    }
    blob = json.dumps(payload, sort_keys=True, default=str).encode()
    return hashlib.sha256(blob).hexdigest()[:16]


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

    def verify(self, meta: dict, in_shape=None, num_classes=None) -> None:
        """Check an entry before use: every weights file's sha256, and that the weights fit the
        architecture meta.json names. Raises ZooIntegrityError / CorruptCheckpointError naming the file."""
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


def teacher_jobs(spec) -> list[dict]:
    """One job per teacher size x seed: {size, seed, model, key}."""
    t = spec.teachers
    if not t:
        return []
    recipe = {**spec.train, "epochs": t["epochs"]}
    jobs = []
    for size in t["sizes"]:
        for seed in range(t["seeds"]):
            model = spec.teacher_model(size)
            jobs.append({"size": size, "seed": seed, "model": model,
                         "key": teacher_key(spec.dataset, model, recipe, seed, t["export_epochs"])})
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
            zoo.verify(meta, in_shape, num_classes)
        entry = {**job["model"], "checkpoint": meta["checkpoint"], "arch": meta["arch"], "params": meta["params"],
                 "flops": meta["flops"], "acc": meta["acc"], "epoch_checkpoints": meta.get("epoch_checkpoints", {})}
        table.setdefault(size_key(job["size"]), []).append(entry)
    return table
