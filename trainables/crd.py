"""Contrastive Representation Distillation (Tian, Krishnan & Isola, ICLR 2020): embedding
heads, the memory bank of every training sample's embeddings, and the NCE-style loss.

Follows the authors' code, HobbitLong/RepDistiller `crd/criterion.py` (CRDLoss,
ContrastLoss, Embed) and `crd/memory.py` (ContrastMemory), with the CIFAR-100
negatives of `dataset/cifar100.py` (CIFAR100InstanceSample, mode "exact");
megvii-research/mdistiller's CRD is the same code.

    e_s = g_s(f_s) = normalise(W_s f_s + b_s),  e_t = g_t(f_t)        (128-d, L2-normalised)
    P(i | e) = exp(e · m_i / τ) / Z                                   (m_i: bank entry of sample i)
    h = P / (P + K/N)                                                 (Eq. 10's critic, N = training samples)
    L = −Σ_b [ log h(positive) + Σ_{K negatives} log(1 − h) ] / B     (Eq. 18's NCE bound)

twice, symmetrically: the student's embedding against the bank of teacher
embeddings and the teacher's against the bank of student embeddings; the
CRD term is their sum. The positive of sample b is its own bank entry (its
embedding from its last visit), the K = 16384 negatives are bank entries
of other samples. Z is estimated once, on the first batch, as
mean(exp(e · m / τ)) × N (one constant per direction), and then kept.
After the scores are taken, the batch's bank entries move towards the new
embeddings: m_i ← normalise(μ m_i + (1 − μ) e_i), μ = 0.5.

The bank and Z are buffers (state, checkpointed and resumed with the method,
never optimised, never on the autograd graph); only the heads and the
features receive gradients. The teacher's features are detached: its head
g_t is trained, the teacher is not.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

#: RepDistiller's CRD defaults (train_student.py: --feat_dim, --nce_k, --nce_t, --nce_m) and weight (-b 0.8)
CRD_EMBED_DIM = 128
CRD_NEGATIVES = 16384
CRD_TEMPERATURE = 0.07
CRD_MOMENTUM = 0.5
CRD_WEIGHT = 0.8
#: ε of the authors' ContrastLoss
CRD_EPS = 1e-7


def _upcast(t: torch.Tensor) -> torch.Tensor:
    return t if t.dtype in (torch.float32, torch.float64) else t.float()


class Embed(nn.Module):
    """A CRD embedding head: flatten, linear to `dim_out`, L2-normalise (RepDistiller `Embed`).

    The authors divide by the norm without ε; `F.normalize` (ε = 1e-12) differs
    only for an all-zero output.
    """

    def __init__(self, dim_in: int, dim_out: int = CRD_EMBED_DIM):
        super().__init__()
        self.linear = nn.Linear(dim_in, dim_out)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.normalize(self.linear(x.flatten(1)), dim=1)


def nce_loss(p: torch.Tensor, n_data: int, eps: float = CRD_EPS) -> torch.Tensor:
    """CRD's contrastive loss (paper Eq. 18; RepDistiller `ContrastLoss`) from P = exp(score/τ)/Z.

    p: (B, K + 1), column 0 the positive pair, columns 1..K the negatives; with
    P_n = 1/N the uniform noise probability and m = K:

        L = −( Σ_b log[P_b0 / (P_b0 + m P_n + ε)] + Σ_{b, k≥1} log[m P_n / (P_bk + m P_n + ε)] ) / B
    """
    b, m = p.shape[0], p.shape[1] - 1
    noise = m / float(n_data)
    log_pos = torch.log(p[:, 0] / (p[:, 0] + noise + eps))
    log_neg = torch.log(noise / (p[:, 1:] + noise + eps))
    return -(log_pos.sum() + log_neg.sum()) / b


class ContrastMemory(nn.Module):
    """The memory bank: two (N, D) buffers of L2-normalised embeddings, one per model, and Z.

    `memory_s[i]` holds the student's embedding of training sample i (the
    authors' `memory_v1`), `memory_t[i]` the teacher head's (`memory_v2`); both
    start uniform in [−a, a] with a = 1/sqrt(D/3) (rows of norm ≈ 1), as the
    authors'. `z` holds Z for the student-anchor and teacher-anchor scores
    (−1 until estimated). `labels` (optional, the training split's labels in
    index order) enables the authors' CIFAR negatives: K samples of *other*
    classes, drawn without replacement (with replacement only if fewer exist);
    without labels the negatives are K samples drawn uniformly with
    replacement from all N (the authors' ContrastMemory sampler).
    """

    memory_s: torch.Tensor
    memory_t: torch.Tensor
    z: torch.Tensor
    labels: torch.Tensor

    def __init__(self, dim: int, n_data: int, negatives: int = CRD_NEGATIVES,
                 temperature: float = CRD_TEMPERATURE, momentum: float = CRD_MOMENTUM,
                 labels: torch.Tensor | None = None):
        super().__init__()
        if n_data < 2 or negatives < 1:
            raise ValueError(f"CRD needs at least 2 training samples and 1 negative (got {n_data}, {negatives})")
        if not 0.0 <= momentum < 1.0 or temperature <= 0:
            raise ValueError(f"CRD: momentum must be in [0, 1) and the temperature > 0 "
                             f"(got {momentum}, {temperature})")
        self.dim, self.n_data, self.negatives = int(dim), int(n_data), int(negatives)
        self.temperature, self.momentum = float(temperature), float(momentum)
        a = 1.0 / math.sqrt(dim / 3.0)
        self.register_buffer("memory_s", torch.rand(n_data, dim).mul_(2 * a).add_(-a))
        self.register_buffer("memory_t", torch.rand(n_data, dim).mul_(2 * a).add_(-a))
        self.register_buffer("z", torch.full((2,), -1.0))
        if labels is not None:
            labels = torch.as_tensor(labels, dtype=torch.long).flatten()
            if len(labels) != n_data:
                raise ValueError(f"CRD: {len(labels)} labels for {n_data} training samples")
            self.register_buffer("labels", labels)
            #: fewest samples of other classes any sample has (the sampler's path is chosen once)
            self._fewest_others = n_data - int(torch.bincount(labels).max())
            if self._fewest_others < 1:
                raise ValueError("CRD: one class holds every training sample, so it has no negatives")
        else:
            self.labels = None  # type: ignore[assignment]
        self._z_known = False  # Python mirror of z >= 0, so the step does not read the buffer back

    def _load_from_state_dict(self, *args, **kwargs):
        super()._load_from_state_dict(*args, **kwargs)
        self._z_known = False  # re-read z once after a resume

    def normalisers(self, p_s: torch.Tensor, p_t: torch.Tensor) -> torch.Tensor:
        """Z for both directions: estimated once from the first batch as mean(P) × N, then kept."""
        if not self._z_known:
            if float(self.z.min()) < 0:
                with torch.no_grad():
                    self.z.copy_(torch.stack([p_s.mean(), p_t.mean()]).to(self.z.dtype) * self.n_data)
            self._z_known = True
        return self.z

    # -- negatives ----------------------------------------------------------
    def sample(self, index: torch.Tensor) -> torch.Tensor:
        """(B, K + 1) bank indices: column 0 the positives `index`, then K negatives per row."""
        b, k, n = index.shape[0], self.negatives, self.n_data
        device = index.device
        if self.labels is None:
            neg = torch.randint(0, n, (b, k), device=device)
        else:
            same = self.labels.unsqueeze(0) == self.labels[index].unsqueeze(1)  # (B, N)
            if self._fewest_others >= k:
                # k distinct other-class samples per row: the k largest of uniform keys, own class excluded
                keys = torch.rand(b, n, device=device).masked_fill_(same, -1.0)
                neg = keys.topk(k, dim=1, sorted=False).indices
            else:
                neg = torch.multinomial((~same).float(), k, replacement=True)
        return torch.cat([index.view(-1, 1), neg], dim=1)

    # -- scores -------------------------------------------------------------
    def scores(self, anchors: torch.Tensor, bank: torch.Tensor, idx: torch.Tensor,
               dense: bool | None = None) -> torch.Tensor:
        """exp(anchor_b · bank[idx_bj] / τ), (B, K + 1), the bank held constant.

        `dense` (default: when the bank is small beside the sampled rows,
        N ≤ 8 (K + 1), CIFAR's case): all B × N dot products as one matrix
        product of the anchors with a copy of the bank, the K + 1 of each row
        picked from it (B N + N D values). Otherwise the sampled rows are gathered and multiplied (the
        authors' form, B (K+1) D values, kept for the backward pass). The two
        agree to rounding.
        """
        bank = bank.detach()
        if self.n_data <= 8 * idx.shape[1] if dense is None else dense:
            # a copy: the product keeps the bank for its backward pass, and `update` writes the bank in place
            dots = (anchors @ bank.clone().t()).gather(1, idx)
        else:
            rows = bank.index_select(0, idx.reshape(-1)).view(idx.shape[0], idx.shape[1], -1)
            dots = torch.bmm(rows, anchors.unsqueeze(2)).squeeze(2)
        return torch.exp(dots / self.temperature)

    @torch.no_grad()
    def update(self, index: torch.Tensor, e_s: torch.Tensor, e_t: torch.Tensor) -> None:
        """m_i ← normalise(μ m_i + (1 − μ) e_i) for the batch's samples, in both banks."""
        mu = self.momentum
        for bank, e in ((self.memory_s, e_s), (self.memory_t, e_t)):
            mixed = bank.index_select(0, index).mul_(mu).add_(e.detach().to(bank.dtype), alpha=1.0 - mu)
            bank.index_copy_(0, index, F.normalize(mixed, dim=1))


class CRDLoss(nn.Module):
    """The CRD term: embedding heads for student and teacher features, the bank, the two NCE losses.

    forward(f_s, f_t, index, contrast_index=None): f_s, f_t the (B, ·) features
    (RepDistiller: the pooled penultimate features), `index` the (B,) positions
    of the batch's samples in the training split (0 ≤ index < n_data), and
    optionally the (B, K + 1) bank indices to contrast with (positives first),
    else drawn by `ContrastMemory.sample`. Returns
    nce(student anchor vs teacher bank) + nce(teacher anchor vs student bank),
    to be weighted by CRD_WEIGHT. In training mode the bank is then updated with
    the batch's embeddings (never in eval mode). Runs in float32, autocast off.
    """

    def __init__(self, student_dim: int, teacher_dim: int, n_data: int, embed_dim: int = CRD_EMBED_DIM,
                 negatives: int = CRD_NEGATIVES, temperature: float = CRD_TEMPERATURE,
                 momentum: float = CRD_MOMENTUM, labels: torch.Tensor | None = None):
        super().__init__()
        self.embed_s = Embed(student_dim, embed_dim)
        self.embed_t = Embed(teacher_dim, embed_dim)
        self.memory = ContrastMemory(embed_dim, n_data, negatives, temperature, momentum, labels)

    def forward(self, f_s: torch.Tensor, f_t: torch.Tensor, index: torch.Tensor,
                contrast_index: torch.Tensor | None = None) -> torch.Tensor:
        mem = self.memory
        index = index.to(device=f_s.device, dtype=torch.long).flatten()
        if index.numel() != f_s.shape[0] or f_t.shape[0] != f_s.shape[0]:
            raise ValueError(f"CRD: {index.numel()} indices for student/teacher batches of "
                             f"{f_s.shape[0]}/{f_t.shape[0]}")
        with torch.autocast(device_type=f_s.device.type, enabled=False):
            e_s = self.embed_s(_upcast(f_s))
            e_t = self.embed_t(_upcast(f_t.detach()))
            idx = mem.sample(index) if contrast_index is None else contrast_index.to(f_s.device, torch.long)
            p_s = mem.scores(e_s, mem.memory_t, idx)  # student anchor, teacher bank (authors' out_v1)
            p_t = mem.scores(e_t, mem.memory_s, idx)  # teacher anchor, student bank (authors' out_v2)
            z = mem.normalisers(p_s, p_t)
            loss = nce_loss(p_s / z[0], mem.n_data) + nce_loss(p_t / z[1], mem.n_data)
            if self.training:
                mem.update(index, e_s, e_t)
        return loss
