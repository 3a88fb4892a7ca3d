"""Run-time truth: what attention actually receives in forward passes, for every method and architecture.

Checks made when a module is built, or by comparing a model with its own reload, pass for a scaling
that never engages (both copies run the same stock code). These tests hook the attention layers of a
real forward pass at lengths inside the original window, at it, past it, at the new window and beyond,
and compare their cos/sin with ctxext's formulas computed at that length (tests/runtime.py); then the
same after a stock save-and-reload. The all-architectures walk does the same for every model type
(tests/patching/test_all_architectures.py, slow).
"""

import warnings

import pytest
import torch
from transformers import AutoModelForCausalLM

import ctxext
from ctxext.rope.layout import read_layout
from runtime import Expectation, capture, check_lengths, mismatch
from tiny import ARCHITECTURES, tiny_model

L0 = 64
FACTOR = 8
METHODS = ["pi", "ntk", "dynamic-ntk", "ntk-by-parts", "yarn", "dynamic-yarn", "llama3", "longrope"]
#: growing as a user's prompts would, past the window, then back inside the original window
LENGTHS = [L0 // 2, L0, L0 + 1, 4 * L0, FACTOR * L0, (FACTOR + 1) * L0, L0 // 2]
REFUSED = {("phi3", "dynamic-ntk")}  # a longrope-only config cannot say it (tests/patching/test_model.py)


def longrope_params(model) -> dict:
    half = read_layout(model.config.to_dict()).rotary_dim // 2
    return {"long_factor": [1.0 + 7.0 * (i / (half - 1)) ** 2 for i in range(half)],
            "short_factor": [1.0 + 0.5 * i / (half - 1) for i in range(half)]}


def patched(arch: str, method: str):
    model = tiny_model(arch)
    params = longrope_params(model) if method == "longrope" else {}
    expect = Expectation.before_patch(model, method, FACTOR, **params)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # dynamic-yarn says it saves as static yarn
        ctxext.patch_model(model, method, FACTOR, **params)
    return model, expect


@pytest.mark.parametrize("arch,method", [(a, m) for a in ARCHITECTURES for m in METHODS if (a, m) not in REFUSED])
def test_attention_gets_the_methods_cos_sin_in_memory_and_after_a_stock_reload(arch, method, tmp_path):
    model, expect = patched(arch, method)
    assert check_lengths(model, expect, LENGTHS) == []
    model.save_pretrained(tmp_path)
    reloaded = AutoModelForCausalLM.from_pretrained(tmp_path).eval()
    assert check_lengths(reloaded, expect.reloaded(), LENGTHS) == []


@pytest.mark.parametrize("arch,method", [(a, m) for a in ["llama", "qwen2", "gemma3_text", "phi3", "gpt_neox"]
                                         for m in ["dynamic-ntk", "dynamic-yarn", "longrope"] if (a, m) not in REFUSED])
def test_a_real_forward_over_every_token_agrees(arch, method):
    """The scattered position ids stand for a real pass: the same check over all (s+1) x L0 tokens."""
    model, expect = patched(arch, method)
    assert check_lengths(model, expect, [(FACTOR + 1) * L0, L0 // 2], full=True) == []


def test_the_check_sees_a_scaling_that_does_not_engage():
    """The checker itself: a model whose config says yarn but whose rotary module kept its frequencies."""
    model, expect = patched("llama", "yarn")
    unscaled = tiny_model("llama").model.rotary_emb
    model.model.rotary_emb.inv_freq.copy_(unscaled.inv_freq)
    problems = check_lengths(model, expect, [FACTOR * L0])
    assert problems and all("beyond tolerance" in p for p in problems)
    # and one whose attention scale is lost
    model, expect = patched("llama", "yarn")
    model.model.rotary_emb.attention_scaling = 1.0
    assert check_lengths(model, expect, [L0 // 2])


def test_dynamic_ntk_on_gemma3_engages_inside_its_window():
    """Regression (issue: Gemma 3's max_position_embeddings written as L0 x s made stock dynamic NTK a no-op)."""
    model, expect = patched("gemma3_text", "dynamic-ntk")
    seen = capture(model, 4 * L0)
    full = [s for s in seen if s.layer_type == "full_attention"]
    assert full
    original = Expectation("ntk", 1.0, L0, {}, expect.rotary_dim, expect.theta, expect.targets)
    inv_freq, scale = original.frequencies("full_attention", 4 * L0)
    assert all(mismatch(s, inv_freq, scale, 4 * L0) for s in full)  # not the original frequencies
    assert check_lengths(model, expect, [4 * L0]) == []
