"""RoPE frequency math: one pure function per scaling method, kept in a registry by name.

Every function has the same contract, plain numbers in and tensors out:

    fn(dim, rope_theta, factor, original_max_position_embeddings, seq_len=None, **params)
        -> (inv_freq: float32 tensor [dim // 2], attention_factor: float)

`dim` is the number of rotary dimensions (head_dim x partial_rotary_factor), `seq_len` the current
length (used by the dynamic methods only). `attention_factor` multiplies cos and sin, so q.k is
scaled by its square. Everything is computed in float32 on the CPU, never in the model's dtype,
with the same operation order as stock transformers so both agree bit for bit.

    >>> inv_freq, scale = compute_inv_freq("yarn", dim=128, rope_theta=10000.0, factor=8,
    ...                                    original_max_position_embeddings=4096)
"""

from __future__ import annotations

import math
from typing import Callable

import torch

from ..errors import CtxextError
from .layout import PROPORTIONAL_METHODS
from .methods import is_identity, longrope_attention_factor, ntk_rope_theta, resolve, yarn_attention_factor

RopeFunction = Callable[..., tuple[torch.Tensor, float]]


def default_inv_freq(dim: int, rope_theta: float, head_dim: int | None = None) -> torch.Tensor:
    """Unscaled RoPE: theta_i = b^(-2i/d) for i < d/2, float32 [dim // 2].

    With `head_dim` (proportional rope, p-RoPE, Gemma 4): theta_i = b^(-2i/head_dim) for the d rotary dims,
    then zero frequencies (dims that never rotate) up to head_dim / 2: float32 [head_dim // 2].
    """
    width = head_dim or dim
    exponents = torch.arange(0, dim, 2, dtype=torch.int64).to(dtype=torch.float) / width  # [dim/2]
    inv_freq = 1.0 / (rope_theta**exponents)
    if width > dim:
        inv_freq = torch.cat([inv_freq, torch.zeros(width // 2 - dim // 2, dtype=torch.float32)])  # [head_dim/2]
    return inv_freq


def wavelengths(inv_freq: torch.Tensor) -> torch.Tensor:
    """lambda_i = 2*pi / theta_i, in tokens: how far apart two positions are before dim i repeats."""
    return 2 * math.pi / inv_freq


def pi(dim: int, rope_theta: float, factor: float, original_max_position_embeddings: int, seq_len: int | None = None):
    """Position Interpolation (arXiv 2306.15595): theta_i / s, so position p looks like p / s."""
    return default_inv_freq(dim, rope_theta) / factor, 1.0


def ntk(dim: int, rope_theta: float, factor: float, original_max_position_embeddings: int, seq_len: int | None = None):
    """NTK-aware, static: a larger base b * s^(d/(d-2)); high frequencies barely move, the lowest is divided by s."""
    return default_inv_freq(dim, ntk_rope_theta(rope_theta, factor, dim)), 1.0


def dynamic_ntk(
    dim: int, rope_theta: float, factor: float, original_max_position_embeddings: int, seq_len: int | None = None
):
    """Dynamic NTK: base b * (s*L/L0 - (s-1))^(d/(d-2)) with L = max(seq_len, L0); the identity up to L0."""
    length = max(seq_len or original_max_position_embeddings, original_max_position_embeddings)
    base = rope_theta * ((factor * length / original_max_position_embeddings) - (factor - 1)) ** (dim / (dim - 2))
    return default_inv_freq(dim, base), 1.0


def _correction_dim(num_rotations: float, dim: int, rope_theta: float, original_max_position_embeddings: int) -> float:
    """The (fractional) dimension index whose wavelength fits `num_rotations` times into the original window."""
    return dim * math.log(original_max_position_embeddings / (num_rotations * 2 * math.pi)) / (2 * math.log(rope_theta))


def yarn_ramp(
    dim: int, rope_theta: float, original_max_position_embeddings: int, beta_fast: float, beta_slow: float
) -> torch.Tensor:
    """YaRN's ramp, float32 [dim // 2]: 0 where a dim is kept, 1 where it is interpolated by s, linear between.

    A dim that rotates more than beta_fast times inside the original window is kept; fewer than
    beta_slow times, interpolated. The range is measured against the ORIGINAL window (a classic bug is
    to use the enlarged max_position_embeddings) and widened to whole dims (floor/ceil).
    """
    low = math.floor(_correction_dim(beta_fast, dim, rope_theta, original_max_position_embeddings))
    high = math.ceil(_correction_dim(beta_slow, dim, rope_theta, original_max_position_embeddings))
    low, high = max(low, 0), min(high, dim - 1)
    if low == high:
        high += 0.001  # a one-dim range would divide by zero
    return torch.clamp((torch.arange(dim // 2, dtype=torch.float32) - low) / (high - low), 0, 1)


def ntk_by_parts(
    dim: int,
    rope_theta: float,
    factor: float,
    original_max_position_embeddings: int,
    seq_len: int | None = None,
    beta_fast: float = 32.0,
    beta_slow: float = 1.0,
):
    """YaRN's frequencies without its attention scale (Peng et al. 2023, section 3.2)."""
    inv_freq, _ = yarn(dim, rope_theta, factor, original_max_position_embeddings, seq_len, beta_fast, beta_slow)
    return inv_freq, 1.0


def yarn(
    dim: int,
    rope_theta: float,
    factor: float,
    original_max_position_embeddings: int,
    seq_len: int | None = None,
    beta_fast: float = 32.0,
    beta_slow: float = 1.0,
    attention_factor: float | None = None,
    mscale: float | None = None,
    mscale_all_dim: float | None = None,
):
    """YaRN (arXiv 2309.00071): per-dim blend of theta_i and theta_i / s, cos/sin scaled by 0.1*ln(s)+1.

    With `mscale` and `mscale_all_dim` (DeepSeek's spelling) cos/sin are scaled by their ratio instead (see
    ctxext.rope.methods.yarn_attention_factor); an explicit `attention_factor` wins over both, as in transformers.
    """
    if is_identity(factor):
        return default_inv_freq(dim, rope_theta), 1.0 if attention_factor is None else attention_factor
    position_scale = rope_theta ** (torch.arange(0, dim, 2).to(dtype=torch.float) / dim)  # [dim/2], 1/theta_i
    kept = 1.0 / position_scale  # extrapolation: theta_i unchanged
    interpolated = 1.0 / (factor * position_scale)  # theta_i / s
    # share of each dim that keeps its original frequency (1 - ramp)
    extrapolation = 1 - yarn_ramp(dim, rope_theta, original_max_position_embeddings, beta_fast, beta_slow)
    inv_freq = interpolated * (1 - extrapolation) + kept * extrapolation
    scale = yarn_attention_factor(factor, mscale, mscale_all_dim) if attention_factor is None else attention_factor
    return inv_freq, scale


def dynamic_yarn(
    dim: int,
    rope_theta: float,
    factor: float,
    original_max_position_embeddings: int,
    seq_len: int | None = None,
    beta_fast: float = 32.0,
    beta_slow: float = 1.0,
    attention_factor: float | None = None,
):
    """YaRN with s = max(1, L / L0) from the current length L; `factor` only sets the advertised window."""
    scale = max(1.0, (seq_len or 0) / original_max_position_embeddings)
    return yarn(dim, rope_theta, scale, original_max_position_embeddings, None, beta_fast, beta_slow, attention_factor)


def llama3(
    dim: int,
    rope_theta: float,
    factor: float,
    original_max_position_embeddings: int,
    seq_len: int | None = None,
    low_freq_factor: float = 1.0,
    high_freq_factor: float = 4.0,
):
    """Llama 3.1: wavelengths above L0/low_freq_factor divided by s, below L0/high_freq_factor kept, smooth between."""
    inv_freq = default_inv_freq(dim, rope_theta)
    low_freq_wavelen = original_max_position_embeddings / low_freq_factor
    high_freq_wavelen = original_max_position_embeddings / high_freq_factor
    wavelen = wavelengths(inv_freq)
    scaled = torch.where(wavelen > low_freq_wavelen, inv_freq / factor, inv_freq)
    smooth = (original_max_position_embeddings / wavelen - low_freq_factor) / (high_freq_factor - low_freq_factor)
    smoothed = (1 - smooth) * scaled / factor + smooth * scaled
    is_medium = ~(wavelen < high_freq_wavelen) * ~(wavelen > low_freq_wavelen)
    return torch.where(is_medium, smoothed, scaled), 1.0


def longrope(
    dim: int,
    rope_theta: float,
    factor: float,
    original_max_position_embeddings: int,
    seq_len: int | None = None,
    long_factor: tuple[float, ...] = (),
    short_factor: tuple[float, ...] | None = None,
    attention_factor: float | None = None,
):
    """LongRoPE (arXiv 2402.13753): theta_i / lambda_i, with lambda = long_factor past L0, short_factor up to it.

    cos/sin are scaled by sqrt(1 + ln(s)/ln(L0)) unless `attention_factor` is given. Stock transformers
    picks the factor set from the current length (seq_len > L0: long), as this function does.
    """
    if attention_factor is None:
        attention_factor = longrope_attention_factor(factor, original_max_position_embeddings)
    long = seq_len is not None and seq_len > original_max_position_embeddings
    chosen = long_factor if long or short_factor is None else short_factor
    ext_factors = torch.tensor(chosen, dtype=torch.float32)  # [dim/2]
    exponents = torch.arange(0, dim, 2, dtype=torch.int64).float() / dim  # [dim/2]
    return 1.0 / (ext_factors * rope_theta**exponents), attention_factor


def longrope_factors(inv_freq: torch.Tensor, dim: int, rope_theta: float) -> tuple[float, ...]:
    """Per-frequency divisors with which stock longrope rebuilds `inv_freq` [dim/2] (float32) most closely.

    This is how a static method is written for a model type whose stock config accepts only longrope
    (Phi-3): lambda_i = theta_i / inv_freq_i, then the float32 neighbour (within 4 ulps) for which
    1 / (lambda_i * b^(2i/d)) lands nearest inv_freq_i. Most frequencies come back exactly; a few
    cannot (that division skips some float32 values) and come back one float32 rounding away.
    """
    power = rope_theta ** (torch.arange(0, dim, 2, dtype=torch.int64).float() / dim)  # [dim/2], 1 / theta_i
    guess = (default_inv_freq(dim, rope_theta).double() / inv_freq.double()).float()  # [dim/2]; kept dims: 1
    candidates, up, down = [guess], guess, guess
    for _ in range(4):  # ordered 0, +1, -1, +2, -2, ... ulps: argmin keeps the smallest nudge among ties
        up = torch.nextafter(up, torch.full_like(up, math.inf))
        down = torch.nextafter(down, torch.full_like(down, -math.inf))
        candidates += [up, down]
    stacked = torch.stack(candidates).clamp(min=1.0)  # [9, dim/2]; a divisor below 1 is never meant
    error = ((1.0 / (stacked * power)) - inv_freq).abs()  # [9, dim/2]
    chosen = stacked.gather(0, error.argmin(dim=0, keepdim=True))[0]  # [dim/2]
    return tuple(float(x) for x in chosen.tolist())


def proportional(method: str, dim: int, head_dim: int, rope_theta: float, factor: float) -> tuple[torch.Tensor, float]:
    """`method` on proportional rope: frequencies b^(-2i/head_dim) for the d rotary dims, zeros up to head_dim / 2,
    float32 [head_dim // 2]. pi divides them all by s (stock's `factor`), ntk raises the base so that the lowest
    rotating one is divided by s (see ntk_rope_theta)."""
    if method == "pi":
        return default_inv_freq(dim, rope_theta, head_dim) / factor, 1.0
    if method == "ntk":
        return default_inv_freq(dim, ntk_rope_theta(rope_theta, factor, dim, head_dim), head_dim), 1.0
    raise CtxextError(
        f"Proportional rope (p-RoPE) can carry only {' or '.join(PROPORTIONAL_METHODS)} in a stock config, not {method}."
    )


#: method name (see ctxext.rope.methods.METHODS) -> frequency function
ROPE_FUNCTIONS: dict[str, RopeFunction] = {
    "pi": pi,
    "ntk": ntk,
    "dynamic-ntk": dynamic_ntk,
    "ntk-by-parts": ntk_by_parts,
    "yarn": yarn,
    "dynamic-yarn": dynamic_yarn,
    "llama3": llama3,
    "longrope": longrope,
}


def compute_inv_freq(
    method: str,
    dim: int,
    rope_theta: float,
    factor: float,
    original_max_position_embeddings: int,
    seq_len: int | None = None,
    head_dim: int | None = None,
    **params: float | None,
) -> tuple[torch.Tensor, float]:
    """Validated entry point: frequencies [dim // 2] (float32) and attention factor for one method.

    `factor == 1` is the identity for every method, dynamic ones included (the original frequencies,
    attention factor 1): that is what ctxext writes for it. `head_dim` marks proportional rope (see
    `proportional`): the frequencies then number head_dim // 2.
    """
    scaling = resolve(method, factor, original_max_position_embeddings, **params)
    if isinstance(dim, bool) or not isinstance(dim, int) or dim < 4 or dim % 2:
        raise CtxextError(f"dim (rotary dimensions) must be an even whole number >= 4, got {dim!r}.")
    if isinstance(rope_theta, bool) or not isinstance(rope_theta, (int, float)) or rope_theta <= 1:
        raise CtxextError(f"rope_theta must be a number greater than 1, got {rope_theta!r}.")
    scaling.check_rotary_dim(dim)
    if scaling.is_identity:
        return default_inv_freq(dim, float(rope_theta), head_dim), 1.0
    if head_dim is not None:
        return proportional(scaling.method, dim, head_dim, float(rope_theta), scaling.factor)
    fn = ROPE_FUNCTIONS[scaling.method]
    return fn(
        dim,
        float(rope_theta),
        scaling.factor,
        scaling.original_max_position_embeddings,
        seq_len,
        **{k: v for k, v in scaling.params.items() if v is not None},
    )
