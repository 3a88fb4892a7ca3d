"""Prompts in a model's own tokens: text pieces tokenized as they appear in context, so that prompts
can be assembled token by token to an exact length.

    encode(tokenizer, "The grass is green.")               # no BOS
    continuation(tokenizer, " 12345", context="is")         # the tokens of " 12345" after "is"
    special_prefix(tokenizer)                                # [bos_id] for most tokenizers, [] for some
"""

from __future__ import annotations

from typing import Any


def encode(tokenizer: Any, text: str) -> list[int]:
    """The token ids of `text`, without the special tokens the tokenizer would add around it."""
    return list(tokenizer(text, add_special_tokens=False, verbose=False)["input_ids"])


def continuation(tokenizer: Any, text: str, context: str) -> list[int]:
    """The tokens of `text` as they appear after `context` (no spurious word-start marker, no merge)."""
    before = encode(tokenizer, context)
    both = encode(tokenizer, context + text)
    if both[: len(before)] == before:
        return both[len(before) :]
    return encode(tokenizer, text)  # the boundary merged: fall back to the text on its own


def special_prefix(tokenizer: Any) -> list[int]:
    """The special tokens the tokenizer puts before a text (BOS, usually), as it does for a real prompt."""
    plain = encode(tokenizer, "a")
    full = list(tokenizer("a", verbose=False)["input_ids"])
    if plain and full[-len(plain) :] == plain:
        return full[: len(full) - len(plain)]
    return []
