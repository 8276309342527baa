"""Datasets for one trial: the registry of dataset kinds, splits, and batches on the device.

Public API (what the loop, the spec, the planner, the benchmark and plug-ins use):

* ``register_dataset(name)``: class decorator of a :class:`DatasetEntry` (the built-in
  entries use it too); ``available_datasets()``; ``dataset_options(name)`` -> the
  entry's own ``{option: trainables.options.Option}`` (the spec adds
  ``COMMON_OPTIONS``: name, root, download, val_fraction, split_seed, train_subset);
* ``dataset_facts(cfg)`` -> :class:`DatasetFacts`: input shape, classes, kind, split
  sizes, normalisation, augmentation, resident or streamed, known without loading;
* ``load_dataset(cfg)`` -> :class:`Splits`; ``check_dataset(cfg)`` -> problems (preflight);
  ``describe(splits)``;
* ``batches(x, y, batch_size, ...)`` (resident :class:`DeviceBatches` or streamed
  :class:`StreamBatches`), ``to_device``, ``random_crop_flip``.

Built-in entries, one file each: ``mnist1d`` (embedded, generated), ``cifar10`` /
``cifar100`` (torchvision's files, device-resident), ``synthetic_image`` (no disk),
``image_folder`` (a local folder, one sub-folder per class), ``torchvision`` (any
classification class of ``torchvision.datasets`` by name). Validation is always
carved from the dataset's *training* split with a permutation seeded by
``split_seed`` (unless the dataset has its own validation split); ``test`` is only
reported, never used for selection.
"""

from .batching import CROP_PADDING, DeviceBatches, StreamBatches, batches, random_crop_flip, to_device
from .registry import (AUGMENT_OPTIONS, COMMON_OPTIONS, DEFAULT_MEMORY_BUDGET_GB, DEFAULT_ROOT, STREAM_OPTIONS,
                       Augmentation, DatasetEntry, DatasetError, DatasetFacts, DatasetInfo, DatasetNotFound, Loaded,
                       Splits, augmentation_of, available_datasets, check_dataset, dataset_facts, dataset_options,
                       describe, identity_config, load_dataset, register_dataset, root_of)
from .sources import ImageSource, LazyImages, channels_of_mode, to_uint8_chw

# the built-in entries register themselves on import, through the same decorator as a plug-in
from . import mnist1d_data, cifar, synthetic, image_folder, torchvision_classes  # noqa: E402,F401  isort: skip
from .cifar import CIFAR10_MEAN, CIFAR10_STD, CIFAR100_MEAN, CIFAR100_STD  # noqa: E402
from .image_folder import size_option, stats_option  # noqa: E402

__all__ = [
    "AUGMENT_OPTIONS", "Augmentation", "CIFAR100_MEAN", "CIFAR100_STD", "CIFAR10_MEAN", "CIFAR10_STD",
    "COMMON_OPTIONS", "CROP_PADDING", "DEFAULT_MEMORY_BUDGET_GB", "DEFAULT_ROOT", "DatasetEntry",
    "DatasetError", "DatasetFacts", "DatasetInfo", "DatasetNotFound", "DeviceBatches", "ImageSource", "LazyImages",
    "Loaded", "STREAM_OPTIONS", "Splits", "StreamBatches", "augmentation_of", "available_datasets", "batches",
    "channels_of_mode", "check_dataset", "dataset_facts", "dataset_options", "describe", "identity_config",
    "load_dataset", "random_crop_flip", "register_dataset", "root_of", "size_option", "stats_option", "to_device",
    "to_uint8_chw",
]
