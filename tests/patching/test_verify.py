"""The checkpoint path never writes what cannot run: it checks a patch on the model the config builds.

Independent references: `patch_model`'s refusal on the real model (its sentence), and a stock build of the
written config (frequencies, attention scales, softmax scales) against the model ctxext patched.
"""

import json
import warnings

import pytest
import torch
from transformers import AutoModelForCausalLM

import ctxext
import ctxext.patching.checkpoint
from ctxext.patching import verify
from ctxext.patching.checkpoint import patch_checkpoint
from ctxext.rope.layout import RopeConfigError
from tiny import token_ids
from walk import build

METHODS = ["pi", "ntk", "dynamic-ntk", "ntk-by-parts", "yarn", "llama3"]


def saved(model_type: str, directory, window: int | None = None, **rope):
    """A tiny model_type checkpoint in `directory` (with `rope` as its rope_parameters and `window` its
    max_position_embeddings, when given); returns the model."""
    model, why = build(model_type)
    assert model is not None, why
    if rope:
        model.config.rope_parameters = rope
        model.config.max_position_embeddings = window or model.config.max_position_embeddings
        torch.manual_seed(0)
        model = type(model)(model.config).eval()
    model.save_pretrained(directory)
    return model


@pytest.mark.parametrize("model_type, method, words", [
    # patch_model refuses these on the built model; the torch-free checkpoint path once wrote them
    ("recurrent_gemma", "pi", "Stock transformers cannot build the rotary embedding"),
    ("recurrent_gemma", "dynamic-ntk", "Stock transformers cannot build the rotary embedding"),
    ("phi4_multimodal", "yarn", "its config refuses it"),
])
def test_a_checkpoint_patch_the_model_refuses_is_refused_and_nothing_is_written(model_type, method, words, tmp_path):
    src = tmp_path / "src"
    model = saved(model_type, src)
    with pytest.raises(RopeConfigError) as in_memory, warnings.catch_warnings():
        warnings.simplefilter("ignore")
        ctxext.patch_model(model, method, 4)
    assert words in str(in_memory.value)
    with pytest.raises(RopeConfigError) as on_disk:
        patch_checkpoint(src, tmp_path / "out", method, 4)
    assert str(on_disk.value) == str(in_memory.value)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["src"]  # no output, no staging directory


def test_a_shipped_deepseek_checkpoint_is_checked_on_its_softmax_scale_and_reloads_like_memory(tmp_path):
    # DeepSeek V3 derives each attention's softmax scale from mscale_all_dim and the factor at construction:
    # the check compares it, with the frequencies, between the patched model and a stock build of the output
    src, out = tmp_path / "src", tmp_path / "out"
    shipped = {"rope_type": "yarn", "rope_theta": 10000.0, "factor": 4.0, "original_max_position_embeddings": 64,
               "beta_fast": 32.0, "beta_slow": 1.0, "mscale": 1.0, "mscale_all_dim": 1.0}
    base = saved("deepseek_v3", src, window=256, **shipped)
    patch_checkpoint(src, out, "yarn", 8, replace=True)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        ctxext.patch_model(base, "yarn", 8, replace=True)
    reloaded = AutoModelForCausalLM.from_pretrained(out).eval()
    scales = {n: m.scaling for n, m in base.named_modules() if hasattr(m, "scaling") and type(m.scaling) is float}
    assert scales and scales == {n: m.scaling for n, m in reloaded.named_modules() if n in scales}
    ids = token_ids(300)
    with torch.no_grad():
        torch.testing.assert_close(reloaded(ids).logits, base(ids).logits, rtol=0, atol=0)


def test_a_stock_build_that_differs_from_the_patched_model_is_refused(tmp_path, monkeypatch):
    # the last line of defence: should the written config build other frequencies than the patch set (here the
    # plan is made to write another theta than the one patch_model applies), nothing is written
    src = tmp_path / "src"
    saved("olmo2", src)
    real = verify._numbers
    calls = []

    def skewed(model):
        found = real(model)
        calls.append(1)
        if len(calls) == 2:  # the stock build of the written config
            found = {k: (v * 1.5 if isinstance(v, torch.Tensor) else v) for k, v in found.items()}
        return found

    monkeypatch.setattr(verify, "_numbers", skewed)
    with pytest.raises(RopeConfigError, match=r"would build this olmo2 checkpoint differently .*inv_freq differs"):
        patch_checkpoint(src, tmp_path / "out", "yarn", 4)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["src"]


@pytest.mark.parametrize("model_type", sorted(verify.TORCH_FREE_TYPES))
def test_the_torch_free_types_need_no_model_check(model_type, tmp_path, monkeypatch):
    # what makes TORCH_FREE_TYPES true: for each type and method, the check finds nothing the config did not say
    src = tmp_path / "src"
    saved(model_type, src)
    assert not verify.needs_model_check(json.loads((src / "config.json").read_text()))
    monkeypatch.setattr(ctxext.patching.checkpoint, "needs_model_check", lambda config: True)
    for method in METHODS:
        out = tmp_path / method
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            patch_checkpoint(src, out, method, 4)
        assert json.loads((out / "config.json").read_text())["ctxext"]["method"] == method
