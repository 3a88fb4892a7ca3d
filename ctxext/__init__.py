"""ctxext: extend the context window of Hugging Face causal LMs that use RoPE.

    import ctxext
    ctxext.patch_model(model, "yarn", 8)                       # in memory
    ctxext.patch_checkpoint("meta-llama/Llama-2-7b-hf", "out/", "yarn", 8)   # on disk
    ctxext.finetune("HuggingFaceTB/SmolLM2-360M", "yarn", 4, "book.txt", "out-ft/")   # LoRA fine-tune

Importing ctxext is cheap: torch and transformers load only when a function that needs them is
first used, so config-only commands (`ctxext patch`, `ctxext info`) start fast.
"""

from __future__ import annotations

import importlib
from typing import Any

__version__ = "0.1.0"

# public name -> module that defines it (loaded on first use)
_EXPORTS = {
    "METHODS": "ctxext.methods",
    "METHOD_CHOICES": "ctxext.methods",
    "Scaling": "ctxext.methods",
    "resolve": "ctxext.methods",
    "ROPE_FUNCTIONS": "ctxext.rope",
    "compute_inv_freq": "ctxext.rope",
    "default_inv_freq": "ctxext.rope",
    "pi": "ctxext.rope",
    "ntk": "ctxext.rope",
    "dynamic_ntk": "ctxext.rope",
    "ntk_by_parts": "ctxext.rope",
    "yarn": "ctxext.rope",
    "dynamic_yarn": "ctxext.rope",
    "llama3": "ctxext.rope",
    "RopeConfigError": "ctxext.rope_config",
    "read_layout": "ctxext.rope_config",
    "patch_model": "ctxext.patch",
    "patch_checkpoint": "ctxext.checkpoint",
    "CtxextError": "ctxext.errors",
    "evaluate_passkey": "ctxext.passkey",
    "evaluate_perplexity": "ctxext.perplexity",
    "finetune": "ctxext.train",
    "TrainResult": "ctxext.train",
}

__all__ = sorted(_EXPORTS)


def __getattr__(name: str) -> Any:
    if name in _EXPORTS:
        value = getattr(importlib.import_module(_EXPORTS[name]), name)
        globals()[name] = value
        return value
    raise AttributeError(f"module 'ctxext' has no attribute {name!r}")


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(__all__))
