"""Read a model's RoPE layout from its config dict: which rope, which window, which layers.

Torch-free: it works on the plain dict of a `config.json` (checkpoint patching, `ctxext info`) and on
a live config's `to_dict()` (in-memory patching), so both paths share one set of rules. Both
transformers spellings are read (v5's `rope_parameters`, v4's `rope_scaling` + `rope_theta` and
GPT-NeoX's `rotary_emb_base` / `rotary_pct`), per-layer-type rope (Gemma 3) and partial rotary
included. What a patch then writes is `ctxext.rope.plan`.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any, Mapping

from ..errors import CtxextError
from .methods import longrope_attention_factor, scaled_window, yarn_attention_factor, yarn_softmax_factor

NO_ROPE = {
    "gpt2": "learned absolute position embeddings",
    "opt": "learned absolute position embeddings",
    "gpt_bigcode": "learned absolute position embeddings",
    "gpt_neo": "learned absolute position embeddings",
    "biogpt": "learned absolute position embeddings",
    "xglm": "sinusoidal position embeddings",
    "bloom": "ALiBi attention biases",
    "mpt": "ALiBi attention biases",
    "ctrl": "sinusoidal position embeddings",
    "openai-gpt": "learned absolute position embeddings",
}

#: layer types whose attention never spans more than a local window: a patch leaves their rope alone
LOCAL_LAYER_TYPES = ("sliding_attention", "chunked_attention")

#: model types whose rope dicts are keyed by rope labels rather than layer types, and the labels that belong to
#: sliding-window layers only: DeepSeek V4's `main` rope serves its pure sliding-window layers, `compress` its
#: compressed layers (attention, compressor and indexer), which reach the whole sequence and carry the scaling
LOCAL_ROPE_KEYS = {"deepseek_v4": ("main",)}

#: rope types that describe the rotary layout rather than a scaling: Gemma 4's `proportional` (p-RoPE) rotates
#: the first partial_rotary_factor x head_dim dims with frequencies b^(-2i/head_dim) and pads the rest with zero
#: frequencies; its `factor` (1 when absent) divides them all, which is PI on that layout
SHAPE_ROPE_TYPES = ("proportional",)

#: the methods proportional rope carries in a stock config: pi as its factor, ntk as its rope_theta (stock
#: transformers' other rope types give rotary_dim / 2 frequencies where its Gemma 4 attention needs head_dim / 2)
PROPORTIONAL_METHODS = ("pi", "ntk")

#: vLLM does not multiply max_position_embeddings by factor for these model types
WINDOW_IS_SCALED_TYPES = ("gemma3", "gemma3_text")

#: model types whose attention folds YaRN's yarn_mscale(factor, mscale_all_dim)^2 into its softmax scale when it is
#: built (transformers' yarn_apply_mscale: DeepSeek and the other MLA families), so the rope config reaches the whole
#: head, not only cos/sin of the rotary dims; tests/rope check the list against the installed transformers
SOFTMAX_MSCALE_TYPES = frozenset({
    "axk1", "axk2", "bailing_hybrid", "deepseek_v2", "deepseek_v3", "deepseek_v32", "glm4_moe_lite", "glm_moe_dsa",
    "hy_v4", "hy_v4_vl", "hy_v4_vl_text", "longcat_flash", "minicpm3", "mistral4", "mistral_large4",
    "mistral_large4_text", "youtu",
})

#: model types whose stock config sets this attention_factor on a yarn rope that names none (DeepSeek V4's
#: compress rope, from its shipped flat rope_scaling): their family's spelling of yarn
FAMILY_YARN_ATTENTION_FACTOR = {"deepseek_v4": 1.0}

#: config keys that give the width each head rotates in, in the order a config is read (the first one present)
HEAD_DIM_KEYS = ("head_dim", "qk_rope_head_dim", "attention_head_dim", "kv_channels")
#: the names a few configs save standard keys under (their config class's attribute_map: DBRX's d_model, n_heads and
#: max_seq_len, Bailing-hybrid's model_max_length); read where the standard name is absent, and written back under the
#: name the config uses
KEY_ALIASES = {"hidden_size": ("d_model",), "num_attention_heads": ("n_heads",),
               "max_position_embeddings": ("max_seq_len", "model_max_length")}


def config_key(cfg: Mapping[str, Any], key: str) -> str:
    """The name `cfg` saves a standard key under: the key itself, or its alias when only that is present."""
    if key in cfg:
        return key
    return next((alias for alias in KEY_ALIASES.get(key, ()) if alias in cfg), key)

GLOBAL = None  # the layer-type key of a model with one rope for all layers


def attention_scales(model_type: str, rope: Mapping[str, Any], max_position_embeddings: int | None = None
                     ) -> tuple[float, float]:
    """(cos/sin scale of the rotary dims, factor on the whole-head softmax scale) that stock transformers derives
    from one rope dict of `model_type`: the two places a rope config's attention scale can go."""
    kind = rope.get("rope_type", rope.get("type", "default"))
    factor = rope.get("factor")
    original = rope.get("original_max_position_embeddings")
    if factor is None and original and max_position_embeddings:
        factor = max_position_embeddings / original  # transformers' yarn reads the ratio when factor is absent
    factor = float(factor or 1.0)
    explicit = rope.get("attention_factor")
    cos_sin = 1.0
    if kind == "yarn":
        cos_sin = explicit if explicit is not None else yarn_attention_factor(
            factor, rope.get("mscale"), rope.get("mscale_all_dim"))
    elif kind == "longrope" and original:
        cos_sin = explicit if explicit is not None else longrope_attention_factor(factor, original)
    softmax = 1.0
    if kind != "default" and model_type in SOFTMAX_MSCALE_TYPES:
        softmax = yarn_softmax_factor(factor, rope.get("mscale_all_dim"))
    return float(cos_sin), float(softmax)


def recorded_window(record: Mapping[str, Any]) -> int:
    """The window a `ctxext` config record says a patch reached (`window`; ctxext 0.1 wrote `max_window`)."""
    return int(record["window"] if "window" in record else record["max_window"])


class RopeConfigError(CtxextError):
    """The config cannot be patched as asked; the message says why and what to do."""


@dataclass(frozen=True)
class RopeLayout:
    """What a config says about its rotary embedding, normalised to transformers v5's view."""

    model_type: str
    head_dim: int
    partial_rotary_factor: float
    max_position_embeddings: int
    # layer type (None for a single global rope) -> rope dict in v5 form (rope_type, rope_theta, ...)
    rope: Mapping[str | None, Mapping[str, Any] | None]
    top_level_original: int | None = None  # a top-level original_max_position_embeddings (Phi-3)
    metadata: Mapping[str, Any] | None = None  # the `ctxext` record of an earlier patch
    section: str | None = None  # None = top level; "text_config" for composite models
    v4_spelling: bool = False  # the config carries transformers v4 keys (rope_scaling, rope_theta...)
    null_head_dim: bool = False  # the config says head_dim: null (derived from hidden_size / num_attention_heads)
    layer_rope_theta: tuple | None = None  # Granite-SWA: each layer finds its rope by this rope_theta (0 = NoPE)
    # layer type -> head width where it differs from head_dim (Gemma 4's full layers: global_head_dim)
    layer_head_dim: Mapping[str | None, int] | None = None

    @property
    def rotary_dim(self) -> int:
        """Rotary dims of the first patched layer type (see `rotary_dim_of`)."""
        return self.rotary_dim_of(self.targets[0])

    def head_dim_of(self, layer_type: str | None) -> int:
        """Head width of the layers that use `layer_type`'s rope (Gemma 4: its full layers are wider)."""
        return int((self.layer_head_dim or {}).get(layer_type, self.head_dim))

    def is_proportional(self, layer_type: str | None) -> bool:
        """Does this layer type use proportional rope (p-RoPE: frequencies over the whole head, zeros past the rotary dims)?"""
        params = self.rope.get(layer_type) or {}
        return params.get("rope_type") in SHAPE_ROPE_TYPES

    def rotary_dim_of(self, layer_type: str | None) -> int:
        """Dimensions that rotate, per layer type: head width x partial_rotary_factor (proportional rope rounds
        to whole pairs, as stock transformers does)."""
        params = self.rope.get(layer_type) or {}
        partial = float(params.get("partial_rotary_factor") or 1.0)  # read_layout fills in a top-level one
        head_dim = self.head_dim_of(layer_type)
        if self.is_proportional(layer_type):
            return 2 * int(partial * head_dim // 2)
        return int(head_dim * partial)

    def exponent_dim_of(self, layer_type: str | None) -> int | None:
        """The width a layer type's frequency exponent counts in, where it is not its rotary dims: proportional
        rope's b^(-2i/head_dim) over the whole head (its frequencies then number head_dim / 2); else None."""
        return self.head_dim_of(layer_type) if self.is_proportional(layer_type) else None

    @property
    def nested(self) -> bool:
        return GLOBAL not in self.rope

    def is_local(self, layer_type: str | None) -> bool:
        """A rope key of layers that attend within a local window only (sliding, chunked, DeepSeek V4's `main`)."""
        return layer_type in LOCAL_LAYER_TYPES or layer_type in LOCAL_ROPE_KEYS.get(self.model_type, ())

    @property
    def targets(self) -> tuple[str | None, ...]:
        """Layer types a patch rewrites: all but local (sliding-window) ones, whose span stays short.

        Sorted by name, so that which one comes first (`main`, the v4 spelling, what counts as the scaling) does
        not depend on the order of the config's keys (config.json is saved with sorted keys, a live config not).
        """
        if not self.nested:
            return (GLOBAL,)
        return tuple(sorted(t for t in self.rope if self.rope[t] is not None and not self.is_local(t)))

    def kind_of(self, layer_type: str | None) -> str:
        """The scaling a layer type's rope carries, as a stock rope_type: 'default' when unscaled (proportional rope
        without a factor other than 1 included)."""
        params = self.rope[layer_type]
        kind = params.get("rope_type", "default")
        if kind in SHAPE_ROPE_TYPES and float(params.get("factor") or 1.0) == 1.0:
            return "default"
        return kind

    @property
    def main(self) -> Mapping[str, Any]:
        """The rope dict of the first scaled patched layer type, or of the first patched one when none is scaled."""
        scaled = [t for t in self.targets if self.kind_of(t) != "default"]
        return self.rope[(scaled or self.targets)[0]]

    @property
    def scaling_type(self) -> str:
        """The stock rope_type on the patched layers ('default' when unscaled)."""
        scaled = [self.kind_of(t) for t in self.targets if self.kind_of(t) != "default"]
        return scaled[0] if scaled else "default"

    @property
    def window_is_scaled(self) -> bool:
        """Does max_position_embeddings hold the scaled window for linear-like scalings (Gemma 3; proportional rope,
        whose factor ctxext writes with the new window)?"""
        return self.model_type in WINDOW_IS_SCALED_TYPES or any(self.is_proportional(t) for t in self.targets)

    @property
    def is_scaled(self) -> bool:
        return self.metadata is not None or self.scaling_type != "default"

    @property
    def original_max_position_embeddings(self) -> int | None:
        """The pre-training window L0 as this config records it; None when it cannot tell."""
        if self.metadata:
            return int(self.metadata["original_max_position_embeddings"])
        kind = self.scaling_type
        if kind in ("yarn", "llama3", "longrope"):
            value = self.top_level_original or self.main.get("original_max_position_embeddings")
            return int(value) if value else self.max_position_embeddings
        if kind in ("linear", "dynamic", *SHAPE_ROPE_TYPES) and self.window_is_scaled:
            return None  # Gemma 3 stores the scaled window only
        return self.max_position_embeddings

    @property
    def window(self) -> int:
        """The window the config's scaling is meant for (the `window` of `Scaling`), read with this module's rules."""
        if self.metadata:
            return recorded_window(self.metadata)
        kind, factor = self.scaling_type, float(self.main.get("factor") or 1.0)
        if kind == "yarn":
            return max(self.max_position_embeddings, scaled_window(self.original_max_position_embeddings or 0, factor))
        if kind in ("linear", "dynamic", *SHAPE_ROPE_TYPES) and not self.window_is_scaled:
            return scaled_window(self.max_position_embeddings, factor)
        return self.max_position_embeddings

    def describe_scaling(self) -> str:
        if self.metadata:
            m = self.metadata
            return f"{m['method']} (factor {m['factor']:g}, patched by ctxext from a {m['original_max_position_embeddings']}-token window)"
        main = self.main
        parts = [f"factor {main['factor']:g}"] if main.get("factor") else []
        if self.original_max_position_embeddings:
            parts.append(f"original window {self.original_max_position_embeddings}")
        return f"{self.scaling_type} ({', '.join(parts)})" if parts else self.scaling_type


def _section(config: Mapping[str, Any]) -> tuple[str | None, Mapping[str, Any]]:
    """Find the (sub)config that carries the rope: the top level, or text_config of a composite model."""
    rope_keys = ("rope_parameters", "rope_theta", "rope_scaling")
    if any(config.get(k) is not None for k in rope_keys):
        return None, config
    sub = config.get("text_config")
    if isinstance(sub, Mapping) and any(sub.get(k) is not None for k in rope_keys):
        return "text_config", sub
    return None, config


def _is_nested(rope_parameters: Any) -> bool:
    return (
        isinstance(rope_parameters, Mapping)
        and bool(rope_parameters)
        and "rope_type" not in rope_parameters
        and "rope_theta" not in rope_parameters
        and "type" not in rope_parameters
        and all(v is None or isinstance(v, Mapping) for v in rope_parameters.values())
    )


#: rope dict keys that must be numbers (when present and not null), and what each must satisfy
NUMBER_KEYS = {
    "rope_theta": ("a positive number", lambda v: v > 0),
    "factor": ("a positive number", lambda v: v > 0),
    "partial_rotary_factor": ("a number in (0, 1]", lambda v: 0 < v <= 1),
    "attention_factor": ("a positive number", lambda v: v > 0),
    "beta_fast": ("a number", lambda v: True),
    "beta_slow": ("a number", lambda v: True),
    "low_freq_factor": ("a positive number", lambda v: v > 0),
    "high_freq_factor": ("a positive number", lambda v: v > 0),
    "mscale": ("a number", lambda v: True),
    "mscale_all_dim": ("a number", lambda v: True),
}
#: config keys that must be whole numbers of at least 1 (when present and not null)
WHOLE_KEYS = ("head_dim", "hidden_size", "num_attention_heads", "max_position_embeddings", "original_max_position_embeddings",
              *HEAD_DIM_KEYS[1:], *(a for names in KEY_ALIASES.values() for a in names))


def _is_number(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)


def _is_whole(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool) and value >= 1


def _wrong(model_type: str, key: str, value: Any, expected: str, where: str = "") -> RopeConfigError:
    return RopeConfigError(
        f"The config of {model_type!r} gives {key} {value!r}{where}, which is not {expected}; fix it in config.json."
    )


def check_config_types(config: Mapping[str, Any]) -> None:
    """Refuse config values of the wrong type (a string where a number belongs) with a sentence.

    Every rule of this module, transformers' and the readers' read these keys; a wrong type would
    surface as a ValueError deep inside one of them. Runs for RoPE and non-RoPE configs alike.
    """
    _, cfg = _section(config)
    model_type = str(cfg.get("model_type") or config.get("model_type") or "unknown")
    for key in ("rope_parameters", "rope_scaling"):
        value = cfg.get(key)
        if value is not None and not isinstance(value, Mapping):
            raise _wrong(model_type, key, value, 'an object of rope settings such as {"rope_type": "default", ...}')
        ropes = {None: value} if not _is_nested(value) else value
        for layer_type, params in (ropes or {}).items():
            if isinstance(params, Mapping):
                _check_rope(model_type, layer_type, params)
    for key, name in (("rope_theta", "rope_theta"), ("rotary_emb_base", "rope_theta"), ("rope_local_base_freq", "rope_theta"),
                      ("partial_rotary_factor", "partial_rotary_factor"), ("rotary_pct", "partial_rotary_factor")):
        value = cfg.get(key)
        expected, ok = NUMBER_KEYS[name]
        if value is not None and not (_is_number(value) and ok(value)):
            raise _wrong(model_type, key, value, expected)
    for key in WHOLE_KEYS:
        value = cfg.get(key)
        if value is not None and not _is_whole(value):
            raise _wrong(model_type, key, value, "a whole number of at least 1")
    metadata = cfg.get("ctxext")
    if metadata is not None:
        fields = {"method": str, "factor": (int, float), "original_max_position_embeddings": int}
        window = "window" if isinstance(metadata, Mapping) and "window" in metadata else "max_window"  # 0.1 wrote max_window
        if not (
            isinstance(metadata, Mapping)
            and all(isinstance(metadata.get(k), t) and not isinstance(metadata.get(k), bool)
                    for k, t in {**fields, window: int}.items())
            and isinstance(metadata.get("rope_theta", {}), Mapping)
            and all(_is_number(v) for v in metadata.get("rope_theta", {}).values())
        ):
            raise RopeConfigError(
                f"The ctxext record in this {model_type!r} config is damaged ({metadata!r}); restore config.json "
                "from the patched checkpoint, or delete the `ctxext` key to treat the model as unpatched."
            )


def _check_rope(model_type: str, layer_type: str | None, params: Mapping[str, Any]) -> None:
    where = "" if layer_type is None else f" for {layer_type} layers"
    for key in ("rope_type", "type"):
        if params.get(key) is not None and not isinstance(params[key], str):
            raise _wrong(model_type, key, params[key], "the name of a rope type", where)
    for key, (expected, ok) in NUMBER_KEYS.items():
        value = params.get(key)
        if value is not None and not (_is_number(value) and ok(value)):
            raise _wrong(model_type, key, value, expected, where)
    value = params.get("original_max_position_embeddings")
    if value is not None and not _is_whole(value):
        raise _wrong(model_type, "original_max_position_embeddings", value, "a whole number of at least 1", where)
    for key in ("short_factor", "long_factor"):
        value = params.get(key)
        if value is not None and not (isinstance(value, (list, tuple)) and all(_is_number(v) for v in value)):
            raise _wrong(model_type, key, value, "a list of numbers", where)


def read_layout(config: Mapping[str, Any]) -> RopeLayout:
    """Normalise a config dict (v4 or v5 spelling) to a RopeLayout, or raise RopeConfigError."""
    section, cfg = _section(config)
    model_type = str(cfg.get("model_type") or config.get("model_type") or "unknown")
    if model_type in NO_ROPE or (model_type == "falcon" and cfg.get("alibi")):
        uses = NO_ROPE.get(model_type, "ALiBi attention biases")
        raise RopeConfigError(
            f"Model type {model_type!r} has no rotary position embeddings (it uses {uses}); "
            "ctxext extends RoPE models such as Llama, Qwen, Mistral or Gemma."
        )
    check_config_types(config)  # wrong-typed values get a sentence, not a ValueError from float()
    rope_parameters = cfg.get("rope_parameters")
    rope_scaling = cfg.get("rope_scaling")
    rope_theta = cfg.get("rope_theta", cfg.get("rotary_emb_base"))
    if rope_parameters is None and rope_scaling is None and rope_theta is None:
        raise RopeConfigError(
            f"The config of model type {model_type!r} has no rotary position embedding settings "
            "(no rope_parameters, rope_scaling or rope_theta); ctxext patches RoPE models only."
        )
    partial = cfg.get("partial_rotary_factor", cfg.get("rotary_pct"))

    if model_type in LOCAL_ROPE_KEYS and not _is_nested(rope_parameters):
        rope_parameters, rope_scaling = _deepseek_v4_rope(cfg, rope_scaling or rope_parameters), None

    rope: dict[str | None, dict[str, Any] | None]
    if _is_nested(rope_parameters) or (model_type in WINDOW_IS_SCALED_TYPES and rope_parameters is None):
        # per-layer-type rope (Gemma 3 and kin); Gemma 3's v4 spelling is rope_theta + rope_local_base_freq
        rope = {k: (dict(v) if v is not None else None) for k, v in (rope_parameters or {}).items()}
        if model_type in WINDOW_IS_SCALED_TYPES:
            full = rope.setdefault("full_attention", {}) or {}
            if rope_scaling:  # v5 merges the v4 spelling into the global layers
                full.update(rope_scaling)
            if rope_theta is not None:
                full.setdefault("rope_theta", rope_theta)
            rope["full_attention"] = full
            local = rope.setdefault("sliding_attention", {}) or {}
            if cfg.get("rope_local_base_freq") is not None:
                local.setdefault("rope_theta", cfg["rope_local_base_freq"])
            rope["sliding_attention"] = local
        for params in rope.values():
            if params is not None:
                params.setdefault("rope_type", params.get("type", "default"))
                if partial is not None:
                    params.setdefault("partial_rotary_factor", partial)
    else:
        # v5 lets a v4 rope_scaling win over rope_parameters, then fills theta from the top level
        params = dict(rope_scaling or rope_parameters or {})
        if rope_scaling and isinstance(rope_parameters, Mapping):
            # the v4 spelling holds neither theta nor partial rotary (ctxext writes them top-level and in v5's
            # rope_parameters): a stock Phi-3 config validates a rope dict without partial_rotary_factor as a KeyError
            for key in ("rope_theta", "partial_rotary_factor"):
                if rope_parameters.get(key) is not None:
                    params.setdefault(key, rope_parameters[key])
        if rope_theta is not None:
            params.setdefault("rope_theta", rope_theta)
        if partial is not None:
            params.setdefault("partial_rotary_factor", partial)
        params.setdefault("rope_type", params.get("type", "default"))
        rope = {GLOBAL: params}

    for layer_type, params in rope.items():
        if params is None:
            continue
        if params.get("rope_theta") is None:
            where = "" if layer_type is None else f" for {layer_type} layers"
            raise RopeConfigError(f"The config of {model_type!r} gives no rope_theta{where}; add it to config.json.")
        params.pop("type", None)  # the legacy spelling of rope_type
        if params["rope_type"] == "su":
            params["rope_type"] = "longrope"

    # the names configs save head_dim under when they save none: MLA (DeepSeek and kin) rotates qk_rope_head_dim dims of
    # each head (GLM-4-MoE-Lite derives head_dim from it), Zamba2 maps head_dim to attention_head_dim (its kv_channels
    # is another width), JetMoE to kv_channels
    head_dim = next((cfg[k] for k in HEAD_DIM_KEYS if cfg.get(k)), None)
    if not head_dim:
        try:
            head_dim = int(cfg[config_key(cfg, "hidden_size")]) // int(cfg[config_key(cfg, "num_attention_heads")])
        except (KeyError, TypeError, ZeroDivisionError):
            raise RopeConfigError(
                f"The config of {model_type!r} gives neither head_dim nor hidden_size and num_attention_heads."
            ) from None
    layout_partial = 1.0
    for params in rope.values():
        if params is not None and params.get("partial_rotary_factor") is not None:
            layout_partial = float(params["partial_rotary_factor"])
            break
    window = cfg.get(config_key(cfg, "max_position_embeddings"))
    if not isinstance(window, int) or isinstance(window, bool) or window < 2:
        raise RopeConfigError(f"The config of {model_type!r} gives no usable max_position_embeddings ({window!r}).")
    layout = RopeLayout(
        model_type=model_type,
        head_dim=int(head_dim),
        partial_rotary_factor=layout_partial,
        max_position_embeddings=window,
        rope=rope,
        top_level_original=cfg.get("original_max_position_embeddings"),
        metadata=cfg.get("ctxext"),
        section=section,
        null_head_dim="head_dim" in cfg and cfg["head_dim"] is None,
        layer_rope_theta=tuple(cfg["layer_rope_theta"]) if isinstance(cfg.get("layer_rope_theta"), list) else None,
        v4_spelling=any(k in cfg for k in ("rope_scaling", "rope_theta", "rotary_emb_base", "rope_local_base_freq")),
        layer_head_dim=_layer_head_dims(model_type, cfg),
    )
    if not layout.targets:
        raise RopeConfigError(
            f"Model type {model_type!r} has rope on its sliding-window layers only and no positional encoding "
            "(NoPE) on its global layers, which already reach any length; there is nothing for ctxext to extend."
        )
    return layout


def _deepseek_v4_rope(cfg: Mapping[str, Any], flat: Mapping[str, Any] | None) -> dict[str, dict[str, Any]]:
    """DeepSeek V4's `main` / `compress` rope dicts from a flat config.json, as its stock config builds them: the
    shipped scaling (rope_scaling) and compress_rope_theta on the compressed layers, plain rope_theta on the
    sliding ones, yarn without its cos/sin scale (attention_factor 1), partial rotary qk_rope_head_dim / head_dim."""
    partial = cfg.get("partial_rotary_factor")
    if partial is None and cfg.get("qk_rope_head_dim") and cfg.get("head_dim"):
        partial = cfg["qk_rope_head_dim"] / cfg["head_dim"]
    partial = 64 / 512 if partial is None else partial  # the family's default
    main = {"rope_type": "default", "rope_theta": cfg.get("rope_theta", 10000.0), "partial_rotary_factor": partial}
    compress = {k: v for k, v in (flat or {}).items() if k not in ("main", "compress")}
    compress.update(rope_theta=cfg.get("compress_rope_theta", 160000.0), partial_rotary_factor=partial)
    compress.setdefault("rope_type", compress.pop("type", "default"))
    if compress["rope_type"] == "yarn":
        compress.setdefault("attention_factor", 1.0)
    return {"main": main, "compress": compress}


def _layer_head_dims(model_type: str, cfg: Mapping[str, Any]) -> dict[str, int] | None:
    """Head widths per layer type from a config's `per_layer_config` (Gemma 4's full layers: global_head_dim)."""
    per_layer, types = cfg.get("per_layer_config"), cfg.get("layer_types")
    if not isinstance(per_layer, Mapping) or not isinstance(types, list):
        return None
    found: dict[str, int] = {}
    for index, overrides in per_layer.items():
        if not isinstance(overrides, Mapping) or overrides.get("head_dim") is None:
            continue
        head_dim = overrides["head_dim"]
        if not _is_whole(head_dim):
            raise _wrong(model_type, "head_dim", head_dim, "a whole number of at least 1", f" for layer {index}")
        try:
            layer_type = types[int(index)]
        except (ValueError, IndexError, TypeError):
            raise RopeConfigError(
                f"The config of {model_type!r} gives per_layer_config for layer {index!r}, which is not one of its "
                f"{len(types)} layers; fix it in config.json."
            ) from None
        if found.setdefault(layer_type, head_dim) != head_dim:
            raise RopeConfigError(
                f"The config of {model_type!r} gives its {layer_type} layers different head widths "
                f"({found[layer_type]} and {head_dim}), but one rope per layer type; ctxext cannot patch it."
            )
    return found or None


#: stock rope types -> the ctxext method that reads them back, and the parameters it takes from the config
STOCK_METHODS = {
    "linear": ("pi", ()),
    "dynamic": ("dynamic-ntk", ()),
    "yarn": ("yarn", ("beta_fast", "beta_slow", "attention_factor", "mscale", "mscale_all_dim")),
    "llama3": ("llama3", ("low_freq_factor", "high_freq_factor")),
    "longrope": ("longrope", ("long_factor", "short_factor", "attention_factor")),
    "proportional": ("pi", ()),  # with a factor: every frequency divided by it
}


def current_scaling(layout: RopeLayout) -> dict[str, Any]:
    """The scaling a config carries, as `method`, `factor`, `original_max_position_embeddings` and `params`.

    Applied again with replace=True it gives the same frequencies: this is what fine-tuning a scaled
    checkpoint "as it is" (a searched longrope one, say) patches with. A ctxext patch is read from its
    record; a stock scaling from its rope parameters, if ctxext's method takes them all.
    """
    if layout.metadata:
        m = layout.metadata
        return {"method": m["method"], "factor": float(m["factor"]),
                "original_max_position_embeddings": int(m["original_max_position_embeddings"]),
                "params": dict(m.get("params") or {})}
    kind = layout.scaling_type
    if kind not in STOCK_METHODS:
        raise RopeConfigError(
            f"This {layout.model_type} model carries no RoPE scaling to keep (rope_type {kind!r}); "
            "give a method and a factor to patch it with."
        )
    method, names = STOCK_METHODS[kind]
    main = layout.main
    known = {"rope_type", "rope_theta", "factor", "original_max_position_embeddings", "partial_rotary_factor", *names}
    extra = sorted(k for k in main if k not in known and main[k] is not None)
    if extra:
        raise RopeConfigError(
            f"This model's {kind} scaling sets {', '.join(extra)}, which ctxext's {method} does not take, so it "
            "cannot be kept as it is; give a method and a factor to patch it with instead."
        )
    original = layout.original_max_position_embeddings or layout.max_position_embeddings
    factor = main.get("factor") or layout.max_position_embeddings / original
    return {"method": method, "factor": float(factor), "original_max_position_embeddings": int(original),
            "params": {k: main[k] for k in names if main.get(k) is not None}}
