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
#: hybrids whose default layer pattern puts no attention layer in SMALL's two layers (the pattern repeats
#: every 4 or 6 layers), so a tiny model has nothing to rope: one linear (Mamba, DeltaNet, LRU, conv) layer and
#: one attention layer, as their configs spell it (bailing_hybrid's attention is MLA, which stock code runs
#: with as many key/value heads as query heads; qwen4_exp_text's needs its QSA indexer sized; Granite 4.0's
#: position_embedding_type defaults to None, NoPE, and "rope" is its RoPE variant)
HYBRID = {
    "bailing_hybrid": dict(layer_types=["linear_attention", "full_attention"], num_key_value_heads=4),
    "bamba": dict(attn_layer_indices=[1]),
    "granitemoehybrid": dict(layer_types=["linear_attention", "full_attention"], position_embedding_type="rope"),
    "qwen3_5_text": dict(layer_types=["linear_attention", "full_attention"]),
    "qwen3_5_moe_text": dict(layer_types=["linear_attention", "full_attention"]),
    "qwen3_next": dict(layer_types=["linear_attention", "full_attention"]),
    "qwen4_exp_text": dict(
        layer_types=["linear_attention", "indexed_attention"], head_dim=16, indexer_n_heads=2, indexer_kv_heads=1,
        indexer_head_dim=16, indexer_budget=16, indexer_compress_ratio=4,
    ),
    "recurrent_gemma": dict(block_types=["recurrent", "attention"]),
    "lfm3": dict(layer_types=["conv", "full_attention"]),
}
#: other types whose defaults stay too big or invalid at SMALL's sizes: Ergo's dense first layer
#: (32,768 wide) and its global layers every 4th (NoPE, so 2 layers would be all sliding); Kolibri 1.1's
#: indexer (12 index heads of 48 query heads, head_dim a multiple of 16) and its indexed layers every 5th
SIZED = {
    "ergo": dict(first_dense_intermediate_size=128, shared_intermediate_size=32, global_attention_every_n_layers=2,
                 sliding_window=16),
    "kolibri1_1": dict(
        layer_types=["sliding_attention", "indexed_attention"], sliding_window=16, head_dim=16, index_num_heads=2,
        index_topk=16, index_pool_size=64, index_compression=4, index_num_local_tokens=8, index_num_sink_tokens=2,
        mlp_only_layers=[0], mlp_only_intermediate_size=128,
    ),
}
#: multi-head latent attention (DeepSeek V2/V3 and their kin): stock code runs it with as many key/value heads as
#: query heads, as every shipped config has them; SMALL's grouped 2 of 4 cannot run
MLA = {t: dict(num_key_value_heads=SMALL["num_attention_heads"])
       for t in ("axk1", "axk2", "deepseek_v2", "deepseek_v3", "longcat_flash", "minicpm3", "youtu")}
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
        sizes = {**SMALL, **SHRINK}
        for table in (OVERRIDES, HYBRID, SIZED, MLA):
            sizes |= table.get(model_type, {})
        config = AutoConfig.for_model(model_type, **sizes)
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
