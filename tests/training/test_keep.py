"""`finetune(..., method="keep")` / `ctxext train DIR --method keep`: train with the scaling the checkpoint
already carries, without re-patching it (a searched longrope checkpoint, a yarn one, Qwen's own yarn)."""

import json

import pytest
import torch
from transformers import AutoModelForCausalLM

from ctxext import cli
from ctxext.errors import CtxextError
from ctxext.patching.checkpoint import patch_checkpoint
from ctxext.rope.layout import current_scaling, read_layout
from ctxext.training.finetune import finetune
from tiny import tiny_config, tiny_model, tiny_tokenizer


@pytest.fixture(autouse=True, scope="module")
def one_thread():
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


@pytest.fixture(scope="module")
def checkpoints(tmp_path_factory):
    root = tmp_path_factory.mktemp("keep")
    tiny_model("llama").save_pretrained(root / "base")
    tiny_tokenizer().save_pretrained(root / "base")
    patch_checkpoint(root / "base", root / "yarn-x4", "yarn", 4, beta_fast=16)
    line = "the cat sees the red ball and a dog follows the long road.\n"
    (root / "text.txt").write_text(line * 40)
    return root


def inv_freq(model):
    return model.model.rotary_emb.inv_freq.clone(), model.model.rotary_emb.attention_scaling


def test_keep_trains_with_the_checkpoints_own_scaling(checkpoints, tmp_path):
    out = tmp_path / "tuned"
    result = finetune(str(checkpoints / "yarn-x4"), "keep", None, str(checkpoints / "text.txt"), out, seq_len=128,
                      max_steps=2, learning_rate=1e-3, warmup_steps=0, save_every=0, cache_dir=tmp_path / "cache",
                      progress=False)
    source = AutoModelForCausalLM.from_pretrained(checkpoints / "yarn-x4")
    tuned = AutoModelForCausalLM.from_pretrained(out)
    (a, sa), (b, sb) = inv_freq(source), inv_freq(tuned)
    torch.testing.assert_close(a, b, rtol=0, atol=0)
    assert sa == sb and sa != 1.0
    before = json.loads((checkpoints / "yarn-x4" / "config.json").read_text())
    after = json.loads((out / "config.json").read_text())
    for key in ("rope_parameters", "rope_scaling", "rope_theta", "max_position_embeddings", "ctxext"):
        assert after[key] == before[key], key
    assert after["rope_parameters"]["beta_fast"] == 16
    assert result.log and "yarn" in (out / "README.md").read_text()


def test_keep_on_the_command_line_needs_no_factor_and_refuses_one(checkpoints, tmp_path, capsys):
    data = str(checkpoints / "text.txt")
    code = cli.main(["train", str(checkpoints / "yarn-x4"), "--method", "keep", "--factor", "4", "--dataset", data,
                     "--output", str(tmp_path / "o")])
    assert code == 2 and "method 'keep' trains with the scaling the checkpoint already carries" in capsys.readouterr().err
    code = cli.main(["train", str(checkpoints / "base"), "--method", "keep", "--dataset", data, "--output", str(tmp_path / "o")])
    assert code == 2 and "carries no RoPE scaling to keep" in capsys.readouterr().err
    code = cli.main(["train", str(checkpoints / "base"), "--method", "yarn", "--dataset", data, "--output", str(tmp_path / "o")])
    assert code == 2 and "--factor is required with --method yarn" in capsys.readouterr().err
    assert not (tmp_path / "o").exists()


def test_a_stock_scaling_is_read_back_as_the_method_that_writes_it():
    config = tiny_config("qwen2", max_position_embeddings=256, rope_parameters={
        "rope_type": "yarn", "rope_theta": 10000.0, "factor": 4.0, "original_max_position_embeddings": 64})
    kept = current_scaling(read_layout(config.to_dict()))
    assert kept == {"method": "yarn", "factor": 4.0, "original_max_position_embeddings": 64, "params": {}}
    deepseek = tiny_config("llama", rope_parameters={"rope_type": "yarn", "rope_theta": 10000.0, "factor": 4.0,
                                                     "original_max_position_embeddings": 64, "mscale": 0.707,
                                                     "mscale_all_dim": 0.707})
    kept = current_scaling(read_layout(deepseek.to_dict()))  # ctxext's yarn takes DeepSeek's spelling
    assert kept["params"] == {"mscale": 0.707, "mscale_all_dim": 0.707}
    truncated = tiny_config("llama", rope_parameters={"rope_type": "yarn", "rope_theta": 10000.0, "factor": 4.0,
                                                      "original_max_position_embeddings": 64, "truncate": False})
    with pytest.raises(CtxextError, match="sets truncate, which ctxext's yarn does not take"):
        current_scaling(read_layout(truncated.to_dict()))
