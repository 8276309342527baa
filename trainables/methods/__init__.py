"""Distillation methods, one file each, found by name through the registry."""

from ..models.taps import Taps, tap_shapes
from .base import (
    Context,
    Forward,
    FrozenTeacherMethod,
    HParam,
    Method,
    Step,
    available_methods,
    freeze,
    get_method,
    register,
)
from ._feature import FeatureMethod, levels_text

__all__ = ["Context", "FeatureMethod", "Forward", "FrozenTeacherMethod", "HParam", "Method", "Step", "Taps", "available_methods",
           "freeze", "get_method", "levels_text", "register", "tap_shapes"]
