"""Perplexity against context length, with the papers' sliding windows.

    from ctxext.evaluation.perplexity import evaluate_perplexity
    report = evaluate_perplexity(["base/", "yarn-x8/"], "pg19", [2048, 4096, 8192], stride=256, samples=20)
    report["results"]   # [{"model": "base", "length": 2048, "perplexity": 9.81, "tokens": 163820}, ...]

The protocol (Press et al. 2022, used by the PI, YaRN and LongLoRA papers): documents are tokenized
once and every document with at least T tokens is cut to that many, so that every length scores
the same text and the numbers are comparable across lengths. T is max(lengths) by default (the YaRN
and LongLoRA evaluations' truncation); `tokens_per_document` sets a larger T to score more of each
document, at a cost that grows with it. At length L, windows of
L tokens start every `stride` tokens; each window scores only the tokens that no earlier window
scored, so every token after the first is predicted once, from up to L tokens of context. Stride = L
gives disjoint windows, whose first tokens nothing predicts and which are left out; a smaller stride
gives each scored token more context and costs more. Perplexity is exp of the token-weighted mean
negative log-likelihood over all documents; `tokens` says how many tokens it averages.
"""

from __future__ import annotations

import math
import os
from pathlib import Path
from typing import Any, Iterable, Iterator, Sequence

from ..errors import CtxextError
from ..io import one_writer
from .common import (
    ModelEntry,
    ModelSpec,
    ResultsFile,
    check_device,
    format_table,
    iterate_models,
    parse_lengths,
    resolve_models,
    warn_beyond_window,
)

DEFAULT_STRIDE = 256
DEFAULT_BATCH_TOKENS = 16384
#: positions whose logits are turned into float32 log-probabilities at once, for a model scored through
#: its own logits (a transformers causal LM is scored through the chunked LM head instead)
LOSS_CHUNK = 2048


def windows(n_tokens: int, length: int, stride: int) -> list[tuple[int, int, int]]:
    """(begin, end, scored) for each window over n_tokens: tokens [end - scored, end) are scored in it.

    Each window scores the tokens past the previous window's end, but never its own first token, which
    nothing in the window predicts: with stride < length every token but the document's first is
    scored once; with stride = length (disjoint windows) each window's first token goes unscored.
    A stride larger than the length acts as the length.
    """
    stride = min(stride, length)
    out, previous_end = [], 0
    for begin in range(0, n_tokens, stride):
        end = min(begin + length, n_tokens)
        scored = min(end - previous_end, end - begin - 1)
        if scored > 0:
            out.append((begin, end, scored))
        previous_end = end
        if end == n_tokens:
            break
    return out


def _texts(dataset: Any, split: str, text_field: str | None) -> tuple[str, Iterable[str]]:
    """(a name for messages, the documents) from a path, a datasets name, a Dataset or a list of strings."""
    if isinstance(dataset, (str, os.PathLike)):
        from ..data import load_texts

        path = Path(dataset).expanduser()
        if path.is_file() and path.stat().st_size == 0:
            raise CtxextError(f"{dataset} is empty; give a file with text in it.")
        loaded = load_texts(dataset, split=split, text_field=text_field)  # a local file: quietly
        return str(dataset), (row["text"] for row in loaded)
    if hasattr(dataset, "column_names"):  # a datasets.Dataset
        field = text_field or "text"
        if field not in dataset.column_names:
            raise CtxextError(f"The dataset has no {field!r} column (columns: {', '.join(dataset.column_names)}); pass text_field.")
        return "the dataset", (row[field] for row in dataset)
    if isinstance(dataset, (list, tuple)) and all(isinstance(t, str) for t in dataset):
        return "the texts", dataset
    raise CtxextError(f"Cannot read documents from {type(dataset).__name__}; give a file, a datasets name, a Dataset or a list of strings.")


def _head_tokens(tokenizer: Any, text: str, need: int) -> list[int]:
    """The first `need` tokens of `text` (fewer if it is shorter), without tokenizing a whole book.

    A prefix of the text tokenizes like the text except near the cut, so a prefix that gives a
    margin of spare tokens gives the right first `need` ones; the prefix doubles until it does.
    """
    chars = max(64, 8 * need)
    while True:
        ids = list(tokenizer(text[:chars], verbose=False)["input_ids"])
        if chars >= len(text):
            return ids[:need]
        if len(ids) >= need + 32:
            return ids[:need]
        chars *= 2


def tokenize_documents(
    tokenizers: dict[str, Any], texts: Iterable[str], need: int, samples: int | None = None, source: str = "the dataset"
) -> dict[str, list[list[int]]]:
    """Per tokenizer key, the first `need` tokens of each document that has at least that many under every tokenizer."""
    kept: dict[str, list[list[int]]] = {key: [] for key in tokenizers}
    longest = {key: 0 for key in tokenizers}
    seen = 0
    for text in texts:
        if not text or not text.strip():
            continue
        seen += 1
        ids = {key: _head_tokens(tok, text, need) for key, tok in tokenizers.items()}
        for key in ids:
            longest[key] = max(longest[key], len(ids[key]))
        if all(len(v) >= need for v in ids.values()):
            for key in ids:
                kept[key].append(ids[key])
            if samples is not None and len(next(iter(kept.values()))) >= samples:
                break
    if not seen:
        raise CtxextError(f"{source} has no non-blank documents; give a dataset with text in it.")
    if not next(iter(kept.values())):
        shortest = min(longest.values())
        raise CtxextError(
            f"No document in {source} has {need} tokens (the longest has {shortest}); "
            f"give --lengths up to {shortest} or a dataset with longer documents."
        )
    return kept


def head_matches_forward(model: Any) -> bool:
    """True when the decoder's hidden states through the chunked LM head reproduce the model's own logits.

    The model's forward is the reference: an architecture that does more between its decoder and its
    head than `LogitTransform` knows (or a model that is no transformers causal LM) is scored
    through its own logits instead. Costs one forward pass over 8 tokens.
    """
    import torch

    from ..lm_head import LogitTransform
    from .common import model_device

    get_decoder, get_head = getattr(model, "get_decoder", None), getattr(model, "get_output_embeddings", None)
    if not (callable(get_decoder) and callable(get_head) and getattr(model, "config", None) is not None):
        return False
    head = get_head()
    if not isinstance(head, torch.nn.Linear):
        return False
    ids = (torch.arange(3, 11) % head.out_features)[None].to(model_device(model))  # [1, 8]
    try:
        with torch.inference_mode():
            stock = model(input_ids=ids, use_cache=False).logits.float()  # [1, 8, V]
            hidden = get_decoder()(input_ids=ids, use_cache=False).last_hidden_state  # [1, 8, H]
            ours = torch.nn.functional.linear(hidden, head.weight, head.bias).float()
            transform = LogitTransform.from_config(model.config)
            ours = ours * transform.scale
            if transform.softcap is not None:
                ours = transform.softcap * torch.tanh(ours / transform.softcap)
    except (AttributeError, TypeError, ValueError, RuntimeError):
        return False
    tolerance = 1e-4 if hidden.dtype == torch.float32 else 2e-2
    return stock.shape == ours.shape and torch.allclose(stock, ours, rtol=tolerance, atol=tolerance)


def nll_sum(model: Any, windows_ids: Any, scored: int, through_head: bool = False) -> float:
    """Sum of -log p(token) over the last `scored` tokens of each window in the batch [B, W].

    through_head: run the decoder and score its hidden states through the chunked LM head
    (`ctxext.lm_head`), one bounded chunk of logits at a time, never the full [B, scored, V] logits;
    use it where `head_matches_forward(model)`. Otherwise the model's own logits are scored.
    """
    import inspect

    import torch.nn.functional as F

    targets = windows_ids[:, -scored:]  # [B, scored]
    if through_head:
        from ..lm_head import LogitTransform, chunked_nll_sum

        head = model.get_output_embeddings()
        hidden = model.get_decoder()(input_ids=windows_ids, use_cache=False).last_hidden_state  # [B, W, H]
        hidden = hidden[:, -(scored + 1) : -1]  # [B, scored, H]: position t predicts token t + 1
        return float(chunked_nll_sum(hidden, head.weight, targets, bias=head.bias,
                                     transform=LogitTransform.from_config(model.config)))
    kwargs: dict[str, Any] = {"use_cache": False}
    if "logits_to_keep" in inspect.signature(model.forward).parameters:
        kwargs["logits_to_keep"] = scored + 1  # logits at W - scored - 1 .. W - 1 (the last one predicts nothing)
    logits = model(input_ids=windows_ids, **kwargs).logits
    logits = logits[:, -(scored + 1) : -1]  # [B, scored, V]: position t predicts token t + 1
    total = 0.0
    for start in range(0, scored, LOSS_CHUNK):
        chunk = logits[:, start : start + LOSS_CHUNK].float()
        total += float(F.cross_entropy(chunk.flatten(0, 1), targets[:, start : start + LOSS_CHUNK].flatten(), reduction="sum"))
    return total


def perplexity_at(
    model: Any,
    documents: Sequence[Sequence[int]],
    length: int,
    stride: int = DEFAULT_STRIDE,
    batch_size: int | None = None,
    batch_tokens: int = DEFAULT_BATCH_TOKENS,
) -> Iterator[tuple[int, float, int]]:
    """Yield (windows done, NLL sum, tokens scored) batch by batch; perplexity = exp(sum NLL / sum tokens)."""
    import torch

    from .common import model_device

    device = model_device(model)
    through_head = head_matches_forward(model)
    plan = windows(len(documents[0]), length, stride)  # every document has the same number of tokens
    size = batch_size or max(1, batch_tokens // length)
    work = [(doc, begin, end, scored) for begin, end, scored in plan for doc in documents]
    with torch.inference_mode():
        i = 0
        while i < len(work):
            _, begin, end, scored = work[i]
            batch = []
            while i < len(work) and len(batch) < size and work[i][1:] == (begin, end, scored):
                batch.append(work[i][0][begin:end])
                i += 1
            ids = torch.tensor(batch, device=device)  # [B, end - begin]
            yield len(batch), nll_sum(model, ids, scored, through_head), scored * len(batch)


@one_writer("output_dir")  # issue 10: one run at a time writes an output directory
def evaluate_perplexity(
    models: ModelSpec | Sequence[ModelSpec],
    dataset: Any,
    lengths: Sequence[int],
    *,
    stride: int = DEFAULT_STRIDE,
    samples: int | None = None,
    tokens_per_document: int | None = None,
    split: str = "test",
    text_field: str | None = None,
    output_dir: str | Path | None = None,
    resume: bool = False,
    overwrite: bool = False,
    device: str | None = None,
    dtype: str | None = None,
    batch_size: int | None = None,
    progress: bool = True,
) -> dict:
    """Perplexity of each model at each length; returns {"results": [{model, length, perplexity, tokens}]}.

    `dataset`: a .txt/.jsonl/.parquet file or folder, a `datasets` name (with `split`), a Dataset or a
    list of strings. `samples` caps the number of documents (the first ones long enough);
    `tokens_per_document` (default max(lengths), at least that) is how many tokens of each are scored. With
    `output_dir`, writes perplexity.json after every length and perplexity.png at the end; `resume`
    skips the (model, length) pairs already there (it assumes the same dataset and stride).
    Bad input raises CtxextError before any model is loaded.
    """
    from tqdm.auto import tqdm

    lengths = parse_lengths(lengths)
    if lengths[0] < 2:
        raise CtxextError(f"Perplexity needs windows of at least 2 tokens, got length {lengths[0]}.")
    for name, value in (("stride", stride), ("samples", samples), ("tokens_per_document", tokens_per_document),
                        ("batch_size", batch_size)):
        if value is not None and (isinstance(value, bool) or not isinstance(value, int) or value < 1):
            raise CtxextError(f"{name} must be a whole number of at least 1, got {value!r}.")
    entries = resolve_models(models)
    check_device(device, dtype)
    out = ResultsFile(output_dir, "perplexity.json", resume=resume, overwrite=overwrite,
                      sources=[*(e.source for e in entries), dataset])
    source, texts = _texts(dataset, split, text_field)
    need = tokens_per_document or lengths[-1]
    if need < lengths[-1]:
        raise CtxextError(f"tokens_per_document ({need}) is shorter than the longest length ({lengths[-1]}); "
                          "give at least that many or leave it unset.")
    tokenizers = {}
    key_of: dict[str, str] = {}
    for entry in entries:
        tokenizer = entry.load_tokenizer()
        key = next((k for k, t in tokenizers.items() if t is tokenizer), entry.name)
        tokenizers.setdefault(key, tokenizer)
        key_of[entry.name] = key
    documents = tokenize_documents(tokenizers, texts, need, samples, source)
    n_docs = len(next(iter(documents.values())))
    scored_tokens = {n: n_docs * sum(scored for _, _, scored in windows(need, n, stride)) for n in lengths}

    done = set()
    for record in out.results:
        pair = (record.get("model"), record.get("length"))
        if pair[0] in key_of and pair[1] in lengths:
            if record.get("tokens") != scored_tokens[pair[1]]:
                raise CtxextError(
                    f"{out.path} scored another number of tokens at length {pair[1]} ({record.get('tokens')}, now "
                    f"{scored_tokens[pair[1]]}): it was written with other documents, lengths or stride; resume with the "
                    "same settings or pass --overwrite."
                )
            done.add(pair)

    results = out.results
    todo = {e.name: [n for n in lengths if (e.name, n) not in done] for e in entries}
    total = sum(len(windows(need, n, stride)) * n_docs for ns in todo.values() for n in ns)
    bar = tqdm(total=total, unit="window", desc="perplexity", disable=not progress,
               delay=0.5)  # issue 10: a model that fails to load leaves no bar above the error
    try:
        active: list[ModelEntry] = [e for e in entries if todo[e.name]]
        for entry, model, _ in iterate_models(active, device=device, dtype=dtype):
            bar.set_postfix_str(entry.name)
            warn_beyond_window(entry.name, model, todo[entry.name])
            docs = documents[key_of[entry.name]]
            for length in todo[entry.name]:
                nll, count = 0.0, 0
                for n_windows, batch_nll, batch_count in perplexity_at(model, docs, length, stride, batch_size):
                    nll += batch_nll
                    count += batch_count
                    bar.update(n_windows)
                assert count == scored_tokens[length], (count, scored_tokens[length])
                results.append({"model": entry.name, "length": length, "perplexity": math.exp(nll / count), "tokens": count})
                out.write({"results": results})
    finally:
        bar.close()
    report = {"results": results}
    out.write(report)
    if out.path is not None and results:
        from .plots import perplexity_vs_length

        perplexity_vs_length(results, out.path.parent / "perplexity.png")
    return report


def perplexity_table(report: dict) -> str:
    """Perplexity per model (rows) and length (columns), for the terminal."""
    return format_table(report["results"], "perplexity", lambda v: f"{v:.2f}" if v < 1e5 else f"{v:.3g}")
