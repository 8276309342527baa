"""`plain_cnn`: the TAKD authors' plain CNNs ("plane" nets); size = number of conv layers."""

from __future__ import annotations

import torch
from torch import nn

from .common import SingleExit, classifier_input, need_image
from .registry import register_family

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


def plain_stages(model: PlainCNN) -> list[str]:
    """The output of each resolution's last conv block (its ReLU, before the max-pool that
    follows), and of the last conv block where no pool follows it."""
    layers = list(model.body)
    out = [f"body.{i - 1}" for i, m in enumerate(layers) if isinstance(m, nn.MaxPool2d)]
    if not isinstance(layers[-1], nn.MaxPool2d):
        out.append(f"body.{len(layers) - 1}")
    return out


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
    sizes=lambda: sorted(PLAIN_CNN_BOOKS["cifar100"]),
    stages=plain_stages,
    penultimate=classifier_input,
)
def build_plain_cnn(cfg, in_shape, num_classes, multi_exit):
    need_image("plain_cnn", in_shape)
    return PlainCNN(in_shape, cfg["size"], num_classes)
