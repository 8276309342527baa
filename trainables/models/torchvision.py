"""`torchvision`: any torchvision classification model by name, as student or teacher.

``{family: torchvision, size: resnet18}``; the size is one of torchvision's
classification models (``torchvision.models.list_models(module=torchvision.models)``:
resnet*, resnext*, wide_resnet*, mobilenet_v2/v3, efficientnet_*, regnet_*, densenet*,
convnext_*, vgg*, vit_*, swin_*, maxvit_t, shufflenet_*, squeezenet*, mnasnet*,
googlenet, inception_v3, alexnet), built with
``torchvision.models.get_model(name, weights=None, num_classes=...)``: randomly
initialised by torchvision's own initialisation (seeded by the trial like every
model). **Weights are never downloaded**; a trained torchvision state dict loads
into the model unchanged (the model is torchvision's own module, not wrapped:
its state-dict keys are torchvision's), which is the way in for imported
teachers (`Family.adapt_state_dict` is their hook).

Options:

* the model's **constructor options**, passed through: those torchvision's builder
  leaves free for that model, with its defaults (``dropout``, ``width_mult``,
  ``stochastic_depth_prob``, ``zero_init_residual``, ...; `constructor_options(name)`
  lists them), and ``image_size`` (ViT) / ``input_size`` (MaxViT), the size knobs of
  models built for one input size. Options the builder fixes (a ResNeXt's groups, an
  EfficientNet's dropout) are not options. An unknown option or model name is an
  error listing the close names.
* ``channels``: what a dataset with other than 3 channels gets. ``repeat`` (default):
  a 1-channel (grayscale) image is repeated to 3 channels (a view: no copy, no
  parameters, the architecture stays torchvision's); ``adapt``: the first
  convolution is rebuilt for the dataset's channel count (freshly initialised with
  PyTorch's default; a pretrained state dict no longer fits that layer). Any other
  channel count with ``repeat`` is an error naming ``adapt``.

Small inputs: every model is checked, when built, by a forward on a meta batch of
the dataset's shape (no arithmetic); a model that cannot take it is refused with
one line saying why. At 32x32 (CIFAR) resnet*, resnext*, wide_resnet*, mobilenet_*,
efficientnet_*, regnet_*, densenet*, convnext_*, vgg*, swin_*, shufflenet_*,
squeezenet*, mnasnet* and googlenet build, train and are tapped (all 72 of them up to
150M parameters checked on the CPU, the larger on the meta device); vit_b_16, vit_b_32,
vit_l_16, vit_l_32 need ``image_size: 32`` (their patch size must divide it; vit_h_14's
patch 14 does not divide 32); alexnet, inception_v3 and maxvit_t cannot take 32x32
inputs (their downsampling leaves nothing: use larger images). squeezenet classifies
with a convolution, so it has no ``penultimate`` embedding (tap a module instead).
``aux_logits`` (googlenet, inception_v3) is off: the auxiliary heads' extra outputs
are not logits the loop can use.

Sizes are ordered by parameter count (`size_order`), so a ladder of names
(resnet18, resnet34, resnet50, resnet101) has a numeric ``teacher_size`` in the
results. Architecture names read ``tv-<name>`` (``tv-resnet18``), with the options
given, so they never collide with the CIFAR ResNets' ``resnet<depth>``.

Feature taps: ``penultimate`` is the input of the last linear layer (before its
dropout); ``stage:<i>``/``stages`` are the model's stage modules (`_NAMED_STAGES`,
or for sequential trunks the last block at each resolution, found by a meta
forward at the model's native 224x224: input-size independent). Swin's stages are
computed channels-last and delivered (B, C, H, W). No pre-activation taps (the
ResNets add and activate in place).
"""

from __future__ import annotations

import collections.abc
import functools
import inspect
import json
import threading
import types
import typing
import warnings
from typing import Any

import torch
from torch import nn

from ..options import REQUIRED, Option
from .common import TapPoint, need_image
from .measure import count_params, meta_forward, params_on_meta
from .registry import close_names, register_family

#: constructor arguments of models built for one input size; the builders take them as options
SIZE_KNOBS = ("image_size", "input_size")
#: constructor arguments that are never options: kdstudy sets them
_NOT_OPTIONS = {"num_classes", "weights", "progress"}
_POOLS = (nn.MaxPool2d, nn.AvgPool2d, nn.AdaptiveAvgPool2d, nn.AdaptiveMaxPool2d)


def _tvm():
    """torchvision.models, imported on first use (importing torchvision takes seconds; a process
    that builds no torchvision model never pays for it)."""
    import torchvision.models

    return torchvision.models


@functools.lru_cache(maxsize=1)
def model_names() -> list[str]:
    """torchvision's classification models (its top-level registry; detection, segmentation,
    video and quantized models live in sub-modules and are not listed)."""
    return sorted(_tvm().list_models(module=_tvm()))


def _check_name(name: Any) -> str | None:
    if isinstance(name, str) and name in model_names():
        return None
    close = close_names(name, model_names()) if isinstance(name, str) else []
    hint = f"did you mean {', '.join(close)}? " if close else ""
    return (f"unknown torchvision model {name!r}; {hint}{len(model_names())} classification models, "
            f"e.g. resnet18, resnet50, mobilenet_v2, efficientnet_b0, vit_b_16, swin_t, convnext_tiny")


# --------------------------------------------------------------------------- constructor options

_CAPTURE_LOCK = threading.Lock()


def _construct_meta(name: str, kwargs: dict, num_classes: int = 1000) -> nn.Module:
    with torch.random.fork_rng(devices=[]), warnings.catch_warnings():
        warnings.simplefilter("ignore", FutureWarning)  # googlenet's note on its default initialisation
        try:
            with torch.device("meta"):
                return _tvm().get_model(name, weights=None, num_classes=num_classes, **kwargs)
        except NotImplementedError:
            with params_on_meta():
                return _tvm().get_model(name, weights=None, num_classes=num_classes, **kwargs)


@functools.lru_cache(maxsize=None)
def _builder_call(name: str) -> tuple[type, dict]:
    """The model class a builder constructs and the arguments the builder passes to it itself
    (those are fixed by torchvision for that name, not options)."""
    cls = type(_construct_meta(name, {}))
    captured: dict = {}
    original = cls.__init__

    @functools.wraps(original)
    def recording(self, *args, **kwargs):
        if not captured:
            bound = inspect.signature(original).bind(self, *args, **kwargs)
            captured.update({k: v for k, v in bound.arguments.items() if k != "self"})
        original(self, *args, **kwargs)

    with _CAPTURE_LOCK:
        cls.__init__ = recording
        try:
            _construct_meta(name, {})
        finally:
            cls.__init__ = original
    captured.update(captured.pop("kwargs", {}) or {})
    return cls, captured


def _json_types(annotation: Any, default: Any) -> tuple[str, ...] | None:
    """JSON types of a constructor argument from its annotation (or default); None when it takes
    things a spec cannot write (callables, classes, config objects)."""
    simple = {bool: "boolean", int: "integer", float: "number", str: "string", type(None): "null"}
    if annotation is inspect.Parameter.empty:
        if type(default) in simple:
            return (simple[type(default)],)
        if isinstance(default, (list, tuple)) and all(type(v) in simple for v in default):
            return ("array",)
        return None
    origin = typing.get_origin(annotation)
    if origin in (typing.Union, types.UnionType):
        out: list[str] = []
        for arg in typing.get_args(annotation):
            t = _json_types(arg, inspect.Parameter.empty if arg is not type(None) else None)
            if t is None:
                return None
            out += [x for x in t if x not in out]
        return tuple(out)
    if annotation in simple:
        return (simple[annotation],) if annotation is not float else ("number",)
    if origin in (list, tuple, collections.abc.Sequence):
        args = [a for a in typing.get_args(annotation) if a is not Ellipsis]
        if all(_json_types(a, inspect.Parameter.empty) is not None for a in args):
            return ("array",)
    return None


@functools.lru_cache(maxsize=None)
def _options_of(name: str) -> dict[str, Option]:
    cls, fixed = _builder_call(name)
    try:
        sig = inspect.signature(cls.__init__, eval_str=True)
    except Exception:  # an annotation that does not evaluate: use the raw ones
        sig = inspect.signature(cls.__init__)
    out = {}
    for pname, p in sig.parameters.items():
        if pname == "self" or p.kind in (p.VAR_POSITIONAL, p.VAR_KEYWORD) or pname in _NOT_OPTIONS:
            continue
        knob = pname in SIZE_KNOBS
        if pname in fixed and not knob:
            continue  # the builder sets it for this model
        default = fixed.get(pname, p.default)
        if default is inspect.Parameter.empty:
            continue
        kinds = _json_types(p.annotation, default)
        if kinds is None:
            continue
        if pname == "aux_logits":
            default = False
        if pname == "init_weights" and default is None:
            default = True  # what torchvision does when it is None (after a warning)
        out[pname] = Option(_plain(default), kinds,
                            f"constructor option of torchvision.models.{cls.__name__} (default for {name}: "
                            f"{_plain(default)!r})")
    return out


def _plain(value: Any) -> Any:
    return list(value) if isinstance(value, tuple) else value


def constructor_options(name: Any) -> dict[str, Option]:
    """The constructor options a torchvision model takes (those its builder leaves free), each an
    `Option` whose default is the one torchvision uses for that model. {} for an unknown name."""
    if _check_name(name) is not None:
        return {}
    return dict(_options_of(name))


def _given(cfg: dict) -> dict:
    """The constructor options a config sets (other keys, e.g. a checkpoint path, are not options)."""
    opts = constructor_options(cfg["size"])
    return {k: cfg[k] for k in sorted(opts) if k in cfg}


def _build_kwargs(cfg: dict) -> dict:
    opts = constructor_options(cfg["size"])
    kwargs = _given(cfg)
    if "aux_logits" in opts:
        kwargs.setdefault("aux_logits", False)
    if "init_weights" in opts and kwargs.get("init_weights") is None:
        kwargs["init_weights"] = True  # torchvision's choice for None, without its warning
    return {k: tuple(v) if k in SIZE_KNOBS and isinstance(v, list) else v for k, v in kwargs.items()}


@functools.lru_cache(maxsize=1)
def _any_constructor_argument() -> frozenset[str]:
    """Every constructor argument of torchvision's classification model classes (to tell a misplaced
    option, such as a dropout given to a ResNet, from kdstudy's own keys in a model config)."""
    tvm = _tvm()
    names: set[str] = set()
    for cls in vars(tvm).values():
        if isinstance(cls, type) and issubclass(cls, nn.Module):
            names.update(inspect.signature(cls.__init__).parameters)
    return frozenset(names - {"self", "args", "kwargs", "num_classes"})


def _check(cfg: dict) -> str | None:
    name = cfg["size"]
    err = _check_name(name)
    if err:
        return err
    opts = constructor_options(name)
    family_keys = {"family", "size", "channels", "multi_exit"}
    for key in cfg:
        if key in opts or key in family_keys or not isinstance(key, str):
            continue
        close = close_names(key, opts)
        if key in _any_constructor_argument() or close:
            hint = f"did you mean {', '.join(close)}? " if close else ""
            return (f"{name} has no option {key!r} (torchvision fixes it for this model, or the model has "
                    f"none); {hint}its options: {', '.join(sorted(opts)) or 'none'}")
    if isinstance(cfg.get("weights"), str):
        return (f"torchvision weights ({cfg['weights']!r}) are never downloaded here; "
                f"import a trained state dict from a local file as a teacher instead")
    for key, value in _given(cfg).items():
        err = opts[key].check(f"option {key!r}", value)
        if err:
            return err
    if cfg.get("aux_logits"):
        return "option 'aux_logits' must be false: the auxiliary heads' outputs are not logits the loop can use"
    return None


# --------------------------------------------------------------------------- building


def _repeat_gray(module: nn.Module, args: tuple):
    """Forward pre-hook: a 1-channel image batch becomes 3 channels (an expanded view)."""
    x = args[0]
    if x.dim() == 4 and x.shape[1] == 1:
        return (x.expand(-1, 3, -1, -1), *args[1:])
    return None


def _adapt_first_conv(model: nn.Module, channels: int) -> None:
    for path, m in model.named_modules():
        if isinstance(m, nn.Conv2d) and m.in_channels == 3:
            new = nn.Conv2d(channels, m.out_channels, m.kernel_size, m.stride, m.padding, m.dilation,
                            m.groups, m.bias is not None, m.padding_mode,
                            device=m.weight.device, dtype=m.weight.dtype)
            parent_path, _, leaf = path.rpartition(".")
            setattr(model.get_submodule(parent_path) if parent_path else model, leaf, new)
            return
    raise ValueError("has no 3-channel convolution to adapt to the dataset's channels")


def _construct(cfg: dict, num_classes: int) -> nn.Module:
    name = cfg["size"]
    kwargs = _build_kwargs(cfg)
    try:
        try:
            return _tvm().get_model(name, weights=None, num_classes=num_classes, **kwargs)
        except NotImplementedError:
            if torch.get_default_device().type != "meta":
                raise
            with params_on_meta():  # under torch.device("meta"): a constructor that computes with tensors
                return _tvm().get_model(name, weights=None, num_classes=num_classes, **kwargs)
    except (TypeError, ValueError, AssertionError, RuntimeError) as exc:
        raise ValueError(f"torchvision model {name} with options {kwargs}: {_first_line(exc)}") from None


def _first_line(exc: BaseException) -> str:
    text = str(exc).strip().splitlines()
    return text[0] if text else type(exc).__name__


_INPUT_OK: dict[str, str | None] = {}


def _check_input(model: nn.Module, cfg: dict, in_shape: tuple[int, ...], num_classes: int) -> None:
    key = json.dumps([cfg["size"], _given(cfg), cfg.get("channels"), list(in_shape), num_classes], default=str)
    if key not in _INPUT_OK:
        try:
            out = meta_forward(model, (2, *in_shape))
            _INPUT_OK[key] = None if isinstance(out, torch.Tensor) and out.dim() == 2 else \
                f"its forward returns {type(out).__name__}, not a (batch, classes) tensor of logits"
        except Exception as exc:  # noqa: BLE001 - any failure of the probe is a property of this input
            _INPUT_OK[key] = _first_line(exc)
    err = _INPUT_OK[key]
    if err is None:
        return
    name, opts = cfg["size"], constructor_options(cfg["size"])
    hint = "; use larger images (resize the dataset) or another model"
    for knob, value in (("image_size", in_shape[1]), ("input_size", [in_shape[1], in_shape[2]])):
        if knob in opts and knob not in cfg and _fits(cfg, {knob: value}, in_shape, num_classes):
            hint = (f"; it is built for {opts[knob].default} images: set its option {knob}: {value}")
    raise ValueError(f"torchvision model {name} cannot take inputs of shape {tuple(in_shape)}: {err}{hint}")


def _fits(cfg: dict, extra: dict, in_shape: tuple[int, ...], num_classes: int) -> bool:
    """Whether the model with the options ``extra`` added takes inputs of ``in_shape`` (meta probe)."""
    try:
        kwargs = _build_kwargs({**cfg, **extra})
        model = _construct_meta(cfg["size"], kwargs, num_classes)
        if in_shape[0] == 1 and cfg.get("channels") == "repeat":
            model.register_forward_pre_hook(_repeat_gray)
        meta_forward(model, (2, *in_shape))
        return True
    except Exception:  # noqa: BLE001 - it does not fit
        return False


@register_family(
    "torchvision",
    options={"channels": Option("repeat", ("string",), "inputs without 3 channels: 'repeat' a grayscale "
                                "channel to 3, or 'adapt' the first convolution", choices=("repeat", "adapt"))},
    sizes_hint=("a torchvision classification model name such as resnet18, resnet50, mobilenet_v2, "
                "efficientnet_b0, vit_b_16 (with image_size), swin_t, convnext_tiny; its constructor's "
                "options as options"),
    arch_name=lambda c: "tv-" + c["size"] + "".join(
        f"-{k}{'.'.join(map(str, v)) if isinstance(v, (list, tuple)) else v}" for k, v in _given(c).items())
        + ("-adapt" if c["channels"] == "adapt" else ""),
    check=_check,
    size=Option(REQUIRED, ("string",), "a torchvision classification model name"),
    sizes=model_names,
    size_order=lambda c, num_classes: _param_order(c["size"], json.dumps(_given(c), sort_keys=True), num_classes),
    size_options=constructor_options,
    stages=lambda m: _stages(m),
)
def build_torchvision(cfg, in_shape, num_classes, multi_exit):
    need_image("torchvision", in_shape)
    channels = in_shape[0]
    if channels != 3 and not (channels == 1 and cfg["channels"] == "repeat") and cfg["channels"] != "adapt":
        raise ValueError(f"torchvision models take 3-channel images; this dataset has {channels} channels: "
                         f"set the model's option channels: adapt (the first convolution takes {channels})")
    model = _construct(cfg, num_classes)
    if channels != 3:
        if cfg["channels"] == "adapt":
            try:
                _adapt_first_conv(model, channels)
            except ValueError as exc:
                raise ValueError(f"torchvision model {cfg['size']} {exc}") from None
        else:
            model.register_forward_pre_hook(_repeat_gray)
    _check_input(model, cfg, in_shape, num_classes)
    return model


@functools.lru_cache(maxsize=None)
def _param_order(name: str, given_json: str, num_classes: int) -> float:
    """Parameter count of a model (built on meta), the order of torchvision sizes."""
    kwargs = _build_kwargs({"size": name, **json.loads(given_json)})
    return float(count_params(_construct_meta(name, kwargs, num_classes)))


# --------------------------------------------------------------------------- stages (feature taps)


def _layers(prefix: str, container: nn.Module) -> list[str]:
    return [f"{prefix}.{n}" for n, _ in container.named_children()]


#: torchvision models whose stages are named modules
_NAMED_STAGES = {
    "ResNet": lambda m: ["layer1", "layer2", "layer3", "layer4"],
    "RegNet": lambda m: _layers("trunk_output", m.trunk_output),
    "DenseNet": lambda m: [f"features.denseblock{i}" for i in range(1, 5)],
    "ConvNeXt": lambda m: [f"features.{i}" for i in range(1, len(m.features), 2)],
    "SwinTransformer": lambda m: [TapPoint(f"features.{i}", layout="channels_last")
                                  for i in range(1, len(m.features), 2)],
    "VisionTransformer": lambda m: _layers("encoder.layers", m.encoder.layers),
    "MaxVit": lambda m: _layers("blocks", m.blocks),
    "ShuffleNetV2": lambda m: ["stage2", "stage3", "stage4"],
    "GoogLeNet": lambda m: ["inception3b", "inception4e", "inception5b"],
    "Inception3": lambda m: ["Mixed_5d", "Mixed_6e", "Mixed_7c"],
}
#: torchvision models that are one sequential trunk: a stage ends where the resolution changes
_TRUNKS = {"VGG": "features", "AlexNet": "features", "MobileNetV2": "features", "MobileNetV3": "features",
           "EfficientNet": "features", "MNASNet": "layers", "SqueezeNet": "features"}


def _stages(model: nn.Module) -> list | None:
    cls = type(model).__name__
    if cls in _NAMED_STAGES:
        return _NAMED_STAGES[cls](model)
    if cls in _TRUNKS:
        return trunk_stages(model, _TRUNKS[cls])
    return None


def trunk_stages(model: nn.Module, trunk: str, native: int = 224) -> list[str]:
    """The last child of the sequential ``trunk`` at each spatial resolution (a resolution whose
    last child is a pooling layer is not a stage), from a meta forward at ``native`` x ``native``:
    the stages depend on the architecture, never on the dataset's image size."""
    kids = list(model.get_submodule(trunk).named_children())
    shapes: dict[str, tuple | None] = {}

    def keep(path, module, args, out):
        shapes[path] = tuple(out.shape) if isinstance(out, torch.Tensor) else None

    handles = [m.register_forward_hook(functools.partial(keep, f"{trunk}.{n}")) for n, m in kids]
    channels = next((m.in_channels for m in model.modules() if isinstance(m, nn.Conv2d)), 3)
    try:
        meta_forward(model, (1, channels, native, native))
    finally:
        for h in handles:
            h.remove()
    levels: list[list] = []
    for n, m in kids:
        s = shapes.get(f"{trunk}.{n}")
        if s is None or len(s) != 4 or s[2] * s[3] <= 1:
            continue
        if levels and levels[-1][0] == s[2:]:
            levels[-1][1:] = [f"{trunk}.{n}", m]
        else:
            levels.append([s[2:], f"{trunk}.{n}", m])
    return [path for _, path, m in levels if not isinstance(m, _POOLS)]
