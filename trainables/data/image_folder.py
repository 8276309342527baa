"""``image_folder``: a local folder of images, one sub-folder per class.

Layout (the one ``torchvision.datasets.ImageFolder`` reads)::

    <root>/train/<class>/*.png|jpg|...   required; the classes are train/'s sub-folders, sorted
    <root>/val/<class>/...               optional: the validation split (else carved from train)
    <root>/test/<class>/...              optional: the test split (else carved from train, below)

Images (PNG, JPEG, BMP, GIF, WebP, PPM/PGM, TIFF; anywhere below a class folder) are
decoded with PIL, converted to ``channels`` (1: grey, 3: RGB; default: the first
training image's) and resized (bilinear, no crop) to ``image_size`` where they differ
(default: the first training image's size). ``val/`` and ``test/`` may lack classes but
not add any. Labels come from the folder names, so the data need not be decoded to
know the splits, the classes or the shape.

Without ``test/`` a test split of ``test_fraction`` (default 0.2) of ``train/`` is held
out first, with a fixed seed that does not depend on ``split_seed`` (the same images
whatever the study), and it is only reported, as a folder's test split would be;
validation is then carved from the rest (``val_fraction``, ``split_seed``) unless
``val/`` exists. ``test_fraction: 0`` means no test split at all.

Normalisation: ``mean``/``std`` when given, else the training split's per-channel
statistics. The folder is decoded once into memory (worker processes) when its
decoded size fits ``memory_budget_gb``; otherwise (or with ``stream: true``) every
epoch streams from disk, decoded by ``num_workers`` processes (see
``trainables.data.batching``).
"""

from __future__ import annotations

import os

import torch

from ..options import Option
from .registry import (AUGMENT_OPTIONS, STREAM_OPTIONS, DatasetEntry, DatasetError, DatasetInfo, DatasetNotFound,
                       Loaded, augmentation_of, register_dataset)
from .sources import ImageSource, channels_of_mode, to_uint8_chw

EXTENSIONS = (".png", ".jpg", ".jpeg", ".bmp", ".gif", ".webp", ".ppm", ".pgm", ".pbm", ".tif", ".tiff")
#: seed of the test carve of a folder without test/ (fixed: the test images never depend on the study)
TEST_CARVE_SEED = 20_240_601


class FileImages(ImageSource):
    """Image files decoded one at a time with PIL, at a fixed size and channel count."""

    def __init__(self, paths: list[str], labels: torch.Tensor, size: tuple[int, int], channels: int):
        self.paths = list(paths)
        self.labels = labels
        self.size = (int(size[0]), int(size[1]))
        self.channels = int(channels)
        self.sample_shape = (self.channels, *self.size)

    def __getitem__(self, i: int) -> torch.Tensor:
        from PIL import Image

        path = self.paths[i]
        try:
            with Image.open(path) as image:
                return to_uint8_chw(image, self.channels, self.size)
        except (OSError, ValueError, SyntaxError) as exc:  # PIL's errors for a broken or foreign file
            raise DatasetError(f"{path}: cannot decode the image: {exc}") from None


def _is_image(name: str) -> bool:
    return not name.startswith(".") and name.lower().endswith(EXTENSIONS)


def _files_below(folder: str) -> list[str]:
    out = []
    for dirpath, dirnames, filenames in os.walk(folder, followlinks=True):
        dirnames[:] = sorted(d for d in dirnames if not d.startswith("."))
        out.extend(os.path.join(dirpath, f) for f in sorted(filenames) if _is_image(f))
    return out


def list_split(folder: str, classes: list[str] | None = None) -> tuple[list[str], list[str], list[int]]:
    """(classes, image paths, labels) of one split folder; ``classes`` given: labels index it
    (the split's class folders must be among them)."""
    try:
        entries = sorted(os.scandir(folder), key=lambda e: e.name)
    except OSError as exc:
        raise DatasetNotFound(f"image_folder: cannot read {folder}: {exc.strerror or exc}") from None
    found = [e.name for e in entries if e.is_dir() and not e.name.startswith(".")]
    loose = [e.name for e in entries if e.is_file() and _is_image(e.name)]
    if loose:
        raise DatasetError(f"image_folder: {folder} holds images outside class folders ({loose[0]}, ...); "
                           "put each class's images in a sub-folder named after the class")
    is_train = classes is None
    if is_train:
        classes = found
        if not classes:
            raise DatasetError(f"image_folder: {folder} has no class folders (one sub-folder per class)")
    else:
        extra = sorted(set(found) - set(classes))
        if extra:
            raise DatasetError(f"image_folder: {folder} has class folders that train/ lacks: {', '.join(extra[:5])}")
    paths, labels = [], []
    lookup = {c: i for i, c in enumerate(classes)}
    for name in found:
        files = _files_below(os.path.join(folder, name))
        if not files and is_train:
            raise DatasetError(f"image_folder: class folder {os.path.join(folder, name)} has no images "
                               f"({', '.join(EXTENSIONS)})")
        paths.extend(files)
        labels.extend([lookup[name]] * len(files))
    return classes, paths, labels


def size_option(value, where: str) -> tuple[int, int] | None:
    """An image-size option (an int or [height, width]) as (H, W); None stays None."""
    if value is None:
        return None
    if isinstance(value, int) and not isinstance(value, bool):
        value = [value, value]
    if (not isinstance(value, (list, tuple)) or len(value) != 2
            or not all(isinstance(v, int) and not isinstance(v, bool) and v > 0 for v in value)):
        raise DatasetError(f"dataset.{where} must be a positive integer or [height, width]; got {value!r}")
    return int(value[0]), int(value[1])


def stats_option(cfg: dict, channels: int) -> tuple[tuple | None, tuple | None]:
    """The `mean` / `std` options of an image entry, checked against its channel count (None:
    computed on the training split)."""
    mean, std = cfg.get("mean"), cfg.get("std")
    if (mean is None) != (std is None):
        raise DatasetError("dataset.mean and dataset.std are given together (or neither)")
    if mean is None:
        return None, None
    for key, value in (("mean", mean), ("std", std)):
        if not isinstance(value, (list, tuple)) or len(value) != channels:
            raise DatasetError(f"dataset.{key} must list {channels} per-channel value(s) on the [0, 1] scale; "
                               f"got {value!r}")
    if any(float(s) <= 0 for s in std):
        raise DatasetError(f"dataset.std must be positive; got {std!r}")
    return tuple(float(v) for v in mean), tuple(float(v) for v in std)


@register_dataset("image_folder")
class ImageFolder(DatasetEntry):
    options = {
        "image_size": Option(None, ("integer", "array", "null"), items=("integer",),
                             help="height and width every image is resized to: N or [H, W] "
                                  "(default: the first training image's size)"),
        "channels": Option(None, choices=(None, 1, 3),
                           help="1 (grey) or 3 (RGB) (default: the first training image's)"),
        "test_fraction": Option(0.2, ("number",), minimum=0.0, maximum=0.5,
                                help="share of train/ held out as the test split when there is no test/"),
        "mean": Option(None, ("array", "null"), items=("number",), help="per-channel mean, [0, 1] scale "
                                                                       "(default: the training split's)"),
        "std": Option(None, ("array", "null"), items=("number",), help="per-channel std, [0, 1] scale"),
        **AUGMENT_OPTIONS,
        **STREAM_OPTIONS,
    }
    runtime_options = tuple(STREAM_OPTIONS)
    streamable = True

    def _layout(self, cfg: dict):
        root = cfg.get("root")
        if not root:
            raise DatasetError("image_folder: dataset.root is required (the folder holding train/, and optionally "
                               "val/ and test/)")
        root = os.path.abspath(os.path.expanduser(str(root)))
        train_dir = os.path.join(root, "train")
        if not os.path.isdir(train_dir):
            raise DatasetNotFound(f"image_folder: {train_dir} not found (one sub-folder per class under train/)")
        classes, paths, labels = list_split(train_dir)
        splits = {"train": (paths, labels)}
        for name in ("val", "test"):
            folder = os.path.join(root, name)
            if os.path.isdir(folder):
                splits[name] = list_split(folder, classes)[1:]
        frac = float(cfg.get("test_fraction", 0.2))
        if "test" not in splits:
            n = len(paths)
            n_test = int(round(n * frac))
            perm = torch.randperm(n, generator=torch.Generator().manual_seed(TEST_CARVE_SEED))
            test_rows, keep = sorted(perm[:n_test].tolist()), sorted(perm[n_test:].tolist())
            splits["test"] = ([paths[i] for i in test_rows], [labels[i] for i in test_rows])
            splits["train"] = ([paths[i] for i in keep], [labels[i] for i in keep])
        if not splits["train"][0]:
            raise DatasetError(f"image_folder: {train_dir} leaves no training images")
        return root, classes, splits

    def _geometry(self, cfg: dict, first: str) -> tuple[int, tuple[int, int]]:
        size = size_option(cfg.get("image_size"), "image_size")
        channels = cfg.get("channels")
        if size is None or channels is None:
            from PIL import Image

            try:
                with Image.open(first) as image:  # the header only
                    w, h = image.size
                    mode = image.mode
            except (OSError, ValueError, SyntaxError) as exc:
                raise DatasetError(f"{first}: cannot read the image: {exc}") from None
            size = size or (h, w)
            channels = channels or channels_of_mode(mode)
        return int(channels), size

    def info(self, cfg: dict) -> DatasetInfo:
        root, classes, splits = self._layout(cfg)
        channels, size = self._geometry(cfg, splits["train"][0][0])
        mean, std = stats_option(cfg, channels)
        shape = (channels, *size)
        has_test = os.path.isdir(os.path.join(root, "test"))
        frac = float(cfg.get("test_fraction", 0.2))
        prov = {"test": f"{os.path.join(root, 'test')}/" if has_test else
                (f"held out from train/ (test_fraction {frac:g}, a fixed seed; there is no test/ folder)" if frac
                 else "none (no test/ folder and test_fraction 0)")}
        if "val" in splits:
            prov["val"] = f"{os.path.join(root, 'val')}/"
        return DatasetInfo(kind="image", input_shape=shape, num_classes=len(classes), class_names=tuple(classes),
                           train_size=len(splits["train"][0]), test_size=len(splits["test"][0]),
                           val_size=len(splits["val"][0]) if "val" in splits else None, mean=mean, std=std,
                           augmentation=augmentation_of(cfg, shape), provenance=prov)

    def load(self, cfg: dict) -> Loaded:
        _, classes, splits = self._layout(cfg)
        channels, size = self._geometry(cfg, splits["train"][0][0])

        def source(part):
            paths, labels = part
            return FileImages(paths, torch.tensor(labels, dtype=torch.int64), size, channels)

        return Loaded(train=source(splits["train"]), test=source(splits["test"]),
                      val=source(splits["val"]) if "val" in splits else None, num_classes=len(classes),
                      class_names=tuple(classes))
