"""Passkey retrieval: exact prompts, the scorer, teacher forcing vs generate, accuracy 1 and 0, files, resume."""

from __future__ import annotations

import json
import math
import warnings

import pytest
import torch

from ctxext.errors import CtxextError
from ctxext.evaluation.common import LengthBeyondWindowWarning
from ctxext.evaluation.passkey import (
    FILLER,
    KEY_LINE,
    QUESTION,
    TASK,
    PasskeyPrompt,
    PasskeyRunner,
    PromptBuilder,
    build_prompts,
    evaluate_passkey,
    make_passkey,
    prediction_text,
    teacher_forced_tokens,
)
from evalkit import InductionOracle, byte_tokenizer, one_thread, tiny_llama, trained_tokenizer  # noqa: F401
from tiny import tiny_model

# lengths past a tiny model's window are the point of several tests here
pytestmark = pytest.mark.filterwarnings("ignore::ctxext.evaluation.common.LengthBeyondWindowWarning")

TOKENIZERS = {"bytes": byte_tokenizer, "bpe": lambda: trained_tokenizer("bpe"), "metaspace": lambda: trained_tokenizer("metaspace")}
RECORD_KEYS = {"model", "length", "tokens", "depth", "trial", "passkey", "prediction", "correct"}


def greedy_outputs(runner: PasskeyRunner, prompts) -> dict[tuple, list[int]]:
    return {(p.length, p.depth, p.trial, p.answer_ids): tokens for batch in runner.run(prompts) for p, tokens in batch}


# -- prompts ---------------------------------------------------------------------------------------


@pytest.mark.parametrize("kind", sorted(TOKENIZERS))
def test_prompts_have_exact_lengths_and_key_depths(kind):
    tokenizer = TOKENIZERS[kind]()
    depths = [0.0, 0.1, 0.25, 0.5, 0.9, 1.0]
    lengths = [300, 517, 1024]
    prompts = build_prompts(tokenizer, lengths, depths, trials=3, seed=7)
    assert len(prompts) == len(lengths) * len(depths) * 3
    builder = PromptBuilder(tokenizer)
    start = len(builder.special) + len(builder.head)  # where the filler begins
    for p in prompts:
        assert p.tokens == p.length
        # the key line starts after round(depth x filler) filler tokens
        filler = p.length - builder.fixed_tokens(p.passkey)
        assert p.key_start - start == math.floor(p.depth * filler + 0.5)
        key_line = builder._key_line(p.passkey)
        assert list(p.input_ids[p.key_start : p.key_start + len(key_line)]) == key_line
        assert tokenizer.decode(key_line).strip() == KEY_LINE.format(key=p.passkey)
        # the filler after the key fills the rest exactly, then the question closes the prompt
        assert list(p.input_ids[-len(builder.question):]) == builder.question
        after = p.length - len(builder.question) - (p.key_start + len(key_line))
        assert after == filler - (p.key_start - start)
        # the text is the standard prompt, and the tokens are the tokenizer's own for that text
        text = tokenizer.decode(p.input_ids, skip_special_tokens=True)
        assert text.strip().startswith(TASK) and text.endswith(QUESTION)
        assert text.count(KEY_LINE.format(key=p.passkey)) == 1
        assert "The grass is green. The sky is blue." in text or p.length < 400
        assert list(tokenizer(text).input_ids) == list(p.input_ids)
        assert tokenizer.decode(p.answer_ids).strip() == p.passkey
        assert len(p.passkey) == 5 and p.passkey.isdigit()


def test_depth_zero_and_one_put_the_key_at_the_ends():
    tokenizer = byte_tokenizer()
    first, last = build_prompts(tokenizer, [600], [0.0, 1.0], trials=1)
    text0 = tokenizer.decode(first.input_ids, skip_special_tokens=True)
    text1 = tokenizer.decode(last.input_ids, skip_special_tokens=True)
    assert text0.startswith(TASK + "\n\n" + KEY_LINE.format(key=first.passkey))
    assert text1.endswith(KEY_LINE.format(key=last.passkey) + "\n\n" + QUESTION)


def test_keys_are_seeded_per_sample_and_same_for_every_tokenizer():
    a = build_prompts(byte_tokenizer(), [400, 800], [0.0, 0.5], trials=4, seed=3)
    b = build_prompts(trained_tokenizer("bpe"), [400, 800], [0.0, 0.5], trials=4, seed=3)
    c = build_prompts(byte_tokenizer(), [800], [0.5], trials=4, seed=3)  # another grid: the same keys
    keys = {(p.length, p.depth, p.trial): p.passkey for p in a}
    assert keys == {(p.length, p.depth, p.trial): p.passkey for p in b}
    assert all(keys[(p.length, p.depth, p.trial)] == p.passkey for p in c)
    assert len(set(keys.values())) == len(keys)  # 16 different 5-digit keys
    other = build_prompts(byte_tokenizer(), [400, 800], [0.0, 0.5], trials=4, seed=4)
    assert sum(keys[(p.length, p.depth, p.trial)] == p.passkey for p in other) == 0
    assert len(make_passkey(0, 100, 0.5, 0, digits=8)) == 8


def test_a_length_too_short_for_the_prompt_is_refused():
    with pytest.raises(CtxextError, match="too short for the passkey prompt"):
        build_prompts(byte_tokenizer(), [100], [0.5], trials=1)


# -- scoring ---------------------------------------------------------------------------------------


def test_teacher_forced_scorer_on_constructed_logits():
    answer = [5, 7, 9, 11]
    logits = torch.full((4, 16), -1.0)
    logits[torch.arange(4), torch.tensor(answer)] = 3.0  # argmax = the key at every position
    assert teacher_forced_tokens(logits, answer) == (answer, None)
    logits[2, 4] = 5.0  # position 2 prefers token 4
    assert teacher_forced_tokens(logits, answer) == ([5, 7, 4, 11], 2)
    logits[0, 1] = 9.0
    assert teacher_forced_tokens(logits, answer)[1] == 0


def test_prediction_stops_at_end_of_sequence():
    tokenizer = byte_tokenizer()
    ids = tokenizer(" 123", add_special_tokens=False).input_ids
    eos = tokenizer.eos_token_id
    assert prediction_text(tokenizer, ids) == "123"
    assert prediction_text(tokenizer, ids[:2] + [eos] + ids[2:], [eos]) == "1"


def test_teacher_forcing_agrees_with_generate_sample_by_sample():
    """Misses at every position, full matches, shared prefix or not, batched or not: all equal generate."""
    tokenizer = byte_tokenizer()
    model = tiny_llama(seed=1, window=256)
    prompts = build_prompts(tokenizer, [260, 400], [0.0, 0.5, 1.0], trials=2, seed=1)
    generated = greedy_outputs(PasskeyRunner(model, tokenizer, generate=True), prompts)
    # answers made from the model's own greedy output: it matches the first j tokens, then misses
    crafted = []
    for n, p in enumerate(prompts):
        g = generated[(p.length, p.depth, p.trial, p.answer_ids)]
        j = n % (len(g) + 1)  # j = len(g): a full match, "correct"
        answer = tuple(g[:j]) + tuple((t + 1) % 200 + 3 for t in g[j:])
        crafted.append(PasskeyPrompt(p.length, p.depth, p.trial, p.passkey, p.input_ids, answer, p.key_start))
    # for the crafted answers, greedy decoding is the same as for the real ones: the prompt is the same
    expected = {(p.length, p.depth, p.trial, p.answer_ids): generated[(p.length, p.depth, p.trial, q.answer_ids)] for p, q in zip(crafted, prompts)}
    for options in ({}, {"share_prefix": False}, {"batch_size": 1}, {"batch_size": 5}):
        got = greedy_outputs(PasskeyRunner(model, tokenizer, **options), crafted)
        assert got == expected, options
    hits = sum(expected[(p.length, p.depth, p.trial, p.answer_ids)] == list(p.answer_ids) for p in crafted)
    assert 0 < hits < len(crafted)


@pytest.mark.parametrize(
    "arch, overrides",
    [("mistral", dict(sliding_window=48)), ("gemma3_text", dict(sliding_window=48)), ("qwen3", {}), ("gpt_neox", {})],
)
def test_shared_prefix_runner_matches_generate_across_architectures(arch, overrides):
    tokenizer = byte_tokenizer()
    model = tiny_model(arch, seed=2, vocab_size=259, max_position_embeddings=512, **overrides)
    prompts = build_prompts(tokenizer, [300], [0.0, 0.5, 1.0], trials=2, seed=2)
    runner = PasskeyRunner(model, tokenizer)
    assert greedy_outputs(runner, prompts) == greedy_outputs(PasskeyRunner(model, tokenizer, generate=True), prompts)
    assert runner.tokens_run < 0.75 * sum(p.tokens for p in prompts)  # the prefix was shared


def test_length_dependent_rope_is_decoded_not_teacher_forced():
    from ctxext.patching.model import patch_model

    tokenizer = byte_tokenizer()
    model = patch_model(tiny_llama(seed=3, window=128), "dynamic-ntk", 4)
    runner = PasskeyRunner(model, tokenizer)
    assert runner.generate and not runner.share_prefix
    prompts = build_prompts(tokenizer, [300], [0.0, 1.0], trials=2)
    assert greedy_outputs(runner, prompts) == greedy_outputs(PasskeyRunner(model, tokenizer, generate=True), prompts)


class CountingLlama(torch.nn.Module):
    """A tiny Llama that counts the tokens it is given (a wrapper keeps the HF call interface)."""

    def __init__(self, model):
        super().__init__()
        self.inner, self.config, self.tokens = model, model.config, 0

    def forward(self, input_ids, cache=None, past_key_values=None, use_cache=None, logits_to_keep=0, **kwargs):
        self.tokens += input_ids.numel()
        name = "cache" if "cache" in __import__("inspect").signature(self.inner.forward).parameters else "past_key_values"
        return self.inner(input_ids=input_ids, use_cache=use_cache, logits_to_keep=logits_to_keep,
                          **{name: cache if cache is not None else past_key_values})


def test_the_shared_prefix_halves_the_work():
    """Depths 0..1: each sample runs only the text from its key on, so about half the naive tokens."""
    tokenizer = byte_tokenizer()
    prompts = build_prompts(tokenizer, [400, 800], [0.0, 0.25, 0.5, 0.75, 1.0], trials=3)
    counting = CountingLlama(tiny_llama(seed=4, window=1024))
    outputs = greedy_outputs(PasskeyRunner(counting, tokenizer), prompts)
    naive = sum(p.tokens + len(p.answer_ids) for p in prompts)
    assert counting.tokens < 0.62 * naive
    assert outputs == greedy_outputs(PasskeyRunner(counting.inner, tokenizer, share_prefix=False), prompts)


# -- the evaluation --------------------------------------------------------------------------------


def test_accuracy_is_one_where_the_key_is_in_view_and_zero_where_not(tmp_path):
    tokenizer = byte_tokenizer()
    sees = ("oracle-400", InductionOracle(window=400), tokenizer)
    blind = ("oracle-16", InductionOracle(window=16), tokenizer)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        report = evaluate_passkey([sees, blind], [300, 1200], depths=[0.0, 1.0], trials=3, output_dir=tmp_path, progress=False)
    summary = {(s["model"], s["length"]): s["accuracy"] for s in report["summary"]}
    assert summary[("oracle-400", 300)] == 1.0  # every key within its 400 tokens
    assert summary[("oracle-16", 300)] == 0.0 and summary[("oracle-16", 1200)] == 0.0
    cells = {}
    for r in report["results"]:
        cells.setdefault((r["model"], r["length"], r["depth"]), []).append(r["correct"])
    assert all(cells[("oracle-400", 1200, 1.0)]) and not any(cells[("oracle-400", 1200, 0.0)])
    assert summary[("oracle-400", 1200)] == 0.5
    beyond = [str(w.message) for w in caught if issubclass(w.category, LengthBeyondWindowWarning)]
    assert beyond == [
        "oracle-400 has a 400-token window; length 1200 is beyond it and evaluated anyway.",
        "oracle-16 has a 16-token window; lengths 300, 1200 are beyond it and evaluated anyway.",
    ]


def test_passkey_json_schema_plots_and_same_prompts_for_every_model(tmp_path):
    import matplotlib.image

    tokenizer = byte_tokenizer()
    models = [("a/one", InductionOracle(window=2000), tokenizer), ("two", tiny_llama(seed=5), tokenizer)]
    report = evaluate_passkey(models, [300, 500], depths=[0, 0.5, 1], trials=2, seed=11, output_dir=tmp_path / "out", progress=False)
    data = json.loads((tmp_path / "out" / "passkey.json").read_text())
    assert data == report and set(data) == {"results", "summary"}
    assert len(data["results"]) == 2 * 2 * 3 * 2
    for r in data["results"]:
        assert set(r) == RECORD_KEYS
        assert isinstance(r["length"], int) and isinstance(r["tokens"], int) and isinstance(r["trial"], int)
        assert isinstance(r["depth"], float) and isinstance(r["passkey"], str) and isinstance(r["prediction"], str)
        assert r["correct"] == (r["prediction"] == r["passkey"])
        assert r["tokens"] == r["length"]
    by_sample = {}
    for r in data["results"]:
        by_sample.setdefault((r["length"], r["depth"], r["trial"]), set()).add(r["passkey"])
    assert all(len(keys) == 1 for keys in by_sample.values())  # both models saw the same key
    for s in data["summary"]:
        assert set(s) == {"model", "length", "accuracy"}
        rows = [r["correct"] for r in data["results"] if (r["model"], r["length"]) == (s["model"], s["length"])]
        assert s["accuracy"] == sum(rows) / len(rows)
    assert [s["accuracy"] for s in data["summary"] if s["model"] == "a/one"] == [1.0, 1.0]
    pngs = sorted(p.name for p in (tmp_path / "out").glob("passkey*.png"))
    assert pngs == ["passkey_accuracy.png", "passkey_heatmap_a_one.png", "passkey_heatmap_two.png"]
    assert matplotlib.image.imread(tmp_path / "out" / "passkey_heatmap_a_one.png").shape[2] in (3, 4)


class Interrupted(Exception):
    pass


class FailingOracle(InductionOracle):
    """Breaks (as an interrupt would) on the n-th forward pass."""

    def __init__(self, window, fail_at):
        super().__init__(window)
        self.fail_at = fail_at

    def forward(self, *args, **kwargs):
        if self.calls + 1 == self.fail_at:
            raise Interrupted
        return super().forward(*args, **kwargs)


def test_an_interrupted_run_keeps_its_results_and_resume_finishes_it(tmp_path):
    tokenizer = byte_tokenizer()
    out = tmp_path / "run"
    args = dict(lengths=[300, 600], depths=[0.0, 0.5, 1.0], trials=2, seed=5, output_dir=out, progress=False)
    # one shared prefix pass, then one pass per (length, depth) batch: break during the 4th batch
    with pytest.raises(Interrupted):
        evaluate_passkey([("m", FailingOracle(2000, fail_at=5), tokenizer)], **args)
    kept = json.loads((out / "passkey.json").read_text())["results"]
    assert len(kept) == 3 * 2  # three batches of two trials finished
    with pytest.raises(CtxextError, match="already exists; pass --resume"):
        evaluate_passkey([("m", InductionOracle(2000), tokenizer)], **args)
    with pytest.raises(CtxextError, match="another seed"):
        evaluate_passkey([("m", InductionOracle(2000), tokenizer)], **{**args, "seed": 6}, resume=True)
    oracle = InductionOracle(2000)
    report = evaluate_passkey([("m", oracle, tokenizer)], **args, resume=True)
    assert report["results"][:6] == kept
    assert len(report["results"]) == 12
    assert len({(r["length"], r["depth"], r["trial"]) for r in report["results"]}) == 12
    assert oracle.calls == 1 + 3  # the prefix and the three batches left, nothing done twice
    assert report["summary"] == [{"model": "m", "length": 300, "accuracy": 1.0}, {"model": "m", "length": 600, "accuracy": 1.0}]
    fresh = evaluate_passkey([("m", InductionOracle(2000), tokenizer)], **{**args, "output_dir": tmp_path / "fresh"})
    assert sorted(map(str, report["results"])) == sorted(map(str, fresh["results"]))


@pytest.mark.parametrize(
    "kwargs, message",
    [
        (dict(lengths=[0]), "greater than 0"),
        (dict(lengths=[512, "1k"]), "whole numbers"),
        (dict(depths=[0.5, 1.5]), "from 0"),
        (dict(trials=0), "trials"),
        (dict(lengths=[64]), "too short"),
    ],
)
def test_bad_input_raises_one_sentence_and_creates_nothing(tmp_path, kwargs, message):
    args = dict(lengths=[300], depths=[0.5], trials=1, output_dir=tmp_path / "out" / "deeper", progress=False)
    with pytest.raises(CtxextError, match=message) as err:
        evaluate_passkey([("m", InductionOracle(100), byte_tokenizer())], **{**args, **kwargs})
    assert "\n" not in str(err.value)
    assert not (tmp_path / "out").exists()


def test_a_failure_before_any_result_leaves_no_directory(tmp_path):
    with pytest.raises(Interrupted):
        evaluate_passkey([("m", FailingOracle(100, fail_at=1), byte_tokenizer())], [300], trials=1,
                         output_dir=tmp_path / "out" / "deeper", progress=False)
    assert not (tmp_path / "out").exists()
