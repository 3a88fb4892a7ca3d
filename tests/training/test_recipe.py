"""The recipe is the one home of every training default: README's list is the dataclass's, and each
field's rule holds at the boundary."""

import ast
import dataclasses
import re
from pathlib import Path

import pytest

import ctxext
from ctxext.errors import CtxextError, CtxextTypeError
from ctxext.training.recipe import RECIPE_FIELDS, Recipe, build_recipe

README = Path(__file__).resolve().parents[2] / "README.md"


def test_readme_lists_every_field_with_its_default():
    text = README.read_text()
    start = text.index("`Recipe` fields and defaults")
    listed = re.findall(r"`(\w+)=([^`]+)`", text[start : text.index("The run seeds", start)])
    assert [name for name, _ in listed] == list(RECIPE_FIELDS)
    defaults = Recipe()
    for name, value in listed:
        assert ast.literal_eval(value) == getattr(defaults, name), name


def test_the_recipe_is_a_public_name():
    assert ctxext.Recipe is Recipe


@pytest.mark.parametrize("field,value,error", [
    ("warmup_steps", -1, "warmup_steps must be a whole number, 0 or more"),
    ("lora_dropout", 1.0, "lora_dropout is out of range: got 1.0; it must be a finite number at least 0 and below 1"),
    ("learning_rate", float("nan"), "learning_rate is out of range"),
    ("dtype", "int8", "Unknown dtype 'int8'; choose one of auto, float32, bfloat16, float16"),
    ("loss_chunk_size", 0, "loss_chunk_size must be a whole number of tokens, at least 1"),
    ("batch_size", True, "batch_size must be a whole number greater than 0"),
])
def test_each_field_is_checked_by_its_rule(field, value, error):
    with pytest.raises(CtxextError, match=re.escape(error)):
        Recipe(**{field: value})


def test_wrong_types_are_type_errors():
    with pytest.raises(CtxextTypeError, match="pose must be True or False"):
        Recipe(pose=1)
    with pytest.raises(CtxextTypeError, match="learning_rate must be a number"):
        Recipe(learning_rate="fast")
    with pytest.raises(CtxextTypeError, match="split must be a string"):
        Recipe(split=None)


def test_build_recipe_overrides_fields_and_refuses_unknown_ones():
    base = Recipe(max_steps=10)
    assert build_recipe(base, seed=3) == dataclasses.replace(base, seed=3)
    assert build_recipe() == Recipe() and build_recipe(base) is base
    with pytest.raises(CtxextError, match="Unknown recipe field\\(s\\) lr; valid fields: seq_len, pose,"):
        build_recipe(lr=1e-3)
    with pytest.raises(CtxextError, match="max_steps must be a whole number greater than 0"):
        build_recipe(base, max_steps=0)  # the override is validated too
