"""Where a trial computes, and how: the device Ray gave it, and what runs there.

Two steps, both used by the loop (`trainables.loop.run_trial`) and the
benchmark (`trainables.bench`):

1. `choose_device(runtime, gpu_ids)` -- the device. Inside Ray the trainable
   passes `ray.get_gpu_ids()` of the trial's process (`gpu_ids`); outside Ray
   (`LocalHooks`, the benchmark, tests) it is None.

   ==================  =================================  ===============================
   runtime.device      inside Ray (gpu_ids given)          outside Ray (gpu_ids None)
   ==================  =================================  ===============================
   auto (default)      the GPU Ray gave this trial; the    cuda:0 if CUDA is available,
                       CPU when it gave none               else the CPU
   cpu                 the CPU                             the CPU
   cuda                the GPU Ray gave; an error when     cuda:0 (or cuda:N); an error
                       it gave none (`resources.gpu: 0`)   when CUDA is not available
   ==================  =================================  ===============================

   A trial asking for no GPU therefore never touches one, even where its
   process inherited `CUDA_VISIBLE_DEVICES` (Ray 2.60 leaves it set for
   `num_gpus=0` workers on purpose). A GPU that Ray gave but torch cannot use
   (a node declared with GPUs, a CPU-only torch) leaves `auto` on the CPU and
   makes `cuda` an error. A trial trains on one GPU: more than one is refused.

2. `plan_device(device, runtime, data_kind)` -- a `DevicePlan`, plain data:
   the memory cap, the matmul precision, autocast, layout, compile and
   optimiser choices for that device. `DevicePlan.apply()` sets torch's
   process-wide flags from it; the loop then reads every other choice from
   the plan, so a test can build the plan of a CUDA device, run it on the CPU
   and see every CUDA-only branch taken (tests/test_gpu_fake.py).

Precision (`runtime.precision`):

  auto  CUDA: bf16 autocast for the models, float32 (IEEE, TF32 off) for what
        runs outside autocast (losses, relation maths); CPU: float32
  fp32  float32 everywhere, TF32 off: true float32 matmuls and convolutions
  tf32  float32 tensors, TF32 tensor-core matmuls and convolutions on CUDA
        (about 10 mantissa bits; on the CPU the same as fp32)
  bf16  bf16 autocast on any device (CPU too), float32 (IEEE) outside it
"""

from __future__ import annotations

import os
from contextlib import nullcontext
from dataclasses import dataclass, field

import torch

DEVICES = ("auto", "cpu", "cuda")
PRECISIONS = ("auto", "fp32", "tf32", "bf16")
#: the dynamo cache entries one compiled model may need in a trial (train and eval modes,
#: a static and a dynamic batch size each): torch's default limit is this for *all* models
#: sharing a forward function's code
RECOMPILES_PER_MODEL = 8


class DeviceError(RuntimeError):
    """The trial cannot run on the device its runtime asks for."""


# --------------------------------------------------------------------------- the device


def cuda_available() -> bool:
    """Whether this process can use CUDA (the one question the device choice asks torch;
    tests fake a GPU machine by answering it)."""
    return torch.cuda.is_available()


def choose_device(runtime: dict, gpu_ids: list | tuple | None = None) -> torch.device:
    """The trial's device (see the module docstring); always an indexed `cuda:N` for a GPU."""
    want = str(runtime.get("device", "auto"))
    if want == "cpu":
        return torch.device("cpu")
    if want not in ("auto", "cuda") and not want.startswith("cuda:"):
        raise DeviceError(f"runtime.device must be one of {', '.join(DEVICES)}; got {want!r}")
    if gpu_ids is not None:  # inside Ray: exactly what Ray gave this trial
        ids = [str(g) for g in gpu_ids]
        if len(ids) > 1:
            raise DeviceError(f"Ray gave this trial {len(ids)} GPUs ({', '.join(ids)}), but a trial trains on "
                              "one GPU: resources.gpu must be at most 1")
        if not ids:
            if want == "auto":
                return torch.device("cpu")
            raise DeviceError("runtime.device is cuda, but Ray gave this trial no GPU (resources.gpu is 0): "
                              "set resources.gpu (e.g. 0.25) or runtime.device: auto")
        if not cuda_available():
            if want == "auto":  # a node declared with GPUs that torch cannot use: still runs, on the CPU
                return torch.device("cpu")
            raise DeviceError(f"runtime.device is cuda and Ray gave this trial GPU {ids[0]}, but torch "
                              f"{torch.__version__} cannot use CUDA in this process")
        return torch.device("cuda", ray_gpu_index(ids[0]))
    if want == "auto":
        return torch.device("cuda", 0) if cuda_available() else torch.device("cpu")
    if not cuda_available():
        raise DeviceError(f"runtime.device is {want}, but CUDA is not available in this process "
                          "(use device: auto to run on what is there)")
    device = torch.device(want)
    return device if device.index is not None else torch.device("cuda", 0)


def ray_gpu_index(gpu_id: str) -> int:
    """torch's index of the GPU Ray calls `gpu_id`.

    Ray sets `CUDA_VISIBLE_DEVICES` of a GPU trial to the ids it gave, so the
    GPU is the position of its id in that list (0 for one GPU). With
    `RAY_EXPERIMENTAL_NOSET_CUDA_VISIBLE_DEVICES` Ray leaves the variable
    alone and the id is a physical index.
    """
    visible = [v.strip() for v in os.environ.get("CUDA_VISIBLE_DEVICES", "").split(",") if v.strip()]
    if gpu_id in visible:
        return visible.index(gpu_id)
    try:
        return int(gpu_id)
    except ValueError:  # a UUID Ray passed through: the one visible device
        return 0


# --------------------------------------------------------------------------- the plan


@dataclass(frozen=True)
class DevicePlan:
    """What a trial does on its device: plain data, computed by `plan_device`.

    device            where tensors and models live
    memory_fraction   (fraction, indexed CUDA device) for `torch.cuda.set_per_process_memory_fraction`,
                      or None (no cap: a whole GPU, or the CPU)
    tf32              TF32 for float32 matmuls and convolutions on CUDA (True / False), or None
                      (not a CUDA plan: torch's flags are left alone)
    cudnn_benchmark   let cuDNN pick the fastest convolution algorithms
    autocast_dtype    dtype of autocast around the models' forward passes, or None (float32)
    channels_last     image batches and models in channels_last memory format
    compile           `model.compile()` every model, with `compile_backend`
    fused_optimizer   the optimiser's fused kernels
    """

    device: torch.device
    memory_fraction: tuple[float, torch.device] | None = None
    tf32: bool | None = None
    cudnn_benchmark: bool = False
    autocast_dtype: torch.dtype | None = None
    channels_last: bool = False
    compile: bool = False
    compile_backend: str = "inductor"
    fused_optimizer: bool = False
    _compiled: list = field(default_factory=list, init=False, compare=False, repr=False)

    @property
    def precision(self) -> str:
        """What the models compute in: bf16 | tf32 | fp32."""
        if self.autocast_dtype is torch.bfloat16:
            return "bf16"
        return "tf32" if self.tf32 else "fp32"

    def describe(self) -> dict:
        """The plan as JSON-able facts (the first-run check and the benchmark print them)."""
        return {"device": str(self.device), "precision": self.precision,
                "memory_fraction": None if self.memory_fraction is None else self.memory_fraction[0],
                "tf32": self.tf32, "cudnn_benchmark": self.cudnn_benchmark, "channels_last": self.channels_last,
                "compile": self.compile and self.compile_backend, "fused_optimizer": self.fused_optimizer}

    # -- process-wide flags ---------------------------------------------------------
    def apply(self) -> None:
        """Set torch's process-wide flags for this plan (every trial sets all of them: an actor
        reused for another trial must not keep the last one's)."""
        if self.memory_fraction is not None:
            fraction, device = self.memory_fraction
            torch.cuda.set_per_process_memory_fraction(fraction, device)
        if self.tf32 is not None:
            set_tf32(self.tf32)
            torch.backends.cudnn.benchmark = self.cudnn_benchmark
        if self.compile:
            start_compiling()

    # -- what the loop asks ---------------------------------------------------------
    def autocast(self):
        """The context the models' forward passes run in."""
        if self.autocast_dtype is None:
            return nullcontext()
        return torch.autocast(self.device.type, dtype=self.autocast_dtype)

    def place(self, model: torch.nn.Module) -> torch.nn.Module:
        """Move a model to the device and layout, compiled if the plan says so."""
        model = model.to(self.device)
        if self.channels_last:
            model = model.to(memory_format=torch.channels_last)
        if self.compile:
            model.compile(backend=self.compile_backend)
            self._compiled.append(type(model).__name__)
            allow_recompiles(len(self._compiled))
        return model

    def optimizer_options(self) -> dict:
        return {"fused": True} if self.fused_optimizer else {}


def plan_device(device: torch.device, runtime: dict, data_kind: str = "image") -> DevicePlan:
    """The plan for `device` and the trial's runtime settings (see the module docstring).

    runtime keys: precision, channels_last (auto | true | false), compile,
    compile_backend (default "inductor"; tests use "eager"), gpu_fraction
    (Ray's GPU share of the trial: below 1 caps the process's GPU memory).
    `data_kind` is the dataset's kind ("image" or "signal"): channels_last applies to images.
    """
    precision = str(runtime.get("precision", "auto"))
    if precision not in PRECISIONS:
        raise DeviceError(f"runtime.precision must be one of {', '.join(PRECISIONS)}; got {precision!r}")
    cuda = device.type == "cuda"
    bf16 = precision == "bf16" or (precision == "auto" and cuda)
    want_cl = runtime.get("channels_last", "auto")
    channels_last = (cuda and data_kind == "image") if want_cl == "auto" else bool(want_cl) and data_kind == "image"
    fraction = runtime.get("gpu_fraction")
    cap = None
    if cuda and fraction is not None and 0 < float(fraction) < 1:
        cap = (float(fraction), device if device.index is not None else torch.device("cuda", 0))
    return DevicePlan(
        device=device, memory_fraction=cap,
        tf32=(precision == "tf32") if cuda else None,
        cudnn_benchmark=cuda,
        autocast_dtype=torch.bfloat16 if bf16 else None,
        channels_last=channels_last,
        compile=bool(runtime.get("compile", False)),
        compile_backend=str(runtime.get("compile_backend", "inductor")),
        fused_optimizer=cuda,
    )


# --------------------------------------------------------------------------- torch's global switches


def set_tf32(enabled: bool) -> None:
    """TF32 on or off for float32 matmuls (cuBLAS) and convolutions (cuDNN).

    torch >= 2.9 has one API (`fp32_precision`, "tf32" or "ieee") and refuses
    to mix it with the legacy `allow_tf32` flags; older torch has only the flags.
    """
    value = "tf32" if enabled else "ieee"
    conv = getattr(torch.backends.cudnn, "conv", None)
    if conv is not None and hasattr(torch.backends.cuda.matmul, "fp32_precision"):
        torch.backends.cuda.matmul.fp32_precision = value
        conv.fp32_precision = value
    else:  # pragma: no cover - torch < 2.9
        torch.backends.cuda.matmul.allow_tf32 = enabled
        torch.backends.cudnn.allow_tf32 = enabled


def tf32_state() -> dict:
    """The TF32 switches as torch reports them: {"matmul": "tf32"|"ieee", "conv": ...}."""
    conv = getattr(torch.backends.cudnn, "conv", None)
    if conv is not None and hasattr(torch.backends.cuda.matmul, "fp32_precision"):
        return {"matmul": torch.backends.cuda.matmul.fp32_precision, "conv": conv.fp32_precision}
    return {"matmul": "tf32" if torch.backends.cuda.matmul.allow_tf32 else "ieee",  # pragma: no cover
            "conv": "tf32" if torch.backends.cudnn.allow_tf32 else "ieee"}


class CompileLimitHit(RuntimeError):
    """torch stopped compiling a model of this trial (its recompile limit): said, never silent."""


def start_compiling() -> None:
    """A trial that compiles starts from an empty compile cache.

    Every model's `forward` of one family class (all single-exit families share
    `SingleExit.forward`) is one code object to torch, which keeps at most
    `recompile_limit` compiled versions of it (8) and then runs it *uncompiled*
    without an error. In an actor reused for trial after trial of different
    architectures the versions pile up: the fourth architecture ran
    uncompiled. So each trial resets the cache, sizes the limit to its own
    models (`allow_recompiles`), and makes hitting it an error
    (`CompileLimitHit` from the loop) rather than a silent slowdown.
    """
    import torch._dynamo

    torch._dynamo.reset()
    torch._dynamo.config.recompile_limit = RECOMPILES_PER_MODEL
    torch._dynamo.config.fail_on_recompile_limit_hit = True


def allow_recompiles(models: int) -> None:
    """Room in the compile cache for `models` compiled models of this trial."""
    import torch._dynamo

    torch._dynamo.config.recompile_limit = max(RECOMPILES_PER_MODEL, RECOMPILES_PER_MODEL * int(models))
    torch._dynamo.config.accumulated_recompile_limit = max(256, 4 * torch._dynamo.config.recompile_limit)


def is_compile_limit_error(exc: BaseException) -> bool:
    """Whether `exc` is torch refusing to recompile past its limit (fail_on_recompile_limit_hit)."""
    name = type(exc).__name__
    return name in ("FailOnRecompileLimitHit", "RecompileLimitExceeded") or "recompile_limit" in str(exc)
