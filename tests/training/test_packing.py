"""Tokenize once (cached), join with EOS, pack; seeded sample order; PoSE position ids."""

import datasets
import numpy as np
import pytest
import torch

from ctxext.errors import CtxextError
from ctxext.training.loss import causal_lm_loss
from ctxext.training.packing import SampleStream, pose_position_ids, read_dataset, token_stream, tokenize
from tiny import tiny_model, tiny_tokenizer, token_ids

EOS = 2


def texts(*docs):
    return datasets.Dataset.from_dict({"text": list(docs)})


def test_documents_are_joined_with_eos_in_order(tmp_path):
    stream = token_stream(texts("ab", "c\nd"), tiny_tokenizer(), cache_dir=tmp_path)
    np.testing.assert_array_equal(stream, [ord("a"), ord("b"), EOS, ord("c"), ord("\n"), ord("d"), EOS])


def test_tokenized_once_then_read_from_the_cache(tmp_path):
    tokenizer = tiny_tokenizer()
    calls = []
    original = type(tokenizer).__call__

    def counting(self, *args, **kwargs):
        calls.append(1)
        return original(self, *args, **kwargs)

    type(tokenizer).__call__ = counting
    try:
        first = token_stream(texts("hello", "world"), tokenizer, cache_dir=tmp_path)
        assert calls
        calls.clear()
        second = token_stream(texts("hello", "world"), tokenizer, cache_dir=tmp_path)  # equal content: a hit
        assert not calls
        np.testing.assert_array_equal(first, second)
        other = token_stream(texts("hello", "there"), tokenizer, cache_dir=tmp_path)  # new content: tokenized
        assert calls and len(other) == len("hellothere") + 2
    finally:
        type(tokenizer).__call__ = original


def test_cache_key_follows_the_tokenizer(tmp_path):
    a = tiny_tokenizer()
    b = tiny_tokenizer()
    b.backend_tokenizer.add_special_tokens(["<extra>"])  # a different tokenizer must not reuse a's ids
    token_stream(texts("x"), a, cache_dir=tmp_path)
    token_stream(texts("x"), b, cache_dir=tmp_path)
    assert len(list((tmp_path / "tokens").glob("*.u32"))) == 2


def test_tokens_from_a_jsonl_file_and_from_ids(tmp_path):
    path = tmp_path / "docs.jsonl"
    path.write_text('{"text": "ab"}\n{"text": "  "}\n{"text": "cd"}\n')
    stream = tokenize(read_dataset(path), tiny_tokenizer(), cache_dir=tmp_path / "cache")
    np.testing.assert_array_equal(stream, [97, 98, EOS, 99, 100, EOS])  # the blank document is dropped
    np.testing.assert_array_equal(tokenize(read_dataset(torch.tensor([5, 6, 7])), None), [5, 6, 7])
    with pytest.raises(CtxextError, match="1-D sequence"):
        read_dataset([[1, 2]])
    with pytest.raises(CtxextError, match="no `text` column"):
        read_dataset(datasets.Dataset.from_dict({"body": ["x"]}))
    with pytest.raises(CtxextError, match="needs a tokenizer"):
        tokenize(read_dataset(path), None)


def test_packed_sequences_are_consecutive_windows_and_the_tail_is_dropped():
    tokens = np.arange(100, dtype=np.uint32)
    stream = SampleStream(tokens, length=16, total=6, seed=0)
    assert stream.n_sequences == 6
    seen = set()
    for k in range(6):
        item = stream[k]
        i = item["sequence"]
        torch.testing.assert_close(item["input_ids"], torch.arange(16 * i, 16 * i + 16))
        seen.add(i)
    assert seen == set(range(6))  # one epoch visits every sequence once


def test_sample_order_depends_on_seed_and_k_only_and_reshuffles_per_epoch():
    tokens = np.arange(80)
    a = SampleStream(tokens, length=8, total=30, seed=3)
    b = SampleStream(tokens, length=8, total=30, seed=3)
    order_a = [a[k]["sequence"] for k in range(30)]
    order_b = [b[k]["sequence"] for k in reversed(range(30))][::-1]  # read in another order: same answer
    assert order_a == order_b
    epochs = [order_a[i : i + 10] for i in (0, 10, 20)]
    assert all(sorted(e) == list(range(10)) for e in epochs)
    assert epochs[0] != epochs[1]
    assert order_a != [SampleStream(tokens, length=8, total=30, seed=4)[k]["sequence"] for k in range(30)]


def test_pose_position_ids_skip_within_the_target_window():
    g = torch.Generator().manual_seed(0)
    maxima = []
    for _ in range(300):
        pos = pose_position_ids(64, 512, g, chunks=3)
        steps = pos.diff()
        assert pos.shape == (64,) and pos.min() >= 0 and pos.max() < 512
        assert (steps >= 1).all()  # strictly increasing
        assert (steps > 1).sum() <= 2  # at most chunks - 1 skips; consecutive inside each chunk
        maxima.append(int(pos.max()))
    assert max(maxima) > 500 and min(maxima) < 300  # the skips spread over the whole target window
    torch.testing.assert_close(pose_position_ids(64, 64, g), torch.arange(64))  # nothing to skip


def test_pose_samples_are_reproducible_per_k():
    stream = SampleStream(np.arange(400), length=32, total=20, seed=1, pose_target=256)
    again = SampleStream(np.arange(400), length=32, total=20, seed=1, pose_target=256)
    torch.testing.assert_close(stream[7]["position_ids"], again[7]["position_ids"])
    assert not torch.equal(stream[7]["position_ids"], stream[8]["position_ids"])


@pytest.mark.parametrize("attn", ["sdpa", "eager"])
def test_pose_attention_crosses_the_skips(attn):
    """Without a cache or a mask, transformers reads a jump in position ids as the boundary of packed
    sequences; PoSE's chunks are one sequence, so tokens after the skip must see those before it."""
    model = tiny_model("llama", attn_implementation=attn)
    ids = token_ids(32)
    positions = torch.cat([torch.arange(10), torch.arange(10, 32) + 20])[None]  # one skip of 20 at t=10
    changed = ids.clone()
    changed[0, 0] = (changed[0, 0] + 1) % 128  # change one token of the first chunk
    decoder = model.get_decoder()
    with torch.no_grad():
        mask = torch.ones_like(ids)
        kwargs = dict(position_ids=positions, attention_mask=mask, use_cache=False)  # as causal_lm_loss calls it
        a = decoder(input_ids=ids, **kwargs).last_hidden_state[0, -1]
        b = decoder(input_ids=changed, **kwargs).last_hidden_state[0, -1]
        assert not torch.allclose(a, b)  # the last token (second chunk) sees the first chunk
        # and the loss goes through that same path
        full = causal_lm_loss(model, ids, positions)
        stock = model(ids, position_ids=positions, attention_mask=mask, labels=ids, use_cache=False).loss
    torch.testing.assert_close(full, stock)
