"""`cnn1d`: 1-D CNNs for short signals (MNIST-1D); size = channel width."""

from __future__ import annotations

import torch
from torch import nn

from ..options import Option
from .common import ExitHead, Flatten, MultiExit, SingleExit, classifier_input, init_weights, int_option
from .registry import register_family


def _per_layer(value, depth: int) -> list:
    """An option given once for every layer, or as a list of one value per layer."""
    return list(value) if isinstance(value, (list, tuple)) else [value] * depth


def conv1d_layers(c: dict) -> list[tuple[int, int, int]]:
    """(kernel, stride, padding) of each conv layer of a cnn1d config ("same": kernel // 2)."""
    depth = c["depth"]
    kernels, strides = _per_layer(c["kernel"], depth), _per_layer(c["stride"], depth)
    pads = [k // 2 if p == "same" else p for k, p in zip(kernels, _per_layer(c["padding"], depth))]
    return list(zip(kernels, strides, pads))


def _conv1d_block(cin: int, cout: int, kernel: int = 5, stride: int = 1, padding: int = 2) -> nn.Sequential:
    # the ReLU is not in place, so the conv's output (the stage's pre-activation) can be tapped
    return nn.Sequential(nn.Conv1d(cin, cout, kernel_size=kernel, stride=stride, padding=padding), nn.ReLU())


def conv1d_lengths(length: int, layers: list[tuple[int, int, int]]) -> list[int]:
    """Output length after each conv layer: floor((L + 2p − k) / s) + 1."""
    out = []
    for k, st, p in layers:
        length = (length + 2 * p - k) // st + 1
        if length < 1:
            raise ValueError(f"cnn1d: the signal is too short for kernels/strides {layers}")
        out.append(length)
    return out


def _signal_shape(in_shape: tuple[int, ...]) -> tuple[int, int]:
    if len(in_shape) == 1:
        return 1, in_shape[0]
    if len(in_shape) == 2:
        return in_shape[0], in_shape[1]
    raise ValueError(f"model family 'cnn1d' needs 1-D signals of shape (C, L) or (L,), got {in_shape}")


class CNN1d(SingleExit):
    """1-D CNN for short signals such as MNIST-1D (Greydanus 2020): `depth`
    Conv1d layers of `width` channels, each followed by ReLU, then flatten and a
    linear head. Inputs of shape (B, L) are treated as one channel.

    Each layer's (kernel, stride, padding) comes from the options `kernel`,
    `stride`, `padding` (one value for all layers or a list per layer; padding
    "same" = kernel // 2). The defaults (5, 1, "same") keep the length; the
    published MNIST-1D CNN (`ConvBase` in greydanus/mnist1d: 25 channels,
    kernels 5/3/3, stride 2, padding 1, 40 → 19 → 10 → 5, linear 125 → 10) is
    ``{family: cnn1d, size: 25, kernel: [5, 3, 3], stride: 2, padding: 1}``."""

    def __init__(self, channels: int, length: int, width: int, layers: list[tuple[int, int, int]],
                 num_classes: int):
        super().__init__()
        self.body = nn.Sequential(
            *[_conv1d_block(channels if i == 0 else width, width, *kps) for i, kps in enumerate(layers)]
        )
        self.embedding_dim = width * conv1d_lengths(length, layers)[-1]
        self.classifier = nn.Linear(self.embedding_dim, num_classes)
        init_weights(self)

    def features(self, x: torch.Tensor) -> torch.Tensor:
        if x.dim() == 2:
            x = x.unsqueeze(1)
        return self.body(x).flatten(1)


class MultiExitCNN1d(MultiExit):
    """CNN1d with an exit (flatten + linear, like the final head) after every conv layer."""

    def __init__(self, channels: int, length: int, width: int, layers: list[tuple[int, int, int]],
                 num_classes: int):
        super().__init__()
        self.stages = nn.ModuleList(
            [_conv1d_block(channels if i == 0 else width, width, *kps) for i, kps in enumerate(layers)]
        )
        lengths = conv1d_lengths(length, layers)
        self.embedding_dim = width * lengths[-1]
        self.exits = nn.ModuleList(
            [ExitHead(Flatten(), width * n, num_classes) for n in lengths]
        )
        init_weights(self)

    def _stem(self, x: torch.Tensor) -> torch.Tensor:
        return x.unsqueeze(1) if x.dim() == 2 else x


def cnn1d_stages(model) -> list[str]:
    """Each conv layer's output (after its ReLU), (B, width, length)."""
    if model.multi_exit:
        return [f"stages.{i}" for i in range(len(model.stages))]
    return [f"body.{i}" for i in range(len(model.body))]


def cnn1d_preact_stages(model) -> list[str]:
    """Each conv layer's output before its ReLU (ReviewKD's teacher features)."""
    return [f"{name}.0" for name in cnn1d_stages(model)]


def _cnn1d_name(c: dict) -> str:
    name = f"cnn1d-w{c['size']}" + (f"-d{c['depth']}" if c["depth"] != 3 else "")
    for key, default, tag in (("kernel", 5, "k"), ("stride", 1, "s"), ("padding", "same", "p")):
        v = c[key]
        if v != default:
            name += f"-{tag}" + (".".join(map(str, v)) if isinstance(v, (list, tuple)) else str(v))
    return name


def _check_cnn1d(c: dict) -> str | None:
    err = int_option(c, "depth", 1)
    if err:
        return err
    for key, low in (("kernel", 1), ("stride", 1), ("padding", 0)):
        v = c[key]
        values = list(v) if isinstance(v, (list, tuple)) else [v]
        if isinstance(v, (list, tuple)) and len(values) != c["depth"]:
            return f"option {key!r} lists {len(values)} values for {c['depth']} layers (give one per layer)"
        for x in values:
            if key == "padding" and x == "same":
                continue
            if isinstance(x, bool) or not isinstance(x, int) or x < low:
                extra = ' or "same"' if key == "padding" else ""
                return f"option {key!r} must be an integer >= {low}{extra} (or a list of them), got {v!r}"
    return None


@register_family(
    "cnn1d",
    options={
        "depth": Option(3, ("integer",), "conv layers", minimum=1),
        "kernel": Option(5, ("integer", "array"), "kernel size: one for every layer or a list, one per layer"),
        "stride": Option(1, ("integer", "array"), "stride: one for every layer or a list, one per layer"),
        "padding": Option("same", ("integer", "string", "array"),
                          'padding: an integer, "same" (kernel // 2), or a list, one per layer'),
    },
    sizes_hint=("channel width (e.g. 4, 16, 64, 256); options depth = conv layers (default 3), "
                "kernel / stride / padding per layer (defaults 5, 1, \"same\")"),
    arch_name=_cnn1d_name,
    check=_check_cnn1d,
    multi_exit=True,
    stages=cnn1d_stages,
    preact_stages=cnn1d_preact_stages,
    penultimate=classifier_input,
)
def build_cnn1d(cfg, in_shape, num_classes, multi_exit):
    channels, length = _signal_shape(in_shape)
    cls = MultiExitCNN1d if multi_exit else CNN1d
    return cls(channels, length, cfg["size"], conv1d_layers(cfg), num_classes)
