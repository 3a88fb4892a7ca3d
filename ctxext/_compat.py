"""Every place ctxext relies on another library's private or undocumented behaviour, one function each.

Upgrading transformers, peft, datasets or accelerate can move any of these without notice, so each
is named here once, with what it relies on, and `tests/test_compat.py` checks each one against the
installed version: a test that fails names the touch and the upgrade that moved it.

Import-cheap on purpose (base layer): the libraries are imported inside the functions, and nothing
here imports torch at module level, so torch-free callers (`ctxext.rope.plan`) can use it.
"""

from __future__ import annotations

import contextlib
from functools import lru_cache
from typing import Any, Callable, Iterable, Iterator

#: model types that transformers 4.57 (the last v4 release line) loads as causal LMs: their configs
#: get the v4 spelling (`rope_scaling` + top-level `rope_theta`) next to the v5 one. A hard-coded
#: copy of 4.57's MODEL_FOR_CAUSAL_LM_MAPPING_NAMES keys; tests/test_compat.py compares it with a
#: real 4.57 install.
V4_MODEL_TYPES = frozenset("""
    apertus arcee aria_text bamba bitnet blt code_llama cohere cohere2 dbrx deepseek_v2 deepseek_v3
    diffllama doge dots1 emu3 ernie4_5 ernie4_5_moe exaone4 falcon falcon_h1 flex_olmo fuyu gemma gemma2
    gemma3 gemma3_text gemma3n gemma3n_text glm glm4 glm4_moe gpt_neox gpt_neox_japanese gpt_oss gptj
    granite granitemoe granitemoehybrid granitemoeshared helium hunyuan_v1_dense hunyuan_v1_moe jamba
    jetmoe lfm2 llama llama4 llama4_text longcat_flash minimax ministral mistral mixtral mllama
    modernbert-decoder moshi nemotron olmo olmo2 olmo3 olmoe open-llama persimmon phi phi3
    phi4_multimodal phimoe qwen2 qwen2_moe qwen3 qwen3_moe qwen3_next recurrent_gemma seed_oss smollm3
    stablelm starcoder2 vaultgemma zamba zamba2
""".split())


def speaks_transformers_v4(model_type: str) -> bool:
    """True when transformers v4 (4.57) knows `model_type` as a causal LM, so it reads the v4 spelling."""
    return model_type in V4_MODEL_TYPES


# -- transformers ----------------------------------------------------------------------------------


@lru_cache(maxsize=1)
def _dynamic_wrapper_code() -> Any:
    from transformers.modeling_rope_utils import dynamic_rope_update

    return dynamic_rope_update(lambda self, x, position_ids: None).__code__


def has_stock_dynamic_update(module: Any) -> bool:
    """True when a rotary module's forward recomputes its frequencies per length in stock transformers.

    Relies on: transformers' `dynamic_rope_update` decorator wrapping every rotary forward with one
    shared inner function, so all wrapped forwards share its code object (`__code__`). transformers
    offers no public flag for "this forward is dynamic". Up to 5.23 `torch.no_grad()` wrapped it once
    more: the decorators' `__wrapped__` chain is followed to reach it.
    """
    forward, code = type(module).forward, _dynamic_wrapper_code()
    while forward is not None:
        if getattr(forward, "__code__", None) is code:
            return True
        forward = getattr(forward, "__wrapped__", None)
    return False


def set_serialised_config_key(config: Any, key: str, value: Any) -> None:
    """Put `key: value` into what `config.to_dict()` (and so config.json) writes, bypassing properties.

    Relies on: `PretrainedConfig.to_dict()` serialising the instance `__dict__`, and v5's
    `rope_scaling` being a property that aliases `rope_parameters`: a `__dict__` entry writes the v4
    `rope_scaling` spelling into config.json without changing what the alias returns.
    """
    config.__dict__[key] = value


def drop_serialised_config_key(config: Any, key: str) -> None:
    """Remove `key` from what `config.to_dict()` writes (the counterpart of `set_serialised_config_key`)."""
    config.__dict__.pop(key, None)


@contextlib.contextmanager
def forward_replaced(module: Any, forward: Callable[..., Any]) -> Iterator[None]:
    """Within the block, calling `module` runs `forward` instead of its own forward; its hooks still run.

    Relies on: torch's `nn.Module.__call__` calling `self.forward`, which an instance attribute
    shadows (accelerate's hooks wrap forward the same way); an instance `forward` already there is
    put back afterwards. ctxext's chunked loss uses it to run a model's own output head on given
    hidden states (`ctxext.lm_head.own_head`).
    """
    previous = module.__dict__.get("forward", _MISSING)
    module.forward = forward
    try:
        yield
    finally:
        if previous is _MISSING:
            del module.forward
        else:
            module.forward = previous


_MISSING = object()


def dynamic_cache(layers: Iterable[tuple[Any, Any]] | None = None) -> Any:
    """A transformers `DynamicCache`, pre-filled with per-layer (keys, values) when `layers` is given.

    Relies on: `DynamicCache(ddp_cache_data=...)`, the constructor argument meant for DDP, being the
    only way to build a cache from existing tensors (there is no public `from_tensors`).
    """
    from transformers import DynamicCache

    layers = list(layers) if layers is not None else []
    return DynamicCache(ddp_cache_data=layers) if layers else DynamicCache()


def checkpoint_key_renamer(model: Any) -> Callable[[str], tuple[list[str], bool]]:
    """How `from_pretrained` names a checkpoint's tensors in `model`: checkpoint key -> (the model's key(s) it
    fills, whether a converter merges or splits it on the way, so that its shape changes).

    Relies on: transformers v5's loading internals, which have no public API: the weight transforms of
    `conversion_mapping.get_model_conversion_mapping` (renamings, and converters that merge per-expert
    tensors into one or split a fused one) applied by `core_model_loading.rename_source_key`, which also
    adds or strips `base_model_prefix`. A converter names only its first target; the others are the
    same key with each further target pattern in its place. A key no transform touches maps to itself.
    """
    from transformers.conversion_mapping import get_model_conversion_mapping
    from transformers.core_model_loading import WeightConverter, rename_source_key

    transforms = get_model_conversion_mapping(model)
    converters = [t for t in transforms if isinstance(t, WeightConverter)]
    renamings = [t for t in transforms if not isinstance(t, WeightConverter)]
    meta_state = dict.fromkeys(model.state_dict(), True)
    by_pattern = {pattern: converter for converter in converters for pattern in converter.source_patterns}

    def rename(key: str) -> tuple[list[str], bool]:
        renamed, pattern = rename_source_key(key, renamings, converters, model.base_model_prefix, meta_state)
        converter = by_pattern.get(pattern) if pattern is not None else None
        if converter is None:
            return [renamed], False
        first = converter.target_patterns[0]
        return [renamed] + [renamed.replace(first, other, 1) for other in converter.target_patterns[1:]], True

    return rename


def tied_weight_names(model: Any) -> set[str]:
    """The state-dict names of `model` that are tied to another weight, so a checkpoint may leave them out.

    Relies on: v5's `PreTrainedModel.all_tied_weights_keys` ({tied name: source name}), set when the
    model is built; `from_pretrained` counts these as present when their source is.
    """
    return set(getattr(model, "all_tied_weights_keys", None) or {})


def ignored_missing_patterns(model: Any) -> list[str]:
    """Regular expressions of state-dict names that `from_pretrained` does not report as missing.

    Relies on: `_keys_to_ignore_on_load_missing`, which v5 gathers from every submodule when the model is built.
    """
    return sorted(getattr(model, "_keys_to_ignore_on_load_missing", None) or ())


def no_split_modules(model: Any) -> Any:
    """The decoder-layer class names a transformers model says must not be split (`_no_split_modules`).

    Relies on: accelerate's FSDP auto-wrap policy reading `_no_split_modules` from the module it
    wraps; ctxext wraps a module of its own around the model, so it copies the list onto that module.
    """
    return getattr(model, "_no_split_modules", None)


# -- peft ------------------------------------------------------------------------------------------


def lora_config_accepts(option: str) -> bool:
    """True when the installed peft's `LoraConfig` has the option `option` (e.g. `ensure_weight_tying`).

    Relies on: `LoraConfig` being a dataclass whose fields are its options.
    """
    import dataclasses

    from peft import LoraConfig

    return option in {f.name for f in dataclasses.fields(LoraConfig)}


# -- datasets --------------------------------------------------------------------------------------


def dataset_fingerprint(dataset: Any) -> str:
    """A hash of a `datasets.Dataset`'s content and the transforms applied to it.

    Relies on: the private `Dataset._fingerprint`, which datasets keeps up to date with every
    transform (there is no public accessor); ctxext keys its token cache by it.
    """
    return dataset._fingerprint


# -- accelerate ------------------------------------------------------------------------------------


def state_weights_name(index: int) -> str:
    """The file `Accelerator.save_state` writes model `index`'s weights to (model.safetensors, model_1...).

    Relies on: accelerate's naming in `save_accelerator_state`: SAFE_WEIGHTS_NAME, with `_{index}`
    before the extension for every model after the first.
    """
    from accelerate.utils import SAFE_WEIGHTS_NAME

    return SAFE_WEIGHTS_NAME if index == 0 else SAFE_WEIGHTS_NAME.replace(".", f"_{index}.")
