"""read_layout refuses config values of the wrong type with a sentence; every real config passes."""

import pytest

from ctxext.rope.layout import RopeConfigError, check_config_types, read_layout
from tiny import ARCHITECTURES, tiny_config

LLAMA = {"model_type": "llama", "hidden_size": 64, "num_attention_heads": 4, "max_position_embeddings": 64,
         "rope_parameters": {"rope_type": "default", "rope_theta": 10000.0}}


@pytest.mark.parametrize("arch", ARCHITECTURES)
def test_every_architecture_passes(arch):
    config = tiny_config(arch).to_dict()
    check_config_types(config)
    read_layout(config)


def test_longrope_and_nested_rope_pass():
    phi3 = tiny_config("phi3", rope_parameters={"rope_type": "longrope", "rope_theta": 1e4, "short_factor": [1.0] * 8,
                                                "long_factor": [2.0] * 8, "original_max_position_embeddings": 32})
    check_config_types(phi3.to_dict())


@pytest.mark.parametrize("change, message", [
    ({"rope_parameters": "yarn"}, "gives rope_parameters 'yarn', which is not an object of rope settings"),
    ({"rope_parameters": {"rope_type": "default", "rope_theta": "abc"}}, "gives rope_theta 'abc', which is not a positive number"),
    ({"rope_parameters": {"rope_type": "yarn", "rope_theta": 1e4, "factor": "2"}}, "gives factor '2'"),
    ({"rope_parameters": {"rope_type": "default", "rope_theta": float("inf")}}, "gives rope_theta inf"),
    ({"rope_parameters": {"full_attention": {"rope_type": "default", "rope_theta": "x"}}},
     "gives rope_theta 'x' for full_attention layers"),
    ({"rope_parameters": None, "rope_theta": "abc"}, "gives rope_theta 'abc'"),
    ({"head_dim": "abc"}, "gives head_dim 'abc', which is not a whole number of at least 1"),
    ({"head_dim": 16.0}, "gives head_dim 16.0"),
    ({"max_position_embeddings": "4k"}, "gives max_position_embeddings '4k'"),
    ({"partial_rotary_factor": 1.5}, "gives partial_rotary_factor 1.5, which is not a number in (0, 1]"),
    ({"rope_parameters": {"rope_type": "longrope", "rope_theta": 1e4, "short_factor": "x"}}, "gives short_factor 'x'"),
    ({"ctxext": {"method": "yarn"}}, "The ctxext record in this 'llama' config is damaged"),
])
def test_wrong_types_are_one_sentence(change, message):
    with pytest.raises(RopeConfigError) as refused:
        read_layout({**LLAMA, **change})
    assert message in str(refused.value) and str(refused.value).endswith(".")
