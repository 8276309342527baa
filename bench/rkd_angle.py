"""RKD angle loss: kdstudy's Gram form against the authors' difference-vector form, forward + backward.

    python bench/rkd_angle.py                       # the quickstart's sizes: batch 128, embeddings 320 / 640
    python bench/rkd_angle.py --batch 64 --dims 64:256 --device cuda

Each row times `rkd_angle(student, teacher)` and its backward (the student's
gradient), the median of `--repeats` runs after a warm-up, for: ordinary
batches (ReLU features: no vertex needs the authors' form), a batch with one
coincident pair of student embeddings (its two vertices computed the authors'
way), and a fully degenerate batch (every vertex the authors' way), beside
the authors' `RKdAngle` (lenscloth/RKD) on the same tensors. It prints the
largest difference between the two losses, and between the gradients
relative to the largest gradient (at coincident points the authors'
`F.normalize` of a zero vector scales its gradient by 1/1e-12, and so does
kdstudy's fallback: both are huge there, and equal).
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import torch  # noqa: E402
import torch.nn.functional as F  # noqa: E402

from trainables.losses import rkd_angle  # noqa: E402


def authors_rkd_angle(student, teacher):
    """lenscloth/RKD metric/loss.py `RKdAngle.forward`."""
    with torch.no_grad():
        td = teacher.unsqueeze(0) - teacher.unsqueeze(1)
        norm_td = F.normalize(td, p=2, dim=2)
        t_angle = torch.bmm(norm_td, norm_td.transpose(1, 2)).view(-1)
    sd = student.unsqueeze(0) - student.unsqueeze(1)
    norm_sd = F.normalize(sd, p=2, dim=2)
    s_angle = torch.bmm(norm_sd, norm_sd.transpose(1, 2)).view(-1)
    return F.smooth_l1_loss(s_angle, t_angle, reduction="mean")


def timed(fn, s, t, repeats: int, device) -> tuple[float, torch.Tensor, torch.Tensor]:
    def once():
        x = s.clone().requires_grad_(True)
        loss = fn(x, t)
        loss.backward()
        if device.type == "cuda":
            torch.cuda.synchronize(device)
        return loss.detach(), x.grad

    once()
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        loss, grad = once()
        times.append(time.perf_counter() - t0)
    return statistics.median(times), loss, grad


def device_type(name: str) -> str:
    return torch.device(name).type


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--batch", type=int, default=128, help="embeddings per batch (default 128, the quickstart's)")
    p.add_argument("--dims", default="320:640", help="student:teacher widths (default 320:640: cnn1d-8 and cnn1d-16)")
    p.add_argument("--repeats", type=int, default=7)
    p.add_argument("--device", default="cpu")
    p.add_argument("--threads", type=int, default=1,
                   help="CPU threads (default 1: stable timings on a shared machine)")
    args = p.parse_args(argv)
    if args.threads and device_type(args.device) == "cpu":
        torch.set_num_threads(args.threads)
    device = torch.device(args.device)
    ds, dt = (int(v) for v in args.dims.split(":"))
    g = torch.Generator().manual_seed(0)
    n = args.batch
    ordinary_s = torch.relu(torch.randn(n, ds, generator=g) + 0.3)
    teacher = torch.relu(torch.randn(n, dt, generator=g) + 0.3).to(device)
    pair = ordinary_s.clone()
    pair[1] = pair[0]
    degenerate = torch.linspace(0, 1, n).unsqueeze(1) * torch.randn(1, ds, generator=g)  # collinear, evenly spaced
    degenerate[n // 2:] = degenerate[0]  # half the batch one point: every vertex unresolved by the Gram form
    cases = {"ordinary (ReLU features)": ordinary_s, "one coincident pair": pair, "degenerate (every vertex)": degenerate}
    print(f"device {device} | torch {torch.__version__} | threads {torch.get_num_threads()} | batch {n} | "
          f"student {ds} / teacher {dt} | median of {args.repeats}, forward + backward")
    print(f"{'batch':<28} {'kdstudy (ms)':>13} {'authors (ms)':>13} {'speed-up':>9} {'|Δ loss|':>10} {'Δ grad (rel)':>13}")
    for name, s in cases.items():
        s = s.to(device)
        ours_t, ours_l, ours_g = timed(rkd_angle, s, teacher, args.repeats, device)
        auth_t, auth_l, auth_g = timed(authors_rkd_angle, s, teacher, args.repeats, device)
        print(f"{name:<28} {1e3 * ours_t:>13.1f} {1e3 * auth_t:>13.1f} {auth_t / ours_t:>8.1f}x "
              f"{(ours_l - auth_l).abs().item():>10.2e} "
              f"{((ours_g - auth_g).abs().max() / auth_g.abs().max().clamp_min(1e-30)).item():>13.2e}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
