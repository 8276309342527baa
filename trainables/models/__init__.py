"""Model families with a size knob, built from a small config dict.

A model config is ``{"family": str, "size": int | str, **options}``; a teacher
ladder is a list of sizes of one family. The package:

* `registry`: the family registry (`register_family`, `build_model`, `arch_name`,
  `family_entry` and the ``family_*`` questions, `size_order`);
* one module per family: `mlp`, `cnn1d`, `cifar_resnet`, `wrn`, `plain_cnn`, and
  `torchvision` (any torchvision classification model by name); each registers itself
  with the same `register_family` a plug-in calls;
* `common`: the shared pieces (`SingleExit`, `MultiExit`, `ExitHead`, pooling, init,
  `TapPoint`);
* `measure`: `count_params`, `count_flops`, `exit_flops`, `build_meta` (shapes only);
* `taps`: feature taps by name (`Taps`, `tap_shapes`; the names are documented there).
"""

from __future__ import annotations

from . import cifar_resnet, cnn1d, mlp, plain_cnn, torchvision, wrn  # noqa: F401  (register the families)
from .cifar_resnet import BasicBlock, CifarResNet, MultiExitCifarResNet
from .cnn1d import CNN1d, MultiExitCNN1d
from .common import (ExitHead, Flatten, GlobalAvgPool, MultiExit, SingleExit, TapPoint, classifier_input, init_weights,
                     int_option, need_image)
from .measure import build_meta, count_flops, count_params, exit_flops, meta_forward, params_on_meta
from .mlp import MLP
from .plain_cnn import PLAIN_CNN_BOOKS, PlainCNN
from .registry import (
    Family,
    arch_name,
    available_families,
    close_names,
    build_model,
    family_entry,
    family_option_specs,
    family_options,
    family_size_spec,
    family_sizes,
    family_sizes_hint,
    register_family,
    size_order,
    supports_multi_exit,
)
from .taps import TapError, Taps, check_tap_names, tap_points, tap_shapes
from .wrn import WideBasic, WideResNet

__all__ = [
    "BasicBlock", "CNN1d", "CifarResNet", "ExitHead", "Family", "Flatten", "GlobalAvgPool", "MLP",
    "MultiExit", "MultiExitCNN1d", "MultiExitCifarResNet", "PLAIN_CNN_BOOKS", "PlainCNN", "SingleExit",
    "TapError", "TapPoint", "Taps", "WideBasic", "WideResNet",
    "arch_name", "available_families", "build_meta", "build_model", "check_tap_names", "classifier_input",
    "close_names", "count_flops", "count_params", "exit_flops", "family_entry", "family_option_specs",
    "family_options", "family_size_spec", "family_sizes", "family_sizes_hint", "init_weights", "int_option",
    "meta_forward", "need_image", "params_on_meta", "register_family", "size_order", "supports_multi_exit",
    "tap_points", "tap_shapes",
]
