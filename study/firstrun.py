"""`kdstudy bench --first-run`: does kdstudy's GPU path work on this machine? Real checks, about a minute.

    kdstudy bench --first-run            # (= python -m study.firstrun)
    kdstudy bench --first-run --quick    # without the training-parity run (about 20 s less)

The CPU tests fake CUDA (tests/test_gpu_fake.py); this runs the same things
for real on the GPU and prints PASS or FAIL per item:

device           `runtime.device: auto` chooses an indexed cuda:0 and its plan: bf16 autocast,
                 TF32 off, channels_last for images, fused optimiser, the memory cap of a 0.25 share
precision        with `precision: fp32` a float32 matmul and convolution on the GPU equal float64
                 to 1e-5 (TF32, 10 mantissa bits, is off: its error is ~1e-3); with `tf32` TF32 is
                 in force (on GPUs that have it)
memory cap       a process planned with `gpu_fraction` 0.25 (what Ray's `gpu: 0.25` gives a trial)
                 may allocate 15% of the GPU's memory and is refused 35%
ray packing      through a local Ray with one GPU, four real trials of `{cpu: 1, gpu: 0.25}`
                 (kdstudy's Tune trainable) run at the same time, each on cuda:0, and a
                 `gpu: 0` trial runs on the CPU although CUDA is visible to it
step parity      one fp32 training step of a CIFAR ResNet-8 on the GPU and on the CPU, same
                 weights and batch: loss within 1e-4 (relative), gradients with cosine
                 >= 0.9999 and every element within 1e-3 of the largest (float32 on both;
                 cuDNN may pick other algorithms, e.g. Winograd, whose rounding differs)
training parity  a short training (`scratch`, 1-D CNN of width 32, MNIST-1D 4,000 samples,
                 15 epochs, seed 0) at the trial defaults on each device (CUDA: bf16): test
                 accuracy within 0.03. Batch order and precision differ between the devices,
                 so the two runs differ like two seeds: the CPU's seed-to-seed SD of this run
                 is 0.0066 (bench/RESULTS.md), the SD of a difference of two runs √2 x that,
                 and 0.03 is 3.2 of those SDs (a false FAIL about 1 time in 700)

Exit status: 0 every check passed; 1 a check failed; 3 no CUDA device here
(nothing was checked: run it on a GPU machine).
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass

EXIT_NO_GPU = 3

PARITY_TOL = 0.03
PARITY_CONFIG = {"num_samples": 4000, "family": "cnn1d", "size": 32, "epochs": 15, "batch": 128, "lr": 0.01}


@dataclass
class Check:
    name: str
    ok: bool
    detail: str


# --------------------------------------------------------------------------- the checks


def check_device() -> Check:
    import torch

    from trainables.device import choose_device, plan_device

    device = choose_device({"device": "auto"})
    plan = plan_device(device, {"precision": "auto", "gpu_fraction": 0.25}, "image")
    ok = (device.type == "cuda" and device.index is not None and plan.autocast_dtype is torch.bfloat16
          and plan.tf32 is False and plan.memory_fraction == (0.25, device) and plan.channels_last
          and plan.fused_optimizer)
    name = torch.cuda.get_device_name(device) if device.type == "cuda" else "no GPU"
    return Check("device", ok, f"auto chose {device} ({name}); plan {json.dumps(plan.describe())}")


def _rel_error(got, ref) -> float:
    return float((got.double().cpu() - ref).abs().max() / ref.abs().max())


def check_precision() -> Check:
    import torch
    import torch.nn.functional as F

    from trainables.device import plan_device, tf32_state

    device = torch.device("cuda", 0)
    g = torch.Generator().manual_seed(0)
    a, b = torch.randn(1024, 1024, generator=g), torch.randn(1024, 1024, generator=g)
    x, w = torch.randn(16, 32, 16, 16, generator=g), torch.randn(32, 32, 3, 3, generator=g)
    ref_mm = a.double() @ b.double()
    ref_conv = F.conv2d(x.double(), w.double(), padding=1)

    def errors():
        mm = a.to(device) @ b.to(device)
        conv = F.conv2d(x.to(device), w.to(device), padding=1)
        torch.cuda.synchronize(device)
        return _rel_error(mm, ref_mm), _rel_error(conv, ref_conv)

    plan_device(device, {"precision": "fp32"}).apply()
    fp32_state, (mm32, conv32) = tf32_state(), errors()
    plan_device(device, {"precision": "tf32"}).apply()
    tf32_on, (mm_tf, conv_tf) = tf32_state(), errors()
    plan_device(device, {"precision": "fp32"}).apply()
    has_tf32 = torch.cuda.get_device_capability(device) >= (8, 0)
    ok = fp32_state == {"matmul": "ieee", "conv": "ieee"} and mm32 < 1e-5 and conv32 < 1e-5
    ok = ok and tf32_on == {"matmul": "tf32", "conv": "tf32"} and (mm_tf > 1e-4 or not has_tf32)
    tf = f"tf32: {mm_tf:.1e} / {conv_tf:.1e}" + ("" if has_tf32 else " (this GPU has no TF32)")
    return Check("precision", ok, f"fp32 matmul / conv error vs float64 {mm32:.1e} / {conv32:.1e} (TF32 off); {tf}")


_CAP_SCRIPT = r"""
import json, sys, torch
sys.path.insert(0, sys.argv[1])
from trainables.device import plan_device
device = torch.device("cuda", 0)
plan_device(device, {"gpu_fraction": 0.25}).apply()
total = torch.cuda.get_device_properties(device).total_memory
out = {"total": total}
for share in (0.15, 0.35):
    try:
        t = torch.empty(int(share * total), dtype=torch.uint8, device=device)
        del t
        torch.cuda.empty_cache()
        out[str(share)] = "allocated"
    except torch.cuda.OutOfMemoryError:
        out[str(share)] = "refused"
print(json.dumps(out))
"""


def check_memory_cap(root: str) -> Check:
    proc = subprocess.run([sys.executable, "-c", _CAP_SCRIPT, root], capture_output=True, text=True, timeout=300)
    lines = [ln for ln in proc.stdout.splitlines() if ln.startswith("{")]
    if proc.returncode != 0 or not lines:
        return Check("memory cap", False, f"the capped process failed: {(proc.stderr or proc.stdout)[-400:]}")
    out = json.loads(lines[-1])
    ok = out["0.15"] == "allocated" and out["0.35"] == "refused"
    gib = out["total"] / 2**30
    return Check("memory cap", ok, f"fraction 0.25 of {gib:.1f} GiB: 15% {out['0.15']}, 35% {out['0.35']}")


def _trial_base(data_root: str, epochs: int, gpu_fraction: float) -> dict:
    return {"study": "firstrun", "stage": "adhoc", "method": "scratch", "seed": 0,
            "dataset": {"name": "mnist1d", "num_samples": 4000, "root": data_root},
            "student": {"family": "cnn1d", "size": 16},
            "train": {"epochs": epochs, "batch_size": 64, "lr": 0.01, "weight_decay": 5e-4},
            "runtime": {"device": "auto", "precision": "auto", "gpu_fraction": gpu_fraction}, "hp": {}, "paths": {}}


def _spans(result) -> tuple[set, float, float]:
    """(devices, start, end) of one trial's training, wall clock, from its last epoch's rows: it ended at
    the rows' timestamp and trained `total_time_s` before (its evaluations put the true start earlier)."""
    rows = result.metrics.get("rows") or []
    if not rows:
        return set(), float("nan"), float("nan")
    last = rows[-1]
    return {r["device"] for r in rows}, _ts(last) - last["total_time_s"], _ts(last)


def _ts(row) -> float:
    from datetime import datetime

    t = row["timestamp"]
    return (datetime.fromisoformat(t) if isinstance(t, str) else t).timestamp()


def check_ray_packing(data_root: str, workdir: str) -> Check:
    """Four {cpu 1, gpu 0.25} trials at once on the one GPU; a gpu: 0 trial on the CPU."""
    import ray
    from ray import tune

    from trainables.trainable import tune_trainable

    from .localray import start_local_ray, stop_local_ray

    os.environ["RAY_AIR_NEW_OUTPUT"] = "0"  # Tune's tables and log lines stay off the PASS/FAIL lines
    for name in ("ray", "ray.tune"):
        logger = logging.getLogger(name)
        logger.setLevel(logging.ERROR)
    start_local_ray(num_cpus=max(5, os.cpu_count() or 1), num_gpus=1, log_dir=os.path.join(workdir, "ray"))
    try:
        def run(resources: dict, keys: list[str], epochs: int):
            base = _trial_base(data_root, epochs, resources.get("gpu", 0))
            fn = tune.with_resources(tune.with_parameters(tune_trainable, base=base), resources)
            return tune.Tuner(fn, param_space={"_trial_key": tune.grid_search(keys)},
                              tune_config=tune.TuneConfig(max_concurrent_trials=len(keys)),
                              run_config=tune.RunConfig(storage_path=os.path.join(workdir, "tune"),
                                                        name=f"firstrun-{len(keys)}", verbose=0)).fit()

        packed = run({"cpu": 1, "gpu": 0.25}, [f"gpu-{i}" for i in range(4)], epochs=60)
        alone = run({"cpu": 1, "gpu": 0}, ["cpu-0"], epochs=2)
    finally:
        stop_local_ray()
    errors = [str(e).splitlines()[-1] for grid in (packed, alone) for e in grid.errors]
    if errors:
        return Check("ray packing", False, "trials failed: " + "; ".join(errors[:2]))
    spans = [_spans(r) for r in packed]
    devices = set().union(*(d for d, _, _ in spans))
    overlap = min(e for _, _, e in spans) - max(s for _, s, _ in spans)
    (cpu_devices, _, _), = [_spans(r) for r in alone]
    ok = devices == {"cuda:0"} and overlap > 0 and cpu_devices == {"cpu"} and len(spans) == 4
    return Check("ray packing", ok, f"4 trials of {{cpu 1, gpu 0.25}} on {sorted(devices)}, all four running "
                                    f"together for {overlap:.1f} s; a gpu: 0 trial on {sorted(cpu_devices)}")


def check_step_parity() -> Check:
    import torch
    import torch.nn.functional as F

    from trainables import models
    from trainables.device import plan_device

    cuda = torch.device("cuda", 0)
    plan_device(cuda, {"precision": "fp32"}).apply()
    torch.manual_seed(0)
    model = models.build_model({"family": "cifar_resnet", "size": 8}, (3, 32, 32), 10)
    g = torch.Generator().manual_seed(1)
    x, y = torch.randn(32, 3, 32, 32, generator=g), torch.randint(0, 10, (32,), generator=g)

    def step(device):
        m = models.build_model({"family": "cifar_resnet", "size": 8}, (3, 32, 32), 10)
        m.load_state_dict(model.state_dict())
        m.to(device).train()
        loss = F.cross_entropy(m(x.to(device)), y.to(device))
        loss.backward()
        grad = torch.cat([p.grad.flatten() for p in m.parameters()]).double().cpu()
        return float(loss), grad

    l_cpu, g_cpu = step(torch.device("cpu"))
    l_gpu, g_gpu = step(cuda)
    rel_loss = abs(l_gpu - l_cpu) / abs(l_cpu)
    cosine = float(torch.nn.functional.cosine_similarity(g_cpu, g_gpu, dim=0))
    worst = float((g_gpu - g_cpu).abs().max() / g_cpu.abs().max())
    ok = rel_loss < 1e-4 and cosine >= 0.9999 and worst < 1e-3
    return Check("step parity", ok, f"fp32 loss rel. diff {rel_loss:.1e}, gradient cosine {cosine:.7f}, "
                                    f"largest element diff {worst:.1e} of the largest gradient")


def check_training_parity(data_root: str) -> Check:
    from trainables.loop import LocalHooks, run_trial

    c = PARITY_CONFIG
    acc = {}
    for device in ("cpu", "cuda"):
        cfg = {"study": "firstrun", "stage": "adhoc", "method": "scratch", "seed": 0,
               "dataset": {"name": "mnist1d", "num_samples": c["num_samples"], "root": data_root},
               "student": {"family": c["family"], "size": c["size"]},
               "train": {"epochs": c["epochs"], "batch_size": c["batch"], "lr": c["lr"], "weight_decay": 5e-4},
               "runtime": {"device": device}, "hp": {}}
        acc[device] = run_trial(cfg, LocalHooks()).metrics[-1]["best_test_acc"]
    diff = abs(acc["cuda"] - acc["cpu"])
    return Check("training parity", diff <= PARITY_TOL,
                 f"test accuracy cpu {acc['cpu']:.4f}, cuda {acc['cuda']:.4f} (|diff| {diff:.4f}, tolerance "
                 f"{PARITY_TOL})")


# --------------------------------------------------------------------------- the command


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="kdstudy bench --first-run", description=__doc__.split("\n\n")[0],
                                formatter_class=argparse.RawDescriptionHelpFormatter, epilog=__doc__.split("\n\n", 2)[2])
    p.add_argument("--quick", action="store_true", help="skip the training-parity run")
    p.add_argument("--data-root", default=os.path.join(tempfile.gettempdir(), "kdstudy-firstrun-data"),
                   help="where MNIST-1D is generated (default: a temporary folder)")
    p.add_argument("--json", action="store_true", help="print one JSON object instead of the lines")
    args = p.parse_args(argv)

    import torch

    if not torch.cuda.is_available():
        print(f"kdstudy bench --first-run needs a CUDA GPU: torch {torch.__version__} sees none on this machine "
              f"(nothing was checked; exit {EXIT_NO_GPU})", file=sys.stderr)
        return EXIT_NO_GPU
    import ray

    from trainables.data import load_dataset

    t0 = time.perf_counter()
    root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    os.environ["PYTHONPATH"] = os.pathsep.join(x for x in (root, os.environ.get("PYTHONPATH")) if x)
    load_dataset({"name": "mnist1d", "num_samples": 4000, "root": args.data_root})  # generated once, before the clocks
    print(f"kdstudy first GPU run: {torch.cuda.get_device_name(0)}, torch {torch.__version__} "
          f"(CUDA {torch.version.cuda}), Ray {ray.__version__}", flush=True)
    checks = []
    with tempfile.TemporaryDirectory(prefix="kdfirst-") as workdir:
        steps = [("device", check_device), ("precision", check_precision),
                 ("memory cap", lambda: check_memory_cap(root)),
                 ("ray packing", lambda: check_ray_packing(args.data_root, workdir)),
                 ("step parity", check_step_parity)]
        if not args.quick:
            steps.append(("training parity", lambda: check_training_parity(args.data_root)))
        for name, fn in steps:
            try:
                check = fn()
            except Exception as exc:  # a check that crashes is a FAIL with its reason, and the others still run
                check = Check(name, False, f"{type(exc).__name__}: {str(exc).strip().splitlines()[-1][:300] if str(exc).strip() else ''}")
            checks.append(check)
            if not args.json:
                print(f"{'PASS' if check.ok else 'FAIL'}  {check.name:<16} {check.detail}", flush=True)
    failed = [c.name for c in checks if not c.ok]
    took = time.perf_counter() - t0
    if args.json:
        print(json.dumps({"device": torch.cuda.get_device_name(0), "seconds": took,
                          "checks": [vars(c) for c in checks]}))
    else:
        print(f"{len(checks) - len(failed)} of {len(checks)} checks passed in {took:.0f} s"
              + (f"; FAILED: {', '.join(failed)}" if failed else ""))
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
