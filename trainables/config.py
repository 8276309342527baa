"""A trial's configuration: the constants a stage fixes plus what the search sampled.

A stage hands every trial the same `base` dict (see `trainables.loop` for its
keys) and the searcher adds flat sampled values. `resolve` routes each sampled
value to where it belongs, so the search space can stay flat and readable:

- `lr`, `weight_decay`, `epochs` -> base["train"]
- `seed`                         -> base["seed"]
- `teacher_size`                 -> base["teacher"] = base["teachers"][size]
- `assistant_size`               -> base["assistant"] = base["assistants"][size]
- `teacher_epoch`                -> the teacher's checkpoint of that epoch (ESKD)
- `student`, `teacher`, `assistant`, `export`, `role` -> replace that section
- anything else                  -> base["hp"] (the method's hyperparameters)
"""

from __future__ import annotations

import copy

TRAIN_KEYS = ("lr", "weight_decay", "epochs")
#: whole sections a stage's job may replace (e.g. each teacher-stage job's model and export path)
SECTION_KEYS = ("student", "teacher", "assistant", "export", "role")


def size_key(size) -> str:
    """Canonical dict key of a model size: a number as before (1 and 1.0 are the same size,
    "1" too), a name (a torchvision model: "resnet18") as it is."""
    if isinstance(size, str):
        try:
            f = float(size)
        except ValueError:
            return size
    elif isinstance(size, bool):
        raise TypeError(f"a model size is a number or a name, not {size!r}")
    else:
        f = float(size)
    return str(int(f)) if f.is_integer() else repr(f)


def resolve(base: dict, sampled: dict) -> dict:
    """A complete trial config: `base` with the sampled values put in place."""
    cfg = copy.deepcopy(base)
    cfg.setdefault("hp", {})
    cfg.setdefault("train", {})
    sampled = dict(sampled.get("job", sampled))  # grid stages pass one dict per trial as "job"
    for key, value in sampled.items():
        if key.startswith("_"):  # the study's bookkeeping (e.g. _trial_key), not a parameter
            continue
        if key in SECTION_KEYS:
            cfg[key] = value
        elif key in TRAIN_KEYS:
            cfg["train"][key] = value
        elif key == "seed":
            cfg["seed"] = int(value)
        elif key == "teacher_size":
            cfg["teacher"] = _pick(cfg, "teachers", value, cfg.get("seed", 0))
        elif key == "assistant_size":
            cfg["assistant"] = _pick(cfg, "assistants", value, cfg.get("seed", 0))
        elif key == "teacher_epoch":
            cfg["teacher_epoch"] = int(value)
        else:
            cfg["hp"][key] = value
    if "teacher_size" not in sampled and cfg.get("teachers") and not cfg.get("teacher"):
        only = list(cfg["teachers"])
        if len(only) == 1:
            cfg["teacher"] = _pick(cfg, "teachers", only[0], cfg.get("seed", 0))
    if cfg.get("teacher_epoch") and cfg.get("teacher"):
        epochs = cfg["teacher"].get("epoch_checkpoints", {})
        key = str(cfg["teacher_epoch"])
        if key not in epochs:
            raise ValueError(f"teacher {cfg['teacher'].get('arch')} has no checkpoint of epoch {key}; has {sorted(epochs)}")
        # the early teacher's own test accuracy: the loop's epoch meta records val_acc / test_acc
        info = epochs[key]
        # zoo metas name their files relative to the entry (the study can move): beside model.pt
        ckpt = info.get("checkpoint") or cfg["teacher"]["checkpoint"].rsplit("/", 1)[0] + "/" + info["file"]
        cfg["teacher"] = {**cfg["teacher"], "checkpoint": ckpt, "acc": info.get("test_acc", info.get("acc"))}
    cfg.pop("teachers", None)
    cfg.pop("assistants", None)
    cfg.pop("paths", None)
    return cfg


def _pick(cfg: dict, table: str, size, seed: int) -> dict:
    entries = cfg.get(table) or {}
    entry = entries.get(size_key(size))
    if entry is None:
        raise KeyError(f"no {table[:-1]} of size {size!r}; available: {sorted(entries)}")
    # a size may hold one model per seed: trial seed s uses model seed s mod n
    if isinstance(entry, list):
        entry = entry[int(seed) % len(entry)]
    return dict(entry)
