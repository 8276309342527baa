"""`waveform`: Breiman et al.'s waveform data (CART, 1984, section 2.6.2), generated locally.

Three classes of 21-sample signals, each a random mix of two of three triangular base
waves plus Gaussian noise: with h1(i) = max(6 - |i - 11|, 0), h2(i) = h1(i - 4) and
h3(i) = h1(i + 4) (i = 1..21), a sample of class 0 is u·h1 + (1-u)·h2 + ε, of class 1
u·h1 + (1-u)·h3 + ε, of class 2 u·h2 + (1-u)·h3 + ε, with u ~ U(0, 1) and ε ~ N(0, noise²)
per sample point; classes are equally likely. At noise 1 (the original) the Bayes rate
is about 86 % accuracy (UCI "Waveform Database Generator (Version 1)"): a ceiling every
model here can be judged against. Signals (1, 21), float32; normalised with the training
split's statistics. The test split is generated from its own seed (``data_seed + 1``).
"""

from __future__ import annotations

import torch

from trainables.data import DatasetEntry, DatasetInfo, Loaded, register_dataset
from trainables.options import Option

LENGTH = 21


def base_waves() -> torch.Tensor:
    i = torch.arange(1, LENGTH + 1, dtype=torch.float32)
    h1 = (6 - (i - 11).abs()).clamp(min=0)
    h2 = (6 - (i - 4 - 11).abs()).clamp(min=0)
    h3 = (6 - (i + 4 - 11).abs()).clamp(min=0)
    return torch.stack([h1, h2, h3])


#: the two base waves each class mixes
PAIRS = torch.tensor([[0, 1], [0, 2], [1, 2]])


def generate(n: int, noise: float, seed: int) -> tuple[torch.Tensor, torch.Tensor]:
    gen = torch.Generator().manual_seed(seed)
    y = torch.randint(0, 3, (n,), generator=gen)
    u = torch.rand(n, 1, generator=gen)
    h = base_waves()
    first, second = h[PAIRS[y, 0]], h[PAIRS[y, 1]]
    x = u * first + (1 - u) * second + noise * torch.randn(n, LENGTH, generator=gen)
    return x.unsqueeze(1), y


@register_dataset("waveform")
class Waveform(DatasetEntry):
    options = {
        "num_samples": Option(5000, ("integer",), minimum=100, help="training samples generated"),
        "test_samples": Option(2000, ("integer",), minimum=100, help="test samples generated"),
        "noise": Option(1.0, ("number",), minimum=0.0, help="standard deviation of the noise (1: Breiman's)"),
        "data_seed": Option(0, ("integer",), minimum=0, help="seed of the generation"),
    }

    def info(self, cfg):
        return DatasetInfo(kind="signal", input_shape=(1, LENGTH), num_classes=3,
                           train_size=int(cfg.get("num_samples", 5000)), test_size=int(cfg.get("test_samples", 2000)),
                           class_names=("h1+h2", "h1+h3", "h2+h3"),
                           provenance={"test": "generated from its own seed (data_seed + 1)"})

    def load(self, cfg):
        noise, seed = float(cfg.get("noise", 1.0)), int(cfg.get("data_seed", 0))
        return Loaded(train=generate(int(cfg.get("num_samples", 5000)), noise, seed),
                      test=generate(int(cfg.get("test_samples", 2000)), noise, seed + 1))

    def check(self, cfg):
        return []
