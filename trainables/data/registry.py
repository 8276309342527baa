"""The dataset registry: one entry per dataset kind, holding every fact kdstudy knows about it.

An entry is a subclass of :class:`DatasetEntry` decorated with
``@register_dataset(name)`` (the built-in entries in this package use the same
decorator a plug-in uses). It declares

* ``options``: its own spec options (``trainables.options.Option``); the spec adds
  the common ones (:data:`COMMON_OPTIONS`: name, root, download, val_fraction,
  split_seed, train_subset);
* ``info(cfg)`` -> :class:`DatasetInfo`: kind, input shape, classes (and their names),
  the sizes of the dataset's own splits, normalisation and augmentation, known
  *without loading the data* (the default loads it once: fine for a small plug-in);
* ``load(cfg)`` -> :class:`Loaded`: the dataset's own train / test (/ val) splits as
  tensors, or as an :class:`~trainables.data.sources.ImageSource` that decodes one
  sample at a time (such an entry may stream from disk when the data are larger
  than its memory budget);
* ``check(cfg)`` -> problems that would stop every trial (the preflight, before Ray
  starts; default: ``info`` succeeds).

Everything else (the validation carve, the training subset, normalisation
statistics, resident or streamed) is done here once for every entry, so
:func:`dataset_facts` (what the spec, the planner and the study's record read) and
:func:`load_dataset` (what a trial trains on) cannot disagree.
"""

from __future__ import annotations

import json
import logging
import math
import os
from dataclasses import dataclass, field
from typing import Any, ClassVar

import torch

from ..options import Option, normalize
from .sources import ImageSource, LazyImages, decode_all, source_stats

log = logging.getLogger(__name__)

Tensor = torch.Tensor
XY = tuple[Tensor, Tensor]

DEFAULT_ROOT = "~/.cache/kdstudy/data"
#: the decoded size above which a streamable dataset streams from disk (``memory_budget_gb``)
DEFAULT_MEMORY_BUDGET_GB = 2.0

#: options every dataset has; the spec validates them (they are listed here for its schema)
COMMON_OPTIONS: dict[str, Option] = {
    "name": Option(types=("string",), help="the dataset's registry name"),
    "root": Option(None, ("string", "null"), help=f"where the dataset's files are (default {DEFAULT_ROOT})"),
    "download": Option(False, ("boolean",), help="let the loader fetch missing files (network)"),
    "val_fraction": Option(0.1, ("number",), minimum=0.0, maximum=0.5,
                           help="share of the training split carved off as validation (0: none)"),
    "split_seed": Option(0, ("integer",), minimum=0, help="seed of the validation carve"),
    "train_subset": Option(None, ("integer", "null"), minimum=1,
                           help="keep only the first N of the shuffled training split"),
}

#: options of a dataset that can stream from disk; they never change what a trial trains
STREAM_OPTIONS: dict[str, Option] = {
    "stream": Option("auto", choices=("auto", True, False),
                     help="stream batches from disk with worker processes (auto: when the decoded data exceed "
                          "memory_budget_gb)"),
    "memory_budget_gb": Option(DEFAULT_MEMORY_BUDGET_GB, ("number",), minimum=0.0,
                               help="largest decoded dataset (all splits, uint8) kept resident in memory"),
    "num_workers": Option(None, ("integer", "null"), minimum=0,
                          help="decoding processes (default: the trial's CPU threads, at most 4; 0: in-process)"),
}

#: options of an image dataset's augmentation
AUGMENT_OPTIONS: dict[str, Option] = {
    "augment": Option("crop_flip", choices=("crop_flip", "crop", "flip", "none"),
                      help="training augmentation: random crop of the zero-padded image and/or horizontal flip "
                           "(train.augment: false turns it off too)"),
    "crop_padding": Option(None, ("integer", "null"), minimum=0,
                           help="zero padding of the random crop (default: an eighth of the image side, 4 at 32x32)"),
}


class DatasetError(ValueError):
    """A dataset cannot be used as configured; the message names the field or the file."""


class DatasetNotFound(DatasetError, FileNotFoundError):
    """A dataset's files are not where the configuration says (and downloading is not allowed)."""


@dataclass(frozen=True)
class Augmentation:
    """Training augmentation of images, applied batched on the device: a random crop of the
    image zero-padded by ``padding`` pixels (0: no crop) and a horizontal flip with probability 1/2."""

    padding: int = 4
    flip: bool = True

    def to_json(self) -> dict:
        return {"crop_padding": self.padding, "flip": self.flip}


def augmentation_of(cfg: dict, input_shape: tuple[int, ...]) -> Augmentation | None:
    """The augmentation an image entry's options ask for (None: none)."""
    kind = cfg.get("augment", "crop_flip")
    if kind == "none" or len(input_shape) != 3:
        return None
    pad = cfg.get("crop_padding")
    if pad is None:
        pad = max(1, round(min(input_shape[1:]) / 8))
    return Augmentation(padding=int(pad) if kind in ("crop_flip", "crop") else 0, flip=kind in ("crop_flip", "flip"))


@dataclass(frozen=True)
class DatasetInfo:
    """What an entry knows of a dataset before loading it (see the module docstring).

    ``train_size`` / ``val_size`` / ``test_size`` are the dataset's *own* splits
    (``val_size`` None: validation is carved from train). ``mean`` / ``std``: fixed
    per-channel statistics on the [0, 1] pixel scale (images) or the signal's scale;
    None: computed on the final training split. ``resident_bytes``: the decoded size
    of all splits (decides streaming, for an entry that can stream).
    """

    kind: str  # "image" | "signal"
    input_shape: tuple[int, ...]
    num_classes: int
    train_size: int
    test_size: int
    val_size: int | None = None
    class_names: tuple[str, ...] | None = None
    mean: tuple[float, ...] | None = None
    std: tuple[float, ...] | None = None
    augmentation: Augmentation | None = None
    #: where the splits come from, for people ("the dataset's own test split", a folder...)
    provenance: dict[str, str] = field(default_factory=dict)

    @property
    def resident_bytes(self) -> int:
        per = math.prod(self.input_shape) * (1 if self.kind == "image" else 4)
        return per * (self.train_size + (self.val_size or 0) + self.test_size)


@dataclass
class Loaded:
    """An entry's data: its own splits, each ``(x, y)`` tensors or an ``ImageSource``.

    Images are uint8 ``(N, C, H, W)``, signals float32 ``(N, C, L)``, labels int64.
    ``num_classes`` / ``class_names`` are read only by the default ``info``.
    """

    train: XY | ImageSource
    test: XY | ImageSource
    val: XY | ImageSource | None = None
    num_classes: int | None = None
    class_names: tuple[str, ...] | None = None


class DatasetEntry:
    """A dataset kind of the registry (see the module docstring); subclass it and decorate
    the subclass with ``@register_dataset(name)``."""

    name: ClassVar[str] = ""
    #: the entry's own options (besides COMMON_OPTIONS)
    options: ClassVar[dict[str, Any]] = {}
    #: option names that never change what a trial trains (kept out of identities)
    runtime_options: ClassVar[tuple[str, ...]] = ()
    #: True if `load` gives ImageSources that may stream from disk (the entry then has STREAM_OPTIONS)
    streamable: ClassVar[bool] = False

    def info(self, cfg: dict) -> DatasetInfo:
        """Default: load the data once and read the facts off it (override to avoid loading)."""
        data = self.load(cfg)
        parts = [p for p in (data.train, data.val, data.test) if p is not None]
        labels = torch.cat([_labels(p) for p in parts])
        x = _first(data.train)
        kind = "image" if x.dim() == 3 else "signal"
        classes = data.num_classes or (int(labels.max()) + 1 if len(labels) else 0)
        shape = tuple(int(d) for d in x.shape)
        return DatasetInfo(kind=kind, input_shape=shape, num_classes=classes, train_size=len(_labels(data.train)),
                           test_size=len(_labels(data.test)),
                           val_size=None if data.val is None else len(_labels(data.val)),
                           class_names=data.class_names, augmentation=augmentation_of(cfg, shape))

    def load(self, cfg: dict) -> Loaded:
        raise NotImplementedError

    def check(self, cfg: dict) -> list[str]:
        """Problems that would stop every trial from loading the dataset (before Ray starts)."""
        info_of(cfg)
        return []


_REGISTRY: dict[str, type[DatasetEntry]] = {}


def register_dataset(name: str):
    """Class decorator: make a :class:`DatasetEntry` subclass available as dataset ``name``."""

    def deco(cls: type[DatasetEntry]) -> type[DatasetEntry]:
        if not (isinstance(cls, type) and issubclass(cls, DatasetEntry)):
            raise TypeError(f"register_dataset({name!r}) decorates a DatasetEntry subclass, got {cls!r}")
        if name in _REGISTRY and _REGISTRY[name] is not cls:
            raise ValueError(f"dataset {name!r} is registered twice")
        clash = set(normalize(cls.options)) & set(COMMON_OPTIONS)
        if clash:
            raise ValueError(f"dataset {name!r}: options {sorted(clash)} are common options of every dataset")
        cls.name = name
        _REGISTRY[name] = cls
        return cls

    return deco


def available_datasets() -> list[str]:
    """Names `load_dataset` accepts."""
    return sorted(_REGISTRY)


def entry(name: str) -> DatasetEntry:
    """The registry entry of dataset ``name`` (ValueError naming the allowed ones)."""
    cls = _REGISTRY.get(name)
    if cls is None:
        raise DatasetError(f"dataset name: unknown {name!r}; allowed: {', '.join(available_datasets())}")
    return cls()


def dataset_options(name: str) -> dict[str, Option]:
    """The entry-specific options of dataset ``name`` (the spec adds COMMON_OPTIONS)."""
    return normalize(type(entry(name)).options)


def identity_config(cfg: dict) -> dict:
    """``cfg`` without the keys that never change what is trained (root, download, the
    entry's runtime options such as streaming): what an identity hash may see."""
    cls = _REGISTRY.get(cfg.get("name"))
    drop = {"root", "download", *(cls.runtime_options if cls else ())}
    return {k: v for k, v in cfg.items() if k not in drop}


def root_of(cfg: dict) -> str:
    """The dataset's root folder, absolute (default ``~/.cache/kdstudy/data``)."""
    return os.path.abspath(os.path.expanduser(str(cfg.get("root") or DEFAULT_ROOT)))


# --------------------------------------------------------------------------- facts

#: info of recent configurations (an image folder lists its files, a torchvision class reads its
#: metadata): the spec, the planner and the loader ask several times in one process
_INFO_CACHE: dict[str, DatasetInfo] = {}
_INFO_CACHE_SIZE = 16


def info_of(cfg: dict) -> DatasetInfo:
    """The entry's :class:`DatasetInfo` for ``cfg`` (cached per configuration in this process)."""
    key = json.dumps(cfg, sort_keys=True, default=str)
    got = _INFO_CACHE.get(key)
    if got is None:
        got = entry(cfg.get("name")).info(cfg)
        if len(_INFO_CACHE) >= _INFO_CACHE_SIZE:
            _INFO_CACHE.pop(next(iter(_INFO_CACHE)))
        _INFO_CACHE[key] = got
    return got


@dataclass(frozen=True)
class DatasetFacts:
    """Everything known of a configured dataset before it is loaded: what the spec (input
    shape, classes), the planner (sample counts) and the study's record (the report's
    header) read. ``n_train`` / ``n_val`` / ``n_test`` are the splits a trial trains,
    selects and reports on (after the validation carve and ``train_subset``)."""

    name: str
    kind: str
    input_shape: tuple[int, ...]
    num_classes: int
    class_names: tuple[str, ...] | None
    n_train: int
    n_val: int
    n_test: int
    val_carved: bool
    mean: tuple[float, ...] | None
    std: tuple[float, ...] | None
    augmentation: Augmentation | None
    resident: bool
    resident_bytes: int
    provenance: dict[str, str]

    def to_json(self) -> dict:
        """The facts as plain JSON (the study records them; `analysis` reads them)."""
        norm = ({"mean": list(self.mean), "std": list(self.std)} if self.mean is not None
                else {"computed_on": "training split", "statistic": "per-channel mean and std"})
        return {
            "name": self.name, "kind": self.kind, "input_shape": list(self.input_shape),
            "num_classes": self.num_classes,
            "class_names": list(self.class_names) if self.class_names is not None else None,
            "splits": {"train": self.n_train, "val": self.n_val, "test": self.n_test},
            "validation": self.provenance.get("val", ""), "test": self.provenance.get("test", ""),
            "normalization": norm,
            "augmentation": self.augmentation.to_json() if self.augmentation else None,
            "resident": self.resident, "resident_bytes": self.resident_bytes,
        }


def _val_fraction(cfg: dict) -> float:
    vf = float(cfg.get("val_fraction", 0.1))
    if not 0.0 <= vf < 1.0:
        raise DatasetError(f"dataset.val_fraction must be in [0, 1), got {vf}")
    return vf


def split_counts(train_size: int, val_size: int | None, cfg: dict) -> tuple[int, int]:
    """(training, validation) samples after the carve: what `carve` gives, from counts alone."""
    if val_size is not None:
        n_train, n_val = train_size, val_size
    else:
        n_val = int(round(train_size * _val_fraction(cfg)))
        n_train = train_size - n_val
    if cfg.get("train_subset") is not None:
        n_train = min(n_train, int(cfg["train_subset"]))
    return n_train, n_val


def carve(n: int, cfg: dict, own_val: bool) -> tuple[Tensor, Tensor]:
    """(train_index, val_index) into the dataset's own training split of ``n`` samples.

    A permutation seeded by ``split_seed``; its first ``round(n * val_fraction)``
    become validation (none when the dataset has its own validation split), the rest,
    in that shuffled order, training; ``train_subset`` keeps the first N of those.
    """
    gen = torch.Generator().manual_seed(int(cfg.get("split_seed", 0)))
    perm = torch.randperm(n, generator=gen)
    n_val = 0 if own_val else int(round(n * _val_fraction(cfg)))
    val_index, train_index = perm[:n_val], perm[n_val:]
    if cfg.get("train_subset") is not None:
        train_index = train_index[: int(cfg["train_subset"])]
    return train_index, val_index


def streams(cfg: dict, info: DatasetInfo, streamable: bool) -> bool:
    """Whether a trial streams this dataset from disk instead of holding it in memory."""
    if not streamable:
        return False
    want = cfg.get("stream", "auto")
    if want is True or want is False:
        return want
    budget = float(cfg.get("memory_budget_gb", DEFAULT_MEMORY_BUDGET_GB)) * 2**30
    return info.resident_bytes > budget


def dataset_facts(cfg: dict) -> DatasetFacts:
    """The :class:`DatasetFacts` of a dataset configuration, without loading its data."""
    ent = entry(cfg.get("name"))
    info = info_of(cfg)
    n_train, n_val = split_counts(info.train_size, info.val_size, cfg)
    prov = dict(info.provenance)
    if info.val_size is None:
        vf = _val_fraction(cfg)
        prov["val"] = (f"carved from the training split (val_fraction {vf:g}, split_seed {int(cfg.get('split_seed', 0))})"
                       if n_val else "none (val_fraction 0: the last epoch is the result)")
    prov.setdefault("val", "the dataset's own validation split")
    prov.setdefault("test", "the dataset's own test split")
    return DatasetFacts(
        name=str(cfg.get("name")), kind=info.kind, input_shape=tuple(info.input_shape),
        num_classes=info.num_classes, class_names=info.class_names, n_train=n_train, n_val=n_val,
        n_test=info.test_size, val_carved=info.val_size is None, mean=info.mean, std=info.std,
        augmentation=info.augmentation, resident=not streams(cfg, info, ent.streamable),
        resident_bytes=info.resident_bytes, provenance=prov,
    )


# --------------------------------------------------------------------------- loading


@dataclass
class Splits:
    """A dataset split three ways.

    ``train``/``val``/``test`` are ``(x, y)``; resident images are uint8 ``(N, C, H, W)``
    CPU tensors, signals float32 ``(N, C, L)``; a streamed dataset's ``x`` is a
    :class:`~trainables.data.sources.LazyImages` (decoded batch by batch from disk).
    ``y`` is always an int64 tensor. ``mean``/``std`` broadcast per channel against a
    batch (``(C, 1, 1)`` for images on the [0, 1] pixel scale, ``(C, 1)`` for signals).
    ``train_index``/``val_index`` are the rows of the dataset's own training split that
    became train/val (provenance, logging). ``augmentation``: what training batches get
    (None: nothing). ``facts``: the :class:`DatasetFacts` the splits were made from.
    """

    train: XY
    val: XY
    test: XY
    num_classes: int
    input_shape: tuple
    kind: str  # "signal" | "image"
    mean: Tensor
    std: Tensor
    name: str
    train_index: Tensor | None = None
    val_index: Tensor | None = None
    class_names: tuple[str, ...] | None = None
    augmentation: Augmentation | None = None
    streaming: bool = False
    facts: DatasetFacts | None = None


def load_dataset(cfg: dict) -> Splits:
    """Load the dataset named by ``cfg['name']`` and split it into train/val/test.

    Common keys: ``name``, ``root`` (default ``~/.cache/kdstudy/data``), ``download``
    (default False), ``val_fraction`` (default 0.1), ``split_seed`` (default 0),
    ``train_subset`` (optional int: keep the first N of the shuffled training split);
    the entry's own options (`dataset_options(name)`) besides.
    """
    ent = entry(cfg.get("name"))
    facts = dataset_facts(cfg)
    data = ent.load(cfg)
    stream = not facts.resident

    train_part, test_part, val_part = data.train, data.test, data.val
    if isinstance(train_part, ImageSource) or isinstance(test_part, ImageSource):
        train_part, val_part, test_part = _materialise(cfg, facts, train_part, val_part, test_part, stream)

    x_all, y_all = train_part
    train_index, val_index = carve(len(y_all), cfg, own_val=val_part is not None)
    train = (x_all[train_index], y_all[train_index])
    val = val_part if val_part is not None else (x_all[val_index], y_all[val_index])
    test = test_part

    shape = tuple(int(d) for d in x_all.shape[1:])
    _agree(facts, shape, train, val, test)
    if facts.mean is not None:
        c = shape[0]
        view = (c,) + (1,) * (len(shape) - 1)
        mean = torch.tensor(facts.mean, dtype=torch.float32).reshape(view)
        std = torch.tensor(facts.std, dtype=torch.float32).reshape(view)
    elif stream:
        mean, std = source_stats(train[0])
    else:
        mean, std = channel_stats(train[0], facts.kind)

    return Splits(
        train=train, val=val, test=test, num_classes=facts.num_classes, input_shape=shape, kind=facts.kind,
        mean=mean, std=std, name=facts.name, train_index=train_index, val_index=val_index,
        class_names=facts.class_names, augmentation=facts.augmentation, streaming=stream, facts=facts,
    )


def _workers(cfg: dict) -> int:
    n = cfg.get("num_workers")
    if n is not None:
        return int(n)
    return max(1, min(4, torch.get_num_threads()))


def _materialise(cfg, facts, train, val, test, stream):
    """File-backed splits: decoded into tensors (resident), or lazy views of one source (streamed)."""
    parts = [("train", train), ("val", val), ("test", test)]
    if not stream:
        out = []
        for label, part in parts:
            if isinstance(part, ImageSource):
                part = (decode_all(part, num_workers=_workers(cfg), what=f"{facts.name} {label}"), part.labels)
            out.append(part)
        return out
    sources = [p for _, p in parts if p is not None]
    if not all(isinstance(p, ImageSource) for p in sources):
        raise DatasetError(f"{facts.name}: a streamed dataset gives every split as an ImageSource")
    from .sources import ConcatSource

    whole = ConcatSource(sources, num_workers=_workers(cfg))
    out, offset = [], 0
    for _, part in parts:
        if part is None:
            out.append(None)
            continue
        index = torch.arange(offset, offset + len(part))
        out.append((LazyImages(whole, index), part.labels.clone()))
        offset += len(part)
    return out


def _agree(facts: DatasetFacts, shape, train, val, test) -> None:
    """What was loaded must be what the facts promised (a plug-in's `info` may be wrong)."""
    if shape != tuple(facts.input_shape):
        raise DatasetError(f"{facts.name}: loaded inputs of shape {shape}, but its facts say {facts.input_shape}")
    top = max((int(p[1].max()) for p in (train, val, test) if len(p[1])), default=-1)
    if top >= facts.num_classes:
        raise DatasetError(f"{facts.name}: a label {top} is out of range for {facts.num_classes} classes")
    got = (len(train[1]), len(val[1]), len(test[1]))
    want = (facts.n_train, facts.n_val, facts.n_test)
    if got != want:  # the planner and the report use the facts' counts
        log.warning("%s: loaded train/val/test %s samples, its facts say %s", facts.name, got, want)


def channel_stats(x: Tensor, kind: str) -> tuple[Tensor, Tensor]:
    """Per-channel mean/std, shaped to broadcast against a batch of ``x``."""
    if len(x) == 0:
        raise DatasetError("cannot compute normalisation statistics of an empty training split")
    c = x.shape[1]
    flat = x.transpose(0, 1).reshape(c, -1).to(torch.float64)
    if kind == "image":
        flat = flat / 255.0
    mean = flat.mean(dim=1)
    std = flat.std(dim=1).clamp_min(1e-8)
    shape = (c,) + (1,) * (x.dim() - 2)
    return mean.float().reshape(shape), std.float().reshape(shape)


def check_dataset(cfg: dict) -> list[str]:
    """Problems that would stop every trial from loading the dataset (checked before Ray starts),
    one line each, naming the field or the file."""
    name = cfg.get("name")
    try:
        return entry(name).check(cfg)
    except DatasetError as exc:
        return [str(exc)]
    except Exception as exc:  # unreadable root, a full disk: named, not a traceback
        return [f"{name}: cannot prepare the dataset under {root_of(cfg)}: {exc}"]


def describe(splits: Splits) -> dict[str, Any]:
    """Sizes and shape of a :class:`Splits`, for logging and results rows."""
    return {
        "dataset": splits.name,
        "kind": splits.kind,
        "num_classes": splits.num_classes,
        "input_shape": list(splits.input_shape),
        "n_train": len(splits.train[1]),
        "n_val": len(splits.val[1]),
        "n_test": len(splits.test[1]),
    }


def _labels(part) -> Tensor:
    return part.labels if isinstance(part, ImageSource) else part[1]


def _first(part) -> Tensor:
    return part[0] if isinstance(part, ImageSource) else part[0][0]


__all__ = [
    "Augmentation", "COMMON_OPTIONS", "DEFAULT_ROOT", "DatasetEntry", "DatasetError", "DatasetFacts",
    "DatasetInfo", "DatasetNotFound", "Loaded", "STREAM_OPTIONS", "AUGMENT_OPTIONS", "Splits",
    "available_datasets", "carve", "channel_stats", "check_dataset", "dataset_facts", "dataset_options",
    "describe", "entry", "identity_config", "info_of", "load_dataset", "register_dataset", "root_of",
    "split_counts",
]
