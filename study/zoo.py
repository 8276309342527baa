"""The teacher zoo: trained teachers stored by content, so none is trained twice.

A teacher's key is a hash of everything that decides its weights: dataset,
architecture, training recipe, epochs kept for ESKD, and seed. An entry is a
folder `<study storage>/zoo/<key>/` holding `model.pt` (weights of the
best-validation epoch), optional `epoch-N.pt`, and `meta.json`, written last,
whose presence marks the entry complete. Weights load with weights_only=True.
"""

from __future__ import annotations

import hashlib
import json

from trainables import storage
from trainables.config import size_key


def teacher_key(dataset: dict, model_cfg: dict, train: dict, seed: int, export_epochs=()) -> str:
    payload = {
        "dataset": {k: v for k, v in dataset.items() if k not in ("root", "download")},
        "model": model_cfg, "train": train, "seed": int(seed), "export_epochs": sorted(export_epochs),
    }
    blob = json.dumps(payload, sort_keys=True, default=str).encode()
    return hashlib.sha256(blob).hexdigest()[:16]


class Zoo:
    """Teacher entries under `root` (a local path or URI)."""

    def __init__(self, root: str):
        self.root = root

    def uri(self, key: str) -> str:
        return storage.join(self.root, key)

    def get(self, key: str) -> dict | None:
        """The entry's meta (with its checkpoint URI), or None if absent or incomplete."""
        meta_uri = storage.join(self.uri(key), "meta.json")
        if not storage.exists(meta_uri):
            return None
        try:
            meta = json.loads(storage.read_bytes(meta_uri))
        except (json.JSONDecodeError, UnicodeDecodeError) as exc:
            raise storage.CorruptCheckpointError(f"zoo entry {meta_uri} is corrupt: {exc}") from None
        meta["checkpoint"] = storage.join(self.uri(key), "model.pt")
        if not storage.exists(meta["checkpoint"]):
            raise FileNotFoundError(f"teacher checkpoint {meta['checkpoint']} is missing "
                                    f"(zoo entry {self.uri(key)} has meta.json but no model.pt)")
        meta["key"] = key
        return meta

    def verify(self, meta: dict) -> None:
        """Read an entry's weights once (weights_only), so a damaged file stops the study here,
        naming the file, instead of failing every trial that distils from it."""
        storage.load_state(meta["checkpoint"])  # raises CorruptCheckpointError naming the file


def teacher_jobs(spec) -> list[dict]:
    """One job per teacher size x seed: {size, seed, model, key}."""
    t = spec.teachers
    if not t:
        return []
    recipe = {**spec.train, "epochs": t["epochs"]}
    options = {k: v for k, v in t.items() if k not in ("sizes", "seeds", "epochs", "export_epochs")}
    jobs = []
    for size in t["sizes"]:
        for seed in range(t["seeds"]):
            model = {**options, "size": size}
            jobs.append({"size": size, "seed": seed, "model": model,
                         "key": teacher_key(spec.dataset, model, recipe, seed, t["export_epochs"])})
    return jobs


def teacher_table(spec, zoo: Zoo) -> dict[str, list[dict]]:
    """{size key: [model cfg with checkpoint and facts, one per seed]} for trials."""
    table: dict[str, list[dict]] = {}
    for job in teacher_jobs(spec):
        meta = zoo.get(job["key"])
        if meta is None:
            raise FileNotFoundError(f"teacher {job['model']} seed {job['seed']} is not in the zoo ({zoo.uri(job['key'])})")
        zoo.verify(meta)
        entry = {**job["model"], "checkpoint": meta["checkpoint"], "arch": meta["arch"], "params": meta["params"],
                 "flops": meta["flops"], "acc": meta["acc"], "epoch_checkpoints": meta.get("epoch_checkpoints", {})}
        table.setdefault(size_key(job["size"]), []).append(entry)
    return table
