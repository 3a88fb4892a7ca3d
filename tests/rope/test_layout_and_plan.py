"""Reading real-world config.json files (v4 and v5 spellings) and the patch plans written from them.

The configs below keep only the keys that matter for RoPE, with the values of the public
checkpoints they are named after.
"""

import math

import pytest

from ctxext.rope.methods import resolve
from ctxext.rope.layout import RopeConfigError, read_layout
from ctxext.rope.plan import patched_config_dict, plan_patch

LLAMA31_8B = {  # meta-llama/Llama-3.1-8B, saved by transformers v4
    "model_type": "llama", "hidden_size": 4096, "num_attention_heads": 32, "max_position_embeddings": 131072,
    "rope_theta": 500000.0,
    "rope_scaling": {"factor": 8.0, "low_freq_factor": 1.0, "high_freq_factor": 4.0,
                     "original_max_position_embeddings": 8192, "rope_type": "llama3"},
}
QWEN25_7B_YARN = {  # Qwen/Qwen2.5-7B-Instruct with the YaRN snippet from its model card
    "model_type": "qwen2", "hidden_size": 3584, "num_attention_heads": 28, "max_position_embeddings": 32768,
    "rope_theta": 1000000.0,
    "rope_scaling": {"factor": 4.0, "original_max_position_embeddings": 32768, "type": "yarn"},
}
PYTHIA_1B = {  # EleutherAI/pythia-1b: GPT-NeoX's own v4 names, no rope_theta at all
    "model_type": "gpt_neox", "hidden_size": 2048, "num_attention_heads": 8, "max_position_embeddings": 2048,
    "rotary_emb_base": 10000, "rotary_pct": 0.25,
}
PHI3_MINI_128K = {  # microsoft/Phi-3-mini-128k-instruct
    "model_type": "phi3", "hidden_size": 3072, "num_attention_heads": 32, "max_position_embeddings": 131072,
    "original_max_position_embeddings": 4096, "rope_theta": 10000.0,
    "rope_scaling": {"type": "longrope", "long_factor": [1.0] * 48, "short_factor": [1.0] * 48},
}
GEMMA3_4B_TEXT = {  # google/gemma-3-4b-it's text_config, v4 spelling
    "model_type": "gemma3", "text_config": {
        "model_type": "gemma3_text", "hidden_size": 2560, "num_attention_heads": 8, "head_dim": 256,
        "max_position_embeddings": 131072, "rope_theta": 1000000.0, "rope_local_base_freq": 10000.0,
        "rope_scaling": {"factor": 8.0, "rope_type": "linear"}, "sliding_window": 1024,
    },
}
MISTRAL_7B = {  # mistralai/Mistral-7B-v0.1
    "model_type": "mistral", "hidden_size": 4096, "num_attention_heads": 32, "max_position_embeddings": 32768,
    "rope_theta": 10000.0, "sliding_window": 4096,
}


def test_llama31_is_recognised_as_llama3_scaled():
    layout = read_layout(LLAMA31_8B)
    assert layout.rotary_dim == 128 and layout.scaling_type == "llama3" and layout.is_scaled
    assert layout.original_max_position_embeddings == 8192 and layout.window == 131072
    with pytest.raises(RopeConfigError, match=r"already uses llama3 \(factor 8, original window 8192\)"):
        plan_patch(layout, resolve("yarn", 16))


def test_llama31_replaced_by_yarn_counts_from_8192():
    patch = plan_patch(read_layout(LLAMA31_8B), resolve("yarn", 32), replace=True)
    out = patched_config_dict(LLAMA31_8B, patch)
    assert out["rope_parameters"] == {"rope_type": "yarn", "rope_theta": 500000.0, "factor": 32.0,
                                      "original_max_position_embeddings": 8192, "beta_fast": 32.0, "beta_slow": 1.0}
    assert out["rope_scaling"] == {"rope_type": "yarn", "type": "yarn", "factor": 32.0, "beta_fast": 32.0,
                                   "beta_slow": 1.0, "original_max_position_embeddings": 8192}
    assert out["max_position_embeddings"] == 262144 and out["original_max_position_embeddings"] == 8192
    # the stale llama3 keys are gone from both spellings
    assert "low_freq_factor" not in out["rope_parameters"] and "low_freq_factor" not in out["rope_scaling"]


def test_qwen_yarn_snippet_has_a_4x_window():
    layout = read_layout(QWEN25_7B_YARN)
    assert layout.scaling_type == "yarn" and layout.original_max_position_embeddings == 32768
    assert layout.window == 131072


def test_pythia_v4_names_are_read_and_written():
    layout = read_layout(PYTHIA_1B)
    assert layout.rotary_dim == 64 and layout.main["rope_theta"] == 10000
    out = patched_config_dict(PYTHIA_1B, plan_patch(layout, resolve("ntk", 4)))
    raised = 10000 * 4 ** (64 / 62)
    assert out["rope_parameters"] == {"rope_type": "default", "rope_theta": pytest.approx(raised),
                                      "partial_rotary_factor": 0.25}
    assert out["rotary_emb_base"] == out["rope_theta"] == pytest.approx(raised)
    assert out["rotary_pct"] == 0.25 and out["rope_scaling"] is None and out["max_position_embeddings"] == 8192


def test_phi3_longrope_is_recognised():
    layout = read_layout(PHI3_MINI_128K)
    assert layout.scaling_type == "longrope" and layout.original_max_position_embeddings == 4096
    with pytest.raises(RopeConfigError, match="already uses longrope"):
        plan_patch(layout, resolve("ntk", 2))
    with pytest.raises(RopeConfigError, match="accepts only rope types default, longrope, so a dynamic-ntk checkpoint "
                                              "would not load as written; use ntk, pi, ntk-by-parts, yarn, llama3 or longrope"):
        plan_patch(layout, resolve("dynamic-ntk", 2), replace=True)


def test_phi3_static_methods_are_written_as_longrope():
    """Phi-3's stock config takes only longrope: yarn x8 from 4k becomes per-dim factors + explicit attention."""
    from ctxext.rope.functions import compute_inv_freq

    patch = plan_patch(read_layout(PHI3_MINI_128K), resolve("yarn", 8), replace=True)
    out = patched_config_dict(PHI3_MINI_128K, patch)
    rope = out["rope_parameters"]
    assert rope["rope_type"] == "longrope" and rope["factor"] == 8.0
    assert rope["original_max_position_embeddings"] == 4096 and out["original_max_position_embeddings"] == 4096
    assert rope["long_factor"] == rope["short_factor"] and len(rope["long_factor"]) == 48
    assert rope["attention_factor"] == pytest.approx(0.1 * math.log(8) + 1)
    inv_freq, _ = compute_inv_freq("yarn", 96, 10000.0, 8, 4096)
    expected = (compute_inv_freq("yarn", 96, 10000.0, 1, 4096)[0].double() / inv_freq.double()).tolist()
    assert rope["long_factor"] == pytest.approx(expected, rel=1e-6)
    assert rope["long_factor"][0] == 1.0 and rope["long_factor"][-1] == 8.0  # kept and interpolated ends
    assert out["max_position_embeddings"] == 32768
    # transformers v4's Phi-3 takes exactly three keys and derives another attention scale: the full dict
    # is written instead (v5 reads it; v4 refuses it loudly, see ctxext.rope.readers)
    assert out["rope_scaling"]["attention_factor"] == rope["attention_factor"]
    assert out["ctxext"]["method"] == "yarn"


def test_phi3_longrope_with_the_derived_attention_keeps_the_v4_three_keys():
    factors = [1.0 + i / 8 for i in range(48)]
    patch = plan_patch(read_layout(PHI3_MINI_128K), resolve("longrope", 32, long_factor=factors), replace=True)
    out = patched_config_dict(PHI3_MINI_128K, patch)
    assert out["rope_scaling"] == {"type": "longrope", "short_factor": factors, "long_factor": factors}
    assert out["rope_parameters"]["attention_factor"] == pytest.approx(math.sqrt(1 + math.log(32) / math.log(4096)))
    assert out["max_position_embeddings"] == 131072 and out["original_max_position_embeddings"] == 4096


def test_gemma3_composite_config_patches_text_config_global_layers():
    layout = read_layout(GEMMA3_4B_TEXT)
    assert layout.section == "text_config" and layout.targets == ("full_attention",)
    assert layout.rope["sliding_attention"] == {"rope_type": "default", "rope_theta": 10000.0}
    assert layout.scaling_type == "linear" and layout.original_max_position_embeddings is None  # not recorded
    with pytest.raises(RopeConfigError, match="does not record the window it was pre-trained with"):
        plan_patch(layout, resolve("yarn", 8), replace=True)
    patch = plan_patch(layout, resolve("yarn", 8, original_max_position_embeddings=32768), replace=True)
    out = patched_config_dict(GEMMA3_4B_TEXT, patch)
    text = out["text_config"]
    assert text["rope_parameters"]["full_attention"]["rope_type"] == "yarn"
    assert text["rope_parameters"]["sliding_attention"] == {"rope_type": "default", "rope_theta": 10000.0}
    assert text["rope_scaling"]["rope_type"] == "yarn" and text["rope_local_base_freq"] == 10000.0
    assert text["max_position_embeddings"] == 262144 and "rope_parameters" not in out


def test_mistral_window_and_rules_per_method():
    layout = read_layout(MISTRAL_7B)
    assert not layout.is_scaled and layout.window == 32768
    expected = {"pi": 32768, "dynamic-ntk": 32768, "ntk": 131072, "yarn": 131072, "llama3": 131072}
    for method, window in expected.items():
        assert plan_patch(layout, resolve(method, 4)).max_position_embeddings == window, method


@pytest.mark.parametrize("config,message", [
    ({"model_type": "gpt2", "n_embd": 768}, "it uses learned absolute position embeddings"),
    ({"model_type": "bloom"}, "it uses ALiBi"),
    ({"model_type": "falcon", "alibi": True, "hidden_size": 64, "num_attention_heads": 4}, "it uses ALiBi"),
    ({"model_type": "llama", "hidden_size": 64, "num_attention_heads": 4}, "no rotary position embedding settings"),
    ({"model_type": "llama", "hidden_size": 64, "num_attention_heads": 4, "rope_theta": 1e4}, "max_position_embeddings"),
    ({"model_type": "llama", "rope_theta": 1e4, "max_position_embeddings": 8}, "neither head_dim nor hidden_size"),
])
def test_unusable_configs_get_a_sentence(config, message):
    with pytest.raises(RopeConfigError, match=message):
        read_layout(config)


def test_a_record_written_by_ctxext_0_1_still_reads():
    """ctxext 0.1 recorded the patched window as `max_window`; it is now `window`, and both read the same."""
    patch = plan_patch(read_layout(MISTRAL_7B), resolve("pi", 4))
    out = patched_config_dict(MISTRAL_7B, patch)
    assert out["ctxext"]["window"] == 131072 and "max_window" not in out["ctxext"]
    old = {**out, "ctxext": {k: v for k, v in out["ctxext"].items() if k != "window"} | {"max_window": 131072}}
    for config in (out, old):
        layout = read_layout(config)
        assert layout.window == 131072 and layout.original_max_position_embeddings == 32768
        again = plan_patch(layout, resolve("yarn", 2), replace=True)  # counts from the recorded original window
        assert again.window == 65536 and patched_config_dict(config, again)["max_position_embeddings"] == 65536
