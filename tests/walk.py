"""Every causal LM with a rotary module that the installed transformers ships, as a tiny model.

Used by the all-architectures walks (tests/patching/test_all_architectures.py,
tests/training/test_loss.py): each model type is built from its config with the common small
sizes (MoE, MLA and hybrid keys shrunk too) and run once unpatched; a type whose tiny config cannot
be built or run is reported as a fixture problem (the tiny config, not ctxext, is at fault).
"""

from __future__ import annotations

import copy
import importlib

import torch
from transformers import AutoConfig, AutoModelForCausalLM
from transformers.models.auto.configuration_auto import model_type_to_module_name
from transformers.models.auto.modeling_auto import MODEL_FOR_CAUSAL_LM_MAPPING_NAMES

from tiny import OVERRIDES, SMALL, token_ids

SHRINK = dict(
    num_experts=4, num_local_experts=4, n_routed_experts=4, moe_num_experts=4, num_experts_per_tok=2,
    moe_intermediate_size=32, shared_expert_intermediate_size=32, n_shared_experts=1, first_k_dense_replace=1,
    n_group=1, topk_group=1,
)
MAX_PARAMS = 5_000_000  # a tiny config that stays bigger than this builds a vision tower or the like: skipped


def rotary_model_types() -> list[str]:
    found = []
    for model_type in MODEL_FOR_CAUSAL_LM_MAPPING_NAMES:
        module = model_type_to_module_name(model_type)
        try:
            modeling = importlib.import_module(f"transformers.models.{module}.modeling_{module}")
        except Exception:
            continue
        if any(name.endswith("RotaryEmbedding") for name in vars(modeling)):
            found.append(model_type)
    return found


def build(model_type: str):
    """(tiny model in eval mode, None), or (None, why the tiny config is unusable)."""
    try:
        config = AutoConfig.for_model(model_type, **{**SMALL, **SHRINK, **OVERRIDES.get(model_type, {})})
        with torch.device("meta"):
            size = sum(p.numel() for p in AutoModelForCausalLM.from_config(copy.deepcopy(config)).parameters())
        if size > MAX_PARAMS:
            return None, f"{size:,} parameters"
        torch.manual_seed(0)
        model = AutoModelForCausalLM.from_config(config).eval()
        with torch.no_grad():
            model(token_ids(40))
        return model, None
    except Exception as err:
        return None, f"{type(err).__name__}: {err}"[:160]
