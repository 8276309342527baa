"""Batches on the trial's device, from resident tensors or streamed from disk, through one interface.

:func:`batches` is what the loop iterates: :class:`DeviceBatches` over tensors that
live on the device (moved there once by :func:`to_device`), or
:class:`StreamBatches` over a :class:`~trainables.data.sources.LazyImages` split,
whose images worker processes decode batch by batch. Both draw the epoch's
permutation and every crop/flip from the same explicit ``torch.Generator`` in the
same sequence, and augment and normalise on the device the same way, so the same
data give the same batches either way. With ``with_index=True`` a batch is
``(x, y, index)``: each sample's row in the split (CRD's memory bank is indexed by it).
"""

from __future__ import annotations

import math
from typing import Iterator

import torch
import torch.nn.functional as F

from .registry import Augmentation
from .sources import LazyImages

Tensor = torch.Tensor
XY = tuple[Tensor, Tensor]

CROP_PADDING = 4


def to_device(split_xy, device: torch.device | str):
    """Move one ``(x, y)`` split to ``device`` once, for :func:`batches` (a streamed split's
    images stay on disk; its labels move)."""
    x, y = split_xy
    device = torch.device(device)
    non_blocking = device.type == "cuda"
    if isinstance(x, LazyImages):
        return x, y.to(device, non_blocking=non_blocking)
    return x.to(device, non_blocking=non_blocking), y.to(device, non_blocking=non_blocking)


def _draw(fn, *args, generator: torch.Generator | None, device: torch.device, **kw) -> Tensor:
    """Call a random factory with ``generator`` on its own device, then move to ``device``."""
    gen_device = generator.device if generator is not None else device
    return fn(*args, generator=generator, device=gen_device, **kw).to(device)


def random_crop_flip(
    x: Tensor, generator: torch.Generator | None, padding: int = CROP_PADDING, flip: bool = True
) -> Tensor:
    """Random crop (size unchanged, zero padding ``padding``) and horizontal flip, batched.

    One zero-padded tensor, per-sample offsets drawn from ``generator`` and a single
    gather: rows ``oy + i`` and columns ``ox + j`` (reversed for flipped samples).
    ``padding=0`` crops nothing, ``flip=False`` flips nothing (and neither draws).
    Works on any dtype (applied to raw uint8 pixels before normalisation).
    """
    b, c, h, w = x.shape
    dev = x.device
    if padding <= 0 and not flip:
        return x
    padded = F.pad(x, (padding, padding, padding, padding)) if padding > 0 else x
    if padding > 0:
        offsets = _draw(torch.randint, 0, 2 * padding + 1, (b, 2), generator=generator, device=dev)
    else:
        offsets = torch.zeros((b, 2), dtype=torch.long, device=dev)
    cols_idx = torch.arange(w, device=dev)
    if flip:
        flipped = _draw(torch.rand, (b,), generator=generator, device=dev) < 0.5
        cols_idx = torch.where(flipped[:, None], cols_idx.flip(0)[None, :], cols_idx[None, :])
    else:
        cols_idx = cols_idx[None, :].expand(b, w)
    rows = offsets[:, :1] + torch.arange(h, device=dev)  # (B, H)
    cols = offsets[:, 1:] + cols_idx  # (B, W)
    bi = torch.arange(b, device=dev)[:, None, None, None]
    ci = torch.arange(c, device=dev)[None, :, None, None]
    return padded[bi, ci, rows[:, None, :, None], cols[:, None, None, :]]


def _augmentation(augment) -> Augmentation | None:
    if isinstance(augment, Augmentation):
        return augment
    return Augmentation(CROP_PADDING, True) if augment else None


class DeviceBatches:
    """Batches of ``(x, y)`` (``(x, y, index)`` with ``with_index``) made on the device the tensors live on.

    Each ``iter()`` is one epoch: a permutation from ``generator`` when ``shuffle``,
    then per batch an index into the resident tensors. Images are converted
    uint8 -> float32 on [0, 1], augmented when ``augment`` (True: random crop with 4-pixel
    zero padding + horizontal flip; or an :class:`Augmentation`; vectorised, randomness
    from ``generator``) and normalised by ``mean``/``std``; signals are only normalised.
    """

    def __init__(
        self,
        x,
        y: Tensor,
        batch_size: int,
        *,
        shuffle: bool,
        generator: torch.Generator | None,
        augment,
        mean: Tensor,
        std: Tensor,
        drop_last: bool = False,
        channels_last: bool = False,
        with_index: bool = False,
    ):
        if isinstance(x, LazyImages) and not isinstance(self, StreamBatches):
            raise TypeError("a streamed split's images are decoded by StreamBatches; use batches(x, y, ...)")
        if len(x) != len(y):
            raise ValueError(f"x and y differ in length: {len(x)} vs {len(y)}")
        if batch_size <= 0:
            raise ValueError(f"batch_size must be positive, got {batch_size}")
        self.x, self.y = x, y
        self.batch_size = int(batch_size)
        self.shuffle = shuffle
        self.generator = generator
        self.is_image = x.dim() == 4
        self.augmentation = _augmentation(augment) if self.is_image else None
        self.augment = self.augmentation is not None
        self.drop_last = drop_last
        self.channels_last = channels_last and self.is_image
        self.with_index = with_index
        self.device = y.device
        self.mean = torch.as_tensor(mean, dtype=torch.float32).to(self.device)
        self.std = torch.as_tensor(std, dtype=torch.float32).to(self.device)

    def __len__(self) -> int:
        n = len(self.y)
        return n // self.batch_size if self.drop_last else math.ceil(n / self.batch_size)

    @property
    def num_samples(self) -> int:
        return len(self.y)

    def _prepare(self, xb: Tensor) -> Tensor:
        if self.augmentation is not None:
            xb = random_crop_flip(xb, self.generator, self.augmentation.padding, self.augmentation.flip)
        if xb.dtype == torch.uint8:  # .float() copies, so in-place is safe
            xb = xb.float().mul_(1.0 / 255.0).sub_(self.mean).div_(self.std)
        else:  # may be a view of the resident data: never in-place
            xb = (xb.float() - self.mean) / self.std
        if self.channels_last:
            xb = xb.contiguous(memory_format=torch.channels_last)
        return xb

    def _plan(self) -> list[tuple[int, int, Tensor | None]]:
        """The epoch's batches: (lo, hi, rows or None for the contiguous rows lo:hi)."""
        n = len(self.y)
        order = _draw(torch.randperm, n, generator=self.generator, device=self.device) if self.shuffle else None
        plan = []
        for i in range(len(self)):
            lo, hi = i * self.batch_size, min((i + 1) * self.batch_size, n)
            plan.append((lo, hi, None if order is None else order[lo:hi]))
        return plan

    def _images(self, plan) -> Iterator[Tensor]:
        for lo, hi, rows in plan:
            yield self.x[lo:hi] if rows is None else self.x[rows]

    def __iter__(self) -> Iterator[tuple[Tensor, ...]]:
        plan = self._plan()
        for (lo, hi, rows), xb in zip(plan, self._images(plan)):
            yb = self.y[lo:hi] if rows is None else self.y[rows]
            if self.with_index:
                index = torch.arange(lo, hi, device=self.device) if rows is None else rows
                yield self._prepare(xb), yb, index
            else:
                yield self._prepare(xb), yb


class StreamBatches(DeviceBatches):
    """:class:`DeviceBatches` over a streamed split: the images of each batch are decoded by
    worker processes (``torch.utils.data.DataLoader``, pinned memory on CUDA) and copied to
    the device of ``y``; order, augmentation and normalisation are the resident path's."""

    def _images(self, plan) -> Iterator[Tensor]:
        rows = [torch.arange(lo, hi) if r is None else r for lo, hi, r in plan]
        pin = self.device.type == "cuda"
        for xb in self.x.batches(rows, pin=pin):
            yield xb.to(self.device, non_blocking=pin)


def batches(x, y: Tensor, batch_size: int, **kw) -> DeviceBatches:
    """Batches of one split, resident (:class:`DeviceBatches`) or streamed
    (:class:`StreamBatches`, when ``x`` is a :class:`LazyImages`); the same keywords."""
    cls = StreamBatches if isinstance(x, LazyImages) else DeviceBatches
    return cls(x, y, batch_size, **kw)
