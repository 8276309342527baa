"""Measuring models: parameters, forward FLOPs, per-exit FLOPs, and shape-only (meta) builds.

``count_params``, ``count_flops`` and ``exit_flops`` measure models for the
results rows; FLOPs come from ``torch.utils.flop_counter.FlopCounterMode``
(matmuls, convolutions and attention; one multiply-add counts as 2 FLOPs).
PyTorch's fused multi-head-attention fast path (taken in eval mode without
gradients) and its fused attention kernels are switched off while counting, so
a ViT's attention is counted like any other matmul (torchvision's published GFLOPs of vit_b_16, swin_t, resnet18,
mobilenet_v2 are reproduced to the digit: tests/test_models.py).

``build_meta`` builds a model on the meta device (shapes, no memory, no
arithmetic, no random numbers drawn): what the spec's checks and the planner
need to count parameters and FLOPs of any size. ``meta_forward`` runs a built
model on a meta batch without touching its weights, buffers or compiled code
(feature-tap shapes, input checks).
"""

from __future__ import annotations

import contextlib
import itertools
import sys
import threading
from typing import Any, Callable, Iterator

import torch
from torch import nn
from torch.utils.flop_counter import FlopCounterMode

__all__ = ["build_meta", "count_flops", "count_params", "exit_flops", "meta_forward", "params_on_meta"]


def count_params(model: nn.Module) -> int:
    """Number of parameters, trainable and frozen (buffers such as BN statistics excluded)."""
    return sum(p.numel() for p in model.parameters())


@contextlib.contextmanager
def _eval_mode(model: nn.Module) -> Iterator[None]:
    """Every module in eval mode for the duration; each module's own flag restored after."""
    flags = [(m, m.training) for m in model.modules()]
    model.eval()
    try:
        yield
    finally:
        for m, flag in flags:
            m.training = flag


@contextlib.contextmanager
def _countable_attention() -> Iterator[None]:
    """Attention as matmuls the FLOP counter sees: no fused multi-head-attention fast path (eval mode
    without gradients) and scaled-dot-product attention by its math kernel (the fused CPU kernels are
    not in the counter's table)."""
    from torch.nn.attention import SDPBackend, sdpa_kernel

    mha = torch.backends.mha
    was = mha.get_fastpath_enabled()
    mha.set_fastpath_enabled(False)
    try:
        with sdpa_kernel([SDPBackend.MATH]):
            yield
    finally:
        mha.set_fastpath_enabled(was)


def _flops_per_sample(model: nn.Module, in_shape: tuple[int, ...], fn: Callable) -> float:
    """FLOPs of ``fn(x)`` for a batch of 2 (eval mode, no grad) divided by 2."""
    p = next(model.parameters(), None)
    device = p.device if p is not None else torch.device("cpu")
    dtype = p.dtype if p is not None and p.is_floating_point() else torch.float32
    x = torch.zeros((2, *in_shape), device=device, dtype=dtype)
    with _eval_mode(model), _countable_attention(), torch.no_grad(), FlopCounterMode(display=False) as counter:
        fn(x)
    return counter.get_total_flops() / 2.0


def count_flops(model: nn.Module, in_shape: tuple[int, ...]) -> float:
    """Forward FLOPs for one sample (a multi-exit model's full forward, all exits)."""
    return _flops_per_sample(model, tuple(in_shape), model)


def exit_flops(model: nn.Module, in_shape: tuple[int, ...]) -> list[float]:
    """Cumulative forward FLOPs per sample to reach each exit of a multi-exit model.

    Entry k is the cost of anytime inference stopped at exit k: the backbone
    up to exit k plus the heads of exits 0..k (earlier exits are evaluated on
    the way), so the last entry equals `count_flops` of the full model.
    """
    if not getattr(model, "multi_exit", False):
        raise ValueError("exit_flops needs a multi-exit model (built with multi_exit: True)")
    return [
        _flops_per_sample(model, tuple(in_shape), lambda x, k=k: model.forward_exits(x, k))
        for k in range(model.num_exits)
    ]


# --------------------------------------------------------------------------- meta builds

_PATCH_LOCK = threading.Lock()


@contextlib.contextmanager
def params_on_meta() -> Iterator[None]:
    """Build modules whose parameters and buffers land on the meta device as they are registered,
    while the constructor's own arithmetic runs on the CPU.

    For constructors that compute with tensors (torchvision's RegNet derives its widths with
    ``torch.arange(...).tolist()``, which has no meta kernel) and so cannot be built under
    ``torch.device("meta")``. Scoped: ``nn.Module.register_parameter``/``register_buffer`` are
    restored when the block ends (a lock keeps other threads out meanwhile).
    """
    with _PATCH_LOCK:
        reg_param, reg_buffer = nn.Module.register_parameter, nn.Module.register_buffer

        def register_parameter(self, name, param):
            if param is not None and param.device.type != "meta":
                param = nn.Parameter(param.detach().to("meta"), requires_grad=param.requires_grad)
            reg_param(self, name, param)

        def register_buffer(self, name, tensor, persistent=True):
            if tensor is not None and tensor.device.type != "meta":
                tensor = tensor.to("meta")
            reg_buffer(self, name, tensor, persistent)

        nn.Module.register_parameter, nn.Module.register_buffer = register_parameter, register_buffer
        try:
            with torch.device("cpu"):
                yield
        finally:
            nn.Module.register_parameter, nn.Module.register_buffer = reg_param, reg_buffer


def build_meta(cfg: dict, in_shape: tuple[int, ...], num_classes: int) -> nn.Module:
    """A model of ``cfg`` on the meta device: counts and shapes without memory or arithmetic.

    Draws no random numbers (the global RNG is left as it was). Raises what `build_model`
    raises for a bad config.
    """
    from .registry import build_model

    with torch.random.fork_rng(devices=[]):
        try:
            with torch.device("meta"):
                return build_model(cfg, in_shape, num_classes)
        except NotImplementedError:  # a constructor that computes with tensors: build its params on meta
            with params_on_meta():
                return build_model(cfg, in_shape, num_classes)


def meta_state(model: nn.Module) -> dict[str, torch.Tensor]:
    """Meta stand-ins for every parameter and buffer of a model (same shapes, dtypes, strides)."""
    named = itertools.chain(model.named_parameters(remove_duplicate=False),
                            model.named_buffers(remove_duplicate=False))
    return {k: torch.empty_like(v, device="meta") for k, v in named}


def meta_forward(model: nn.Module, x_shape: tuple[int, ...], fn: Callable[[nn.Module, torch.Tensor], Any] | None = None,
                 dtype: torch.dtype = torch.float32) -> Any:
    """Run ``fn(model, x)`` (default: ``model(x)``) on a meta batch of shape ``x_shape``, in eval
    mode, without gradients and without compiled code, with the model's weights and buffers
    replaced by meta stand-ins: its real state is neither read nor changed, whatever its device.
    Hooks on the model fire as in a real forward."""
    fn = fn or (lambda m, x: m(x))
    x = torch.zeros(x_shape, device="meta", dtype=dtype)
    # no compiled code can exist before torch._dynamo is imported; importing it costs seconds
    compiled = "torch._dynamo" in sys.modules and hasattr(torch.compiler, "set_stance")
    stance = torch.compiler.set_stance("force_eager") if compiled else contextlib.nullcontext()
    with stance, _eval_mode(model), torch.no_grad():
        on_meta = all(t.device.type == "meta" for t in itertools.chain(model.parameters(), model.buffers()))
        if on_meta:
            return fn(model, x)
        runner = _Runner(model, fn)
        state = {f"model.{k}": v for k, v in meta_state(model).items()}
        return torch.func.functional_call(runner, state, (x,), strict=False)


class _Runner(nn.Module):
    """Calls ``fn(model, x)``: lets `torch.func.functional_call` swap the model's state for any call."""

    def __init__(self, model: nn.Module, fn: Callable):
        super().__init__()
        self.model = model
        self.fn = fn

    def forward(self, x):
        return self.fn(self.model, x)
