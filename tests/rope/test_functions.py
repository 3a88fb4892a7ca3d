"""RoPE frequency math, checked against stock transformers value by value and against the papers."""

import math

import pytest
import torch
from transformers import LlamaConfig
from transformers.modeling_rope_utils import ROPE_INIT_FUNCTIONS
from transformers.models.llama.modeling_llama import LlamaRotaryEmbedding

from ctxext.rope.methods import METHODS
from ctxext.rope.functions import compute_inv_freq, default_inv_freq, longrope_factors, wavelengths, yarn_ramp

EXACT = dict(rtol=0, atol=0)


def ramp_factors(dim: int, top: float) -> list[float]:
    """A LongRoPE-like factor list [dim/2]: 1 for the fast dims rising to `top` for the slow ones."""
    return [1.0 + (top - 1.0) * (i / (dim // 2 - 1)) ** 2 for i in range(dim // 2)]


def method_params(method: str, dim: int) -> dict:
    """The parameters a method cannot do without (longrope's factor lists)."""
    return {"long_factor": ramp_factors(dim, 8.0)} if method == "longrope" else {}


def stock(rope_parameters: dict, head_dim: int = 128, max_position_embeddings: int = 4096, seq_len=None,
          partial_rotary_factor: float = 1.0):
    """Stock transformers' (inv_freq, attention_factor) for a Llama config with these rope parameters."""
    rope_parameters = {"rope_theta": 10000.0, **rope_parameters}
    if partial_rotary_factor != 1.0:
        rope_parameters["partial_rotary_factor"] = partial_rotary_factor
    config = LlamaConfig(hidden_size=head_dim * 4, num_attention_heads=4, head_dim=head_dim,
                         max_position_embeddings=max_position_embeddings, rope_parameters=rope_parameters)
    return ROPE_INIT_FUNCTIONS[rope_parameters["rope_type"]](config, "cpu", seq_len=seq_len)


CASES = [
    # (head_dim, partial, theta, L0, factor)
    (128, 1.0, 10000.0, 4096, 8.0),
    (128, 1.0, 500000.0, 8192, 16.0),
    (64, 1.0, 1000000.0, 32768, 4.0),
    (80, 0.4, 10000.0, 2048, 2.5),  # Phi-2 style partial rotary
    (64, 0.25, 10000.0, 2048, 8.0),  # GPT-NeoX style partial rotary
]


@pytest.mark.parametrize("head_dim,partial,theta,L0,factor", CASES)
def test_pi_matches_stock_linear(head_dim, partial, theta, L0, factor):
    dim = int(head_dim * partial)
    ours = compute_inv_freq("pi", dim, theta, factor, L0)
    ref = stock({"rope_type": "linear", "factor": factor, "rope_theta": theta}, head_dim, L0,
                partial_rotary_factor=partial)
    torch.testing.assert_close(ours[0], ref[0], **EXACT)
    assert ours[1] == ref[1] == 1.0


@pytest.mark.parametrize("head_dim,partial,theta,L0,factor", CASES)
@pytest.mark.parametrize("seq_len_over_L0", [0.5, 1.0, 3.0, 8.0, 20.0])
def test_dynamic_ntk_matches_stock_dynamic(head_dim, partial, theta, L0, factor, seq_len_over_L0):
    dim = int(head_dim * partial)
    seq_len = int(L0 * seq_len_over_L0)
    ours = compute_inv_freq("dynamic-ntk", dim, theta, factor, L0, seq_len=seq_len)
    # stock `dynamic` reads max_position_embeddings as the original window
    ref = stock({"rope_type": "dynamic", "factor": factor, "rope_theta": theta}, head_dim, L0, seq_len=seq_len,
                partial_rotary_factor=partial)
    torch.testing.assert_close(ours[0], ref[0], **EXACT)


@pytest.mark.parametrize("head_dim,partial,theta,L0,factor", CASES)
@pytest.mark.parametrize("betas", [(32.0, 1.0), (16.0, 2.0)])
def test_yarn_matches_stock_yarn(head_dim, partial, theta, L0, factor, betas):
    dim = int(head_dim * partial)
    beta_fast, beta_slow = betas
    ours = compute_inv_freq("yarn", dim, theta, factor, L0, beta_fast=beta_fast, beta_slow=beta_slow)
    # the enlarged max_position_embeddings must not matter: the ramp uses the original window
    ref = stock({"rope_type": "yarn", "factor": factor, "rope_theta": theta, "original_max_position_embeddings": L0,
                 "beta_fast": beta_fast, "beta_slow": beta_slow}, head_dim, int(L0 * factor),
                partial_rotary_factor=partial)
    torch.testing.assert_close(ours[0], ref[0], **EXACT)
    assert ours[1] == pytest.approx(ref[1], rel=1e-12)
    assert ours[1] == pytest.approx(0.1 * math.log(factor) + 1)


@pytest.mark.parametrize("head_dim,partial,theta,L0,factor", CASES)
def test_ntk_by_parts_is_yarn_without_attention_scale(head_dim, partial, theta, L0, factor):
    dim = int(head_dim * partial)
    ours = compute_inv_freq("ntk-by-parts", dim, theta, factor, L0)
    ref = stock({"rope_type": "yarn", "factor": factor, "rope_theta": theta, "original_max_position_embeddings": L0,
                 "attention_factor": 1.0}, head_dim, int(L0 * factor), partial_rotary_factor=partial)
    torch.testing.assert_close(ours[0], ref[0], **EXACT)
    assert ours[1] == ref[1] == 1.0


def test_yarn_explicit_attention_factor_is_used():
    ours = compute_inv_freq("yarn", 128, 10000.0, 8, 4096, attention_factor=1.3)
    ref = stock({"rope_type": "yarn", "factor": 8.0, "original_max_position_embeddings": 4096,
                 "attention_factor": 1.3}, 128, 32768)
    assert ours[1] == ref[1] == 1.3


@pytest.mark.parametrize("head_dim,partial,theta,L0,factor", CASES)
def test_llama3_matches_stock_llama3(head_dim, partial, theta, L0, factor):
    dim = int(head_dim * partial)
    ours = compute_inv_freq("llama3", dim, theta, factor, L0)
    ref = stock({"rope_type": "llama3", "factor": factor, "rope_theta": theta, "original_max_position_embeddings": L0,
                 "low_freq_factor": 1.0, "high_freq_factor": 4.0}, head_dim, int(L0 * factor),
                partial_rotary_factor=partial)
    torch.testing.assert_close(ours[0], ref[0], **EXACT)


@pytest.mark.parametrize("head_dim,partial,theta,L0,factor", CASES)
def test_ntk_is_stock_default_rope_with_the_raised_theta(head_dim, partial, theta, L0, factor):
    dim = int(head_dim * partial)
    ours = compute_inv_freq("ntk", dim, theta, factor, L0)
    raised = theta * factor ** (dim / (dim - 2))
    ref = stock({"rope_type": "linear", "factor": 1.0, "rope_theta": raised}, head_dim, L0, partial_rotary_factor=partial)
    torch.testing.assert_close(ours[0], ref[0], **EXACT)
    # the paper's property: the lowest frequency is interpolated by exactly s, the highest kept
    base = default_inv_freq(dim, theta)
    assert ours[0][0] == base[0] == 1.0
    assert ours[0][-1].item() == pytest.approx(base[-1].item() / factor, rel=1e-5)


def test_cos_sin_match_stock_at_131072_positions():
    """cos/sin of YaRN x32 on a Llama-3-like rope over 131072 positions, against stock's rotary module."""
    L0, factor, theta = 4096, 32.0, 500000.0
    config = LlamaConfig(hidden_size=512, num_attention_heads=4, head_dim=128, max_position_embeddings=int(L0 * factor),
                         rope_parameters={"rope_type": "yarn", "rope_theta": theta, "factor": factor,
                                          "original_max_position_embeddings": L0})
    rotary = LlamaRotaryEmbedding(config)
    positions = torch.arange(131072)[None]  # [1, 131072]
    x = torch.zeros(1, dtype=torch.float32)
    stock_cos, stock_sin = rotary(x, positions)  # [1, 131072, 128]
    inv_freq, scale = compute_inv_freq("yarn", 128, theta, factor, L0)
    angles = positions[0, :, None].float() * inv_freq[None, :]  # [131072, 64]
    emb = torch.cat((angles, angles), dim=-1)  # [131072, 128]
    torch.testing.assert_close(emb.cos() * scale, stock_cos[0], **EXACT)
    torch.testing.assert_close(emb.sin() * scale, stock_sin[0], **EXACT)


@pytest.mark.parametrize("method", list(METHODS))
@pytest.mark.parametrize("seq_len", [None, 4096, 32768])
def test_factor_one_is_the_identity(method, seq_len):
    """Dynamic methods included: factor 1 is what ctxext writes as plain RoPE, at every length."""
    base = default_inv_freq(128, 10000.0)
    inv_freq, scale = compute_inv_freq(method, 128, 10000.0, 1, 4096, seq_len=seq_len, **method_params(method, 128))
    torch.testing.assert_close(inv_freq, base, **EXACT)
    assert scale == 1.0


@pytest.mark.parametrize("method", list(METHODS))
def test_always_float32(method):
    inv_freq, _ = compute_inv_freq(method, 64, 10000.0, 8, 2048, seq_len=16384, **method_params(method, 64))
    assert inv_freq.dtype == torch.float32 and inv_freq.shape == (32,)


@pytest.mark.parametrize("head_dim,partial,theta,L0,factor", CASES)
@pytest.mark.parametrize("seq_len_over_L0", [None, 0.5, 1.0, 1.001, 3.0])
@pytest.mark.parametrize("attention_factor", [None, 1.0, 1.3])
def test_longrope_matches_stock_longrope(head_dim, partial, theta, L0, factor, seq_len_over_L0, attention_factor):
    """Short factors up to L0, long ones past it; attention sqrt(1 + ln s / ln L0) unless given."""
    dim = int(head_dim * partial)
    long, short = ramp_factors(dim, 2 * factor), ramp_factors(dim, 1.5)
    seq_len = None if seq_len_over_L0 is None else max(1, int(L0 * seq_len_over_L0))
    ours = compute_inv_freq("longrope", dim, theta, factor, L0, seq_len=seq_len, long_factor=long, short_factor=short,
                            attention_factor=attention_factor)
    params = {"rope_type": "longrope", "rope_theta": theta, "factor": factor, "original_max_position_embeddings": L0,
              "long_factor": long, "short_factor": short}
    if attention_factor is not None:
        params["attention_factor"] = attention_factor
    ref = stock(params, head_dim, int(L0 * factor), seq_len=seq_len, partial_rotary_factor=partial)
    torch.testing.assert_close(ours[0], ref[0], **EXACT)
    assert ours[1] == ref[1]
    if attention_factor is None:
        assert ours[1] == pytest.approx(math.sqrt(1 + math.log(factor) / math.log(L0)), rel=1e-12)
    # which set: theta_i / lambda_i, independently of the stock formula's operation order
    chosen = long if seq_len is not None and seq_len > L0 else short
    torch.testing.assert_close(ours[0], default_inv_freq(dim, theta) / torch.tensor(chosen), rtol=1e-6, atol=0)


def test_longrope_stock_derives_factor_from_the_windows_as_phi3_does():
    """Phi-3 gives no `factor`: stock takes max_position_embeddings / original window, as ctxext's factor."""
    long = ramp_factors(96, 16.0)
    ref = stock({"rope_type": "longrope", "long_factor": long, "short_factor": long,
                 "original_max_position_embeddings": 4096}, 96, 131072)
    ours = compute_inv_freq("longrope", 96, 10000.0, 32, 4096, long_factor=long)
    torch.testing.assert_close(ours[0], ref[0], **EXACT)
    assert ours[1] == ref[1]


@pytest.mark.parametrize("head_dim,partial,theta,L0,factor", CASES)
@pytest.mark.parametrize("method", ["pi", "ntk-by-parts", "yarn", "llama3", "ntk"])
def test_a_static_method_written_as_longrope_keeps_its_frequencies(head_dim, partial, theta, L0, factor, method):
    """The Phi-3 encoding: factors theta_i / inv_freq_i give back the method's frequencies to one float32 rounding."""
    dim = int(head_dim * partial)
    inv_freq, _ = compute_inv_freq(method, dim, theta, factor, L0)
    factors = longrope_factors(inv_freq, dim, theta)
    assert len(factors) == dim // 2 and min(factors) >= 1.0
    back, _ = compute_inv_freq("longrope", dim, theta, factor, L0, long_factor=factors, attention_factor=1.0)
    torch.testing.assert_close(back, inv_freq, rtol=1.2e-7, atol=0)  # 2^-23: one float32 rounding
    # kept dims are written as exactly 1, interpolated ones (pi: all) as exactly the factor
    if method == "pi" and factor in (8.0, 16.0, 4.0):
        assert set(factors) == {factor}


def test_yarn_keeps_high_and_interpolates_low_frequencies():
    """From the paper: dims with wavelength < L0/beta_fast keep theta_i; > L0/beta_slow get theta_i / s."""
    dim, theta, L0, s = 128, 10000.0, 4096, 8.0
    base = default_inv_freq(dim, theta)
    inv_freq, _ = compute_inv_freq("yarn", dim, theta, s, L0)
    lam = wavelengths(base)
    high = lam < L0 / 32 - 1e-3  # rotates more than beta_fast times in the original window
    low = lam > L0 / 1 + 1e-3  # rotates less than once
    # floor/ceil widen the blend range by up to one dim on each side; drop those boundary dims
    ramp = yarn_ramp(dim, theta, L0, 32.0, 1.0)
    keep, interp = high & (ramp == 0), low & (ramp == 1)
    assert keep.sum() >= 10 and interp.sum() >= 10
    torch.testing.assert_close(inv_freq[keep], base[keep], **EXACT)
    torch.testing.assert_close(inv_freq[interp], base[interp] / s, rtol=1e-6, atol=0)
    # in between, strictly between the two and monotone in the ramp
    mid = (ramp > 0) & (ramp < 1)
    assert ((inv_freq[mid] < base[mid]) & (inv_freq[mid] > base[mid] / s)).all()


def test_llama3_bands():
    """Llama 3.1: wavelength < L0/4 kept, > L0 divided by s, smooth in between."""
    dim, theta, L0, s = 128, 500000.0, 8192, 8.0
    base = default_inv_freq(dim, theta)
    inv_freq, _ = compute_inv_freq("llama3", dim, theta, s, L0)
    lam = wavelengths(base)
    short, long = lam < L0 / 4, lam > L0
    torch.testing.assert_close(inv_freq[short], base[short], **EXACT)
    torch.testing.assert_close(inv_freq[long], base[long] / s, **EXACT)
    mid = ~short & ~long
    assert mid.any() and ((inv_freq[mid] <= base[mid]) & (inv_freq[mid] >= base[mid] / s)).all()


def test_dynamic_methods_follow_the_length():
    dim, theta, L0, s = 64, 10000.0, 2048, 8.0
    base = default_inv_freq(dim, theta)
    for method in ("dynamic-ntk", "dynamic-yarn"):
        short, scale = compute_inv_freq(method, dim, theta, s, L0, seq_len=L0)
        torch.testing.assert_close(short, base, **EXACT)
        assert scale == 1.0
    # dynamic-yarn at L = 4 L0 is static YaRN with factor 4, whatever the advertised factor
    at4, scale4 = compute_inv_freq("dynamic-yarn", dim, theta, s, L0, seq_len=4 * L0)
    ref4, ref_scale4 = compute_inv_freq("yarn", dim, theta, 4, L0)
    torch.testing.assert_close(at4, ref4, **EXACT)
    assert scale4 == ref_scale4
    # dynamic-ntk at L = s L0 uses base b * (s^2 - s + 1)^(d/(d-2))
    at_window, _ = compute_inv_freq("dynamic-ntk", dim, theta, s, L0, seq_len=int(s * L0))
    torch.testing.assert_close(at_window, default_inv_freq(dim, theta * (s * s - s + 1) ** (dim / (dim - 2))), **EXACT)


def test_bad_numbers_are_refused():
    with pytest.raises(ValueError, match="dim"):
        compute_inv_freq("yarn", 63, 10000.0, 8, 4096)
    with pytest.raises(ValueError, match="rope_theta"):
        compute_inv_freq("yarn", 64, 0.5, 8, 4096)
    with pytest.raises(ValueError, match="factor must be >= 1"):
        compute_inv_freq("yarn", 64, 10000.0, 0.5, 4096)


@pytest.mark.parametrize("factor, mscale, mscale_all_dim, attention_factor", [
    (factor, *pair) for factor in (1.0, 1.5, 4.0, 40.0)
    for pair in ((None, None, None), (1.0, 1.0, None), (0.707, 0.707, None), (1.0, 0.5, None), (0.8, None, None),
                 (None, 1.0, None), (1.0, 1.0, 1.3))
    # factor 1 is ctxext's identity, written as default rope whatever attention_factor says: no yarn to compare
    if not (factor == 1.0 and pair[2] is not None)
])
def test_yarn_attention_factor_is_transformers_own(factor, mscale, mscale_all_dim, attention_factor):
    """ctxext's yarn with mscale / mscale_all_dim (DeepSeek's spelling) gives stock _compute_yarn_parameters' cos/sin
    scale and frequencies, bit for bit: both only when both are set, an explicit attention_factor over everything."""
    extra = {k: v for k, v in dict(mscale=mscale, mscale_all_dim=mscale_all_dim,
                                   attention_factor=attention_factor).items() if v is not None}
    rope = {"rope_type": "yarn", "rope_theta": 10000.0, "factor": factor, "original_max_position_embeddings": 64,
            **extra}
    config = LlamaConfig(hidden_size=256, num_attention_heads=4, max_position_embeddings=int(64 * factor),
                         rope_parameters=rope)
    stock_inv_freq, stock_scale = ROPE_INIT_FUNCTIONS["yarn"](config, "cpu")
    inv_freq, scale = compute_inv_freq("yarn", 64, 10000.0, factor, 64, **extra)
    assert scale == stock_scale
    if factor > 1:
        torch.testing.assert_close(inv_freq, stock_inv_freq, rtol=0, atol=0)


def test_the_softmax_mscale_types_are_those_transformers_builds_with_yarn_apply_mscale():
    """SOFTMAX_MSCALE_TYPES lists every model type whose stock attention calls yarn_apply_mscale when it is built."""
    import importlib
    import inspect
    import pkgutil

    import transformers.models
    from transformers import CONFIG_MAPPING

    from ctxext.rope.layout import SOFTMAX_MSCALE_TYPES

    found = set()
    for info in pkgutil.iter_modules(transformers.models.__path__):
        try:
            modeling = importlib.import_module(f"transformers.models.{info.name}.modeling_{info.name}")
        except Exception:
            continue
        if "yarn_apply_mscale(" not in inspect.getsource(modeling):
            continue
        found |= {t for t, cls in CONFIG_MAPPING.items()
                  if cls.__module__.startswith(f"transformers.models.{info.name}.") and not t.endswith("_vision")}
    assert found and found <= SOFTMAX_MSCALE_TYPES, found - SOFTMAX_MSCALE_TYPES
