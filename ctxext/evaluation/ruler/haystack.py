"""What RULER's prompts are made of: haystack text, word lists and random needle values.

    essay_sentences()                 # the default essay haystack (Alice in Wonderland), in sentences
    essay_sentences("my_book.txt")    # the user's own prose (--haystack FILE)
    key_word(rng), number(rng), uuid_value(rng)

- **Noise haystack**: the passkey filler, "The grass is green. The sky is blue. ...", one copy per line.
- **Essay haystack**: natural prose cut into sentences. RULER uses Paul Graham's essays, which it
  downloads and which are not free to redistribute; the default here ships with ctxext (see
  ctxext/evaluation/assets/README.md). Sentences are split after . ! or ? (and a closing quote or
  bracket) followed by white space, a simple rule in place of RULER's nltk punkt model, which would
  need a download.
- **Words** come from the `wonderwords` package's noun, adjective and verb lists (as in RULER), less
  the words its profanity list names. Keys are "adjective-noun" pairs, as RULER's.
"""

from __future__ import annotations

import functools
import gzip
import random
import re
import uuid
from importlib import resources
from pathlib import Path

from ...errors import CtxextError

#: RULER's noise haystack, the same text as the passkey filler
NOISE = "The grass is green. The sky is blue. The sun is yellow. Here we go. There and back again."

_SENTENCE_END = re.compile(r"(?:(?<=[.!?])|(?<=[.!?]['\"’”)\]]))\s+")
#: fewer sentences than this cannot make a haystack worth the name
MIN_SENTENCES = 20


def split_sentences(text: str) -> list[str]:
    """White space collapsed to single spaces (as RULER does), then cut after sentence-ending punctuation."""
    flat = re.sub(r"\s+", " ", text).strip()
    return [s for s in _SENTENCE_END.split(flat) if s]


def default_essay_text() -> str:
    """Alice's Adventures in Wonderland, from its first chapter (the title page left out)."""
    path = resources.files("ctxext.evaluation") / "assets" / "alice29.txt.gz"
    text = gzip.decompress(path.read_bytes()).decode("utf-8")
    start = text.find("CHAPTER I")
    return text[start:] if start >= 0 else text


@functools.lru_cache(maxsize=4)
def essay_sentences(path: str | None = None) -> tuple[str, ...]:
    """The essay haystack's sentences: the shipped default, or the UTF-8 text file at `path`."""
    if path is None:
        text = default_essay_text()
    else:
        file = Path(path).expanduser()
        if not file.is_file():
            raise CtxextError(f"Haystack file {path} not found; give a UTF-8 text file of prose with --haystack.")
        try:
            text = file.read_text(encoding="utf-8")
        except (OSError, UnicodeDecodeError):
            raise CtxextError(f"Cannot read {path} as UTF-8 text; give a plain text file of prose with --haystack.") from None
    sentences = split_sentences(text)
    if len(sentences) < MIN_SENTENCES:
        raise CtxextError(
            f"Haystack {path or 'text'} has {len(sentences)} sentences; an essay haystack needs at least "
            f"{MIN_SENTENCES}: give a longer text with --haystack."
        )
    return tuple(sentences)


@functools.lru_cache(maxsize=1)
def word_lists() -> dict[str, tuple[str, ...]]:
    """wonderwords' nouns, adjectives and verbs (profanities removed), each sorted."""
    from wonderwords import Defaults, RandomWord, filter_profanity

    lists = {}
    for name, default in (("nouns", Defaults.NOUNS), ("adjectives", Defaults.ADJECTIVES), ("verbs", Defaults.VERBS)):
        words = RandomWord(words=default).filter()
        lists[name] = tuple(sorted(set(filter_profanity(words))))
    return lists


@functools.lru_cache(maxsize=1)
def common_words_pool() -> tuple[str, ...]:
    """The words of common-words extraction: single lowercase words from all three lists, sorted."""
    lists = word_lists()
    return tuple(sorted({w for ws in lists.values() for w in ws if w.isalpha() and w.islower()}))


def key_word(rng: random.Random) -> str:
    """A needle key as RULER's: "adjective-noun"."""
    lists = word_lists()
    return f"{rng.choice(lists['adjectives'])}-{rng.choice(lists['nouns'])}"


def number(rng: random.Random, digits: int = 7) -> str:
    """A needle value as RULER's: a 7-digit number."""
    return str(rng.randint(10 ** (digits - 1), 10**digits - 1))


def uuid_value(rng: random.Random) -> str:
    """A version-4 UUID drawn from `rng`."""
    return str(uuid.UUID(int=rng.getrandbits(128), version=4))


def needle_value(kind: str, rng: random.Random) -> str:
    """A random key or value of RULER's kind: "numbers", "words" or "uuids"."""
    if kind == "numbers":
        return number(rng)
    if kind == "words":
        return key_word(rng)
    if kind == "uuids":
        return uuid_value(rng)
    raise ValueError(f"unknown needle kind {kind!r}")
