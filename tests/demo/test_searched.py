"""The searched longrope factors shipped for the embedded model: they belong to its weights, obey the
search's constraint, and are what the search measured on its training documents."""

import json
import math

import pytest
import torch
from transformers import AutoModelForCausalLM, AutoTokenizer

from ctxext.demo import searched
from ctxext.demo.run import demo_model_path
from ctxext.demo.synthetic import search_needles
from ctxext.errors import CtxextError
from ctxext.search.evaluator import FrequencyEvaluator
from ctxext.search.objectives import given_needles
from ctxext.search.space import Bounds, Candidate, clip, method_seeds


def test_the_shipped_factors_fit_the_model_and_the_constraint():
    data = searched.searched_factors()
    f = data["long_factor"]
    assert len(f) == 16 and f[0] >= 1.0 and all(a <= b for a, b in zip(f, f[1:]))
    assert data["short_factor"] == [1.0] * 16 and data["factor"] == 8 and data["original_max_position_embeddings"] == 256
    assert data["search"]["perplexity"] <= min(data["search"]["seeds"].values())
    assert data["search"]["guard"]["perplexity"] <= data["search"]["guard"]["limit"]


def test_factors_searched_for_other_weights_are_refused(tmp_path, monkeypatch):
    data = json.loads((demo_model_path().parent / searched.LONGROPE_ASSET).read_text())
    (tmp_path / "demo_model").mkdir()
    (tmp_path / "demo_model" / "model.safetensors").write_bytes(b"other weights")
    (tmp_path / "demo_model" / "config.json").write_text("{}")
    (tmp_path / searched.LONGROPE_ASSET).write_text(json.dumps(data))
    monkeypatch.setattr("ctxext.demo.run.demo_model_path", lambda: tmp_path / "demo_model")
    with pytest.raises(CtxextError, match="searched for other weights"):
        searched.searched_factors()


@pytest.mark.slow
def test_the_shipped_numbers_are_what_the_factors_and_seeds_score_on_the_training_documents():
    """Recomputed here: the needle perplexity of the shipped factors and of each seed on the search's documents.

    A seed is scored as the search scored it: moved into the search's bounds (the guard's attention factors).
    """
    torch.set_num_threads(1)
    data = searched.searched_factors()
    source = demo_model_path()
    tokenizer = AutoTokenizer.from_pretrained(source)
    evaluator = FrequencyEvaluator(AutoModelForCausalLM.from_pretrained(source).eval())
    docs = given_needles(search_needles(tokenizer, searched.SEARCH["samples"], 2048, seed=0))
    best = Candidate(tuple(data["long_factor"]), data["attention_factor"])
    assert math.exp(evaluator.loss(best, docs)) == pytest.approx(data["search"]["perplexity"], rel=1e-5)
    guard, settings = data["search"]["guard"], data["search"]["settings"]
    bounds = Bounds(evaluator.n, settings["max_long_factor"], guard["attention_low"], guard["attention_high"])
    for seed in method_seeds(evaluator.dim, evaluator.rope_theta, 8.0, 256):
        assert math.exp(evaluator.loss(clip(seed.candidate, bounds), docs)) == pytest.approx(data["search"]["seeds"][seed.method], rel=1e-5)
