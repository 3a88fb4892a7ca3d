"""Perplexity vs length: the window plan, agreement with a direct computation, documents, files, resume."""

from __future__ import annotations

import json
import math

import pytest
import torch

from ctxext.errors import CtxextError
from ctxext.evaluation.perplexity import evaluate_perplexity, tokenize_documents, windows
from evalkit import byte_tokenizer, one_thread, tiny_llama  # noqa: F401
from tiny import tiny_model

# lengths past a tiny model's window are the point of several tests here
pytestmark = pytest.mark.filterwarnings("ignore::ctxext.evaluation.common.LengthBeyondWindowWarning")

WORDS = "the of and to in a is that for it as was with be by on not he I this are or his from at which".split()


def documents(n: int, chars: int, seed: int = 0) -> list[str]:
    """Pseudo-text documents of about `chars` characters each."""
    g = torch.Generator().manual_seed(seed)
    return [" ".join(WORDS[i] for i in torch.randint(len(WORDS), (chars // 3,), generator=g).tolist())[:chars] for _ in range(n)]


def direct_perplexity(model, docs: list[list[int]], length: int, stride: int) -> tuple[float, int]:
    """The Hugging Face perplexity guide's loop, with transformers computing the loss from labels."""
    nll, count = 0.0, 0
    for ids in docs:
        ids = torch.tensor([ids])
        previous_end = 0
        for begin in range(0, ids.shape[1], stride):
            end = min(begin + length, ids.shape[1])
            target = end - previous_end
            window = ids[:, begin:end]
            labels = window.clone()
            labels[:, :-target] = -100  # score only the tokens no earlier window scored
            scored = int((labels[:, 1:] != -100).sum())  # the model shifts: the first label is never predicted
            with torch.no_grad():
                loss = model(input_ids=window, labels=labels).loss
            nll += float(loss) * scored
            count += scored
            previous_end = end
            if end == ids.shape[1]:
                break
    return math.exp(nll / count), count


@pytest.mark.parametrize("n, length, stride", [(100, 32, 8), (100, 32, 32), (100, 32, 100), (37, 64, 16), (64, 64, 256)])
def test_windows_score_every_token_once_with_at_most_length_tokens(n, length, stride):
    plan = windows(n, length, stride)
    scored = [t for begin, end, k in plan for t in range(end - k, end)]
    assert len(scored) == len(set(scored))
    assert all(end - begin <= length and k <= end - begin - 1 for begin, end, k in plan)
    assert plan[-1][1] == n
    if min(stride, length) < length:
        assert scored == list(range(1, n))  # every token but the first, once
    else:  # disjoint windows: the first token of each window has nothing to predict it
        assert scored == [t for t in range(n) if t % length]


@pytest.mark.parametrize("stride", [64, 16])
def test_perplexity_matches_a_direct_computation(stride):
    tokenizer = byte_tokenizer()
    model = tiny_llama(seed=0, window=64)
    texts = documents(3, 400, seed=1)
    report = evaluate_perplexity([("tiny", model, tokenizer)], texts, [32, 64, 200], stride=stride, progress=False)
    ids = [tokenizer(t).input_ids[:200] for t in texts]
    for record in report["results"]:
        # a stride past the length acts as the length (disjoint windows rather than gaps)
        expected, count = direct_perplexity(model, ids, record["length"], min(stride, record["length"]))
        assert record["tokens"] == count
        assert record["perplexity"] == pytest.approx(expected, rel=1e-5)
    # a random model over 259 tokens: perplexity near the vocabulary size
    assert all(100 < r["perplexity"] < 1000 for r in report["results"])


def test_more_tokens_per_document_score_whole_documents_in_disjoint_windows():
    tokenizer = byte_tokenizer()
    model = tiny_llama(seed=0, window=64)
    texts = documents(2, 300, seed=3)
    report = evaluate_perplexity([("tiny", model, tokenizer)], texts, [32, 64], stride=64, tokens_per_document=256,
                                 progress=False)
    ids = [tokenizer(t).input_ids[:256] for t in texts]
    for record in report["results"]:
        expected, count = direct_perplexity(model, ids, record["length"], record["length"])
        assert (record["tokens"], count) == (2 * (256 - 256 // record["length"]),) * 2
        assert record["perplexity"] == pytest.approx(expected, rel=1e-5)
    with pytest.raises(CtxextError, match="shorter than the longest length"):
        evaluate_perplexity([("tiny", model, tokenizer)], texts, [32, 64], tokens_per_document=48, progress=False)


def test_batching_and_softcapped_logits_give_the_same_numbers():
    tokenizer = byte_tokenizer()
    model = tiny_model("gemma2", seed=3, vocab_size=259, final_logit_softcapping=5.0)
    texts = documents(4, 300, seed=2)
    one = evaluate_perplexity([("g", model, tokenizer)], texts, [48, 96], stride=24, batch_size=1, progress=False)
    many = evaluate_perplexity([("g", model, tokenizer)], texts, [48, 96], stride=24, batch_size=7, progress=False)
    for a, b in zip(one["results"], many["results"]):
        assert a["tokens"] == b["tokens"]
        assert a["perplexity"] == pytest.approx(b["perplexity"], rel=1e-5)
    ids = [tokenizer(t).input_ids[:96] for t in texts]
    assert one["results"][0]["perplexity"] == pytest.approx(direct_perplexity(model, ids, 48, 24)[0], rel=1e-5)


def test_scoring_runs_through_the_chunked_head_never_the_full_logits(monkeypatch):
    """A transformers LM is scored through its decoder and the chunked LM head: the head never sees more
    than one chunk of positions, and the numbers are the direct computation's."""
    import ctxext.lm_head

    tokenizer = byte_tokenizer()
    model = tiny_llama(seed=0, window=64)
    monkeypatch.setattr(ctxext.lm_head, "CHUNK_LOGITS", 16 * model.config.vocab_size)  # 16 positions per chunk
    rows, forwards = [], []
    linear = torch.nn.functional.linear

    def head_rows(input, weight, bias=None):  # every product with the head's weight, whoever makes it
        if weight is model.lm_head.weight:
            rows.append(input.shape[:-1].numel())
        return linear(input, weight, bias)

    monkeypatch.setattr(torch.nn.functional, "linear", head_rows)
    model.register_forward_hook(lambda module, args, kwargs, out: forwards.append(kwargs["input_ids"].shape),
                                with_kwargs=True)
    texts = documents(3, 400, seed=1)
    report = evaluate_perplexity([("tiny", model, tokenizer)], texts, [64, 200], stride=200, progress=False)
    assert forwards == [(1, 8), (1, 8)]  # the model's own forward: only the 8-token check, once per length
    assert max(rows) <= 16 and len(rows) > 20  # the head: one chunk of positions at a time (the checks: 8)
    ids = [tokenizer(t).input_ids[:200] for t in texts]
    for record in report["results"]:
        expected, count = direct_perplexity(model, ids, record["length"], record["length"])
        assert record["perplexity"] == pytest.approx(expected, rel=1e-5) and record["tokens"] == count


def test_a_model_whose_forward_is_more_than_its_head_is_scored_through_its_logits():
    from transformers import LlamaForCausalLM

    from ctxext.evaluation.perplexity import head_matches_forward

    class Tempered(LlamaForCausalLM):  # logits divided by 2 after the head: nothing LogitTransform knows
        def forward(self, *args, **kwargs):
            out = super().forward(*args, **kwargs)
            out.logits = out.logits / 2
            return out

    tokenizer = byte_tokenizer()
    model = Tempered(tiny_llama(seed=0, window=64).config).eval()
    assert not head_matches_forward(model) and head_matches_forward(tiny_llama(seed=0, window=64))
    texts = documents(2, 200, seed=4)
    (record,) = evaluate_perplexity([("t", model, tokenizer)], texts, [100], stride=100, progress=False)["results"]
    ids = torch.tensor([tokenizer(t).input_ids[:100] for t in texts])
    with torch.no_grad():
        logits = model(input_ids=ids).logits[:, :-1]
    expected = torch.nn.functional.cross_entropy(logits.flatten(0, 1), ids[:, 1:].flatten())
    assert record["perplexity"] == pytest.approx(math.exp(float(expected)), rel=1e-5)


def test_documents_are_cut_to_the_longest_length_and_short_ones_skipped():
    tokenizer = byte_tokenizer()
    texts = ["short text", "x" * 500, "y" * 50, "z" * 300]
    kept = tokenize_documents({"t": tokenizer}, texts, need=200)["t"]
    assert [len(d) for d in kept] == [200, 200]
    assert tokenizer.decode(kept[1], skip_special_tokens=True) == "z" * 199  # BOS + 199 characters
    assert len(tokenize_documents({"t": tokenizer}, texts, need=200, samples=1)["t"]) == 1
    with pytest.raises(CtxextError, match="No document in the texts has 1000 tokens \\(the longest has 501\\)"):
        evaluate_perplexity([("m", tiny_llama(), tokenizer)], texts, [256, 1000], progress=False)
    with pytest.raises(CtxextError, match="no non-blank documents"):
        evaluate_perplexity([("m", tiny_llama(), tokenizer)], ["", "  "], [256], progress=False)


def test_long_documents_are_not_tokenized_whole():
    calls = []
    tokenizer = byte_tokenizer()

    class Counting:
        def __call__(self, text, **kwargs):
            calls.append(len(text))
            return tokenizer(text, **kwargs)

    book = "word " * 200_000
    (ids,) = tokenize_documents({"t": Counting()}, [book], need=300)["t"]
    assert ids == tokenizer(book).input_ids[:300]
    assert max(calls) < 10_000


def test_perplexity_json_plot_and_resume(tmp_path):
    tokenizer = byte_tokenizer()
    model = tiny_llama(seed=1, window=64)
    texts = documents(2, 300, seed=3)
    out = tmp_path / "ppl"
    first = evaluate_perplexity([("a", model, tokenizer)], texts, [32, 128], output_dir=out, progress=False)
    data = json.loads((out / "perplexity.json").read_text())
    assert data == first and set(data) == {"results"}
    for r in data["results"]:
        assert set(r) == {"model", "length", "perplexity", "tokens"}
        assert isinstance(r["tokens"], int) and isinstance(r["perplexity"], float)
    assert (out / "perplexity.png").stat().st_size > 1000
    with pytest.raises(CtxextError, match="already exists"):
        evaluate_perplexity([("a", model, tokenizer)], texts, [32, 128], output_dir=out, progress=False)

    class Untouchable(torch.nn.Module):
        config = model.config

        def forward(self, **kwargs):
            raise AssertionError("a finished length was evaluated again")

    # resume: model a is finished (never called again), model b is new and runs both lengths
    both = evaluate_perplexity([("a", Untouchable(), tokenizer), ("b", tiny_llama(seed=2, window=64), tokenizer)],
                               texts, [32, 128], output_dir=out, resume=True, progress=False)
    assert both["results"][:2] == first["results"]
    assert [(r["model"], r["length"]) for r in both["results"]] == [("a", 32), ("a", 128), ("b", 32), ("b", 128)]
    with pytest.raises(CtxextError, match="scored another number of tokens"):
        evaluate_perplexity([("a", model, tokenizer)], texts, [32, 128], stride=16, output_dir=out, resume=True, progress=False)
