"""`at`: attention transfer (Zagoruyko & Komodakis, ICLR 2017, "Paying More Attention to Attention").

For each pair j of stage outputs (the ``stages`` tap of student and teacher),
the spatial attention map Q = vec(mean_c f_c^p) / ‖vec(mean_c f_c^p)‖₂
(paper Eq. 1 with F = Σ_c |A_c|^p, p = 2; the channel mean differs from the
sum by 1/C, which the normalisation removes), and

    loss = CE(s, y) + β · Σ_j mean_{b, positions} (Q_s,j − Q_t,j)²      (paper Eq. 2, as the authors' code)

β = 1000 on the plain sum over the stage pairs, as RepDistiller runs it
(`--distill attention -a 0 -b 1000`, its `feat[1:-1]`: the three residual
stage outputs of a CIFAR ResNet, after their ReLU) and the AT authors' current
code (`opt.beta * sum(loss_groups)`, `--beta 1e+3`); the paper's β/2 · ‖·‖_p
per pair is written there as this mean of squares. Maps of different sizes
are compared after average-pooling the larger to the smaller's size (as
RepDistiller). No connector: the maps average over channels, so widths may
differ; student and teacher need the same number of stages (every CIFAR
ResNet and WRN has three; the 1-D CNNs one per conv layer).

Reference (RepDistiller, 240 epochs, all 50k images, last epoch): resnet32x4
→ resnet8x4 73.44; resnet56 → resnet20 70.55.
"""

from __future__ import annotations

from ..feature_losses import AT_P, AT_WEIGHT, at_loss
from ..losses import cross_entropy
from ._feature import FeatureMethod, levels_text
from .base import HParam, Step, register


@register("at")
class AttentionTransfer(FeatureMethod):
    label = "AT (Zagoruyko & Komodakis 2017)"
    hparams = {
        "at_weight": HParam(AT_WEIGHT, "float", 100.0, 10000.0, log=True, help="weight β of the attention loss"),
        "at_p": HParam(float(AT_P), "float", 1.0, 4.0, searched=False, help="exponent p of the attention map"),
    }

    @classmethod
    def feature_taps(cls, hp=None):
        return {"student": ["stages"], "teacher": ["stages"]}

    def check_shapes(self, student_shapes, teacher_shapes):
        s, t = student_shapes["stages"], teacher_shapes["stages"]
        if len(s) != len(t):
            raise ValueError(f"at pairs stages one to one: the student has {len(s)} stages ({levels_text(s)}), "
                             f"the teacher {len(t)} ({levels_text(t)})")
        if any(len(a) != len(b) for a, b in zip(s, t)):
            raise ValueError(f"at compares maps of the same spatial rank: student {levels_text(s)}, "
                             f"teacher {levels_text(t)}")

    def training_step(self, x, y):
        f = self.forward_both(x)
        terms = {
            "ce": cross_entropy(f.student_logits, y),
            "at": self.hp["at_weight"] * at_loss(f.student["stages"], f.teacher["stages"], self.hp["at_p"]),
        }
        return Step(terms=terms, logits=f.student_logits)
