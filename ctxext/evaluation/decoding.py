"""Greedy decoding with a KV cache, for evaluations that run many prompts through one model.

    decoder = GreedyDecoder(model, tokenizer)
    prefix = decoder.prefill(master_ids)                  # a prefix many prompts share, computed once
    outputs = decoder.greedy(prompts, max_new_tokens=32, prefix=prefix, prefix_ids=master_ids)
    reference = decoder.generate(prompts, max_new_tokens=32)   # model.generate, for checks

What it does, and why each step keeps greedy decoding's outputs exact:

- **Shared prefix.** `prefill(ids)` runs `ids` once (in chunks) and keeps each layer's keys and values;
  a batch then starts from the part of it that all its prompts share (`common_prefix`), expanded
  over the batch without copying, and runs only the rest of each prompt. Causal attention makes the
  cached keys and values of a prefix the same whatever follows it.
- **Batches.** The prompts of one batch have the same length, so no padding, no attention mask and
  the same positions in every row: each row computes what it would alone.
- **Early stop.** A row stops at an end-of-sequence token (not returned) or at one of `stop_ids`
  (returned); finished rows leave the batch (`DynamicCache.batch_select_indices`), the others go on.

Models whose rotary frequencies depend on the current length (dynamic NTK, dynamic YaRN, longrope;
`position_dependent_rope`) compute the frequencies of a prefix for the prefix's length, not the
prompt's: they get no shared prefix (`share_prefix` is False for them), and then every forward pass
is the one `model.generate` makes (the whole prompt, then one token at a time).
"""

from __future__ import annotations

import inspect
from typing import Any, Iterable, Sequence

#: samples x tokens that one forward pass may hold (sets the batch size when none is given)
DEFAULT_BATCH_TOKENS = 16384
#: a shared prefix is computed in chunks of this many tokens (bounds activation memory)
PREFILL_CHUNK = 8192

#: per-layer (keys, values), each [1, heads, tokens, head_dim]: the cache of a shared prefix
PrefixCache = list


def position_dependent_rope(model: Any) -> bool:
    """True when the rotary frequencies depend on the current sequence length (dynamic NTK/YaRN, longrope)."""
    from ..patching.rotary import length_dependent

    return length_dependent(model)


def common_prefix(a: Sequence[int], b: Sequence[int], limit: int) -> int:
    """How many leading tokens a and b share, at most `limit`."""
    if tuple(a[:limit]) == tuple(b[:limit]):
        return limit
    return next(i for i in range(limit) if a[i] != b[i])


def eos_ids(model: Any, tokenizer: Any) -> list[int]:
    """The end-of-sequence ids greedy decoding stops at: the generation config's, else the tokenizer's."""
    config = getattr(model, "generation_config", None)
    eos = getattr(config, "eos_token_id", None)
    if eos is None:
        eos = tokenizer.eos_token_id
    if eos is None:
        return []
    return list(eos) if isinstance(eos, (list, tuple)) else [eos]


def cache_kwarg(model: Any) -> str:
    """transformers >= 5.24 calls the cache argument `cache`; earlier versions `past_key_values`."""
    params = inspect.signature(model.forward).parameters
    return "cache" if "cache" in params else "past_key_values"


def newline_ids(tokenizer: Any) -> set[int]:
    """Every token whose text contains a line break (the stop set for one-line answers)."""
    vocab = tokenizer.get_vocab()
    return {i for i in vocab.values() if "\n" in tokenizer.decode([i])}


class GreedyDecoder:
    """Greedy decoding of many prompts through one model, sharing prefixes and stopping early."""

    def __init__(self, model: Any, tokenizer: Any):
        import torch

        from .common import model_device

        self.model = model
        self.tokenizer = tokenizer
        self.device = model_device(model)
        self.eos_ids = eos_ids(model, tokenizer)
        self.pad_id = next((t for t in (tokenizer.pad_token_id, tokenizer.eos_token_id) if t is not None), 0)
        self.share_prefix = not position_dependent_rope(model)
        self._cache_name = cache_kwarg(model)
        self._keeps_logits = "logits_to_keep" in inspect.signature(model.forward).parameters
        self._torch = torch
        self.tokens_run = 0  # tokens given to the model so far (the naive loop gives every prompt whole)

    # -- model calls and cache surgery -------------------------------------------------------------

    def forward(self, input_ids: Any, cache: Any, keep: Sequence[int] | int | None = None) -> Any:
        """Logits [batch, positions, vocab] at the positions `keep` (an int: the last ones) of input_ids."""
        torch = self._torch
        kwargs = {self._cache_name: cache, "use_cache": True}
        if keep is not None and self._keeps_logits:
            kwargs["logits_to_keep"] = keep if isinstance(keep, int) else torch.tensor(list(keep), device=self.device)
        self.tokens_run += input_ids.numel()
        logits = self.model(input_ids=input_ids, **kwargs).logits
        wanted = keep if isinstance(keep, int) else (len(keep) if keep is not None else input_ids.shape[1])
        if logits.shape[1] != wanted:  # the model ignored logits_to_keep
            logits = logits[:, -keep:] if isinstance(keep, int) else logits[:, list(keep)]
        return logits

    def new_cache(self, layers: Sequence[tuple[Any, Any]] | None = None) -> Any:
        """An empty DynamicCache, or one holding `layers` (per-layer keys, values)."""
        from .._compat import dynamic_cache

        return dynamic_cache(layers or None)

    def prefill(self, ids: Sequence[int]) -> PrefixCache | None:
        """The KV cache of `ids` as per-layer (keys, values) [1, heads, len, head_dim]; None if not shareable."""
        from transformers.cache_utils import DynamicLayer

        torch = self._torch
        if not ids or not self.share_prefix:
            return None
        cache = self.new_cache()
        with torch.inference_mode():
            for start in range(0, len(ids), PREFILL_CHUNK):
                chunk = torch.tensor([list(ids[start : start + PREFILL_CHUNK])], device=self.device)
                self.forward(chunk, cache, keep=1)
        layers = getattr(cache, "layers", None)
        if not layers or any(type(layer) is not DynamicLayer or layer.get_seq_length() != len(ids) for layer in layers):
            return None  # a cache this decoder cannot slice (a hybrid or recurrent model): no sharing
        return [(layer.keys, layer.values) for layer in layers]

    def shared_cache(self, prefix: PrefixCache, shared: int, batch: int) -> Any:
        """A cache holding the first `shared` positions of `prefix` for each of `batch` rows (views, no copy)."""
        layers = [(k[:, :, :shared].expand(batch, -1, -1, -1), v[:, :, :shared].expand(batch, -1, -1, -1)) for k, v in prefix]
        return self.new_cache(layers)

    def select(self, cache: Any, rows: Sequence[int], length: int | None = None) -> Any:
        """A new cache of the given batch rows, cut to the first `length` positions (all when None)."""
        torch = self._torch
        index = torch.tensor(list(rows), device=self.device)
        end = length if length is not None else cache.get_seq_length()
        return self.new_cache([(layer.keys[index, :, :end], layer.values[index, :, :end]) for layer in cache.layers])

    @staticmethod
    def shared_length(prompts: Sequence[Sequence[int]], prefix_ids: Sequence[int]) -> int:
        """Tokens every prompt shares with `prefix_ids`, leaving each prompt at least its last token to run."""
        shared = min(len(prefix_ids), *(len(p) - 1 for p in prompts))
        for p in prompts:
            shared = common_prefix(p, prefix_ids, shared)
        return shared

    # -- decoding ----------------------------------------------------------------------------------

    def greedy(
        self,
        prompts: Sequence[Sequence[int]],
        max_new_tokens: int,
        *,
        prefix: PrefixCache | None = None,
        prefix_ids: Sequence[int] = (),
        stop_ids: Iterable[int] = (),
    ) -> list[list[int]]:
        """Greedy continuations of prompts of one length: at most max_new_tokens each, EOS dropped.

        A row ends at an end-of-sequence token (left out of its output) or after a token in `stop_ids`
        (kept). With `prefix` (from `prefill(prefix_ids)`), the tokens each prompt shares with
        prefix_ids are not run again.
        """
        torch = self._torch
        if not prompts:
            return []
        if len({len(p) for p in prompts}) != 1:
            raise ValueError("greedy() takes prompts of one length; group them by length first")
        eos, stop = set(self.eos_ids), set(stop_ids)
        outputs: list[list[int]] = [[] for _ in prompts]
        if max_new_tokens <= 0:
            return outputs
        with torch.inference_mode():
            shared = self.shared_length(prompts, prefix_ids) if prefix is not None and self.share_prefix else 0
            cache = self.shared_cache(prefix, shared, len(prompts)) if shared else self.new_cache()
            rest = torch.tensor([list(p[shared:]) for p in prompts], device=self.device)  # [B, L - shared]
            logits = self.forward(rest, cache, keep=1)[:, -1]  # [B, V]: the first new token's scores
            alive = list(range(len(prompts)))  # prompt index of each cache row
            for step in range(max_new_tokens):
                following = logits.argmax(dim=-1).tolist()  # [rows]
                keep = []
                for row, i in enumerate(alive):
                    token = following[row]
                    if token in eos:
                        continue
                    outputs[i].append(token)
                    if token not in stop:
                        keep.append(row)
                if not keep or step == max_new_tokens - 1:
                    break
                if len(keep) < len(alive):  # finished rows leave the batch
                    cache.batch_select_indices(torch.tensor(keep, device=self.device))
                    alive = [alive[row] for row in keep]
                fed = torch.tensor([[outputs[i][-1]] for i in alive], device=self.device)  # [rows, 1]
                logits = self.forward(fed, cache, keep=1)[:, -1]
        return outputs

    def generate(self, prompts: Sequence[Sequence[int]], max_new_tokens: int, stop_ids: Iterable[int] = ()) -> list[list[int]]:
        """`model.generate`'s greedy continuations of prompts of one length, cut like `greedy` (the reference)."""
        from transformers import GenerationConfig

        torch = self._torch
        if not hasattr(self.model, "generate"):
            raise ValueError("generate needs a model with a .generate method (a transformers model)")
        if len({len(p) for p in prompts}) != 1:
            raise ValueError("generate() takes prompts of one length; group them by length first")
        ids = torch.tensor([list(p) for p in prompts], device=self.device)
        config = GenerationConfig(
            max_new_tokens=max_new_tokens, do_sample=False, num_beams=1, repetition_penalty=1.0, no_repeat_ngram_size=0,
            eos_token_id=self.eos_ids or None, pad_token_id=self.pad_id,
        )
        with torch.inference_mode():
            out = self.model.generate(input_ids=ids, attention_mask=torch.ones_like(ids), generation_config=config)
        return [cut_at_stop(row, self.eos_ids, stop_ids) for row in out[:, ids.shape[1] :].tolist()]


def cut_at_stop(tokens: Sequence[int], eos: Iterable[int], stop: Iterable[int] = ()) -> list[int]:
    """Tokens up to the first end-of-sequence (dropped) or stop token (kept)."""
    eos, stop = set(eos), set(stop)
    kept = []
    for token in tokens:
        if token in eos:
            break
        kept.append(token)
        if token in stop:
            break
    return kept
