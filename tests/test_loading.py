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
