"""The model card written next to every checkpoint: what was done, in words a reader can check."""

import pytest

from ctxext.patching.card import READERS, render_model_card
from ctxext.rope.layout import read_layout
from ctxext.rope.methods import METHODS, resolve
from ctxext.rope.plan import plan_patch

LLAMA2 = {"model_type": "llama", "hidden_size": 4096, "num_attention_heads": 32, "max_position_embeddings": 4096,
          "rope_theta": 10000.0}
GEMMA3 = {"model_type": "gemma3_text", "head_dim": 256, "max_position_embeddings": 32768,
          "rope_parameters": {"sliding_attention": {"rope_type": "default", "rope_theta": 10000.0},
                              "full_attention": {"rope_type": "default", "rope_theta": 1000000.0}}}


def card(config, method, factor, source="meta-llama/Llama-2-7b-hf", **kwargs):
    layout = read_layout(config)
    params = {"long_factor": [float(factor)] * (layout.rotary_dim // 2)} if method == "longrope" else {}
    return render_model_card(source, plan_patch(layout, resolve(method, factor, **params)), **kwargs)


def test_the_card_names_method_factor_windows_and_what_was_written():
    text = card(LLAMA2, "yarn", 8)
    assert text.startswith("---\nlibrary_name: transformers\n") and "base_model: meta-llama/Llama-2-7b-hf\n" in text
    assert "# Llama-2-7b-hf-yarn-x8\n" in text
    for row in ["| method | `yarn`: ", "| factor | 8 |", "| original window | 4,096 tokens |", "| new window | 32,768 tokens |",
                "| rope_type written | `yarn` |", "| max_position_embeddings | 32,768 |",
                "| parameters | `beta_fast=32`, `beta_slow=1` |"]:
        assert row in text, row
    assert "to reach 32,768 tokens" in text and READERS["yarn"] in text
    assert "## Fine-tuning recipe" not in text and "## Evaluation" not in text


def test_the_written_window_and_the_readers_note_follow_the_method():
    text = card(LLAMA2, "pi", 4)
    assert "| new window | 16,384 tokens |" in text and "| max_position_embeddings | 4,096 |" in text  # vLLM's rule
    assert "pass `-c 16384` to use the whole window" in text
    assert set(READERS) == set(METHODS)  # every method says how readers take it


def test_a_local_source_has_no_base_model_and_layer_types_are_named(tmp_path):
    text = card(GEMMA3, "yarn", 4, source=str(tmp_path / "gemma"))
    assert "base_model:" not in text
    assert "| layer types patched | full_attention (sliding-window layers keep their rope) |" in text
    assert "| rope_type written | `per layer type` |" in text


def test_recipe_and_results_become_sections_in_order():
    text = card(LLAMA2, "yarn", 8, name="my-model", recipe={"steps": "400 x 64"}, results={"passkey at 32k": "0.95"})
    assert "# my-model\n" in text
    assert text.index("## Load") < text.index("## Fine-tuning recipe") < text.index("## Evaluation")
    assert "| steps | 400 x 64 |" in text and "| passkey at 32k | 0.95 |" in text


@pytest.mark.parametrize("method", list(METHODS))
def test_every_method_renders(method):
    text = card(LLAMA2, method, 2)
    assert f"`{method}`: {METHODS[method].summary}" in text and text.endswith("\n")
