"""Read a model's RoPE layout from its config, and write a scaling into it in every reader's spelling.

Torch-free: it works on the plain dict of a `config.json` (checkpoint patching, `ctxext info`) and on
a live config's `to_dict()` (in-memory patching), so both paths share one set of rules.

The window rule (which `max_position_embeddings` each method writes) exists because readers derive
the window differently: vLLM multiplies `max_position_embeddings` by `factor` for `linear` and
`dynamic`, takes `original_max_position_embeddings * factor` for `yarn` (newer vLLM: the
`max_position_embeddings` itself) and uses `max_position_embeddings` as is for `llama3` and for any
Gemma 3; stock `dynamic` reads `max_position_embeddings` as the ORIGINAL window. So:

| method        | rope_type written          | max_position_embeddings | every reader then sees |
| ------------- | -------------------------- | ----------------------- | ---------------------- |
| pi            | linear                     | L0 (Gemma 3: L0 x s)    | window L0 x s          |
| ntk           | default, rope_theta raised | L0 x s                  | window L0 x s          |
| dynamic-ntk   | dynamic                    | L0 (Gemma 3: L0 x s)    | window L0 x s          |
| ntk-by-parts  | yarn, attention_factor 1.0 | L0 x s                  | window L0 x s          |
| yarn          | yarn                       | L0 x s                  | window L0 x s          |
| dynamic-yarn  | yarn (static at s)         | L0 x s                  | static YaRN at s       |
| llama3        | llama3                     | L0 x s                  | window L0 x s          |

Both spellings are written: transformers v5's `rope_parameters` (theta inside) and v4's
`rope_scaling` + top-level `rope_theta` (+ `partial_rotary_factor`, Gemma 3's `rope_local_base_freq`),
because a v4 reader of a v5-only config silently falls back to theta 10000 and full rotary dims.
`original_max_position_embeddings` is also written top-level (llama.cpp's converter and transformers'
Phi-3 rule read it there). A `ctxext` key records what was done, so a second patch is recognised.
"""

from __future__ import annotations

import copy
from dataclasses import dataclass, field
from typing import Any, Mapping

from .errors import CtxextError
from .methods import Scaling, ntk_rope_theta

#: model types without RoPE, and what they use instead (for the error message)
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

#: keys of a rope dict that describe a scaling (dropped when a scaling is replaced)
SCALING_KEYS = frozenset(
    {
        "type",
        "rope_type",
        "factor",
        "original_max_position_embeddings",
        "attention_factor",
        "beta_fast",
        "beta_slow",
        "mscale",
        "mscale_all_dim",
        "truncate",
        "low_freq_factor",
        "high_freq_factor",
        "short_factor",
        "long_factor",
    }
)

#: layer types whose attention never spans more than a local window: a patch leaves their rope alone
LOCAL_LAYER_TYPES = ("sliding_attention", "chunked_attention")

#: vLLM does not multiply max_position_embeddings by factor for these model types
WINDOW_IS_SCALED_TYPES = ("gemma3", "gemma3_text")

#: transformers v4 names that differ from the standard ones (GPT-NeoX/Pythia configs carry only these)
V4_NAMES = {
    "gpt_neox": {"rope_theta": "rotary_emb_base", "partial_rotary_factor": "rotary_pct"},
    "gpt_neox_japanese": {"rope_theta": "rotary_emb_base", "partial_rotary_factor": "rotary_pct"},
}

#: model types whose stock config class accepts only these rope types (Phi-3 turns `yarn` into `longrope`)
STOCK_ROPE_TYPES = {
    "phi3": ("default", "longrope"),
}

#: model types transformers 4.57 loads as causal LMs: these get the v4 spelling next to the v5 one
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


class _Remove:
    """Marks a key a patch deletes from the config."""

    def __repr__(self) -> str:
        return "REMOVE"


REMOVE = _Remove()

GLOBAL = None  # the layer-type key of a model with one rope for all layers


def _key(layer_type: str | None) -> str:
    """JSON key for a layer type in the `ctxext` record."""
    return "global" if layer_type is None else layer_type


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

    @property
    def rotary_dim(self) -> int:
        return int(self.head_dim * self.partial_rotary_factor)

    @property
    def nested(self) -> bool:
        return GLOBAL not in self.rope

    @property
    def targets(self) -> tuple[str | None, ...]:
        """Layer types a patch rewrites: all but local (sliding-window) ones, whose span stays short."""
        if not self.nested:
            return (GLOBAL,)
        return tuple(t for t in self.rope if self.rope[t] is not None and t not in LOCAL_LAYER_TYPES)

    @property
    def main(self) -> Mapping[str, Any]:
        """The rope dict of the first patched layer type (the one the v4 spelling describes)."""
        return self.rope[self.targets[0]]

    @property
    def scaling_type(self) -> str:
        """The stock rope_type on the patched layers ('default' when unscaled)."""
        return self.main.get("rope_type", "default")

    @property
    def is_scaled(self) -> bool:
        return self.metadata is not None or self.scaling_type != "default"

    def original_window(self) -> int | None:
        """The pre-training window L0 as this config records it; None when it cannot tell."""
        if self.metadata:
            return int(self.metadata["original_max_position_embeddings"])
        kind = self.scaling_type
        if kind in ("yarn", "llama3", "longrope"):
            value = self.top_level_original or self.main.get("original_max_position_embeddings")
            return int(value) if value else self.max_position_embeddings
        if kind in ("linear", "dynamic") and self.model_type in WINDOW_IS_SCALED_TYPES:
            return None  # Gemma 3 stores the scaled window only
        return self.max_position_embeddings

    def effective_window(self) -> int:
        """The window the scaling is meant for, read with the rules in this module's docstring."""
        if self.metadata:
            return int(self.metadata["max_window"])
        kind, factor = self.scaling_type, float(self.main.get("factor") or 1.0)
        if kind == "yarn":
            return max(self.max_position_embeddings, int(round((self.original_window() or 0) * factor)))
        if kind in ("linear", "dynamic") and self.model_type not in WINDOW_IS_SCALED_TYPES:
            return int(round(self.max_position_embeddings * factor))
        return self.max_position_embeddings

    def describe_scaling(self) -> str:
        if self.metadata:
            m = self.metadata
            return f"{m['method']} (factor {m['factor']:g}, patched by ctxext from a {m['original_max_position_embeddings']}-token window)"
        main = self.main
        parts = [f"factor {main['factor']:g}"] if main.get("factor") else []
        if self.original_window():
            parts.append(f"original window {self.original_window()}")
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
    rope_parameters = cfg.get("rope_parameters")
    rope_scaling = cfg.get("rope_scaling")
    rope_theta = cfg.get("rope_theta", cfg.get("rotary_emb_base"))
    if rope_parameters is None and rope_scaling is None and rope_theta is None:
        raise RopeConfigError(
            f"The config of model type {model_type!r} has no rotary position embedding settings "
            "(no rope_parameters, rope_scaling or rope_theta); ctxext patches RoPE models only."
        )
    partial = cfg.get("partial_rotary_factor", cfg.get("rotary_pct"))

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

    head_dim = cfg.get("head_dim")
    if not head_dim:
        try:
            head_dim = int(cfg["hidden_size"]) // int(cfg["num_attention_heads"])
        except (KeyError, TypeError, ZeroDivisionError):
            raise RopeConfigError(
                f"The config of {model_type!r} gives neither head_dim nor hidden_size and num_attention_heads."
            ) from None
    layout_partial = 1.0
    for params in rope.values():
        if params is not None and params.get("partial_rotary_factor") is not None:
            layout_partial = float(params["partial_rotary_factor"])
            break
    window = cfg.get("max_position_embeddings")
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
        v4_spelling=any(k in cfg for k in ("rope_scaling", "rope_theta", "rotary_emb_base", "rope_local_base_freq")),
    )
    if not layout.targets:
        raise RopeConfigError(
            f"Model type {model_type!r} has rope on its sliding-window layers only and no positional encoding "
            "(NoPE) on its global layers, which already reach any length; there is nothing for ctxext to extend."
        )
    return layout


@dataclass(frozen=True)
class RopePatch:
    """Everything a patch changes, computed before anything is touched."""

    layout: RopeLayout
    scaling: Scaling  # carries original_max_position_embeddings (L0)
    rope: dict[str | None, dict[str, Any] | None]  # new v5 rope dict(s), same keys as layout.rope
    max_position_embeddings: int
    # rope_theta before any scaling, per patched layer type (ntk writes a raised theta; the math starts here)
    base_theta: dict[str | None, float] = field(default_factory=dict)
    top_level: dict[str, Any] = field(default_factory=dict)  # other keys written next to them (v4 spelling...)

    @property
    def original_max_position_embeddings(self) -> int:
        return self.scaling.original_max_position_embeddings

    @property
    def window(self) -> int:
        return int(round(self.original_max_position_embeddings * self.scaling.factor))

    @property
    def rope_parameters(self) -> dict[str, Any]:
        """The v5 `rope_parameters` value: one dict, or one per layer type."""
        return copy.deepcopy(self.rope[GLOBAL] if GLOBAL in self.rope else self.rope)


def window_rule(method: str, original: int, factor: float, model_type: str) -> int:
    """max_position_embeddings to write so that each reader derives the window original x factor."""
    window = int(round(original * factor))
    if factor == 1.0:
        return original
    if method in ("pi", "dynamic-ntk") and model_type not in WINDOW_IS_SCALED_TYPES:
        return original  # vLLM multiplies by factor; stock dynamic reads it as the original window
    return window


def _rope_dict(scaling: Scaling, old: Mapping[str, Any], theta: float, rotary_dim: int) -> dict[str, Any]:
    """The new v5 rope dict of one layer type: the old one's non-scaling keys plus the method's keys."""
    new = {k: v for k, v in old.items() if k not in SCALING_KEYS}
    new["rope_theta"] = theta
    s, L0, p = scaling.factor, scaling.original_max_position_embeddings, scaling.params
    method = scaling.method
    if scaling.is_identity:
        new["rope_type"] = "default"
    elif method == "pi":
        new.update(rope_type="linear", factor=s)
    elif method == "ntk":
        new.update(rope_type="default", rope_theta=ntk_rope_theta(theta, s, rotary_dim))
    elif method == "dynamic-ntk":
        new.update(rope_type="dynamic", factor=s)
    elif method in ("yarn", "ntk-by-parts", "dynamic-yarn"):
        new.update(rope_type="yarn", factor=s, original_max_position_embeddings=L0)
        new.update(beta_fast=p["beta_fast"], beta_slow=p["beta_slow"])
        if method == "ntk-by-parts":
            new["attention_factor"] = 1.0
        elif p.get("attention_factor") is not None:
            new["attention_factor"] = float(p["attention_factor"])
    elif method == "llama3":
        new.update(rope_type="llama3", factor=s, original_max_position_embeddings=L0)
        new.update(low_freq_factor=p["low_freq_factor"], high_freq_factor=p["high_freq_factor"])
    else:  # pragma: no cover - guarded by the registry
        raise AssertionError(method)
    order = ["rope_type", "rope_theta", "factor", "original_max_position_embeddings"]
    return {k: new[k] for k in order if k in new} | {k: v for k, v in new.items() if k not in order}


def _v4_rope_scaling(rope: Mapping[str, Any]) -> dict[str, Any] | None:
    """transformers v4 spelling of one rope dict: no theta or partial inside, `type` kept for old readers."""
    if rope.get("rope_type", "default") == "default":
        return None
    out = {k: v for k, v in rope.items() if k not in ("rope_theta", "partial_rotary_factor")}
    out["type"] = out["rope_type"]
    return out


def plan_patch(layout: RopeLayout, scaling: Scaling, replace: bool = False) -> RopePatch:
    """Work out the new rope settings for `scaling` on `layout`, or raise RopeConfigError saying why not."""
    if layout.is_scaled and not replace:
        raise RopeConfigError(
            f"This {layout.model_type} model already uses {layout.describe_scaling()} RoPE scaling; "
            f"pass replace=True (CLI: --replace) to discard it and apply {scaling.method} to the original "
            "window, or patch the unscaled base model."
        )
    allowed = STOCK_ROPE_TYPES.get(layout.model_type)
    written = "default" if scaling.is_identity else (scaling.spec.rope_type or "yarn")
    if allowed and written not in allowed:
        raise RopeConfigError(
            f"Stock transformers' {layout.model_type} config accepts only rope types {', '.join(allowed)}, "
            f"so a {scaling.method} checkpoint would not load as written; use ntk (a plain rope_theta change)."
        )
    original = scaling.original_max_position_embeddings
    if original is None:
        original = layout.original_window() if layout.is_scaled else layout.max_position_embeddings
        if original is None:
            raise RopeConfigError(
                f"The config of this {layout.model_type} model does not record the window it was pre-trained "
                "with; pass original_max_position_embeddings (CLI: --original-max-position-embeddings)."
            )
        scaling = scaling.with_window(original)
    recorded = (layout.metadata or {}).get("rope_theta", {})
    rope: dict[str | None, dict[str, Any] | None] = {}
    thetas: dict[str | None, float] = {}
    for layer_type, old in layout.rope.items():
        if old is None or layer_type not in layout.targets:
            rope[layer_type] = copy.deepcopy(dict(old)) if old is not None else None
            continue
        thetas[layer_type] = float(recorded.get(_key(layer_type), old["rope_theta"]))
        rope[layer_type] = _rope_dict(scaling, old, thetas[layer_type], layout.rotary_dim)

    window = window_rule(scaling.method, original, scaling.factor, layout.model_type)
    main = rope[layout.targets[0]]
    top: dict[str, Any] = {}
    speaks_v4 = layout.model_type in V4_MODEL_TYPES or layout.v4_spelling
    if speaks_v4 and (not layout.nested or layout.model_type in WINDOW_IS_SCALED_TYPES):
        top["rope_theta"] = main["rope_theta"]
        top["rope_scaling"] = _v4_rope_scaling(main)
        if layout.model_type in WINDOW_IS_SCALED_TYPES and rope.get("sliding_attention"):
            top["rope_local_base_freq"] = rope["sliding_attention"]["rope_theta"]
        if layout.partial_rotary_factor != 1.0:
            top["partial_rotary_factor"] = layout.partial_rotary_factor
        for name, v4_name in V4_NAMES.get(layout.model_type, {}).items():
            if name in top:
                top[v4_name] = top[name]
    else:
        # a model type transformers v4 never had (or a per-layer one): v5 configs without a v4
        # converter would read any rope_scaling key as a replacement for rope_parameters
        top["rope_scaling"] = REMOVE
    if "original_max_position_embeddings" in main or layout.top_level_original is not None:
        top["original_max_position_embeddings"] = original
    if layout.null_head_dim and written in ("yarn", "dynamic"):
        # stock yarn/dynamic read getattr(config, "head_dim", default) and fail on a null head_dim
        top["head_dim"] = layout.head_dim
    if scaling.is_identity:
        top["ctxext"] = REMOVE
    else:
        top["ctxext"] = {
            "method": scaling.method,
            "factor": scaling.factor,
            "original_max_position_embeddings": original,
            "max_window": int(round(original * scaling.factor)),
            "rope_theta": {_key(t): theta for t, theta in thetas.items()},
            "params": {k: v for k, v in scaling.params.items() if v is not None},
        }
    return RopePatch(layout, scaling, rope, window, thetas, top)


def patched_config_dict(config: Mapping[str, Any], patch: RopePatch) -> dict[str, Any]:
    """A copy of a config.json dict with `patch` written in: both spellings, window, record."""
    out = copy.deepcopy(dict(config))
    cfg = out if patch.layout.section is None else out[patch.layout.section]
    cfg["rope_parameters"] = patch.rope_parameters
    cfg["max_position_embeddings"] = patch.max_position_embeddings
    for key, value in patch.top_level.items():
        if value is REMOVE:
            cfg.pop(key, None)
        else:
            cfg[key] = copy.deepcopy(value)
    return out

