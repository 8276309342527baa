"""An example kdstudy plug-in: one method, one model family and one dataset kdstudy does not ship.

A spec imports it with ``plugins: [./lab/]`` (a package folder beside the spec); each file
registers one thing with the decorator the built-in code uses, and imports only kdstudy's
public extension API (README, "Extending kdstudy").
"""

from . import residual_mlp, ttm, waveform  # noqa: F401  (each registers itself)
