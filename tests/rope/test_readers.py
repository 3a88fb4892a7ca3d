"""The reader table: which configs each reader runs differently, said in one sentence naming it.

These check the table's rules on configs; tests/readers/ runs the real readers on the same
encodings and checks that every case the table is silent about agrees with transformers, and every
case it warns about is the one that differs.
"""

import json
import math

import pytest

from ctxext.rope.layout import read_layout
from ctxext.rope.methods import resolve
from ctxext.rope.plan import patched_config_dict, plan_patch
from ctxext.rope.readers import READER_VERSIONS, reader_notes

LLAMA = {"model_type": "llama", "hidden_size": 1024, "num_attention_heads": 8, "max_position_embeddings": 4096,
         "rope_theta": 10000.0}
GEMMA3 = {"model_type": "gemma3_text", "hidden_size": 1024, "num_attention_heads": 8, "head_dim": 128,
          "max_position_embeddings": 4096, "sliding_window": 512,
          "rope_parameters": {"full_attention": {"rope_type": "default", "rope_theta": 1e6},
                              "sliding_attention": {"rope_type": "default", "rope_theta": 1e4}}}
PHI3 = {"model_type": "phi3", "hidden_size": 3072, "num_attention_heads": 32, "max_position_embeddings": 4096,
        "original_max_position_embeddings": 4096, "rope_theta": 10000.0}
NEOX = {"model_type": "gpt_neox", "hidden_size": 2048, "num_attention_heads": 8, "max_position_embeddings": 2048,
        "rotary_emb_base": 10000, "rotary_pct": 0.25}


def patched(config, method, factor=8, **params):
    if method == "longrope" and "long_factor" not in params:
        params["long_factor"] = [1.0 + i / 8 for i in range(read_layout(config).rotary_dim // 2)]
    return patched_config_dict(config, plan_patch(read_layout(config), resolve(method, factor, **params)))


def readers(notes):
    return [note.split(" ")[0] if not note.startswith("transformers v4") else "transformers v4" for note in notes]


@pytest.mark.parametrize("config,method", [(LLAMA, "pi"), (LLAMA, "ntk"), (LLAMA, "yarn"), (LLAMA, "llama3"),
                                           (GEMMA3, "pi"), (GEMMA3, "ntk"), (GEMMA3, "yarn")])
def test_portable_methods_get_no_warning(config, method):
    """Each of these has an encoding every reader derives the same window, frequencies and scale from."""
    assert reader_notes(patched(config, method)) == []


def test_llama3_outside_the_llama_family_is_plain_rope_in_llama_cpp():
    """llama.cpp's converter writes llama3 (a rope_freqs tensor) only in its Llama converter."""
    (note,) = reader_notes(patched(GEMMA3, "llama3"))
    assert note == ("llama.cpp writes llama3 scaling only for llama, mistral, mixtral and runs this gemma3_text "
                    "checkpoint with plain RoPE; use yarn for llama.cpp.")


def test_pi_outside_the_llama_family_stays_linear_and_llama_cpp_is_told_its_window():
    qwen = dict(LLAMA, model_type="qwen2")
    out = patched(qwen, "pi")
    assert out["rope_parameters"]["rope_type"] == "linear" and out["max_position_embeddings"] == 4096
    (note,) = reader_notes(out)
    assert note.startswith("llama.cpp takes its window (GGUF context_length) from max_position_embeddings = 4,096, "
                           "not 32,768; pass -c 32768")


def test_pi_is_spelled_so_that_vllm_and_llama_cpp_both_see_the_window():
    out = patched(LLAMA, "pi")
    assert out["rope_parameters"]["rope_type"] == "llama3" and out["max_position_embeddings"] == 8 * 4096
    # the old spelling loses one reader or the other, and the table says which
    for window, loser in ((4096, "llama.cpp"), (8 * 4096, "vLLM")):
        linear = dict(LLAMA, max_position_embeddings=window,
                      rope_parameters={"rope_type": "linear", "rope_theta": 1e4, "factor": 8.0},
                      ctxext={"method": "pi", "factor": 8.0, "original_max_position_embeddings": 4096,
                              "max_window": 8 * 4096, "rope_theta": {"global": 1e4}, "params": {}})
        notes = reader_notes(linear)
        assert readers(notes) == [loser], notes
    assert "pass -c 32768" in reader_notes(dict(linear, max_position_embeddings=4096))[0]


def test_dynamic_ntk_warns_for_both_serving_engines():
    notes = reader_notes(patched(LLAMA, "dynamic-ntk"))
    assert readers(notes) == ["llama.cpp", "vLLM"]
    assert "converts dynamic NTK as plain RoPE" in notes[0] and "use yarn (or ntk)" in notes[0]
    assert "4,096-row cos/sin cache while admitting 32,768 tokens" in notes[1]


def test_ntk_by_parts_warns_for_llama_cpp_with_the_override_that_fixes_it():
    (note,) = reader_notes(patched(LLAMA, "ntk-by-parts"))
    yarn_scale = 0.1 * math.log(8) + 1
    assert note.startswith("llama.cpp drops attention_factor 1 and scales by YaRN's own 1.2079")
    assert f"--override-kv llama.rope.scaling.attn_factor=float:{1 / yarn_scale:.6f}." in note


def test_yarn_with_other_betas_or_scale_warns_for_llama_cpp():
    notes = reader_notes(patched(LLAMA, "yarn", beta_fast=16, beta_slow=2, attention_factor=1.1))
    assert readers(notes) == ["llama.cpp", "llama.cpp"]
    assert "ignores beta_fast 16 / beta_slow 2" in notes[1]


def test_longrope_outside_phi3_is_plain_rope_in_llama_cpp_and_one_set_in_vllm():
    notes = reader_notes(patched(LLAMA, "longrope"))
    assert readers(notes) == ["llama.cpp", "vLLM"]
    assert "runs this llama checkpoint with plain RoPE; use yarn" in notes[0]
    assert "--max-model-len 32768" in notes[1] and "the same factors" in notes[1]
    two = [1.0] * 64
    notes = reader_notes(patched(LLAMA, "longrope", short_factor=two))
    assert "long_factor to every prompt, short ones included" in notes[1]


def test_phi3_static_methods_warn_where_the_attention_factor_is_lost():
    notes = reader_notes(patched(PHI3, "pi"))
    assert readers(notes) == ["transformers v4", "llama.cpp", "vLLM"]
    assert "refuses to load this Phi-3 config" in notes[0]
    derived = math.sqrt(1 + math.log(8) / math.log(4096))
    assert f"scales phi3 longrope by sqrt(1 + ln s / ln L0) = {derived:.4f}, not the 1.0000" in notes[1]
    # vLLM reads short_mscale / long_mscale, which ctxext writes: only its window default is said
    assert "original 4,096-token window" in notes[2]
    # plain longrope with its own attention factor keeps transformers v4 and llama.cpp
    assert readers(reader_notes(patched(PHI3, "longrope"))) == ["vLLM"]


def test_gpt_neox_has_no_rope_settings_in_llama_cpp():
    for method in ("ntk", "yarn"):
        (note,) = reader_notes(patched(NEOX, method))
        assert note.startswith("llama.cpp converts gpt_neox with neither rope_theta nor scaling")
    assert reader_notes(NEOX) == []  # the unpatched model: theta 10000 is llama.cpp's default too


def test_a_v5_only_config_warns_for_transformers_v4():
    v5_only = {k: v for k, v in LLAMA.items() if k != "rope_theta"} | {
        "rope_parameters": {"rope_type": "default", "rope_theta": 500000.0}}
    (note,) = reader_notes(v5_only)
    assert note.startswith("transformers v4 reads this v5-only config as rope_theta 10000")
    assert reader_notes(patched(v5_only, "ntk", 1)) == []  # ctxext writes both spellings


def test_each_note_is_one_sentence_and_names_a_tested_reader():
    configs = [patched(c, m) for c in (LLAMA, GEMMA3, PHI3, NEOX)
               for m in ("pi", "ntk", "dynamic-ntk", "ntk-by-parts", "yarn", "llama3", "longrope")
               if not (c is PHI3 and m == "dynamic-ntk")]
    notes = {n for c in configs for n in reader_notes(json.loads(json.dumps(c)))}
    assert len(notes) >= 8
    for note in notes:
        assert note.endswith(".") and "\n" not in note and note.count(". ") == 0, note
        assert any(note.startswith(reader) for reader in READER_VERSIONS), note


DEEPSEEK_V3 = {"model_type": "deepseek_v3", "hidden_size": 7168, "num_attention_heads": 128, "head_dim": 64,
               "qk_rope_head_dim": 64, "max_position_embeddings": 163840,
               "rope_parameters": {"rope_type": "yarn", "rope_theta": 10000.0, "factor": 40.0, "mscale": 1.0,
                                   "mscale_all_dim": 1.0, "original_max_position_embeddings": 4096,
                                   "beta_fast": 32, "beta_slow": 1}}
DEEPSEEK_V2 = DEEPSEEK_V3 | {"model_type": "deepseek_v2", "rope_parameters": DEEPSEEK_V3["rope_parameters"] | {
    "mscale": 0.707, "mscale_all_dim": 0.707}}
MINISTRAL3 = {"model_type": "ministral3", "hidden_size": 5120, "num_attention_heads": 32, "head_dim": 128,
              "max_position_embeddings": 262144,
              "rope_parameters": {"rope_type": "yarn", "rope_theta": 1e6, "factor": 16.0, "mscale": 1.0,
                                  "mscale_all_dim": 1.0, "original_max_position_embeddings": 16384,
                                  "beta_fast": 32.0, "beta_slow": 1.0, "llama_4_scaling_beta": 0.1}}


def replaced(config, method, **params):
    return patched_config_dict(config, plan_patch(read_layout(config), resolve(method, 8, **params), replace=True))


@pytest.mark.parametrize("config", [DEEPSEEK_V3, DEEPSEEK_V2, MINISTRAL3])
def test_the_family_spelling_of_yarn_gets_no_warning(config):
    """DeepSeek's mscale = mscale_all_dim (vLLM's deepseek_yarn, llama.cpp's deepseek2) and Ministral 3's 1 / 1
    (llama.cpp's mistral3) run in every reader as in transformers."""
    out = replaced(config, "yarn")
    rope = out["rope_parameters"]
    assert (rope["mscale"], rope["mscale_all_dim"]) == (config["rope_parameters"]["mscale"],) * 2
    assert reader_notes(out) == []


def test_vllm_runs_every_scaled_deepseek_rope_as_deepseek_yarn():
    for method in ("pi", "llama3"):
        notes = [n for n in reader_notes(replaced(DEEPSEEK_V3, method)) if n.startswith("vLLM")]
        assert len(notes) == 1 and "as DeepSeek's YaRN (deepseek_yarn)" in notes[0]
    # ntk-by-parts (attention_factor 1.0) becomes deepseek_llama_scaling, whose cos/sin scale is YaRN's own
    notes = reader_notes(replaced(DEEPSEEK_V3, "ntk-by-parts"))
    assert any(n.startswith("vLLM") and "cos/sin x1.2079" in n for n in notes), notes
    notes = reader_notes(replaced(DEEPSEEK_V3, "yarn", attention_factor=1.5))
    assert any(n.startswith("vLLM") and "where transformers uses x1.5000" in n for n in notes), notes


def test_llama_cpp_takes_a_fixed_mscale_and_says_so_when_another_is_written():
    deepseek = reader_notes(replaced(DEEPSEEK_V3, "yarn", mscale=0.5))  # llama.cpp's deepseek2: mscale = mscale_all_dim
    wanted = (0.05 * math.log(8) + 1) / (0.1 * math.log(8) + 1)  # transformers' cos/sin scale for 0.5 / 1
    assert [n for n in deepseek if n.startswith("llama.cpp")] == [
        f"llama.cpp scales cos/sin by 1.0000, not the {wanted:.4f} that mscale 0.5 / mscale_all_dim 1.0 give in "
        f"transformers; run llama.cpp with --override-kv deepseek2.rope.scaling.attn_factor=float:{wanted:.6f}."]
    ministral = reader_notes(replaced(MINISTRAL3, "yarn", mscale=0.5))  # llama.cpp's mistral3: mscale = 1
    assert any(n.startswith("llama.cpp scales cos/sin by 1.0000, not the 0.9139") for n in ministral), ministral
    llama = LLAMA | {"rope_parameters": {"rope_type": "default", "rope_theta": 10000.0}}
    generic = reader_notes(patched(llama, "yarn", 8, mscale=1.0, mscale_all_dim=1.0))  # its converter drops both
    assert any("(its converter drops both)" in n for n in generic), generic


def test_vllm_minicpm3_has_no_softmax_temperature():
    minicpm3 = {"model_type": "minicpm3", "hidden_size": 2560, "num_attention_heads": 40, "head_dim": 96,
                "qk_rope_head_dim": 32, "max_position_embeddings": 4096, "rope_theta": 10000.0}
    notes = reader_notes(patched(minicpm3, "yarn", 8))
    assert any(n.startswith("vLLM builds minicpm3's attention without the softmax temperature x1.4591") for n in notes)
