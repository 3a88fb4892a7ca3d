"""Candidates scored in memory: the frequencies swapped in are the ones patch_model writes for the same
method, the losses are the stock model's own, batching changes nothing, and restore undoes it all."""

import copy
import math

import pytest
import torch
import torch.nn.functional as F

from ctxext.errors import CtxextError
from ctxext.patching.model import patch_model
from ctxext.search.evaluator import FrequencyEvaluator
from ctxext.search.objectives import ScoredSequence
from ctxext.search.space import Candidate, method_seeds
from tiny import tiny_model, token_ids

L0, FACTOR = 64, 4.0


@pytest.fixture(autouse=True, scope="module")
def one_thread():
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


def seeds_for(evaluator):
    return {s.method: s.candidate for s in method_seeds(evaluator.dim, evaluator.rope_theta, FACTOR, L0)}


@pytest.mark.parametrize("model_type", ["llama", "phi", "gemma3_text"])
@pytest.mark.parametrize("method", ["pi", "ntk", "yarn"])
def test_a_seed_swapped_in_gives_the_logits_of_its_method_patched_by_patch_model(model_type, method):
    model = tiny_model(model_type)
    reference = patch_model(copy.deepcopy(model), method, FACTOR)
    evaluator = FrequencyEvaluator(model)
    evaluator.set(seeds_for(evaluator)[method])
    ids = token_ids(200)
    with torch.inference_mode():
        torch.testing.assert_close(model(ids).logits, reference(ids).logits, rtol=1e-5, atol=1e-5)


def test_restore_gives_back_the_model_exactly():
    model = tiny_model("llama")
    ids = token_ids(150)
    with torch.inference_mode():
        before = model(ids).logits
    evaluator = FrequencyEvaluator(model)
    evaluator.set(seeds_for(evaluator)["yarn"])
    with torch.inference_mode():
        assert not torch.allclose(model(ids).logits, before)
    evaluator.restore()
    with torch.inference_mode():
        torch.testing.assert_close(model(ids).logits, before, rtol=0, atol=0)
    # short factors with attention factor 1 are the original frequencies: the model itself
    evaluator.set(seeds_for(evaluator)["pi"], short=True)
    with torch.inference_mode():
        torch.testing.assert_close(model(ids).logits, before, rtol=0, atol=0)


def test_losses_are_the_stock_models_own_and_batching_does_not_change_them():
    model = tiny_model("llama")
    reference = patch_model(copy.deepcopy(model), "yarn", FACTOR)
    docs = [token_ids(256, seed=s)[0].tolist() for s in range(3)] + [token_ids(190, seed=9)[0].tolist()]
    whole = [ScoredSequence.all_tokens(d) for d in docs]
    needles = [ScoredSequence(tuple(d), tuple(range(len(d) - 5, len(d)))) for d in docs]
    with torch.inference_mode():
        stock_nll, stock_count, needle_nll = 0.0, 0, 0.0
        for d in docs:
            ids = torch.tensor([d])
            out = reference(ids, labels=ids)  # transformers' own loss: mean over len(d) - 1 tokens
            stock_nll += float(out.loss) * (len(d) - 1)
            stock_count += len(d) - 1
            logits = out.logits[0, len(d) - 6 : len(d) - 1]  # predictions of the last 5 tokens
            needle_nll += float(F.cross_entropy(logits.float(), ids[0, -5:], reduction="sum"))
    evaluator = FrequencyEvaluator(model)
    yarn = seeds_for(evaluator)["yarn"]
    assert evaluator.loss(yarn, whole) == pytest.approx(stock_nll / stock_count, rel=1e-6)
    assert evaluator.loss(yarn, needles) == pytest.approx(needle_nll / 20, rel=1e-6)
    one_at_a_time = FrequencyEvaluator(model, batch_tokens=1)
    assert one_at_a_time.loss(yarn, whole) == pytest.approx(evaluator.loss(yarn, whole), rel=1e-6)
    assert one_at_a_time.loss(yarn, needles) == pytest.approx(evaluator.loss(yarn, needles), rel=1e-6)


def test_losses_go_through_the_models_own_head():
    """Regression: the loss re-implemented the head's transform from config names (HyperCLOVA X's
    logits_scaling, which stock multiplies by, was divided by); it now runs the model's own head."""
    from transformers import AutoConfig, AutoModelForCausalLM

    from tiny import SMALL

    torch.manual_seed(0)
    model = AutoModelForCausalLM.from_config(AutoConfig.for_model("hyperclovax", **SMALL, logits_scaling=4.0)).eval()
    docs = [token_ids(120, seed=s)[0].tolist() for s in range(2)]
    with torch.inference_mode():
        stock = [float(model(torch.tensor([d]), labels=torch.tensor([d])).loss) for d in docs]
    evaluator = FrequencyEvaluator(model)
    expected = sum(stock) / len(stock)  # equal lengths: the mean of the means
    assert evaluator.loss(None, [ScoredSequence.all_tokens(d) for d in docs]) == pytest.approx(expected, rel=1e-5)


def test_the_attention_factor_scales_cos_and_sin_as_yarn_does():
    """ntk-by-parts and yarn share frequencies; yarn's attention factor is the only difference."""
    model = tiny_model("llama")
    reference = patch_model(copy.deepcopy(model), "yarn", FACTOR)
    evaluator = FrequencyEvaluator(model)
    seeds = seeds_for(evaluator)
    parts = seeds["ntk-by-parts"]
    evaluator.set(Candidate(parts.long_factor, seeds["yarn"].attention_factor))
    ids = token_ids(120)
    with torch.inference_mode():
        torch.testing.assert_close(model(ids).logits, reference(ids).logits, rtol=1e-5, atol=1e-5)


def test_a_model_that_already_carries_a_scaling_is_refused():
    model = patch_model(tiny_model("llama"), "yarn", 2.0)
    with pytest.raises(CtxextError, match="already uses yarn"):
        FrequencyEvaluator(model)
