"""Distillation losses as plain functions, each with its formula and source.

Every function takes logits (not probabilities) and returns a scalar mean
over the batch, so the loop can sum terms from any method.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F


def soft_kl(student_logits: torch.Tensor, target_logits: torch.Tensor, temperature: float) -> torch.Tensor:
    """T² · KL(softmax(t/T) ‖ softmax(s/T)), summed over classes, mean over the batch.

    Hinton, Vinyals & Dean 2015, section 2: the soft-target term, multiplied
    by T² so its gradient magnitude does not shrink as T grows. The target is
    used as given: detach it where it must not receive gradients.
    """
    t = temperature
    log_p_s = F.log_softmax(student_logits.float() / t, dim=1)
    log_p_t = F.log_softmax(target_logits.float() / t, dim=1)
    return F.kl_div(log_p_s, log_p_t, reduction="batchmean", log_target=True) * (t * t)


def hinton_kd(student_logits, teacher_logits, labels, temperature: float, alpha: float) -> dict[str, torch.Tensor]:
    """Hinton KD as named terms: (1-α)·CE(s, y) and α·T²·KL(softmax(t/T) ‖ softmax(s/T)).

    The teacher's logits are detached: a frozen teacher never receives gradients.
    """
    return {
        "ce": (1.0 - alpha) * F.cross_entropy(student_logits.float(), labels),
        "kd": alpha * soft_kl(student_logits, teacher_logits.detach(), temperature),
    }
