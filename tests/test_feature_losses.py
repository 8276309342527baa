"""Feature-distillation losses, connectors and CRD against hand computations (numpy loops,
independent of the vectorised code) and the authors' formulas; gradients where they are subtle."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from trainables import connectors, crd, feature_losses as fl


def rng(seed=0):
    return np.random.default_rng(seed)


def t64(a):
    return torch.tensor(np.asarray(a), dtype=torch.float64)


def block_mean(a, size):
    """Average-pool a (B, C, H, W) numpy map to (size, size) by explicit blocks (H divisible by size)."""
    b, c, h, w = a.shape
    kh, kw = h // size, w // size
    out = np.zeros((b, c, size, size))
    for i in range(size):
        for j in range(size):
            out[:, :, i, j] = a[:, :, i * kh:(i + 1) * kh, j * kw:(j + 1) * kw].mean(axis=(2, 3))
    return out


# --------------------------------------------------------------------------- FitNets


def test_hint_loss_is_the_mean_squared_error():
    r = rng(1)
    s, t = r.normal(size=(2, 3, 4, 4)), r.normal(size=(2, 3, 4, 4))
    expected = sum((s[idx] - t[idx]) ** 2 for idx in np.ndindex(s.shape)) / s.size
    assert fl.hint_loss(t64(s), t64(t)).item() == pytest.approx(expected, rel=1e-6)
    with pytest.raises(ValueError, match="same shape"):
        fl.hint_loss(torch.zeros(2, 3, 4, 4), torch.zeros(2, 4, 4, 4))


@pytest.mark.parametrize("student, teacher, layer", [
    ((128, 16, 16), (128, 16, 16), "1x1 conv"),   # resnet8x4 -> resnet32x4, RepDistiller's hint layer (stage 2)
    ((32, 8, 8), (64, 8, 8), "1x1 conv"),         # widths differ, same size
    ((32, 16, 16), (64, 8, 8), "stride 2"),       # student map twice the teacher's
    ((32, 4, 4), (64, 8, 8), "deconv"),           # half the teacher's
    ((16, 10, 10), (64, 8, 8), "3x3 valid"),      # a little larger: kernel 1 + 10 - 8
    ((25, 10), (64, 5), "stride 2"),              # 1-D signals (MNIST-1D CNN stages)
    ((25, 5), (64, 10), "deconv"),
    ((25, 19), (64, 10), "valid"),
])
def test_convreg_adapts_student_shape_to_teacher_shape(student, teacher, layer):
    reg = connectors.ConvReg(student, teacher)
    out = reg(torch.randn(3, *student))
    assert tuple(out.shape) == (3, *teacher)
    assert out.min() >= 0  # BN then ReLU, as RepDistiller's
    if layer == "deconv":
        assert isinstance(reg.conv, (torch.nn.ConvTranspose1d, torch.nn.ConvTranspose2d))
    elif layer == "stride 2":
        assert reg.conv.stride[0] == 2


def test_convreg_refuses_what_it_cannot_map():
    with pytest.raises(ValueError, match="cannot map"):
        connectors.ConvReg((32, 3, 3), (64, 8, 8))
    with pytest.raises(ValueError, match="spatial ranks"):
        connectors.ConvReg((32, 8), (64, 8, 8))
    with pytest.raises(ValueError, match="per-sample"):
        connectors.ConvReg((256,), (256,))


# --------------------------------------------------------------------------- AT


def np_attention(f, p=2):
    """Per sample: the channel mean of f^p over positions, divided by its L2 norm (loops)."""
    b, c = f.shape[:2]
    flat = f.reshape(b, c, -1)
    out = np.zeros((b, flat.shape[2]))
    for i in range(b):
        for k in range(flat.shape[2]):
            out[i, k] = sum(flat[i, ch, k] ** p for ch in range(c)) / c
        out[i] /= math.sqrt(sum(v * v for v in out[i]))
    return out


def test_at_loss_matches_hand_computation_and_pools_the_larger_map():
    r = rng(2)
    # stage pairs of CIFAR ResNet-like shapes, scaled down: equal sizes, then teacher twice the student
    s1, t1 = r.normal(size=(2, 3, 4, 4)), r.normal(size=(2, 5, 4, 4))
    s2, t2 = r.normal(size=(2, 4, 2, 2)), r.normal(size=(2, 6, 4, 4))
    qs1, qt1 = np_attention(s1), np_attention(t1)
    pair1 = sum((qs1[i, k] - qt1[i, k]) ** 2 for i in range(2) for k in range(16)) / (2 * 16)
    qs2, qt2 = np_attention(s2), np_attention(block_mean(t2, 2))
    pair2 = sum((qs2[i, k] - qt2[i, k]) ** 2 for i in range(2) for k in range(4)) / (2 * 4)
    got = fl.at_loss([t64(s1), t64(s2)], [t64(t1), t64(t2)])
    assert got.item() == pytest.approx(pair1 + pair2, rel=1e-6)
    # the authors' expression (RepDistiller Attention.at_loss), pair 1
    at = lambda f: F.normalize(f.pow(2).mean(1).view(f.size(0), -1))  # noqa: E731
    assert fl.at_pair_loss(t64(s1), t64(t1)).item() == pytest.approx(
        (at(t64(s1)) - at(t64(t1))).pow(2).mean().item(), rel=1e-9)
    # 1-D maps (MNIST-1D CNN stages)
    s3, t3 = r.normal(size=(2, 3, 6)), r.normal(size=(2, 4, 6))
    q3s, q3t = np_attention(s3), np_attention(t3)
    assert fl.at_pair_loss(t64(s3), t64(t3)).item() == pytest.approx(((q3s - q3t) ** 2).mean(), rel=1e-6)


def test_at_gradient_goes_through_the_normalisation():
    small_s = torch.randn(2, 2, 3, 3, dtype=torch.float64, requires_grad=True)
    assert torch.autograd.gradcheck(lambda s: fl.at_pair_loss(s, torch.ones(2, 3, 3, 3, dtype=torch.float64)
                                                              + torch.eye(3, dtype=torch.float64)), (small_s,))
    f_s = torch.randn(3, 4, 5, 5, dtype=torch.float64, requires_grad=True)
    f_t = torch.randn(3, 6, 5, 5, dtype=torch.float64)
    # the map is normalised, so scaling the features changes nothing: the gradient is orthogonal to f_s
    loss = fl.at_pair_loss(f_s, f_t)
    (g,) = torch.autograd.grad(loss, f_s)
    assert g.abs().sum() > 0
    assert (g * f_s).sum().item() == pytest.approx(0.0, abs=1e-10)
    assert fl.at_pair_loss(3.0 * f_s, f_t).item() == pytest.approx(loss.item(), rel=1e-9)
    # an all-zero (dead) student map gives a finite loss and gradient (F.normalize's ε)
    z = torch.zeros(3, 4, 5, 5, requires_grad=True)
    fl.at_pair_loss(z, f_t.float()).backward()
    assert torch.isfinite(z.grad).all()


# --------------------------------------------------------------------------- SP


def np_sp(fs, ft):
    b = fs.shape[0]
    qs, qt = fs.reshape(b, -1), ft.reshape(b, -1)

    def gram_rows(q):
        g = np.array([[sum(q[i, k] * q[j, k] for k in range(q.shape[1])) for j in range(b)] for i in range(b)])
        return np.array([g[i] / math.sqrt(sum(v * v for v in g[i])) for i in range(b)])

    gs, gt = gram_rows(qs), gram_rows(qt)
    return sum((gt[i, j] - gs[i, j]) ** 2 for i in range(b) for j in range(b)) / (b * b)


def test_sp_loss_matches_hand_computation():
    r = rng(3)
    fs, ft = r.normal(size=(4, 2, 3, 3)), r.normal(size=(4, 5, 2, 2))  # widths and shapes differ
    assert fl.sp_loss([t64(fs)], [t64(ft)]).item() == pytest.approx(np_sp(fs, ft), rel=1e-6)
    # the authors' expression (RepDistiller Similarity.similarity_loss)
    a, b = t64(fs).view(4, -1), t64(ft).view(4, -1)
    gs, gt = F.normalize(a @ a.t()), F.normalize(b @ b.t())
    assert fl.sp_pair_loss(t64(fs), t64(ft)).item() == pytest.approx(
        ((gt - gs) ** 2).view(-1, 1).sum(0).item() / 16, rel=1e-9)
    fs2, ft2 = r.normal(size=(4, 3)), r.normal(size=(4, 7))
    assert fl.sp_loss([t64(fs), t64(fs2)], [t64(ft), t64(ft2)]).item() == pytest.approx(
        np_sp(fs, ft) + np_sp(fs2, ft2), rel=1e-6)


def test_sp_gradient_is_scale_free_and_checks():
    f_s = torch.randn(4, 2, 2, 2, dtype=torch.float64, requires_grad=True)
    f_t = torch.randn(4, 8, dtype=torch.float64)
    assert torch.autograd.gradcheck(lambda s: fl.sp_pair_loss(s, f_t), (f_s,))
    (g,) = torch.autograd.grad(fl.sp_pair_loss(f_s, f_t), f_s)
    assert (g * f_s).sum().item() == pytest.approx(0.0, abs=1e-10)


# --------------------------------------------------------------------------- PKT


def np_pkt(fs, ft, eps=1e-7):
    def cond(f):
        n = f.shape[0]
        x = np.array([row / (math.sqrt(sum(v * v for v in row)) + eps) for row in f])
        k = np.array([[(sum(x[i] * x[j]) + 1.0) / 2.0 for j in range(n)] for i in range(n)])
        return np.array([k[i] / k[i].sum() for i in range(n)])

    s, t = cond(fs), cond(ft)
    n = fs.shape[0]
    return sum(t[i, j] * math.log((t[i, j] + eps) / (s[i, j] + eps)) for i in range(n) for j in range(n)) / (n * n)


def test_pkt_loss_matches_hand_computation():
    r = rng(4)
    fs, ft = r.normal(size=(5, 3)), r.normal(size=(5, 6))
    assert fl.pkt_loss(t64(fs), t64(ft)).item() == pytest.approx(np_pkt(fs, ft), rel=1e-6)
    # the same distributions give (almost) no loss; scaling the embeddings changes nothing
    assert abs(fl.pkt_loss(t64(ft), t64(ft)).item()) < 1e-9
    assert fl.pkt_loss(t64(2.5 * fs), t64(ft)).item() == pytest.approx(np_pkt(fs, ft), rel=1e-6)


def test_pkt_eps_keeps_zero_and_opposite_embeddings_finite():
    # a zero embedding (x / (0 + ε) = 0, cosine 0, kernel 1/2) and antipodal pairs (kernel 0 -> t log t = 0)
    f_s = torch.tensor([[0.0, 0.0], [1.0, 0.0], [0.5, 2.0]], dtype=torch.float64, requires_grad=True)
    f_t = torch.tensor([[1.0, 1.0], [-1.0, -1.0], [2.0, 0.0]], dtype=torch.float64)
    loss = fl.pkt_loss(f_s, f_t)
    assert loss.item() == pytest.approx(np_pkt(f_s.detach().numpy(), f_t.numpy()), rel=1e-6)
    loss.backward()
    assert torch.isfinite(f_s.grad).all() and f_s.grad[1:].abs().sum() > 0
    g = torch.randn(4, 5, dtype=torch.float64, requires_grad=True)
    assert torch.autograd.gradcheck(lambda s: fl.pkt_loss(s, f_t.new_tensor(np.ones((4, 2)) + np.eye(4, 2))), (g,))


# --------------------------------------------------------------------------- ReviewKD: HCL


def np_mse(a, b):
    return float(((a - b) ** 2).mean())


def test_hcl_loss_matches_hand_computation():
    r = rng(5)
    s8, t8 = r.normal(size=(2, 3, 8, 8)), r.normal(size=(2, 3, 8, 8))
    s4, t4 = r.normal(size=(2, 2, 4, 4)), r.normal(size=(2, 2, 4, 4))
    s1, t1 = r.normal(size=(2, 5, 1, 1)), r.normal(size=(2, 5, 1, 1))
    # h = 8: full, then 4, 2, 1 with weights 1/2, 1/4, 1/8, over 1 + 7/8
    l8 = (np_mse(s8, t8) + 0.5 * np_mse(block_mean(s8, 4), block_mean(t8, 4))
          + 0.25 * np_mse(block_mean(s8, 2), block_mean(t8, 2))
          + 0.125 * np_mse(block_mean(s8, 1), block_mean(t8, 1))) / 1.875
    # h = 4: 4 is skipped (l >= h), then 2 and 1 with weights 1/2, 1/4
    l4 = (np_mse(s4, t4) + 0.5 * np_mse(block_mean(s4, 2), block_mean(t4, 2))
          + 0.25 * np_mse(block_mean(s4, 1), block_mean(t4, 1))) / 1.75
    l1 = np_mse(s1, t1)  # the pooled penultimate level: its MSE alone
    got = fl.hcl_loss([t64(s8), t64(s4), t64(s1)], [t64(t8), t64(t4), t64(t1)])
    assert got.item() == pytest.approx(l8 + l4 + l1, rel=1e-6)
    # 1-D levels pool to 4, 2, 1 positions
    a, b = r.normal(size=(2, 3, 8)), r.normal(size=(2, 3, 8))
    pool = lambda x, n: x.reshape(2, 3, n, 8 // n).mean(axis=3)  # noqa: E731
    l1d = (np_mse(a, b) + 0.5 * np_mse(pool(a, 4), pool(b, 4)) + 0.25 * np_mse(pool(a, 2), pool(b, 2))
           + 0.125 * np_mse(pool(a, 1), pool(b, 1))) / 1.875
    assert fl.hcl_loss([t64(a)], [t64(b)]).item() == pytest.approx(l1d, rel=1e-6)
    with pytest.raises(ValueError, match="same shape"):
        fl.hcl_loss([torch.zeros(2, 3, 4, 4)], [torch.zeros(2, 3, 8, 8)])


def test_hcl_gradient_through_the_pyramid():
    fs = torch.randn(2, 2, 4, 4, dtype=torch.float64, requires_grad=True)
    ft = torch.randn(2, 2, 4, 4, dtype=torch.float64)
    assert torch.autograd.gradcheck(lambda s: fl.hcl_loss([s], [ft]), (fs,))
    # a uniform shift c is seen alike by every pyramid level: by hand, each level's MSE pulls back through
    # its average pooling to 2c/N per entry, so the gradient is 2c/N * (1 + 1/2 + 1/4) / 1.75 = 2c/N
    c = 0.3
    shifted = (ft + c).requires_grad_(True)
    (g,) = torch.autograd.grad(fl.hcl_loss([shifted], [ft]), shifted)
    assert torch.allclose(g, torch.full_like(g, c * 2 / ft.numel()))


# --------------------------------------------------------------------------- ReviewKD: ABF and the review path


def np_sigmoid(v):
    return 1.0 / (1.0 + math.exp(-v))


def test_abf_fusion_matches_hand_computation():
    torch.manual_seed(0)
    abf = connectors.ABF(1, 1, 1, fuse=True).double().eval()  # eval: BN with running stats 0 / 1
    bn = 1.0 / math.sqrt(1.0 + 1e-5)
    w1 = abf.conv1[0].weight.item()
    wa = abf.att_conv[0].weight.detach().numpy().reshape(2, 2)
    ba = abf.att_conv[0].bias.detach().numpy()
    w2 = abf.conv2[0].weight.detach().numpy().reshape(3, 3)
    x = np.array([[1.0, -2.0], [0.5, 3.0]])
    res = 0.7  # the deeper level's residual: 1x1, resized to 2x2 by nearest = broadcast
    fused = np.zeros((2, 2))
    for i in range(2):
        for j in range(2):
            xp = w1 * x[i, j] * bn
            a0 = np_sigmoid(wa[0, 0] * xp + wa[0, 1] * res + ba[0])
            a1 = np_sigmoid(wa[1, 0] * xp + wa[1, 1] * res + ba[1])
            fused[i, j] = a0 * xp + a1 * res
    padded = np.pad(fused, 1)
    out = np.array([[sum(w2[u, v] * padded[i + u, j + v] for u in range(3) for v in range(3)) * bn
                     for j in range(2)] for i in range(2)])
    got_out, got_res = abf(t64(x).view(1, 1, 2, 2), t64([[[[res]]]]), (2, 2))
    assert np.allclose(got_res.detach().numpy().reshape(2, 2), fused, rtol=1e-9)
    assert np.allclose(got_out.detach().numpy().reshape(2, 2), out, rtol=1e-9)
    # resized to the teacher's size (nearest) before conv2 when the sizes differ
    out4, res4 = abf(t64(x).view(1, 1, 2, 2), t64([[[[res]]]]), (4, 4))
    assert tuple(out4.shape) == (1, 1, 4, 4)
    assert np.allclose(res4.detach().numpy().reshape(4, 4), np.kron(fused, np.ones((2, 2))), rtol=1e-9)


RESNET8X4 = [(64, 32, 32), (128, 16, 16), (256, 8, 8), (256,)]  # stage outputs + pooled penultimate
RESNET32X4 = [(64, 32, 32), (128, 16, 16), (256, 8, 8), (256,)]


@pytest.mark.parametrize("student, teacher", [
    (RESNET8X4, RESNET32X4),                                                   # the authors' CIFAR pair
    ([(16, 32, 32), (32, 16, 16), (64, 8, 8), (64,)], RESNET32X4),             # resnet20 -> resnet32x4
    ([(8, 20), (8, 10), (8, 5), (40,)], [(32, 20), (32, 10), (32, 5), (160,)]),  # 1-D CNNs, flat penultimate
])
def test_review_path_outputs_the_teacher_shapes(student, teacher):
    path = connectors.ReviewPath(student, teacher)
    outs = path([torch.randn(2, *s) for s in student])
    targets = path.as_maps([torch.randn(2, *t) for t in teacher])
    assert [tuple(o.shape) for o in outs] == [tuple(t.shape) for t in targets]
    assert path.abfs[-1].att_conv is None and all(a.att_conv is not None for a in path.abfs[:-1])
    mid = min(512, [s for s in student if len(s) > 1][-1][0])  # the deepest stage's width (flat: not)
    assert all(a.conv1[0].out_channels == mid for a in path.abfs)


def test_review_path_gradient_reviews_deeper_levels():
    torch.manual_seed(1)
    shapes = [(4, 8, 8), (6, 4, 4), (6,)]
    path = connectors.ReviewPath(shapes, [(5, 8, 8), (7, 4, 4), (7,)])
    feats = [torch.randn(3, *s, requires_grad=True) for s in shapes]
    outs = path(feats)
    # the shallowest output sees every deeper level (the review); the deepest sees only itself
    g = torch.autograd.grad(outs[0].sum(), feats, allow_unused=True, retain_graph=True)
    assert all(gi is not None and gi.abs().sum() > 0 for gi in g)
    g = torch.autograd.grad(outs[-1].sum(), feats, allow_unused=True)
    assert g[0] is None and g[1] is None and g[2].abs().sum() > 0
    # the HCL loss trains every ABF, the attention convolutions of the fused levels included
    targets = path.as_maps([torch.randn(3, 5, 8, 8), torch.randn(3, 7, 4, 4), torch.randn(3, 7)])
    fl.hcl_loss(path(feats), targets).backward()
    for name, p in path.named_parameters():
        assert p.grad is not None and p.grad.abs().sum() > 0, name


# --------------------------------------------------------------------------- CRD


def np_nce(p, n_data, eps=1e-7):
    b, m = p.shape[0], p.shape[1] - 1
    pn = m / n_data
    total = 0.0
    for i in range(b):
        total += math.log(p[i, 0] / (p[i, 0] + pn + eps))
        for k in range(1, m + 1):
            total += math.log(pn / (p[i, k] + pn + eps))
    return -total / b


def test_nce_loss_matches_hand_computation():
    p = rng(6).uniform(0.01, 2.0, size=(3, 5))
    assert crd.nce_loss(t64(p), 40).item() == pytest.approx(np_nce(p, 40), rel=1e-9)


def np_unit(v):
    return v / math.sqrt(sum(x * x for x in v))


def test_crd_loss_and_memory_update_match_hand_computation():
    torch.manual_seed(2)
    n, dim, k, tau, mu = 6, 3, 2, 0.07, 0.5
    m = crd.CRDLoss(4, 5, n, embed_dim=dim, negatives=k, temperature=tau, momentum=mu).double()
    f_s, f_t = torch.randn(2, 4, dtype=torch.float64), torch.randn(2, 5, dtype=torch.float64)
    index = torch.tensor([1, 4])
    contrast = torch.tensor([[1, 0, 3], [4, 2, 5]])
    ws, bs = m.embed_s.linear.weight.detach().numpy(), m.embed_s.linear.bias.detach().numpy()
    wt, bt = m.embed_t.linear.weight.detach().numpy(), m.embed_t.linear.bias.detach().numpy()
    mem_s, mem_t = m.memory.memory_s.numpy().copy(), m.memory.memory_t.numpy().copy()
    e_s = [np_unit(ws @ f_s[i].numpy() + bs) for i in range(2)]
    e_t = [np_unit(wt @ f_t[i].numpy() + bt) for i in range(2)]
    # student anchors against the teacher bank, teacher anchors against the student bank
    p_s = np.array([[math.exp(sum(e_s[i] * mem_t[j]) / tau) for j in contrast[i].tolist()] for i in range(2)])
    p_t = np.array([[math.exp(sum(e_t[i] * mem_s[j]) / tau) for j in contrast[i].tolist()] for i in range(2)])
    z_s, z_t = p_s.mean() * n, p_t.mean() * n  # Z from the first batch
    expected = np_nce(p_s / z_s, n) + np_nce(p_t / z_t, n)
    got = m(f_s, f_t, index, contrast)
    assert got.item() == pytest.approx(expected, rel=1e-9)
    assert m.memory.z.tolist() == pytest.approx([z_s, z_t], rel=1e-9)
    # the batch's bank entries moved half-way to the new embeddings, renormalised; the others did not
    for row, i in enumerate(index.tolist()):
        assert np.allclose(m.memory.memory_s[i].numpy(), np_unit(mu * mem_s[i] + (1 - mu) * e_s[row]))
        assert np.allclose(m.memory.memory_t[i].numpy(), np_unit(mu * mem_t[i] + (1 - mu) * e_t[row]))
    untouched = [0, 2, 3, 5]
    assert np.array_equal(m.memory.memory_s[untouched].numpy(), mem_s[untouched])
    # Z is estimated once: a second batch reuses it
    m(f_s, f_t, index, contrast)
    assert m.memory.z.tolist() == pytest.approx([z_s, z_t], rel=1e-12)


def test_crd_gradient_reaches_heads_and_student_features_only():
    torch.manual_seed(3)
    m = crd.CRDLoss(6, 8, 50, embed_dim=4, negatives=10)
    names = {name for name, _ in m.named_parameters()}
    assert names == {"embed_s.linear.weight", "embed_s.linear.bias", "embed_t.linear.weight", "embed_t.linear.bias"}
    assert {name for name, _ in m.named_buffers()} == {"memory.memory_s", "memory.memory_t", "memory.z"}
    f_s = torch.randn(5, 6, requires_grad=True)
    f_t = torch.randn(5, 8, requires_grad=True)  # a frozen teacher's features: detached by the loss
    before = m.memory.memory_s.clone()
    loss = m(f_s, f_t, torch.arange(5))
    loss.backward()
    assert f_s.grad is not None and f_s.grad.abs().sum() > 0
    assert f_t.grad is None
    for p in m.parameters():
        assert p.grad is not None and p.grad.abs().sum() > 0
    for b in m.buffers():
        assert not b.requires_grad and b.grad is None and b.grad_fn is None
    assert not torch.equal(before[:5], m.memory.memory_s[:5]) and torch.equal(before[5:], m.memory.memory_s[5:])
    # evaluation mode leaves the bank alone
    m.eval()
    snapshot = m.memory.memory_t.clone()
    m(f_s, f_t, torch.arange(5))
    assert torch.equal(snapshot, m.memory.memory_t)


def test_crd_bank_and_z_resume_from_a_checkpoint():
    torch.manual_seed(4)
    labels = torch.arange(40) % 4
    m = crd.CRDLoss(6, 8, 40, embed_dim=4, negatives=5, labels=labels)
    f_s, f_t = torch.randn(3, 6), torch.randn(3, 8)
    m(f_s, f_t, torch.tensor([0, 7, 9]))
    state = m.state_dict()
    assert {"memory.memory_s", "memory.memory_t", "memory.z", "memory.labels"} <= set(state)
    fresh = crd.CRDLoss(6, 8, 40, embed_dim=4, negatives=5, labels=labels)
    fresh.load_state_dict(state)
    assert torch.equal(fresh.memory.z, m.memory.z) and torch.equal(fresh.memory.memory_s, m.memory.memory_s)
    contrast = m.memory.sample(torch.tensor([3, 5, 11]))
    a = m(f_s, f_t, torch.tensor([3, 5, 11]), contrast)
    b = fresh(f_s, f_t, torch.tensor([3, 5, 11]), contrast)
    assert a.item() == pytest.approx(b.item(), rel=1e-6)  # the resumed Z is used, not re-estimated
    assert torch.equal(fresh.memory.z, m.memory.z)


def test_crd_negatives_follow_the_authors_sampling():
    torch.manual_seed(5)
    labels = torch.tensor([0, 0, 1, 1, 1, 2, 2, 2, 2, 3])
    index = torch.tensor([0, 4, 9])
    # CIFAR ("exact"): the positive first, then K distinct samples of other classes
    mem = crd.ContrastMemory(3, 10, negatives=5, labels=labels)
    idx = mem.sample(index)
    assert idx.shape == (3, 6) and torch.equal(idx[:, 0], index)
    for row in range(3):
        neg = idx[row, 1:].tolist()
        assert len(set(neg)) == 5 and all(labels[j] != labels[index[row]] for j in neg)
    # more negatives than other-class samples: drawn with replacement, still of other classes
    mem = crd.ContrastMemory(3, 10, negatives=12, labels=labels)
    idx = mem.sample(index)
    assert all(labels[j] != labels[index[row]] for row in range(3) for j in idx[row, 1:].tolist())
    # without labels: uniform over the whole bank
    idx = crd.ContrastMemory(3, 10, negatives=200).sample(index)
    assert idx[:, 1:].min() >= 0 and idx[:, 1:].max() <= 9 and len(set(idx[:, 1:].flatten().tolist())) == 10
    with pytest.raises(ValueError, match="labels"):
        crd.ContrastMemory(3, 10, labels=labels[:5])


def test_crd_dense_and_gathered_scores_agree():
    torch.manual_seed(6)
    mem = crd.ContrastMemory(8, 30, negatives=7)
    anchors = F.normalize(torch.randn(4, 8), dim=1)
    idx = mem.sample(torch.arange(4))
    dense = mem.scores(anchors, mem.memory_t, idx, dense=True)
    gathered = mem.scores(anchors, mem.memory_t, idx, dense=False)
    assert torch.allclose(dense, gathered, rtol=1e-5)
    by_hand = torch.exp(torch.stack([mem.memory_t[idx[b]] @ anchors[b] for b in range(4)]) / 0.07)
    assert torch.allclose(dense, by_hand, rtol=1e-5)


# --------------------------------------------------------------------------- precision


def test_losses_run_in_float32_from_bf16_features():
    s, t = torch.randn(4, 3, 4, 4).bfloat16(), torch.randn(4, 3, 4, 4).bfloat16()
    for loss in (fl.hint_loss(s, t), fl.at_loss([s], [t]), fl.sp_loss([s], [t]),
                 fl.pkt_loss(s.flatten(1), t.flatten(1)), fl.hcl_loss([s], [t])):
        assert loss.dtype == torch.float32 and torch.isfinite(loss)
