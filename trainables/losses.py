"""Distillation losses as plain functions, each with its formula and source.

Every loss takes logits (not probabilities) — or, for RKD, penultimate
embeddings — and returns a scalar mean over the batch (or a dict of named
scalar terms), so the loop can sum terms from any method. Probability and
relation maths run in float32 even under bf16 autocast, and on CUDA that is
true float32: the trial's device plan keeps TF32 off for matmuls and
convolutions outside autocast unless `runtime.precision` is `tf32`
(`trainables.device`; with TF32 the Gram matrices of RKD lose about 13
mantissa bits, which moved the distance gradient by 8% on clustered features).

  Hinton KD ............ soft_kl, hinton_kd (reduction "batchmean", or TAKD's "mean")
  DIST (Huang 2022) .... pearson_rows, dist_terms
  logit-standardised KD (Sun 2024)
                         zscore, standardized_kd
  DKD (Zhao 2022) ...... dkd_terms
  RKD (Park 2019) ...... pairwise_distances, rkd_distance, angle_potentials, rkd_angle
  DML / TriKD .......... mutual_terms
  multi-exit (Phuong & Lampert 2019)
                         soft_cross_entropy, multi_exit_distillation, multi_exit_ce, adapt_temperature
"""

from __future__ import annotations

import torch
import torch.nn.functional as F


#: how the KL of the soft-target term is reduced: Hinton's form, or nn.KLDivLoss()'s default (TAKD's code)
KD_REDUCTIONS = ("batchmean", "mean")


def soft_kl(student_logits: torch.Tensor, target_logits: torch.Tensor, temperature: float,
            reduction: str = "batchmean") -> torch.Tensor:
    """T² · KL(softmax(t/T) ‖ softmax(s/T)), summed over classes, mean over the batch.

    Hinton, Vinyals & Dean 2015, section 2: the soft-target term, multiplied
    by T² so its gradient magnitude does not shrink as T grows. The target is
    used as given: detach it where it must not receive gradients.

    reduction "batchmean" (default) is the formula above. "mean" divides the
    summed KL by batch × classes instead of batch, i.e. the batchmean value
    divided by the number of classes C: this is what `nn.KLDivLoss()` with its
    default reduction computes, as in the TAKD authors' `train.py`
    (imirzadeh/Teacher-Assistant-Knowledge-Distillation); use it only to
    reproduce TAKD's numbers (its soft term is C times weaker, e.g. 100× on CIFAR-100).
    """
    if reduction not in KD_REDUCTIONS:
        raise ValueError(f"unknown KD reduction {reduction!r}; choose one of {KD_REDUCTIONS}")
    t = temperature
    log_p_s = F.log_softmax(student_logits.float() / t, dim=1)
    log_p_t = F.log_softmax(target_logits.float() / t, dim=1)
    kl = F.kl_div(log_p_s, log_p_t, reduction="batchmean", log_target=True) * (t * t)
    # "mean" computed explicitly: torch warns that its own "mean" will change meaning
    return kl / student_logits.shape[1] if reduction == "mean" else kl


def hinton_kd(student_logits, teacher_logits, labels, temperature: float, alpha: float,
              reduction: str = "batchmean") -> dict[str, torch.Tensor]:
    """Hinton KD as named terms: (1-α)·CE(s, y) and α·T²·KL(softmax(t/T) ‖ softmax(s/T)).

    The teacher's logits are detached: a frozen teacher never receives gradients.
    `reduction` as in `soft_kl`.
    """
    return {
        "ce": (1.0 - alpha) * F.cross_entropy(student_logits.float(), labels),
        "kd": alpha * soft_kl(student_logits, teacher_logits.detach(), temperature, reduction),
    }


# --------------------------------------------------------------------------- helpers


def _no_autocast(t: torch.Tensor):
    """A context that turns autocast off, so relation and probability maths run in float32."""
    return torch.autocast(device_type=t.device.type, enabled=False)


def cross_entropy(logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    """CE(s, y) = mean_b −log softmax(s)_y, in float32."""
    return F.cross_entropy(logits.float(), labels)


# --------------------------------------------------------------------------- RKD (Park et al., CVPR 2019)


def pairwise_distances(e: torch.Tensor, eps: float = 1e-12) -> torch.Tensor:
    """ψ_D before normalisation: the N×N matrix of ‖e_i − e_j‖₂ (float32).

    As in the authors' code (lenscloth/RKD `pdist`): from the Gram matrix,
    ‖e_i‖² + ‖e_j‖² − 2 e_i·e_j clamped at `eps` (1e-12) *before* the square
    root, then the diagonal set to exactly 0. A near-coincident pair of
    distinct points therefore has distance sqrt(eps) = 1e-6, not 0: it is
    "non-zero" and counts in the normalising mean (see `_mean_normalised`);
    its gradient is 0 (the clamp's).
    """
    with _no_autocast(e):
        e = e.float().flatten(1)
        sq = e.pow(2).sum(dim=1)
        raw = sq.unsqueeze(1) + sq.unsqueeze(0) - 2.0 * (e @ e.t())
        off_diagonal = ~torch.eye(len(e), dtype=torch.bool, device=e.device)
        return raw.clamp(min=eps).sqrt() * off_diagonal


def _mean_normalised(d: torch.Tensor, eps: float = 1e-12) -> torch.Tensor:
    """d / μ with μ = mean of the entries of d that are > 0 (the authors' `t_d[t_d > 0].mean()`).

    With `pairwise_distances` every off-diagonal entry is ≥ 1e-6, so μ is the
    mean over the N(N−1) off-diagonal pairs, near-coincident pairs counting as
    1e-6. μ = 1 if there is no positive entry (a batch of one).
    """
    nonzero = (d > 0).sum().clamp(min=1)
    mu = d.sum() / nonzero  # zeros add nothing to the sum: this is the mean of the positive entries
    return d / torch.where(mu > eps, mu, torch.ones_like(mu))


def rkd_distance(student_emb: torch.Tensor, teacher_emb: torch.Tensor) -> torch.Tensor:
    """RKD distance loss (Park et al., CVPR 2019, Eqs. 3–5).

    ψ_D(t_i, t_j) = ‖t_i − t_j‖₂ / μ with μ the mean of the non-zero pairwise
    distances of the mini-batch (near-coincident pairs count as 1e-6, as in the
    authors' code; see `pairwise_distances`), computed separately for teacher and student
    embeddings (which may have different dimensions); the loss is the Huber
    (smooth L1, δ = 1) loss between the two N×N potential matrices, averaged
    over all N² entries (diagonal included, where both are 0), as
    `F.smooth_l1_loss(..., reduction="mean")` does in the authors' code.
    The teacher's relations are a fixed target (detached).
    """
    with _no_autocast(student_emb):
        t = _mean_normalised(pairwise_distances(teacher_emb.detach()))
        s = _mean_normalised(pairwise_distances(student_emb))
        return F.smooth_l1_loss(s, t, reduction="mean", beta=1.0)


#: a vertex is computed in the authors' form when one of its pairs has a condition
#: (‖x_a‖ + ‖x_b‖) / ‖x_a − x_b‖ (x centred on the batch mean) above this: the Gram form's
#: rounding error in ψ[a, b, c] grows as cond_ab · cond_ac: below 5e-5 at 16 (measured; ordinary batches: < 8)
ANGLE_GRAM_MAX_CONDITION = 16.0


def angle_potentials(e: torch.Tensor, max_condition: float = ANGLE_GRAM_MAX_CONDITION) -> torch.Tensor:
    """ψ_A for every triplet, flattened (N³ values, float32), equal to the authors' form.

    The authors' code (lenscloth/RKD `RKdAngle`, `angle_potentials_direct`
    here) forms diff[a, b] = e_b − e_a, unit vectors u[a, b] =
    F.normalize(diff[a, b]) (a zero vector stays 0) and ψ[a, b, c] =
    ⟨u[a, b], u[a, c]⟩ = cos∠(e_b, e_a, e_c), the cosine of the angle at the
    vertex e_a: N²·D memory and N³·D work. The same numbers come from the Gram
    matrix G = X Xᵀ of the embeddings centred on the batch mean (angles do not
    depend on the origin; the rounding below does):

        ⟨x_b − x_a, x_c − x_a⟩ = G_bc − G_ab − G_ac + G_aa,
        ‖x_b − x_a‖² = G_aa + G_bb − 2 G_ab,

    so ψ[a, b, c] = that inner product / (‖x_b − x_a‖ ‖x_c − x_a‖): N²·D + N³
    work, whatever the embedding width. That subtraction loses the digits a
    pair (a, b) shares: its error in ψ[a, b, c] is about
    2⁻²⁴ · cond_ab · cond_ac with cond_ab = (‖x_a‖ + ‖x_b‖) / ‖x_a − x_b‖.
    Ordinary batches have conditions below 10 (trained and untrained 1-D CNN
    features of MNIST-1D: at most 7.7). A vertex with a pair above
    `max_condition` (16) -- coincident points, distinct points much closer
    than the batch's spread (say 1e-6 apart), collinear or clustered points
    nearly on top of each other -- has its N² potentials computed in the
    authors' form (normalised difference vectors and a matmul, from the raw
    embeddings), so every value equals theirs within 1e-4 (tests/test_losses.py),
    gradients included, and degenerate triplets are 0 exactly as in their code
    (b = a or c = a, coincident points; a difference shorter than 1e-12 is
    scaled as `F.normalize` scales it). The cost of that fallback is N²·D per
    such vertex, and one host synchronisation per call to decide it.
    """
    with _no_autocast(e):
        e = e.float().flatten(1)
        n = len(e)
        x = e - e.mean(dim=0, keepdim=True)
        g = x @ x.t()
        g = (g + g.t()) / 2  # exactly symmetric
        sq = g.diagonal()
        dist2 = (sq.unsqueeze(0) + sq.unsqueeze(1) - 2 * g).clamp_min(0.0)
        off = ~torch.eye(n, dtype=torch.bool, device=e.device)
        with torch.no_grad():
            norm = sq.clamp_min(0.0).sqrt()
            scale = norm.unsqueeze(0) + norm.unsqueeze(1)
            unresolved = off & (dist2 * (max_condition * max_condition) <= scale * scale)
            fallback = unresolved.any(dim=1)  # vertices the Gram form cannot resolve
        keep = off & ~unresolved
        inv = torch.where(keep, dist2.clamp_min(1e-30).rsqrt(), torch.zeros_like(dist2))
        dot = g.unsqueeze(0) - g.unsqueeze(2) - g.unsqueeze(1) + sq.view(-1, 1, 1)
        cos = (dot * inv.unsqueeze(2) * inv.unsqueeze(1)).clamp(-1.0, 1.0)
        if bool(fallback.any()):
            idx = fallback.nonzero().squeeze(1)
            cos = cos.index_copy(0, idx, _angles_at(e, idx))
        return cos.reshape(-1)


def _angles_at(e: torch.Tensor, vertices: torch.Tensor) -> torch.Tensor:
    """The authors' potentials ψ[a, :, :] of the vertices a in `vertices` (k × N × N)."""
    diff = e.unsqueeze(0) - e[vertices].unsqueeze(1)  # diff[i, b] = e_b − e_{a_i}
    unit = F.normalize(diff, p=2, dim=2)
    return torch.bmm(unit, unit.transpose(1, 2))


def angle_potentials_direct(e: torch.Tensor) -> torch.Tensor:
    """The authors' form of `angle_potentials` (difference vectors, N²·D memory); the reference
    the Gram form is tested against."""
    with _no_autocast(e):
        e = e.float().flatten(1)
        diff = e.unsqueeze(0) - e.unsqueeze(1)
        unit = F.normalize(diff, p=2, dim=2)
        return torch.bmm(unit, unit.transpose(1, 2)).reshape(-1)


def rkd_angle(student_emb: torch.Tensor, teacher_emb: torch.Tensor) -> torch.Tensor:
    """RKD angle loss (Park et al., CVPR 2019, Eqs. 6–7).

    ψ_A(t_i, t_j, t_k) = cos∠t_i t_j t_k = ⟨e_ij, e_kj⟩ with
    e_ij = (t_i − t_j)/‖t_i − t_j‖; Huber (smooth L1, δ = 1) between the
    student's and the teacher's potentials, averaged over all N³ triplets
    (degenerate ones included, where both are 0), as in the authors' code.
    The teacher's relations are a fixed target (detached).
    """
    with _no_autocast(student_emb):
        t = angle_potentials(teacher_emb.detach())
        s = angle_potentials(student_emb)
        return F.smooth_l1_loss(s, t, reduction="mean", beta=1.0)


# --------------------------------------------------------------------------- online mutual learning (DML, TriKD)


def mutual_terms(logits, peer_logits, labels, temperature: float, mutual_weight: float,
                 anchor_logits=None, anchor_weight: float = 0.0) -> dict[str, torch.Tensor]:
    """One model's terms in online distillation (DML; TriKD with an anchor).

    ce     = CE(z, y)
    mutual = w_m · T² · KL(softmax(z_peer/T) ‖ softmax(z/T))     (peer detached)
    anchor = w_a · T² · KL(softmax(z_anchor/T) ‖ softmax(z/T))   (only if an anchor is given)

    Deep Mutual Learning (Zhang et al., CVPR 2018, Eq. 2/3) is L_Θ1 = L_C1 +
    D_KL(p2 ‖ p1) at T = 1 with weight 1; the T² factor (Hinton et al. 2015)
    keeps the gradient scale when T ≠ 1 and is 1 at T = 1. Targets are
    detached: each model learns only from its own loss.
    """
    terms = {
        "ce": cross_entropy(logits, labels),
        "mutual": mutual_weight * soft_kl(logits, peer_logits.detach(), temperature),
    }
    if anchor_logits is not None:
        terms["anchor"] = anchor_weight * soft_kl(logits, anchor_logits.detach(), temperature)
    return terms


# --------------------------------------------------------------------------- multi-exit (Phuong & Lampert, ICCV 2019)


def soft_cross_entropy(student_logits: torch.Tensor, target_logits: torch.Tensor, temperature: float) -> torch.Tensor:
    """T² · mean_b( −Σ_c softmax(t/T)_c · log_softmax(s/T)_c ).

    Cross-entropy with a soft target, as in the authors' code
    (mary-phuong/multiexit-distillation, `DistillationBasedLoss`):
    KL(softmax(t/T) ‖ softmax(s/T)) plus the target's entropy, a constant for
    the student. The target is used as given: detach it where it must not
    receive gradients. `temperature` may be a 0-d tensor.
    """
    t = temperature
    with _no_autocast(student_logits):
        p_t = F.softmax(target_logits.float() / t, dim=1)
        log_p_s = F.log_softmax(student_logits.float() / t, dim=1)
        return -(p_t * log_p_s).sum(dim=1).mean() * (t * t)


def multi_exit_distillation(exit_logits: list[torch.Tensor], labels: torch.Tensor, temperature,
                            distill_weight: float, global_scale: float = 1.0) -> dict[str, torch.Tensor]:
    """Phuong & Lampert 2019, Eq. (5) as in the authors' `DistillationBasedLoss`, as named terms.

    For the last exit K:        ce_K = g·(1−C)·CE(z_K, y)
    For every earlier exit k:   ce_k = g·(1−C)·CE(z_k, y)
                                distill_k = g·C·T²·CE(softmax(z_K/T).detach(), log_softmax(z_k/T))
    with C = distill_weight and g = global_scale; the sum of the terms is the loss.
    """
    c, g = float(distill_weight), float(global_scale)
    target = exit_logits[-1].detach()
    terms = {}
    for k, z in enumerate(exit_logits):
        terms[f"ce_{k}"] = g * (1.0 - c) * cross_entropy(z, labels)
        if k < len(exit_logits) - 1:
            terms[f"distill_{k}"] = g * c * soft_cross_entropy(z, target, temperature)
    return terms


def multi_exit_ce(exit_logits: list[torch.Tensor], labels: torch.Tensor) -> dict[str, torch.Tensor]:
    """The baseline ("classification only" in the authors' code): Σ_k CE(z_k, y), one term per exit."""
    return {f"ce_{k}": cross_entropy(z, labels) for k, z in enumerate(exit_logits)}


def adapt_temperature(temperature: torch.Tensor, last_logits: torch.Tensor, maxprob: float,
                      factor: float) -> torch.Tensor:
    """The multi-exit temperature rule (authors' `DistillationBasedLoss`).

    With p = softmax(z_K / T) of the last exit on the batch at the current T:
    T ← T·factor if mean_b max_c p > maxprob, else T unchanged (so T never
    decreases for factor ≥ 1). Tensor in, tensor out: no host synchronisation.
    """
    with _no_autocast(last_logits):
        p = F.softmax(last_logits.detach().float() / temperature, dim=1)
        too_sure = p.max(dim=1).values.mean() > maxprob
        return torch.where(too_sure, temperature * factor, temperature)


# --------------------------------------------------------------------------- DIST (Huang et al., NeurIPS 2022)


def pearson_rows(a: torch.Tensor, b: torch.Tensor, eps: float = 1e-8) -> torch.Tensor:
    """Pearson correlation of each row of `a` with the same row of `b` (a vector of N values).

    ρ(u, v) = ⟨u − ū, v − v̄⟩ / (‖u − ū‖·‖v − v̄‖ + eps): the cosine similarity of
    the centred rows, with eps = 1e-8 added to the denominator as in the authors'
    code (hunto/DIST_KD), so a constant row gives 0.
    """
    a = a - a.mean(dim=1, keepdim=True)
    b = b - b.mean(dim=1, keepdim=True)
    return (a * b).sum(dim=1) / (a.norm(dim=1) * b.norm(dim=1) + eps)


def dist_terms(student_logits: torch.Tensor, teacher_logits: torch.Tensor, temperature: float,
               beta: float, gamma: float) -> dict[str, torch.Tensor]:
    """DIST, "Knowledge Distillation from A Stronger Teacher" (Huang et al., NeurIPS 2022), as named terms.

    With P_s = softmax(s/T), P_t = softmax(t/T) (B × C), and d_p(u, v) = 1 − ρ(u, v)
    the Pearson distance (paper, Eq. 5):

        dist_inter = β · T² · (1 − mean_i ρ(P_s[i, :], P_t[i, :]))    inter-class relation, each sample's row (Eq. 6)
        dist_intra = γ · T² · (1 − mean_c ρ(P_s[:, c], P_t[:, c]))    intra-class relation, each class's column (Eq. 8)

    The method adds CE (paper, Eq. 9: α·L_cls + β·L_inter + γ·L_intra). The T²
    factor is in the authors' classification code (`tau ** 2 * inter_class_relation`).
    The teacher's logits are detached.
    """
    t = temperature
    with _no_autocast(student_logits):
        p_s = F.softmax(student_logits.float() / t, dim=1)
        p_t = F.softmax(teacher_logits.detach().float() / t, dim=1)
        inter = 1.0 - pearson_rows(p_s, p_t).mean()
        intra = 1.0 - pearson_rows(p_s.t(), p_t.t()).mean()
        return {"dist_inter": beta * t * t * inter, "dist_intra": gamma * t * t * intra}


# --------------------------------------------------------------------------- logit-standardised KD (Sun et al., CVPR 2024)


def zscore(logits: torch.Tensor, eps: float = 1e-7) -> torch.Tensor:
    """Z-score of each row: (z − mean(z)) / (std(z) + eps), float32.

    As in the authors' `normalize` (sunshangquan/logit-standardization-KD):
    `logit.std` is the unbiased (N − 1) standard deviation, and eps = 1e-7 is
    added to it, not under a square root.
    """
    z = logits.float()
    return (z - z.mean(dim=1, keepdim=True)) / (z.std(dim=1, keepdim=True) + eps)


def standardized_kd(student_logits: torch.Tensor, teacher_logits: torch.Tensor, temperature: float) -> torch.Tensor:
    """Logit-standardised KD term (Sun et al., "Logit Standardization in Knowledge Distillation", CVPR 2024).

        T² · KL(softmax(Z(t)/T) ‖ softmax(Z(s)/T)),  Z = `zscore` of each sample's logits,

    KL summed over classes and averaged over the batch, T the "base
    temperature" (paper, Algorithm 1: the effective temperature of each sample
    is T times the standard deviation of its logits). The method weighs this
    term by a KD weight that is not bounded by 1 (9 on CIFAR-100 in the
    authors' runs) and adds CE. The teacher's logits are detached.
    """
    with _no_autocast(student_logits):
        return soft_kl(zscore(student_logits), zscore(teacher_logits.detach()), temperature)


# --------------------------------------------------------------------------- DKD (Zhao et al., CVPR 2022)


def dkd_terms(student_logits: torch.Tensor, teacher_logits: torch.Tensor, labels: torch.Tensor,
              temperature: float, alpha: float, beta: float) -> dict[str, torch.Tensor]:
    """Decoupled KD (Zhao et al., "Decoupled Knowledge Distillation", CVPR 2022), as named terms.

    KD splits into a target-class and a non-target-class part (paper, Eq. 1 and
    Eq. 7: DKD = α·TCKD + β·NCKD). With p = softmax(z/T) and y the label:

        tckd = α · T² · mean_b KL([p_t,y, 1 − p_t,y] ‖ [p_s,y, 1 − p_s,y])           binary, target vs. rest
        nckd = β · T² · mean_b KL(softmax(t/T − 1000·1_y) ‖ softmax(s/T − 1000·1_y))  over the non-target classes

    As in the authors' code (megvii-research/mdistiller `dkd_loss`): the
    binary "rest" probability is the sum of the non-target probabilities (its
    log taken as a logsumexp of log-probabilities: the same value, finite when
    the sum underflows), and
    the target logit is masked by subtracting 1000 (after dividing by T)
    before the softmax. The teacher's logits are detached. The method adds CE
    and the authors' linear warm-up of both terms.
    """
    t = temperature
    with _no_autocast(student_logits):
        s = student_logits.float() / t
        z_t = teacher_logits.detach().float() / t
        gt = F.one_hot(labels, s.shape[1]).to(s.dtype)
        p_t = F.softmax(z_t, dim=1)
        b_t = torch.stack([(p_t * gt).sum(1), (p_t * (1 - gt)).sum(1)], dim=1)
        # log [p_s,y, Σ_{c≠y} p_s,c] from log-probabilities (logsumexp): the authors' log(sum of
        # probabilities) in a form that stays finite when a confident student's rest underflows to 0
        log_p_s = F.log_softmax(s, dim=1)
        log_b_s = torch.stack([(log_p_s * gt).sum(1),
                               torch.logsumexp(log_p_s.masked_fill(gt.bool(), float("-inf")), dim=1)], dim=1)
        n = s.shape[0]
        tckd = F.kl_div(log_b_s, b_t, reduction="sum") / n
        nckd = F.kl_div(F.log_softmax(s - 1000.0 * gt, dim=1), F.softmax(z_t - 1000.0 * gt, dim=1),
                        reduction="sum") / n
        return {"tckd": alpha * t * t * tckd, "nckd": beta * t * t * nckd}
