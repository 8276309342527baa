"""Every loss against values computed here by hand (explicit formulas and loops, not the library)."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from trainables import losses


def np_softmax(z, T=1.0):
    z = np.asarray(z, dtype=np.float64) / T
    e = np.exp(z - z.max(axis=1, keepdims=True))
    return e / e.sum(axis=1, keepdims=True)


def np_kl_batchmean(p, q):
    """Σ_c p log(p/q), mean over rows."""
    return float(np.mean([sum(pi * math.log(pi / qi) for pi, qi in zip(pr, qr)) for pr, qr in zip(p, q)]))


def np_ce(z, y):
    p = np_softmax(z)
    return float(np.mean([-math.log(p[i][y[i]]) for i in range(len(y))]))


def huber(d):
    d = abs(d)
    return 0.5 * d * d if d < 1.0 else d - 0.5


S = [[1.0, 2.0, 3.0], [0.5, -1.0, 0.0]]
Tl = [[3.0, 1.0, 0.0], [0.0, 2.0, -1.0]]
Y = [2, 1]


# --------------------------------------------------------------------------- Hinton KD


def test_soft_kl_matches_hand_computed_2x3():
    T = 2.0
    expected = T * T * np_kl_batchmean(np_softmax(Tl, T), np_softmax(S, T))
    got = losses.soft_kl(torch.tensor(S), torch.tensor(Tl), T)
    assert got.item() == pytest.approx(expected, rel=1e-5)
    # first row by hand: softmax([1.5, .5, 0]) ‖ softmax([.5, 1, 1.5]), times 4
    pt = [math.exp(1.5), math.exp(0.5), 1.0]
    ps = [math.exp(0.5), math.exp(1.0), math.exp(1.5)]
    pt = [v / sum(pt) for v in pt]
    ps = [v / sum(ps) for v in ps]
    row0 = sum(a * math.log(a / b) for a, b in zip(pt, ps))
    assert losses.soft_kl(torch.tensor(S[:1]), torch.tensor(Tl[:1]), T).item() == pytest.approx(4 * row0, rel=1e-5)


def test_hinton_kd_terms():
    T, alpha = 4.0, 0.7
    terms = losses.hinton_kd(torch.tensor(S), torch.tensor(Tl), torch.tensor(Y), T, alpha)
    assert terms["ce"].item() == pytest.approx((1 - alpha) * np_ce(S, Y), rel=1e-5)
    kd = alpha * T * T * np_kl_batchmean(np_softmax(Tl, T), np_softmax(S, T))
    assert terms["kd"].item() == pytest.approx(kd, rel=1e-5)


# --------------------------------------------------------------------------- RKD


def ref_distance_potential(pts):
    """The authors' rule: off-diagonal distances are at least sqrt(1e-12) = 1e-6 (clamp before sqrt)."""
    n = len(pts)
    d = np.zeros((n, n))
    for i in range(n):
        for j in range(n):
            if i != j:
                d[i, j] = max(math.dist(pts[i], pts[j]), 1e-6)
    mu = d[d > 0].mean()
    return d / mu


def ref_rkd_distance(s, t):
    ds, dt = ref_distance_potential(s), ref_distance_potential(t)
    n = len(s)
    return sum(huber(ds[i, j] - dt[i, j]) for i in range(n) for j in range(n)) / (n * n)


def ref_angle(pts, a, b, c):
    """cos of the angle at vertex a between b and c; 0 for degenerate triplets."""
    u = np.subtract(pts[b], pts[a])
    v = np.subtract(pts[c], pts[a])
    if not np.linalg.norm(u) or not np.linalg.norm(v):
        return 0.0
    return float(u @ v / (np.linalg.norm(u) * np.linalg.norm(v)))


def ref_rkd_angle(s, t):
    n = len(s)
    total = sum(huber(ref_angle(s, a, b, c) - ref_angle(t, a, b, c))
                for a in range(n) for b in range(n) for c in range(n))
    return total / n ** 3


def test_pairwise_distances_3_4_5_triangle():
    d = losses.pairwise_distances(torch.tensor([[0.0, 0.0], [3.0, 0.0], [0.0, 4.0]]))
    assert torch.allclose(d, torch.tensor([[0.0, 3, 4], [3, 0, 5], [4, 5, 0]]), atol=1e-5)
    assert torch.all(d.diagonal() == 0)


def test_rkd_distance_hand_values():
    s = [[0.0, 0.0], [3.0, 0.0], [0.0, 4.0]]  # distances 3, 4, 5: mean 4 -> 0.75, 1, 1.25
    t = [[0.0, 0.0], [1.0, 0.0], [0.0, 1.0]]  # distances 1, 1, √2: mean (2+√2)/3
    mu_t = (2 + math.sqrt(2)) / 3
    pairs = [(0.75, 1 / mu_t), (1.0, 1 / mu_t), (1.25, math.sqrt(2) / mu_t)]
    expected = 2 * sum(huber(a - b) for a, b in pairs) / 9
    assert expected == pytest.approx(ref_rkd_distance(s, t))
    got = losses.rkd_distance(torch.tensor(s), torch.tensor(t))
    assert got.item() == pytest.approx(expected, rel=1e-5)


def test_rkd_distance_counts_coincident_pairs_as_1e_6_like_the_authors():
    t = [[0.0, 0.0], [0.0, 0.0], [2.0, 0.0]]  # a coincident pair: distances 1e-6, 2, 2
    s = [[0.0, 0.0], [1.0, 0.0], [2.0, 0.0]]  # 1, 2, 1: mean 4/3 -> .75, 1.5, .75
    mu_t = (1e-6 + 2 + 2) / 3  # lenscloth/RKD: clamp(d², 1e-12).sqrt() > 0 is in t_d[t_d > 0].mean()
    pt = [1e-6 / mu_t, 2 / mu_t, 2 / mu_t]  # pairs (0,1), (0,2), (1,2)
    ps = [0.75, 1.5, 0.75]
    expected = 2 * sum(huber(a - b) for a, b in zip(ps, pt)) / 9
    assert expected == pytest.approx(ref_rkd_distance(s, t))
    assert mu_t == pytest.approx(4.000001 / 3)
    got = losses.rkd_distance(torch.tensor(s), torch.tensor(t))
    assert got.item() == pytest.approx(expected, rel=1e-5)
    d = losses.pairwise_distances(torch.tensor(t))
    assert d[0, 1].item() == pytest.approx(1e-6) and d[0, 0].item() == 0.0
    # the same configuration at another scale: zero loss up to the 1e-6 floor, finite gradient
    fs = torch.tensor([[0.0, 0.0], [0.0, 0.0], [5.0, 0.0]], requires_grad=True)
    loss = losses.rkd_distance(fs, torch.tensor(t))
    loss.backward()
    assert loss.item() == pytest.approx(0.0, abs=1e-7)
    assert torch.isfinite(fs.grad).all()


def test_rkd_distance_different_dims_and_large_values():
    g = torch.Generator().manual_seed(0)
    s = torch.randn(5, 3, generator=g) * 10
    t = torch.randn(5, 7, generator=g)
    expected = ref_rkd_distance(s.double().numpy(), t.double().numpy())
    assert losses.rkd_distance(s, t).item() == pytest.approx(expected, rel=1e-4)


def test_angle_potentials_of_a_square():
    sq = torch.tensor([[0.0, 0.0], [1.0, 0.0], [1.0, 1.0], [0.0, 1.0]])
    psi = losses.angle_potentials(sq).view(4, 4, 4)
    r = math.sqrt(2) / 2
    assert psi[0, 1, 3].item() == pytest.approx(0.0, abs=1e-6)  # right angle at the corner
    assert psi[0, 1, 2].item() == pytest.approx(r, rel=1e-6)  # 45° between side and diagonal
    assert psi[1, 0, 2].item() == pytest.approx(0.0, abs=1e-6)
    assert psi[2, 0, 1].item() == pytest.approx(r, rel=1e-6)
    assert psi[0, 2, 2].item() == pytest.approx(1.0, rel=1e-6)  # same point: angle 0
    assert psi[0, 0, 2].item() == 0.0  # degenerate (vertex repeated)
    for a in range(4):
        for b in range(4):
            for c in range(4):
                assert psi[a, b, c].item() == pytest.approx(ref_angle(sq.numpy(), a, b, c), abs=1e-6)


def test_rkd_angle_hand_values():
    t = [[0.0, 0.0], [1.0, 0.0], [1.0, 1.0], [0.0, 1.0]]  # square
    s = [[0.0, 0.0], [2.0, 0.0], [0.0, 1.0], [1.0, 1.0]]  # a different quadrilateral
    expected = ref_rkd_angle(s, t)
    assert expected > 0.01
    got = losses.rkd_angle(torch.tensor(s), torch.tensor(t))
    assert got.item() == pytest.approx(expected, rel=1e-5)
    # an equilateral triangle against a right isosceles one: the angles are 60° vs 90°/45°
    eq = [[0.0, 0.0], [1.0, 0.0], [0.5, math.sqrt(3) / 2]]
    ri = [[0.0, 0.0], [1.0, 0.0], [0.0, 1.0]]
    # angle cosines at each vertex between the two other points (both orders), squared errors / 2
    pairs = [(0.5, 0.0), (0.5, r := math.sqrt(2) / 2), (0.5, r)]
    by_hand = 2 * sum(huber(a - b) for a, b in pairs) / 27  # b == c entries are 1 for both, degenerate are 0
    assert losses.rkd_angle(torch.tensor(eq), torch.tensor(ri)).item() == pytest.approx(by_hand, rel=1e-5)


def test_rkd_angle_is_invariant_to_rotation_scale_and_shift():
    t = torch.tensor([[0.0, 0.0], [1.0, 0.0], [1.0, 1.0], [0.0, 1.0], [0.3, 0.7]])
    rot = torch.tensor([[0.6, -0.8], [0.8, 0.6]])
    s = (t @ rot.t()) * 3.0 + torch.tensor([5.0, -2.0])
    assert losses.rkd_angle(s, t).item() == pytest.approx(0.0, abs=1e-6)
    assert losses.rkd_distance(s, t).item() == pytest.approx(0.0, abs=1e-6)


# --------------------------------------------------------------------------- DML / TriKD


def test_mutual_terms_dml_and_trikd():
    A = [[0.2, -0.3, 1.0], [2.0, 0.0, -2.0]]
    T = 3.0
    s = torch.tensor(S, requires_grad=True)
    t = torch.tensor(Tl, requires_grad=True)
    a = torch.tensor(A)
    terms = losses.mutual_terms(s, t, torch.tensor(Y), T, 0.5, a, 2.0)
    assert set(terms) == {"ce", "mutual", "anchor"}
    assert terms["ce"].item() == pytest.approx(np_ce(S, Y), rel=1e-5)
    assert terms["mutual"].item() == pytest.approx(
        0.5 * T * T * np_kl_batchmean(np_softmax(Tl, T), np_softmax(S, T)), rel=1e-5)
    assert terms["anchor"].item() == pytest.approx(
        2.0 * T * T * np_kl_batchmean(np_softmax(A, T), np_softmax(S, T)), rel=1e-5)
    sum(terms.values()).backward()
    assert t.grad is None  # the peer's prediction is a detached target
    assert s.grad is not None and s.grad.abs().sum() > 0
    # DML: no anchor term at all; T = 1 and weight 1 is the paper's KL(p2 ‖ p1)
    dml = losses.mutual_terms(torch.tensor(S), torch.tensor(Tl), torch.tensor(Y), 1.0, 1.0)
    assert set(dml) == {"ce", "mutual"}
    assert dml["mutual"].item() == pytest.approx(np_kl_batchmean(np_softmax(Tl), np_softmax(S)), rel=1e-5)


# --------------------------------------------------------------------------- multi-exit


EXITS = [
    [[0.1, 0.4, -0.2], [1.0, 0.0, 0.3]],
    [[0.5, 0.5, 0.0], [-1.0, 2.0, 0.1]],
    [[2.0, -1.0, 0.0], [0.0, 3.0, 1.0]],  # the last exit
]


def test_multi_exit_distillation_hand_values():
    T, C, g = 1.5, 0.5, 2.0 * 5 / 3
    y = [0, 1]
    terms = losses.multi_exit_distillation([torch.tensor(z) for z in EXITS], torch.tensor(y), T, C, g)
    assert set(terms) == {"ce_0", "ce_1", "ce_2", "distill_0", "distill_1"}
    p_last = np_softmax(EXITS[-1], T)
    total = g * (1 - C) * np_ce(EXITS[-1], y)
    for k in range(2):
        logp = np.log(np_softmax(EXITS[k], T))
        soft_ce = np.mean([-(p_last[i] * logp[i]).sum() for i in range(2)])
        assert terms[f"ce_{k}"].item() == pytest.approx(g * (1 - C) * np_ce(EXITS[k], y), rel=1e-5)
        assert terms[f"distill_{k}"].item() == pytest.approx(g * C * T * T * soft_ce, rel=1e-5)
        total += g * ((1 - C) * np_ce(EXITS[k], y) + C * T * T * soft_ce)
    assert sum(terms.values()).item() == pytest.approx(total, rel=1e-5)
    # soft cross-entropy = KL + the target's entropy
    ent = -np.mean([(p_last[i] * np.log(p_last[i])).sum() for i in range(2)])
    kl = np_kl_batchmean(p_last, np_softmax(EXITS[0], T))
    sce = losses.soft_cross_entropy(torch.tensor(EXITS[0]), torch.tensor(EXITS[-1]), T).item()
    assert sce == pytest.approx(T * T * (kl + ent), rel=1e-5)


def test_multi_exit_distillation_target_is_detached():
    zs = [torch.tensor(z, requires_grad=True) for z in EXITS]
    terms = losses.multi_exit_distillation(zs, torch.tensor([0, 1]), 2.0, 1.0)  # C = 1: distillation only
    assert terms["ce_2"].item() == 0.0
    sum(terms.values()).backward()
    assert zs[-1].grad is None or zs[-1].grad.abs().sum() == 0
    assert zs[0].grad.abs().sum() > 0


def test_multi_exit_ce_baseline():
    y = [2, 0]
    terms = losses.multi_exit_ce([torch.tensor(z) for z in EXITS], torch.tensor(y))
    assert sum(terms.values()).item() == pytest.approx(sum(np_ce(z, y) for z in EXITS), rel=1e-5)


def test_temperature_rule():
    T = torch.tensor(1.0)
    sure = torch.tensor([[6.0, 0.0, 0.0], [0.0, 5.0, 0.0]])  # max prob ≈ 0.99 > 0.5
    unsure = torch.tensor([[0.1, 0.0, 0.0], [0.0, 0.2, 0.1]])  # max prob ≈ 0.36 < 0.5
    T1 = losses.adapt_temperature(T, sure, 0.5, 1.05)
    assert T1.item() == pytest.approx(1.05, rel=1e-7)
    assert losses.adapt_temperature(T1, unsure, 0.5, 1.05).item() == T1.item()
    # the rule uses the probabilities at the current T: at T = 20 even `sure` is soft, so T stays
    mp = np_softmax(sure.numpy(), 20.0).max(axis=1).mean()
    assert mp < 0.5
    assert losses.adapt_temperature(torch.tensor(20.0), sure, 0.5, 1.05).item() == 20.0
    # grows by exactly the factor each time it is exceeded, never decreases
    t, history = torch.tensor(1.0), []
    for z in [sure, sure, unsure, sure, unsure, unsure]:
        t = losses.adapt_temperature(t, z, 0.5, 1.05)
        history.append(t.item())
    expected = [1.05, 1.05 ** 2, 1.05 ** 2, 1.05 ** 3, 1.05 ** 3, 1.05 ** 3]
    assert history == pytest.approx(expected, rel=1e-6)
    assert all(b >= a for a, b in zip(history, history[1:]))
    # exactly at the threshold: not exceeded, no change
    half = torch.tensor([[0.0, 0.0]])  # max prob 0.5
    assert losses.adapt_temperature(torch.tensor(1.0), half, 0.5, 1.05).item() == 1.0


# --------------------------------------------------------------------------- KD reduction (TAKD's nn.KLDivLoss())


def test_soft_kl_mean_reduction_is_takd_klldivloss_default():
    T = 4.0
    hand = T * T * np_kl_batchmean(np_softmax(Tl, T), np_softmax(S, T)) / 3  # mean over batch x classes
    got = losses.soft_kl(torch.tensor(S), torch.tensor(Tl), T, reduction="mean")
    assert got.item() == pytest.approx(hand, rel=1e-5)
    terms = losses.hinton_kd(torch.tensor(S), torch.tensor(Tl), torch.tensor(Y), T, 0.5, reduction="mean")
    assert terms["kd"].item() == pytest.approx(0.5 * hand, rel=1e-5)
    with pytest.raises(ValueError, match="KD reduction"):
        losses.soft_kl(torch.tensor(S), torch.tensor(Tl), T, reduction="sum")


# --------------------------------------------------------------------------- DIST


S3 = [[1.0, 2.0, 3.0, 0.0], [0.5, -1.0, 0.0, 2.0], [2.0, 2.0, -1.0, 0.5]]
T3 = [[3.0, 1.0, 0.0, 1.0], [0.0, 2.0, -1.0, 1.0], [1.0, -2.0, 0.5, 0.0]]
Y3 = [2, 3, 0]


def pearson(u, v):
    mu, mv = sum(u) / len(u), sum(v) / len(v)
    num = sum((a - mu) * (b - mv) for a, b in zip(u, v))
    den = math.sqrt(sum((a - mu) ** 2 for a in u)) * math.sqrt(sum((b - mv) ** 2 for b in v))
    return num / (den + 1e-8)


def test_dist_terms_hand_computed():
    T, beta, gamma = 4.0, 2.0, 0.5
    ps, pt = np_softmax(S3, T).tolist(), np_softmax(T3, T).tolist()
    inter = 1 - sum(pearson(ps[i], pt[i]) for i in range(3)) / 3
    cols_s = [[row[c] for row in ps] for c in range(4)]
    cols_t = [[row[c] for row in pt] for c in range(4)]
    intra = 1 - sum(pearson(cols_s[c], cols_t[c]) for c in range(4)) / 4
    got = losses.dist_terms(torch.tensor(S3), torch.tensor(T3), T, beta, gamma)
    assert got["dist_inter"].item() == pytest.approx(beta * T * T * inter, rel=1e-4)
    assert got["dist_intra"].item() == pytest.approx(gamma * T * T * intra, rel=1e-4)
    # identical predictions: perfectly correlated, zero loss (up to the 1e-8 in the denominator)
    same = losses.dist_terms(torch.tensor(T3), torch.tensor(T3), T, 1.0, 1.0)
    assert same["dist_inter"].item() == pytest.approx(0.0, abs=2e-4)
    assert same["dist_intra"].item() == pytest.approx(0.0, abs=2e-4)
    # invariant to a shift and scale of the student's probabilities per row: only relations count
    assert losses.pearson_rows(torch.tensor([[1.0, 2.0, 4.0]]), torch.tensor([[3.0, 5.0, 9.0]])).item() == \
        pytest.approx(1.0, abs=1e-6)


# --------------------------------------------------------------------------- logit-standardised KD


def test_zscore_uses_unbiased_std_plus_eps():
    z = losses.zscore(torch.tensor([[1.0, 2.0, 3.0]]))
    # mean 2, unbiased std sqrt(((1)^2 + 0 + 1^2) / 2) = 1
    assert z.tolist()[0] == pytest.approx([-1 / (1 + 1e-7), 0.0, 1 / (1 + 1e-7)], rel=1e-6)


def test_standardized_kd_hand_computed_and_scale_invariant():
    T = 2.0

    def z(rows):
        out = []
        for r in rows:
            m = sum(r) / len(r)
            sd = math.sqrt(sum((v - m) ** 2 for v in r) / (len(r) - 1))
            out.append([(v - m) / (sd + 1e-7) for v in r])
        return out

    hand = T * T * np_kl_batchmean(np_softmax(z(T3), T), np_softmax(z(S3), T))
    got = losses.standardized_kd(torch.tensor(S3), torch.tensor(T3), T)
    assert got.item() == pytest.approx(hand, rel=1e-5)
    # a student whose logits are an affine map of the teacher's (per sample) matches it exactly
    st = torch.tensor(T3) * 0.1 + 3.0
    assert losses.standardized_kd(st, torch.tensor(T3), T).item() == pytest.approx(0.0, abs=1e-6)


# --------------------------------------------------------------------------- DKD


def test_dkd_terms_hand_computed():
    T, alpha, beta = 4.0, 1.0, 8.0
    ps, pt = np_softmax(S3, T), np_softmax(T3, T)
    tckd = nckd = 0.0
    for i, y in enumerate(Y3):
        bs = [ps[i][y], 1 - ps[i][y]]
        bt = [pt[i][y], 1 - pt[i][y]]
        tckd += sum(a * math.log(a / b) for a, b in zip(bt, bs))
        # non-target distributions: softmax over the other classes only
        others = [c for c in range(4) if c != y]
        qs = np_softmax([[S3[i][c] for c in others]], T)[0]
        qt = np_softmax([[T3[i][c] for c in others]], T)[0]
        nckd += sum(a * math.log(a / b) for a, b in zip(qt, qs))
    tckd, nckd = T * T * tckd / 3, T * T * nckd / 3
    got = losses.dkd_terms(torch.tensor(S3), torch.tensor(T3), torch.tensor(Y3), T, alpha, beta)
    assert got["tckd"].item() == pytest.approx(alpha * tckd, rel=1e-4)
    assert got["nckd"].item() == pytest.approx(beta * nckd, rel=1e-4)
    # DKD with α = 1 and β = 1 - p_t (per sample) is classical KD (paper, Eq. 1): check one sample
    i = slice(0, 1)
    one = losses.dkd_terms(torch.tensor(S3[i]), torch.tensor(T3[i]), torch.tensor(Y3[i]), T, 1.0, 1.0)
    w = 1 - pt[0][Y3[0]]
    kd = losses.soft_kl(torch.tensor(S3[i]), torch.tensor(T3[i]), T).item()
    assert one["tckd"].item() + w * one["nckd"].item() == pytest.approx(kd, rel=1e-4)


def test_dkd_stays_finite_for_a_confident_student():
    s = torch.tensor([[400.0, 0.0, 0.0, 0.0]], requires_grad=True)  # rest probability underflows to 0
    t = torch.tensor([[2.0, 1.0, 0.0, 0.0]])
    terms = losses.dkd_terms(s, t, torch.tensor([0]), 4.0, 1.0, 8.0)
    total = terms["tckd"] + terms["nckd"]
    total.backward()
    assert torch.isfinite(total) and torch.isfinite(s.grad).all()


def test_rkd_angle_gram_form_equals_the_authors_difference_vectors():
    """The Gram-matrix angle potentials equal the authors' normalised-difference form,
    coincident points included (both give 0 there), and their gradients are finite."""
    from trainables.losses import angle_potentials, angle_potentials_direct

    torch.manual_seed(0)
    for dim in (2, 16, 200):
        e = torch.randn(24, dim)
        e[3] = e[9]  # a coincident pair
        assert torch.allclose(angle_potentials(e), angle_potentials_direct(e), atol=1e-5)
        x = e.clone().requires_grad_(True)
        angle_potentials(x).square().sum().backward()
        assert torch.isfinite(x.grad).all()


# --- RKD angle in degenerate geometry: equal to the authors' difference-vector form (lenscloth/RKD RKdAngle)

#: the stated tolerance: |ψ_ours − ψ_authors| on every triplet (float32; measured worst 3e-5 on clustered
#: batches just inside the Gram form's condition limit, ~1e-6 on ordinary ones)
ANGLE_TOL = 1e-4


def _authors_rkd_angle(student, teacher):
    """RKdAngle.forward of lenscloth/RKD (metric/loss.py), line for line ('elementwise_mean' is 'mean')."""
    with torch.no_grad():
        td = (teacher.unsqueeze(0) - teacher.unsqueeze(1))
        norm_td = F.normalize(td, p=2, dim=2)
        t_angle = torch.bmm(norm_td, norm_td.transpose(1, 2)).view(-1)
    sd = (student.unsqueeze(0) - student.unsqueeze(1))
    norm_sd = F.normalize(sd, p=2, dim=2)
    s_angle = torch.bmm(norm_sd, norm_sd.transpose(1, 2)).view(-1)
    return F.smooth_l1_loss(s_angle, t_angle, reduction="mean")


def _degenerate_batches():
    g = torch.Generator().manual_seed(5)
    base = torch.randn(12, 6, generator=g)
    line = torch.linspace(-1.0, 2.0, 12).unsqueeze(1) * torch.randn(1, 6, generator=g)
    close = base.clone()
    close[4] = close[2]
    close[4, 0] += 5e-7  # distinct from point 2, 5e-7 away (float32 resolves it; the Gram form could not)
    close[7] = close[1] + 2e-9 * torch.randn(6, generator=g)  # closer still, where float32 allows
    coincident = base.clone()
    coincident[3] = coincident[9]
    coincident[10] = coincident[9]
    cluster = base[:3].repeat(4, 1) + 1e-3 * torch.randn(12, 6, generator=g)  # three tight clusters
    return {
        "collinear through the origin": line,
        "collinear, far from the origin": line + 300.0 * torch.randn(1, 6, generator=g),
        "collinear in one dimension": torch.tensor([[0.0], [1.0], [3.0], [7.0], [7.5], [-2.0]]),
        "distinct points closer than 1e-6": close,
        "coincident points": coincident,
        "all points equal": torch.ones(6, 4),
        "tight clusters": cluster,
    }


@pytest.mark.parametrize("case", list(_degenerate_batches()))
def test_rkd_angle_equals_the_authors_form_in_degenerate_geometry(case):
    """Values and gradients of the angle potentials and of the loss, against the authors' code."""
    from trainables.losses import angle_potentials, angle_potentials_direct

    e = _degenerate_batches()[case]
    assert (angle_potentials(e) - angle_potentials_direct(e)).abs().max().item() <= ANGLE_TOL
    g = torch.Generator().manual_seed(1)
    teacher = torch.randn(len(e), 5, generator=g)
    ours_s = e.clone().requires_grad_(True)
    theirs_s = e.clone().requires_grad_(True)
    ours = losses.rkd_angle(ours_s, teacher)
    theirs = _authors_rkd_angle(theirs_s, teacher)
    ours.backward()
    theirs.backward()
    assert ours.item() == pytest.approx(theirs.item(), abs=ANGLE_TOL)
    scale = theirs_s.grad.abs().max().item()
    assert torch.isfinite(ours_s.grad).all()
    assert (ours_s.grad - theirs_s.grad).abs().max().item() <= ANGLE_TOL * max(1.0, scale), case
    # the degenerate geometry as the teacher's side of the loss, too
    s = torch.randn(len(e), 3, generator=g)
    assert losses.rkd_angle(s, e).item() == pytest.approx(_authors_rkd_angle(s, e).item(), abs=ANGLE_TOL)


def test_rkd_angle_on_ordinary_batches_takes_the_gram_path_only(monkeypatch):
    """The authors' N²·D form is the exception: a batch of ordinary embeddings never needs it."""
    from trainables import losses as losses_mod

    calls = []
    real = losses_mod._angles_at
    monkeypatch.setattr(losses_mod, "_angles_at", lambda e, v: calls.append(len(v)) or real(e, v))
    g = torch.Generator().manual_seed(0)
    for dim in (32, 320, 640):  # the quickstart's embeddings (cnn1d-8: 320, cnn1d-16: 640), ReLU features
        e = torch.relu(torch.randn(128, dim, generator=g) + 0.5)
        assert (losses_mod.angle_potentials(e) - losses_mod.angle_potentials_direct(e)).abs().max() <= ANGLE_TOL
    assert calls == []
    e[7] = e[3]  # one coincident pair: exactly its two vertices go the authors' way
    losses_mod.angle_potentials(e)
    assert calls == [2]
