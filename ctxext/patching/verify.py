"""Check a checkpoint patch on the model its config builds, before the output is moved into place.

`patch_checkpoint` plans from config.json alone (no torch). For the model types whose torch-free reading
is proven against their built model (TORCH_FREE_TYPES, a test keeps it true) that is enough; for every
other type, a config can say less than the modules do (a rotary embedding that pads its frequencies, a
construction-time softmax scale, an attention block wider than the config's heads). There the
checkpoint is checked as a model is:

1. the model the source config describes is built with its parameters on the meta device and its
   buffers real (the rotary frequencies, computed by stock code; no weights read, little memory), and
   `patch_model` patches it with the same arguments: every check that makes it refuse runs on the real
   modules, and a refusal refuses the checkpoint with the same sentence;
2. the rope settings that patch wrote must be the checkpoint's own (one reading of the config, two ways);
3. the model the written config describes is built the same way, and its rotary frequencies, attention
   scales and every number its modules derive from the config (DeepSeek's softmax scale) must equal the
   patched model's: what stock transformers will load is what ctxext patched.
"""

from __future__ import annotations

import math
import warnings
from pathlib import Path
from typing import Any, Mapping

from ..errors import CtxextError, InternalError, installed, internal_error
from ..loading import empty_causal_lm, load_config
from ..rope.methods import Scaling

#: model types whose torch-free reading is proven equal to their built model for every method
#: (tests/patching/test_verify.py): their checkpoints are written without importing torch
TORCH_FREE_TYPES = frozenset({"llama", "mistral", "mixtral", "qwen2", "qwen2_moe", "qwen3", "qwen3_moe"})


def needs_model_check(config: Mapping[str, Any]) -> bool:
    """True when a config's torch-free reading is not proven for its model type (see TORCH_FREE_TYPES)."""
    return config.get("model_type") not in TORCH_FREE_TYPES


def skeleton(config: Any, source: str) -> Any:
    """The causal LM `config` describes: parameters on the meta device, buffers (rotary frequencies) real."""
    return empty_causal_lm(config, source, real_buffers=True).eval()


def _rope_section(config: Mapping[str, Any], section: str | None) -> Any:
    cfg = config if section is None else config[section]
    return cfg.get("rope_parameters")


def _numbers(model: Any) -> dict[str, Any]:
    """Every rotary frequency buffer and every plain number the modules hold, by name."""
    import torch

    from .rotary import plain_numbers

    found: dict[str, Any] = {f"{name}.{key}": value for name, values in plain_numbers(model).items()
                             for key, value in values.items()}
    for name, buffer in model.named_buffers():
        if name.rsplit(".", 1)[-1].endswith("inv_freq") and buffer.device.type != "meta":
            found[name] = buffer.detach().to(torch.float32).cpu()
    return found


def _same(a: Any, b: Any) -> bool:
    import torch

    if isinstance(a, torch.Tensor) or isinstance(b, torch.Tensor):
        return isinstance(a, torch.Tensor) and isinstance(b, torch.Tensor) and a.shape == b.shape and torch.equal(a, b)
    if isinstance(a, float) or isinstance(b, float):
        return math.isclose(a, b, rel_tol=1e-6, abs_tol=0.0)
    return a == b


def check_checkpoint_patch(source: Path, staged: Path, new_config: Mapping[str, Any], patch: Any,
                           scaling: Scaling, replace: bool, params: Mapping[str, Any]) -> None:
    """Refuse (CtxextError) a checkpoint patch that `patch_model` would refuse on the built model, or that a stock
    load of the written config (already in `staged`) would run differently from the patched model."""
    from .model import patch_model
    from ..rope.layout import RopeConfigError

    model = skeleton(load_config(source), str(source))
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            patch_model(model, scaling.method, scaling.factor, replace=replace,
                        original_max_position_embeddings=scaling.original_max_position_embeddings, **params)
    except CtxextError:
        raise  # patch_model's own refusal, word for word
    except Exception as err:  # anything else is not the input's fault
        raise internal_error(err, f"checking the patch of {source} on the model it builds") from None
    section = patch.layout.section
    written = _rope_section(new_config, section)
    patched = model.config.to_dict()
    live = _rope_section(patched, section) if section is None or section in patched else None
    if live is None:  # the rotary config is the model's text config, not named as a section of to_dict()
        live = model.get_decoder().config.to_dict().get("rope_parameters") if hasattr(model, "get_decoder") else None
    if live != written:
        raise InternalError(
            f"Internal error in {installed('ctxext') or 'ctxext'} while patching {source}: its reading of config.json "
            f"and of the model that config builds disagree (rope_parameters {written!r} against {live!r}); nothing "
            "was written, and your input is not at fault as far as ctxext can tell: please report this."
        )
    reloaded = skeleton(load_config(staged), str(source))
    ours, stock = _numbers(model), _numbers(reloaded)
    differ = sorted(k for k in ours.keys() & stock.keys() if not _same(ours[k], stock[k]))
    if differ:
        raise RopeConfigError(
            f"Stock transformers would build this {patch.layout.model_type} checkpoint differently from the model "
            f"ctxext patched ({differ[0]} differs"
            f"{f', and {len(differ) - 1} more' if len(differ) > 1 else ''}), so it would not run as planned; "
            f"nothing was written. This model type is not supported for {scaling.method}; try ntk or yarn."
        )
