"""``torchvision``: any image-classification class of ``torchvision.datasets``, by name, from a local root.

``{name: torchvision, class: FashionMNIST, root: /data}`` reads the class's own
on-disk format under ``root`` (each class has its own layout there: ``FashionMNIST/raw/``,
``train_32x32.mat``, ...). Classes that take ``train=`` (MNIST, FashionMNIST, KMNIST,
EMNIST, QMNIST, USPS, CIFAR10/100, ...) give their training and test splits; classes
that take ``split=`` (SVHN, STL10, Flowers102, GTSRB, DTD, Food101, FGVCAircraft,
OxfordIIITPet, ...) give ``train_split`` (default "train"), ``test_split`` (default
"test") and, when set, ``val_split`` (else validation is carved from training). Other
constructor arguments go in ``args`` (EMNIST's ``split: balanced``, STL10's ``folds``).
Nothing is downloaded unless the spec says ``download: true`` (then the first command
that needs the dataset's facts fetches it once, under a file lock).

Each image is converted to ``channels`` (default: the first training image's: 1 for
the MNIST family, 3 for RGB) and resized (bilinear) to ``image_size`` where it differs
(default: the first training image's size). Labels must be class indices; the class
names are the class's ``classes`` where it has them. Normalisation: ``mean``/``std``
when given, else the training split's statistics. Resident when the decoded data fit
``memory_budget_gb`` (the in-memory arrays of MNIST-like classes are used directly,
checked against the decoded first and last images), else streamed.
"""

from __future__ import annotations

import inspect
import json
import logging
import os

import numpy as np
import torch

from ..options import REQUIRED, Option
from .image_folder import size_option, stats_option
from .registry import (AUGMENT_OPTIONS, STREAM_OPTIONS, DatasetEntry, DatasetError, DatasetInfo, DatasetNotFound,
                       Loaded, augmentation_of, register_dataset, root_of)
from .sources import ImageSource, channels_of_mode, to_uint8_chw

log = logging.getLogger(__name__)

EXAMPLES = "MNIST, FashionMNIST, KMNIST, EMNIST, USPS, SVHN, STL10, CIFAR10, Flowers102, GTSRB, Food101"


def dataset_class(name):
    """The ``torchvision.datasets`` class called ``name`` (DatasetError when there is none)."""
    from torchvision import datasets

    cls = getattr(datasets, str(name), None) if isinstance(name, str) else None
    if not (isinstance(cls, type) and issubclass(cls, datasets.VisionDataset)):
        raise DatasetError(f"dataset.class: torchvision.datasets has no dataset class {name!r}; e.g. {EXAMPLES}")
    return cls


def _params(cls) -> set[str]:
    return set(inspect.signature(cls.__init__).parameters)


def _train_style(cls) -> bool:
    """True if the class picks its split with ``train=`` (MNIST's subclasses take it through **kwargs)."""
    from torchvision import datasets

    return "train" in _params(cls) or issubclass(cls, datasets.MNIST)


def _construct(cls, cfg: dict, part: str):
    from torchvision import datasets

    kwargs = dict(cfg.get("args") or {})
    if _train_style(cls):
        kwargs["train"] = part == "train"
    elif "split" in _params(cls):
        kwargs["split"] = cfg.get(f"{part}_split", {"train": "train", "test": "test"}.get(part))
    else:
        raise DatasetError(f"dataset.class: torchvision.{cls.__name__} has neither train= nor split=; "
                           "use image_folder or a plug-in for it")
    root = root_of(cfg)
    download = bool(cfg.get("download", False))
    if download:
        if not ("download" in _params(cls) or issubclass(cls, datasets.MNIST)):
            raise DatasetError(f"dataset.download: torchvision.{cls.__name__} cannot download; put its files "
                               f"under root={root}")
        os.makedirs(root, exist_ok=True)
        from filelock import FileLock  # parallel trials: one downloads, the others wait

        with FileLock(os.path.join(root, f".{cls.__name__}.download.lock")):
            return cls(root, download=True, **kwargs)
    try:
        return cls(root, **kwargs)
    except (RuntimeError, FileNotFoundError, OSError) as exc:
        text = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise DatasetNotFound(f"torchvision {cls.__name__} ({part} split): cannot read it under root={root}: {text}. "
                              "Set `download: true` in the dataset section of the spec to fetch it, or point "
                              "`root` at an existing copy.") from None
    except TypeError as exc:
        raise DatasetError(f"dataset.args: torchvision.{cls.__name__}(...) refused them: {exc}") from None


def _labels(ds, what: str) -> torch.Tensor:
    """The class index of every sample, from the dataset's label attribute (or, failing that, its items)."""
    n = len(ds)
    for attr in ("targets", "labels", "_labels", "y"):
        value = getattr(ds, attr, None)
        if value is not None and not isinstance(value, (str, dict)):
            try:
                t = torch.as_tensor(np.asarray(value)).reshape(-1)
            except (TypeError, ValueError):
                continue
            if len(t) == n and not t.is_floating_point() and not t.is_complex():
                return t.to(torch.int64)
    for attr in ("samples", "_samples", "imgs"):
        value = getattr(ds, attr, None)
        if isinstance(value, list) and len(value) == n and all(isinstance(s, tuple) and len(s) == 2 for s in value[:1]):
            try:
                return torch.tensor([int(s[1]) for s in value], dtype=torch.int64)
            except (TypeError, ValueError):
                break
    log.info("%s: reading the labels of %d samples one by one", what, n)
    out = []
    for i in range(n):
        target = ds[i][1]
        if not isinstance(target, (int, np.integer)) and not (torch.is_tensor(target) and target.numel() == 1):
            raise DatasetError(f"{what}: its targets are {type(target).__name__}, not class indices; "
                               "only classification datasets are supported")
        out.append(int(target))
    return torch.tensor(out, dtype=torch.int64)


def _pil(image):
    from PIL import Image

    if isinstance(image, Image.Image):
        return image
    from torchvision.transforms.functional import to_pil_image

    return to_pil_image(image)


class TorchvisionImages(ImageSource):
    """The images of a torchvision dataset, at a fixed size and channel count; ``array`` (the
    dataset's own in-memory uint8 images, already (N, C, H, W) at that size) skips decoding."""

    def __init__(self, ds, labels: torch.Tensor, size: tuple[int, int], channels: int, array=None):
        self.ds = ds
        self.labels = labels
        self.size = (int(size[0]), int(size[1]))
        self.channels = int(channels)
        self.sample_shape = (self.channels, *self.size)
        self.array = array

    def decode(self, i: int) -> torch.Tensor:
        return to_uint8_chw(_pil(self.ds[i][0]), self.channels, self.size)

    def __getitem__(self, i: int) -> torch.Tensor:
        if self.array is not None:
            return self.array[i]
        return self.decode(i)


def _array_of(ds, source: TorchvisionImages) -> torch.Tensor | None:
    """The dataset's ``data`` as uint8 (N, C, H, W) when it holds exactly what decoding gives."""
    data = getattr(ds, "data", None)
    if data is None or len(source) == 0:
        return None
    try:
        t = torch.as_tensor(np.asarray(data)) if not torch.is_tensor(data) else data
    except (TypeError, ValueError):
        return None
    if t.dtype != torch.uint8 or len(t) != len(source):
        return None
    c, h, w = source.sample_shape
    if t.dim() == 3 and c == 1:
        t = t.unsqueeze(1)
    elif t.dim() == 4 and t.shape[-1] == c and t.shape[1] != c:
        t = t.permute(0, 3, 1, 2)
    if tuple(t.shape[1:]) != (c, h, w):
        return None
    for i in (0, len(source) - 1):  # the in-memory copy must be what decoding gives
        if not torch.equal(t[i], source.decode(i)):
            return None
    return t.contiguous()


_OPENED: dict[str, dict] = {}  # the last configuration's opened datasets (the spec, the planner, the loader)


def _open(cfg: dict) -> dict:
    cls = dataset_class(cfg.get("class"))
    key = json.dumps({k: v for k, v in cfg.items() if k in ("class", "args", "root", "train_split", "val_split",
                                                           "test_split", "download")}, sort_keys=True, default=str)
    if key in _OPENED:
        return _OPENED[key]
    if cfg.get("val_split") and _train_style(cls):
        raise DatasetError(f"dataset.val_split: torchvision.{cls.__name__} has only train=True/False splits; "
                           "leave val_split unset (validation is carved from training)")
    parts = {"train": _construct(cls, cfg, "train"), "test": _construct(cls, cfg, "test")}
    if cfg.get("val_split"):
        parts["val"] = _construct(cls, cfg, "val")
    labels = {p: _labels(ds, f"torchvision {cls.__name__} ({p} split)") for p, ds in parts.items()}
    if len(parts["train"]) == 0:
        raise DatasetError(f"torchvision {cls.__name__}: its training split is empty")
    first, _ = parts["train"][0]
    first = _pil(first)
    classes = getattr(parts["train"], "classes", None)
    top = max(int(t.max()) for t in labels.values() if len(t)) if any(len(t) for t in labels.values()) else -1
    low = min(int(t.min()) for t in labels.values() if len(t))
    if low < 0:
        raise DatasetError(f"torchvision {cls.__name__}: label {low} is not a class index")
    names = tuple(str(c) for c in classes) if isinstance(classes, (list, tuple)) and len(classes) > top else None
    opened = {"cls": cls, "parts": parts, "labels": labels, "first_size": (first.height, first.width),
              "first_mode": first.mode, "class_names": names, "num_classes": len(names) if names else top + 1}
    _OPENED.clear()
    _OPENED[key] = opened
    return opened


@register_dataset("torchvision")
class TorchvisionDataset(DatasetEntry):
    options = {
        "class": Option(REQUIRED, ("string",), help=f"a torchvision.datasets class ({EXAMPLES}, ...)"),
        "args": Option({}, ("object",), help="further keyword arguments of the class (e.g. EMNIST's split)"),
        "train_split": Option("train", ("string",), help="split= of the training split (classes taking split=)"),
        "val_split": Option(None, ("string", "null"),
                            help="split= of a validation split (default: none, carved from training)"),
        "test_split": Option("test", ("string",), help="split= of the test split (classes taking split=)"),
        "image_size": Option(None, ("integer", "array", "null"), items=("integer",),
                             help="height and width images are resized to: N or [H, W] (default: as stored)"),
        "channels": Option(None, choices=(None, 1, 3), help="1 (grey) or 3 (RGB) (default: as stored)"),
        "mean": Option(None, ("array", "null"), items=("number",),
                       help="per-channel mean, [0, 1] scale (default: the training split's)"),
        "std": Option(None, ("array", "null"), items=("number",), help="per-channel std, [0, 1] scale"),
        **AUGMENT_OPTIONS,
        **STREAM_OPTIONS,
    }
    runtime_options = tuple(STREAM_OPTIONS)
    streamable = True

    def _geometry(self, cfg: dict, opened: dict) -> tuple[int, tuple[int, int]]:
        size = size_option(cfg.get("image_size"), "image_size") or opened["first_size"]
        channels = cfg.get("channels") or channels_of_mode(opened["first_mode"])
        return int(channels), size

    def info(self, cfg: dict) -> DatasetInfo:
        opened = _open(cfg)
        channels, size = self._geometry(cfg, opened)
        mean, std = stats_option(cfg, channels)
        shape = (channels, *size)
        name = opened["cls"].__name__
        split = not _train_style(opened["cls"])
        prov = {"test": f"torchvision {name}'s " + (f"split={cfg.get('test_split', 'test')!r}" if split
                                                    else "train=False split")}
        if "val" in opened["parts"]:
            prov["val"] = f"torchvision {name}'s split={cfg['val_split']!r}"
        return DatasetInfo(kind="image", input_shape=shape, num_classes=opened["num_classes"],
                           class_names=opened["class_names"], train_size=len(opened["labels"]["train"]),
                           test_size=len(opened["labels"]["test"]),
                           val_size=len(opened["labels"]["val"]) if "val" in opened["labels"] else None,
                           mean=mean, std=std, augmentation=augmentation_of(cfg, shape), provenance=prov)

    def load(self, cfg: dict) -> Loaded:
        opened = _open(cfg)
        channels, size = self._geometry(cfg, opened)
        out = {}
        for part, ds in opened["parts"].items():
            source = TorchvisionImages(ds, opened["labels"][part], size, channels)
            source.array = _array_of(ds, source)
            out[part] = source
        return Loaded(train=out["train"], test=out["test"], val=out.get("val"))
