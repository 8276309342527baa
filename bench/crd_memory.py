"""CRD's memory bank and loss cost, measured on this machine (no training, no Ray).

    python bench/crd_memory.py [--n-data 50000] [--batches 64 128] [--negatives 16384]
                               [--dim 256] [--repeats 5] [--threads 1] [--device cpu]

Prints, for a CIFAR-100-sized bank (50,000 training samples, 128-d embeddings,
two banks of float32 plus the labels), the bank's memory, and per batch size
the time of one CRD loss forward + backward + bank update (embedding heads
included; the models' passes are not) split into the negatives' sampling
(class-aware, the authors' CIFAR sampler, or uniform) and the rest, for the
dense score path (all N dot products, used when N <= 8 (K + 1)) and the
gathered one (the authors' form), with the peak extra memory each keeps
for its backward pass (the largest tensors it saves). Median of `--repeats`;
on the CPU in CPU time of one thread (see `timed`), on a GPU in wall time.
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import time

import torch

sys.path.insert(0, os.path.join(os.path.dirname(__file__), ".."))

from trainables import crd  # noqa: E402


def timed(fn, repeats: int, device: str) -> float:
    """Median seconds of `fn`: wall time (synchronised) on a GPU; on the CPU the process's CPU
    time, which a busy shared machine does not inflate as it does the wall time (one thread)."""
    fn()  # warm-up (and Z's estimate)
    clock = time.perf_counter if device.startswith("cuda") else time.process_time
    times = []
    for _ in range(repeats):
        if device.startswith("cuda"):
            torch.cuda.synchronize()
        t0 = clock()
        fn()
        if device.startswith("cuda"):
            torch.cuda.synchronize()
        times.append(clock() - t0)
    return statistics.median(times)


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--n-data", type=int, default=50_000)
    ap.add_argument("--classes", type=int, default=100)
    ap.add_argument("--batches", type=int, nargs="+", default=[64, 128])
    ap.add_argument("--negatives", type=int, default=crd.CRD_NEGATIVES)
    ap.add_argument("--dim", type=int, default=256, help="width of the features fed to the heads (resnet8x4: 256)")
    ap.add_argument("--repeats", type=int, default=5)
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--device", default="cpu")
    a = ap.parse_args(argv)
    torch.set_num_threads(a.threads)
    torch.manual_seed(0)
    dev = a.device
    labels = torch.arange(a.n_data) % a.classes
    loss = crd.CRDLoss(a.dim, a.dim, a.n_data, negatives=a.negatives, labels=labels).to(dev)
    mem = loss.memory
    bank_mb = (mem.memory_s.numel() + mem.memory_t.numel()) * mem.memory_s.element_size() / 2**20
    label_mb = mem.labels.numel() * mem.labels.element_size() / 2**20
    heads = sum(p.numel() for p in loss.parameters())
    print(f"CRD bank: N = {a.n_data}, D = {crd.CRD_EMBED_DIM}, K = {a.negatives}, device {dev} "
          f"({a.threads} thread{'s' if a.threads > 1 else ''}; "
          f"{'wall time' if dev.startswith('cuda') else 'CPU time: CPU numbers, not GPU ones'})")
    print(f"  two banks (float32) {bank_mb:.1f} MiB, labels (int64) {label_mb:.2f} MiB, "
          f"embedding heads {heads} parameters ({heads * 4 / 2**20:.2f} MiB)")
    print()
    print(f"{'batch':>5} {'path':>9} {'sampling':>12} {'loss f+b+update':>16} {'total':>8} {'saved for backward':>19}")
    for b in a.batches:
        f_s = torch.randn(b, a.dim, device=dev, requires_grad=True)
        f_t = torch.randn(b, a.dim, device=dev)
        index = torch.randperm(a.n_data, device=dev)[:b]
        mem_uniform = crd.ContrastMemory(crd.CRD_EMBED_DIM, a.n_data, a.negatives).to(dev)
        t_class = timed(lambda: mem.sample(index), a.repeats, dev)
        t_uniform = timed(lambda: mem_uniform.sample(index), a.repeats, dev)
        idx = mem.sample(index)
        for dense in (True, False):
            def step():
                e_s = loss.embed_s(f_s)
                e_t = loss.embed_t(f_t)
                p_s = mem.scores(e_s, mem.memory_t, idx, dense=dense)
                p_t = mem.scores(e_t, mem.memory_s, idx, dense=dense)
                z = mem.normalisers(p_s, p_t)
                out = crd.nce_loss(p_s / z[0], mem.n_data) + crd.nce_loss(p_t / z[1], mem.n_data)
                mem.update(index, e_s, e_t)
                out.backward()
            t_loss = timed(step, a.repeats, dev)
            k1 = idx.shape[1]
            saved = (2 * (a.n_data * crd.CRD_EMBED_DIM + b * a.n_data) if dense
                     else 2 * b * k1 * crd.CRD_EMBED_DIM) * 4 / 2**20
            name = "dense" if dense else "gathered"
            print(f"{b:>5} {name:>9} {t_class * 1e3:>9.1f} ms {t_loss * 1e3:>13.1f} ms "
                  f"{(t_class + t_loss) * 1e3:>5.0f} ms {saved:>15.0f} MiB")
        print(f"{b:>5} {'':>9} uniform negatives: sampling {t_uniform * 1e3:.1f} ms")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
