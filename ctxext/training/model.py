"""The model stage of a fine-tune: load it where it belongs, patch it with the planned patch, add LoRA.

    model = load_for_training("base/", accelerator, "auto", sharded=False)
    module = trainable_module(model, patch, recipe)     # apply_patch + LoRA + the chunked loss

Loading is where memory is won or lost at scale. One process, or DDP, loads a full copy onto each
process's device (DDP needs one). Under FSDP nothing full ever lands on a GPU: the main process
reads the weights onto the CPU, every other process builds the same model with its weights on the
meta device (no memory; buffers such as the rotary frequencies stay real), and accelerate's
`cpu_ram_efficient_loading` broadcasts the main process's weights while it shards them
(`sync_module_states` for FSDP1). At the end the merge rebuilds an unsharded model on the main
process the same way and assigns it the gathered weights, so no second full copy is made.
"""

from __future__ import annotations

import os
from typing import Any

import torch
from torch import nn

from .._compat import lora_config_accepts, no_split_modules
from ..errors import CtxextError
from ..rope.plan import RopePatch
from .loss import causal_lm_loss, token_weights
from .recipe import Recipe


def check_model(model: Any) -> str:
    """The model's name for the card and the run record; CtxextError for something that is no model."""
    if isinstance(model, (str, os.PathLike)):
        from ..loading import check_source

        return check_source(model, weights=True)  # bad weights refused before any data work
    config = getattr(model, "config", None)
    if config is None or not hasattr(model, "get_decoder"):
        raise CtxextError(
            f"model must be a hub id, a checkpoint directory or a transformers causal LM, got {type(model).__name__}."
        )
    # a class name is no hub id (the model card would name it as the base model)
    return getattr(config, "name_or_path", "") or f"{type(model).__name__} (in memory)"


def read_config(model: Any, source: str) -> dict:
    """The model's config as a dict, without loading any weights."""
    if not isinstance(model, (str, os.PathLike)):
        return model.config.to_dict()
    from ..loading import load_config

    if os.path.isdir(source):  # wrong-typed values get ctxext's sentence before transformers reads them
        from pathlib import Path

        from ..patching.checkpoint import read_config as read_config_file
        from ..rope.layout import check_config_types

        check_config_types(read_config_file(Path(source)))
    return load_config(source).to_dict()  # transformers' refusals are the input's; its failures are its own


def fsdp_plugin() -> Any:
    """accelerate's FSDP plugin as the launch configured it, with memory-efficient loading switched on.

    `cpu_ram_efficient_loading` makes accelerate broadcast the main process's weights while it shards
    the model (and, for FSDP1, forces `sync_module_states`), so the other processes may start from a
    model whose weights are on the meta device (`load_for_training`).
    """
    from accelerate.utils import FullyShardedDataParallelPlugin

    return FullyShardedDataParallelPlugin(cpu_ram_efficient_loading=True)


def training_dtype(dtype: str, accelerator: Any) -> str:
    """The dtype name the weights train in on the accelerator's device ("auto": bfloat16 on CUDA, else float32)."""
    from ..loading import pick_dtype

    return str(pick_dtype(dtype, accelerator.device.type)).removeprefix("torch.")


def empty_model(source: str, dtype: str, attn_implementation: str) -> Any:
    """`source`'s model with every parameter on the meta device (no memory) and its buffers real.

    The non-persistent buffers (rotary `inv_freq`) are computed on the CPU from the config, as stock
    transformers does when it loads the weights, so a patch applies to this model as to a loaded one.
    """
    from accelerate import init_empty_weights
    from transformers import AutoConfig, AutoModelForCausalLM

    config = AutoConfig.from_pretrained(source)
    with init_empty_weights(include_buffers=False):
        model = AutoModelForCausalLM.from_config(
            config, dtype=getattr(torch, dtype), attn_implementation=attn_implementation
        )
    model.tie_weights()  # init_empty_weights re-creates every parameter it registers, which unties a tied head
    return model.eval()


def load_for_training(source: str, accelerator: Any, dtype: str, sharded: bool) -> Any:
    """The base model to train, where it belongs: on the process's device, or (FSDP) as the module docstring says."""
    from ..loading import attention_implementation, load_model

    name = training_dtype(dtype, accelerator)
    if not sharded:
        model, _ = load_model(source, device=str(accelerator.device), dtype=name)
        return model
    attention = attention_implementation(str(accelerator.device))
    if accelerator.is_main_process:
        model, _ = load_model(source, device="cpu", dtype=name, attn_implementation=attention)
        return model
    return empty_model(source, name, attention)


def trainable_module(model: Any, patch: RopePatch, recipe: Recipe) -> "LossModule":
    """Patch `model` in place with the planned `patch`, add LoRA as the recipe says, wrap it with the loss."""
    from ..patching.model import apply_patch

    apply_patch(model, patch)
    return LossModule(with_lora(model, recipe), recipe.loss_chunk_size, recipe.prompt_loss_weight)


def attention_projections(model: Any) -> list[str]:
    """Names of the linear layers inside attention modules: q/k/v/o, qkv_proj, query_key_value, dense."""
    names = set()
    for name, module in model.named_modules():
        if isinstance(module, nn.Linear) and "." in name:
            parent = model.get_submodule(name.rsplit(".", 1)[0])
            if "Attention" in type(parent).__name__:
                names.add(name.rsplit(".", 1)[1])
    if not names:
        raise CtxextError(
            f"Found no linear layers inside the attention modules of {type(model).__name__}; "
            "use lora_target='all-linear' (CLI: --lora-target all-linear)."
        )
    return sorted(names)


def embeddings_and_norms(model: Any) -> list[str]:
    """Full names of the input embedding and every normalisation module (LongLoRA's trainable extras)."""
    embedding = model.get_input_embeddings()
    return [n for n, m in model.named_modules() if m is embedding or "Norm" in type(m).__name__]


def with_lora(model: Any, recipe: Recipe) -> Any:
    """The peft LoRA model of `model` for the recipe (gradient checkpointing on if asked, no KV cache)."""
    import warnings

    from peft import LoraConfig, get_peft_model

    if recipe.gradient_checkpointing:
        # non-reentrant: works under DDP and needs no input that requires grad
        options = {"use_reentrant": False}
        if hasattr(model, "activation_checkpointing_enable"):  # the name since transformers 5.2x
            model.activation_checkpointing_enable(activation_checkpointing_kwargs=options)
        else:
            model.gradient_checkpointing_enable(gradient_checkpointing_kwargs=options)
    model.config.use_cache = False
    extras = embeddings_and_norms(model) if recipe.train_embeddings_and_norms else None
    head = model.get_output_embeddings()
    tied = head is not None and head.weight is model.get_input_embeddings().weight
    # a trained tied embedding must stay tied to the head; peft offers that from 0.18 on
    tying = {"ensure_weight_tying": True} if extras and tied else {}
    if tying and not lora_config_accepts("ensure_weight_tying"):
        raise CtxextError(
            "Training the embeddings of a model whose head is tied to them needs peft 0.18 or newer; upgrade peft."
        )
    config = LoraConfig(
        r=recipe.lora_r,
        lora_alpha=recipe.lora_alpha,
        lora_dropout=recipe.lora_dropout,
        target_modules="all-linear" if recipe.lora_target == "all-linear" else attention_projections(model),
        modules_to_save=extras,
        task_type="CAUSAL_LM",
        **tying,
    )
    with warnings.catch_warnings():  # peft still asks for transformers' deprecated is_gradient_checkpointing
        warnings.filterwarnings("ignore", message=".*is_gradient_checkpointing.*", category=FutureWarning)
        return get_peft_model(model, config)


class LossModule(nn.Module):
    """What accelerate wraps (DDP, FSDP): the LoRA model and the chunked loss, so that the forward
    pass, and with it gradient synchronisation, goes through the wrapper."""

    def __init__(self, peft_model: Any, chunk_size: int | None, prompt_loss_weight: float = 1.0):
        super().__init__()
        self.peft_model = peft_model
        self.chunk_size = chunk_size
        self.prompt_loss_weight = prompt_loss_weight
        # FSDP's transformer auto-wrap policy reads the layer classes from the wrapped module
        self._no_split_modules = no_split_modules(peft_model.get_base_model())

    def forward(self, input_ids: torch.Tensor, position_ids: torch.Tensor | None = None,
                completion_mask: torch.Tensor | None = None) -> torch.Tensor:
        # input_ids [B, T], position_ids [B, T] or None, completion_mask [B, T] or None -> mean next-token loss
        weights = None
        if completion_mask is not None and self.prompt_loss_weight != 1:
            weights = token_weights(completion_mask, self.prompt_loss_weight)
        return causal_lm_loss(self.peft_model.get_base_model(), input_ids, position_ids, self.chunk_size, weights)


def assign_state(module: nn.Module, state: dict[str, torch.Tensor]) -> nn.Module:
    """Load a full state dict into a module built on the meta device by assignment, not by copy.

    The module's parameters become the state's tensors (no second copy of the weights), and weights
    that were tied in the module (one parameter under several names, e.g. a tied LM head) are tied
    again afterwards, since assignment would otherwise give each name its own tensor.
    """
    tied: dict[int, list[str]] = {}
    for name, parameter in module.named_parameters(remove_duplicate=False):
        tied.setdefault(id(parameter), []).append(name)
    module.load_state_dict(state, strict=True, assign=True)
    for names in tied.values():
        first = module.get_parameter(names[0])
        for name in names[1:]:
            owner, _, attr = name.rpartition(".")
            setattr(module.get_submodule(owner) if owner else module, attr, first)
    meta = [n for n, p in module.named_parameters() if p.is_meta]
    assert not meta, f"left on the meta device after loading: {meta[:5]}"
    return module
