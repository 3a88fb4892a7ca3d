"""Fixtures for the evaluation tests: a byte tokenizer, a model that retrieves, tiny checkpoints on disk.

No downloads: the tokenizer maps every byte to one token (plus <pad>, <s>, </s>), and the "oracle"
is an nn.Module that honours the causal-LM call interface the passkey runner relies on
(input_ids, a DynamicCache passed as `cache`/`past_key_values`, use_cache, logits_to_keep ->
.logits). It predicts by induction, like an induction head: the next token is the one that followed
the longest earlier match of the text so far, looking back at most `window` tokens. With the key in
view it repeats it; with the key beyond its window it cannot.
"""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from torch import nn
from transformers import DynamicCache, LlamaConfig, PreTrainedTokenizerFast
from transformers.modeling_outputs import CausalLMOutputWithPast

from tiny import tiny_model

SPECIALS = ["<pad>", "<s>", "</s>"]


@pytest.fixture(autouse=True, scope="module")
def one_thread():
    """One torch thread: tiny models gain nothing from more, and on a busy 2-core machine two threads
    spin against each other and run many times slower. Import this fixture into a test module to use it."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


def byte_tokenizer() -> PreTrainedTokenizerFast:
    """One token per byte, BOS added in front, decodes back to the exact text."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, processors
    from tokenizers.pre_tokenizers import ByteLevel

    vocab = {token: i for i, token in enumerate(SPECIALS)}
    for char in sorted(ByteLevel.alphabet()):
        vocab[char] = len(vocab)
    tok = Tokenizer(models.BPE(vocab=vocab, merges=[]))
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False)
    tok.decoder = decoders.ByteLevel()
    tok.post_processor = processors.TemplateProcessing(single="<s> $A", pair="<s> $A <s> $B", special_tokens=[("<s>", 1)])
    return PreTrainedTokenizerFast(tokenizer_object=tok, bos_token="<s>", eos_token="</s>", pad_token="<pad>")


VOCAB = len(SPECIALS) + 256


def trained_tokenizer(kind: str = "bpe", vocab_size: int = 600, extra: tuple[str, ...] = ()) -> PreTrainedTokenizerFast:
    """A BPE tokenizer trained in a second on the prompt's own text (plus `extra` lines), so keys take 3 or 4 tokens.

    kind "bpe": byte-level, GPT-2 style ("Ġ" marks a space); "metaspace": SentencePiece style, as in
    Llama 2 and Mistral ("▁" marks a space, one is put in front of the text, digits split apart).
    """
    import random

    from tokenizers import Regex, Tokenizer, decoders, models, pre_tokenizers, processors, trainers

    from ctxext.evaluation.passkey import FILLER, KEY_LINE, QUESTION, TASK

    rng = random.Random(0)
    corpus = [TASK, FILLER * 3, QUESTION] + [KEY_LINE.format(key=rng.randint(10000, 99999)) for _ in range(200)] + list(extra)
    tok = Tokenizer(models.BPE(unk_token="<unk>", byte_fallback=kind == "metaspace"))
    if kind == "bpe":
        tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
        tok.decoder = decoders.ByteLevel()
        alphabet = pre_tokenizers.ByteLevel.alphabet()
    else:
        tok.pre_tokenizer = pre_tokenizers.Sequence([
            pre_tokenizers.Split(Regex("[0-9]"), behavior="isolated"),
            pre_tokenizers.Metaspace(replacement="\u2581", prepend_scheme="first"),
        ])
        tok.decoder = decoders.Sequence([decoders.Metaspace(replacement="\u2581", prepend_scheme="first"), decoders.ByteFallback()])
        alphabet = sorted(set("".join(corpus) + "\n0123456789")) + ["<0x0A>"]
    trainer = trainers.BpeTrainer(vocab_size=vocab_size, special_tokens=["<pad>", "<s>", "</s>", "<unk>"], initial_alphabet=alphabet)
    tok.train_from_iterator(corpus, trainer)
    tok.post_processor = processors.TemplateProcessing(single="<s> $A", pair="<s> $A <s> $B", special_tokens=[("<s>", 1)])
    return PreTrainedTokenizerFast(tokenizer_object=tok, bos_token="<s>", eos_token="</s>", pad_token="<pad>", unk_token="<unk>")


class InductionOracle(nn.Module):
    """Predicts the token that followed the longest earlier match of the context within `window` tokens."""

    def __init__(self, window: int, vocab_size: int = VOCAB, min_match: int = 4):
        super().__init__()
        self.window, self.vocab_size, self.min_match = window, vocab_size, min_match
        self.config = LlamaConfig(vocab_size=vocab_size, max_position_embeddings=window, hidden_size=8,
                                  intermediate_size=8, num_hidden_layers=1, num_attention_heads=1)
        self.register_buffer("anchor", torch.zeros(1))  # gives the module a device
        self.calls = 0  # forward passes, for the tests that count work

    def _predict(self, history: list[int], t: int) -> int:
        """The next token after history[: t + 1], by longest suffix match in history[t - window + 1 : t]."""
        low = max(0, t - self.window + 1)
        best, best_len = 0, self.min_match - 1
        for s in range(t - 1, low - 1, -1):  # candidate earlier position whose successor we would copy
            n = 0
            while s - n >= low and history[s - n] == history[t - n] and n < 64:
                n += 1
            if n > best_len and s + 1 <= t:
                best, best_len = history[s + 1], n
        return best

    def forward(self, input_ids, cache=None, past_key_values=None, use_cache=None, logits_to_keep=0, **kwargs):
        self.calls += 1
        cache = cache if cache is not None else past_key_values
        if cache is None and use_cache:
            cache = DynamicCache()
        batch, new = input_ids.shape
        past = cache.get_seq_length() if cache is not None else 0
        # the "keys" are the token ids themselves: [batch, 1 head, tokens, 1]
        tokens = input_ids[:, None, :, None].float()
        if cache is not None:
            keys, _ = cache.update(tokens, tokens, 0)
            history = keys[:, 0, :, 0].long()
        else:
            history = input_ids
        if isinstance(logits_to_keep, int):
            positions = list(range(new))[-logits_to_keep:] if logits_to_keep else list(range(new))
        else:
            positions = [int(p) for p in logits_to_keep]
        logits = torch.zeros(batch, len(positions), self.vocab_size)
        for b in range(batch):
            row = history[b].tolist()
            for n, pos in enumerate(positions):
                logits[b, n, self._predict(row, past + pos)] = 10.0
        field = "cache" if "cache" in CausalLMOutputWithPast.__dataclass_fields__ else "past_key_values"
        return CausalLMOutputWithPast(logits=logits, **{field: cache})


def tiny_llama(seed: int = 0, window: int = 4096, **overrides):
    """A random tiny Llama over the byte vocabulary."""
    return tiny_model("llama", seed=seed, vocab_size=VOCAB, max_position_embeddings=window, **overrides)


def save_checkpoint(path: Path, seed: int = 0, window: int = 4096) -> Path:
    """A tiny Llama and the byte tokenizer saved as a model directory the CLI can load."""
    tiny_llama(seed, window).save_pretrained(path)
    byte_tokenizer().save_pretrained(path)
    return path
