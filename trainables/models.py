"""Model families with a size knob, built from a small config dict.

A model config is ``{"family": str, "size": int, **options}``; a teacher
ladder is a list of sizes of one family. Families register themselves with
``@register_family`` (no if/elif on family names). Every model exposes

* ``features(x) -> (B, D)``: the penultimate embedding (pooled / flattened
  features right before the classifier), ``embedding_dim == D``;
* ``head(f) -> logits``; ``forward(x) == head(features(x))``;
* ``multi_exit`` (bool).

Multi-exit variants (Phuong & Lampert, ICCV 2019, "Distillation-based
training for multi-exit architectures") return a list of logits from
``forward``, earliest exit first, and carry ``num_exits``; their
``features``/``head`` are those of the final exit.

``count_params``, ``count_flops`` and ``exit_flops`` measure models for the
results rows; FLOPs come from ``torch.utils.flop_counter.FlopCounterMode``
(matmuls and convolutions; one multiply-add counts as 2 FLOPs).
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any, Callable

import torch
import torch.nn.functional as F
from torch import nn
from torch.utils.flop_counter import FlopCounterMode

__all__ = [
    "available_families",
    "arch_name",
    "build_model",
    "count_flops",
    "count_params",
    "exit_flops",
    "family_options",
    "family_sizes_hint",
    "register_family",
    "supports_multi_exit",
]


# --------------------------------------------------------------------------
# Registry
# --------------------------------------------------------------------------


@dataclass(frozen=True)
class Family:
    """One registered model family.

    build(cfg, in_shape, num_classes, multi_exit) -> nn.Module, with cfg
    already merged with the family's option defaults and validated.
    name(cfg) -> human architecture name (without the "-me" suffix).
    check(cfg) -> error message or None (size and option values).
    """

    name: str
    build: Callable[[dict, tuple[int, ...], int, bool], nn.Module]
    arch_name: Callable[[dict], str]
    check: Callable[[dict], str | None]
    options: dict[str, Any]
    sizes_hint: str
    multi_exit: bool


_FAMILIES: dict[str, Family] = {}


def register_family(
    name: str,
    *,
    options: dict[str, Any],
    sizes_hint: str,
    arch_name: Callable[[dict], str],
    check: Callable[[dict], str | None],
    multi_exit: bool = False,
):
    """Decorator registering a builder ``fn(cfg, in_shape, num_classes, multi_exit)``."""

    def deco(fn):
        if name in _FAMILIES:
            raise ValueError(f"model family {name!r} registered twice")
        _FAMILIES[name] = Family(
            name, fn, arch_name, check, dict(options), sizes_hint, multi_exit
        )
        return fn

    return deco


def available_families() -> list[str]:
    """Names of the registered model families, sorted."""
    return sorted(_FAMILIES)


def _family(name: Any) -> Family:
    if name not in _FAMILIES:
        raise ValueError(
            f"unknown model family {name!r}; available: {available_families()}"
        )
    return _FAMILIES[name]


def family_sizes_hint(family: str) -> str:
    """What `size` means for a family and which values are allowed (for error messages)."""
    return _family(family).sizes_hint


def family_options(family: str) -> dict[str, Any]:
    """The options a family accepts besides `size`, with their defaults.

    Every family also accepts ``multi_exit`` (bool, default False); see
    `supports_multi_exit`.
    """
    return dict(_family(family).options)


def supports_multi_exit(family: str) -> bool:
    """Whether ``multi_exit: True`` is allowed for this family."""
    return _family(family).multi_exit


def _resolve(cfg: dict) -> tuple[Family, dict, bool]:
    """Look up the family, merge option defaults, validate; raise ValueError."""
    if not isinstance(cfg, dict) or "family" not in cfg or "size" not in cfg:
        raise ValueError(
            f"a model config needs 'family' and 'size' keys, got {cfg!r}"
        )
    fam = _family(cfg["family"])
    size = cfg["size"]
    if isinstance(size, bool) or not isinstance(size, int) or size < 1:
        raise ValueError(
            f"model size for family {fam.name!r} must be a positive integer, "
            f"got {size!r}; size is the {fam.sizes_hint}"
        )
    merged = {**fam.options, **cfg}
    multi_exit = bool(merged.get("multi_exit", False))
    if multi_exit and not fam.multi_exit:
        supported = [n for n in available_families() if _FAMILIES[n].multi_exit]
        raise ValueError(
            f"multi_exit is not supported for family {fam.name!r}; "
            f"families with multi-exit variants: {supported}"
        )
    err = fam.check(merged)
    if err:
        raise ValueError(f"model {fam.name!r}: {err}")
    return fam, merged, multi_exit


def build_model(cfg: dict, in_shape: tuple[int, ...], num_classes: int) -> nn.Module:
    """Build a randomly initialised model of ``cfg`` for inputs of ``in_shape``
    (one sample, without the batch dimension) and ``num_classes`` classes.

    Keys of ``cfg`` that are not options of the family (e.g. a ``checkpoint``
    path) are ignored here; `family_options` lists the recognised ones.
    """
    fam, merged, multi_exit = _resolve(cfg)
    return fam.build(merged, tuple(int(d) for d in in_shape), int(num_classes), multi_exit)


def arch_name(cfg: dict) -> str:
    """Human architecture name: mlp-2x32, cnn1d-w16, resnet56, resnet32x4,
    wrn-40-2, plain_cnn-10; multi-exit variants end in ``-me``."""
    fam, merged, multi_exit = _resolve(cfg)
    return fam.arch_name(merged) + ("-me" if multi_exit else "")


# --------------------------------------------------------------------------
# Shared pieces
# --------------------------------------------------------------------------


def _int_option(cfg: dict, key: str, low: int) -> str | None:
    v = cfg[key]
    if isinstance(v, bool) or not isinstance(v, int) or v < low:
        return f"option {key!r} must be an integer >= {low}, got {v!r}"
    return None


def _init_weights(module: nn.Module) -> None:
    """Kaiming-normal convolutions (He et al. 2015); BN and Linear keep nn defaults."""
    for m in module.modules():
        if isinstance(m, (nn.Conv1d, nn.Conv2d)):
            nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")
            if m.bias is not None:
                nn.init.zeros_(m.bias)


def _need_image(family: str, in_shape: tuple[int, ...]) -> None:
    if len(in_shape) != 3:
        raise ValueError(
            f"model family {family!r} needs image inputs of shape (C, H, W), got {in_shape}"
        )


class SingleExit(nn.Module):
    """Base of single-exit models: subclasses define `features` and `classifier`."""

    multi_exit = False
    embedding_dim: int
    classifier: nn.Module

    def features(self, x: torch.Tensor) -> torch.Tensor:  # pragma: no cover
        raise NotImplementedError

    def head(self, f: torch.Tensor) -> torch.Tensor:
        return self.classifier(f)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.features(x))


class MultiExit(nn.Module):
    """Base of multi-exit models (Phuong & Lampert 2019).

    Subclasses define ``stages`` (an nn.ModuleList of backbone pieces) and
    ``exits`` (one head per stage, each taking the stage's output); the last
    exit is the normal classifier, so ``features``/``head`` are the final
    exit's pooled embedding and linear layer.
    """

    multi_exit = True
    stages: nn.ModuleList
    exits: nn.ModuleList
    embedding_dim: int

    @property
    def num_exits(self) -> int:
        return len(self.exits)

    def _stem(self, x: torch.Tensor) -> torch.Tensor:
        return x

    def forward_exits(self, x: torch.Tensor, last: int | None = None) -> list[torch.Tensor]:
        """Logits of exits 0..last (all by default), running only the backbone they need."""
        last = self.num_exits - 1 if last is None else last
        out, h = [], self._stem(x)
        for k in range(last + 1):
            h = self.stages[k](h)
            out.append(self.exits[k](h))
        return out

    def forward(self, x: torch.Tensor) -> list[torch.Tensor]:
        return self.forward_exits(x)

    def features(self, x: torch.Tensor) -> torch.Tensor:
        h = self._stem(x)
        for stage in self.stages:
            h = stage(h)
        return self.exits[-1].pool(h)

    def head(self, f: torch.Tensor) -> torch.Tensor:
        return self.exits[-1].fc(f)


class ExitHead(nn.Module):
    """An exit: ``pool`` (global average pool or flatten, to (B, D)) then ``fc``."""

    def __init__(self, pool: nn.Module, dim: int, num_classes: int):
        super().__init__()
        self.pool = pool
        self.fc = nn.Linear(dim, num_classes)

    def forward(self, h: torch.Tensor) -> torch.Tensor:
        return self.fc(self.pool(h))


class GlobalAvgPool(nn.Module):
    """Mean over all spatial/temporal positions, to (B, C)."""

    def forward(self, h: torch.Tensor) -> torch.Tensor:
        return h.mean(dim=tuple(range(2, h.dim())))


class Flatten(nn.Module):
    def forward(self, h: torch.Tensor) -> torch.Tensor:
        return h.flatten(1)


# --------------------------------------------------------------------------
# mlp
# --------------------------------------------------------------------------


class MLP(SingleExit):
    """Multi-layer perceptron: flatten, `depth` hidden layers of `width` units with ReLU, linear head."""

    def __init__(self, in_features: int, width: int, depth: int, num_classes: int):
        super().__init__()
        layers: list[nn.Module] = []
        d = in_features
        for _ in range(depth):
            layers += [nn.Linear(d, width), nn.ReLU(inplace=True)]
            d = width
        self.body = nn.Sequential(*layers)
        self.classifier = nn.Linear(width, num_classes)
        self.embedding_dim = width

    def features(self, x: torch.Tensor) -> torch.Tensor:
        return self.body(x.flatten(1))


@register_family(
    "mlp",
    options={"depth": 2},
    sizes_hint="hidden width (e.g. 32, 128, 512); option depth = hidden layers (default 2)",
    arch_name=lambda c: f"mlp-{c['depth']}x{c['size']}",
    check=lambda c: _int_option(c, "depth", 1),
)
def _build_mlp(cfg, in_shape, num_classes, multi_exit):
    return MLP(math.prod(in_shape), cfg["size"], cfg["depth"], num_classes)


# --------------------------------------------------------------------------
# cnn1d
# --------------------------------------------------------------------------


def _per_layer(value, depth: int) -> list:
    """An option given once for every layer, or as a list of one value per layer."""
    return list(value) if isinstance(value, (list, tuple)) else [value] * depth


def _conv1d_layers(c: dict) -> list[tuple[int, int, int]]:
    """(kernel, stride, padding) of each conv layer of a cnn1d config ("same": kernel // 2)."""
    depth = c["depth"]
    kernels, strides = _per_layer(c["kernel"], depth), _per_layer(c["stride"], depth)
    pads = [k // 2 if p == "same" else p for k, p in zip(kernels, _per_layer(c["padding"], depth))]
    return list(zip(kernels, strides, pads))


def _conv1d_block(cin: int, cout: int, kernel: int = 5, stride: int = 1, padding: int = 2) -> nn.Sequential:
    return nn.Sequential(nn.Conv1d(cin, cout, kernel_size=kernel, stride=stride, padding=padding),
                         nn.ReLU(inplace=True))


def _conv1d_lengths(length: int, layers: list[tuple[int, int, int]]) -> list[int]:
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
        self.embedding_dim = width * _conv1d_lengths(length, layers)[-1]
        self.classifier = nn.Linear(self.embedding_dim, num_classes)
        _init_weights(self)

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
        lengths = _conv1d_lengths(length, layers)
        self.embedding_dim = width * lengths[-1]
        self.exits = nn.ModuleList(
            [ExitHead(Flatten(), width * n, num_classes) for n in lengths]
        )
        _init_weights(self)

    def _stem(self, x: torch.Tensor) -> torch.Tensor:
        return x.unsqueeze(1) if x.dim() == 2 else x


def _cnn1d_name(c: dict) -> str:
    name = f"cnn1d-w{c['size']}" + (f"-d{c['depth']}" if c["depth"] != 3 else "")
    for key, default, tag in (("kernel", 5, "k"), ("stride", 1, "s"), ("padding", "same", "p")):
        v = c[key]
        if v != default:
            name += f"-{tag}" + (".".join(map(str, v)) if isinstance(v, (list, tuple)) else str(v))
    return name


def _check_cnn1d(c: dict) -> str | None:
    err = _int_option(c, "depth", 1)
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
    options={"depth": 3, "kernel": 5, "stride": 1, "padding": "same"},
    sizes_hint=("channel width (e.g. 4, 16, 64, 256); options depth = conv layers (default 3), "
                "kernel / stride / padding per layer (defaults 5, 1, \"same\")"),
    arch_name=_cnn1d_name,
    check=_check_cnn1d,
    multi_exit=True,
)
def _build_cnn1d(cfg, in_shape, num_classes, multi_exit):
    channels, length = _signal_shape(in_shape)
    cls = MultiExitCNN1d if multi_exit else CNN1d
    return cls(channels, length, cfg["size"], _conv1d_layers(cfg), num_classes)


# --------------------------------------------------------------------------
# cifar_resnet
# --------------------------------------------------------------------------


class BasicBlock(nn.Module):
    """ResNet basic block (He et al. CVPR 2016): two 3x3 conv-BN, identity or
    1x1 conv-BN projection shortcut, ReLU after the sum."""

    def __init__(self, cin: int, cout: int, stride: int):
        super().__init__()
        self.conv1 = nn.Conv2d(cin, cout, 3, stride, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(cout)
        self.conv2 = nn.Conv2d(cout, cout, 3, 1, 1, bias=False)
        self.bn2 = nn.BatchNorm2d(cout)
        self.shortcut = nn.Identity()
        if stride != 1 or cin != cout:
            self.shortcut = nn.Sequential(
                nn.Conv2d(cin, cout, 1, stride, bias=False), nn.BatchNorm2d(cout)
            )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = F.relu(self.bn1(self.conv1(x)))
        out = self.bn2(self.conv2(out))
        return F.relu(out + self.shortcut(x))


def _resnet_stages(cin: int, widths: list[int], n: int) -> tuple[list[nn.Sequential], int]:
    stages = []
    for i, w in enumerate(widths):
        blocks = []
        for j in range(n):
            blocks.append(BasicBlock(cin, w, 2 if (i > 0 and j == 0) else 1))
            cin = w
        stages.append(nn.Sequential(*blocks))
    return stages, cin


def _resnet_stem(in_channels: int, width: int) -> nn.Sequential:
    """The CIFAR ResNet stem: 3x3 conv, BN, ReLU."""
    return nn.Sequential(nn.Conv2d(in_channels, width, 3, 1, 1, bias=False), nn.BatchNorm2d(width),
                         nn.ReLU(inplace=True))


class CifarResNet(SingleExit):
    """CIFAR ResNet (He et al., "Deep Residual Learning for Image Recognition",
    CVPR 2016, Sec. 4.2): 3x3 stem, three stages of n basic blocks with
    16w/32w/64w channels (strides 1, 2, 2), global average pool, linear.
    Depth = 6n + 2. Shortcuts that change shape are 1x1 conv projections."""

    def __init__(self, in_channels: int, depth: int, width: int, num_classes: int):
        super().__init__()
        widths = [16 * width, 32 * width, 64 * width]
        self.stem = _resnet_stem(in_channels, widths[0])
        stages, out = _resnet_stages(widths[0], widths, (depth - 2) // 6)
        self.stages = nn.Sequential(*stages)
        self.embedding_dim = out
        self.classifier = nn.Linear(out, num_classes)
        _init_weights(self)

    def features(self, x: torch.Tensor) -> torch.Tensor:
        return self.stages(self.stem(x)).mean(dim=(2, 3))


class MultiExitCifarResNet(MultiExit):
    """CIFAR ResNet with an exit (global average pool + linear) after each of
    its three stages; the last exit is the usual classifier."""

    def __init__(self, in_channels: int, depth: int, width: int, num_classes: int):
        super().__init__()
        widths = [16 * width, 32 * width, 64 * width]
        self.stem = _resnet_stem(in_channels, widths[0])
        stages, out = _resnet_stages(widths[0], widths, (depth - 2) // 6)
        self.stages = nn.ModuleList(stages)
        self.exits = nn.ModuleList([ExitHead(GlobalAvgPool(), w, num_classes) for w in widths])
        self.embedding_dim = out
        _init_weights(self)

    def _stem(self, x: torch.Tensor) -> torch.Tensor:
        return self.stem(x)


def _check_resnet(c: dict) -> str | None:
    d = c["size"]
    if d < 8 or (d - 2) % 6:
        return (
            f"depth (size) must be 6n+2 with n >= 1, such as "
            f"8, 14, 20, 32, 44, 56, 110; got {d}"
        )
    return _int_option(c, "width", 1)


def _resnet_name(c: dict) -> str:
    return f"resnet{c['size']}" + (f"x{c['width']}" if c["width"] != 1 else "")


@register_family(
    "cifar_resnet",
    options={"width": 1},
    sizes_hint="depth 6n+2 such as 8, 14, 20, 32, 44, 56, 110; option width multiplies channels (resnet32x4: size 32, width 4)",
    arch_name=_resnet_name,
    check=_check_resnet,
    multi_exit=True,
)
def _build_cifar_resnet(cfg, in_shape, num_classes, multi_exit):
    _need_image("cifar_resnet", in_shape)
    cls = MultiExitCifarResNet if multi_exit else CifarResNet
    return cls(in_shape[0], cfg["size"], cfg["width"], num_classes)


# --------------------------------------------------------------------------
# wrn
# --------------------------------------------------------------------------


class WideBasic(nn.Module):
    """Pre-activation wide block (BN-ReLU-conv3x3, BN-ReLU-[dropout]-conv3x3);
    when the shape changes the shortcut is a 1x1 conv of the activated input."""

    def __init__(self, cin: int, cout: int, stride: int, dropout: float):
        super().__init__()
        self.bn1 = nn.BatchNorm2d(cin)
        self.conv1 = nn.Conv2d(cin, cout, 3, stride, 1, bias=False)
        self.bn2 = nn.BatchNorm2d(cout)
        self.conv2 = nn.Conv2d(cout, cout, 3, 1, 1, bias=False)
        self.dropout = nn.Dropout(dropout) if dropout > 0 else nn.Identity()
        self.shortcut = None
        if stride != 1 or cin != cout:
            self.shortcut = nn.Conv2d(cin, cout, 1, stride, bias=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        a = F.relu(self.bn1(x))
        out = self.conv1(a)
        out = self.conv2(self.dropout(F.relu(self.bn2(out))))
        return out + (x if self.shortcut is None else self.shortcut(a))


class WideResNet(SingleExit):
    """Wide ResNet WRN-d-k (Zagoruyko & Komodakis, "Wide Residual Networks",
    BMVC 2016): 3x3 stem of 16 channels, three groups of n = (d-4)/6
    pre-activation blocks with 16k/32k/64k channels (strides 1, 2, 2),
    BN-ReLU, global average pool, linear."""

    def __init__(self, in_channels: int, depth: int, k: int, num_classes: int, dropout: float):
        super().__init__()
        n = (depth - 4) // 6
        widths = [16 * k, 32 * k, 64 * k]
        self.stem = nn.Conv2d(in_channels, 16, 3, 1, 1, bias=False)
        blocks, cin = [], 16
        for i, w in enumerate(widths):
            for j in range(n):
                blocks.append(WideBasic(cin, w, 2 if (i > 0 and j == 0) else 1, dropout))
                cin = w
        self.blocks = nn.Sequential(*blocks)
        self.bn = nn.BatchNorm2d(cin)
        self.embedding_dim = cin
        self.classifier = nn.Linear(cin, num_classes)
        _init_weights(self)

    def features(self, x: torch.Tensor) -> torch.Tensor:
        h = F.relu(self.bn(self.blocks(self.stem(x))))
        return h.mean(dim=(2, 3))


def _check_wrn(c: dict) -> str | None:
    d = c["size"]
    if d < 10 or (d - 4) % 6:
        return f"depth (size) must be 6n+4 with n >= 1, such as 10, 16, 28, 40; got {d}"
    err = _int_option(c, "width", 1)
    if err:
        return err
    p = c["dropout"]
    if isinstance(p, bool) or not isinstance(p, (int, float)) or not 0 <= p < 1:
        return f"option 'dropout' must be a number in [0, 1), got {p!r}"
    return None


@register_family(
    "wrn",
    options={"width": 2, "dropout": 0.0},
    sizes_hint="depth 6n+4 such as 16, 28, 40; option width = widen factor k (wrn-40-2: size 40, width 2)",
    arch_name=lambda c: f"wrn-{c['size']}-{c['width']}",
    check=_check_wrn,
)
def _build_wrn(cfg, in_shape, num_classes, multi_exit):
    _need_image("wrn", in_shape)
    return WideResNet(in_shape[0], cfg["size"], cfg["width"], num_classes, float(cfg["dropout"]))


# --------------------------------------------------------------------------
# plain_cnn
# --------------------------------------------------------------------------


#: the TAKD authors' plain CNNs ("plane" nets of imirzadeh/Teacher-Assistant-Knowledge-Distillation,
#: `plain_cnn_cifar.py`), layer by layer: "C<n>" = 3x3 conv (padding 1, bias) + BN + ReLU with n
#: channels, "M" = 2x2 max-pool, "F<n>" = fully connected layer (ReLU unless it is the last).
#: The authors pick the book by the class count: CIFAR-10 (10 classes) or CIFAR-100 (any other).
PLAIN_CNN_BOOKS = {
    "cifar10": {
        2: ["C16", "M", "C16", "M", "F"],
        4: ["C16", "C16", "M", "C32", "C32", "M", "F"],
        6: ["C16", "C16", "M", "C32", "C32", "M", "C64", "C64", "M", "F"],
        8: ["C16", "C16", "M", "C32", "C32", "M", "C64", "C64", "M", "C128", "C128", "M", "F64", "F"],
        10: ["C32", "C32", "M", "C64", "C64", "M", "C128", "C128", "M", "C256", "C256", "C256", "C256", "M",
             "F128", "F"],
    },
    "cifar100": {
        2: ["C32", "M", "C32", "M", "F"],
        4: ["C32", "C32", "M", "C64", "C64", "M", "F"],
        6: ["C32", "C32", "M", "C64", "C64", "M", "C128", "C128", "F"],
        8: ["C32", "C32", "M", "C64", "C64", "M", "C128", "C128", "M", "C256", "C256", "M", "F64", "F"],
        10: ["C32", "C32", "M", "C64", "C64", "M", "C128", "C128", "M", "C256", "C256", "C256", "C256", "M",
             "F512", "F"],
    },
}


class PlainCNN(SingleExit):
    """Plain CNN of the TAKD paper (Mirzadeh et al., "Improved Knowledge
    Distillation via Teacher Assistant", AAAI 2020), as in the authors' code
    (`ConvNetMaker` with `plane_cifar10_book` / `plane_cifar100_book`): the
    layers of `PLAIN_CNN_BOOKS[book][size]` — 3x3 conv (bias) + BN + ReLU
    blocks and 2x2 max-pools, then the feature map is *flattened* into fully
    connected layers (a hidden one with ReLU for sizes 8 and 10). `size` is
    the number of conv layers (2, 4, 6, 8, 10: plane2..plane10). The book follows the class count as in
    the authors' `create_cnn_model`: 10 classes → CIFAR-10 book, else CIFAR-100.
    Parameter counts for CIFAR-100: 215k / 476k / 1.11M / 1.25M / 2.93M.
    `features` is the input of the last linear layer (flattened map, or the
    hidden FC's ReLU output). PyTorch's default initialisation, as theirs."""

    def __init__(self, in_shape: tuple[int, int, int], size: int, num_classes: int):
        super().__init__()
        cin, h, w = in_shape
        book = PLAIN_CNN_BOOKS["cifar10" if num_classes == 10 else "cifar100"][size]
        convs: list[nn.Module] = []
        hidden: list[nn.Module] = []
        dim = 0
        for layer in book:
            if layer.startswith("C"):
                cout = int(layer[1:])
                convs += [nn.Conv2d(cin, cout, 3, padding=1), nn.BatchNorm2d(cout), nn.ReLU(inplace=True)]
                cin = cout
            elif layer == "M":
                convs.append(nn.MaxPool2d(2, 2))
                h, w = h // 2, w // 2
            elif layer == "F":  # the classifier
                dim = dim or cin * h * w
            else:  # a hidden fully connected layer
                width = int(layer[1:])
                hidden += [nn.Linear(dim or cin * h * w, width), nn.ReLU(inplace=True)]
                dim = width
        self.body = nn.Sequential(*convs)
        self.fc_hidden = nn.Sequential(*hidden)
        self.embedding_dim = dim
        self.classifier = nn.Linear(dim, num_classes)

    def features(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc_hidden(self.body(x).flatten(1))


def _check_plain(c: dict) -> str | None:
    if c["size"] not in PLAIN_CNN_BOOKS["cifar100"]:
        return (f"size is the number of conv layers of the TAKD authors' plain CNNs, one of 2, 4, 6, 8, 10 "
                f"(2..10, even); got {c['size']}")
    return None


@register_family(
    "plain_cnn",
    options={},
    sizes_hint="number of conv layers of the TAKD plain CNNs: 2, 4, 6, 8 or 10",
    arch_name=lambda c: f"plain_cnn-{c['size']}",
    check=_check_plain,
)
def _build_plain_cnn(cfg, in_shape, num_classes, multi_exit):
    _need_image("plain_cnn", in_shape)
    return PlainCNN(in_shape, cfg["size"], num_classes)


# --------------------------------------------------------------------------
# Measuring
# --------------------------------------------------------------------------


def count_params(model: nn.Module) -> int:
    """Number of parameters, trainable and frozen (buffers such as BN statistics excluded)."""
    return sum(p.numel() for p in model.parameters())


def _flops_per_sample(model: nn.Module, in_shape: tuple[int, ...], fn: Callable) -> float:
    """FLOPs of ``fn(x)`` for a batch of 2 (eval mode, no grad) divided by 2."""
    p = next(model.parameters(), None)
    device = p.device if p is not None else torch.device("cpu")
    dtype = p.dtype if p is not None and p.is_floating_point() else torch.float32
    x = torch.zeros((2, *in_shape), device=device, dtype=dtype)
    was_training = model.training
    model.eval()
    try:
        with torch.no_grad(), FlopCounterMode(display=False) as counter:
            fn(x)
    finally:
        model.train(was_training)
    return counter.get_total_flops() / 2.0


def count_flops(model: nn.Module, in_shape: tuple[int, ...]) -> float:
    """Forward FLOPs for one sample (a multi-exit model's full forward, all exits)."""
    return _flops_per_sample(model, tuple(in_shape), model)


def exit_flops(model: nn.Module, in_shape: tuple[int, ...]) -> list[float]:
    """Cumulative forward FLOPs per sample to reach each exit of a multi-exit model.

    Entry k is the cost of anytime inference stopped at exit k: the backbone
    up to exit k plus the heads of exits 0..k (earlier exits are evaluated on
    the way), so the last entry equals `count_flops` of the full model.
    """
    if not getattr(model, "multi_exit", False):
        raise ValueError("exit_flops needs a multi-exit model (built with multi_exit: True)")
    return [
        _flops_per_sample(model, tuple(in_shape), lambda x, k=k: model.forward_exits(x, k))
        for k in range(model.num_exits)
    ]
