"""Under FSDP no process puts a full model on its GPU, and the merge makes no second full copy.

accelerate runs FSDP on GPUs only (a CPU launch of several processes is MULTI_CPU, never FSDP, and
the FSDP1 plugin refuses to build without a GPU), so the two-process pattern of test_finetune.py
cannot reach this path here. These tests call the functions the FSDP path runs, with a stand-in
for the accelerator of a CUDA process (`device`, `is_main_process`): CUDA is absent on this machine,
so any attempt to move a tensor there would raise. tests/training/test_train_gpu.py runs the real
thing on a GPU machine.
"""

import os
from types import SimpleNamespace

import pytest
import torch

import ctxext.training.finetune
from ctxext.rope.layout import read_layout
from ctxext.rope.methods import resolve
from ctxext.rope.plan import plan_patch
from ctxext.training.model import assign_state, empty_model, fsdp_plugin, load_for_training, trainable_module
from ctxext.training.recipe import Recipe
from ctxext.training.save import merge, unsharded
from tiny import tiny_model, tiny_tokenizer, token_ids

RECIPE = Recipe(lora_r=4, dtype="float32")


@pytest.fixture(scope="module")
def source(tmp_path_factory):
    path = tmp_path_factory.mktemp("fsdp") / "model"
    tiny_model("llama", initializer_range=0.1).save_pretrained(path)
    tiny_tokenizer().save_pretrained(path)
    return str(path)


def cuda_process(main: bool) -> SimpleNamespace:
    return SimpleNamespace(device=torch.device("cuda", 0), is_main_process=main)


def patch_of(path: str):
    from transformers import AutoConfig

    return plan_patch(read_layout(AutoConfig.from_pretrained(path).to_dict()), resolve("yarn", 4))


def test_an_fsdp_launch_asks_accelerate_for_memory_efficient_loading(monkeypatch, tmp_path):
    monkeypatch.setenv("ACCELERATE_USE_FSDP", "true")
    monkeypatch.setenv("FSDP_VERSION", "2")
    monkeypatch.setenv("FSDP_CPU_RAM_EFFICIENT_LOADING", "false")  # what `accelerate config` writes by default
    plugin = fsdp_plugin()
    assert plugin.cpu_ram_efficient_loading and plugin.fsdp_version == 2
    assert os.environ["FSDP_CPU_RAM_EFFICIENT_LOADING"] == "True"  # what transformers' loading reads

    seen = {}

    class Recorder:
        def __init__(self, **kwargs):
            seen.update(kwargs)

    import accelerate

    monkeypatch.setattr(accelerate, "Accelerator", Recorder)
    ctxext.training.finetune._accelerator(Recipe(), tmp_path)
    assert seen["fsdp_plugin"].cpu_ram_efficient_loading
    monkeypatch.setenv("ACCELERATE_USE_FSDP", "false")
    seen.clear()
    ctxext.training.finetune._accelerator(Recipe(), tmp_path)
    assert "fsdp_plugin" not in seen  # DDP, DeepSpeed, one process: accelerate's own choice


def test_the_main_process_reads_the_weights_onto_the_cpu_the_others_onto_nothing(source):
    from transformers import AutoModelForCausalLM

    main = load_for_training(source, cuda_process(True), "auto", sharded=True)
    other = load_for_training(source, cuda_process(False), "auto", sharded=True)
    stored = AutoModelForCausalLM.from_pretrained(source).state_dict()
    # main: the checkpoint's weights, on the CPU, in the dtype training uses on CUDA ("auto": bfloat16)
    assert {p.device.type for p in main.parameters()} == {"cpu"}
    assert {p.dtype for p in main.parameters()} == {torch.bfloat16}
    for name, value in main.state_dict().items():
        torch.testing.assert_close(value, stored[name].to(torch.bfloat16), rtol=0, atol=0, msg=name)
    # the others: no weight memory at all, the same structure and dtype, the rotary buffers real
    assert all(p.is_meta for p in other.parameters())
    assert [(n, p.shape, p.dtype) for n, p in other.named_parameters()] == [
        (n, p.shape, p.dtype) for n, p in main.named_parameters()]
    torch.testing.assert_close(other.model.rotary_emb.inv_freq, main.model.rotary_emb.inv_freq, rtol=0, atol=0)


def test_every_process_builds_the_same_trainable_module_so_the_broadcast_fills_it(source):
    """What accelerate's broadcast does (rank 0's full state into every rank's model) leaves a meta-built
    rank computing exactly what rank 0 computes: same keys, shapes, dtypes, and the patched frequencies."""
    patch = patch_of(source)
    main = trainable_module(load_for_training(source, cuda_process(True), "float32", sharded=True), patch, RECIPE)
    other = trainable_module(load_for_training(source, cuda_process(False), "float32", sharded=True), patch, RECIPE)
    with torch.no_grad():  # LoRA B starts at zero; give it weights, so the comparison sees the adapters
        for name, p in main.named_parameters():
            if "lora_B" in name:
                p.copy_(torch.randn_like(p) * 0.05)
    rank0 = main.state_dict()
    assert {k: (v.shape, v.dtype) for k, v in other.state_dict().items()} == {k: (v.shape, v.dtype) for k, v in rank0.items()}
    rotary = other.peft_model.get_base_model().model.rotary_emb
    assert rotary.rope_type == "yarn" and not rotary.inv_freq.is_meta
    torch.testing.assert_close(rotary.inv_freq, main.peft_model.get_base_model().model.rotary_emb.inv_freq, rtol=0, atol=0)
    assign_state(other, dict(rank0))
    ids = token_ids(200)  # past the original 64-token window: the patched frequencies matter
    with torch.no_grad():
        torch.testing.assert_close(other(ids), main(ids), rtol=0, atol=0)


@pytest.mark.parametrize("tied", [False, True])
def test_the_merge_assigns_the_gathered_weights_without_a_second_copy(source, tmp_path, tied):
    if tied:
        path = tmp_path / "tied"
        tiny_model("llama", initializer_range=0.1, tie_word_embeddings=True).save_pretrained(path)
        tiny_tokenizer().save_pretrained(path)
        source = str(path)
    patch = patch_of(source)
    recipe = Recipe(lora_r=4, dtype="float32", train_embeddings_and_norms=tied)
    trained = trainable_module(load_for_training(source, cuda_process(True), "float32", sharded=True), patch, recipe)
    with torch.no_grad():
        for name, p in trained.named_parameters():
            if p.requires_grad:
                p.add_(torch.randn_like(p) * 0.05)
    state = {k: v.clone() for k, v in trained.state_dict().items()}  # what get_state_dict gathers on rank 0
    accelerator = SimpleNamespace(is_main_process=True, get_state_dict=lambda module: state)

    def rebuild():
        return trainable_module(empty_model(source, "float32", "sdpa"), patch, recipe)

    peft_model = unsharded(accelerator, object(), sharded=True, rebuild=rebuild)
    owners = {t.data_ptr() for t in state.values()}
    assert all(p.data_ptr() in owners for p in peft_model.parameters())  # the gathered tensors themselves
    merged = merge(peft_model)
    expected = merge(trained.peft_model)
    if tied:
        assert merged.lm_head.weight is merged.model.embed_tokens.weight
    ids = token_ids(200)
    with torch.no_grad():
        torch.testing.assert_close(merged(ids).logits, expected(ids).logits, rtol=0, atol=0)
    assert not [n for n, p in merged.named_parameters() if p.is_meta]
