"""Distillation methods, one file each, found by name through the registry."""

from .base import Context, HParam, Method, Step, available_methods, get_method, register

__all__ = ["Context", "HParam", "Method", "Step", "available_methods", "get_method", "register"]
