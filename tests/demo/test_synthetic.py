"""The demo model's tokenizer and synthetic documents."""

import random

import pytest

from ctxext.evaluation.passkey import build_prompts
from ctxext.demo.synthetic import DocumentMaker, build_tokenizer, heldout_texts, training_stream

TOKENIZER = build_tokenizer()


def test_tokenizer_round_trips_and_splits_digits():
    text = "The pass key is 40712. Remember it.\nWhat is the pass key? The pass key is"
    ids = TOKENIZER(text)["input_ids"]
    assert ids[0] == TOKENIZER.bos_token_id
    assert TOKENIZER.decode(ids, skip_special_tokens=True) == text
    for key in ("40712", "00000", "98765"):  # the space, then one token per digit, whatever the digits
        ids = TOKENIZER(" " + key, add_special_tokens=False)["input_ids"]
        assert [TOKENIZER.decode([i]) for i in ids] == [" ", *key], key


def test_documents_fit_their_budget_and_end_with_the_question():
    maker, rng = DocumentMaker(TOKENIZER), random.Random(0)
    for budget in (128, 256, 2048):
        for _ in range(5):
            prompt, answer = maker.make(rng, budget)
            assert budget - 12 <= len(prompt) + len(answer) <= budget
            assert TOKENIZER.decode(prompt).endswith("What is the pass key? The pass key is")
            key = TOKENIZER.decode(answer).strip()
            assert len(key) == 5 and key.isdigit() and key in TOKENIZER.decode(prompt)


def test_a_budget_too_small_for_the_fixed_lines_is_refused():
    with pytest.raises(ValueError, match="budget"):
        DocumentMaker(TOKENIZER).make(random.Random(0), 16)


def test_texts_are_seeded():
    assert training_stream(TOKENIZER, 3, 256, seed=4) == training_stream(TOKENIZER, 3, 256, seed=4)
    assert training_stream(TOKENIZER, 3, 256, seed=4) != training_stream(TOKENIZER, 3, 256, seed=5)
    assert heldout_texts(TOKENIZER, 2, 256, seed=4) != heldout_texts(TOKENIZER, 2, 256, seed=5)
    (doc,) = heldout_texts(TOKENIZER, 1, 512)
    assert len(TOKENIZER(doc)["input_ids"]) >= 512


def test_the_standard_prompt_builds_exactly_with_this_tokenizer():
    prompts = build_prompts(TOKENIZER, [256, 2048], depths=[0, 0.5, 1], trials=2)
    assert [len(p.input_ids) for p in prompts] == [256] * 6 + [2048] * 6


def test_ruler_documents_fit_their_budget_and_end_with_the_answer_and_eos():
    from ctxext.demo.synthetic import RULER_TASKS, RulerDocuments
    from ctxext.evaluation.ruler import build_ruler_prompts

    docs, rng = RulerDocuments(TOKENIZER), random.Random(0)
    evaluated = {p.input_ids for t in RULER_TASKS for p in build_ruler_prompts(t, TOKENIZER, 256, samples=20, seed=0)}
    for budget in (256, 2048):
        for _ in range(6):
            prompt, answer = docs.make(rng, budget)
            assert len(prompt) + len(answer) <= budget and answer[-1] == TOKENIZER.eos_token_id
            value = TOKENIZER.decode(answer[:-1]).strip(" .")
            text = TOKENIZER.decode(prompt)
            assert f"is: {value}." in text and text.endswith("mentioned in the provided text is")
            assert tuple(prompt) not in evaluated  # training seeds are not an evaluation's
    # half of the fine-tuning stream's documents are RULER prompts
    stream = training_stream(TOKENIZER, 10, 512, seed=3)
    texts = [TOKENIZER.decode(stream[i : i + 512]) for i in range(0, len(stream), 512)]
    assert 2 <= sum("special magic" in t for t in texts) <= 8


def test_search_needles_are_the_training_streams_passkey_documents():
    """What a factor search of the demo model reads is what the demo fine-tunes on, not look-alikes."""
    from ctxext.demo.synthetic import search_needles

    length, period = 512, DocumentMaker(TOKENIZER).ids(".")
    stream = training_stream(TOKENIZER, 12, length, seed=0)
    docs = [stream[i : i + length] for i in range(0, len(stream), length)]
    needles = search_needles(TOKENIZER, 3, length, seed=0)
    passkey = [d for d in docs if "special magic" not in TOKENIZER.decode(d)]
    assert len(needles) == 3 and len(passkey) >= 3
    for (prompt, answer), doc in zip(needles, passkey):
        assert prompt + answer + period == doc[: len(prompt) + len(answer) + len(period)]
