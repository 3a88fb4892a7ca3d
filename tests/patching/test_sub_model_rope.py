"""A model whose rotary modules read sub-configs, not the model's config: BLT (patcher, local encoder and decoder,
global transformer, each with its own rope_parameters; BltConfig's top-level rope_parameters is read by no module).

patch_model patches each rotary module's own config; the checkpoint must equal it (memory = stock reload of the
`ctxext patch` output), which is checked here against stock transformers' own forward.
"""

import warnings

import pytest
import torch
from transformers import AutoConfig, AutoModelForCausalLM

import ctxext
from tiny import token_ids
from walk import SIZED_HELD, sizes


def tiny_blt():
    torch.manual_seed(0)
    config = AutoConfig.for_model("blt", **(sizes("blt") | SIZED_HELD["blt"]))
    return AutoModelForCausalLM.from_config(config).eval()


def rope_types(model) -> dict[str, str]:
    return {name: module.config.rope_parameters["rope_type"] for name, module in model.named_modules()
            if type(module).__name__.endswith("RotaryEmbedding")}


def test_patch_model_scales_every_sub_model_and_reloads_exactly(tmp_path):
    model = tiny_blt()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        ctxext.patch_model(model, "yarn", 8)
    assert set(rope_types(model).values()) == {"yarn"}, rope_types(model)
    model.save_pretrained(tmp_path)
    reloaded = AutoModelForCausalLM.from_pretrained(tmp_path).eval()
    ids = token_ids(256)
    with torch.no_grad():
        torch.testing.assert_close(reloaded(ids).logits, model(ids).logits, rtol=0, atol=0)


def test_the_checkpoint_path_refuses_what_it_cannot_write_rather_than_an_unscaled_checkpoint(tmp_path):
    """ctxext's torch-free reading of config.json knows one rope section (the top level or text_config); BLT's modules
    read four sub-configs' ropes instead. The check on the model the config builds (ctxext.patching.verify) finds
    that the two readings disagree and refuses, naming ctxext, where the checkpoint path once wrote a checkpoint
    whose every rotary module reloaded unscaled."""
    from ctxext.errors import InternalError

    model = tiny_blt()
    model.save_pretrained(tmp_path / "src")
    with pytest.raises(InternalError, match=r"Internal error in ctxext .* disagree"), warnings.catch_warnings():
        warnings.simplefilter("ignore")
        ctxext.patch_checkpoint(tmp_path / "src", tmp_path / "out", "yarn", 8)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["src"]  # nothing written
