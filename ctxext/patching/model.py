"""Patch a loaded Hugging Face causal LM's rotary embedding in place.

    >>> model = AutoModelForCausalLM.from_pretrained("meta-llama/Llama-2-7b-hf")
    >>> patch_model(model, "yarn", 8)            # 8x the model's window
    >>> model.save_pretrained("llama2-yarn-x8")   # loads in stock transformers, no ctxext needed

Only frequencies and one attention scale change: each rotary module's `inv_freq` (float32, whatever
the model's dtype) and `attention_scaling`, the model's config, written with the rules of
`ctxext.rope.plan`, and what the model derives from that config when it is built (DeepSeek's softmax
scale), so that saving and reloading in stock transformers gives the same logits.
"""

from __future__ import annotations

import inspect
import math
import warnings
import dataclasses
from typing import Any, Callable

import torch
from torch import nn

from .._compat import drop_serialised_config_key, has_stock_dynamic_update, set_serialised_config_key
from ..errors import first_line
from ..rope.methods import Scaling, resolve
from ..rope.functions import compute_inv_freq, default_inv_freq
from ..rope.layout import GLOBAL, RopeConfigError, RopeLayout, read_layout
from ..rope.plan import REMOVE, RopePatch, patched_config_dict, plan_patch
from ..rope.readers import ReaderWarning, reader_notes
from .rotary import (RotaryTarget, built_frequencies, derived_updates, frequencies, has_dynamic_yarn_hook, prefix,
                     rotary_modules, serves, set_frequencies)

__all__ = ["apply_patch", "has_dynamic_yarn_hook", "patch_model"]


def _frequency_args(patch: RopePatch, layer_type: str | None, scaling: Scaling) -> dict:
    """Keyword arguments of compute_inv_freq for `scaling` on one patched layer type (seq_len aside)."""
    return dict(
        method=scaling.method,
        dim=patch.layout.rotary_dim_of(layer_type),
        head_dim=patch.layout.exponent_dim_of(layer_type),
        rope_theta=patch.base_theta[layer_type],
        factor=scaling.factor,
        original_max_position_embeddings=patch.original_max_position_embeddings,
        **{k: v for k, v in scaling.params.items() if v is not None},
    )


def _stored(patch: RopePatch, layer_type: str | None) -> Scaling:
    """The scaling a stock reader of the written config runs (dynamic-yarn is stored as static yarn)."""
    encoded = patch.encoding[layer_type]
    if encoded.method == "dynamic-yarn":
        return Scaling("yarn", encoded.factor, encoded.params, encoded.original_max_position_embeddings)
    return encoded


def _probe_lengths(patch: RopePatch) -> list[int]:
    """Lengths at which the stock forward is compared with ctxext's formulas: growing, then short again."""
    L0, window = patch.original_max_position_embeddings, patch.window
    lengths = [max(1, L0 // 2), L0, L0 + 1, max(L0 + 1, (L0 + window) // 2), window, 2 * window]
    return sorted(set(lengths)) + [max(1, L0 // 2)]


def _angles_match(output: Any, inv_freq: torch.Tensor, scale: float, positions: torch.Tensor) -> bool | None:
    """Do a rotary forward's (cos, sin) hold cos/sin(position x inv_freq) x scale? None: a layout not known.

    Known layouts of the last dim: the two halves repeated (rotate_half, most models), the pairs
    interleaved (GPT-J style), or the rotary half alone. The tolerance grows with the angle, since stock
    code may round a frequency differently by a float32 ulp (dynamic NTK's base is a float32 tensor
    at run time), which moves the angle at position p by about p x 1e-7 x inv_freq.
    """
    if not (isinstance(output, tuple) and len(output) == 2 and all(isinstance(t, torch.Tensor) for t in output)):
        return None
    angles = positions.double()[:, None] * inv_freq.double()[None, :]  # [n, dim/2]
    slack = (1e-5 + 1e-6 * angles) * scale  # [n, dim/2]
    verdict = None
    for got, fn in zip(output, (torch.cos, torch.sin)):
        if got.dim() < 2:
            return None
        got = got.detach().double().reshape(-1, got.shape[-2], got.shape[-1])[0]  # [n, D]
        half = fn(angles) * scale  # [n, dim/2]
        layouts = {half.shape[-1]: [(half, slack)],
                   2 * half.shape[-1]: [(torch.cat([half, half], -1), torch.cat([slack, slack], -1)),
                                        (half.repeat_interleave(2, -1), slack.repeat_interleave(2, -1))]}
        if got.shape[0] != len(positions) or got.shape[-1] not in layouts:
            return None
        ok = any(bool(((got - want).abs() <= tol).all()) for want, tol in layouts[got.shape[-1]])
        verdict = ok if verdict is None else verdict and ok
    return verdict


def _check_stock_forward(stock: nn.Module, patch: RopePatch, layer_types: list) -> None:
    """Run the stock rotary forward at lengths inside and past the windows, compare with ctxext's formulas.

    This is what the model will actually do at run time: a scaling that a stock module reads but never
    engages (dynamic NTK on a config whose window it takes as the original, a forward that rebuilds
    frequencies without the length) is refused here.
    """
    try:
        signature = inspect.signature(stock.forward)
        params = list(signature.parameters)
    except (TypeError, ValueError):
        return
    if params[:2] != ["x", "position_ids"]:
        return  # not the standard rotary contract
    head_dim = patch.layout.head_dim
    for length in _probe_lengths(patch):
        positions = torch.tensor(sorted({0, 1, length // 2, length - 1}))  # [n]
        x = torch.zeros(1, 1, len(positions), head_dim)
        for layer_type in layer_types:
            kwargs = {} if layer_type is GLOBAL else {"layer_type": layer_type}
            if layer_type is not GLOBAL and "layer_type" not in params:
                return
            try:
                with torch.no_grad():
                    output = stock(x, positions[None], **kwargs)
            except Exception:
                return  # a forward that needs more than the standard arguments: nothing to compare with
            stored = _stored(patch, layer_type)
            inv_freq, scale = compute_inv_freq(seq_len=length, **_frequency_args(patch, layer_type, stored))
            verdict = _angles_match(output, inv_freq, scale, positions)
            if verdict is False:
                raise RopeConfigError(
                    f"Stock transformers' {type(stock).__name__} does not use the frequencies ctxext computes for "
                    f"{patch.scaling.method} at {length:,} tokens (it {_what_went_wrong(output, patch, layer_type, length)}), "
                    "so this model type is not supported for that method; try yarn or ntk."
                )


def _what_went_wrong(output: tuple, patch: RopePatch, layer_type: str | None, length: int) -> str:
    """A few words on how a stock forward's angles differ from ctxext's: unscaled, or otherwise."""
    positions = torch.tensor(sorted({0, 1, length // 2, length - 1}))
    layout = patch.layout
    base = default_inv_freq(layout.rotary_dim_of(layer_type), patch.base_theta[layer_type], layout.exponent_dim_of(layer_type))
    if _angles_match(output, base, 1.0, positions):
        return "keeps the original frequencies"
    return "computes other frequencies or another attention scale"


def _check_stock_reading(target: RotaryTarget, patch: RopePatch, expected: dict) -> None:
    """Build the rotary module stock transformers would build from the patched config; refuse on any difference.

    This catches readers that silently reinterpret a config (Phi-3's config turns `yarn` into
    `longrope`, for instance) before anything is changed, and (see _check_stock_forward) stock code
    that builds the right frequencies but does not use them at run time.
    """
    config = target.config
    patched = patched_config_dict(config.to_dict(), patch)
    try:
        stock_config = type(config).from_dict(patched)
    except Exception as err:  # the config class's own validation
        raise RopeConfigError(
            f"Stock transformers cannot load {patch.scaling.method} for model type {patch.layout.model_type!r}: "
            f"its config refuses it ({first_line(err, last=True)}); try ntk, a plain rope_theta change."
        ) from None
    try:
        inspect.signature(type(target.module)).bind(stock_config)
    except TypeError:
        return  # not the config-only constructor of the standard contract: nothing to compare with
    try:
        with torch.device("cpu"):
            stock = type(target.module)(stock_config)
    except Exception as err:
        raise RopeConfigError(
            f"Stock transformers cannot build the rotary embedding of {patch.layout.model_type!r} from a "
            f"{patch.scaling.method} config ({type(err).__name__}: {err}); this model type is not supported for "
            "that method."
        ) from None
    for layer_type, (inv_freq, scale) in expected.items():
        stock_inv_freq, stock_scale = frequencies(stock, layer_type)
        if not (torch.equal(stock_inv_freq.float(), inv_freq) and math.isclose(stock_scale, scale, rel_tol=1e-6)):
            raise RopeConfigError(
                f"Stock transformers would read this {patch.scaling.method} config of {patch.layout.model_type!r} "
                "differently from what ctxext computes, so a saved checkpoint would not reload the same; "
                "this model type is not supported for that method."
            )
    _check_stock_forward(stock, patch, list(expected))


def _check_module(target: RotaryTarget, layout: RopeLayout, layer_type: str | None) -> None:
    """Refuse a rotary module whose frequencies do not follow the layout (an unfamiliar rope variant)."""
    current = built_frequencies(target.module, layer_type)
    cls = type(target.module).__name__
    dim, exponent_dim = layout.rotary_dim_of(layer_type), layout.exponent_dim_of(layer_type)
    count = (exponent_dim or dim) // 2  # proportional rope pads with zeros to the whole head
    if current.shape != (count,):
        raise RopeConfigError(
            f"ctxext does not recognise the rotary embedding {cls}: it holds {current.numel()} frequencies "
            f"where the config implies {count}."
        )
    if layout.kind_of(layer_type) == "default" and not layout.metadata:
        expected = default_inv_freq(dim, float(layout.rope[layer_type]["rope_theta"]), exponent_dim)
        tol = 1e-5 if current.dtype == torch.float32 else 1e-2
        if not torch.allclose(current.detach().float().cpu(), expected, rtol=tol, atol=0):
            raise RopeConfigError(
                f"ctxext does not recognise the rotary embedding {cls}: its frequencies are not "
                "rope_theta^(-2i/d), so scaling them would not do what the method promises."
            )


def _apply_config(config: Any, patch: RopePatch) -> None:
    """Write the patch into a live config: v5 attributes plus the v4 spelling for serialisation."""
    config.rope_parameters = patch.rope_parameters
    config.max_position_embeddings = patch.max_position_embeddings
    for key, value in patch.top_level.items():
        if value is REMOVE:
            drop_serialised_config_key(config, key)
        elif key == "rope_scaling":
            # `rope_scaling` is a v5 property aliasing rope_parameters: write the v4 spelling into
            # config.json without changing what the alias returns
            set_serialised_config_key(config, "rope_scaling", value)
        else:
            setattr(config, key, value)


def _stock_init_fn(module: nn.Module, rope_type: str) -> Any:
    """The frequency function a stock module of this class picks for `rope_type` (as its __init__ does)."""
    from transformers.modeling_rope_utils import ROPE_INIT_FUNCTIONS

    if rope_type == "default":
        return getattr(type(module), "compute_default_rope_parameters", module.rope_init_fn)
    return ROPE_INIT_FUNCTIONS[rope_type]


def _dynamic_yarn_hook(module: nn.Module, args: tuple, kwargs: dict) -> None:
    """Forward pre-hook: recompute YaRN frequencies for the current length before the rotary forward."""
    state = module._ctxext_dynamic
    position_ids = kwargs["position_ids"] if "position_ids" in kwargs else args[1]
    layer_type = kwargs.get("layer_type", args[2] if len(args) > 2 else None)
    if layer_type not in state["targets"]:
        return
    seq_len = int(position_ids.max()) + 1
    if state["seq_len"].get(layer_type) == seq_len:
        return
    inv_freq, scale = compute_inv_freq(seq_len=seq_len, **state["args"][layer_type])
    set_frequencies(module, layer_type, inv_freq, scale, rebuild=False)
    state["seq_len"][layer_type] = seq_len


def patch_model(
    model: nn.Module,
    method: str,
    factor: float,
    *,
    original_max_position_embeddings: int | None = None,
    replace: bool = False,
    **params: float | None,
) -> nn.Module:
    """Rewrite `model`'s rotary embedding for `method` at `factor` x its window, in place; returns `model`.

    `original_max_position_embeddings` defaults to the model's current window. A model that already
    carries a scaling (Llama 3.1's llama3, Qwen's yarn, Phi-3's longrope, a ctxext patch) is refused
    unless `replace=True`, which discards that scaling and applies `method` to the original window
    the config records (so `factor` counts from the pre-training window, not the scaled one).
    `factor=1` with `replace=True` restores the unscaled model.

    Raises ValueError/TypeError with a sentence on bad input, and then leaves the model untouched.
    Warns (ReaderWarning, one sentence each) where vLLM, llama.cpp or transformers v4 would run a saved
    checkpoint differently (see ctxext.rope.readers).
    """
    scaling = resolve(method, factor, original_max_position_embeddings, **params)
    return _patch(model, scaling, lambda layout: plan_patch(layout, scaling, replace=replace))


def apply_patch(model: nn.Module, patch: RopePatch) -> nn.Module:
    """Patch `model` in place with a plan already made from its config (`plan_patch`), without planning again.

    The checks are `patch_model`'s (the modules follow the layout, stock transformers reads the patched
    config the same); a plan made for another config's rope is refused.
    """

    def planned(layout: RopeLayout) -> RopePatch:
        if dataclasses.replace(layout, section=patch.layout.section) != patch.layout:
            raise RopeConfigError(
                f"This patch was planned for another {patch.layout.model_type} rope layout than the model's "
                f"{layout.model_type} config; plan it from this model's config."
            )
        return patch

    return _patch(model, patch.scaling, planned)


def _patch(model: nn.Module, scaling: Scaling, plan: Callable[[RopeLayout], RopePatch]) -> nn.Module:
    """Plan (`plan(layout)` per rotary config), check everything, then apply: the body of patch_model and apply_patch."""
    targets = rotary_modules(model)
    if not targets:
        config = getattr(model, "config", None)
        if config is not None:
            read_layout(config.to_dict())  # says what a known non-RoPE model uses instead
        model_type = getattr(config, "model_type", type(model).__name__)
        raise RopeConfigError(
            f"Model {model_type!r} has no rotary embedding module ctxext can patch; "
            "ctxext extends RoPE models such as Llama, Qwen, Mistral or Gemma."
        )

    # 1. plan everything (validation included) before touching anything
    plans: dict[int, tuple[Any, RopePatch]] = {}
    for target in targets:
        if id(target.config) in plans:
            continue
        layout = read_layout(target.config.to_dict())
        plans[id(target.config)] = (target.config, plan(layout))
    updates = []
    for target in targets:
        patch = plans[id(target.config)][1]
        layout = patch.layout
        expected = {}
        # a per-layer-type module holds buffers only for the layer types the model uses
        used = [t for t in layout.targets if serves(target.module, t)]
        for layer_type in used:
            _check_module(target, layout, layer_type)
            stored = _stored(patch, layer_type)
            if stored.is_dynamic and not stored.is_identity and not has_stock_dynamic_update(target.module):
                raise RopeConfigError(
                    f"{type(target.module).__name__} does not recompute its frequencies at run time in stock "
                    f"transformers, so {scaling.method} would not survive a save and reload; use ntk or yarn instead."
                )
            # what stock transformers builds from the written config (dynamic-yarn: static yarn at factor)
            expected[layer_type] = compute_inv_freq(**_frequency_args(patch, layer_type, stored))
            # dynamic methods start from the original window; they grow at run time
            if patch.scaling.method == "dynamic-yarn":  # what the hook computes, however the config spells it
                args = _frequency_args(patch, layer_type, patch.scaling)
                inv_freq, scale = compute_inv_freq(**args)
            else:
                args, (inv_freq, scale) = None, expected[layer_type]
            updates.append((target, patch, layer_type, inv_freq, scale, args))
        _check_stock_reading(target, patch, expected)
    derived = derived_updates(model, targets, [(config, lambda c, p=patch: _apply_config(c, p))
                                               for config, patch in plans.values()])

    # 2. apply
    if scaling.method == "dynamic-yarn" and not scaling.is_identity:
        warnings.warn(
            "dynamic-yarn is not expressible in a stock config: it works in this process, but a checkpoint "
            f"saved from this model loads in stock transformers as static yarn at factor {scaling.factor:g}.",
            stacklevel=2,
        )
    notes = {note for config, patch in plans.values()
             for note in reader_notes(patched_config_dict(config.to_dict(), patch))}
    for note in sorted(notes):
        warnings.warn(note, ReaderWarning, stacklevel=2)
    for config, patch in plans.values():
        _apply_config(config, patch)
    for module, key, value in derived:  # e.g. DeepSeek's softmax scale, as a stock reload builds it
        setattr(module, key, value)
    dynamic_args: dict[int, dict] = {}
    for target, patch, layer_type, inv_freq, scale, args in updates:
        module = target.module
        set_frequencies(module, layer_type, inv_freq, scale)
        rope_type = patch.rope[layer_type]["rope_type"]
        if args is not None and not patch.scaling.is_identity:
            rope_type = "yarn"  # dynamic-yarn's hook sets the frequencies; stock's own run-time update must not
        if layer_type is GLOBAL:
            module.rope_type = rope_type
        else:
            module.rope_type[layer_type] = rope_type
        if hasattr(module, "rope_init_fn"):  # modules that rebuild their frequencies from the config each forward
            module.rope_init_fn = _stock_init_fn(module, rope_type)
        if hasattr(module, f"{prefix(layer_type)}max_seq_len_cached"):  # the module-wide ones: below, for every module
            setattr(module, f"{prefix(layer_type)}max_seq_len_cached", patch.max_position_embeddings)
        if args is not None and not patch.scaling.is_identity:
            dynamic_args.setdefault(id(module), {})[layer_type] = args
    for target in {id(t.module): t for t in targets}.values():
        module = target.module
        for attr in ("max_seq_len_cached", "original_max_seq_len"):  # built from the window, used or not (Olmo 3's
            if hasattr(module, attr):  # module serves its sliding layers only, yet a stock build reads the new window)
                setattr(module, attr, plans[id(target.config)][1].max_position_embeddings)
        handle = getattr(module, "_ctxext_hook", None)
        if handle is not None:
            handle.remove()
            del module._ctxext_hook, module._ctxext_dynamic
        if id(module) in dynamic_args:
            module._ctxext_dynamic = {"targets": set(dynamic_args[id(module)]), "args": dynamic_args[id(module)], "seq_len": {}}
            module._ctxext_hook = module.register_forward_pre_hook(_dynamic_yarn_hook, with_kwargs=True)
    return model
