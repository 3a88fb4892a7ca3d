"""RoPE scaling, bottom layer: the method registry, the pure frequency functions, a config's rope
layout and the patch plan.

Torch-free except the frequency functions (`ctxext.rope.functions`), which load torch on first use:

    from ctxext.rope import resolve, read_layout, plan_patch      # no torch
    from ctxext.rope import compute_inv_freq, ROPE_FUNCTIONS       # torch
"""

from __future__ import annotations

import importlib
from typing import Any

from .layout import RopeConfigError, RopeLayout, read_layout
from .methods import METHOD_CHOICES, METHODS, Method, Scaling, resolve
from .plan import RopePatch, patched_config_dict, plan_patch

_FUNCTIONS = ("ROPE_FUNCTIONS", "compute_inv_freq", "default_inv_freq", "wavelengths", "yarn_ramp",
              "pi", "ntk", "dynamic_ntk", "ntk_by_parts", "yarn", "dynamic_yarn", "llama3", "longrope",
              "longrope_factors")

__all__ = ["METHOD_CHOICES", "METHODS", "Method", "RopeConfigError", "RopeLayout", "RopePatch", "Scaling",
           "patched_config_dict", "plan_patch", "read_layout", "resolve", *_FUNCTIONS]


def __getattr__(name: str) -> Any:
    if name in _FUNCTIONS:
        return getattr(importlib.import_module("ctxext.rope.functions"), name)
    raise AttributeError(f"module 'ctxext.rope' has no attribute {name!r}")
