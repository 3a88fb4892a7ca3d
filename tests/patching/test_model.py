"""patch_model on tiny models of many architectures: frequencies, config, stock save-and-reload."""

import copy
import json
import math
import warnings

import pytest
import torch
from transformers import AutoConfig, AutoModelForCausalLM
from transformers.models.llama.modeling_llama import apply_rotary_pos_emb

import ctxext
from ctxext.rope.functions import compute_inv_freq, default_inv_freq
from ctxext.rope.layout import read_layout
from tiny import ARCHITECTURES, tiny_config, tiny_model, token_ids

L0 = 64  # the tiny models' window
STOCK_METHODS = ["pi", "ntk", "dynamic-ntk", "ntk-by-parts", "yarn", "llama3", "longrope"]


def method_params(method: str, model) -> dict:
    """Parameters a method cannot do without: longrope's factors, one per rotary frequency of `model`."""
    if method != "longrope":
        return {}
    half = read_layout(model.config.to_dict()).rotary_dim // 2
    return {"long_factor": [1.0 + 7.0 * (i / max(1, half - 1)) ** 2 for i in range(half)],
            "short_factor": [1.0 + 0.5 * i / max(1, half - 1) for i in range(half)]}


def rotary_modules(model):
    return [m for m in model.modules() if hasattr(m, "attention_scaling") or hasattr(m, "full_attention_inv_freq")]


def snapshot(model):
    """Everything a patch could touch: parameters, every buffer, attention scales, config."""
    state = {k: v.clone() for k, v in model.named_parameters()}
    state |= {k: v.clone() for k, v in model.named_buffers()}
    scales = [copy.deepcopy({k: v for k, v in vars(m).items() if "scaling" in k or "rope_type" in k})
              for m in rotary_modules(model)]
    return state, scales, json.dumps(model.config.to_dict(), sort_keys=True, default=str)


def assert_same_snapshot(a, b):
    assert a[0].keys() == b[0].keys()
    for key in a[0]:
        torch.testing.assert_close(a[0][key], b[0][key], rtol=0, atol=0, msg=key)
    assert a[1] == b[1]
    assert a[2] == b[2]


def reload(model, tmp_path):
    model.save_pretrained(tmp_path)
    return AutoModelForCausalLM.from_pretrained(tmp_path).eval()


def cases():
    for arch in ARCHITECTURES:
        for method in STOCK_METHODS:
            if arch == "phi3" and method == "dynamic-ntk":
                continue  # a longrope-only config cannot say it (see test_phi3_takes_static_methods_as_longrope)
            yield arch, method


@pytest.mark.parametrize("arch,method", list(cases()))
def test_save_and_stock_reload_give_identical_logits(arch, method, tmp_path):
    model = tiny_model(arch)
    ctxext.patch_model(model, method, 8, **method_params(method, model))
    ids = token_ids(8 * L0)  # the whole new window: dynamic methods grow their frequencies here
    with torch.no_grad():
        before = model(ids).logits
        inside = model(ids[:, : L0 // 2]).logits  # and back inside the original window (longrope's short set)
        reloaded = reload(model, tmp_path)
        after = reloaded(ids).logits
        inside_after = reloaded(ids[:, : L0 // 2]).logits
    torch.testing.assert_close(after, before, rtol=0, atol=0)
    torch.testing.assert_close(inside_after, inside, rtol=0, atol=0)


@pytest.mark.parametrize("arch", ARCHITECTURES)
def test_patched_frequencies_are_the_method_function(arch):
    model = tiny_model(arch)
    method = "ntk" if arch == "phi3" else "yarn"
    layout = read_layout(model.config.to_dict())
    thetas = {t: layout.rope[t]["rope_theta"] for t in layout.rope}
    ctxext.patch_model(model, method, 8)
    (rotary,) = {id(m): m for m in rotary_modules(model)}.values()
    for layer_type in layout.targets:
        prefix = "" if layer_type is None else f"{layer_type}_"
        expected, scale = compute_inv_freq(method, layout.rotary_dim, thetas[layer_type], 8, L0)
        torch.testing.assert_close(getattr(rotary, f"{prefix}inv_freq"), expected, rtol=0, atol=0)
        assert getattr(rotary, f"{prefix}attention_scaling") == scale


def test_gemma3_patches_global_layers_and_leaves_sliding_ones():
    model = tiny_model("gemma3_text")
    rotary = model.model.rotary_emb
    sliding_before = rotary.sliding_attention_inv_freq.clone()
    ctxext.patch_model(model, "yarn", 8)
    torch.testing.assert_close(rotary.sliding_attention_inv_freq, sliding_before, rtol=0, atol=0)
    assert rotary.sliding_attention_attention_scaling == 1.0
    expected, scale = compute_inv_freq("yarn", 16, 1e6, 8, L0)
    torch.testing.assert_close(rotary.full_attention_inv_freq, expected, rtol=0, atol=0)
    assert rotary.full_attention_attention_scaling == scale
    params = model.config.rope_parameters
    assert params["sliding_attention"] == {"rope_type": "default", "rope_theta": 10000.0}
    assert params["full_attention"]["rope_type"] == "yarn"
    # the v4 spelling of Gemma 3: global rope_theta + rope_scaling, local rope_local_base_freq
    saved = model.config.to_dict()
    assert saved["rope_theta"] == 1e6 and saved["rope_local_base_freq"] == 10000.0
    assert saved["rope_scaling"]["rope_type"] == "yarn"


def test_config_is_written_in_both_spellings(tmp_path):
    model = tiny_model("phi")  # partial rotary 0.5, the case a v4 reader gets wrong from a v5-only config
    ctxext.patch_model(model, "yarn", 8)
    model.save_pretrained(tmp_path)
    saved = json.loads((tmp_path / "config.json").read_text())
    assert saved["rope_parameters"] == {
        "rope_type": "yarn", "rope_theta": 10000.0, "factor": 8.0, "original_max_position_embeddings": L0,
        "partial_rotary_factor": 0.5, "beta_fast": 32.0, "beta_slow": 1.0,
    }
    assert saved["rope_scaling"] == {"rope_type": "yarn", "type": "yarn", "factor": 8.0, "beta_fast": 32.0,
                                     "beta_slow": 1.0, "original_max_position_embeddings": L0}
    assert saved["rope_theta"] == 10000.0 and saved["partial_rotary_factor"] == 0.5
    assert saved["max_position_embeddings"] == 8 * L0
    assert saved["original_max_position_embeddings"] == L0
    assert saved["ctxext"]["method"] == "yarn" and saved["ctxext"]["window"] == 8 * L0


@pytest.mark.parametrize("arch", ["llama", "phi", "gpt_neox", "gemma3_text"])
@pytest.mark.parametrize("method", ["pi", "ntk", "yarn", "llama3", "dynamic-ntk"])
def test_each_spelling_alone_gives_the_same_frequencies(arch, method, tmp_path):
    """A reader that knows only v5's rope_parameters, or only v4's rope_scaling + rope_theta, agrees."""
    model = tiny_model(arch)
    ctxext.patch_model(model, method, 8)
    model.config.save_pretrained(tmp_path)
    full = json.loads((tmp_path / "config.json").read_text())
    rotary_class = type(rotary_modules(model)[0])
    reference = rotary_class(AutoConfig.from_pretrained(tmp_path))
    v5_only = {k: v for k, v in full.items() if k not in ("rope_scaling", "rope_theta", "partial_rotary_factor",
                                                          "rope_local_base_freq", "rotary_pct",
                                                          "rotary_emb_base")}
    v4_only = {k: v for k, v in full.items() if k != "rope_parameters"}
    for spelling in (v5_only, v4_only):
        (tmp_path / "config.json").write_text(json.dumps(spelling))
        rotary = rotary_class(AutoConfig.from_pretrained(tmp_path))
        for name, buffer in reference.named_buffers():
            torch.testing.assert_close(dict(rotary.named_buffers())[name], buffer, rtol=0, atol=0)
        assert {k: v for k, v in vars(rotary).items() if "scaling" in k} == \
               {k: v for k, v in vars(reference).items() if "scaling" in k}


def test_max_position_embeddings_follows_the_window_rule():
    # pi is spelled as llama3 (every band divided): vLLM and llama.cpp both take its window as is
    expected = {"pi": 8 * L0, "dynamic-ntk": L0, "ntk": 8 * L0, "yarn": 8 * L0, "ntk-by-parts": 8 * L0,
                "llama3": 8 * L0, "longrope": 8 * L0}
    for method, window in expected.items():
        model = tiny_model("llama")
        ctxext.patch_model(model, method, 8, **method_params(method, model))
        assert model.config.max_position_embeddings == window, method
        assert read_layout(model.config.to_dict()).window == 8 * L0
    gemma = tiny_model("gemma3_text")  # vLLM does not multiply for Gemma 3: linear as is
    ctxext.patch_model(gemma, "pi", 8)
    assert gemma.config.max_position_embeddings == 8 * L0
    assert gemma.config.rope_parameters["full_attention"]["rope_type"] == "linear"
    gemma = tiny_model("gemma3_text")  # but stock dynamic NTK reads it as the original window there too
    ctxext.patch_model(gemma, "dynamic-ntk", 8)
    assert gemma.config.max_position_embeddings == L0


def test_dynamic_ntk_engages_on_gemma3_inside_its_window():
    """Regression: with max_position_embeddings written as L0 x s, stock dynamic NTK never scaled inside it."""
    model = tiny_model("gemma3_text")
    ctxext.patch_model(model, "dynamic-ntk", 8)
    rotary = model.model.rotary_emb
    with torch.no_grad():
        model(token_ids(4 * L0))
    expected, _ = compute_inv_freq("dynamic-ntk", 16, 1e6, 8, L0, seq_len=4 * L0)
    assert not torch.equal(expected, default_inv_freq(16, 1e6))
    # stock computes the run-time base from a float32 tensor length: equal to a float32 rounding
    torch.testing.assert_close(rotary.full_attention_inv_freq, expected, rtol=2.4e-7, atol=0)
    torch.testing.assert_close(rotary.sliding_attention_inv_freq, default_inv_freq(16, 10000.0), rtol=0, atol=0)
    assert read_layout(model.config.to_dict()).window == 8 * L0


def test_relative_position_property_survives_patching():
    """q.k after rotation depends on m - n only, for every method (Su et al. 2021)."""
    torch.manual_seed(0)
    q, k = torch.randn(1, 1, 1, 16), torch.randn(1, 1, 1, 16)
    for method in STOCK_METHODS + ["dynamic-yarn"]:
        model = tiny_model("llama")
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            ctxext.patch_model(model, method, 8, **method_params(method, model))
        rotary = model.model.rotary_emb
        positions = torch.tensor([[3, 40, 300, 337]])
        cos, sin = rotary(q, positions)  # [1, 4, 16]

        def score(m, n):
            qm, _ = apply_rotary_pos_emb(q, q, cos[:, m:m + 1], sin[:, m:m + 1])
            kn, _ = apply_rotary_pos_emb(k, k, cos[:, n:n + 1], sin[:, n:n + 1])
            return (qm * kn).sum()

        # (40 - 3) == (337 - 300): same relative distance, far apart in absolute position
        torch.testing.assert_close(score(1, 0), score(3, 2), rtol=1e-4, atol=1e-5, msg=method)
        assert not torch.isclose(score(1, 0), score(2, 0), rtol=1e-3)


def test_bf16_model_keeps_float32_frequencies():
    model = tiny_model("llama", dtype=torch.bfloat16)
    ctxext.patch_model(model, "yarn", 8)
    rotary = model.model.rotary_emb
    assert rotary.inv_freq.dtype == torch.float32
    torch.testing.assert_close(rotary.inv_freq, compute_inv_freq("yarn", 16, 10000.0, 8, L0)[0], rtol=0, atol=0)


@pytest.mark.parametrize("bad", [
    dict(method="yarn", factor=0.5),
    dict(method="rope9", factor=8),
    dict(method="yarn", factor="8"),
    dict(method="yarn", factor=8, beta=2),
    dict(method="yarn", factor=8, beta_fast=1, beta_slow=2),
    dict(method="yarn", factor=8, original_max_position_embeddings=-1),
])
def test_bad_input_raises_and_leaves_the_model_untouched(bad):
    model = tiny_model("llama")
    before = snapshot(model)
    with pytest.raises((ValueError, TypeError)) as info:
        ctxext.patch_model(model, **bad)
    assert str(info.value).endswith(".")  # a sentence
    assert_same_snapshot(before, snapshot(model))


@pytest.mark.parametrize("model_type,uses", [("gpt2", "learned absolute"), ("opt", "learned absolute"),
                                            ("bloom", "ALiBi")])
def test_model_without_rope_is_refused(model_type, uses):
    config = AutoConfig.for_model(model_type, vocab_size=64, hidden_size=32, n_embd=32, n_layer=1, n_head=2,
                                  num_hidden_layers=1, num_attention_heads=2, ffn_dim=64, word_embed_proj_dim=32)
    model = AutoModelForCausalLM.from_config(config)
    before = snapshot(model)
    with pytest.raises(ValueError, match=f"has no rotary position embeddings \\(it uses {uses}"):
        ctxext.patch_model(model, "yarn", 8)
    assert_same_snapshot(before, snapshot(model))


SCALED = {
    "llama3": dict(model="llama", rope_parameters={"rope_type": "llama3", "rope_theta": 500000.0, "factor": 8.0,
                                                     "low_freq_factor": 1.0, "high_freq_factor": 4.0,
                                                     "original_max_position_embeddings": 32},
                   max_position_embeddings=256),
    "yarn": dict(model="qwen2", rope_parameters={"rope_type": "yarn", "rope_theta": 1e6, "factor": 4.0,
                                                   "original_max_position_embeddings": 64},
                 max_position_embeddings=64),
    "linear": dict(model="llama", rope_parameters={"rope_type": "linear", "rope_theta": 10000.0, "factor": 4.0}),
}


@pytest.mark.parametrize("kind", list(SCALED))
def test_already_scaled_model_is_refused_unless_replaced(kind):
    spec = dict(SCALED[kind])
    model = tiny_model(spec.pop("model"), **spec)
    before = snapshot(model)
    with pytest.raises(ValueError, match=f"already uses {kind}.*replace=True"):
        ctxext.patch_model(model, "yarn", 8)
    assert_same_snapshot(before, snapshot(model))
    ctxext.patch_model(model, "yarn", 8, replace=True)
    layout = read_layout(model.config.to_dict())
    original = {"llama3": 32, "yarn": 64, "linear": L0}[kind]
    assert model.config.rope_parameters["original_max_position_embeddings"] == original
    assert layout.window == 8 * original


def test_longrope_phi3_is_recognised():
    short = [1.0] * 8
    model = tiny_model("phi3", rope_parameters={"rope_type": "longrope", "rope_theta": 10000.0, "short_factor": short,
                                                "long_factor": [4.0] * 8}, original_max_position_embeddings=32,
                       max_position_embeddings=128)
    with pytest.raises(ValueError, match="already uses longrope"):
        ctxext.patch_model(model, "ntk", 8)


@pytest.mark.parametrize("method", ["pi", "ntk-by-parts", "yarn", "llama3"])
def test_phi3_takes_static_methods_as_longrope(method, tmp_path):
    """Phi-3's stock config accepts only longrope: per-dim factors give the method's frequencies and scale."""
    model = tiny_model("phi3")
    ctxext.patch_model(model, method, 8)
    rotary = model.model.rotary_emb
    expected, scale = compute_inv_freq(method, 16, 10000.0, 8, L0)
    torch.testing.assert_close(rotary.inv_freq, expected, rtol=1.2e-7, atol=0)  # one float32 rounding at most
    assert rotary.attention_scaling == scale
    rope = model.config.rope_parameters
    assert rope["rope_type"] == "longrope" and rope["long_factor"] == rope["short_factor"]
    assert model.config.to_dict()["ctxext"]["method"] == method
    ids = token_ids(8 * L0 + 16)  # past the window, where stock switches to long_factor
    with torch.no_grad():
        before, inside = model(ids).logits, model(ids[:, :L0]).logits
        reloaded = reload(model, tmp_path)
        torch.testing.assert_close(reloaded(ids).logits, before, rtol=0, atol=0)
        torch.testing.assert_close(reloaded(ids[:, :L0]).logits, inside, rtol=0, atol=0)
    assert reloaded.model.rotary_emb.attention_scaling == scale


def test_phi3_refuses_dynamic_ntk_and_names_what_works():
    model = tiny_model("phi3")
    before = snapshot(model)
    with pytest.raises(ValueError, match="phi3 config accepts only rope types default, longrope.*use ntk, pi, "
                                         "ntk-by-parts, yarn, llama3 or longrope"):
        ctxext.patch_model(model, "dynamic-ntk", 8)
    assert_same_snapshot(before, snapshot(model))


def test_longrope_switches_factor_sets_at_the_original_window():
    model = tiny_model("llama")
    params = method_params("longrope", model)
    ctxext.patch_model(model, "longrope", 8, **params)
    rotary = model.model.rotary_emb
    base = default_inv_freq(16, 10000.0)
    with torch.no_grad():
        model(token_ids(L0))
        torch.testing.assert_close(rotary.inv_freq, base / torch.tensor(params["short_factor"]), rtol=1.2e-7, atol=0)
        model(token_ids(L0 + 1))
        torch.testing.assert_close(rotary.inv_freq, base / torch.tensor(params["long_factor"]), rtol=1.2e-7, atol=0)
    assert rotary.attention_scaling == pytest.approx(math.sqrt(1 + math.log(8) / math.log(L0)))


def test_longrope_factor_count_is_checked_against_the_model():
    model = tiny_model("phi")  # partial rotary 0.5: 8 rotary dims, 4 frequencies
    before = snapshot(model)
    with pytest.raises(ValueError, match="long_factor has 8 numbers, but this model has 8 rotary dimensions, so it "
                                         "needs 4"):
        ctxext.patch_model(model, "longrope", 8, long_factor=[2.0] * 8)
    assert_same_snapshot(before, snapshot(model))


def test_a_ctxext_patch_is_recognised_after_a_stock_round_trip(tmp_path):
    model = tiny_model("llama")
    ctxext.patch_model(model, "ntk", 4)  # a plain theta change: invisible without ctxext's record
    reloaded = reload(model, tmp_path)
    with pytest.raises(ValueError, match=r"already uses ntk \(factor 4, patched by ctxext from a 64-token window\)"):
        ctxext.patch_model(reloaded, "yarn", 8)
    # replace counts from the original window and the original theta, not the raised one
    ctxext.patch_model(reloaded, "yarn", 8, replace=True)
    assert reloaded.config.rope_parameters["rope_theta"] == 10000.0
    torch.testing.assert_close(reloaded.model.rotary_emb.inv_freq, compute_inv_freq("yarn", 16, 10000.0, 8, L0)[0],
                               rtol=0, atol=0)


def test_factor_one_with_replace_restores_the_unscaled_model(tmp_path):
    plain = tiny_model("llama")
    model = tiny_model("llama")
    ctxext.patch_model(model, "yarn", 8)
    ctxext.patch_model(model, "pi", 1, replace=True)
    ids = token_ids(2 * L0)
    with torch.no_grad():
        torch.testing.assert_close(model(ids).logits, plain(ids).logits, rtol=0, atol=0)
    config = model.config.to_dict()
    assert config["rope_parameters"] == {"rope_type": "default", "rope_theta": 10000.0}
    assert config["max_position_embeddings"] == L0 and "ctxext" not in config


def test_dynamic_yarn_recomputes_from_the_length_and_warns(tmp_path):
    model = tiny_model("llama")
    with pytest.warns(UserWarning, match="dynamic-yarn is not expressible in a stock config"):
        ctxext.patch_model(model, "dynamic-yarn", 8)
    rotary = model.model.rotary_emb
    with torch.no_grad():
        model(token_ids(L0 // 2))
        torch.testing.assert_close(rotary.inv_freq, default_inv_freq(16, 10000.0), rtol=0, atol=0)
        model(token_ids(4 * L0))
        expected, scale = compute_inv_freq("yarn", 16, 10000.0, 4, L0)
        torch.testing.assert_close(rotary.inv_freq, expected, rtol=0, atol=0)
        assert rotary.attention_scaling == scale
        # at the full window it is exactly the static YaRN that stock transformers reloads
        ids = token_ids(8 * L0)
        before = model(ids).logits
        after = reload(model, tmp_path)(ids).logits
    torch.testing.assert_close(after, before, rtol=0, atol=0)
    assert model.config.to_dict()["ctxext"]["method"] == "dynamic-yarn"


def test_repatching_with_replace_removes_the_dynamic_hook():
    model = tiny_model("llama")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        ctxext.patch_model(model, "dynamic-yarn", 8)
    ctxext.patch_model(model, "pi", 8, replace=True)
    assert not model.model.rotary_emb._forward_pre_hooks
    with torch.no_grad():
        model(token_ids(4 * L0))
    torch.testing.assert_close(model.model.rotary_emb.inv_freq, default_inv_freq(16, 10000.0) / 8, rtol=0, atol=0)


def test_dynamic_yarn_at_factor_one_with_replace_installs_no_hook(tmp_path):
    """Regression: factor 1 writes an unscaled config, so the model must not scale past L0 in memory either."""
    plain = tiny_model("llama")
    model = tiny_model("llama")
    ctxext.patch_model(model, "yarn", 8)
    ctxext.patch_model(model, "dynamic-yarn", 1, replace=True)
    assert not model.model.rotary_emb._forward_pre_hooks
    ids = token_ids(4 * L0)
    with torch.no_grad():
        logits = model(ids).logits
        torch.testing.assert_close(logits, plain(ids).logits, rtol=0, atol=0)
        torch.testing.assert_close(reload(model, tmp_path)(ids).logits, logits, rtol=0, atol=0)
    torch.testing.assert_close(model.model.rotary_emb.inv_freq, default_inv_freq(16, 10000.0), rtol=0, atol=0)


def test_original_window_can_be_given():
    model = tiny_model("llama")
    ctxext.patch_model(model, "yarn", 4, original_max_position_embeddings=32)
    assert model.config.max_position_embeddings == 128
    torch.testing.assert_close(model.model.rotary_emb.inv_freq, compute_inv_freq("yarn", 16, 10000.0, 4, 32)[0],
                               rtol=0, atol=0)


def test_patch_model_returns_the_same_object():
    model = tiny_model("llama")
    assert ctxext.patch_model(model, "pi", 2) is model
    assert tiny_config("llama").max_position_embeddings == L0


def test_a_scaling_that_stock_never_engages_is_refused(monkeypatch):
    """The stock-reading check runs the stock rotary forward at several lengths: with the old window rule
    (Gemma 3's dynamic NTK at max_position_embeddings = L0 x s) stock keeps the original frequencies."""
    import ctxext.rope.plan as plan

    monkeypatch.setattr(plan, "window_rule", lambda scaling, model_type, *_: scaling.window)
    model = tiny_model("gemma3_text")
    before = snapshot(model)
    with pytest.raises(ValueError, match="does not use the frequencies ctxext computes for dynamic-ntk at 65 tokens "
                                         r"\(it keeps the original frequencies\)"):
        ctxext.patch_model(model, "dynamic-ntk", 8)
    assert_same_snapshot(before, snapshot(model))


@pytest.mark.parametrize("arch", ["llama", "gemma3_text"])
def test_a_patch_planned_once_applies_like_patch_model_without_planning_again(arch, monkeypatch):
    import ctxext.patching.model
    from ctxext.patching.model import apply_patch
    from ctxext.rope.methods import resolve
    from ctxext.rope.plan import plan_patch

    reference = ctxext.patch_model(tiny_model(arch), "yarn", 4)
    model = tiny_model(arch)
    patch = plan_patch(read_layout(model.config.to_dict()), resolve("yarn", 4))

    def no_second_plan(*args, **kwargs):
        raise AssertionError("apply_patch planned the patch again")

    monkeypatch.setattr(ctxext.patching.model, "plan_patch", no_second_plan)
    assert apply_patch(model, patch) is model
    assert model.config.to_dict() == reference.config.to_dict()
    ids = token_ids(4 * 64)
    with torch.no_grad():
        torch.testing.assert_close(model(ids).logits, reference(ids).logits, rtol=0, atol=0)


def test_a_patch_planned_for_another_config_is_refused_and_changes_nothing():
    from ctxext.patching.model import apply_patch
    from ctxext.rope.layout import RopeConfigError
    from ctxext.rope.methods import resolve
    from ctxext.rope.plan import plan_patch

    other = tiny_model("llama", max_position_embeddings=128)
    patch = plan_patch(read_layout(other.config.to_dict()), resolve("yarn", 4))
    model = tiny_model("llama")
    before = model.config.to_dict(), model.model.rotary_emb.inv_freq.clone()
    with pytest.raises(RopeConfigError, match="planned for another llama rope layout"):
        apply_patch(model, patch)
    assert model.config.to_dict() == before[0] and torch.equal(model.model.rotary_emb.inv_freq, before[1])


#: DeepSeek V3 as it ships (yarn x40 with mscale = mscale_all_dim = 1), at tiny sizes: stock transformers sets
#: each attention's softmax `scaling` when it builds the model, from mscale_all_dim and the factor
DEEPSEEK_V3 = dict(num_key_value_heads=4, n_routed_experts=4, num_experts_per_tok=2, moe_intermediate_size=32,
                   n_group=1, topk_group=1, first_k_dense_replace=1, qk_rope_head_dim=16, qk_nope_head_dim=16,
                   v_head_dim=16, kv_lora_rank=16, q_lora_rank=None, max_position_embeddings=64 * 40,
                   rope_parameters={"rope_type": "yarn", "rope_theta": 10000.0, "factor": 40.0,
                                    "original_max_position_embeddings": 64, "mscale": 1.0, "mscale_all_dim": 1.0,
                                    "beta_fast": 32, "beta_slow": 1})


@pytest.mark.parametrize("method, factor", [("yarn", 4), ("pi", 8), ("ntk", 2), ("yarn", 1)])
def test_what_the_model_derives_from_rope_at_construction_follows_the_patch(method, factor, tmp_path):
    """Regression: patch_model rewrote only the rotary modules, so DeepSeek's softmax scale kept the shipped
    x40's value in memory while a stock reload of the same patch built another (0.331 against 0.177 here):
    the model differed from its own saved copy, and --factor 1 --replace did not restore the unscaled model."""
    model = tiny_model("deepseek_v3", **DEEPSEEK_V3)
    shipped = model.model.layers[0].self_attn.scaling
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        ctxext.patch_model(model, method, factor, replace=True)
    model.save_pretrained(tmp_path)
    reloaded = AutoModelForCausalLM.from_pretrained(tmp_path).eval()
    scales = [(a.self_attn.scaling, b.self_attn.scaling) for a, b in zip(model.model.layers, reloaded.model.layers)]
    assert all(a == b for a, b in scales) and scales[0][0] != shipped, scales
    ids = token_ids(4 * 64)
    with torch.no_grad():
        torch.testing.assert_close(model(ids).logits, reloaded(ids).logits, rtol=0, atol=0)
    if factor == 1:  # restored: the model that the unscaled config builds, with the same weights
        unscaled = {k: v for k, v in DEEPSEEK_V3.items() if k not in ("rope_parameters", "max_position_embeddings")}
        stock = AutoModelForCausalLM.from_config(tiny_config("deepseek_v3", **unscaled)).eval()
        stock.load_state_dict(model.state_dict())
        assert stock.model.layers[0].self_attn.scaling == model.model.layers[0].self_attn.scaling
        with torch.no_grad():
            torch.testing.assert_close(model(ids).logits, stock(ids).logits, rtol=0, atol=0)
