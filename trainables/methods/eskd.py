"""`eskd`: Early-stopped knowledge distillation (Cho & Hariharan, ICCV 2019).

Hinton KD (see `kd`) from a teacher checkpoint of an *early* epoch: larger,
fully trained teachers can make worse students, and stopping the teacher
early mitigates this. The loss is exactly `kd`'s,

    loss = (1−α)·CE(s, y) + α·T²·KL(softmax(t/T) ‖ softmax(s/T)),

the difference is which teacher weights are loaded: the study samples
`teacher_epoch` among the epochs whose checkpoints the teacher stage kept
(`export_epochs`), and `trainables.config.resolve` routes it to that
checkpoint (the row records it in `teacher_epoch`). A separate registered
name keeps ESKD's rows apart from full-teacher KD in the results.
"""

from __future__ import annotations

from .base import register
from .kd import HintonKD


@register("eskd")
class EarlyStoppedKD(HintonKD):
    label = "ESKD (Cho & Hariharan 2019)"
    kind = "remedy"
    hparams = dict(HintonKD.hparams)
    early_teacher = True  # `teacher_epoch` is searched over teachers.export_epochs
