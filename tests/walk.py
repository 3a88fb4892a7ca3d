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
    "lfm2_moe": dict(layer_types=["conv", "full_attention"]),
    "zamba2": dict(layers_block_type=["mamba", "hybrid"], use_mem_rope=True, mamba_d_state=16, n_mamba_heads=2,
                   chunk_size=16),
}
#: a vision tower or audio encoder of one layer 32 wide
VISION = dict(hidden_size=32, intermediate_size=64, num_hidden_layers=1, num_attention_heads=2)
#: other types whose defaults stay too big or invalid at SMALL's sizes: Ergo's dense first layer
#: (32,768 wide) and its global layers every 4th (NoPE, so 2 layers would be all sliding); Kolibri 1.1's
#: indexer (12 index heads of 48 query heads, head_dim a multiple of 16) and its indexed layers every 5th
SIZED = {
    "ergo": dict(first_dense_intermediate_size=128, shared_intermediate_size=32, global_attention_every_n_layers=2,
                 sliding_window=16),
    "mllama_text_model": dict(cross_attention_layers=[1]),
    "cohere_compass_text": dict(layer_types=["full_attention"] * 2, rope_parameters={
        "full_attention": {"rope_type": "default", "rope_theta": 10000.0}}),
    "dbrx": dict(d_model=64, n_heads=4, n_layers=2, max_seq_len=64, attn_config=dict(kv_n_heads=2, rope_theta=10000.0, clip_qkv=8.0),
                 ffn_config=dict(hidden_size=64, ffn_hidden_size=32, moe_num_experts=4, moe_top_k=2)),
    "inkling2_text": dict(unpadded_vocab_size=128, head_dim=16, swa_head_dim=16, sliding_window_size=16, rel_extent=16),
    "zaya": dict(num_experts_per_tok=1),
    "gemma3n_text": dict(
        head_dim=16, sliding_window=16, layer_types=["sliding_attention", "full_attention"], num_kv_shared_layers=0,
        activation_sparsity_pattern=[0.0, 0.0], hidden_size_per_layer_input=8, vocab_size_per_layer_input=128,
        laurel_rank=8, altup_num_inputs=2),
    "phi4_multimodal": dict(
        vision_config=VISION | dict(image_size=32, patch_size=8, crop_size=32),
        audio_config=dict(hidden_size=32, intermediate_size=64, num_blocks=1, num_attention_heads=2, ext_pw_out_channel=32,
                          depthwise_separable_out_channel=32, nemo_conv_channels=32)),
    "gemma4_text": dict(  # full layers twice as wide as the sliding ones (global_head_dim), as the family ships
        head_dim=16, global_head_dim=32, sliding_window=16, layer_types=["sliding_attention", "full_attention"],
        hidden_size_per_layer_input=8, vocab_size_per_layer_input=128),
    # DeepSeek V4: one compressed layer of each kind (CSA with its indexer, HCA), its rope 4 of 32 dims
    "deepseek_v4": dict(
        num_key_value_heads=1, head_dim=32, qk_rope_head_dim=4, q_lora_rank=32, o_lora_rank=32, o_groups=2,
        index_n_heads=2, index_head_dim=32, index_topk=16, sliding_window=16, num_nextn_predict_layers=0,
        layer_types=["compressed_sparse_attention", "heavily_compressed_attention"], mlp_layer_types=["moe", "moe"],
        compress_rates={"compressed_sparse_attention": 4, "heavily_compressed_attention": 8}),
    "codegen": dict(rotary_dim=8),
    "gptj": dict(rotary_dim=8),
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
#: types whose head_dim defaults to None (hidden_size // heads is not taken: Ministral, Hunyuan) or to a full-size
#: value (Helium's 128 against SMALL's 64 wide hidden state)
HEAD_DIM = {t: dict(head_dim=16) for t in ("helium", "hunyuan_v1_dense", "hunyuan_v1_moe", "ministral")}
#: composite (multimodal) types: their text model is the text type's tiny config (text_config), their vision tower
#: or the like is shrunk to one layer 32 wide; the causal LM runs on text only
COMPOSITE = {
    "llama4": ("llama4_text", dict(vision_config=VISION | dict(
        image_size=32, patch_size=8, vision_output_dim=32, projector_input_dim=32, projector_output_dim=32))),
    "qwen3_5": ("qwen3_5_text", dict(vision_config=dict(
        depth=1, hidden_size=32, intermediate_size=64, num_heads=2, out_hidden_size=64))),
    "qwen3_5_moe": ("qwen3_5_moe_text", dict(vision_config=dict(
        depth=1, hidden_size=32, intermediate_size=64, num_heads=2, out_hidden_size=64))),
    "qwen4_exp": ("qwen4_exp_text", dict(vision_config=dict(
        depth=1, hidden_size=32, intermediate_size=64, num_heads=2, out_hidden_size=64))),
    "mllama": ("mllama_text_model", dict()),  # its causal LM (like Emu3's) is the text model alone
    "emu3": ("emu3_text_model", dict()),
    "dots3_note": ("dots3_note_text", dict(vision_config=dict(adapter_out_dim=64), audio_config=dict(adapter_out_dim=64))),
    "gemma3": ("gemma3_text", dict(vision_config=VISION | dict(image_size=32, patch_size=8), mm_tokens_per_image=4)),
    "gemma4_unified": ("gemma4_unified_text", dict()),
    "gemma4": ("gemma4_text", dict(vision_config=VISION, audio_config=None)),
}
#: MLA with a sparse-attention indexer (DeepSeek V3.2, GLM-5, Hunyuan V4): low ranks and heads 16 wide (the rope
#: part 16 of them), an indexer of 2 heads 32 wide that keeps the top 16 keys; as many key/value heads as query heads
DSA = dict(num_key_value_heads=SMALL["num_attention_heads"], kv_lora_rank=32, q_lora_rank=64, qk_rope_head_dim=16,
           qk_nope_head_dim=16, v_head_dim=16, head_dim=16, index_topk=16, index_head_dim=32, index_n_heads=2)
MLA |= {t: DSA for t in ("deepseek_v32", "glm_moe_dsa", "hy_v4")}
MLA["dots3_note_text"] = DSA | dict(shared_experts_intermediate_size=32, sliding_window=16)
#: BLT's builds, runs and its loss passes, and the check reads the record of each of its four sub-models (patch_model
#: writes one per rotary config: patcher rope_theta 1e4, local encoder, decoder and global transformer 5e5); it is
#: still held because the patcher and the global transformer make their own position ids (arange over the bytes, over
#: the patches) instead of the ones passed in: the check's scattered positions never reach them ("24 mismatches,
#: first: at 32: model.patcher.layers.0.self_attn off by 1.67"), and in a full pass the global transformer's dynamic
#: length is the number of patches. Checking it needs capture() to read each rotary module's own position ids
SIZED_HELD = {
    "blt": dict(  # byte-level: a one-layer patcher, local encoder and decoder 32 wide, global transformer 64 wide
        encoder_hash_byte_group_vocab=64,
        patcher_config=dict(vocab_size=128, hidden_size=32, num_hidden_layers=1, num_attention_heads=2,
                            num_key_value_heads=2, intermediate_size=64, head_dim=16, max_position_embeddings=64),
        encoder_config=dict(vocab_size=128, hidden_size=32, hidden_size_global=64, num_attention_heads=2,
                            num_key_value_heads=2, num_hidden_layers=1, intermediate_size=64, max_position_embeddings=64),
        decoder_config=dict(vocab_size=128, hidden_size=32, hidden_size_global=64, num_attention_heads=2,
                            num_key_value_heads=2, num_hidden_layers=1, intermediate_size=64, head_dim=16,
                            max_position_embeddings=64),
        global_config=dict(hidden_size=64, num_attention_heads=4, num_key_value_heads=4, num_hidden_layers=1,
                           intermediate_size=128, head_dim=16, max_position_embeddings=64)),
}
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


def sizes(model_type: str) -> dict:
    """The config keys of model_type's tiny model: SMALL, SHRINK and the type's own tables."""
    found = {**SMALL, **SHRINK}
    for table in (OVERRIDES, HYBRID, SIZED, MLA, HEAD_DIM):
        found |= table.get(model_type, {})
    return found


def build(model_type: str, composite: tuple[str, dict] | None = None):
    """(tiny model in eval mode, None), or (None, why the tiny config is unusable).

    `composite` (text type, other parts), as in COMPOSITE, builds a composite type that COMPOSITE does not list.
    """
    try:
        composite = composite or COMPOSITE.get(model_type)
        if composite is not None:
            text_type, parts = composite
            config = AutoConfig.for_model(model_type, text_config=dict(sizes(text_type), model_type=text_type),
                                          **copy.deepcopy(parts))
        else:
            config = AutoConfig.for_model(model_type, **sizes(model_type))
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
