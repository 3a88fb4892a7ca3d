"""The RoPE scaling methods ctxext offers: one registry of names, parameters and validation.

Torch-free on purpose: the CLI reads its `--method` choices from here, and config-only work
(`ctxext patch`, `ctxext info`) validates requests without importing torch. The math lives in
`ctxext.rope`, keyed by the same names.

    >>> resolve("linear", 8).method
    'pi'
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from types import MappingProxyType
from typing import Any, Mapping, Sequence

from ..errors import CtxextError, CtxextTypeError


@dataclass(frozen=True)
class Method:
    """One scaling method: its canonical name, what it changes, and how stock configs spell it."""

    name: str
    summary: str
    # the method's own parameters (HF spelling) and their defaults; None = derived from `factor`
    # (longrope's long_factor / short_factor are sequences of rotary_dim / 2 numbers)
    params: Mapping[str, Any] = field(default_factory=dict)
    aliases: tuple[str, ...] = ()
    # the stock `rope_type` that expresses it; "default" for a plain rope_theta change;
    # None when no stock config can express it
    rope_type: str | None = None
    # frequencies are recomputed from the current sequence length at run time
    dynamic: bool = False


_YARN_PARAMS = {"beta_fast": 32.0, "beta_slow": 1.0}

METHODS: Mapping[str, Method] = MappingProxyType(
    {
        m.name: m
        for m in (
            Method(
                "pi",
                "Position Interpolation: every frequency divided by factor (Chen et al. 2023)",
                aliases=("linear",),
                rope_type="linear",
            ),
            Method(
                "ntk",
                "NTK-aware, static: base raised to rope_theta * factor^(d/(d-2))",
                rope_type="default",
            ),
            Method(
                "dynamic-ntk",
                "NTK-aware base recomputed from the current length once it passes the original window",
                aliases=("dynamic",),
                rope_type="dynamic",
                dynamic=True,
            ),
            Method(
                "ntk-by-parts",
                "YaRN's per-dimension ramp between keeping and interpolating, without attention scaling",
                params=dict(_YARN_PARAMS),
                rope_type="yarn",
            ),
            Method(
                "yarn",
                "NTK-by-parts plus YaRN's attention scale 0.1*ln(factor)+1 (Peng et al. 2023): on cos/sin, or "
                "with mscale / mscale_all_dim as transformers reads them (DeepSeek: the whole-head softmax)",
                params={**_YARN_PARAMS, "attention_factor": None, "mscale": None, "mscale_all_dim": None},
                rope_type="yarn",
            ),
            Method(
                "dynamic-yarn",
                "YaRN with factor max(1, length/original window) recomputed from the current length",
                params={**_YARN_PARAMS, "attention_factor": None},
                rope_type=None,
                dynamic=True,
            ),
            Method(
                "llama3",
                "Llama 3.1 band-wise rule: long wavelengths divided by factor, short kept, smooth between",
                params={"low_freq_factor": 1.0, "high_freq_factor": 4.0},
                rope_type="llama3",
            ),
            Method(
                "longrope",
                "LongRoPE: each frequency divided by its own factor (long_factor past the original window, "
                "short_factor inside it), cos/sin scaled by sqrt(1 + ln(factor)/ln(original window))",
                params={"long_factor": None, "short_factor": None, "attention_factor": None},
                rope_type="longrope",
            ),
        )
    }
)

ALIASES: Mapping[str, str] = MappingProxyType({a: m.name for m in METHODS.values() for a in m.aliases})

#: every spelling `--method` accepts, canonical names first
METHOD_CHOICES: tuple[str, ...] = (*METHODS, *ALIASES)

#: every method parameter of the registry (HF spelling), in order of first appearance
METHOD_PARAMETERS: tuple[str, ...] = tuple(dict.fromkeys(p for m in METHODS.values() for p in m.params))


@dataclass(frozen=True)
class Scaling:
    """A validated scaling request: canonical method, factor, and the method's parameters.

    `params` holds every parameter of the method, defaults filled in (None = derived from factor).
    `original_max_position_embeddings` is None until a model supplies its window.
    """

    method: str
    factor: float
    params: Mapping[str, Any]
    original_max_position_embeddings: int | None = None

    @property
    def spec(self) -> Method:
        return METHODS[self.method]

    @property
    def is_identity(self) -> bool:
        return is_identity(self.factor)

    @property
    def window(self) -> int | None:
        """The window this scaling is meant for, in tokens (None until a model supplies its original window)."""
        if self.original_max_position_embeddings is None:
            return None
        return scaled_window(self.original_max_position_embeddings, self.factor)

    @property
    def is_dynamic(self) -> bool:
        """The frequencies depend on the current length (dynamic NTK/YaRN; longrope with two factor sets)."""
        if self.method == "longrope":
            return self.params["short_factor"] != self.params["long_factor"]
        return self.spec.dynamic

    def check_rotary_dim(self, dim: int) -> None:
        """Per-dimension parameters must match the model's rotary dims; ValueError saying how many it needs."""
        for name in SEQUENCE_PARAMS:
            value = self.params.get(name)
            if value is not None and len(value) != dim // 2:
                raise CtxextError(
                    f"{name} has {len(value)} numbers, but this model has {dim} rotary dimensions, so it needs "
                    f"{dim // 2} (one per frequency)."
                )

    def with_window(self, original_max_position_embeddings: int) -> "Scaling":
        return Scaling(self.method, self.factor, self.params, _check_window(original_max_position_embeddings))


#: parameters that hold one number per rotary frequency
SEQUENCE_PARAMS = ("long_factor", "short_factor")


def scaled_window(original_max_position_embeddings: int, factor: float) -> int:
    """The window `factor` x an original window reaches, in whole tokens: the one place it is computed."""
    return int(round(original_max_position_embeddings * factor))


def is_identity(factor: float) -> bool:
    """The identity scaling: a factor of 1 leaves RoPE as it is, whatever the method (the one definition)."""
    return factor <= 1.0


def canonical_method(method: str) -> str:
    """Map a method name or alias to its canonical name; ValueError listing the valid ones."""
    if not isinstance(method, str):
        raise CtxextTypeError(f"method must be a string such as 'yarn', got {method!r} ({type(method).__name__}).")
    key = method.strip().lower().replace("_", "-")
    if key in METHODS:
        return key
    if key in ALIASES:
        return ALIASES[key]
    raise CtxextError(f"Unknown RoPE scaling method {method!r}; choose one of: {', '.join(METHOD_CHOICES)}.")


def _check_number(name: str, value: object) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise CtxextTypeError(f"{name} must be a number, got {value!r} ({type(value).__name__}).")
    value = float(value)
    if not math.isfinite(value):
        raise CtxextError(f"{name} must be a finite number, got {value}.")
    return value


def _check_factors(name: str, value: object) -> tuple[float, ...]:
    """A per-frequency factor list (list, tuple or anything with .tolist()): numbers >= 1, as a tuple."""
    if hasattr(value, "tolist") and not isinstance(value, (list, tuple)):
        value = value.tolist()
    if isinstance(value, (str, bytes)) or not isinstance(value, Sequence):
        raise CtxextTypeError(
            f"{name} must be a list of numbers (one per rotary frequency), got {value!r} ({type(value).__name__})."
        )
    if not value:
        raise CtxextError(f"{name} is empty; give one number per rotary frequency (rotary dims / 2 of them).")
    numbers = tuple(_check_number(f"{name}[{i}]", v) for i, v in enumerate(value))
    low = min(numbers)
    if low < 1.0:
        raise CtxextError(
            f"{name} must hold numbers >= 1 (each frequency is divided by its factor), got {low:g} at index "
            f"{numbers.index(low)}; a factor below 1 would rotate faster than pre-training ever did."
        )
    return numbers


def _check_window(value: object) -> int:
    if isinstance(value, bool) or not isinstance(value, int):
        if isinstance(value, float) and value.is_integer():
            value = int(value)
        else:
            raise CtxextTypeError(
                f"original_max_position_embeddings must be a whole number of tokens, got {value!r}."
            )
    if value < 2:
        raise CtxextError(f"original_max_position_embeddings must be at least 2 tokens, got {value}.")
    return value


def check_factor(factor: object) -> float:
    """`factor` as a float >= 1 (1 is the identity), or a TypeError/ValueError that says why not."""
    factor = _check_number("factor", factor)
    if factor < 1.0:
        raise CtxextError(
            f"factor must be >= 1 (the new window divided by the original one), got {factor:g}; "
            "ctxext extends windows, it does not shrink them."
        )
    return factor


def resolve(
    method: str,
    factor: object,
    original_max_position_embeddings: int | None = None,
    **params: object,
) -> Scaling:
    """Validate a scaling request at the boundary; every later step trusts the result.

    Raises ValueError for an unknown method or parameter (listing the valid ones) or an
    out-of-range value, TypeError for a value that is not a number.
    """
    spec = METHODS[canonical_method(method)]
    factor = check_factor(factor)
    unknown = sorted(set(params) - set(spec.params))
    if unknown:
        valid = ", ".join(spec.params) or "none besides factor and original_max_position_embeddings"
        raise CtxextError(
            f"Unknown parameter(s) {', '.join(unknown)} for method {spec.name!r}; valid parameters: {valid}."
        )
    values: dict[str, Any] = dict(spec.params)
    for name, value in params.items():
        if value is None:
            continue  # "use the default"
        values[name] = _check_factors(name, value) if name in SEQUENCE_PARAMS else _check_number(name, value)
    if spec.name == "longrope":
        if values["long_factor"] is None:
            raise CtxextError(
                "longrope needs long_factor: one number >= 1 per rotary frequency, each frequency's divisor "
                "(short_factor, used up to the original window, defaults to the same list)."
            )
        if values["short_factor"] is None:
            values["short_factor"] = values["long_factor"]
        if len(values["short_factor"]) != len(values["long_factor"]):
            raise CtxextError(
                f"short_factor and long_factor must have the same length (one number per rotary frequency), got "
                f"{len(values['short_factor'])} and {len(values['long_factor'])}."
            )
    if "beta_fast" in values:
        if not 0 < values["beta_slow"] < values["beta_fast"]:
            raise CtxextError(
                f"beta_fast must be greater than beta_slow and both positive, got "
                f"beta_fast={values['beta_fast']:g}, beta_slow={values['beta_slow']:g}."
            )
    for name in ("attention_factor", "mscale", "mscale_all_dim"):
        if values.get(name) is not None and values[name] <= 0:
            raise CtxextError(f"{name} must be positive, got {values[name]:g}.")
    if "low_freq_factor" in values:
        if not 0 < values["low_freq_factor"] < values["high_freq_factor"]:
            raise CtxextError(
                f"high_freq_factor must be greater than low_freq_factor and both positive, got "
                f"low_freq_factor={values['low_freq_factor']:g}, high_freq_factor={values['high_freq_factor']:g}."
            )
    window = None if original_max_position_embeddings is None else _check_window(original_max_position_embeddings)
    return Scaling(spec.name, factor, MappingProxyType(values), window)


def yarn_mscale(factor: float, mscale: float = 1.0) -> float:
    """YaRN's magnitude scale 0.1*mscale*ln(s)+1 (Peng et al. 2023, eq. 22; transformers' yarn_get_mscale); 1 for s <= 1."""
    return 1.0 if is_identity(factor) else 0.1 * mscale * math.log(factor) + 1.0


def yarn_attention_factor(factor: float, mscale: float | None = None, mscale_all_dim: float | None = None) -> float:
    """YaRN's cos/sin scale as transformers derives it when no attention_factor is given.

    With both `mscale` and `mscale_all_dim` set (DeepSeek's spelling): yarn_mscale(s, mscale) /
    yarn_mscale(s, mscale_all_dim), because those families put yarn_mscale(s, mscale_all_dim)^2 into the
    softmax over the whole head (`yarn_softmax_factor`) and cos/sin carry only the rest; else 0.1*ln(s)+1.
    """
    if mscale and mscale_all_dim:
        return yarn_mscale(factor, mscale) / yarn_mscale(factor, mscale_all_dim)
    return yarn_mscale(factor)


def yarn_softmax_factor(factor: float, mscale_all_dim: float | None) -> float:
    """What a model type that reads mscale_all_dim at construction (DeepSeek and the other MLA families,
    transformers' yarn_apply_mscale) multiplies its attention softmax scale by: yarn_mscale(s, mscale_all_dim)^2,
    or 1 without mscale_all_dim."""
    if not mscale_all_dim:
        return 1.0
    return yarn_mscale(factor, mscale_all_dim) ** 2


def longrope_attention_factor(factor: float, original_max_position_embeddings: int) -> float:
    """LongRoPE's default cos/sin scale, sqrt(1 + ln(s) / ln(L0)) (stock transformers' rule); 1 for s <= 1."""
    if is_identity(factor):
        return 1.0
    return math.sqrt(1 + math.log(factor) / math.log(original_max_position_embeddings))


def attention_factor(scaling: "Scaling") -> float:
    """The cos/sin scale a static method applies (dynamic methods: the one at the full window)."""
    if scaling.is_identity:
        return 1.0
    if scaling.params.get("attention_factor") is not None:
        return float(scaling.params["attention_factor"])
    if scaling.method in ("yarn", "dynamic-yarn"):
        p = scaling.params
        return yarn_attention_factor(scaling.factor, p.get("mscale"), p.get("mscale_all_dim"))
    if scaling.method == "longrope":
        return longrope_attention_factor(scaling.factor, scaling.original_max_position_embeddings)
    return 1.0


def ntk_rope_theta(rope_theta: float, factor: float, dim: int, head_dim: int | None = None) -> float:
    """NTK-aware base: b * s^(d/(d-2)), so the lowest frequency is interpolated by exactly s.

    With proportional rope (frequencies b^(-2i/head_dim) for the d rotary dims only) the lowest one is
    b^(-(d-2)/head_dim), so the base that divides it by exactly s is b * s^(head_dim/(d-2)).
    """
    return rope_theta * factor ** ((head_dim or dim) / (dim - 2))
