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


@pytest.mark.xfail(strict=True, reason="ctxext bug: the checkpoint path reads and writes only BltConfig's top-level "
                   "rope_parameters, which no BLT module reads; its sub-configs stay unscaled")
def test_the_checkpoint_scales_what_patch_model_scales(tmp_path):
    model = tiny_blt()
    model.save_pretrained(tmp_path / "src")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        out = ctxext.patch_checkpoint(tmp_path / "src", tmp_path / "out", "yarn", 8)
        ctxext.patch_model(model, "yarn", 8)
    from_disk = AutoModelForCausalLM.from_pretrained(out).eval()
    assert rope_types(from_disk) == rope_types(model)
    ids = token_ids(256)
    with torch.no_grad():
        torch.testing.assert_close(from_disk(ids).logits, model(ids).logits, rtol=0, atol=0)
