"""Datasets for one trial: loading, train/val/test splits and on-device batching.

``load_dataset(cfg)`` returns a :class:`Splits` of CPU tensors:

* ``mnist1d`` — the embedded default. Generated locally with the ``mnist1d``
  package's ``make_dataset`` (never its download URL) and cached as an ``.npz``
  under ``root``, keyed by the generation arguments. Signals, float32
  ``(N, 1, 40)``.
* ``cifar10`` / ``cifar100`` — through ``torchvision.datasets`` from ``root``
  (``download: true`` fetches them). Images, uint8 ``(N, 3, 32, 32)``.
* ``synthetic_image`` — random CIFAR-shaped uint8 images from a fixed seed,
  10 classes, no disk; for benchmarks and tests.

Validation is always carved from the dataset's *training* split with a
permutation seeded by ``split_seed``; ``test`` is the dataset's own test split
and is only reported, never used for selection.

The whole split is moved to the device once (:func:`to_device`) and
:class:`DeviceBatches` slices, augments (images: random crop with 4-pixel zero
padding + horizontal flip, vectorised) and normalises batches there, with all
randomness drawn from an explicit ``torch.Generator``.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import math
import os
import random
import tempfile
from dataclasses import dataclass
from typing import Any, Callable, Iterator

import numpy as np
import torch
import torch.nn.functional as F

Tensor = torch.Tensor
XY = tuple[Tensor, Tensor]

DEFAULT_ROOT = "~/.cache/kdstudy/data"
DATASET_NAMES = ("mnist1d", "cifar10", "cifar100", "synthetic_image")

# Standard per-channel statistics of the CIFAR training sets, on the [0, 1] scale.
CIFAR10_MEAN = (0.4914, 0.4822, 0.4465)
CIFAR10_STD = (0.2470, 0.2435, 0.2616)
CIFAR100_MEAN = (0.5071, 0.4865, 0.4409)
CIFAR100_STD = (0.2673, 0.2564, 0.2762)

# MNIST-1D generation: the package's canonical seed unless the config gives ``data_seed``.
MNIST1D_DEFAULT_SEED = 42
CROP_PADDING = 4


@dataclass
class Splits:
    """A dataset split three ways, as CPU tensors.

    ``train``/``val``/``test`` are ``(x, y)``; images are uint8 ``(N, 3, 32, 32)``,
    signals float32 ``(N, 1, 40)``; ``y`` is int64. ``mean``/``std`` broadcast per
    channel against a batch (``(C, 1, 1)`` for images on the [0, 1] pixel scale,
    ``(C, 1)`` for signals). ``train_index``/``val_index`` are the rows of the
    dataset's own training split that became train/val (provenance, logging).
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


# --------------------------------------------------------------------------- loading

_LOADERS: dict[str, Callable[[dict], "_Raw"]] = {}


@dataclass
class _Raw:
    """A dataset before the validation carve: its own train and test splits."""

    train: XY
    test: XY
    num_classes: int
    kind: str
    mean: Tensor | None  # None: compute on the final training split
    std: Tensor | None


def _register(name: str):
    def deco(fn):
        _LOADERS[name] = fn
        return fn

    return deco


def load_dataset(cfg: dict) -> Splits:
    """Load the dataset named by ``cfg['name']`` and split it into train/val/test.

    Keys: ``name``, ``root`` (default ``~/.cache/kdstudy/data``), ``download``
    (CIFAR only, default False), ``num_samples`` (mnist1d, default 10000),
    ``data_seed`` (mnist1d generation seed, default 42), ``val_fraction``
    (default 0.1), ``split_seed`` (default 0), ``train_subset`` (optional int:
    keep the first N of the shuffled training split), ``synthetic_size``
    (synthetic_image training images, default 2048).
    """
    name = cfg["name"]
    if name not in _LOADERS:
        raise ValueError(f"dataset name: unknown {name!r}; allowed: {', '.join(DATASET_NAMES)}")
    raw = _LOADERS[name](cfg)

    val_fraction = float(cfg.get("val_fraction", 0.1))
    if not 0.0 <= val_fraction < 1.0:
        raise ValueError(f"val_fraction must be in [0, 1), got {val_fraction}")
    x_all, y_all = raw.train
    n = len(y_all)
    gen = torch.Generator().manual_seed(int(cfg.get("split_seed", 0)))
    perm = torch.randperm(n, generator=gen)
    n_val = int(round(n * val_fraction))
    val_index, train_index = perm[:n_val], perm[n_val:]
    subset = cfg.get("train_subset")
    if subset is not None:
        train_index = train_index[: int(subset)]

    train = (x_all[train_index], y_all[train_index])
    val = (x_all[val_index], y_all[val_index])
    mean, std = raw.mean, raw.std
    if mean is None or std is None:
        mean, std = _channel_stats(train[0], raw.kind)

    return Splits(
        train=train,
        val=val,
        test=raw.test,
        num_classes=raw.num_classes,
        input_shape=tuple(x_all.shape[1:]),
        kind=raw.kind,
        mean=mean,
        std=std,
        name=name,
        train_index=train_index,
        val_index=val_index,
    )


def _channel_stats(x: Tensor, kind: str) -> tuple[Tensor, Tensor]:
    """Per-channel mean/std, shaped to broadcast against a batch of ``x``."""
    if len(x) == 0:
        raise ValueError("cannot compute normalisation statistics of an empty training split")
    c = x.shape[1]
    flat = x.transpose(0, 1).reshape(c, -1).to(torch.float64)
    if kind == "image":
        flat = flat / 255.0
    mean = flat.mean(dim=1)
    std = flat.std(dim=1).clamp_min(1e-8)
    shape = (c,) + (1,) * (x.dim() - 2)
    return mean.float().reshape(shape), std.float().reshape(shape)


def _root(cfg: dict) -> str:
    return os.path.abspath(os.path.expanduser(str(cfg.get("root") or DEFAULT_ROOT)))


# ---- MNIST-1D


@contextlib.contextmanager
def _preserve_global_rng():
    """``mnist1d`` seeds numpy's and Python's global RNGs; put them back afterwards."""
    np_state, py_state = np.random.get_state(), random.getstate()
    try:
        yield
    finally:
        np.random.set_state(np_state)
        random.setstate(py_state)


def _mnist1d_args(num_samples: int, seed: int) -> dict:
    from mnist1d.data import get_dataset_args

    args = get_dataset_args(as_dict=True)
    args.pop("url", None)  # never used: the data is generated, not downloaded
    args["num_samples"] = int(num_samples)
    args["seed"] = int(seed)
    return args


def _mnist1d_cache_path(root: str, num_samples: int, seed: int) -> str:
    """The cached arrays of (num_samples, seed) as the installed mnist1d generates them: the
    package's version is in the key, so reading the cache never imports it (about 1 s of
    matplotlib and scipy in every fresh trial process)."""
    from importlib.metadata import version

    ident = {"num_samples": int(num_samples), "seed": int(seed), "mnist1d": version("mnist1d")}
    key = hashlib.sha256(json.dumps(ident, sort_keys=True).encode()).hexdigest()[:16]
    return os.path.join(root, "mnist1d", f"mnist1d_n{int(num_samples)}_s{int(seed)}_{key}.npz")


def _generate_mnist1d(args: dict) -> dict[str, np.ndarray]:
    from mnist1d.data import make_dataset
    from mnist1d.utils import ObjectView

    with _preserve_global_rng():
        d = make_dataset(ObjectView(dict(args)))
    return {
        "x": np.asarray(d["x"], dtype=np.float32),
        "y": np.asarray(d["y"], dtype=np.int64),
        "x_test": np.asarray(d["x_test"], dtype=np.float32),
        "y_test": np.asarray(d["y_test"], dtype=np.int64),
    }


def _atomic_savez(path: str, arrays: dict[str, np.ndarray]) -> None:
    directory = os.path.dirname(path)
    os.makedirs(directory, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=".tmp-", suffix=".npz", dir=directory)
    try:
        with os.fdopen(fd, "wb") as f:
            np.savez(f, **arrays)
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            os.remove(tmp)
        raise


def _load_npz(path: str) -> dict[str, np.ndarray] | None:
    try:
        with np.load(path) as z:
            return {k: z[k] for k in ("x", "y", "x_test", "y_test")}
    except (OSError, KeyError, ValueError):
        return None


@_register("mnist1d")
def _load_mnist1d(cfg: dict) -> _Raw:
    n, seed = cfg.get("num_samples", 10000), cfg.get("data_seed", MNIST1D_DEFAULT_SEED)
    path = _mnist1d_cache_path(_root(cfg), n, seed)
    arrays = _load_npz(path) if os.path.exists(path) else None
    if arrays is None:
        arrays = _generate_mnist1d(_mnist1d_args(n, seed))
        _atomic_savez(path, arrays)

    def signals(a: np.ndarray) -> Tensor:
        return torch.from_numpy(np.ascontiguousarray(a, dtype=np.float32)).unsqueeze(1)

    def labels(a: np.ndarray) -> Tensor:
        return torch.from_numpy(np.ascontiguousarray(a, dtype=np.int64))

    return _Raw(
        train=(signals(arrays["x"]), labels(arrays["y"])),
        test=(signals(arrays["x_test"]), labels(arrays["y_test"])),
        num_classes=10,
        kind="signal",
        mean=None,
        std=None,
    )


# ---- CIFAR


def _cifar_class(name: str):
    from torchvision import datasets

    return datasets.CIFAR10 if name == "cifar10" else datasets.CIFAR100


def _cifar_missing_files(cfg: dict, name: str) -> tuple[str, list[str]]:
    """(the extracted CIFAR folder, the files of it that are not there)."""
    cls = _cifar_class(name)
    folder = os.path.join(_root(cfg), cls.base_folder)
    expected = [f for f, _ in cls.train_list + cls.test_list] + [cls.meta["filename"]]
    return folder, [f for f in expected if not os.path.isfile(os.path.join(folder, f))]


def _cifar_missing(cfg: dict, name: str) -> str | None:
    """Why the CIFAR files cannot be read (None when present, or when the spec asks to download)."""
    cls = _cifar_class(name)
    root = _root(cfg)
    folder, missing = _cifar_missing_files(cfg, name)
    if missing and not cfg.get("download", False):
        return (f"{name}: dataset files not found; expected the extracted '{cls.base_folder}' folder at "
                f"{folder} (missing: {', '.join(missing)}). Set `download: true` in the dataset section "
                f"of the spec to fetch them into root={root}, or point `root` at an existing copy.")
    return None


def check_dataset(cfg: dict) -> list[str]:
    """Problems that would stop every trial from loading the dataset (checked before Ray starts).

    CIFAR: the files are present (or the spec asks to download them). MNIST-1D:
    the generated cache is made now, once, instead of by every trial at once.
    """
    name = cfg.get("name")
    try:
        if name in ("cifar10", "cifar100"):
            problem = _cifar_missing(cfg, name)
            return [problem] if problem else []
        if name == "mnist1d":
            _load_mnist1d(cfg)
    except Exception as exc:  # unreadable root, a full disk: named, not a traceback
        return [f"{name}: cannot prepare the dataset under {_root(cfg)}: {exc}"]
    return []


def _load_cifar(cfg: dict, name: str, num_classes: int, mean, std) -> _Raw:
    cls = _cifar_class(name)
    root = _root(cfg)
    problem = _cifar_missing(cfg, name)
    if problem:
        raise FileNotFoundError(problem)
    if _cifar_missing_files(cfg, name)[1]:  # only with `download: true` (else refused above)
        os.makedirs(root, exist_ok=True)
        from filelock import FileLock  # parallel trials: one downloads, the others wait

        with FileLock(os.path.join(root, f".{name}.download.lock")):
            cls(root, train=True, download=True)

    def to_tensors(ds) -> XY:
        x = torch.from_numpy(np.ascontiguousarray(ds.data)).permute(0, 3, 1, 2).contiguous()
        y = torch.as_tensor(ds.targets, dtype=torch.int64)
        return x, y

    train = to_tensors(cls(root, train=True, download=False))
    test = to_tensors(cls(root, train=False, download=False))
    return _Raw(
        train=train,
        test=test,
        num_classes=num_classes,
        kind="image",
        mean=torch.tensor(mean, dtype=torch.float32).reshape(3, 1, 1),
        std=torch.tensor(std, dtype=torch.float32).reshape(3, 1, 1),
    )


@_register("cifar10")
def _load_cifar10(cfg: dict) -> _Raw:
    return _load_cifar(cfg, "cifar10", 10, CIFAR10_MEAN, CIFAR10_STD)


@_register("cifar100")
def _load_cifar100(cfg: dict) -> _Raw:
    return _load_cifar(cfg, "cifar100", 100, CIFAR100_MEAN, CIFAR100_STD)


# ---- synthetic images

SYNTHETIC_SEED = 1234
SYNTHETIC_CLASSES = 10


def _synthetic_images(n: int, templates: Tensor, gen: torch.Generator) -> XY:
    y = torch.randint(0, SYNTHETIC_CLASSES, (n,), generator=gen, dtype=torch.int64)
    noise = torch.randint(0, 256, (n, 3, 32, 32), generator=gen, dtype=torch.int16)
    x = (templates[y] + noise) // 2  # half a class pattern, half noise: learnable, still random
    return x.to(torch.uint8), y


@_register("synthetic_image")
def _load_synthetic(cfg: dict) -> _Raw:
    n_train = int(cfg.get("synthetic_size", 2048))
    n_test = max(1, n_train // 4)
    gen = torch.Generator().manual_seed(SYNTHETIC_SEED)
    coarse = torch.randint(0, 256, (SYNTHETIC_CLASSES, 3, 4, 4), generator=gen, dtype=torch.int16)
    templates = coarse.repeat_interleave(8, dim=2).repeat_interleave(8, dim=3)
    return _Raw(
        train=_synthetic_images(n_train, templates, gen),
        test=_synthetic_images(n_test, templates, gen),
        num_classes=SYNTHETIC_CLASSES,
        kind="image",
        mean=None,
        std=None,
    )


# --------------------------------------------------------------------------- batching


def to_device(split_xy: XY, device: torch.device | str) -> XY:
    """Move one ``(x, y)`` split to ``device`` once, for :class:`DeviceBatches`."""
    x, y = split_xy
    device = torch.device(device)
    non_blocking = device.type == "cuda"
    return x.to(device, non_blocking=non_blocking), y.to(device, non_blocking=non_blocking)


def _draw(fn, *args, generator: torch.Generator | None, device: torch.device, **kw) -> Tensor:
    """Call a random factory with ``generator`` on its own device, then move to ``device``."""
    gen_device = generator.device if generator is not None else device
    return fn(*args, generator=generator, device=gen_device, **kw).to(device)


def random_crop_flip(
    x: Tensor, generator: torch.Generator | None, padding: int = CROP_PADDING
) -> Tensor:
    """Random crop (size unchanged, zero padding ``padding``) and horizontal flip, batched.

    One zero-padded tensor, per-sample offsets drawn from ``generator`` and a single
    gather: rows ``oy + i`` and columns ``ox + j`` (reversed for flipped samples).
    Works on any dtype (applied to raw uint8 pixels before normalisation).
    """
    b, c, h, w = x.shape
    dev = x.device
    padded = F.pad(x, (padding, padding, padding, padding))
    offsets = _draw(torch.randint, 0, 2 * padding + 1, (b, 2), generator=generator, device=dev)
    flip = _draw(torch.rand, (b,), generator=generator, device=dev) < 0.5
    rows = offsets[:, :1] + torch.arange(h, device=dev)  # (B, H)
    cols_idx = torch.arange(w, device=dev)
    cols_idx = torch.where(flip[:, None], cols_idx.flip(0)[None, :], cols_idx[None, :])
    cols = offsets[:, 1:] + cols_idx  # (B, W)
    bi = torch.arange(b, device=dev)[:, None, None, None]
    ci = torch.arange(c, device=dev)[None, :, None, None]
    return padded[bi, ci, rows[:, None, :, None], cols[:, None, None, :]]


class DeviceBatches:
    """Batches of ``(x, y)`` made on the device the tensors live on.

    Each ``iter()`` is one epoch: a permutation from ``generator`` when ``shuffle``,
    then per batch an index into the resident tensors. Images are converted
    uint8 -> float32 on [0, 1], augmented when ``augment`` (random crop with 4-pixel
    zero padding + horizontal flip, vectorised, randomness from ``generator``)
    and normalised by ``mean``/``std``; signals are only normalised.
    """

    def __init__(
        self,
        x: Tensor,
        y: Tensor,
        batch_size: int,
        *,
        shuffle: bool,
        generator: torch.Generator | None,
        augment: bool,
        mean: Tensor,
        std: Tensor,
        drop_last: bool = False,
        channels_last: bool = False,
    ):
        if len(x) != len(y):
            raise ValueError(f"x and y differ in length: {len(x)} vs {len(y)}")
        if batch_size <= 0:
            raise ValueError(f"batch_size must be positive, got {batch_size}")
        self.x, self.y = x, y
        self.batch_size = int(batch_size)
        self.shuffle = shuffle
        self.generator = generator
        self.is_image = x.dim() == 4
        self.augment = augment and self.is_image
        self.drop_last = drop_last
        self.channels_last = channels_last and self.is_image
        self.device = x.device
        self.mean = torch.as_tensor(mean, dtype=torch.float32).to(self.device)
        self.std = torch.as_tensor(std, dtype=torch.float32).to(self.device)

    def __len__(self) -> int:
        n = len(self.y)
        return n // self.batch_size if self.drop_last else math.ceil(n / self.batch_size)

    @property
    def num_samples(self) -> int:
        return len(self.y)

    def _prepare(self, xb: Tensor) -> Tensor:
        if self.augment:
            xb = random_crop_flip(xb, self.generator)
        if xb.dtype == torch.uint8:  # .float() copies, so in-place is safe
            xb = xb.float().mul_(1.0 / 255.0).sub_(self.mean).div_(self.std)
        else:  # may be a view of the resident data: never in-place
            xb = (xb.float() - self.mean) / self.std
        if self.channels_last:
            xb = xb.contiguous(memory_format=torch.channels_last)
        return xb

    def __iter__(self) -> Iterator[XY]:
        n = len(self.y)
        if self.shuffle:
            order = _draw(torch.randperm, n, generator=self.generator, device=self.device)
        else:
            order = None
        for i in range(len(self)):
            lo, hi = i * self.batch_size, min((i + 1) * self.batch_size, n)
            if order is None:
                xb, yb = self.x[lo:hi], self.y[lo:hi]
            else:
                idx = order[lo:hi]
                xb, yb = self.x[idx], self.y[idx]
            yield self._prepare(xb), yb


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


def available_datasets() -> list[str]:
    """Names `load_dataset` accepts."""
    return sorted(_LOADERS)
