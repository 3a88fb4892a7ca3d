"""prompt_loss_weight: prompt/completion data, the weighted loss, checked against stock transformers' own masked loss."""

import json

import datasets
import numpy as np
import pytest
import torch
from torch import nn

from ctxext import finetune
from ctxext.errors import CtxextError
from ctxext.lm_head import IGNORE_INDEX, chunked_head_loss
from ctxext.training.loss import causal_lm_loss, token_weights
from ctxext.training.packing import MASKED, SampleStream, read_dataset, token_stream, tokenize
from tiny import tiny_model, tiny_tokenizer, token_ids


def test_token_weights_weigh_the_prediction_of_each_next_token():
    mask = torch.tensor([[0, 0, 1, 1, 0, 1]])
    # position t predicts token t + 1: tokens 2, 3 and 5 are completion tokens
    expected = torch.tensor([[0.25, 1.0, 1.0, 0.25, 1.0, 0.0]])
    torch.testing.assert_close(token_weights(mask, 0.25), expected)


@pytest.mark.parametrize("chunk_size", [1, 5, 64])
def test_weighted_chunked_loss_equals_the_weighted_mean_value_and_gradients(chunk_size):
    g = torch.Generator().manual_seed(0)
    hidden = torch.randn(2, 13, 8, generator=g, dtype=torch.float64)  # [B, T, H]
    weight = torch.randn(20, 8, generator=g, dtype=torch.float64)  # [V, H]
    labels = torch.randint(0, 20, (2, 13), generator=g)
    labels[:, -1] = IGNORE_INDEX
    weights = torch.rand(2, 13, generator=g, dtype=torch.float64)
    ours = [t.clone().requires_grad_() for t in (hidden, weight)]
    ref = [t.clone().requires_grad_() for t in (hidden, weight)]
    loss = chunked_head_loss(ours[0], lambda h: h @ ours[1].T, labels, [ours[1]], chunk_size, weights=weights)
    per_token = nn.functional.cross_entropy((ref[0] @ ref[1].T).reshape(-1, 20), labels.reshape(-1),
                                            ignore_index=IGNORE_INDEX, reduction="none")
    keep = (labels.reshape(-1) != IGNORE_INDEX).double()
    w = weights.reshape(-1) * keep
    expected = (per_token * w).sum() / w.sum()
    torch.testing.assert_close(loss.double(), expected, rtol=1e-6, atol=1e-7)
    loss.backward()
    expected.backward()
    for a, b in zip(ours, ref):
        torch.testing.assert_close(a.grad, b.grad, rtol=1e-5, atol=1e-7)
    with torch.no_grad():  # the evaluation path gives the same value
        torch.testing.assert_close(chunked_head_loss(hidden, lambda h: h @ weight.T, labels, [], chunk_size,
                                                     weights=weights).double(), expected.detach(), rtol=1e-6, atol=1e-7)


def test_zero_prompt_weight_is_stock_transformers_loss_on_the_completions():
    model = tiny_model("llama")
    ids = torch.cat([token_ids(40, seed=1), token_ids(40, seed=2)])  # [2, 40]
    mask = torch.zeros_like(ids)
    mask[0, 30:36] = 1
    mask[1, 10:12] = 1
    labels = ids.masked_fill(mask == 0, IGNORE_INDEX)  # stock: the loss on completion tokens only
    expected = model(input_ids=ids, labels=labels).loss
    ours = causal_lm_loss(model, ids, weights=token_weights(mask, 0.0))
    torch.testing.assert_close(ours, expected, rtol=1e-5, atol=1e-6)
    plain = causal_lm_loss(model, ids)
    torch.testing.assert_close(causal_lm_loss(model, ids, weights=token_weights(mask, 1.0)), plain)


def test_prompt_completion_rows_become_a_masked_stream(tmp_path):
    tokenizer = tiny_tokenizer()
    data = read_dataset(datasets.Dataset.from_dict({"prompt": ["Q: 1+1?", "Q: hi"], "completion": [" 2", " yo"]}))
    stream = token_stream(data, tokenizer, cache_dir=tmp_path)
    assert stream.dtype == MASKED
    expected, marks = [], []
    for prompt, completion in (("Q: 1+1?", " 2"), ("Q: hi", " yo")):
        p = tokenizer(prompt)["input_ids"]
        c = tokenizer(completion, add_special_tokens=False)["input_ids"] + [tokenizer.eos_token_id]
        expected += p + c
        marks += [0] * len(p) + [1] * len(c)
    assert stream["input_ids"].tolist() == expected
    assert stream["completion_mask"].tolist() == marks
    again = token_stream(data, tokenizer, cache_dir=tmp_path)  # read back from the cache, records intact
    assert isinstance(again, np.memmap) and again.tolist() == stream.tolist()


def test_prompt_completion_jsonl_files_and_pretokenized_rows(tmp_path):
    path = tmp_path / "qa.jsonl"
    path.write_text("\n".join(json.dumps({"prompt": f"q{i}", "completion": f" a{i}", "id": i}) for i in range(3)))
    data = read_dataset(str(path))
    assert data.column_names == ["prompt", "completion"] and len(data) == 3
    rows = datasets.Dataset.from_dict({"input_ids": [[5, 6, 7], [8, 9]], "completion_mask": [[0, 1, 1], [0, 1]]})
    tokens = tokenize(read_dataset(rows), None)
    assert tokens["input_ids"].tolist() == [5, 6, 7, 8, 9]  # joined as they are
    assert tokens["completion_mask"].tolist() == [0, 1, 1, 0, 1]
    item = SampleStream(tokens, length=5, total=1)[0]
    assert item["input_ids"].tolist() == [5, 6, 7, 8, 9]
    assert item["completion_mask"].tolist() == [False, True, True, False, True]
    plain = tokenize(read_dataset(datasets.Dataset.from_dict({"input_ids": [[5, 6], [7]]})), None)
    assert plain.tolist() == [5, 6, 7] and "completion_mask" not in SampleStream(plain, length=3, total=1)[0]


@pytest.mark.parametrize("rows, message", [
    ({"input_ids": [[5, 6, 7]], "completion_mask": [[0, 1]]}, "Row 0 of the dataset's completion_mask is not one 0 or 1"),
    ({"input_ids": [[5, 6], [7, -1]]}, "Row 1 of the dataset's input_ids is not a list of non-negative"),
    ({"prompt": [1, 2], "completion": ["a", "b"]}, "Column 'prompt' of dataset given holds int64 values, not text"),
    ({"prompt": ["a", "b"], "completion": [" ", ""]}, "no rows with a non-blank completion"),
])
def test_bad_prompt_completion_data_is_one_sentence(rows, message):
    with pytest.raises(CtxextError, match=message):
        tokenize(read_dataset(datasets.Dataset.from_dict(rows)), None)


def test_finetune_with_zero_prompt_weight_trains_on_completions_only(tmp_path):
    """Step 1's logged loss (LoRA starts as the identity) is stock transformers' masked loss on that batch."""
    model = tiny_model("llama")
    rng = np.random.default_rng(0)
    ids = rng.integers(3, 128, size=(6, 64)).tolist()
    mask = [[1 if 40 <= t < 48 else 0 for t in range(64)] for _ in range(6)]
    rows = datasets.Dataset.from_dict({"input_ids": ids, "completion_mask": mask})
    result = finetune(model, "yarn", 2, rows, tmp_path / "out", max_steps=2, batch_size=2, seq_len=64,
                      prompt_loss_weight=0.0, save_every=0, progress=False, learning_rate=1e-3)
    first = result.log[0]
    seen = first["sequences"][0]
    reference = tiny_model("llama")
    from ctxext import patch_model

    patch_model(reference, "yarn", 2)
    batch = torch.tensor([ids[i] for i in seen])
    labels = batch.masked_fill(torch.tensor([mask[i] for i in seen]) == 0, IGNORE_INDEX)
    with torch.no_grad():
        expected = reference(input_ids=batch, labels=labels).loss.item()
    assert first["loss"] == pytest.approx(expected, rel=1e-4)
    with torch.no_grad():
        everything = reference(input_ids=batch, labels=batch).loss.item()
    assert abs(first["loss"] - everything) > 1e-3  # the prompt tokens really were left out


def test_prompt_loss_weight_without_completions_is_refused_before_anything_is_written(tmp_path):
    ids = np.arange(3, 103).tolist() * 4
    with pytest.raises(CtxextError, match="prompt_loss_weight is 0.1, but dataset .* marks no completions"):
        finetune(tiny_model("llama"), "yarn", 2, ids, tmp_path / "out", max_steps=1, seq_len=64,
                 prompt_loss_weight=0.1, progress=False)
    assert not any(tmp_path.iterdir())  # no output, no checkpoint directory
