"""Families as they ship their rope, patched the way a user extends them (issue 21).

    PYTHONPATH=. python -m pytest tests/patching/test_shipped_rope.py

Each case is a tiny model of a family with the rope settings its published checkpoints carry (original window
64). It is patched with `--replace --method yarn`, extended further, and restored with `--factor 1`; after each
step the model in memory, a stock save-and-reload of it, and the `ctxext patch` checkpoint of the previous step's
checkpoint give the same logits, and every attention module's softmax `scaling` in memory equals the reload's
(DeepSeek's is derived from the rope config when the model is built). The reference is stock transformers'
own reload of what ctxext wrote.
"""

from __future__ import annotations

import copy
import math
import warnings

import pytest
import torch
from transformers import AutoConfig, AutoModelForCausalLM

from ctxext import cli, patch_model
from ctxext.rope.methods import yarn_mscale
from tiny import token_ids
from walk import sizes

L0 = 64
YARN = {"rope_type": "yarn", "rope_theta": 10000.0, "original_max_position_embeddings": L0}

#: model type, config keys beyond the walk's tiny sizes: each family's shipped rope at a 64-token original window
SHIPPED = {
    "deepseek_v3 yarn x40 mscale 1/1": ("deepseek_v3", dict(max_position_embeddings=L0 * 40, rope_parameters=YARN | {
        "factor": 40.0, "mscale": 1.0, "mscale_all_dim": 1.0, "beta_fast": 32, "beta_slow": 1})),
    "deepseek_v2 yarn x40 mscale 0.707/0.707": ("deepseek_v2", dict(
        max_position_embeddings=L0 * 40, q_lora_rank=None, qk_rope_head_dim=16, qk_nope_head_dim=16, v_head_dim=16,
        kv_lora_rank=16, rope_parameters=YARN | {
            "factor": 40.0, "mscale": 0.707, "mscale_all_dim": 0.707, "beta_fast": 32, "beta_slow": 1})),
    "ministral3 yarn x16 llama_4_scaling_beta": ("ministral3", dict(
        head_dim=16, max_position_embeddings=L0 * 16, rope_parameters=YARN | {
            "factor": 16.0, "mscale": 1.0, "mscale_all_dim": 1.0, "beta_fast": 32.0, "beta_slow": 1.0,
            "llama_4_scaling_beta": 0.1})),
    "qwen3 yarn x4": ("qwen3", dict(head_dim=16, max_position_embeddings=L0 * 4, rope_parameters=YARN | {"factor": 4.0})),
    "llama4 llama3 x16": ("llama4_text", dict(max_position_embeddings=L0 * 16, rope_parameters={
        "rope_type": "llama3", "rope_theta": 500000.0, "factor": 16.0, "low_freq_factor": 1.0, "high_freq_factor": 4.0,
        "original_max_position_embeddings": L0})),
    "phi3 longrope": ("phi3", dict(max_position_embeddings=L0 * 4, original_max_position_embeddings=L0, rope_parameters={
        "rope_type": "longrope", "rope_theta": 10000.0, "original_max_position_embeddings": L0,
        "long_factor": [1.0, 1.1, 1.3, 1.7, 2.2, 2.9, 3.5, 4.0], "short_factor": [1.0] * 8})),
    # yarn on the compressed layers only, attention factor 1 (what its stock config sets from the shipped rope_scaling)
    "deepseek_v4 compress yarn x16": ("deepseek_v4", dict(max_position_embeddings=L0 * 16, rope_parameters={
        "main": {"rope_type": "default", "rope_theta": 10000.0, "partial_rotary_factor": 0.125},
        "compress": {"rope_type": "yarn", "rope_theta": 160000.0, "factor": 16.0, "original_max_position_embeddings": L0,
                     "attention_factor": 1.0, "beta_fast": 32.0, "beta_slow": 1.0, "partial_rotary_factor": 0.125}})),
    # linear x8 on the global layers; the config keeps the scaled window only, so the original one is given
    "gemma3 linear x8 global": ("gemma3_text", dict(max_position_embeddings=L0 * 8, rope_parameters={
        "sliding_attention": {"rope_type": "default", "rope_theta": 10000.0},
        "full_attention": {"rope_type": "linear", "rope_theta": 1000000.0, "factor": 8.0}})),
    # proportional p-RoPE on the global layers (a quarter of global_head_dim rotates): a uniform factor is what it carries
    "gemma4 proportional": ("gemma4_text", dict(rope_parameters={
        "sliding_attention": {"rope_type": "default", "rope_theta": 10000.0},
        "full_attention": {"rope_type": "proportional", "rope_theta": 1000000.0, "partial_rotary_factor": 0.25}})),
}
#: the method a case is extended with (yarn unless its rope cannot carry it) and extra patch arguments
METHOD = {"gemma4 proportional": "pi"}
EXTRA = {"gemma3 linear x8 global": {"original_max_position_embeddings": L0}}

#: --replace yarn at 8, extend further to 16, restore with factor 1
STEPS = (8, 16, 1)


def shipped_model(model_type: str, keys: dict):
    config = AutoConfig.for_model(model_type, **(sizes(model_type) | copy.deepcopy(keys)))
    torch.manual_seed(0)
    model = AutoModelForCausalLM.from_config(config)
    with torch.no_grad():
        for p in model.parameters():
            p.add_(torch.randn_like(p) * 0.02)
    return model.eval()


def softmax_scales(model) -> dict[str, float]:
    """Every module's softmax `scaling` (a plain number the attention multiplies q.k by), by name."""
    return {name: m.scaling for name, m in model.named_modules() if type(getattr(m, "scaling", None)) is float}


def logits(model, ids):
    with torch.no_grad():
        return model(ids).logits


@pytest.mark.parametrize("case", list(SHIPPED))
def test_a_shipped_rope_replaced_extended_and_restored_runs_as_its_stock_reload(case, tmp_path):
    model_type, keys = SHIPPED[case]
    model = shipped_model(model_type, keys)
    source = tmp_path / "shipped"
    model.save_pretrained(source)
    ids = token_ids(3 * L0)  # past the original window, inside every patched one
    method, extra = METHOD.get(case, "yarn"), EXTRA.get(case, {})
    options = [f"--{k.replace('_', '-')}={v}" for k, v in extra.items()]
    for step, factor in enumerate(STEPS):
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # reader notes: said elsewhere
            patch_model(model, method, factor, replace=True, **extra)
        saved, written = tmp_path / f"saved{step}", tmp_path / f"cli{step}"
        model.save_pretrained(saved)
        reloaded = AutoModelForCausalLM.from_pretrained(saved).eval()
        code = cli.main(["patch", str(source), "--method", method, "--factor", str(factor), "--replace",
                         *options, "--output", str(written)])
        assert code == 0
        checkpoint = AutoModelForCausalLM.from_pretrained(written).eval()
        assert softmax_scales(model) == softmax_scales(reloaded) == softmax_scales(checkpoint), (case, factor)
        expected = logits(reloaded, ids)
        torch.testing.assert_close(logits(model, ids), expected, rtol=0, atol=0)
        torch.testing.assert_close(logits(checkpoint, ids), expected, rtol=0, atol=0)
        source = written


def attention_scale_of(model) -> tuple[float, float]:
    """(cos/sin scale of the rotary module, first attention's softmax scale x sqrt(its q.k width))."""
    rotary = next(m for m in model.modules() if hasattr(m, "attention_scaling"))
    attention = next(m for m in model.modules() if type(getattr(m, "scaling", None)) is float)
    width = getattr(attention, "qk_head_dim", None) or attention.head_dim
    return rotary.attention_scaling, attention.scaling * math.sqrt(width)


@pytest.mark.parametrize("case, mscale_all_dim", [("deepseek_v3 yarn x40 mscale 1/1", 1.0),
                                                   ("deepseek_v2 yarn x40 mscale 0.707/0.707", 0.707)])
def test_yarn_on_deepseek_is_its_whole_head_softmax_temperature_with_the_shipped_mscale(case, mscale_all_dim):
    """Regression: --replace dropped mscale / mscale_all_dim, so DeepSeek got the generic YaRN (cos/sin of its 16
    rotary dims scaled, softmax untouched) instead of its family's softmax temperature over the whole head."""
    model = shipped_model(*SHIPPED[case])
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        patch_model(model, "yarn", 8, replace=True)
    rope = model.config.rope_parameters
    assert (rope["mscale"], rope["mscale_all_dim"]) == (mscale_all_dim, mscale_all_dim)
    cos_sin, softmax = attention_scale_of(model)
    assert cos_sin == 1.0
    assert math.isclose(softmax, yarn_mscale(8, mscale_all_dim) ** 2, rel_tol=1e-6)


def test_yarn_on_an_unscaled_deepseek_takes_v3s_mscale():
    """A DeepSeek config that carries no mscale (a restored patch, a plain config) gets DeepSeek V3's 1 / 1."""
    model_type, keys = SHIPPED["deepseek_v3 yarn x40 mscale 1/1"]
    model = shipped_model(model_type, {k: v for k, v in keys.items() if k != "rope_parameters"} | {
        "max_position_embeddings": L0})
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        patch_model(model, "yarn", 4)
    assert (model.config.rope_parameters["mscale"], model.config.rope_parameters["mscale_all_dim"]) == (1.0, 1.0)
    cos_sin, softmax = attention_scale_of(model)
    assert cos_sin == 1.0 and math.isclose(softmax, yarn_mscale(4) ** 2, rel_tol=1e-6)


def test_an_attention_factor_on_deepseek_sets_cos_sin_and_keeps_the_softmax_temperature():
    model = shipped_model(*SHIPPED["deepseek_v3 yarn x40 mscale 1/1"])
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        patch_model(model, "yarn", 8, replace=True, attention_factor=1.5)
    cos_sin, softmax = attention_scale_of(model)
    assert cos_sin == 1.5 and math.isclose(softmax, yarn_mscale(8) ** 2, rel_tol=1e-6)


def test_ministral3_keeps_its_attention_factor_of_one_across_a_replace():
    """Regression: --replace dropped Ministral 3's mscale = mscale_all_dim = 1 (cos/sin at 1), so the patch scaled
    cos/sin by 0.1 ln s + 1; an explicit attention_factor still overrides the pair."""
    model = shipped_model(*SHIPPED["ministral3 yarn x16 llama_4_scaling_beta"])
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        patch_model(model, "yarn", 8, replace=True)
        assert attention_scale_of(model)[0] == 1.0
        assert model.config.rope_parameters["llama_4_scaling_beta"] == 0.1
        patch_model(model, "yarn", 8, replace=True, attention_factor=1.25)
    assert attention_scale_of(model)[0] == 1.25
    assert "mscale" not in model.config.rope_parameters


def test_deepseek_v4_yarn_keeps_its_familys_attention_factor_of_one():
    """Regression: --replace dropped DeepSeek V4's attention_factor 1.0 on its compress rope (cos/sin then took
    0.1 ln s + 1), and a fresh yarn patch wrote none, where the family's stock config puts 1.0 on every yarn."""
    for keys in (SHIPPED["deepseek_v4 compress yarn x16"][1], {"max_position_embeddings": L0}):
        model = shipped_model("deepseek_v4", keys)
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            patch_model(model, "yarn", 8, replace=True)
        assert model.config.rope_parameters["compress"]["attention_factor"] == 1.0
        assert {m.compress_attention_scaling for m in model.modules() if hasattr(m, "compress_attention_scaling")} == {1.0}


def test_a_shipped_attention_factor_is_kept_across_a_replace_unless_one_is_given():
    keys = SHIPPED["qwen3 yarn x4"][1]
    model = shipped_model("qwen3", keys | {"rope_parameters": keys["rope_parameters"] | {"attention_factor": 0.9}})
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        patch_model(model, "yarn", 8, replace=True)
        assert attention_scale_of(model)[0] == 0.9
        patch_model(model, "yarn", 16, replace=True)  # extended again: the family's factor stays
        assert attention_scale_of(model)[0] == 0.9
        patch_model(model, "ntk-by-parts", 8, replace=True)
        patch_model(model, "yarn", 8, replace=True)  # ntk-by-parts' attention factor 1 is its own, not the family's
        assert math.isclose(attention_scale_of(model)[0], yarn_mscale(8), rel_tol=1e-6)
        patch_model(model, "yarn", 8, replace=True, attention_factor=1.2)
    assert attention_scale_of(model)[0] == 1.2


def test_generic_yarn_is_unchanged_where_no_mscale_is_shipped():
    model = shipped_model(*SHIPPED["qwen3 yarn x4"])
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        patch_model(model, "yarn", 8, replace=True)
    assert "mscale" not in model.config.rope_parameters
    assert math.isclose(attention_scale_of(model)[0], yarn_mscale(8), rel_tol=1e-6)


def test_info_and_the_card_say_where_the_attention_scale_goes(tmp_path, capsys):
    model = shipped_model(*SHIPPED["deepseek_v3 yarn x40 mscale 1/1"])
    model.save_pretrained(tmp_path / "v3")
    assert cli.main(["info", str(tmp_path / "v3")]) == 0
    line = next(l for l in capsys.readouterr().out.splitlines() if l.startswith("attention scale"))
    assert line.endswith(f"cos/sin of the 64 rotary dims x1.0000; softmax over the whole deepseek_v3 head "
                         f"x{yarn_mscale(40) ** 2:.4f} (mscale_all_dim)")
    assert cli.main(["patch", str(tmp_path / "v3"), "--method", "yarn", "--factor", "8", "--replace", "--output",
                     str(tmp_path / "out")]) == 0
    card = (tmp_path / "out" / "README.md").read_text()
    assert (f"| attention scale | cos/sin of the 64 rotary dims x1.0000; softmax over the whole head "
            f"x{yarn_mscale(8) ** 2:.4f} (mscale_all_dim, set when the model is built) |") in card
