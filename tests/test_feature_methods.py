"""The feature-distillation methods (fitnet, at, sp, pkt, crd, reviewkd) through the real feature taps:
each method's loss terms equal a hand computation of the authors' formula on features taken from the
models by hand (not through the taps), they learn, own their connectors (optimised, checkpointed, counted
apart from the student), and train and resume in the shared loop."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from analysis.schema import rows_to_table
from study.results import to_schema_row
from trainables import models, storage
from trainables.loop import LocalHooks, run_trial, training_cost
from trainables.methods import Context, get_method

NC = 10
SIG = (1, 40)
CNN8, CNN16 = {"family": "cnn1d", "size": 8}, {"family": "cnn1d", "size": 16}
RES8, RES14 = {"family": "cifar_resnet", "size": 8}, {"family": "cifar_resnet", "size": 14}
FEATURE_METHODS = ("fitnet", "at", "sp", "pkt", "crd", "reviewkd")


def make_ctx(student, teacher, in_shape=SIG, n=16, labels=None):
    def load(cfg):  # a "pretrained" teacher: random weights of a fixed seed
        with torch.random.fork_rng():
            torch.manual_seed(1234)
            return models.build_model(cfg, in_shape, NC)

    return Context(student=student, teacher=teacher, num_classes=NC,
                   build_model=lambda cfg: models.build_model(cfg, in_shape, NC), load_model=load,
                   num_train_samples=n, train_labels=labels,
                   extra={"in_shape": in_shape, "device": torch.device("cpu")})


def batch(n=16, in_shape=SIG, seed=0):
    g = torch.Generator().manual_seed(seed)
    return torch.randn(n, *in_shape, generator=g), torch.randint(0, NC, (n,), generator=g)


def step(m, x, y, index=None):
    return m.training_step(x, y, index) if m.needs_sample_index else m.training_step(x, y)


def value(t) -> float:
    return float(t.detach())


# --------------------------------------------------------------------------- features by hand


def cnn_features(model, x):
    """A 1-D CNN's stage outputs after and before their ReLU, its flattened embedding and logits,
    computed layer by layer (no taps, no hooks)."""
    h, post, pre = x, [], []
    for block in model.body:
        conv = block[0](h)
        pre.append(conv)
        h = F.relu(conv)
        post.append(h)
    emb = h.flatten(1)
    return {"stages": post, "preact": pre, "penultimate": emb, "logits": model.classifier(emb)}


def resnet_features(model, x):
    """A CIFAR ResNet's stage outputs, the last block's pre-activation sums, pooled features, by hand."""
    h = model.stem(x)
    post, pre = [], []
    for stage in model.stages:
        for block in stage[:-1]:
            h = block(h)
        last = stage[-1]
        out = last.bn2(last.conv2(F.relu(last.bn1(last.conv1(h)))))
        s = out + last.shortcut(h)
        pre.append(s)
        h = F.relu(s)
        post.append(h)
    emb = h.mean(dim=(2, 3))
    return {"stages": post, "preact": pre, "penultimate": emb}


def bn_train(z, bn):
    """BatchNorm with the batch's statistics (training mode): biased variance over all but the channels."""
    dims = [0, *range(2, z.dim())]
    mean, var = z.mean(dim=dims, keepdim=True), z.var(dim=dims, unbiased=False, keepdim=True)
    shape = [1, -1] + [1] * (z.dim() - 2)
    return (z - mean) / torch.sqrt(var + bn.eps) * bn.weight.view(shape) + bn.bias.view(shape)


# --------------------------------------------------------------------------- the authors' formulas, re-written


def np_at(fs, ft):
    """RepDistiller `Attention.at_loss` summed over stages, with numpy loops over samples."""
    total = 0.0
    for a, b in zip(fs, ft):
        a, b = a.detach().double().numpy(), b.detach().double().numpy()
        loss = 0.0
        for i in range(a.shape[0]):
            qa, qb = (a[i] ** 2).mean(axis=0).ravel(), (b[i] ** 2).mean(axis=0).ravel()
            qa, qb = qa / max(np.linalg.norm(qa), 1e-12), qb / max(np.linalg.norm(qb), 1e-12)
            loss += ((qa - qb) ** 2).sum()
        total += loss / a.shape[0] / qa.size
    return total


def np_sp(fs, ft):
    """RepDistiller `Similarity.similarity_loss`."""
    a, b = fs.detach().double().flatten(1).numpy(), ft.detach().double().flatten(1).numpy()
    ga, gb = a @ a.T, b @ b.T
    ga = ga / np.linalg.norm(ga, axis=1, keepdims=True)
    gb = gb / np.linalg.norm(gb, axis=1, keepdims=True)
    return ((gb - ga) ** 2).sum() / a.shape[0] ** 2


def np_pkt(fs, ft, eps=1e-7):
    """The PKT authors' `cosine_similarity_loss` with explicit loops over the pairs."""
    a, b = fs.detach().double().numpy(), ft.detach().double().numpy()
    a = a / (np.sqrt((a ** 2).sum(1, keepdims=True)) + eps)
    b = b / (np.sqrt((b ** 2).sum(1, keepdims=True)) + eps)
    n = a.shape[0]
    ks = np.array([[(a[i] @ a[j] + 1) / 2 for j in range(n)] for i in range(n)])
    kt = np.array([[(b[i] @ b[j] + 1) / 2 for j in range(n)] for i in range(n)])
    ps, pt = ks / ks.sum(1, keepdims=True), kt / kt.sum(1, keepdims=True)
    return float(np.mean(pt * np.log((pt + eps) / (ps + eps))))


def np_hcl(fs_list, ft_list):
    """The ReviewKD authors' `hcl`, pooling by explicit blocks (1-D maps here, lengths divisible)."""
    total = 0.0
    for fs, ft in zip(fs_list, ft_list):
        a, b = fs.detach().double().numpy(), ft.detach().double().numpy()
        h = a.shape[2]
        loss, cnt, tot = ((a - b) ** 2).mean(), 1.0, 1.0
        for level in (4, 2, 1):
            if level >= h:
                continue
            k = h // level
            pa = np.stack([a[:, :, i * k:(i + 1) * k].mean(2) for i in range(level)], axis=2)
            pb = np.stack([b[:, :, i * k:(i + 1) * k].mean(2) for i in range(level)], axis=2)
            cnt /= 2.0
            loss += ((pa - pb) ** 2).mean() * cnt
            tot += cnt
        total += loss / tot
    return total


def np_nce(p, n_data, eps=1e-7):
    """RepDistiller `ContrastLoss` (paper Eq. 18) for P of shape (B, K + 1), positives first."""
    b, m = p.shape[0], p.shape[1] - 1
    pn = 1.0 / n_data
    pos = np.log(p[:, 0] / (p[:, 0] + m * pn + eps)).sum()
    neg = np.log((m * pn) / (p[:, 1:] + m * pn + eps)).sum()
    return -(pos + neg) / b


# --------------------------------------------------------------------------- hand-computed losses


def test_fitnet_is_ce_plus_100_times_the_hint_of_the_regressed_middle_stage():
    torch.manual_seed(0)
    x, y = batch()
    m = get_method("fitnet")(make_ctx(CNN8, CNN16), {})
    assert m.hp["hint_weight"] == 100.0 and m.hp["hint_stage"] == 1
    terms = m.training_step(x, y).terms
    s, t = cnn_features(m.student, x), cnn_features(m.teacher, x)
    reg = m.connectors["regressor"]
    regressed = F.relu(bn_train(reg.conv(s["stages"][1]), reg.bn))  # 1x1 conv (8 -> 16), BN, ReLU
    hint = ((regressed - t["stages"][1]) ** 2).mean()
    assert value(terms["hint"]) == pytest.approx(100.0 * value(hint), rel=1e-5)
    assert value(terms["ce"]) == pytest.approx(value(F.cross_entropy(s["logits"], y)), rel=1e-6)
    assert set(terms) == {"ce", "hint"}


def test_fitnet_on_resnets_regresses_stage_two_as_repdistillers_hint_layer_2():
    torch.manual_seed(0)
    x, y = batch(8, (3, 8, 8))
    m = get_method("fitnet")(make_ctx(RES8, RES14, (3, 8, 8)), {"hint_weight": 10.0})
    terms = m.training_step(x, y).terms
    s, t = resnet_features(m.student, x), resnet_features(m.teacher, x)
    reg = m.connectors["regressor"]
    expected = 10.0 * ((F.relu(bn_train(reg.conv(s["stages"][1]), reg.bn)) - t["stages"][1]) ** 2).mean()
    assert value(terms["hint"]) == pytest.approx(value(expected), rel=1e-5)


def test_at_is_beta_times_the_sum_over_stages_of_attention_map_differences():
    torch.manual_seed(0)
    x, y = batch()
    m = get_method("at")(make_ctx(CNN8, CNN16), {})
    terms = m.training_step(x, y).terms
    s, t = cnn_features(m.student, x), cnn_features(m.teacher, x)
    assert len(s["stages"]) == 3
    assert value(terms["at"]) == pytest.approx(1000.0 * np_at(s["stages"], t["stages"]), rel=1e-5)


def test_at_on_resnets_uses_the_three_residual_stages():
    torch.manual_seed(0)
    x, y = batch(8, (3, 8, 8))
    m = get_method("at")(make_ctx(RES8, RES14, (3, 8, 8)), {"at_weight": 1.0})
    s, t = resnet_features(m.student, x), resnet_features(m.teacher, x)
    assert value(m.training_step(x, y).terms["at"]) == pytest.approx(np_at(s["stages"], t["stages"]), rel=1e-5)


def test_sp_compares_the_batch_similarities_of_the_last_stage():
    torch.manual_seed(0)
    x, y = batch()
    m = get_method("sp")(make_ctx(CNN8, CNN16), {})
    terms = m.training_step(x, y).terms
    s, t = cnn_features(m.student, x), cnn_features(m.teacher, x)
    assert value(terms["sp"]) == pytest.approx(3000.0 * np_sp(s["stages"][-1], t["stages"][-1]), rel=1e-5)


def test_pkt_matches_the_authors_kernel_kl_on_the_penultimate_embeddings():
    torch.manual_seed(0)
    x, y = batch()
    m = get_method("pkt")(make_ctx(CNN8, CNN16), {})
    terms = m.training_step(x, y).terms
    s, t = cnn_features(m.student, x), cnn_features(m.teacher, x)
    assert value(terms["pkt"]) == pytest.approx(30000.0 * np_pkt(s["penultimate"], t["penultimate"]), rel=1e-4)


def test_reviewkd_reviews_student_stages_and_embedding_against_teacher_preactivations():
    torch.manual_seed(0)
    x, y = batch()
    m = get_method("reviewkd")(make_ctx(CNN8, CNN16), {})
    m.start_epoch(21)  # past the authors' 20 warm-up epochs
    terms = m.training_step(x, y).terms
    s, t = cnn_features(m.student, x), cnn_features(m.teacher, x)
    review = m.connectors["review"]
    outs = review([*s["stages"], s["penultimate"]])  # the path itself is checked by hand in test_feature_losses
    targets = [*t["preact"], t["penultimate"].unsqueeze(-1)]  # the teacher's stages before their ReLU
    assert [tuple(o.shape[1:]) for o in outs] == [(16, 40)] * 3 + [(640, 1)]
    assert value(terms["review"]) == pytest.approx(5.0 * np_hcl(outs, targets), rel=1e-5)
    # the post-activation variant compares with the teacher's stage outputs after the ReLU
    m2 = get_method("reviewkd")(make_ctx(CNN8, CNN16), {"reviewkd_teacher_stages": "post"})
    m2.load_state_dict(m.state_dict())
    m2.start_epoch(21)
    post = m2.training_step(x, y).terms["review"]
    outs = m2.connectors["review"]([*s["stages"], s["penultimate"]])
    assert value(post) == pytest.approx(5.0 * np_hcl(outs, [*t["stages"], t["penultimate"].unsqueeze(-1)]), rel=1e-5)


def test_reviewkd_on_resnets_uses_the_authors_levels_and_warms_up_from_epoch_one():
    torch.manual_seed(0)
    x, y = batch(4, (3, 8, 8))
    m = get_method("reviewkd")(make_ctx(RES8, RES14, (3, 8, 8)), {})
    assert [tuple(a.student_shapes[0]) for a in [m.connectors["review"]]] == [(16, 8, 8)]
    t = resnet_features(m.teacher, x)
    teacher_levels = [*t["preact"], t["penultimate"]]
    assert [tuple(f.shape[1:]) for f in teacher_levels] == [tuple(s) for s in m.connectors["review"].teacher_shapes[:3]] \
        + [(64,)]
    factors = []
    for epoch in (1, 2, 11, 21, 40):
        m.start_epoch(epoch)
        factors.append(m.warmup_factor())
    assert factors == [0.0, 0.05, 0.5, 1.0, 1.0]  # min(1, e / 20) with the authors' e counted from 0
    m.start_epoch(1)
    assert value(m.training_step(x, torch.zeros(4, dtype=torch.long)).terms["review"]) == 0.0


def test_crd_matches_the_authors_nce_with_its_bank_z_and_other_class_negatives():
    torch.manual_seed(0)
    n, k = 32, 6
    g = torch.Generator().manual_seed(3)
    labels = torch.randint(0, 4, (n,), generator=g)
    index = torch.randperm(n, generator=g)[:8]
    x, y = torch.randn(8, *SIG, generator=g), labels[index]
    m = get_method("crd")(make_ctx(CNN8, CNN16, n=n, labels=labels), {"crd_negatives": k})
    crd = m.connectors["crd"]
    mem = crd.memory
    bank_s, bank_t = mem.memory_s.clone().double(), mem.memory_t.clone().double()
    torch.manual_seed(7)
    terms = m.training_step(x, y, index).terms
    torch.manual_seed(7)
    idx = mem.sample(index).numpy()  # the same draw: the forward passes use no random numbers
    # negatives: k distinct samples of other classes, the positive first
    lab = labels.numpy()
    for row, i in zip(idx, index.numpy()):
        assert row[0] == i and len(set(row[1:])) == k and all(lab[j] != lab[i] for j in row[1:])

    s, t = cnn_features(m.student, x), cnn_features(m.teacher, x)

    def embed(head, f):
        e = (f.detach().double() @ head.linear.weight.detach().double().t() + head.linear.bias.detach().double())
        return (e / e.norm(dim=1, keepdim=True)).numpy()

    e_s, e_t = embed(crd.embed_s, s["penultimate"]), embed(crd.embed_t, t["penultimate"])
    p_s = np.exp(np.einsum("bkd,bd->bk", bank_t.numpy()[idx], e_s) / 0.07)  # student anchor, teacher bank
    p_t = np.exp(np.einsum("bkd,bd->bk", bank_s.numpy()[idx], e_t) / 0.07)  # teacher anchor, student bank
    z_s, z_t = p_s.mean() * n, p_t.mean() * n  # Z from the first batch
    assert mem.z.tolist() == pytest.approx([z_s, z_t], rel=1e-4)
    expected = 0.8 * (np_nce(p_s / z_s, n) + np_nce(p_t / z_t, n))
    assert value(terms["crd"]) == pytest.approx(expected, rel=1e-4)
    assert value(terms["ce"]) == pytest.approx(value(F.cross_entropy(s["logits"], y)), rel=1e-6)
    # the bank moved: m_i <- normalise(0.5 m_i + 0.5 e_i), for the batch's samples only
    i = index.numpy()
    moved = 0.5 * bank_s.numpy()[i] + 0.5 * e_s
    moved /= np.linalg.norm(moved, axis=1, keepdims=True)
    np.testing.assert_allclose(mem.memory_s.double().numpy()[i], moved, rtol=1e-5, atol=1e-6)
    others = np.setdiff1d(np.arange(n), i)
    assert torch.equal(mem.memory_t[others].double(), bank_t[others])
    # a second batch keeps Z; CRD+KD adds T^2 KL at the KD weight
    m.hp.update(kd_weight=1.0)
    terms2 = m.training_step(x, y, index).terms
    assert mem.z.tolist() == pytest.approx([z_s, z_t], rel=1e-4)
    kd = 16.0 * F.kl_div(F.log_softmax(s["logits"] / 4, 1), F.log_softmax(t["logits"] / 4, 1), log_target=True,
                         reduction="batchmean")
    assert value(terms2["kd"]) == pytest.approx(value(kd), rel=1e-5)


def test_crd_asks_for_what_it_needs():
    x, y = batch(8)
    m = get_method("crd")(make_ctx(CNN8, CNN16, n=8, labels=y), {"crd_negatives": 4})
    assert type(m).needs_sample_index
    with pytest.raises(ValueError, match="indices"):
        m.training_step(x, y)
    with pytest.raises(ValueError, match="num_train_samples"):
        get_method("crd")(make_ctx(CNN8, CNN16, n=0), {})
    with pytest.raises(ValueError, match="train_labels"):
        get_method("crd")(make_ctx(CNN8, CNN16, n=8), {})
    uniform = get_method("crd")(make_ctx(CNN8, CNN16, n=8), {"crd_negatives": 4, "crd_negatives_from": "uniform"})
    assert uniform.connectors["crd"].memory.labels is None


def test_methods_refuse_stages_they_cannot_pair_in_one_line():
    with pytest.raises(ValueError, match="at pairs stages one to one: the student has 2 stages"):
        get_method("at")(make_ctx({**CNN8, "depth": 2}, CNN16), {})
    with pytest.raises(ValueError, match="reviewkd pairs levels"):
        get_method("reviewkd")(make_ctx({**CNN8, "depth": 2}, CNN16), {})
    with pytest.raises(ValueError, match="declares no pre-activation stages"):
        get_method("reviewkd")(make_ctx({"family": "mlp", "size": 8}, {"family": "mlp", "size": 16}), {})


# --------------------------------------------------------------------------- learning, gradients, connectors


def fit(method, x, y, steps, index=None):
    method.train()
    opt = torch.optim.Adam(list(method.trainable_parameters()), lr=1e-2)
    history = []
    for _ in range(steps):
        terms = step(method, x, y, index).terms
        loss = sum(terms.values())
        opt.zero_grad()
        loss.backward()
        opt.step()
        history.append({k: value(v) for k, v in terms.items()})
    return history


@pytest.mark.parametrize("name, term, pair, in_shape", [
    ("fitnet", "hint", (CNN8, CNN16), SIG),
    ("at", "at", (CNN8, CNN16), SIG),
    ("sp", "sp", (CNN8, CNN16), SIG),
    ("pkt", "pkt", (CNN8, CNN16), SIG),
    ("crd", "crd", (CNN8, CNN16), SIG),
    ("reviewkd", "review", (CNN8, CNN16), SIG),
])
def test_feature_method_learns_and_owns_its_connectors(name, term, pair, in_shape):
    torch.manual_seed(0)
    n = 16
    x, y = batch(n, in_shape)
    m = get_method(name)(make_ctx(*pair, in_shape, n=n, labels=y), {"crd_negatives": 8} if name == "crd" else {})
    if name == "reviewkd":
        m.start_epoch(21)
    index = torch.arange(n) if m.needs_sample_index else None
    # gradients: the student and every connector get them, the frozen teacher none
    loss = sum(step(m, x, y, index).terms.values())
    loss.backward()
    assert not any(p.requires_grad or p.grad is not None for p in m.teacher.parameters())
    assert all(p.grad is not None for p in m.student.parameters())
    assert all(p.grad is not None and p.grad.abs().sum() > 0 for p in m.connectors.parameters())
    m.zero_grad(set_to_none=True)

    h = fit(m, x, y, steps=15, index=index)
    assert set(h[0]) == {"ce", term}
    assert h[-1]["ce"] < 0.7 * h[0]["ce"]
    if name == "crd":  # each student embedding now lies closer to its own teacher bank entry than to others
        with torch.no_grad():
            crd = m.connectors["crd"]
            sim = crd.embed_s(m.student.features(x)) @ crd.memory.memory_t.t()
        assert sim.diagonal().mean() > sim.masked_fill(torch.eye(n, dtype=torch.bool), 0).sum() / (n * n - n)
    else:
        assert h[-1][term] < h[0][term]
    # connectors: optimised with the student, in the method's state, counted apart from the student
    trained = {id(p) for p in m.trainable_parameters()}
    connector = list(m.connectors.parameters())
    assert (len(connector) > 0) == (name in ("fitnet", "crd", "reviewkd"))
    assert all(id(p) in trained for p in connector) and all(id(p) in trained for p in m.student.parameters())
    keys = m.state_dict().keys()
    assert all(any(k.startswith(f"connectors.{c}.") for k in keys) for c in m.connectors)
    cost = training_cost(m)
    assert cost["connector_params"] == sum(p.numel() for p in connector)
    assert (cost["connector_flops"] > 0) == bool(connector)
    if name == "crd":
        assert {"connectors.crd.memory.memory_s", "connectors.crd.memory.z"} <= set(keys)


def test_connector_flops_are_the_connectors_forward_per_sample():
    m = get_method("fitnet")(make_ctx(CNN8, CNN16), {})
    assert m.connector_flops() == 2 * 8 * 16 * 40  # a 1x1 conv from 8 to 16 channels over 40 positions
    crd = get_method("crd")(make_ctx(CNN8, CNN16, n=8, labels=torch.arange(8) % 2), {"crd_negatives": 2})
    bank = crd.connectors["crd"].memory.memory_s.clone()
    assert crd.connector_flops() == 2 * (8 * 40 + 16 * 40) * 128  # the two linear heads
    assert torch.equal(crd.connectors["crd"].memory.memory_s, bank) and crd.connectors["crd"].training


# --------------------------------------------------------------------------- in the shared loop


def trial_cfg(data_root, method, teacher, **over):
    cfg = {
        "study": "t", "stage": "adhoc", "method": method, "seed": 0,
        "dataset": {"name": "mnist1d", "num_samples": 1000, "root": data_root, "train_subset": 256},
        "student": CNN8, "teacher": teacher, "train": {"epochs": 3, "batch_size": 64, "lr": 0.01},
        "runtime": {"device": "cpu"}, "hp": {},
    }
    cfg.update(over)
    return cfg


@pytest.fixture(scope="module")
def teacher(tmp_path_factory):
    """A teacher checkpoint as the zoo stores it (random weights stand in for training: the loop only
    reads them)."""
    torch.manual_seed(5)
    path = str(tmp_path_factory.mktemp("zoo") / "model.pt")
    storage.save_state({"model": models.build_model(CNN16, SIG, NC).state_dict()}, path)
    return {**CNN16, "checkpoint": path}


class StopAfter(LocalHooks):
    def __init__(self, epoch):
        super().__init__()
        self.stop = epoch

    def report(self, metrics, rows, state, final=False):
        super().report(metrics, rows, state)
        if metrics["epoch"] == self.stop:
            raise KeyboardInterrupt  # the process dies after this epoch's checkpoint


def test_each_feature_method_trains_in_the_loop_with_its_cost_in_the_rows(data_root, teacher):
    for name in FEATURE_METHODS:
        hp = {"crd_negatives": 64} if name == "crd" else {}
        hooks = run_trial(trial_cfg(data_root, name, teacher, hp=hp, train={"epochs": 1, "batch_size": 128,
                                                                            "lr": 0.01}))
        row = hooks.rows[-1]
        assert row["status"] == "ok" and math.isfinite(row["train_loss"]) and 0 <= row["val_acc"] <= 1
        assert row["student_params"] == models.count_params(models.build_model(CNN8, SIG, NC))  # the student alone
        assert (row["connector_params"] > 0) == (name in ("fitnet", "crd", "reviewkd"))
        table = rows_to_table([to_schema_row(r) for r in hooks.rows])
        assert table.column("connector_params")[0].as_py() == row["connector_params"]
    assert run_trial(trial_cfg(data_root, "kd", teacher, train={"epochs": 1, "batch_size": 128, "lr": 0.01})
                     ).rows[-1]["connector_params"] == 0


def test_fitnet_resumed_mid_training_matches_uninterrupted(data_root, teacher):
    full = run_trial(trial_cfg(data_root, "fitnet", teacher))
    first = StopAfter(2)
    with pytest.raises(KeyboardInterrupt):
        run_trial(trial_cfg(data_root, "fitnet", teacher), first)
    reg = {k: v for k, v in first.state["method"].items() if k.startswith("connectors.regressor.")}
    assert reg and "connectors.regressor.bn.running_mean" in reg
    resumed = LocalHooks(state=first.state)
    run_trial(trial_cfg(data_root, "fitnet", teacher), resumed)
    assert [r["epoch"] for r in resumed.rows] == [2, 3]
    # the regressor's weights, BN statistics and optimiser state came back: the same result to rounding
    assert resumed.rows[-1]["train_loss"] == pytest.approx(full.rows[-1]["train_loss"], rel=1e-5)
    assert resumed.rows[-1]["val_acc"] == pytest.approx(full.rows[-1]["val_acc"])


def test_crd_resumed_mid_training_restores_its_heads_bank_and_z(data_root, teacher, monkeypatch):
    cfg = trial_cfg(data_root, "crd", teacher, hp={"crd_negatives": 64})
    first = StopAfter(2)
    with pytest.raises(KeyboardInterrupt):
        run_trial(cfg, first)
    saved = first.state["method"]
    z = saved["connectors.crd.memory.z"]
    assert (z > 0).all()
    seen = {}
    from trainables.methods.crd import ContrastiveRD

    original = ContrastiveRD.training_step

    def spy(self, x, y, index=None):  # the method's state at the first step after the resume
        if not seen:
            seen.update({k: v.detach().clone() for k, v in self.state_dict().items()
                         if k.startswith("connectors.")})
        out = original(self, x, y, index)
        seen.setdefault("z_after", self.connectors["crd"].memory.z.clone())
        return out

    monkeypatch.setattr(ContrastiveRD, "training_step", spy)
    resumed = LocalHooks(state=first.state)
    run_trial(cfg, resumed)
    for key in ("connectors.crd.embed_s.linear.weight", "connectors.crd.embed_t.linear.bias",
                "connectors.crd.memory.memory_s", "connectors.crd.memory.memory_t", "connectors.crd.memory.z"):
        assert torch.equal(seen[key], saved[key]), key
    assert torch.equal(seen["z_after"], z)  # Z is not estimated again after a resume
    assert [r["epoch"] for r in resumed.rows] == [2, 3] and resumed.rows[-1]["status"] == "ok"
