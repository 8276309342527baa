"""``cifar10`` / ``cifar100``: the CIFAR datasets (Krizhevsky 2009) from a local root, device-resident.

Read with ``torchvision.datasets`` from ``root`` (the extracted
``cifar-10-batches-py`` / ``cifar-100-python`` folder there; ``download: true``
fetches it, one trial at a time under a file lock). Images, uint8 ``(N, 3, 32, 32)``;
50,000 training and 10,000 test images; normalised with the standard per-channel
statistics of the training sets; augmented with the standard random crop (4-pixel
zero padding) and horizontal flip. Always resident: the whole split lives on the
trial's device (150 MB of uint8) and batches are cut, augmented and normalised there.
"""

from __future__ import annotations

import os

import numpy as np
import torch

from .registry import (AUGMENT_OPTIONS, DatasetEntry, DatasetInfo, DatasetNotFound, Loaded, augmentation_of,
                       register_dataset, root_of)

# Standard per-channel statistics of the CIFAR training sets, on the [0, 1] scale.
CIFAR10_MEAN = (0.4914, 0.4822, 0.4465)
CIFAR10_STD = (0.2470, 0.2435, 0.2616)
CIFAR100_MEAN = (0.5071, 0.4865, 0.4409)
CIFAR100_STD = (0.2673, 0.2564, 0.2762)

CIFAR10_CLASSES = ("airplane", "automobile", "bird", "cat", "deer", "dog", "frog", "horse", "ship", "truck")
# the fine labels of CIFAR-100, in label order (the dataset's meta file lists them so)
CIFAR100_CLASSES = tuple("""
apple aquarium_fish baby bear beaver bed bee beetle bicycle bottle bowl boy bridge bus butterfly camel can castle
caterpillar cattle chair chimpanzee clock cloud cockroach couch crab crocodile cup dinosaur dolphin elephant flatfish
forest fox girl hamster house kangaroo keyboard lamp lawn_mower leopard lion lizard lobster man maple_tree motorcycle
mountain mouse mushroom oak_tree orange orchid otter palm_tree pear pickup_truck pine_tree plain plate poppy porcupine
possum rabbit raccoon ray road rocket rose sea seal shark shrew skunk skyscraper snail snake spider squirrel streetcar
sunflower sweet_pepper table tank telephone television tiger tractor train trout tulip turtle wardrobe whale
willow_tree wolf woman worm""".split())
assert len(CIFAR100_CLASSES) == 100


class _Cifar(DatasetEntry):
    """The CIFAR datasets' shared entry; the subclasses name the torchvision class and the facts."""

    options = dict(AUGMENT_OPTIONS)
    tv_name = ""
    num_classes = 0
    mean: tuple = ()
    std: tuple = ()
    class_names: tuple = ()
    #: the sizes of the dataset's own splits
    train_size = 50_000
    test_size = 10_000

    def tv_class(self):
        from torchvision import datasets

        return getattr(datasets, self.tv_name)

    def info(self, cfg: dict) -> DatasetInfo:
        return DatasetInfo(kind="image", input_shape=(3, 32, 32), num_classes=self.num_classes,
                           train_size=self.train_size, test_size=self.test_size, class_names=self.class_names,
                           mean=self.mean, std=self.std, augmentation=augmentation_of(cfg, (3, 32, 32)),
                           provenance={"test": f"{self.name}'s own test split"})

    def missing_files(self, cfg: dict) -> tuple[str, list[str]]:
        """(the extracted CIFAR folder, the files of it that are not there)."""
        cls = self.tv_class()
        folder = os.path.join(root_of(cfg), cls.base_folder)
        expected = [f for f, _ in cls.train_list + cls.test_list] + [cls.meta["filename"]]
        return folder, [f for f in expected if not os.path.isfile(os.path.join(folder, f))]

    def missing(self, cfg: dict) -> str | None:
        """Why the CIFAR files cannot be read (None when present, or when the spec asks to download)."""
        cls = self.tv_class()
        root = root_of(cfg)
        folder, missing = self.missing_files(cfg)
        if missing and not cfg.get("download", False):
            return (f"{self.name}: dataset files not found; expected the extracted '{cls.base_folder}' folder at "
                    f"{folder} (missing: {', '.join(missing)}). Set `download: true` in the dataset section "
                    f"of the spec to fetch them into root={root}, or point `root` at an existing copy.")
        return None

    def check(self, cfg: dict) -> list[str]:
        """The files are present (or the spec asks to download them)."""
        problem = self.missing(cfg)
        return [problem] if problem else []

    def load(self, cfg: dict) -> Loaded:
        cls = self.tv_class()
        root = root_of(cfg)
        problem = self.missing(cfg)
        if problem:
            raise DatasetNotFound(problem)
        if self.missing_files(cfg)[1]:  # only with `download: true` (else refused above)
            os.makedirs(root, exist_ok=True)
            from filelock import FileLock  # parallel trials: one downloads, the others wait

            with FileLock(os.path.join(root, f".{self.name}.download.lock")):
                cls(root, train=True, download=True)

        def to_tensors(ds):
            x = torch.from_numpy(np.ascontiguousarray(ds.data)).permute(0, 3, 1, 2).contiguous()
            y = torch.as_tensor(ds.targets, dtype=torch.int64)
            return x, y

        return Loaded(train=to_tensors(cls(root, train=True, download=False)),
                      test=to_tensors(cls(root, train=False, download=False)))


@register_dataset("cifar10")
class Cifar10(_Cifar):
    tv_name, num_classes, mean, std, class_names = "CIFAR10", 10, CIFAR10_MEAN, CIFAR10_STD, CIFAR10_CLASSES


@register_dataset("cifar100")
class Cifar100(_Cifar):
    tv_name, num_classes, mean, std, class_names = "CIFAR100", 100, CIFAR100_MEAN, CIFAR100_STD, CIFAR100_CLASSES
