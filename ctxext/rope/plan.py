"""Plan a RoPE patch on a config's layout and write it in every reader's spelling.

Torch-free: it works on the plain dict of a `config.json` (checkpoint patching, `ctxext info`) and on
a live config's `to_dict()` (in-memory patching), so both paths share one set of rules.

The window rule (which `max_position_embeddings` each method writes) exists because readers derive
the window differently (measured with vLLM 0.32 and llama.cpp's converter from llama-cpp-python
0.3.36): vLLM multiplies `max_position_embeddings` by `factor` for `linear` and `dynamic` and takes
it as is for `yarn`, `llama3`, `longrope` and any Gemma 3; llama.cpp's GGUF `context_length` is
`max_position_embeddings` as is; stock `dynamic` reads it as the ORIGINAL window. So PI is spelled
as llama3 (the same frequencies) where llama.cpp's converter reads llama3 (Llama, Mistral), and:

| method        | rope_type written          | max_position_embeddings | every reader then sees |
| ------------- | -------------------------- | ----------------------- | ---------------------- |
| pi (Llama)    | llama3, every band divided | L0 x s                  | window L0 x s          |
|   on Gemma 3  | linear                     | L0 x s                  | window L0 x s          |
|   elsewhere   | linear                     | L0                      | llama.cpp: needs -c    |
| ntk           | default, rope_theta raised | L0 x s                  | window L0 x s          |
| dynamic-ntk   | dynamic                    | L0 (Gemma 3 too)        | window L0 x s          |
| ntk-by-parts  | yarn, attention_factor 1.0 | L0 x s                  | window L0 x s          |
| yarn          | yarn                       | L0 x s                  | window L0 x s          |
| dynamic-yarn  | yarn (static at s)         | L0 x s                  | static YaRN at s       |
| llama3        | llama3                     | L0 x s                  | window L0 x s          |
| longrope      | longrope                   | L0 x s                  | window L0 x s          |

What a reader still gets wrong is in `ctxext.rope.readers` (one table), and said when patching.

Stock dynamic NTK reads `max_position_embeddings` as the original window on every model type
(Gemma 3 included), so dynamic-ntk always writes L0 there.

A model type whose stock config accepts only longrope (Phi-3) gets every static per-dimension method
(pi, ntk-by-parts, yarn, llama3) written as longrope with short_factor = long_factor =
theta_i / inv_freq_i and the method's attention factor made explicit: the same frequencies (to a
float32 rounding) and scale, in a rope type that config accepts.

Both spellings are written: transformers v5's `rope_parameters` (theta inside) and v4's
`rope_scaling` + top-level `rope_theta` (+ `partial_rotary_factor`, Gemma 3's `rope_local_base_freq`),
because a v4 reader of a v5-only config silently falls back to theta 10000 and full rotary dims.
`original_max_position_embeddings` is also written top-level (llama.cpp's converter and transformers'
Phi-3 rule read it there). A `ctxext` key records what was done, so a second patch is recognised.
"""

from __future__ import annotations

import copy
import warnings
from dataclasses import dataclass, field
from typing import Any, Mapping

from .._compat import speaks_transformers_v4
from .layout import (FAMILY_YARN_ATTENTION_FACTOR, GLOBAL, config_key, PROPORTIONAL_METHODS, SOFTMAX_MSCALE_TYPES,
                     WINDOW_IS_SCALED_TYPES, RopeConfigError, RopeLayout)
from .methods import Scaling, attention_factor, longrope_attention_factor, ntk_rope_theta
from .readers import LLAMA_CPP_LLAMA3_TYPES

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

#: transformers v4 names that differ from the standard ones (GPT-NeoX/Pythia configs carry only these)
V4_NAMES = {
    "gpt_neox": {"rope_theta": "rotary_emb_base", "partial_rotary_factor": "rotary_pct"},
    "gpt_neox_japanese": {"rope_theta": "rotary_emb_base", "partial_rotary_factor": "rotary_pct"},
}

#: model types whose stock config class accepts only these rope types (Phi-3 turns `yarn` into `longrope`)
STOCK_ROPE_TYPES = {
    "phi3": ("default", "longrope"),
}

#: methods that change each frequency by a fixed per-dimension divisor: expressible as longrope
PER_DIMENSION = ("pi", "ntk-by-parts", "yarn", "dynamic-yarn", "llama3")

#: model types whose stock rotary forward rebuilds the frequencies from the config without the current
#: length (Phi-3.5-MoE): nothing that depends on the length (dynamic NTK, longrope's two sets) works there
LENGTH_BLIND_TYPES = frozenset({"phimoe"})

#: model types whose stock rotary forward scales cos/sin by these config keys instead of the rope's own
#: attention factor (Phi-3.5-MoE's short_mscale / long_mscale): written with the method's attention factor
MSCALE_KEYS = {"phimoe": ("short_mscale", "long_mscale")}

#: rope-dict keys whose model reads original_max_position_embeddings next to them whatever the rope type
#: (Ministral 3's Llama-4 attention temperature, 1 + beta ln(1 + position / original window))
ORIGINAL_READERS = ("llama_4_scaling_beta",)

#: model types whose transformers v4 config takes a rope_scaling of exactly type, short_factor, long_factor
V4_THREE_KEY_LONGROPE = frozenset({"phi3"})


#: YaRN's mscale / mscale_all_dim on a model type that reads mscale_all_dim at construction and whose config
#: carries none: DeepSeek V3's (also V3.2's, GLM-MoE-DSA's, Mistral 4's). Equal values put cos/sin at 1 and YaRN's
#: whole temperature (0.1 ln s + 1)^2 on the softmax over the whole head, the logit scale YaRN's paper prescribes
#: for all of q.k; on MLA cos/sin reach only the rotary part of each head, so the generic spelling would scale
#: only that part
FAMILY_YARN_MSCALE = {"mscale": 1.0, "mscale_all_dim": 1.0}
YARN_MSCALE_KEYS = tuple(FAMILY_YARN_MSCALE)


def family_yarn(layout: RopeLayout, scaling: Scaling) -> Scaling:
    """`scaling` with the mscale / mscale_all_dim / attention_factor that yarn means on this model type filled in.

    Given ones win, each on its own. Otherwise the config's own pair (a shipped DeepSeek V2's 0.707 / 0.707, Ministral 3's 1 / 1)
    is kept across a replace, except on a type without a softmax temperature when attention_factor is given
    (it overrides the cos/sin scale the pair would set, and the pair then means nothing); and a type that reads
    mscale_all_dim at construction gets FAMILY_YARN_MSCALE, its family's own spelling of yarn. A shipped
    yarn attention_factor (or the one an earlier ctxext yarn patch took) is kept across a replace too, unless
    mscale or mscale_all_dim is given; a type whose stock config forces one on its yarn (DeepSeek V4's 1.0) gets that one.
    """
    if scaling.method != "yarn" or scaling.is_identity:
        return scaling
    given = dict(scaling.params)
    params = dict(given)
    softmax = layout.model_type in SOFTMAX_MSCALE_TYPES
    keep_shipped = softmax or params.get("attention_factor") is None
    for key in YARN_MSCALE_KEYS:  # one given (--mscale 0.5) keeps the other as shipped or as the family's
        if params.get(key) is not None:
            continue
        if keep_shipped and layout.main.get(key) is not None:
            params[key] = float(layout.main[key])
        elif softmax:
            params[key] = FAMILY_YARN_MSCALE[key]
    if params.get("attention_factor") is None and not any(given.get(k) is not None for k in YARN_MSCALE_KEYS):
        if layout.metadata:  # a ctxext yarn keeps the attention factor it was given or kept; ntk-by-parts' 1 is its own
            record = layout.metadata
            shipped = (record.get("params") or {}).get("attention_factor") if record["method"] == "yarn" else None
        else:
            shipped = layout.main.get("attention_factor") if layout.scaling_type == "yarn" else None
        if shipped is not None:
            params["attention_factor"] = float(shipped)
        elif layout.model_type in FAMILY_YARN_ATTENTION_FACTOR:
            params["attention_factor"] = FAMILY_YARN_ATTENTION_FACTOR[layout.model_type]
    if params == given:
        return scaling
    return Scaling(scaling.method, scaling.factor, params, scaling.original_max_position_embeddings)


class _Remove:
    """Marks a key a patch deletes from the config."""

    def __repr__(self) -> str:
        return "REMOVE"


REMOVE = _Remove()


def _key(layer_type: str | None) -> str:
    """JSON key for a layer type in the `ctxext` record."""
    return "global" if layer_type is None else layer_type


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
    # per patched layer type, the scaling the config spells (`scaling` itself, or Phi-3's longrope form of it)
    encoding: dict[str | None, Scaling] = field(default_factory=dict)

    @property
    def original_max_position_embeddings(self) -> int:
        return self.scaling.original_max_position_embeddings

    @property
    def window(self) -> int:
        """The window the patch reaches (see `Scaling.window`); what max_position_embeddings says depends on the reader rule."""
        return self.scaling.window

    @property
    def rope_parameters(self) -> dict[str, Any]:
        """The v5 `rope_parameters` value: one dict, or one per layer type."""
        return copy.deepcopy(self.rope[GLOBAL] if GLOBAL in self.rope else self.rope)


def window_rule(scaling: Scaling, model_type: str, window_is_scaled: bool = False) -> int:
    """max_position_embeddings to write for the encoded `scaling` so that each reader derives its window
    (`window_is_scaled`: the layout keeps the scaled window there for pi too, as Gemma 3 and proportional rope do)."""
    original = scaling.original_max_position_embeddings
    if scaling.is_identity or scaling.method == "dynamic-ntk":
        return original  # stock dynamic NTK reads it as the original window, on every model type
    if scaling.method == "pi" and model_type not in WINDOW_IS_SCALED_TYPES and not window_is_scaled:
        return original  # written as linear, which vLLM multiplies by factor (llama.cpp then needs -c)
    return scaling.window


def _pi_as_llama3(scaling: Scaling) -> Scaling:
    """PI spelled as Llama 3's rule with every band interpolated: the same frequencies, bit for bit.

    Written as `linear`, PI cannot give every reader its window: vLLM multiplies max_position_embeddings
    by the factor for linear (so it must say L0) and llama.cpp takes it as is (so it must say L0 x s).
    llama3 is read by both without multiplying. Its rule divides by `factor` every frequency whose
    wavelength exceeds L0 / low_freq_factor; with low_freq_factor = L0 that is one token, shorter than
    any wavelength (the shortest is 2 pi), so all frequencies are divided, as PI does. Only for the
    model types whose llama.cpp converter writes llama3 scaling (ctxext.rope.readers); elsewhere PI
    stays linear at L0, which vLLM gets right and llama.cpp runs with the right frequencies once given
    its window with -c (said as a warning).
    """
    L0 = scaling.original_max_position_embeddings
    params = {"low_freq_factor": float(L0), "high_freq_factor": float(2 * L0)}
    return Scaling("llama3", scaling.factor, params, L0)


def _encode(layout: RopeLayout, scaling: Scaling, theta: float, layer_type: str | None = GLOBAL) -> Scaling:
    """The scaling this model type's stock config can carry for `scaling`, or RopeConfigError saying why none.

    Usually `scaling` itself. On a longrope-only config (Phi-3) a static per-dimension method becomes
    longrope with short_factor = long_factor = theta_i / inv_freq_i and its attention factor explicit
    (the factors come from the method's own frequency function, so this one case loads torch).
    """
    model_type = layout.model_type
    if layout.is_proportional(layer_type):
        if scaling.is_identity or scaling.method in PROPORTIONAL_METHODS:
            return scaling
        where = "its layers" if layer_type is GLOBAL else f"its {layer_type} layers"
        raise RopeConfigError(
            f"This {model_type} model's proportional rope (p-RoPE, on {where}) can carry only a uniform factor or "
            f"a new rope_theta in a stock config, so {scaling.method} cannot be written for it; use pi or ntk."
        )
    if scaling.method == "longrope":
        scaling.check_rotary_dim(layout.rotary_dim_of(layer_type))
    if model_type in LENGTH_BLIND_TYPES and scaling.is_dynamic and not scaling.is_identity:
        raise RopeConfigError(
            f"Stock transformers' {model_type} rotary embedding rebuilds its frequencies from the config without "
            f"the current length, so {scaling.method} (whose frequencies depend on the length) would never engage; "
            "use a static method such as yarn."
        )
    allowed = STOCK_ROPE_TYPES.get(model_type)
    written = "default" if scaling.is_identity else (scaling.spec.rope_type or "yarn")
    if scaling.method == "pi" and not scaling.is_identity and model_type in LLAMA_CPP_LLAMA3_TYPES:
        return _pi_as_llama3(scaling)
    if not allowed or written in allowed:
        return scaling
    if "longrope" in allowed and scaling.method in PER_DIMENSION:
        from .functions import compute_inv_freq, longrope_factors

        static = "yarn" if scaling.method == "dynamic-yarn" else scaling.method
        params = {k: v for k, v in scaling.params.items() if v is not None}
        dim = layout.rotary_dim_of(layer_type)
        inv_freq, _ = compute_inv_freq(static, dim, theta, scaling.factor,
                                       scaling.original_max_position_embeddings, **params)
        factors = longrope_factors(inv_freq, dim, theta)
        params = {"long_factor": factors, "short_factor": factors, "attention_factor": attention_factor(scaling)}
        return Scaling("longrope", scaling.factor, params, scaling.original_max_position_embeddings)
    offered = "ntk, pi, ntk-by-parts, yarn, llama3 or longrope" if "longrope" in allowed else "ntk"
    raise RopeConfigError(
        f"Stock transformers' {model_type} config accepts only rope types {', '.join(allowed)}, so a "
        f"{scaling.method} checkpoint would not load as written; use {offered}."
    )


def _rope_dict(
    scaling: Scaling, old: Mapping[str, Any], theta: float, rotary_dim: int, model_type: str,
    exponent_dim: int | None = None,
) -> dict[str, Any]:
    """The new v5 rope dict of one layer type: the old one's non-scaling keys plus the method's keys.

    `exponent_dim` marks proportional rope (its head width): it stays `proportional`, with pi as its factor
    and ntk as its rope_theta.
    """
    new = {k: v for k, v in old.items() if k not in SCALING_KEYS}
    new["rope_theta"] = theta
    s, L0, p = scaling.factor, scaling.original_max_position_embeddings, scaling.params
    method = scaling.method
    if exponent_dim is not None:
        new["rope_type"] = old["rope_type"]
        if method == "pi" and not scaling.is_identity:
            new["factor"] = s
        elif method == "ntk" and not scaling.is_identity:
            new["rope_theta"] = ntk_rope_theta(theta, s, rotary_dim, exponent_dim)
    elif scaling.is_identity:
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
        new.update({k: float(p[k]) for k in YARN_MSCALE_KEYS if p.get(k) is not None})
    elif method == "llama3":
        new.update(rope_type="llama3", factor=s, original_max_position_embeddings=L0)
        new.update(low_freq_factor=p["low_freq_factor"], high_freq_factor=p["high_freq_factor"])
    elif method == "longrope":
        new.update(rope_type="longrope", factor=s, original_max_position_embeddings=L0)
        new.update(long_factor=list(p["long_factor"]), short_factor=list(p["short_factor"]),
                   attention_factor=attention_factor(scaling))
        if new["attention_factor"] != longrope_attention_factor(s, L0):
            # vLLM ignores attention_factor for longrope but reads Phi-3.5-MoE's short_mscale / long_mscale
            new.update(short_mscale=new["attention_factor"], long_mscale=new["attention_factor"])
    else:  # pragma: no cover - guarded by the registry
        raise AssertionError(method)
    if not scaling.is_identity:
        for key in MSCALE_KEYS.get(model_type, ()):
            new[key] = attention_factor(scaling)
    if (model_type in MSCALE_KEYS and not scaling.is_identity) or any(k in old for k in ORIGINAL_READERS):
        new["original_max_position_embeddings"] = L0  # read by the model's forward whatever the rope type
    order = ["rope_type", "rope_theta", "factor", "original_max_position_embeddings"]
    return {k: new[k] for k in order if k in new} | {k: v for k, v in new.items() if k not in order}


def _v4_rope_scaling(rope: Mapping[str, Any], model_type: str) -> dict[str, Any] | None:
    """transformers v4 spelling of one rope dict: no theta or partial inside, `type` kept for old readers.

    Phi-3's v4 config takes exactly {type, short_factor, long_factor} and derives the attention factor
    from max_position_embeddings / original_max_position_embeddings; that is written when it equals
    the one asked for. Otherwise the full dict is written: transformers v5 reads it, and v4 refuses to
    load it (a loud error rather than another attention scale), see ctxext.rope.readers.
    """
    if rope.get("rope_type", "default") == "default":
        return None
    out = {k: v for k, v in rope.items() if k not in ("rope_theta", "partial_rotary_factor")}
    out["type"] = out["rope_type"]
    if model_type in V4_THREE_KEY_LONGROPE and rope["rope_type"] == "longrope":
        derived = longrope_attention_factor(rope["factor"], rope["original_max_position_embeddings"])
        if rope["attention_factor"] == derived:
            return {"type": "longrope", "short_factor": rope["short_factor"], "long_factor": rope["long_factor"]}
    return out


def plan_patch(layout: RopeLayout, scaling: Scaling, replace: bool = False) -> RopePatch:
    """Work out the new rope settings for `scaling` on `layout`, or raise RopeConfigError saying why not."""
    if layout.is_scaled and not replace:
        raise RopeConfigError(
            f"This {layout.model_type} model already uses {layout.describe_scaling()} RoPE scaling; "
            f"pass replace=True (CLI: --replace) to discard it and apply {scaling.method} to the original "
            "window, or patch the unscaled base model."
        )
    original = scaling.original_max_position_embeddings
    recorded_window = layout.original_max_position_embeddings or layout.max_position_embeddings
    if original is not None and original > recorded_window:  # issue 10: accepted, but worth one line
        warnings.warn(
            f"original_max_position_embeddings {original:,} is larger than the {recorded_window:,}-token window this "
            f"config records, so the factor counts from {original:,}; give the window the model was pre-trained with.",
            stacklevel=2,
        )
    if original is None:
        original = layout.original_max_position_embeddings if layout.is_scaled else layout.max_position_embeddings
        if original is None:
            raise RopeConfigError(
                f"The config of this {layout.model_type} model does not record the window it was pre-trained "
                "with; pass original_max_position_embeddings (CLI: --original-max-position-embeddings)."
            )
        scaling = scaling.with_window(original)
    scaling = family_yarn(layout, scaling)
    recorded = (layout.metadata or {}).get("rope_theta", {})
    rope: dict[str | None, dict[str, Any] | None] = {}
    thetas: dict[str | None, float] = {}
    encoding: dict[str | None, Scaling] = {}
    for layer_type, old in layout.rope.items():
        if old is None or layer_type not in layout.targets:
            rope[layer_type] = copy.deepcopy(dict(old)) if old is not None else None
            continue
        thetas[layer_type] = float(recorded.get(_key(layer_type), old["rope_theta"]))
        encoding[layer_type] = _encode(layout, scaling, thetas[layer_type], layer_type)
        rope[layer_type] = _rope_dict(encoding[layer_type], old, thetas[layer_type], layout.rotary_dim_of(layer_type),
                                      layout.model_type, layout.exponent_dim_of(layer_type))

    window = window_rule(encoding[layout.targets[0]], layout.model_type, layout.window_is_scaled)
    main = rope[layout.targets[0]]
    top: dict[str, Any] = {}
    speaks_v4 = speaks_transformers_v4(layout.model_type) or layout.v4_spelling
    if speaks_v4 and (not layout.nested or layout.model_type in WINDOW_IS_SCALED_TYPES):
        top["rope_theta"] = main["rope_theta"]
        top["rope_scaling"] = _v4_rope_scaling(main, layout.model_type)
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
    if layout.layer_rope_theta:
        # Granite-SWA's layers look their rotary embedding up by rope_theta: follow a raised one
        old_theta = float(layout.main["rope_theta"])
        top["layer_rope_theta"] = [main["rope_theta"] if t and float(t) == old_theta else t
                                   for t in layout.layer_rope_theta]
    written = main.get("rope_type", "default")
    if "original_max_position_embeddings" in main or layout.top_level_original is not None:
        # longrope always: transformers v4 reads its original window only from the top level
        top["original_max_position_embeddings"] = original
    if layout.null_head_dim and written in ("yarn", "dynamic", "longrope"):
        # stock yarn/dynamic read getattr(config, "head_dim", default) and fail on a null head_dim
        top["head_dim"] = layout.head_dim
    if scaling.is_identity:
        top["ctxext"] = REMOVE
    else:
        top["ctxext"] = {
            "method": scaling.method,
            "factor": scaling.factor,
            "original_max_position_embeddings": original,
            "window": scaling.window,
            "rope_theta": {_key(t): theta for t, theta in thetas.items()},
            "params": {k: (list(v) if isinstance(v, tuple) else v) for k, v in scaling.params.items()
                       if v is not None},
        }
    return RopePatch(layout, scaling, rope, window, thetas, top, encoding)


def patched_config_dict(config: Mapping[str, Any], patch: RopePatch) -> dict[str, Any]:
    """A copy of a config.json dict with `patch` written in: both spellings, window, record."""
    out = copy.deepcopy(dict(config))
    cfg = out if patch.layout.section is None else out[patch.layout.section]
    cfg["rope_parameters"] = patch.rope_parameters
    cfg[config_key(cfg, "max_position_embeddings")] = patch.max_position_embeddings
    for key, value in patch.top_level.items():
        if value is REMOVE:
            cfg.pop(key, None)
        else:
            cfg[key] = copy.deepcopy(value)
    return out
