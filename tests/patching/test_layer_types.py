"""Per-layer-type rope as two families ship it (issue 21, bugs 3 and 4): the model in memory, a stock save-and-reload
of it and the `ctxext patch` checkpoint of its saved base run the same logits.

DeepSeek V4 keys its rope `main` (its sliding-window layers) and `compress` (the compressed layers, their
compressor and indexer, which reach the whole sequence and carry the shipped yarn): only `compress` is scaled,
whatever the order of the keys (a live config keeps `main` first, config.json is saved sorted). Gemma 4's full
layers use `proportional` rope (p-RoPE, partial_rotary_factor 0.25 of a wider global_head_dim): pi is its factor,
ntk its rope_theta, every other method is refused in one sentence.
"""

import copy
import json
import warnings

import pytest
import torch
from transformers import AutoConfig, AutoModelForCausalLM
from transformers.modeling_rope_utils import ROPE_INIT_FUNCTIONS

import ctxext
from ctxext.cli import main
from ctxext.patching.info import describe
from ctxext.rope.layout import RopeConfigError, read_layout
from checkpoints import tiny_tokenizer
from tiny import SMALL, token_ids

#: DeepSeek V4 as tests/walk.py builds it, shipped with a compress-only yarn x4 from a 16-token window
DEEPSEEK_V4 = dict(
    SMALL, num_key_value_heads=1, head_dim=32, qk_rope_head_dim=4, q_lora_rank=32, o_lora_rank=32, o_groups=2,
    index_n_heads=2, index_head_dim=32, index_topk=16, sliding_window=16, num_nextn_predict_layers=0,
    n_routed_experts=4, num_experts_per_tok=2, moe_intermediate_size=32, n_shared_experts=1,
    layer_types=["sliding_attention", "heavily_compressed_attention"], mlp_layer_types=["moe", "moe"],
    compress_rates={"compressed_sparse_attention": 4, "heavily_compressed_attention": 8},
    rope_parameters={"rope_type": "yarn", "factor": 4.0, "original_max_position_embeddings": 16},
)
#: Gemma 4 with full layers twice as wide as the sliding ones (global_head_dim), as the family ships
GEMMA4 = dict(SMALL, head_dim=16, global_head_dim=32, sliding_window=16, hidden_size_per_layer_input=8,
              vocab_size_per_layer_input=128, layer_types=["sliding_attention", "full_attention"])


def build(model_type: str, sizes: dict):
    torch.manual_seed(0)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        model = AutoModelForCausalLM.from_config(AutoConfig.for_model(model_type, **copy.deepcopy(sizes)))
    with torch.no_grad():
        for p in model.parameters():
            p.add_(torch.randn_like(p) * 0.02)
    return model.eval()


@pytest.fixture(scope="module")
def deepseek_v4():
    return build("deepseek_v4", DEEPSEEK_V4)


@pytest.fixture(scope="module")
def gemma4():
    return build("gemma4_text", GEMMA4)


def saved(model, directory):
    model.save_pretrained(directory)
    tiny_tokenizer().save_pretrained(directory)
    return directory


def logits(model, ids):
    with torch.no_grad():
        return model(ids).logits


def reload(directory):
    return AutoModelForCausalLM.from_pretrained(directory).eval()


def reordered(config: dict, first: str) -> dict:
    """The config dict with `first` the first key of its rope_parameters (the other order of the two)."""
    rope = config["rope_parameters"]
    return dict(config, rope_parameters={first: rope[first]} | {k: v for k, v in rope.items() if k != first})


@pytest.mark.parametrize("first", ["main", "compress"])
def test_deepseek_v4_scales_compress_only_whatever_the_key_order(deepseek_v4, first):
    layout = read_layout(reordered(deepseek_v4.config.to_dict(), first))
    assert layout.targets == ("compress",) and layout.scaling_type == "yarn"
    assert layout.original_max_position_embeddings == 16 and layout.window == 64
    with pytest.raises(RopeConfigError, match="already uses yarn"):
        ctxext.patch_model(copy.deepcopy(deepseek_v4), "yarn", 8)  # the shipped x4 is not discarded silently


def test_deepseek_v4_flat_config_json_reads_as_its_stock_config_builds_it(deepseek_v4):
    flat = {k: v for k, v in deepseek_v4.config.to_dict().items() if k != "rope_parameters"}
    flat |= {"rope_scaling": {"type": "yarn", "factor": 4.0, "original_max_position_embeddings": 16},
             "rope_theta": 10000.0, "compress_rope_theta": 160000.0}
    assert read_layout(flat).rope == read_layout(deepseek_v4.config.to_dict()).rope


@pytest.mark.parametrize("method", ["yarn", "pi", "ntk"])
def test_deepseek_v4_memory_equals_its_reload_and_the_checkpoint(deepseek_v4, method, tmp_path, capsys):
    source = saved(deepseek_v4, tmp_path / "base")
    assert list(json.loads((source / "config.json").read_text())["rope_parameters"]) == ["compress", "main"]
    model = copy.deepcopy(deepseek_v4)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        ctxext.patch_model(model, method, 8, replace=True)
    rope = model.config.rope_parameters
    assert rope["main"] == deepseek_v4.config.rope_parameters["main"]  # the sliding-window layers keep theirs
    assert model.config.ctxext["original_max_position_embeddings"] == 16  # the shipped window, not 64
    assert main(["patch", str(source), "--method", method, "--factor", "8", "--replace",
                 "--output", str(tmp_path / "cli")]) == 0
    capsys.readouterr()
    ids = token_ids(200)
    ours = logits(model, ids)
    assert (ours - logits(reload(saved(model, tmp_path / "memory")), ids)).abs().max() <= 1e-6
    assert (ours - logits(reload(tmp_path / "cli"), ids)).abs().max() <= 1e-6
    assert (ours - logits(deepseek_v4, ids)).abs().max() > 1e-3  # the patch did something


def test_gemma4_proportional_layout_is_read_per_layer_type(gemma4):
    layout = read_layout(gemma4.config.to_dict())
    assert layout.targets == ("full_attention",) and not layout.is_scaled
    assert (layout.head_dim_of("full_attention"), layout.rotary_dim_of("full_attention")) == (32, 8)
    assert (layout.head_dim_of("sliding_attention"), layout.rotary_dim_of("sliding_attention")) == (16, 16)
    rotary = gemma4.model.rotary_emb
    config = gemma4.config.per_layer_config["full_attention"]
    stock, _ = ROPE_INIT_FUNCTIONS["proportional"](config, layer_type="full_attention")
    torch.testing.assert_close(rotary.full_attention_inv_freq, stock, rtol=0, atol=0)


@pytest.mark.parametrize("method", ["pi", "ntk"])
def test_gemma4_memory_equals_stock_reload_and_the_checkpoint(gemma4, method, tmp_path, capsys):
    source = saved(gemma4, tmp_path / "base")
    model = copy.deepcopy(gemma4)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        ctxext.patch_model(model, method, 8)
    full = model.config.rope_parameters["full_attention"]
    assert full["rope_type"] == "proportional" and full["partial_rotary_factor"] == 0.25
    assert model.config.rope_parameters["sliding_attention"] == gemma4.config.rope_parameters["sliding_attention"]
    if method == "pi":
        assert full["factor"] == 8.0 and full["rope_theta"] == 1e6
    else:  # the lowest rotating frequency, b^(-6/32), divided by exactly 8
        assert full["rope_theta"] == pytest.approx(1e6 * 8 ** (32 / 6))
        inv_freq = model.model.rotary_emb.full_attention_inv_freq
        assert inv_freq[3].item() == pytest.approx(1e6 ** (-6 / 32) / 8, rel=1e-5) and not inv_freq[4:].any()
    assert main(["patch", str(source), "--method", method, "--factor", "8", "--output", str(tmp_path / "cli")]) == 0
    capsys.readouterr()
    ids = token_ids(300)
    ours = logits(model, ids)
    assert (ours - logits(reload(saved(model, tmp_path / "memory")), ids)).abs().max() <= 1e-6
    assert (ours - logits(reload(tmp_path / "cli"), ids)).abs().max() <= 1e-6
    assert (ours - logits(gemma4, ids)).abs().max() > 1e-3


@pytest.mark.parametrize("method", ["yarn", "ntk-by-parts", "dynamic-ntk", "llama3", "dynamic-yarn"])
def test_gemma4_refuses_what_proportional_rope_cannot_carry(gemma4, method, tmp_path):
    message = (f"This gemma4_text model's proportional rope (p-RoPE, on its full_attention layers) can carry only a "
               f"uniform factor or a new rope_theta in a stock config, so {method} cannot be written for it; use pi or ntk.")
    model = copy.deepcopy(gemma4)
    with pytest.raises(RopeConfigError) as err:
        ctxext.patch_model(model, method, 8)
    assert str(err.value) == message
    assert model.config.rope_parameters == gemma4.config.rope_parameters
    if method != "dynamic-yarn":
        source = saved(gemma4, tmp_path / "base")
        with pytest.raises(RopeConfigError, match="use pi or ntk"):
            ctxext.patch_checkpoint(source, tmp_path / "out", method, 8)
        assert not (tmp_path / "out").exists()


def test_gemma4_pi_patch_reads_back_and_restores(gemma4):
    model = copy.deepcopy(gemma4)
    ctxext.patch_model(model, "pi", 4)
    layout = read_layout(model.config.to_dict())
    assert layout.is_scaled and layout.window == 256 and layout.original_max_position_embeddings == 64
    ctxext.patch_model(model, "pi", 1, replace=True)
    assert model.config.rope_parameters == gemma4.config.rope_parameters
    torch.testing.assert_close(model.model.rotary_emb.full_attention_inv_freq,
                               gemma4.model.rotary_emb.full_attention_inv_freq, rtol=0, atol=0)


def test_info_says_which_layers_are_scaled_and_their_widths(gemma4, deepseek_v4, tmp_path, capsys):
    summary = describe(gemma4.config.to_dict())
    assert summary["layers"] == {"sliding_attention": {"head_dim": 16, "rotary_dim": 16, "scaled": False},
                                 "full_attention": {"head_dim": 32, "rotary_dim": 8, "scaled": True}}
    assert (summary["rotary_dim"], summary["head_dim"], summary["scaled_layer_types"]) == (8, 32, ["full_attention"])
    assert describe(deepseek_v4.config.to_dict())["scaled_layer_types"] == ["compress"]
    assert main(["info", str(saved(gemma4, tmp_path / "g"))]) == 0
    out = capsys.readouterr().out
    assert "rotary dims [full_attention] 8 of head_dim 32 (partial_rotary_factor 0.25)" in out
    assert "rotary dims [sliding_attention] 16 of head_dim 16\n" in out
    assert "scaled layers     full_attention\n" in out
    assert main(["info", str(saved(deepseek_v4, tmp_path / "d"))]) == 0
    out = capsys.readouterr().out
    assert "scaled layers     compress\n" in out and "rope [main]" in out and "(local: a patch leaves it)" in out


def test_a_composite_gemma4_patches_its_text_rope_and_leaves_its_vision_towers_alone(tmp_path):
    """Regression: patch_model took Gemma 4's vision rotary embedding (2D patch positions, no text window) for one to
    patch and refused the whole model ("it holds 16 frequencies where the config implies 32")."""
    from walk import build

    model, why = build("gemma4")
    assert model is not None, why
    vision = dict(model.model.vision_tower.named_buffers())
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        ctxext.patch_model(model, "pi", 4)
    for name, buffer in model.model.vision_tower.named_buffers():
        assert torch.equal(buffer, vision[name]), name
    text = model.model.language_model.rotary_emb
    assert text.rope_type["full_attention"] == "proportional"
    model.save_pretrained(tmp_path)
    reloaded = AutoModelForCausalLM.from_pretrained(tmp_path).eval()
    ids = token_ids(200)
    with torch.no_grad():
        torch.testing.assert_close(model(ids).logits, reloaded(ids).logits, rtol=0, atol=0)


@pytest.mark.parametrize("model_type", ["glm4_moe_lite", "jetmoe", "zamba2", "dbrx", "bailing_hybrid"])
def test_a_head_width_or_size_saved_under_another_name_is_read(model_type, tmp_path):
    """Regression: configs that save no head_dim (GLM-4-MoE-Lite derives it from qk_rope_head_dim, Zamba2 maps it to
    attention_head_dim, JetMoE to kv_channels) or spell hidden_size / num_attention_heads / max_position_embeddings
    as d_model / n_heads / max_seq_len (DBRX) or max_position_embeddings as model_max_length (Bailing-hybrid) were read as another head width, and their rotary embedding refused
    ("32 frequencies where the config implies 8"). The model in memory, its stock reload and the `ctxext patch`
    checkpoint of its saved base now give the same logits."""
    from walk import build

    model, why = build(model_type)
    assert model is not None, why
    model.save_pretrained(tmp_path / "base")
    rotary = next(m for m in model.modules() if isinstance(getattr(m, "inv_freq", None), torch.Tensor))
    assert read_layout(model.config.to_dict()).rotary_dim == 2 * rotary.inv_freq.numel()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        ctxext.patch_model(model, "yarn", 4)
        ctxext.patch_checkpoint(tmp_path / "base", tmp_path / "cli", "yarn", 4)
    model.save_pretrained(tmp_path / "saved")
    ids = token_ids(200)
    with torch.no_grad():
        for other in ("saved", "cli"):
            reloaded = AutoModelForCausalLM.from_pretrained(tmp_path / other).eval()
            torch.testing.assert_close(model(ids).logits, reloaded(ids).logits, rtol=0, atol=0)
