"""What a factor search minimises: token sequences, and which of their tokens are scored.

    docs = long_documents(tokenizer, texts, length=2048, samples=4)            # LongRoPE: perplexity
    needles = needle_documents(tokenizer, docs, length=2048, seed=0)          # LongRoPE2: needle-driven
    guard = guard_windows(docs, window=256)                                   # the original window

- **perplexity** (LongRoPE, arXiv 2402.13753): the first `length` tokens of each long document, every
  token scored. It rewards whatever helps next-token prediction on the whole document, most of which
  only needs nearby tokens.
- **needle** (LongRoPE2, arXiv 2502.20082): the same documents with a passkey line inserted at a random
  depth and the passkey question at the end; only the answer's tokens are scored, so the loss says
  whether the model reads back something far away. Documents built elsewhere (the demo's synthetic
  passkey documents) can be given directly as (prompt ids, answer ids).
- **guard**: the documents cut into windows of the original length, every token scored, to check that
  the original window is not degraded.

The objective value of a candidate is the mean negative log-likelihood (nats per scored token) over
all the documents; its exponential is the perplexity the search reports.
"""

from __future__ import annotations

import hashlib
import json
import math
import random
from dataclasses import dataclass
from typing import Any, Iterable, Sequence

from ..errors import CtxextError
from ..evaluation.passkey import KEY_LINE, QUESTION, _continuation, _encode, _special_prefix
from ..evaluation.perplexity import tokenize_documents

OBJECTIVES = ("needle", "perplexity")
#: fewest filler tokens a needle document may have around its key line
MIN_FILLER = 16


@dataclass(frozen=True)
class ScoredSequence:
    """Token ids and the indices t >= 1 of the tokens whose prediction (from position t - 1) is scored."""

    input_ids: tuple[int, ...]
    scored: tuple[int, ...]

    @classmethod
    def all_tokens(cls, ids: Sequence[int]) -> "ScoredSequence":
        return cls(tuple(ids), tuple(range(1, len(ids))))


def fingerprint(sequences: Iterable[ScoredSequence]) -> str:
    """A short hash of the sequences and their scored tokens: a resumed search must see the same ones."""
    digest = hashlib.sha256()
    for s in sequences:
        digest.update(json.dumps([s.input_ids, s.scored]).encode())
    return digest.hexdigest()[:16]


def scored_tokens(sequences: Sequence[ScoredSequence]) -> int:
    return sum(len(s.scored) for s in sequences)


def long_documents(
    tokenizer: Any, texts: Iterable[str], length: int, samples: int, source: str = "the dataset"
) -> list[list[int]]:
    """The first `length` tokens of the first `samples` documents that have that many (BOS included)."""
    docs = tokenize_documents({"model": tokenizer}, texts, length, samples, source)["model"]
    return docs


def perplexity_documents(documents: Sequence[Sequence[int]]) -> list[ScoredSequence]:
    return [ScoredSequence.all_tokens(d) for d in documents]


def needle_documents(tokenizer: Any, documents: Sequence[Sequence[int]], length: int, seed: int = 0) -> list[ScoredSequence]:
    """Each document with a passkey hidden in it, `length` tokens long, scored on the answer only.

    Layout, in the model's tokens: [BOS] text ... "The pass key is N. Remember it. N is the pass
    key." ... text "What is the pass key? The pass key is" N. The key (5 digits) and its depth come
    from a `random.Random` seeded by (seed, document index).
    """
    special = _special_prefix(tokenizer)
    question = _encode(tokenizer, "\n" + QUESTION)
    out = []
    for j, doc in enumerate(documents):
        rng = random.Random(f"ctxext-search/needle/{seed}/{j}")
        key = str(rng.randint(10_000, 99_999))
        depth = rng.random()
        key_line = _encode(tokenizer, "\n" + KEY_LINE.format(key=key) + "\n")
        answer = _continuation(tokenizer, " " + key, context=QUESTION)
        body = list(doc[len(special):]) if list(doc[: len(special)]) == special else list(doc)
        room = length - len(special) - len(key_line) - len(question) - len(answer)
        if room < MIN_FILLER:
            raise CtxextError(
                f"A {length}-token needle document cannot hold its key line, question and answer with at least "
                f"{MIN_FILLER} tokens of text; search at a longer length."
            )
        if len(body) < room:
            raise CtxextError(f"A document has {len(body)} tokens of text where a needle document needs {room}.")
        before = math.floor(depth * room + 0.5)
        ids = special + body[:before] + key_line + body[before:room] + question + answer
        assert len(ids) == length, (len(ids), length)
        out.append(ScoredSequence(tuple(ids), tuple(range(length - len(answer), length))))
    return out


def given_needles(pairs: Sequence[tuple[Sequence[int], Sequence[int]]]) -> list[ScoredSequence]:
    """Needle documents built elsewhere, as (prompt ids, answer ids): scored on the answer ids."""
    out = []
    for i, pair in enumerate(pairs):
        try:
            prompt, answer = (list(map(int, part)) for part in pair)
        except (TypeError, ValueError):
            raise CtxextError(f"Needle document {i} is not a pair (prompt token ids, answer token ids).") from None
        if not prompt or not answer:
            raise CtxextError(f"Needle document {i} has an empty prompt or answer; give both as token ids.")
        ids = prompt + answer
        out.append(ScoredSequence(tuple(ids), tuple(range(len(prompt), len(ids)))))
    if not out:
        raise CtxextError("No needle documents were given; give at least one (prompt ids, answer ids) pair.")
    return out


def guard_windows(sequences: Sequence[ScoredSequence], window: int, limit: int | None = None) -> list[ScoredSequence]:
    """Disjoint `window`-token pieces of the sequences, every token scored: text inside the original window."""
    out = []
    for s in sequences:
        for start in range(0, len(s.input_ids) - window + 1, window):
            out.append(ScoredSequence.all_tokens(s.input_ids[start : start + window]))
    if not out:
        raise CtxextError(f"The documents are shorter than the original window ({window} tokens); give longer ones.")
    return out[:limit] if limit else out
