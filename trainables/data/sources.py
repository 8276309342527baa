"""Images decoded one at a time: the sources of file-backed datasets, and their lazy views.

An :class:`ImageSource` is a ``torch.utils.data.Dataset`` whose item ``i`` is one
decoded uint8 image ``(C, H, W)`` at the dataset's fixed size, with all labels known
up front (``labels``: they come from folder names or metadata, never from decoding).
A resident dataset decodes its sources once into tensors (:func:`decode_all`, with
worker processes); a streamed one keeps :class:`LazyImages` views of them that
decode the batches of each epoch in ``torch.utils.data.DataLoader`` workers.

Decoding is deterministic (workers draw no random numbers): augmentation and the
epoch's order happen in the trial's process with the trial's generator, as for
resident tensors, so the two paths give the same batches.
"""

from __future__ import annotations

import bisect
import logging
import math
import time
from typing import Iterator, Sequence

import torch
from torch.utils.data import DataLoader, Dataset

log = logging.getLogger(__name__)

Tensor = torch.Tensor

#: a decode in batches of this many images
DECODE_BATCH = 256
#: the training split's per-channel statistics are exact when it decodes in at most this many bytes;
#: else they are estimated on a seeded sample of STATS_SAMPLES images
EXACT_STATS_BYTES = 512 * 2**20
STATS_SAMPLES = 10_000
STATS_SEED = 0


class ImageSource(Dataset):
    """Base of a file-backed split: ``labels`` (int64, one per sample), ``sample_shape``
    ``(C, H, W)``, and ``__getitem__(i)`` -> the decoded uint8 image ``i``."""

    labels: Tensor
    sample_shape: tuple[int, ...]

    def __len__(self) -> int:
        return len(self.labels)

    def __getitem__(self, i: int) -> Tensor:  # pragma: no cover - subclasses decode
        raise NotImplementedError


class ConcatSource(ImageSource):
    """Several sources as one (global index = offset of its source + local index), so one
    worker pool serves a trial's train, validation and test splits."""

    def __init__(self, sources: Sequence[ImageSource], num_workers: int = 0):
        self.sources = list(sources)
        self.offsets = [0]
        for s in self.sources:
            self.offsets.append(self.offsets[-1] + len(s))
        self.labels = torch.cat([s.labels for s in self.sources]) if self.sources else torch.zeros(0, dtype=torch.int64)
        self.sample_shape = self.sources[0].sample_shape
        self.num_workers = int(num_workers)

    def __getitem__(self, i: int) -> Tensor:
        k = bisect.bisect_right(self.offsets, i) - 1
        return self.sources[k][i - self.offsets[k]]


def _loader(source: Dataset, batches: list[list[int]], num_workers: int, pin: bool) -> DataLoader:
    return DataLoader(source, batch_sampler=batches, num_workers=num_workers, pin_memory=pin,
                      prefetch_factor=4 if num_workers > 0 else None)


def decode_all(source: ImageSource, num_workers: int = 0, what: str = "images",
               index: Tensor | None = None) -> Tensor:
    """Every image of ``source`` (or its rows ``index``, in that order) decoded into one
    uint8 tensor ``(N, C, H, W)``, with ``num_workers`` processes (0: in this one)."""
    if index is None and isinstance(getattr(source, "array", None), Tensor):
        return source.array  # the source's images are already in memory, decoded
    rows = torch.arange(len(source)) if index is None else index
    n = len(rows)
    out = torch.empty((n, *source.sample_shape), dtype=torch.uint8)
    if n == 0:
        return out
    t0, done, step = time.perf_counter(), 0, max(1, math.ceil(n / 10))
    batches = [rows[i:i + DECODE_BATCH].tolist() for i in range(0, n, DECODE_BATCH)]
    next_log = step
    for xb in _loader(source, batches, num_workers, pin=False):
        out[done:done + len(xb)] = xb
        done += len(xb)
        if done >= next_log and n > 10 * DECODE_BATCH:
            log.info("%s: decoded %d/%d images (%.0f s)", what, done, n, time.perf_counter() - t0)
            next_log += step
    return out


class LazyImages:
    """Rows ``index`` of a source, decoded only when batched: what a streamed split's ``x`` is.

    Indexing with a tensor, a list or a slice gives another view (as indexing a tensor
    gives a tensor); :meth:`to_tensor` decodes the view; :meth:`batches` decodes the
    view's rows ``order[lo:hi]`` batch by batch in worker processes.
    """

    dtype = torch.uint8
    device = torch.device("cpu")

    def __init__(self, source: ConcatSource | ImageSource, index: Tensor):
        self.source = source
        self.index = torch.as_tensor(index, dtype=torch.int64).reshape(-1)

    def __len__(self) -> int:
        return len(self.index)

    @property
    def shape(self) -> torch.Size:
        return torch.Size((len(self.index), *self.source.sample_shape))

    def dim(self) -> int:
        return 1 + len(self.source.sample_shape)

    @property
    def num_workers(self) -> int:
        return int(getattr(self.source, "num_workers", 0))

    def __getitem__(self, idx) -> "LazyImages":
        if isinstance(idx, int):
            idx = [idx]
        return LazyImages(self.source, self.index[idx])

    def to_tensor(self) -> Tensor:
        return decode_all(self.source, self.num_workers, index=self.index)

    def batches(self, rows: Sequence[Tensor], pin: bool = False) -> Iterator[Tensor]:
        """The uint8 images of each list of local rows in ``rows``, in that order."""
        plan = [self.index[r.cpu()].tolist() for r in rows]
        if not plan:
            return iter(())
        return iter(_loader(self.source, plan, self.num_workers, pin))


def source_stats(x: LazyImages) -> tuple[Tensor, Tensor]:
    """Per-channel mean/std ``(C, 1, 1)`` on the [0, 1] scale of a streamed training split.

    Exact (the resident path's computation on the same pixels) when the split decodes in
    at most EXACT_STATS_BYTES; otherwise estimated on a seeded sample of STATS_SAMPLES
    images, accumulated in float64 batch by batch.
    """
    from .registry import channel_stats

    n = len(x)
    if n == 0:
        raise ValueError("cannot compute normalisation statistics of an empty training split")
    per_image = math.prod(x.source.sample_shape)
    if n * per_image <= EXACT_STATS_BYTES:
        return channel_stats(x.to_tensor(), "image")
    gen = torch.Generator().manual_seed(STATS_SEED)
    rows = torch.randperm(n, generator=gen)[:STATS_SAMPLES]
    c = x.source.sample_shape[0]
    total, sq, count = torch.zeros(c, dtype=torch.float64), torch.zeros(c, dtype=torch.float64), 0
    chunks = [rows[i:i + DECODE_BATCH] for i in range(0, len(rows), DECODE_BATCH)]
    for xb in x.batches(chunks):
        flat = xb.transpose(0, 1).reshape(c, -1).to(torch.float64) / 255.0
        total += flat.sum(dim=1)
        sq += (flat * flat).sum(dim=1)
        count += flat.shape[1]
    mean = total / count
    var = (sq / count - mean * mean).clamp_min(0) * count / max(1, count - 1)
    std = var.sqrt().clamp_min(1e-8)
    log.info("normalisation statistics estimated on %d of %d training images", len(rows), n)
    return mean.float().reshape(c, 1, 1), std.float().reshape(c, 1, 1)


# --------------------------------------------------------------------------- decoding with PIL

#: PIL modes read as one channel; every other mode is converted to RGB
GRAY_MODES = ("1", "L", "LA", "I", "I;16", "I;16B", "I;16L", "F")


def channels_of_mode(mode: str) -> int:
    """Channels a PIL image mode is loaded with: 1 for grey modes, else 3 (RGB)."""
    return 1 if mode in GRAY_MODES else 3


def to_uint8_chw(image, channels: int, size: tuple[int, int]) -> Tensor:
    """A PIL image as uint8 ``(C, H, W)``: converted to L (1 channel) or RGB (3), resized
    (bilinear, PIL's antialiasing when shrinking) to ``size`` = (H, W) when it differs."""
    from PIL import Image
    from torchvision.transforms.functional import pil_to_tensor

    image = image.convert("L" if channels == 1 else "RGB")
    h, w = size
    if image.size != (w, h):
        image = image.resize((w, h), Image.Resampling.BILINEAR)
    return pil_to_tensor(image)
