"""Trainable connectors of the feature-distillation methods.

A connector maps student features to the teacher's feature space. It is a
module of the method (not of the student): optimised with the student,
checkpointed and resumed with it, counted in the training cost and not in the
deployed student. Each is built from the *per-sample* feature shapes the taps
report before training, `(C, *spatial)` without the batch dimension, and works
for 1-D signals `(C, L)` and images `(C, H, W)` alike.

  ConvReg ...... FitNets' regressor (RepDistiller `models/util.py` ConvReg)
  ABF .......... ReviewKD's attention-based fusion (dvlab-research/ReviewKD `CIFAR-100/model/reviewkd.py`)
  ReviewPath ... ReviewKD's residual review path of ABFs, deepest level to shallowest
"""

from __future__ import annotations

from typing import Sequence

import torch
import torch.nn.functional as F
from torch import nn

#: ReviewKD's cap on the fused (middle) width of its ABFs (authors: mid = min(512, deepest student width))
REVIEWKD_MAX_MID_CHANNELS = 512

_CONV = {1: nn.Conv1d, 2: nn.Conv2d, 3: nn.Conv3d}
_DECONV = {1: nn.ConvTranspose1d, 2: nn.ConvTranspose2d, 3: nn.ConvTranspose3d}
_BN = {1: nn.BatchNorm1d, 2: nn.BatchNorm2d, 3: nn.BatchNorm3d}


def _split(shape: Sequence[int], what: str) -> tuple[int, tuple[int, ...]]:
    shape = tuple(int(v) for v in shape)
    if not 2 <= len(shape) <= 4 or min(shape) < 1:
        raise ValueError(f"{what}: expected a per-sample feature shape (C, L) or (C, H, W), got {shape}")
    return shape[0], shape[1:]


def _probe(module: nn.Module, channels: int, spatial: tuple[int, ...]) -> tuple[int, ...]:
    """Per-sample output shape of a conv-like module (run once on zeros, no graph)."""
    weight = next(module.parameters())
    with torch.no_grad():
        out = module(torch.zeros(1, channels, *spatial, dtype=weight.dtype, device=weight.device))
    return tuple(out.shape[1:])


class ConvReg(nn.Module):
    """FitNets' regressor r (Romero et al. 2015, Eq. 3: a convolutional regressor so that
    the student's guided layer can predict the teacher's hint layer), as RepDistiller's
    `ConvReg`: one convolution adapting channels and size, BatchNorm, ReLU.

    With s and t the first spatial sizes of the student and teacher maps:
      s = 2t:   3×3 (or 3) conv, stride 2, padding 1 (halves the size);
      2s = t:   4×4 transposed conv, stride 2, padding 1 (doubles it);
      s ≥ t:    conv of kernel 1 + s_i − t_i per spatial dimension (1×1 when equal);
    any other pair is refused, as in the authors' code. `use_relu=False` ends
    at the BatchNorm (RepDistiller's AB connector). The teacher features it
    regresses to are post-ReLU stage outputs, hence the ReLU.
    """

    def __init__(self, student_shape: Sequence[int], teacher_shape: Sequence[int], use_relu: bool = True):
        super().__init__()
        s_c, s_sp = _split(student_shape, "ConvReg student")
        t_c, t_sp = _split(teacher_shape, "ConvReg teacher")
        if len(s_sp) != len(t_sp):
            raise ValueError(f"ConvReg: student {tuple(student_shape)} and teacher {tuple(teacher_shape)} "
                             f"features have different spatial ranks")
        rank = len(s_sp)
        s, t = s_sp[0], t_sp[0]
        if s == 2 * t:
            self.conv = _CONV[rank](s_c, t_c, kernel_size=3, stride=2, padding=1)
        elif 2 * s == t:
            self.conv = _DECONV[rank](s_c, t_c, kernel_size=4, stride=2, padding=1)
        elif all(a >= b for a, b in zip(s_sp, t_sp)):
            self.conv = _CONV[rank](s_c, t_c, kernel_size=tuple(1 + a - b for a, b in zip(s_sp, t_sp)))
        else:
            raise ValueError(f"ConvReg cannot map student features {tuple(student_shape)} to teacher features "
                             f"{tuple(teacher_shape)}: the student map must be at least as large, or exactly "
                             f"half the teacher's size")
        got = _probe(self.conv, s_c, s_sp)
        if got != (t_c, *t_sp):
            raise ValueError(f"ConvReg maps student features {tuple(student_shape)} to {got}, not to the "
                             f"teacher's {tuple(teacher_shape)}")
        self.bn = _BN[rank](t_c)
        self.use_relu = use_relu
        self.student_shape = (s_c, *s_sp)
        self.teacher_shape = (t_c, *t_sp)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.bn(self.conv(x))
        return F.relu(x) if self.use_relu else x


class ABF(nn.Module):
    """ReviewKD's attention-based fusion (Chen et al., CVPR 2021, Sec. 3.2, Fig. 3), as the authors' `ABF`.

    x' = BN(conv1×1(x)) maps the student level to `mid_channels`. With `fuse`
    (every level but the deepest) the residual r from the deeper level is
    resized to x' (nearest) and fused by two spatial attention maps predicted
    from both:

        [a_x, a_r] = σ(conv1×1([x', r]))  (2 channels, with bias),   x' ← a_x · x' + a_r · r

    x' is then resized to the teacher's size if it differs (nearest) and the
    output is BN(conv3×3(x')) with the teacher's channels. Returns (output, x'),
    x' being the residual passed on to the next shallower level. conv1 and conv2
    have no bias and are initialised `kaiming_uniform_(a=1)` as in the authors' code.
    """

    def __init__(self, in_channels: int, mid_channels: int, out_channels: int, fuse: bool, rank: int = 2):
        super().__init__()
        conv, bn = _CONV[rank], _BN[rank]
        self.conv1 = nn.Sequential(conv(in_channels, mid_channels, kernel_size=1, bias=False), bn(mid_channels))
        self.conv2 = nn.Sequential(conv(mid_channels, out_channels, kernel_size=3, stride=1, padding=1, bias=False),
                                   bn(out_channels))
        self.att_conv = nn.Sequential(conv(2 * mid_channels, 2, kernel_size=1), nn.Sigmoid()) if fuse else None
        nn.init.kaiming_uniform_(self.conv1[0].weight, a=1)
        nn.init.kaiming_uniform_(self.conv2[0].weight, a=1)

    def forward(self, x: torch.Tensor, residual: torch.Tensor | None = None,
                out_size: Sequence[int] | None = None) -> tuple[torch.Tensor, torch.Tensor]:
        x = self.conv1(x)
        if self.att_conv is not None:
            if residual is None:
                raise ValueError("ABF: a fusing level needs the residual of the deeper level")
            residual = F.interpolate(residual, size=tuple(x.shape[2:]), mode="nearest")
            att = self.att_conv(torch.cat([x, residual], dim=1))
            x = x * att[:, 0:1] + residual * att[:, 1:2]
        if out_size is not None and tuple(x.shape[2:]) != tuple(out_size):
            x = F.interpolate(x, size=tuple(out_size), mode="nearest")
        return self.conv2(x), x


def _promote(shape: Sequence[int], rank: int) -> tuple[int, ...]:
    """A (D,) vector shape as a (D, 1, ..., 1) map of the given spatial rank."""
    shape = tuple(int(v) for v in shape)
    return shape + (1,) * rank if len(shape) == 1 else shape


class ReviewPath(nn.Module):
    """ReviewKD's review path (Chen et al. 2021, Sec. 3.2, Fig. 2(d)): one ABF per level,
    run from the deepest level to the shallowest, each fusing its student level with
    the residual of the level below, so that every output level sees all the deeper
    student levels ("knowledge review"); outputs have the teacher's level shapes and
    are compared with the teacher's features by `feature_losses.hcl_loss`.

    `student_shapes` / `teacher_shapes` are per-sample shapes, shallowest first. For
    CIFAR ResNets the authors use the three stage outputs and the pooled penultimate
    features, e.g. resnet8x4 (64, 32, 32), (128, 16, 16), (256, 8, 8), (256,) against
    the teacher's; a (D,) vector level is treated as a (D, 1, 1) map, as their
    `avgpool` output is. Middle width = min(512, channels of the deepest student stage
    (map) level), shared by every ABF: the authors' `mid_channel = min(512, in_channels[-1])`,
    their last level being pooled features as wide as the deepest stage; a flattened
    penultimate (1-D CNNs) does not widen it. Without map levels: the last level's width.
    """

    def __init__(self, student_shapes: Sequence[Sequence[int]], teacher_shapes: Sequence[Sequence[int]],
                 max_mid_channels: int = REVIEWKD_MAX_MID_CHANNELS):
        super().__init__()
        if len(student_shapes) != len(teacher_shapes) or not student_shapes:
            raise ValueError(f"ReviewPath pairs levels one to one: got {len(student_shapes)} student and "
                             f"{len(teacher_shapes)} teacher shapes")
        ranks = {len(s) - 1 for s in [*student_shapes, *teacher_shapes] if len(s) > 1}
        if len(ranks) > 1:
            raise ValueError(f"ReviewPath: the levels' spatial ranks differ ({sorted(ranks)})")
        self.rank = ranks.pop() if ranks else 2
        if self.rank not in _CONV:
            raise ValueError(f"ReviewPath: unsupported spatial rank {self.rank}")
        self.student_shapes = [_promote(s, self.rank) for s in student_shapes]
        self.teacher_shapes = [_promote(t, self.rank) for t in teacher_shapes]
        # the authors' mid = min(512, width of their pooled features), which for every CIFAR model they
        # distil is the deepest stage's channel count; a flattened (not pooled) penultimate, as the 1-D
        # CNNs have, would otherwise set the width to channels x length (320 for cnn1d:8 on MNIST-1D)
        maps = [shape for shape in student_shapes if len(shape) > 1]
        mid = min(int(max_mid_channels), int((maps[-1] if maps else student_shapes[-1])[0]))
        n = len(self.student_shapes)
        self.abfs = nn.ModuleList([
            ABF(s[0], mid, t[0], fuse=i < n - 1, rank=self.rank)
            for i, (s, t) in enumerate(zip(self.student_shapes, self.teacher_shapes))
        ])

    def as_maps(self, feats: Sequence[torch.Tensor]) -> list[torch.Tensor]:
        """The levels as (B, C, *spatial) maps: (B, D) vectors become (B, D, 1, ..., 1)."""
        return [f.reshape(*f.shape, *([1] * self.rank)) if f.dim() == 2 else f for f in feats]

    def forward(self, student_feats: Sequence[torch.Tensor]) -> list[torch.Tensor]:
        """The review outputs, shallowest level first, each of the teacher's shape at that level."""
        feats = self.as_maps(student_feats)
        if len(feats) != len(self.abfs):
            raise ValueError(f"ReviewPath expects {len(self.abfs)} student levels, got {len(feats)}")
        outs: list[torch.Tensor] = [None] * len(feats)  # type: ignore[list-item]
        residual = None
        for i in range(len(feats) - 1, -1, -1):
            outs[i], residual = self.abfs[i](feats[i], residual, self.teacher_shapes[i][1:])
        return outs
