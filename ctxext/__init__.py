"""ctxext: extend the context window of Hugging Face causal LMs that use RoPE.

    import ctxext
    ctxext.patch_model(model, "yarn", 8)                       # in memory
    ctxext.patch_checkpoint("meta-llama/Llama-2-7b-hf", "out/", "yarn", 8)   # on disk
    ctxext.finetune("HuggingFaceTB/SmolLM2-360M", "yarn", 4, "book.txt", "out-ft/")   # LoRA fine-tune
    ctxext.search_factors("meta-llama/Llama-2-7b-hf", 8, "book.txt", "out-longrope/")  # searched factors

Importing ctxext is cheap: torch and transformers load only when a function that needs them is
first used, so config-only commands (`ctxext patch`, `ctxext info`) start fast.
"""

from __future__ import annotations

import importlib
from typing import Any

__version__ = "0.1.0"

# public name -> module that defines it (loaded on first use)
_EXPORTS = {
    "METHODS": "ctxext.rope.methods",
    "METHOD_CHOICES": "ctxext.rope.methods",
    "Scaling": "ctxext.rope.methods",
    "resolve": "ctxext.rope.methods",
    "ROPE_FUNCTIONS": "ctxext.rope.functions",
    "compute_inv_freq": "ctxext.rope.functions",
    "default_inv_freq": "ctxext.rope.functions",
    "pi": "ctxext.rope.functions",
    "ntk": "ctxext.rope.functions",
    "dynamic_ntk": "ctxext.rope.functions",
    "ntk_by_parts": "ctxext.rope.functions",
    "yarn": "ctxext.rope.functions",
    "dynamic_yarn": "ctxext.rope.functions",
    "llama3": "ctxext.rope.functions",
    "longrope": "ctxext.rope.functions",
    "RopeConfigError": "ctxext.rope.layout",
    "read_layout": "ctxext.rope.layout",
    "patch_model": "ctxext.patching.model",
    "patch_checkpoint": "ctxext.patching.checkpoint",
    "CtxextError": "ctxext.errors",
    "evaluate_passkey": "ctxext.evaluation.passkey",
    "evaluate_perplexity": "ctxext.evaluation.perplexity",
    "evaluate_ruler": "ctxext.evaluation.ruler",
    "build_ruler_prompts": "ctxext.evaluation.ruler",
    "finetune": "ctxext.training.finetune",
    "Recipe": "ctxext.training.recipe",
    "TrainResult": "ctxext.training.finetune",
    "search_factors": "ctxext.search.run",
    "SearchResult": "ctxext.search.run",
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
