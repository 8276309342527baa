"""CPU vs CUDA accuracy parity: the same trial on the embedded data (MNIST-1D), per seed.

    python bench/parity.py                      # seeds 0,1,2 on cpu and cuda, table + verdict
    python bench/parity.py --devices cpu        # the CPU half only (what a GPU-less machine can do)

Each (device, seed) runs `trainables.loop.run_trial` with the same config:
`scratch` training of a 1-D CNN on MNIST-1D, the loop's defaults per device
(CUDA: data on the GPU, batches drawn by a generator on the GPU, bf16
autocast; CPU: fp32). Both start from the same initial weights (built on the
CPU from the seed) but see different batch orders and precisions, so parity is
statistical, not bitwise: the verdict passes when the mean test accuracy over
the seeds differs by at most --tol (default 0.02 = 2 points) and every seed by
at most 2 x --tol. The accuracy reported is the test accuracy at the epoch of
best validation accuracy (the loop's selection), as a study would report it.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import tempfile
import time

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import torch  # noqa: E402

from trainables.loop import LocalHooks, run_trial  # noqa: E402


def trial_config(device: str, seed: int, args) -> dict:
    return {
        "study": "parity", "stage": "adhoc", "method": "scratch", "seed": seed,
        "dataset": {"name": "mnist1d", "num_samples": args.num_samples, "root": args.root},
        "student": {"family": args.family, "size": args.size},
        "train": {"epochs": args.epochs, "batch_size": args.batch, "lr": args.lr, "weight_decay": 5e-4},
        "runtime": {"device": device, "precision": args.precision}, "hp": {},
    }


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--seeds", default="0,1,2")
    p.add_argument("--devices", default="cpu,cuda")
    p.add_argument("--num-samples", type=int, default=4000)
    p.add_argument("--family", default="cnn1d")
    p.add_argument("--size", type=int, default=32)
    p.add_argument("--epochs", type=int, default=15)
    p.add_argument("--batch", type=int, default=128)
    p.add_argument("--lr", type=float, default=0.01)
    p.add_argument("--precision", default="auto", choices=("auto", "fp32", "tf32", "bf16"))
    p.add_argument("--tol", type=float, default=0.02)
    p.add_argument("--root", default=os.path.join(tempfile.gettempdir(), "kdstudy-parity-data"))
    p.add_argument("--json", action="store_true")
    args = p.parse_args(argv)
    seeds = [int(s) for s in args.seeds.split(",")]
    devices = [d.strip() for d in args.devices.split(",") if d.strip()]

    acc: dict[str, dict[int, float]] = {}
    secs: dict[str, float] = {}
    skipped = {}
    for device in devices:
        if device.startswith("cuda") and not torch.cuda.is_available():
            skipped[device] = "no CUDA device on this machine"  # runtime.device: cuda would stop the trial with an error
            continue
        acc[device], t0 = {}, time.perf_counter()
        for seed in seeds:
            hooks = run_trial(trial_config(device, seed, args), LocalHooks())
            acc[device][seed] = hooks.metrics[-1]["best_test_acc"]
        secs[device] = time.perf_counter() - t0

    ran = list(acc)
    header = ["seed"] + [f"{d} test_acc" for d in ran] + (["diff"] if len(ran) == 2 else [])
    lines = ["  ".join(f"{h:>14}" for h in header)]
    for seed in seeds:
        cells = [str(seed)] + [f"{acc[d][seed]:.4f}" for d in ran]
        if len(ran) == 2:
            cells.append(f"{acc[ran[1]][seed] - acc[ran[0]][seed]:+.4f}")
        lines.append("  ".join(f"{c:>14}" for c in cells))
    means = {d: statistics.mean(acc[d].values()) for d in ran}
    sds = {d: statistics.stdev(acc[d].values()) if len(seeds) > 1 else 0.0 for d in ran}
    cells = ["mean"] + [f"{means[d]:.4f}" for d in ran]
    if len(ran) == 2:
        cells.append(f"{means[ran[1]] - means[ran[0]]:+.4f}")
    lines.append("  ".join(f"{c:>14}" for c in cells))
    lines.append("  ".join(f"{c:>14}" for c in ["sd"] + [f"{sds[d]:.4f}" for d in ran]))

    verdict = None
    if len(ran) == 2:
        mean_ok = abs(means[ran[1]] - means[ran[0]]) <= args.tol
        seed_ok = all(abs(acc[ran[1]][s] - acc[ran[0]][s]) <= 2 * args.tol for s in seeds)
        verdict = "PASS" if mean_ok and seed_ok else "FAIL"
    if args.json:
        print(json.dumps({"acc": acc, "mean": means, "sd": sds, "seconds": secs, "skipped": skipped,
                          "tol": args.tol, "verdict": verdict, "config": trial_config("<device>", -1, args)}))
    else:
        print("\n".join(lines))
        for d, why in skipped.items():
            print(f"{d}: not run ({why})")
        print("seconds per device: " + ", ".join(f"{d} {s:.1f}" for d, s in secs.items()))
        if verdict:
            print(f"parity ({ran[0]} vs {ran[1]}, tol {args.tol} on the mean, {2 * args.tol} per seed): {verdict}")
        else:
            print("parity: not measured (needs two devices)")
    return 0 if verdict in (None, "PASS") else 1


if __name__ == "__main__":
    sys.exit(main())
