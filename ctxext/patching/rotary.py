"""What a patch reads and changes in a model's modules: the one owner of that contract.

A transformers rotary module holds, per layer type it serves (`""` for one global rope, `"full_attention_"`
and kin for per-layer-type modules), an `inv_freq` buffer (float32) and an `attention_scaling` that
multiplies cos and sin; stock dynamic and longrope modules also keep `original_inv_freq` and a cached
`long_inv_freq`. Besides the rotary modules, a model may derive numbers from its rope config when it is
built (DeepSeek's softmax `scaling`, from `mscale_all_dim` and the factor). Patching
(`ctxext.patching.model`), the factor search (`ctxext.search.evaluator`) and greedy decoding
(`ctxext.evaluation.decoding`) all go through this module to find, read and write those.
"""

from __future__ import annotations

import copy
import warnings
from dataclasses import dataclass
from typing import Any, Callable

import torch
from torch import nn
from transformers import PretrainedConfig, PreTrainedModel

from ..errors import first_line
from ..rope.layout import RopeConfigError


@dataclass
class RotaryTarget:
    """One rotary module and the config object it reads."""

    name: str
    module: nn.Module
    config: Any


def prefix(layer_type: str | None) -> str:
    """The attribute prefix of a layer type's buffers in a rotary module (`full_attention_inv_freq`)."""
    return "" if layer_type is None else f"{layer_type}_"


def encoder_config_types(model: nn.Module) -> tuple[type, ...]:
    """Config classes of a composite model's vision and audio encoders (`vision_config`, `audio_config`...)."""
    config = getattr(model, "config", None)
    return tuple({type(value) for key, value in vars(config or object()).items()
                  if key.endswith(("vision_config", "audio_config")) and isinstance(value, PretrainedConfig)})


def rotary_modules(model: nn.Module) -> list[RotaryTarget]:
    """Modules that follow transformers' rotary contract: a config, an inv_freq buffer, an attention scale.

    A vision or audio encoder's rotary embedding (Gemma 4's 2D patch positions) is not the text window a patch
    extends, so it is left out: a module whose config is of an encoder's config class.
    """
    encoders = encoder_config_types(model)
    found = []
    for name, module in model.named_modules():
        config = getattr(module, "config", None)
        if config is None or isinstance(module, PreTrainedModel) or (encoders and isinstance(config, encoders)):
            continue
        if isinstance(getattr(module, "inv_freq", None), torch.Tensor) and hasattr(module, "attention_scaling"):
            found.append(RotaryTarget(name, module, config))
        elif isinstance(getattr(module, "rope_type", None), dict) and any(
            isinstance(getattr(module, f"{t}_inv_freq", None), torch.Tensor) for t in module.rope_type
        ):
            found.append(RotaryTarget(name, module, config))
    return found


def serves(module: nn.Module, layer_type: str | None) -> bool:
    """Does this rotary module hold frequencies for `layer_type`? (a per-layer-type module holds only the types
    its model uses)"""
    return isinstance(getattr(module, f"{prefix(layer_type)}inv_freq", None), torch.Tensor)


def frequencies(module: nn.Module, layer_type: str | None) -> tuple[torch.Tensor, float]:
    """(inv_freq, attention_scaling) a rotary module uses now for `layer_type`."""
    p = prefix(layer_type)
    return getattr(module, f"{p}inv_freq"), float(getattr(module, f"{p}attention_scaling"))


def built_frequencies(module: nn.Module, layer_type: str | None) -> torch.Tensor:
    """The frequencies the module was built with (`original_inv_freq` where a stock dynamic module keeps them)."""
    p = prefix(layer_type)
    current = getattr(module, f"{p}original_inv_freq", None)
    return getattr(module, f"{p}inv_freq") if current is None else current


def set_frequencies(module: nn.Module, layer_type: str | None, inv_freq: torch.Tensor, scale: float, *,
                    rebuild: bool = True) -> None:
    """Make `module` use `inv_freq` and `scale` for `layer_type`.

    rebuild=True (a patch): the buffers are replaced (float32, on the module's device), `original_inv_freq`
    follows, and stock longrope's cached long frequencies are dropped, to be rebuilt from the new config.
    rebuild=False (a search trying candidates): the existing buffer is overwritten in place, nothing else moves.
    """
    p = prefix(layer_type)
    buffer = getattr(module, f"{p}inv_freq")
    if not rebuild:
        with torch.no_grad():
            buffer.copy_(inv_freq.to(buffer.device))
    else:
        module.register_buffer(f"{p}inv_freq", inv_freq.to(buffer.device), persistent=False)
        if hasattr(module, f"{p}original_inv_freq"):
            module.register_buffer(f"{p}original_inv_freq", inv_freq.clone().to(buffer.device), persistent=False)
        if hasattr(module, f"{p}long_inv_freq"):
            delattr(module, f"{p}long_inv_freq")  # stock longrope caches it; rebuilt from the new config
    setattr(module, f"{p}attention_scaling", scale)


def plain_numbers(model: nn.Module) -> dict[str, dict[str, int | float]]:
    """{module name: {attribute: value}} for every plain int or float a module of `model` holds (a softmax
    `scaling`, a window): what a model derives from its config when it is built."""
    return {name: {k: v for k, v in vars(module).items() if type(v) in (int, float)}
            for name, module in model.named_modules()}


def derived_updates(model: nn.Module, targets: list[RotaryTarget], changes: list[tuple[Any, Callable[[Any], None]]]
                    ) -> list[tuple[nn.Module, str, Any]]:
    """(module, attribute, value) for what the model derives from its rope config at construction, outside the
    rotary modules, that a patch changes: DeepSeek's softmax `scaling` (from `mscale_all_dim` and the factor),
    and whatever other family does the same.

    `changes` pairs each config object the patch rewrites with the function that writes the patch into it. The
    model is built twice on the meta device (no memory), from its config as it is and with the changes written
    into a copy; a plain number that differs between the two, and that the live module still holds as built,
    takes the patched value, so the model in memory runs as a stock reload of its saved checkpoint does.
    """
    if not isinstance(model, PreTrainedModel):
        return []
    memo: dict[int, Any] = {}
    patched = copy.deepcopy(model.config, memo)
    for config, write in changes:
        if id(config) not in memo:
            return []  # a rotary config the model's own config does not hold: nothing to rebuild from
        write(memo[id(config)])
    rotary = [t.name for t in targets]

    def numbers(config: Any) -> dict[str, dict[str, Any]]:
        with torch.device("meta"), warnings.catch_warnings():
            warnings.simplefilter("ignore")
            fresh = type(model)(config)
        return {name: values for name, values in plain_numbers(fresh).items()
                if not any(name == r or name.startswith(r + ".") for r in rotary)}

    try:
        before = numbers(copy.deepcopy(model.config))
    except Exception:
        return []  # a model stock transformers cannot build on the meta device: nothing to compare
    try:
        after = numbers(patched)
    except Exception as err:
        raise RopeConfigError(
            f"Stock transformers cannot build a {model.config.model_type!r} model from the patched config "
            f"({type(err).__name__}: {first_line(err)}), so a saved checkpoint would not load; try ntk or yarn."
        ) from None
    live = dict(model.named_modules())
    updates = []
    for name, values in after.items():
        module = live.get(name)
        for key, value in values.items():
            built = before.get(name, {}).get(key)
            if module is not None and built is not None and value != built and getattr(module, key, None) == built:
                updates.append((module, key, value))
    return updates


def has_dynamic_yarn_hook(module: nn.Module) -> bool:
    """True when `patch_model` gave this rotary module the dynamic-yarn hook (frequencies follow the length)."""
    return hasattr(module, "_ctxext_dynamic")


def length_dependent(model: nn.Module) -> bool:
    """True when the rotary frequencies depend on the current sequence length (dynamic NTK/YaRN, longrope)."""
    for module in model.modules():
        if has_dynamic_yarn_hook(module):  # ctxext's dynamic-yarn hook
            return True
        rope_type = getattr(module, "rope_type", None)
        types = rope_type.values() if isinstance(rope_type, dict) else [rope_type]
        if any(isinstance(t, str) and ("dynamic" in t or t == "longrope") for t in types):
            return True
    return False
