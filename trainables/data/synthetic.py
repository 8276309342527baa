"""``synthetic_image``: random CIFAR-shaped images from a fixed seed, 10 classes, no disk.

For benchmarks and tests: each class has a coarse random 4x4 colour pattern
(upsampled to 32x32); an image is half its class's pattern, half uniform noise, so
the task is learnable yet random. ``synthetic_size`` training images and a quarter
as many test images, uint8 ``(N, 3, 32, 32)``; normalised with the training split's
statistics; augmented like CIFAR.
"""

from __future__ import annotations

import torch

from ..options import Option
from .registry import AUGMENT_OPTIONS, DatasetEntry, DatasetInfo, Loaded, augmentation_of, register_dataset

SYNTHETIC_SEED = 1234
SYNTHETIC_CLASSES = 10


def _synthetic_images(n: int, templates: torch.Tensor, gen: torch.Generator):
    y = torch.randint(0, SYNTHETIC_CLASSES, (n,), generator=gen, dtype=torch.int64)
    noise = torch.randint(0, 256, (n, 3, 32, 32), generator=gen, dtype=torch.int16)
    x = (templates[y] + noise) // 2  # half a class pattern, half noise: learnable, still random
    return x.to(torch.uint8), y


@register_dataset("synthetic_image")
class SyntheticImage(DatasetEntry):
    options = {
        "synthetic_size": Option(2048, ("integer",), minimum=64, help="training images (test: a quarter as many)"),
        **AUGMENT_OPTIONS,
    }

    @staticmethod
    def _sizes(cfg: dict) -> tuple[int, int]:
        n_train = int(cfg.get("synthetic_size", 2048))
        return n_train, max(1, n_train // 4)

    def info(self, cfg: dict) -> DatasetInfo:
        n_train, n_test = self._sizes(cfg)
        return DatasetInfo(kind="image", input_shape=(3, 32, 32), num_classes=SYNTHETIC_CLASSES,
                           train_size=n_train, test_size=n_test,
                           class_names=tuple(f"pattern_{i}" for i in range(SYNTHETIC_CLASSES)),
                           augmentation=augmentation_of(cfg, (3, 32, 32)),
                           provenance={"test": "generated (a quarter of synthetic_size)"})

    def load(self, cfg: dict) -> Loaded:
        n_train, n_test = self._sizes(cfg)
        gen = torch.Generator().manual_seed(SYNTHETIC_SEED)
        coarse = torch.randint(0, 256, (SYNTHETIC_CLASSES, 3, 4, 4), generator=gen, dtype=torch.int16)
        templates = coarse.repeat_interleave(8, dim=2).repeat_interleave(8, dim=3)
        return Loaded(train=_synthetic_images(n_train, templates, gen), test=_synthetic_images(n_test, templates, gen))

    def check(self, cfg: dict) -> list[str]:
        return []
