"""ctxext.loading and ctxext.errors: sources checked before anything reads them, one hub-id rule, devices."""

from __future__ import annotations

import json
import os
import struct
from pathlib import Path

import pytest
import torch

from ctxext.errors import CtxextError, first_line
from ctxext.loading import (check_source, check_weights, check_weights_fit, is_hub_id, load_model, load_tokenizer,
                            pick_device)
from ctxext.patching.card import render_model_card
from ctxext.rope.layout import read_layout
from ctxext.rope.methods import resolve
from ctxext.rope.plan import plan_patch
from evalkit import save_checkpoint


@pytest.fixture(scope="module")
def good(tmp_path_factory) -> Path:
    return save_checkpoint(tmp_path_factory.mktemp("good") / "model", window=256)


def copy(good: Path, where: Path) -> Path:
    where.mkdir()
    for path in good.iterdir():
        (where / path.name).write_bytes(path.read_bytes())
    return where


def test_first_line_quotes_one_line_without_its_period():
    assert first_line(ValueError("Bad thing.\nsecond line")) == "Bad thing"
    assert first_line(ValueError("")) == "ValueError"
    assert first_line(ValueError("head\n  detail: the reason."), last=True) == "detail: the reason"


@pytest.mark.parametrize("text, expected", [
    ("gpt2", True), ("org/name", True), ("Qwen/Qwen2.5-0.5B", True), ("a/b/c", False), ("./x", False),
    ("/abs/path", False), ("~/model", False), ("", False), ("x--y", False), ("name with space", False),
    ("here/missing", False),  # "here" is a local folder: a missing path below it, not a hub repo
])
def test_one_hub_id_rule(text, expected, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    (tmp_path / "here").mkdir()
    assert is_hub_id(text) is expected


def test_the_model_card_names_a_hub_base_model_by_the_same_rule(good):
    patch = plan_patch(read_layout(json.loads((good / "config.json").read_text())), resolve("yarn", 2))
    assert "base_model: gpt2\n" in render_model_card("gpt2", patch)  # accepted by check_source, so named here too
    assert "base_model: org/name\n" in render_model_card("org/name", patch)
    assert "base_model" not in render_model_card(str(good), patch)
    assert "base_model" not in render_model_card("LlamaForCausalLM (in memory)", patch)


def test_check_source_names_what_is_wrong(good, tmp_path):
    cases = {
        "": "The model name is empty",
        str(tmp_path / "missing"): "not found: no such directory",
        str(good / "config.json"): "is not a model directory (it is a file)",
        str(tmp_path): "is not a model directory (it has no config.json)",
    }
    for source, message in cases.items():
        with pytest.raises(CtxextError, match=message.replace("(", r"\(").replace(")", r"\)")):
            check_source(source)
    odd = copy(good, tmp_path / "odd")
    os.mkfifo(odd / "pipe")
    with pytest.raises(CtxextError, match="pipe is a named pipe, not a file"):
        check_source(odd)  # would hang a reader: refused without opening it
    (odd / "pipe").unlink()
    os.symlink(odd / "gone", odd / "link")
    with pytest.raises(CtxextError, match="link is a broken symbolic link"):
        check_source(odd)
    assert check_source(good, weights=True) == str(good)


def _header_only(meta: dict, data: bytes = b"") -> bytes:
    header = json.dumps(meta).encode()
    return struct.pack("<Q", len(header)) + header + data


@pytest.mark.parametrize("damage, message", [
    (lambda w: w.write_bytes(w.read_bytes()[:2000]), "model.safetensors is truncated"),
    (lambda w: w.write_bytes(b""), "model.safetensors is empty"),
    (lambda w: w.write_bytes(b"\xff" * 64), "is truncated or not a safetensors file"),
    (lambda w: w.write_bytes(_header_only({"a": {"data_offsets": ["x", 2]}}, b"..")), "is corrupt (its header"),
    (lambda w: w.write_bytes(w.read_bytes() + b"junk"), "is corrupt (4 bytes after the tensors"),
    (lambda w: w.unlink(), "holds no model weights"),
])
def test_check_weights_reads_headers_only_and_names_the_file(damage, message, good, tmp_path):
    model = copy(good, tmp_path / "m")
    damage(model / "model.safetensors")
    with pytest.raises(CtxextError, match=message.replace("(", r"\(")):
        check_weights(model)


def test_pickle_weights_are_refused_and_never_unpickled(good, tmp_path):
    model = copy(good, tmp_path / "m")
    (model / "model.safetensors").unlink()
    (model / "pytorch_model.bin").write_bytes(b"\x80\x04cos\nsystem\n(S'touch " + str(tmp_path / "PWNED").encode() + b"'\ntR.")
    with pytest.raises(CtxextError, match="holds only pickle weights .* never loads because unpickling can run any code"):
        check_source(model, weights=True)
    with pytest.raises(CtxextError, match="holds only pickle weights"):
        load_model(model)
    assert not (tmp_path / "PWNED").exists()


def test_sharded_weights_need_every_shard(good, tmp_path):
    model = copy(good, tmp_path / "m")
    (model / "model.safetensors").rename(model / "model-00001-of-00002.safetensors")
    index = {"weight_map": {"a": "model-00001-of-00002.safetensors", "b": "model-00002-of-00002.safetensors"}}
    (model / "model.safetensors.index.json").write_text(json.dumps(index))
    with pytest.raises(CtxextError, match="model-00002-of-00002.safetensors is missing"):
        check_weights(model)


def test_weights_that_do_not_fit_the_config_are_refused_before_and_at_loading(good, tmp_path):
    from safetensors.torch import save_file

    model = copy(good, tmp_path / "m")
    save_file({"model.embed_tokens.weight": torch.zeros(3, 3)}, str(model / "model.safetensors"))
    check_weights(model)  # a whole file...
    with pytest.raises(CtxextError, match="do not fit its config.json: .* missing or of another shape"):
        check_weights_fit(model)  # ...of the wrong tensors, seen from the headers on the meta device
    with pytest.raises(CtxextError, match="do not fit its config.json"):
        load_model(model)
    check_weights_fit(good)
    loaded, tokenizer = load_model(good)
    assert loaded.device.type == "cpu" and len(tokenizer) > 2


def test_tokenizers_missing_or_broken_are_refused_in_a_sentence(good, tmp_path):
    bare = copy(good, tmp_path / "bare")
    for name in ("tokenizer.json", "tokenizer_config.json"):
        (bare / name).unlink()
    with pytest.raises(CtxextError, match="has no tokenizer files"):
        load_tokenizer(bare)  # transformers would build an empty tokenizer from the model type
    broken = copy(good, tmp_path / "broken")
    (broken / "tokenizer.json").write_text("{")
    with pytest.raises(CtxextError, match=r"broken/tokenizer.json is not valid JSON"):
        load_tokenizer(broken)


def test_devices_are_checked_against_this_machine():
    assert pick_device("cpu") == "cpu"
    for device, message in {"tpu": "Unknown device 'tpu'", "cpu:x": "Unknown device", "meta": "does not run on --device meta"}.items():
        with pytest.raises(CtxextError, match=message):
            pick_device(device)
    count = torch.cuda.device_count() if torch.cuda.is_available() else 0
    with pytest.raises(CtxextError, match="no CUDA device is available" if not count else f"has {count} cuda device"):
        pick_device(f"cuda:{count}" if count else "cuda")


# -- whether weights fit their config: built on the meta device, checked against stock loading ------------------

#: tiny models whose checkpoints stock transformers maps in each of its ways: one-to-one, a tied head, a head of
#: its own name (gpt_neox), fused projections (phi3), per-expert tensors merged into one (mixtral, qwen2_moe,
#: deepseek_v3: MLA and shared experts)
FIT_MODELS = {
    "llama": {}, "llama-tied": dict(tie_word_embeddings=True), "gpt_neox": dict(rotary_pct=0.25, num_key_value_heads=None),
    "phi3": {}, "mixtral": dict(num_local_experts=4, num_experts_per_tok=2),
    "qwen2_moe": dict(num_experts=4, num_experts_per_tok=2, moe_intermediate_size=32, shared_expert_intermediate_size=32),
    "deepseek_v3": dict(n_routed_experts=4, num_experts_per_tok=2, moe_intermediate_size=32, n_group=1, topk_group=1,
                        first_k_dense_replace=1, qk_rope_head_dim=16, qk_nope_head_dim=16, v_head_dim=16,
                        kv_lora_rank=16, q_lora_rank=None),
}


def _damaged(model_type: str, damage: str, where: Path) -> tuple[Path, str]:
    """A tiny checkpoint saved by stock transformers, then damaged: (its folder, the stored tensor damaged)."""
    from safetensors.torch import load_file, save_file

    from tiny import tiny_model

    model = tiny_model(model_type.removesuffix("-tied"), **FIT_MODELS[model_type])
    model.save_pretrained(where)
    state = load_file(str(where / "model.safetensors"))
    keys = list(state)
    victim = next((k for k in keys if "experts.1." in k), keys[len(keys) // 2])  # an expert's piece where there are experts
    if damage == "drop":
        del state[victim]
    elif damage == "reshape":
        state[victim] = torch.zeros(3, 3)
    elif damage == "no-prefix":  # a base model's checkpoint, which stock loads into the causal LM
        state = {k.removeprefix(model.base_model_prefix + "."): v for k, v in state.items()}
    save_file(state, str(where / "model.safetensors"), metadata={"format": "pt"})
    return where, victim


def _stock_unfit(directory: Path) -> list[str] | None:
    """What stock transformers' own loading (real tensors, on the CPU) reports missing or mismatched; None when
    it cannot load the weights at all (a merge of per-expert tensors that are not all there raises)."""
    from transformers import AutoModelForCausalLM
    from transformers.utils import logging

    logging.set_verbosity_error()
    try:
        _, info = AutoModelForCausalLM.from_pretrained(directory, output_loading_info=True, ignore_mismatched_sizes=True)
    except RuntimeError:
        return None
    finally:
        logging.set_verbosity_warning()
    return sorted(info["missing_keys"]) + sorted(str(k[0] if isinstance(k, tuple) else k) for k in info["mismatched_keys"])


@pytest.mark.parametrize("damage", ["intact", "drop", "reshape", "no-prefix"])
@pytest.mark.parametrize("model_type", list(FIT_MODELS))
def test_unfit_weights_agree_with_stock_loading(model_type, damage, tmp_path):
    from ctxext.loading import check_weights, empty_causal_lm, load_config, unfit_weights

    directory, victim = _damaged(model_type, damage, tmp_path / "m")
    ours = sorted(unfit_weights(empty_causal_lm(load_config(directory), str(directory)), check_weights(directory)))
    stock = _stock_unfit(directory)
    if stock is None:  # stock could not merge the damaged experts: ours names the tensor they were to become
        assert len(ours) == 1 and ours[0].endswith(("experts.gate_up_proj", "experts.down_proj")), ours
    else:
        assert ours == sorted(stock)
    assert (ours == []) == (damage in ("intact", "no-prefix")), (victim, ours)
    if ours:
        with pytest.raises(CtxextError, match=f"do not fit its config.json: 1 tensor\\(s\\) missing or of another shape \\({ours[0]}\\)"):
            check_weights_fit(directory)
    else:
        check_weights_fit(directory)


def test_check_weights_fit_reads_no_tensor_and_takes_no_loading_path(good, tmp_path, monkeypatch):
    """Regression (transformers 5.25 with kernels 0.19): from_pretrained(device_map="meta") raised "Unsupported
    device type 'meta'" for every model. The check builds the config's model on the meta device and reads headers
    only, so no loading path of transformers, and no tensor reader, can break it."""
    import safetensors
    import safetensors.torch
    from transformers import AutoModelForCausalLM, PreTrainedModel

    def refuse(*args, **kwargs):
        raise AssertionError("check_weights_fit must not load weights")

    for owner, name in [(AutoModelForCausalLM, "from_pretrained"), (PreTrainedModel, "from_pretrained"),
                        (safetensors, "safe_open"), (safetensors.torch, "load_file"), (torch, "load")]:
        monkeypatch.setattr(owner, name, refuse)
    check_weights_fit(good)
    model = copy(good, tmp_path / "m")
    header = json.dumps({"model.embed_tokens.weight": {"dtype": "F32", "shape": [3, 3], "data_offsets": [0, 36]}}).encode()
    (model / "model.safetensors").write_bytes(struct.pack("<Q", len(header)) + header + bytes(36))
    with pytest.raises(CtxextError, match=r"do not fit its config.json: \d+ tensor\(s\) missing or of another shape "
                                          r"\(model.embed_tokens.weight, "):
        check_weights_fit(model)


# -- whose fault: the input's, or ctxext's and its libraries' ------------------------------------------------------

def test_a_library_failure_while_loading_is_reported_as_the_librarys(good, monkeypatch):
    from importlib.metadata import version

    from transformers import PreTrainedModel

    from ctxext.errors import InternalError

    def broken(*args, **kwargs):  # what transformers 5.25 + kernels 0.19 raised deep inside, for every model
        raise ValueError("Unsupported device type 'meta'. Supported device types are: cpu, cuda")

    monkeypatch.setattr(PreTrainedModel, "post_init", broken)  # called by every model's constructor
    with pytest.raises(InternalError) as caught:
        check_weights_fit(good)
    text = str(caught.value)
    assert text.startswith(f"Internal error in transformers {version('transformers')}")
    assert "while building the model that the config of" in text and "Unsupported device type 'meta'" in text
    assert "CTXEXT_DEBUG=1" in text and "check its" not in text and len(text.splitlines()) == 1
    monkeypatch.undo()
    monkeypatch.setattr(PreTrainedModel, "_load_pretrained_model", staticmethod(broken))  # inside from_pretrained
    with pytest.raises(InternalError, match=r"^Internal error in transformers .* while loading the weights of .*"
                                            r"Unsupported device type 'meta'"):
        load_model(good)


def test_the_culprit_is_the_package_whose_code_raised():
    from importlib.metadata import version

    from transformers import AutoConfig

    from ctxext.errors import culprit, internal_error

    try:
        AutoConfig.for_model("no-such-model-type")
    except ValueError as err:
        assert culprit(err) == f"transformers {version('transformers')}"
    try:
        first_line(None)  # ctxext's own code raising
    except Exception as err:
        assert culprit(err).startswith("ctxext ")
    sentence = str(internal_error(KeyError("x"), "doing a thing"))
    assert sentence.startswith("Internal error in ctxext") and "while doing a thing (KeyError: 'x')" in sentence


def test_a_config_transformers_refuses_is_the_inputs_fault(good, tmp_path):
    model = copy(good, tmp_path / "m")
    config = json.loads((model / "config.json").read_text())
    (model / "config.json").write_text(json.dumps(config | {"model_type": "no-such-model-type"}))
    with pytest.raises(CtxextError, match=r"transformers \S+ does not accept the config of .*; fix the value it names"):
        check_weights_fit(model)
    (model / "config.json").write_text(json.dumps(config | {"model_type": "vit", "architectures": ["ViTModel"]}))
    with pytest.raises(CtxextError, match="holds a 'vit' model, which transformers does not load as a causal language model"):
        check_weights_fit(model)
