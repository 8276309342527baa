"""Training throughput and model-FLOP utilisation of one teacher/student pair and method.

    kdstudy bench --teacher resnet56 --student resnet20 --method kd --batch 256 --seconds 20
    python -m trainables.bench --teacher resnet32x4 --student resnet8x4 --procs 1,4 --json
    python -m trainables.bench --method trikd --peer /path/to/naive_kd_recipe.py

What is measured is the project's real training path, without Ray: the
registered method (`trainables.methods.get_method`) with the project's models
(`trainables.models.build_model`), its data resident on the device and
batched by `trainables.data.DeviceBatches` (vectorised crop + flip there),
the loop's device plan (`trainables.device`: bf16 autocast, TF32 off,
channels_last and the fused optimizer on CUDA, the memory cap of a shared
GPU, optional `model.compile()`), the loop's context builder and its one
training step (`trainables.step.TrainStep`: sum of the method's loss terms,
backward, gradient clipping when `--grad-clip` is given, step, schedule,
`after_step`, metrics accumulated on the device and read once per epoch).
Data are random CIFAR-shaped uint8 images (100 classes): content does not
change speed.

Models: `resnet<depth>` and `resnet<depth>x<width>` (CIFAR ResNets, e.g.
resnet20, resnet56, resnet8x4, resnet32x4), `wrn-<depth>-<k>` (wrn-40-2), or
`<family>:<size>` for any registered image family, the size an integer or a
name as the family takes it (plain_cnn:4, torchvision:resnet18). A method
that needs a frozen pretrained teacher gets a *randomly initialised* frozen
teacher (same cost); an online-teacher method (DML, TriKD) trains the teacher
config from scratch. Multi-generation methods are measured in their last
generation (TriKD: with its anchor).

FLOPs/image are counted with `torch.utils.flop_counter.FlopCounterMode` over
one real training step of the method (fp32, batch of 8, on the CPU):
teacher forward (+ backward for online teachers) + anchor forward + student
forward and backward (+ a feature method's connectors, forward and backward,
and its loss), i.e. what the peer recipe counts for KD. A method that asks for
sample indices (CRD) gets them, and its memory bank has a row per synthetic
training image (`--images`), as it has per training sample in a trial. Achieved
FLOP/s = img/s x FLOPs/img; MFU = achieved / peak, the peak being a
measured bf16 8192^3 matmul on CUDA (or `--peak` TFLOP/s), n/a on the CPU.

`--procs K` runs K processes sharing the device like Ray's fractional GPUs
(each limited to 1/K of GPU memory, or to cores/K threads on the CPU); they
set up and warm up, wait at a file barrier, train for `--seconds` together,
and their img/s are summed. `--procs 1,4` measures both and reports the
scaling. `--peer PATH` also runs the peer recipe (naive_kd_recipe.py, KD for
the same pair at its own batch of 64) in the same command and reports the
ratio; that script is CUDA-only, so on a CPU it runs through a small shim
(its own code, `torch.cuda.synchronize` a no-op, 1 loader worker).

This module never imports Ray.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import re
import subprocess
import sys
import tempfile
import time

import torch

from . import data as data_mod
from . import models as models_mod
from .device import PRECISIONS, DeviceError, DevicePlan, choose_device, plan_device
from .methods import available_methods, get_method  # noqa: F401
from .step import TrainStep, build_context, build_optimizer, build_schedule

IN_SHAPE = (3, 32, 32)
NUM_CLASSES = 100
FLOP_BATCH = 8
_BENCH_TRAIN = {"optimizer": "sgd", "lr": 0.05, "momentum": 0.9, "weight_decay": 5e-4, "nesterov": True,
                "schedule": "cosine", "epochs": 10**6}


# --------------------------------------------------------------------------- names


def parse_arch(name: str) -> dict:
    """A model config from a short name: resnet56, resnet8x4, wrn-40-2, plain_cnn:4, torchvision:resnet18."""
    s = name.strip().lower()
    m = re.fullmatch(r"resnet(\d+)(?:x(\d+))?", s)
    if m:
        return {"family": "cifar_resnet", "size": int(m.group(1)), "width": int(m.group(2) or 1)}
    m = re.fullmatch(r"wrn-(\d+)-(\d+)", s)
    if m:
        return {"family": "wrn", "size": int(m.group(1)), "width": int(m.group(2))}
    m = re.fullmatch(r"([a-z_0-9]+):([A-Za-z0-9_.\-]+)", name.strip())
    if m and m.group(1) in models_mod.available_families():
        return _family_size(name, m.group(1), m.group(2))
    raise ValueError(f"unknown model name {name!r}: use resnet<depth>[x<width>] (resnet20, resnet32x4), "
                     f"wrn-<depth>-<k> (wrn-40-2) or <family>:<size> (plain_cnn:4, torchvision:resnet18) with a family of "
                     f"{models_mod.available_families()}")


def _family_size(name: str, family: str, text: str) -> dict:
    """`<family>:<size>` with the size typed as the family takes it: an integer (plain_cnn:4) or a
    name (torchvision:resnet18), checked against the family's size rule and closed list of sizes."""
    spec = models_mod.family_size_spec(family)
    size = int(text) if text.isdigit() and "integer" in spec.types else text
    error = spec.check("size", size)
    sizes = models_mod.family_sizes(family) if error is None else None
    if error is None and sizes is not None and size not in sizes:
        error = f"size {size!r} is not one of the family's sizes"
    if error is not None:
        raise ValueError(f"model name {name!r}: {error} ({family}: {models_mod.family_sizes_hint(family)})")
    return {"family": family, "size": size}


def _parse_hp(items: list[str]) -> dict:
    hp = {}
    for item in items or ():
        key, sep, value = item.partition("=")
        if not sep:
            raise ValueError(f"--hp wants key=value, got {item!r}")
        try:
            hp[key] = json.loads(value)
        except json.JSONDecodeError:
            hp[key] = value
    return hp


# --------------------------------------------------------------------------- building


def build_method(opts, plan: DevicePlan, train_labels: torch.Tensor | None = None):
    """The method with its models placed by `plan`, in the generation that is measured.
    `train_labels`: the synthetic training split's labels (its size is the split's, as the loop's
    `num_train_samples`: CRD's memory bank has a row per image)."""
    cls = get_method(opts.method)
    uses_teacher = cls.needs_teacher or cls.online_teacher
    teacher = parse_arch(opts.teacher) if uses_teacher else None
    assistant = parse_arch(opts.assistant) if opts.assistant else None
    if train_labels is None:
        train_labels = _synthetic(opts.images or FLOP_BATCH, opts.seed, labels_only=True)
    # the loop's context; random weights stand in for a frozen model's checkpoint
    ctx = build_context(parse_arch(opts.student), teacher, NUM_CLASSES, IN_SHAPE, plan, load_weights=None,
                        assistant=assistant, num_train_samples=len(train_labels), train_labels=train_labels)
    torch.manual_seed(opts.seed)
    method = cls(ctx, _parse_hp(opts.hp))
    generation = method.generations - 1 if opts.generation is None else int(opts.generation)
    for g in range(generation + 1):
        method.start_generation(g)
    method.to(plan.device)
    method.train()
    return method, generation


def count_step_flops(opts) -> dict:
    """FLOPs per image of one training step of the method, and each model's forward FLOPs.

    Counted on the CPU in fp32 without compile (FLOPs do not depend on the device).
    """
    from torch.utils.flop_counter import FlopCounterMode

    method, _ = build_method(opts, plan_device(torch.device("cpu"), {"precision": "fp32"}))
    g = torch.Generator().manual_seed(0)
    x = torch.randn(FLOP_BATCH, *IN_SHAPE, generator=g)
    y = torch.randint(0, NUM_CLASSES, (FLOP_BATCH,), generator=g)
    index = (torch.arange(FLOP_BATCH),) if method.needs_sample_index else ()
    with FlopCounterMode(display=False) as fc:
        step = method.training_step(x, y, *index)
        sum(step.terms.values()).backward()
    forward = {}
    for role in ("teacher", "assistant", "anchor", "student"):
        model = getattr(method, role, None)
        if isinstance(model, torch.nn.Module):
            forward[role] = models_mod.count_flops(model, IN_SHAPE)
    if method.connector_modules():  # trained beside the student (a FitNets regressor, CRD's heads, ...)
        forward["connectors"] = method.connector_flops()
    return {"step_flops_per_img": fc.get_total_flops() / FLOP_BATCH, "forward_flops_per_img": forward}


def _synthetic(n: int, seed: int, labels_only: bool = False):
    """n random CIFAR-shaped uint8 images and their labels (the labels alone: the same labels)."""
    g = torch.Generator().manual_seed(seed)
    y = torch.randint(0, NUM_CLASSES, (n,), generator=g)
    if labels_only:
        return y
    x = torch.randint(0, 256, (n, *IN_SHAPE), dtype=torch.uint8, generator=g)
    return x, y


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


# --------------------------------------------------------------------------- measuring


def measure(opts, barrier=None, gpu_fraction: float | None = None) -> dict:
    """Train for `opts.seconds` after a warm-up; img/s of this process."""
    runtime = {"device": opts.device, "precision": opts.precision, "compile": bool(opts.compile),
               "channels_last": "auto", "gpu_fraction": gpu_fraction}
    device = choose_device(runtime)
    plan = plan_device(device, runtime, "image")  # what `loop.run_trial` computes for this device
    device = plan.device
    plan.apply()
    channels_last = plan.channels_last
    n_images = max(opts.images, opts.batch)
    x, y = _synthetic(n_images, opts.seed)
    method, generation = build_method(opts, plan, train_labels=y)
    params = list(method.trainable_parameters())
    opt = build_optimizer(params, _BENCH_TRAIN, plan)
    x, y = data_mod.to_device((x, y), device)
    mean = torch.tensor(data_mod.CIFAR100_MEAN).view(3, 1, 1)
    std = torch.tensor(data_mod.CIFAR100_STD).view(3, 1, 1)
    gen = torch.Generator(device=device).manual_seed(opts.seed)
    batches = data_mod.DeviceBatches(x, y, opts.batch, shuffle=True, generator=gen, augment=True, mean=mean,
                                     std=std, drop_last=True, channels_last=channels_last,
                                     with_index=method.needs_sample_index)
    sched = build_schedule(opt, _BENCH_TRAIN, len(batches))
    train_step = TrainStep(method, params, opt, sched, plan, grad_clip=opts.grad_clip)  # the loop's step

    def stream():
        """Batches epoch after epoch; at each epoch's end the loop's one host read."""
        while True:
            train_step.reset()
            yield from batches
            if not math.isfinite(train_step.read()[0]):
                raise FloatingPointError("training loss became non-finite during the benchmark")

    it = stream()
    t_setup = time.perf_counter()
    for _ in range(opts.warmup):
        train_step(*next(it))
    _sync(device)
    warmup_s = time.perf_counter() - t_setup
    if barrier is not None:
        barrier()
    steps = 0
    t0 = time.perf_counter()
    while True:
        train_step(*next(it))
        steps += 1
        if time.perf_counter() - t0 >= opts.seconds:
            break
    _sync(device)
    elapsed = time.perf_counter() - t0
    if not math.isfinite(train_step.read()[0]):
        raise FloatingPointError("training loss became non-finite during the benchmark")
    result = {"img_s": steps * opts.batch / elapsed, "steps": steps, "elapsed_s": elapsed, "warmup_s": warmup_s,
              "device": str(device), "generation": generation, "channels_last": channels_last,
              "precision": plan.precision, "plan": plan.describe(),
              "threads": torch.get_num_threads(), "gpu_fraction": gpu_fraction}
    del method, opt, x, y, batches, it, train_step
    if device.type == "cuda":
        torch.cuda.empty_cache()
    return result


def matmul_peak(device: torch.device) -> float:
    """Measured bf16 matmul FLOP/s (8192^3, as the peer recipe's `--peak`)."""
    a = torch.randn(8192, 8192, device=device, dtype=torch.bfloat16)
    b = torch.randn(8192, 8192, device=device, dtype=torch.bfloat16)
    for _ in range(3):
        a @ b
    torch.cuda.synchronize(device)
    t0 = time.perf_counter()
    for _ in range(10):
        a @ b
    torch.cuda.synchronize(device)
    peak = 10 * 2 * 8192**3 / (time.perf_counter() - t0)
    del a, b
    torch.cuda.empty_cache()
    return peak


# --------------------------------------------------------------------------- several processes


def _worker_argv(opts, workdir: str, index: int, procs: int) -> list[str]:
    argv = ["--teacher", opts.teacher, "--student", opts.student, "--method", opts.method,
            "--batch", str(opts.batch), "--seconds", str(opts.seconds), "--device", opts.device,
            "--precision", opts.precision, "--images", str(opts.images), "--warmup", str(opts.warmup),
            "--seed", str(opts.seed + index), "--_worker", workdir, "--_index", str(index),
            "--_procs", str(procs)]
    if opts.compile:
        argv.append("--compile")
    if opts.assistant:
        argv += ["--assistant", opts.assistant]
    if opts.generation is not None:
        argv += ["--generation", str(opts.generation)]
    for item in opts.hp or ():
        argv += ["--hp", item]
    if opts.grad_clip is not None:
        argv += ["--grad-clip", str(opts.grad_clip)]
    return argv


def run_procs(opts, procs: int, timeout_s: float = 1800.0) -> dict:
    """K processes sharing the device, started together at a file barrier; img/s summed."""
    root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(p for p in (root, os.environ.get("PYTHONPATH")) if p)}
    with tempfile.TemporaryDirectory(prefix="kdbench-") as workdir:
        children = []
        logs = []
        for i in range(procs):
            log = open(os.path.join(workdir, f"log-{i}.txt"), "w+")
            logs.append(log)
            cmd = [sys.executable, "-m", "trainables.bench", *_worker_argv(opts, workdir, i, procs)]
            children.append(subprocess.Popen(cmd, cwd=root, env=env, stdout=log, stderr=subprocess.STDOUT))
        try:
            deadline = time.monotonic() + timeout_s
            ready = [os.path.join(workdir, f"ready-{i}") for i in range(procs)]
            while not all(os.path.exists(r) for r in ready):
                _check_children(children, logs)
                if time.monotonic() > deadline:
                    raise TimeoutError("bench workers did not become ready")
                time.sleep(0.01)
            open(os.path.join(workdir, "go"), "w").close()
            for child in children:
                child.wait(timeout=max(1.0, deadline - time.monotonic()))
            _check_children(children, logs)
            results = []
            for i in range(procs):
                with open(os.path.join(workdir, f"result-{i}.json")) as f:
                    results.append(json.load(f))
        finally:
            for child in children:
                if child.poll() is None:
                    child.kill()
                    child.wait()
            for log in logs:
                log.close()
    total = sum(r["img_s"] for r in results)
    return {**results[0], "img_s": total, "per_proc_img_s": [r["img_s"] for r in results],
            "steps": sum(r["steps"] for r in results), "elapsed_s": max(r["elapsed_s"] for r in results)}


def _check_children(children, logs) -> None:
    for i, child in enumerate(children):
        code = child.poll()
        if code not in (None, 0):
            logs[i].seek(0)
            tail = logs[i].read()[-4000:]
            raise RuntimeError(f"bench worker {i} exited with {code}:\n{tail}")


def _worker_main(opts) -> int:
    workdir, index, procs = opts._worker, opts._index, opts._procs
    gpu_fraction = 1.0 / procs
    if choose_device({"device": opts.device}).type == "cpu":
        torch.set_num_threads(max(1, (os.cpu_count() or 1) // procs))

    def barrier():
        open(os.path.join(workdir, f"ready-{index}"), "w").close()
        go = os.path.join(workdir, "go")
        while not os.path.exists(go):
            time.sleep(0.002)

    result = measure(opts, barrier=barrier, gpu_fraction=gpu_fraction if procs > 1 else None)
    result["ray_imported"] = "ray" in sys.modules  # the benchmark stays free of Ray (checked by the tests)
    tmp = os.path.join(workdir, f"result-{index}.json.tmp")
    with open(tmp, "w") as f:
        json.dump(result, f)
    os.replace(tmp, os.path.join(workdir, f"result-{index}.json"))
    return 0


# --------------------------------------------------------------------------- the peer recipe

_PEER_CPU_SHIM = r"""
import argparse, importlib.util, json, sys
import torch
spec = importlib.util.spec_from_file_location("naive_kd_recipe", sys.argv[1])
peer = importlib.util.module_from_spec(spec)
spec.loader.exec_module(peer)
torch.cuda.synchronize = lambda *a, **k: None  # the recipe synchronises CUDA; nothing to wait for on a CPU
args = argparse.Namespace(teacher=sys.argv[2], student=sys.argv[3], batch=int(sys.argv[4]),
                          workers=int(sys.argv[5]), seconds=float(sys.argv[6]))
dev = torch.device("cpu")
teacher, student = peer.make(args.teacher).to(dev).eval(), peer.make(args.student).to(dev).train()
fpi = peer.flops_per_image(teacher, student, dev)
rate = peer.run_naive(args, teacher, student, dev)
print(json.dumps({"recipe": "naive", "teacher": args.teacher, "student": args.student,
                  "batch": args.batch, "img_s": rate, "flops_per_img": fpi}))
"""


def run_peer(opts, device: torch.device) -> dict:
    """Run the peer recipe for the same pair (KD, its own batch); its JSON line, or a reason it could not run."""
    path = os.path.abspath(os.path.expanduser(opts.peer))
    if not os.path.exists(path):
        return {"error": f"peer recipe not found: {path}"}
    if device.type == "cuda":
        cmd = [sys.executable, path, "--teacher", opts.teacher, "--student", opts.student,
               "--batch", str(opts.peer_batch), "--seconds", str(opts.peer_seconds or opts.seconds)]
        if opts.peer_workers:
            cmd += ["--workers", str(opts.peer_workers)]
        shim = False
    else:
        workers = opts.peer_workers or 1
        cmd = [sys.executable, "-c", _PEER_CPU_SHIM, path, opts.teacher, opts.student, str(opts.peer_batch),
               str(workers), str(opts.peer_seconds or opts.seconds)]
        shim = True
    proc = subprocess.run(cmd, capture_output=True, text=True)
    lines = [ln for ln in proc.stdout.splitlines() if ln.strip().startswith("{")]
    if proc.returncode != 0 or not lines:
        return {"error": f"peer recipe failed (exit {proc.returncode}): {(proc.stderr or proc.stdout)[-600:]}"}
    out = json.loads(lines[-1])
    out["cpu_shim"] = shim
    return out


# --------------------------------------------------------------------------- report


def _fmt(v, spec):
    return "n/a" if v is None else format(v, spec)


def format_table(rows: list[dict]) -> str:
    cols = [("recipe", "recipe", "s"), ("pair", "pair", "s"), ("method", "method", "s"), ("batch", "batch", "d"),
            ("procs", "procs", "d"), ("img/s", "img_s", ",.1f"), ("GFLOP/img", "gflop_per_img", ".4f"),
            ("TFLOP/s", "achieved_tflops", ".3f"), ("MFU", "mfu", ".1%"), ("x procs[0]", "scaling", ".2f"),
            ("x peer", "ratio_vs_peer", ".2f")]
    body = [[_fmt(r.get(key), spec) if spec != "s" else str(r.get(key, "")) for _, key, spec in cols]
            for r in rows]
    widths = [max(len(h), *(len(b[i]) for b in body)) for i, (h, _, _) in enumerate(cols)]
    lines = ["  ".join(h.rjust(w) for (h, _, _), w in zip(cols, widths)),
             "  ".join("-" * w for w in widths)]
    lines += ["  ".join(c.rjust(w) for c, w in zip(b, widths)) for b in body]
    return "\n".join(lines)


def _row(recipe, pair, method, batch, procs, img_s, flops_per_img, peak):
    achieved = img_s * flops_per_img if img_s is not None and flops_per_img is not None else None
    return {"recipe": recipe, "pair": pair, "method": method, "batch": batch, "procs": procs, "img_s": img_s,
            "gflop_per_img": None if flops_per_img is None else flops_per_img / 1e9,
            "achieved_tflops": None if achieved is None else achieved / 1e12,
            "mfu": None if achieved is None or not peak else achieved / peak}


# --------------------------------------------------------------------------- command line


def _procs_list(text: str) -> list[int]:
    try:
        procs = [int(p) for p in str(text).split(",") if p.strip()]
    except ValueError:
        raise argparse.ArgumentTypeError(f"--procs wants integers such as 4 or 1,4; got {text!r}") from None
    if not procs or any(p < 1 for p in procs):
        raise argparse.ArgumentTypeError(f"--procs wants positive integers; got {text!r}")
    return procs


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="kdstudy bench", description=__doc__.split("\n\n")[0],
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--teacher", default="resnet56", help="teacher model name (default resnet56)")
    p.add_argument("--student", default="resnet20", help="student model name (default resnet20)")
    p.add_argument("--assistant", default=None, help="assistant model name (takd)")
    p.add_argument("--method", default="kd", help="registered method (kd, rkd, trikd, dml, ...)")
    p.add_argument("--hp", action="append", default=[], metavar="KEY=VALUE", help="a method hyperparameter")
    p.add_argument("--generation", type=int, default=None,
                   help="generation to measure (default: the method's last, e.g. TriKD with its anchor)")
    p.add_argument("--batch", type=int, default=256, help="per-process batch size (default 256)")
    p.add_argument("--seconds", type=float, default=15.0, help="timed seconds after warm-up (default 15)")
    p.add_argument("--warmup", type=int, default=None,
                   help="untimed warm-up steps (default 20 on CUDA, 50 with --compile, 3 on CPU)")
    p.add_argument("--images", type=int, default=None,
                   help="synthetic training images kept on the device (default 50000; 4096 on CPU)")
    p.add_argument("--compile", action="store_true", help="model.compile() every model, as runtime.compile")
    p.add_argument("--procs", type=_procs_list, default=[1], help="K processes sharing the device; a list "
                   "such as 1,4 measures each (default 1)")
    p.add_argument("--device", default="auto", help="auto | cpu | cuda (default auto)")
    p.add_argument("--precision", default="auto", choices=PRECISIONS,
                   help="as runtime.precision (auto: bf16 autocast on CUDA, fp32 on CPU; tf32: TF32 matmuls on CUDA)")
    p.add_argument("--grad-clip", type=float, default=None, metavar="NORM",
                   help="clip the gradient norm, as train.grad_clip (default: off, as in the specs)")
    p.add_argument("--threads", type=int, default=None,
                   help="CPU threads of a single process (default torch's; --procs K workers get cores/K)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--peak", type=float, default=None, metavar="TFLOPS",
                   help="peak FLOP/s for MFU in TFLOP/s (default: measured bf16 matmul on CUDA, n/a on CPU; "
                        "0 disables)")
    p.add_argument("--peer", default=None, metavar="PATH", help="also run this peer recipe (naive_kd_recipe.py)")
    p.add_argument("--peer-batch", type=int, default=64, help="peer recipe's batch (default 64, its own)")
    p.add_argument("--peer-seconds", type=float, default=None, help="peer's timed seconds (default --seconds)")
    p.add_argument("--peer-workers", type=int, default=None,
                   help="peer's DataLoader workers (default: its own 8 on CUDA; 1 on CPU)")
    p.add_argument("--json", action="store_true", help="print one JSON object instead of the table")
    p.add_argument("--first-run", action="store_true",
                   help="on a GPU machine: check the GPU path for real, PASS/FAIL per item (kdstudy bench "
                        "--first-run runs study.firstrun; exit 0 pass, 1 fail, 3 no GPU)")
    p.add_argument("--_worker", default=None, help=argparse.SUPPRESS)
    p.add_argument("--_index", type=int, default=0, help=argparse.SUPPRESS)
    p.add_argument("--_procs", type=int, default=1, help=argparse.SUPPRESS)
    return p


def _defaults(opts, device: torch.device) -> None:
    if opts.warmup is None:
        opts.warmup = (50 if opts.compile else 20) if device.type == "cuda" else 3
    if opts.images is None:
        opts.images = 50000 if device.type == "cuda" else 4096


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    opts = parser.parse_args(list(sys.argv[1:] if argv is None else argv))
    if opts.first_run:  # it starts Ray, which this module never imports
        parser.error("run the first-run check as `kdstudy bench --first-run` (or python -m study.firstrun)")
    try:
        for name in (opts.teacher, opts.student) + ((opts.assistant,) if opts.assistant else ()):
            parse_arch(name)
        get_method(opts.method)
        _parse_hp(opts.hp)
    except (ValueError, KeyError) as e:
        parser.error(str(e.args[0] if e.args else e))
    if opts.batch < 1 or opts.seconds <= 0:
        parser.error("--batch must be positive and --seconds above 0")
    try:
        device = choose_device({"device": opts.device})
    except DeviceError as e:
        parser.error(str(e))
    _defaults(opts, device)
    if opts._worker:
        return _worker_main(opts)
    if opts.threads:
        torch.set_num_threads(opts.threads)

    cls = get_method(opts.method)
    uses_teacher = cls.needs_teacher or cls.online_teacher
    pair = f"{opts.teacher}->{opts.student}" if uses_teacher else opts.student
    flops = count_step_flops(opts)
    fpi = flops["step_flops_per_img"]
    if opts.peak is not None:
        peak = opts.peak * 1e12 if opts.peak > 0 else None
    else:
        peak = matmul_peak(device) if device.type == "cuda" else None

    rows, runs = [], []
    for procs in opts.procs:
        run = measure(opts) if procs == 1 else run_procs(opts, procs)
        runs.append({"procs": procs, **run})
        row = _row("kdstudy", pair, opts.method, opts.batch, procs, run["img_s"], fpi, peak)
        row["scaling"] = run["img_s"] / runs[0]["img_s"] if len(opts.procs) > 1 else None
        rows.append(row)

    peer = None
    if opts.peer:
        peer = run_peer(opts, device)
        if "error" not in peer:
            label = "peer-naive" + (" (cpu shim)" if peer.get("cpu_shim") else "")
            peer_row = _row(label, f"{opts.teacher}->{opts.student}", "kd", peer["batch"], 1, peer["img_s"],
                            peer["flops_per_img"], peak)
            peer_row["ratio_vs_peer"] = 1.0
            for row in rows:
                row["ratio_vs_peer"] = row["img_s"] / peer["img_s"]
            rows.append(peer_row)

    report = {"device": str(device), "device_name": _device_name(device), "cpu_threads": torch.get_num_threads(),
              "torch": torch.__version__, "teacher": opts.teacher if uses_teacher else None,
              "student": opts.student, "method": opts.method, "batch": opts.batch, "seconds": opts.seconds,
              "compile": bool(opts.compile), "peak_tflops": None if peak is None else peak / 1e12,
              "flops_per_img": fpi, "forward_flops_per_img": flops["forward_flops_per_img"],
              "rows": rows, "runs": runs, "peer": peer}
    if opts.json:
        print(json.dumps(report, default=str))
    else:
        print(f"device: {report['device_name']} | torch {torch.__version__} | compile={bool(opts.compile)} | "
              f"precision={runs[0].get('precision')} | peak bf16: "
              f"{'n/a' if peak is None else f'{peak / 1e12:.1f} TFLOP/s'}")
        print(format_table(rows))
        if peer is not None and "error" in peer:
            print(f"peer: n/a ({peer['error']})")
    return 0


def _device_name(device: torch.device) -> str:
    if device.type == "cuda":
        return torch.cuda.get_device_name(device)
    return f"cpu ({os.cpu_count()} cores, {torch.get_num_threads()} threads)"


if __name__ == "__main__":
    sys.exit(main())
