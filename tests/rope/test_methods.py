"""The method registry: names, aliases, and validation at the boundary."""

import pytest

from ctxext.rope.methods import ALIASES, METHOD_CHOICES, METHODS, resolve, yarn_attention_factor
from ctxext.rope.functions import ROPE_FUNCTIONS


def test_registry_and_math_share_names():
    assert set(METHODS) == set(ROPE_FUNCTIONS)
    assert set(METHODS) == {"pi", "ntk", "dynamic-ntk", "ntk-by-parts", "yarn", "dynamic-yarn", "llama3", "longrope"}
    assert ALIASES == {"linear": "pi", "dynamic": "dynamic-ntk"}
    assert METHOD_CHOICES[: len(METHODS)] == tuple(METHODS)


@pytest.mark.parametrize("spelling,canonical", [("linear", "pi"), ("dynamic", "dynamic-ntk"), ("YaRN", "yarn"),
                                                ("ntk_by_parts", "ntk-by-parts")])
def test_aliases_resolve_to_one_name(spelling, canonical):
    assert resolve(spelling, 4).method == canonical


def test_defaults_are_filled_in():
    scaling = resolve("yarn", 8)
    assert dict(scaling.params) == {"beta_fast": 32.0, "beta_slow": 1.0, "attention_factor": None, "mscale": None,
                                    "mscale_all_dim": None}
    assert dict(resolve("llama3", 8).params) == {"low_freq_factor": 1.0, "high_freq_factor": 4.0}
    assert resolve("yarn", 8, beta_fast=16).params["beta_fast"] == 16.0


def test_unknown_method_lists_the_valid_ones():
    with pytest.raises(ValueError, match=r"Unknown RoPE scaling method 'rope2'.*pi, ntk, dynamic-ntk.*linear"):
        resolve("rope2", 2)


def test_unknown_parameter_lists_the_valid_ones():
    with pytest.raises(ValueError, match=r"Unknown parameter\(s\) beta for method 'yarn'; valid parameters: beta_fast, beta_slow, attention_factor"):
        resolve("yarn", 2, beta=3)
    with pytest.raises(ValueError, match="for method 'pi'; valid parameters: none besides factor"):
        resolve("pi", 2, beta_fast=3)


@pytest.mark.parametrize("factor", [0.5, 0, -2])
def test_factor_below_one_is_refused(factor):
    with pytest.raises(ValueError, match="factor must be >= 1"):
        resolve("pi", factor)


@pytest.mark.parametrize("factor", ["8", None, True, [8]])
def test_factor_must_be_a_number(factor):
    with pytest.raises(TypeError, match="factor must be a number"):
        resolve("yarn", factor)


def test_non_finite_factor_is_refused():
    with pytest.raises(ValueError, match="finite"):
        resolve("yarn", float("inf"))


def test_parameter_ranges():
    with pytest.raises(ValueError, match="beta_fast must be greater than beta_slow"):
        resolve("yarn", 8, beta_fast=1, beta_slow=2)
    with pytest.raises(ValueError, match="high_freq_factor must be greater"):
        resolve("llama3", 8, low_freq_factor=4, high_freq_factor=1)
    with pytest.raises(ValueError, match="attention_factor must be positive"):
        resolve("yarn", 8, attention_factor=0)
    with pytest.raises(TypeError, match="beta_fast must be a number"):
        resolve("yarn", 8, beta_fast="32")
    with pytest.raises(TypeError, match="whole number of tokens"):
        resolve("yarn", 8, original_max_position_embeddings=100.5)


def test_yarn_attention_factor_formula():
    assert yarn_attention_factor(1) == 1.0
    assert yarn_attention_factor(8) == pytest.approx(0.1 * 2.0794415416798357 + 1)


def test_longrope_parameters():
    scaling = resolve("longrope", 8, long_factor=[1, 2.5, 8])
    assert scaling.params["long_factor"] == scaling.params["short_factor"] == (1.0, 2.5, 8.0)
    assert scaling.params["attention_factor"] is None and not scaling.is_dynamic
    two = resolve("longrope", 8, long_factor=[1, 2, 8], short_factor=(1, 1, 1.5), attention_factor=1.1)
    assert two.params["short_factor"] == (1.0, 1.0, 1.5) and two.is_dynamic


@pytest.mark.parametrize("params,error,message", [
    ({}, ValueError, "longrope needs long_factor"),
    ({"long_factor": "1,2"}, TypeError, "long_factor must be a list of numbers"),
    ({"long_factor": 2.0}, TypeError, "long_factor must be a list of numbers"),
    ({"long_factor": []}, ValueError, "long_factor is empty"),
    ({"long_factor": [1, "2"]}, TypeError, r"long_factor\[1\] must be a number"),
    ({"long_factor": [1, float("nan")]}, ValueError, r"long_factor\[1\] must be a finite number"),
    ({"long_factor": [1, 0.5]}, ValueError, "long_factor must hold numbers >= 1.*0.5 at index 1"),
    ({"long_factor": [1, 2], "short_factor": [1]}, ValueError, "must have the same length.*got 1 and 2"),
    ({"long_factor": [1, 2], "attention_factor": -1}, ValueError, "attention_factor must be positive"),
])
def test_longrope_bad_parameters_get_a_sentence(params, error, message):
    with pytest.raises(error, match=message) as info:
        resolve("longrope", 8, **params)
    assert str(info.value).endswith(".")


def test_longrope_factor_count_must_match_the_rotary_dims():
    from ctxext.rope.functions import compute_inv_freq

    with pytest.raises(ValueError, match="long_factor has 3 numbers, but this model has 64 rotary dimensions, so it "
                                         "needs 32"):
        compute_inv_freq("longrope", 64, 10000.0, 8, 4096, long_factor=[1, 2, 3])
