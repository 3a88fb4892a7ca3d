"""ctxext.loading on the path that works: what a loaded model and its tokenizer are, and the defaults."""

import torch

from ctxext.loading import attention_implementation, check_source, load_model, pick_device, pick_dtype
from evalkit import save_checkpoint


def test_defaults_are_float32_on_cpu_and_bfloat16_on_cuda():
    assert pick_dtype(None, "cpu") is torch.float32 and pick_dtype("auto", "cpu") is torch.float32
    assert pick_dtype("auto", "cuda") is torch.bfloat16 and pick_dtype("auto", "cuda:1") is torch.bfloat16
    assert pick_dtype("float16", "cpu") is torch.float16
    assert attention_implementation("cpu") == "sdpa"
    assert pick_device("cpu") == "cpu"
    assert pick_device() == ("cuda" if torch.cuda.is_available() else "cpu")


def test_a_checkpoint_loads_in_eval_mode_on_the_device_in_the_dtype(tmp_path):
    path = save_checkpoint(tmp_path / "m")
    assert check_source(path) == str(path)
    model, tokenizer = load_model(path, device="cpu", dtype="bfloat16")
    assert not model.training and {p.dtype for p in model.parameters()} == {torch.bfloat16}
    assert {p.device.type for p in model.parameters()} == {"cpu"}
    assert model.model.rotary_emb.inv_freq.dtype == torch.float32  # RoPE frequencies stay float32
    assert tokenizer("ab")["input_ids"][1:] == [tokenizer.convert_tokens_to_ids("a"), tokenizer.convert_tokens_to_ids("b")]
