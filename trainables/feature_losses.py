"""Feature-distillation losses as plain functions, each with its formula and source.

They take intermediate features (from the models' feature taps) rather than
logits and return one scalar, so a method can weight and sum them like the
logit losses of `trainables.losses`. The teacher's features are a fixed target
(detached here). The maths runs with autocast off, in float32 for half-precision
features (bf16 autocast) and in the features' own precision otherwise. Features are (B, C, *spatial) maps of any
spatial rank (1-D signals, 2-D images) or (B, D) vectors where a loss allows it.

The trainable parts (FitNets' regressor, ReviewKD's fusion path) are in
`trainables.connectors`; CRD's embedding heads, memory bank and contrastive
loss in `trainables.crd`.

  FitNets (Romero 2015) ........ hint_loss                          FITNET_WEIGHT = 100
  AT (Zagoruyko 2017) .......... attention_map, at_pair_loss, at_loss AT_WEIGHT = 1000, AT_P = 2
  SP (Tung & Mori 2019) ........ similarity_matrix, sp_pair_loss, sp_loss SP_WEIGHT = 3000
  PKT (Passalis & Tefas 2018) .. pkt_loss                           PKT_WEIGHT = 30000, PKT_EPS = 1e-7
  ReviewKD (Chen 2021) ......... hcl_loss                           REVIEWKD_WEIGHT = 5, HCL_LEVELS = (4, 2, 1)

The weights are the authors' for CIFAR-100 resnet32x4 → resnet8x4
(HobbitLong/RepDistiller `scripts/run_cifar_distill.sh`, `-b`; the ReviewKD
authors' `CIFAR-100/script/reviewKD.sh`, `--kd-loss-weight`), with the
cross-entropy at weight 1 and no KD term beside them.
"""

from __future__ import annotations

from typing import Sequence

import torch
import torch.nn.functional as F

#: FitNets hint weight (RepDistiller `--distill hint -b 100`; mdistiller FITNET.LOSS.FEAT_WEIGHT)
FITNET_WEIGHT = 100.0
#: AT weight β on the sum over stage pairs (RepDistiller `-b 1000`; the AT authors' `--beta 1e+3`)
AT_WEIGHT = 1000.0
#: AT's exponent p of the attention map Σ_c |A_c|^p (the authors' and RepDistiller's default)
AT_P = 2
#: SP weight γ (RepDistiller `--distill similarity -b 3000`)
SP_WEIGHT = 3000.0
#: PKT weight (RepDistiller `--distill pkt -b 30000`)
PKT_WEIGHT = 30000.0
#: PKT's ε, in the vectors' normalisation and in the KL's log ratio (the PKT authors' code)
PKT_EPS = 1e-7
#: ReviewKD loss weight for resnet32x4 → resnet8x4 (authors' script; their other CIFAR pairs:
#: WRN and ShuffleNetV1 students 5, ShuffleNetV2 8, resnet56 → resnet20 0.6, resnet110 → resnet32 1)
REVIEWKD_WEIGHT = 5.0
#: epochs over which ReviewKD's loss ramps up linearly (authors' `--kd-warm-up 20`)
REVIEWKD_WARMUP_EPOCHS = 20
#: pyramid sizes of the hierarchical context loss, coarser each level (authors' `hcl`)
HCL_LEVELS = (4, 2, 1)


def _no_autocast(t: torch.Tensor):
    return torch.autocast(device_type=t.device.type, enabled=False)


def _upcast(t: torch.Tensor) -> torch.Tensor:
    """float32 for half-precision (or integer) features; float32 and float64 stay as they are."""
    return t if t.dtype in (torch.float32, torch.float64) else t.float()


def _check_same_shape(what: str, s: torch.Tensor, t: torch.Tensor) -> None:
    if s.shape != t.shape:
        raise ValueError(f"{what}: student features {tuple(s.shape)} and teacher features "
                         f"{tuple(t.shape)} must have the same shape (adapt the student with a connector)")


def adaptive_avg_pool(f: torch.Tensor, size: Sequence[int]) -> torch.Tensor:
    """Average-pool a (B, C, *spatial) map to `size` (one entry per spatial dimension), any rank 1-3."""
    pools = {1: F.adaptive_avg_pool1d, 2: F.adaptive_avg_pool2d, 3: F.adaptive_avg_pool3d}
    rank = f.dim() - 2
    if rank not in pools:
        raise ValueError(f"expected a (B, C, *spatial) feature map with 1-3 spatial dimensions, got {tuple(f.shape)}")
    return pools[rank](f, tuple(size))


# --------------------------------------------------------------------------- FitNets


def hint_loss(regressed_student: torch.Tensor, teacher_hint: torch.Tensor) -> torch.Tensor:
    """FitNets' hint loss (Romero et al., ICLR 2015, Eq. 3), as in RepDistiller's `HintLoss`.

        L_hint = mean over B·C·spatial of (r(f_s) − f_t)²

    where r is the trainable regressor on the student's guided layer
    (`trainables.connectors.ConvReg`) and f_t the teacher's hint layer. The paper
    writes ½‖·‖²; RepDistiller (and mdistiller) use `nn.MSELoss()` (the mean, no ½)
    with weight 100, which this follows.
    """
    _check_same_shape("hint loss", regressed_student, teacher_hint)
    with _no_autocast(regressed_student):
        return F.mse_loss(_upcast(regressed_student), _upcast(teacher_hint.detach()))


# --------------------------------------------------------------------------- AT


def attention_map(f: torch.Tensor, p: float = AT_P) -> torch.Tensor:
    """Q = vec(mean_c f_c^p) / ‖vec(mean_c f_c^p)‖₂ for each sample: (B, C, *spatial) -> (B, Πspatial).

    The spatial attention map of Zagoruyko & Komodakis 2017 (Eq. 1 with
    F = Σ_c |A_c|^p; the authors' code takes the channel mean of f^p, which
    differs from the sum by the factor 1/C that the L2 normalisation removes),
    flattened and L2-normalised (`F.normalize`, ε = 1e-12 against an all-zero map).
    """
    with _no_autocast(f):
        return F.normalize(_upcast(f).pow(p).mean(dim=1).flatten(1), dim=1)


def at_pair_loss(f_s: torch.Tensor, f_t: torch.Tensor, p: float = AT_P) -> torch.Tensor:
    """AT loss of one stage pair: mean over B × positions of (Q_s − Q_t)².

    Paper Eq. 2 writes β/2 · ‖Q_s − Q_t‖_p per pair; the authors' code
    (szagoruyko/attention-transfer `at_loss`) and RepDistiller (`Attention.at_loss`)
    take the squared difference averaged over the batch and the positions, and
    this follows them. Maps of different spatial size are compared after
    average-pooling the larger to the smaller's size (RepDistiller pools the
    larger square map to the smaller's side; the same for square maps).
    Channel counts may differ (the map averages over channels).
    """
    if f_s.dim() != f_t.dim() or f_s.shape[0] != f_t.shape[0]:
        raise ValueError(f"AT: student {tuple(f_s.shape)} and teacher {tuple(f_t.shape)} maps must have the "
                         f"same batch size and spatial rank")
    with _no_autocast(f_s):
        f_s, f_t = _upcast(f_s), _upcast(f_t.detach())
        if f_s.shape[2:] != f_t.shape[2:]:
            size = [min(a, b) for a, b in zip(f_s.shape[2:], f_t.shape[2:])]
            if list(f_s.shape[2:]) != size:
                f_s = adaptive_avg_pool(f_s, size)
            if list(f_t.shape[2:]) != size:
                f_t = adaptive_avg_pool(f_t, size)
        return (attention_map(f_s, p) - attention_map(f_t, p)).pow(2).mean()


def at_loss(student_maps: Sequence[torch.Tensor], teacher_maps: Sequence[torch.Tensor],
            p: float = AT_P) -> torch.Tensor:
    """AT loss: Σ over stage pairs j of `at_pair_loss(s_j, t_j)`, to be weighted by β = AT_WEIGHT.

    RepDistiller applies its weight b = 1000 to this plain sum over the three
    CIFAR ResNet stage outputs (`sum(loss_group)`, no ½), as the AT authors'
    current code does with `--beta 1e+3` (`opt.beta * sum(loss_groups)`).
    """
    if len(student_maps) != len(teacher_maps) or not student_maps:
        raise ValueError(f"AT pairs stages one to one: got {len(student_maps)} student and "
                         f"{len(teacher_maps)} teacher maps")
    return sum(at_pair_loss(s, t, p) for s, t in zip(student_maps, teacher_maps))


# --------------------------------------------------------------------------- SP


def similarity_matrix(f: torch.Tensor) -> torch.Tensor:
    """G̃ = row-normalise(Q Qᵀ) with Q the (B, ·) flattened features (Tung & Mori 2019, Eqs. 1-2).

    Each row of the B×B Gram matrix divided by its L2 norm (`F.normalize`, ε = 1e-12).
    """
    with _no_autocast(f):
        q = _upcast(f).flatten(1)
        return F.normalize(q @ q.t(), dim=1)


def sp_pair_loss(f_s: torch.Tensor, f_t: torch.Tensor) -> torch.Tensor:
    """SP loss of one layer pair (Tung & Mori, ICCV 2019, Eq. 3): ‖G̃_t − G̃_s‖_F² / b².

    b is the batch size; the two layers may have any (different) widths and
    shapes, only the batch must agree. As RepDistiller's `Similarity`.
    """
    if f_s.shape[0] != f_t.shape[0]:
        raise ValueError(f"SP: student and teacher batches differ ({f_s.shape[0]} vs {f_t.shape[0]})")
    b = f_s.shape[0]
    with _no_autocast(f_s):
        diff = similarity_matrix(f_t.detach()) - similarity_matrix(f_s)
        return diff.pow(2).sum() / (b * b)


def sp_loss(student_feats: Sequence[torch.Tensor], teacher_feats: Sequence[torch.Tensor]) -> torch.Tensor:
    """SP loss: Σ over layer pairs of `sp_pair_loss` (Eq. 4), to be weighted by γ = SP_WEIGHT.

    RepDistiller (and mdistiller) use one pair, the last stage's output
    (`feat[-2]`, before pooling), with γ = 3000.
    """
    if len(student_feats) != len(teacher_feats) or not student_feats:
        raise ValueError(f"SP pairs layers one to one: got {len(student_feats)} student and "
                         f"{len(teacher_feats)} teacher features")
    return sum(sp_pair_loss(s, t) for s, t in zip(student_feats, teacher_feats))


# --------------------------------------------------------------------------- PKT


def _pkt_conditional(f: torch.Tensor, eps: float) -> torch.Tensor:
    """Row-stochastic P with P_ij = K_ij / Σ_k K_ik, K_ij = (cos(f_i, f_j) + 1) / 2."""
    f = f.flatten(1)
    # ‖x‖₂ as the authors' sqrt(Σ x²), whose gradient at x = 0 would be 0·∞ = NaN; the norm's is 0 there
    f = f / (torch.linalg.vector_norm(f, dim=1, keepdim=True) + eps)
    f = torch.nan_to_num(f, nan=0.0)  # the authors' `x[x != x] = 0` (only NaN inputs produce NaN here)
    k = (f @ f.t() + 1.0) / 2.0
    return k / k.sum(dim=1, keepdim=True)


def pkt_loss(f_s: torch.Tensor, f_t: torch.Tensor, eps: float = PKT_EPS) -> torch.Tensor:
    """PKT loss (Passalis & Tefas, ECCV 2018, Eqs. 8-10 with the cosine kernel), as the authors' code.

        x̂ = x / (‖x‖₂ + ε)                         (each embedding; ε = 1e-7)
        K_ij = (x̂_i · x̂_j + 1) / 2                  (cosine similarity shifted to [0, 1])
        p_ij = K_ij / Σ_k K_ik                       (row-normalised, self-similarity included)
        L = mean over all B² pairs (i, j) of t_ij · log((t_ij + ε) / (s_ij + ε))

    p for the student (s) and the frozen teacher (t). ‖x‖₂ is `vector_norm`, the
    same value as the authors' sqrt(Σ x²) but with gradient 0 rather than NaN at
    an all-zero embedding (whose x̂ is 0 thanks to ε). The paper's conditional
    probabilities exclude k = i and its KL sums over j; the authors' code
    (passalis/probabilistic_kt `cosine_similarity_loss`, copied in RepDistiller
    and mdistiller) keeps the diagonal and averages over all B² entries, hence
    the large weight (30000): this follows the code. Embeddings of any (different)
    widths; maps are flattened.
    """
    if f_s.shape[0] != f_t.shape[0]:
        raise ValueError(f"PKT: student and teacher batches differ ({f_s.shape[0]} vs {f_t.shape[0]})")
    with _no_autocast(f_s):
        s = _pkt_conditional(_upcast(f_s), eps)
        t = _pkt_conditional(_upcast(f_t.detach()), eps)
        return torch.mean(t * torch.log((t + eps) / (s + eps)))


# --------------------------------------------------------------------------- ReviewKD


def hcl_loss(student_feats: Sequence[torch.Tensor], teacher_feats: Sequence[torch.Tensor],
             levels: Sequence[int] = HCL_LEVELS) -> torch.Tensor:
    """ReviewKD's hierarchical context loss (Chen et al., CVPR 2021, Sec. 3.3), as the authors' `hcl`.

    For each level pair (F_s, F_t) of equal shape (the review path's output and
    the teacher's feature), with h the first spatial size:

        L = [ MSE(F_s, F_t) + Σ_{l in (4, 2, 1), l < h} w_l · MSE(P_l F_s, P_l F_t) ] / (1 + Σ w_l)

    where P_l average-pools to l × l (l per spatial dimension), MSE is the mean
    over all entries, and the weights halve at each coarser level present
    (1/2, 1/4, 1/8); the total is the sum over levels. A (B, D) vector level
    (the pooled penultimate features) is its plain MSE.
    """
    if len(student_feats) != len(teacher_feats) or not student_feats:
        raise ValueError(f"HCL pairs levels one to one: got {len(student_feats)} student and "
                         f"{len(teacher_feats)} teacher features")
    total = None
    for fs, ft in zip(student_feats, teacher_feats):
        _check_same_shape("HCL", fs, ft)
        with _no_autocast(fs):
            fs, ft = _upcast(fs), _upcast(ft.detach())
            loss = F.mse_loss(fs, ft)
            h = fs.shape[2] if fs.dim() > 2 else 1
            weight, weights = 1.0, 1.0
            for size in levels:
                if size >= h:
                    continue
                weight /= 2.0
                pooled = [size] * (fs.dim() - 2)
                loss = loss + weight * F.mse_loss(adaptive_avg_pool(fs, pooled), adaptive_avg_pool(ft, pooled))
                weights += weight
            loss = loss / weights
        total = loss if total is None else total + loss
    return total
