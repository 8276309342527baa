"""DRAFT methods (fitnet, at, sp, pkt, crd, reviewkd) learn on a fixed batch through a stand-in for the
models' feature taps (forward hooks on the built-in families' stages). Replace the stand-in with the real
taps API in wave 2, when the methods are registered."""

from __future__ import annotations

import pytest
import torch

from trainables import models
from trainables.methods import Context, _feature
from trainables.methods.at import AttentionTransfer
from trainables.methods.crd import ContrastiveRD
from trainables.methods.fitnet import FitNet
from trainables.methods.pkt import ProbabilisticKT
from trainables.methods.reviewkd import ReviewKD
from trainables.methods.sp import SimilarityPreserving


def _stage_modules(model):
    return list(model.stages) if hasattr(model, "stages") else list(model.body)


def fake_forward_with_taps(model, names, x):
    seen = []
    hooks = [m.register_forward_hook(lambda _m, _i, out: seen.append(out)) for m in _stage_modules(model)]
    try:
        f = model.features(x)
    finally:
        for h in hooks:
            h.remove()
    taps = {}
    for name in names:
        if name == "penultimate":
            taps[name] = f
        elif name == "stages":
            taps[name] = list(seen)
        else:
            taps[name] = seen[int(name.split(":")[1])]
    return model.head(f), taps


def fake_tap_shapes(model, names, in_shape):
    was = model.training
    model.eval()
    with torch.no_grad():
        _, taps = fake_forward_with_taps(model, names, torch.zeros(2, *in_shape))
    model.train(was)
    return {k: [tuple(t.shape[1:]) for t in v] if isinstance(v, list) else tuple(v.shape[1:]) for k, v in taps.items()}


@pytest.fixture(autouse=True)
def taps_stand_in(monkeypatch):
    monkeypatch.setattr(_feature, "forward_with_taps", fake_forward_with_taps)
    monkeypatch.setattr(_feature, "tap_shapes", fake_tap_shapes)


def make_ctx(student, teacher, in_shape, nc=10, extra=None):
    def load(cfg):
        with torch.random.fork_rng():
            torch.manual_seed(1234)
            return models.build_model(cfg, in_shape, nc)

    return Context(student=student, teacher=teacher, num_classes=nc,
                   build_model=lambda cfg: models.build_model(cfg, in_shape, nc), load_model=load,
                   extra={"in_shape": in_shape, "device": torch.device("cpu"), **(extra or {})})


CNN8, CNN16 = {"family": "cnn1d", "size": 8}, {"family": "cnn1d", "size": 16}
RES8, RES14 = {"family": "cifar_resnet", "size": 8}, {"family": "cifar_resnet", "size": 14}


def fit(method, x, y, steps, index=None):
    method.train()
    opt = torch.optim.Adam([p for p in method.trainable_parameters() if p.requires_grad], lr=1e-2)
    history = []
    for _ in range(steps):
        step = method.training_step(x, y) if index is None else method.training_step(x, y, index)
        loss = sum(step.terms.values())
        opt.zero_grad()
        loss.backward()
        opt.step()
        history.append({k: float(v.detach()) for k, v in step.terms.items()})
    return history


@pytest.mark.parametrize("cls, term, pair, in_shape", [
    (FitNet, "hint", (CNN8, CNN16), (1, 40)),
    (FitNet, "hint", (RES8, RES14), (3, 8, 8)),
    (AttentionTransfer, "at", (CNN8, CNN16), (1, 40)),
    (SimilarityPreserving, "sp", (CNN8, CNN16), (1, 40)),
    (ProbabilisticKT, "pkt", (CNN8, CNN16), (1, 40)),
    (ReviewKD, "review", (RES8, RES14), (3, 8, 8)),
    (ContrastiveRD, "crd", (CNN8, CNN16), (1, 40)),
])
def test_draft_feature_method_learns_and_owns_its_connectors(cls, term, pair, in_shape):
    torch.manual_seed(0)
    n = 16
    g = torch.Generator().manual_seed(0)
    x, y = torch.randn(n, *in_shape, generator=g), torch.randint(0, 10, (n,), generator=g)
    extra = {"train_size": n, "train_labels": y}
    hp = {"crd_negatives": 8} if cls is ContrastiveRD else {}
    m = cls(make_ctx(*pair, in_shape, extra=extra), hp)
    if cls is ReviewKD:
        m.start_epoch(20)  # past the warm-up
    h = fit(m, x, y, steps=15, index=torch.arange(n) if cls is ContrastiveRD else None)
    assert set(h[0]) == {"ce", term}
    assert h[-1]["ce"] < 0.7 * h[0]["ce"]
    if cls is ContrastiveRD:
        # contrastive: each student embedding now lies closer to its own teacher bank entry than to the others
        with torch.no_grad():
            crd = m.connectors["crd"]
            sim = crd.embed_s(m.student.features(x)) @ crd.memory.memory_t.t()
        assert sim.diagonal().mean() > sim.masked_fill(torch.eye(n, dtype=torch.bool), 0).sum() / (n * n - n)
    else:
        assert h[-1][term] < h[0][term]
    trained = {id(p) for p in m.trainable_parameters()}
    connector = list(m.connectors.parameters())
    assert (len(connector) > 0) == (cls not in (AttentionTransfer, SimilarityPreserving, ProbabilisticKT))
    assert all(id(p) in trained for p in connector) and all(id(p) in trained for p in m.student.parameters())
    assert not any(p.requires_grad for p in m.teacher.parameters())
    assert m.connector_parameter_count() == sum(p.numel() for p in connector)
    keys = m.state_dict().keys()
    assert all(any(k.startswith(f"connectors.{c}.") for k in keys) for c in m.connectors)
    if cls is ContrastiveRD:
        assert "connectors.crd.memory.memory_s" in keys and "connectors.crd.memory.z" in keys


def test_draft_reviewkd_warms_up_and_crd_asks_for_indices():
    torch.manual_seed(0)
    x, y = torch.randn(8, 1, 40), torch.randint(0, 10, (8,))
    m = ReviewKD(make_ctx(CNN8, CNN16, (1, 40)), {})
    m.start_epoch(5)
    assert m.warmup_factor() == 0.25
    m.start_epoch(40)
    assert m.warmup_factor() == 1.0
    crd = ContrastiveRD(make_ctx(CNN8, CNN16, (1, 40), extra={"train_size": 8, "train_labels": y}),
                        {"crd_negatives": 4})
    with pytest.raises(ValueError, match="indices"):
        crd.training_step(x, y)
    with pytest.raises(ValueError, match="train_size"):
        ContrastiveRD(make_ctx(CNN8, CNN16, (1, 40)), {})
