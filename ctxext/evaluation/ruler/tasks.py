"""RULER's tasks (Hsieh et al. 2024, arXiv 2404.06654) and their prompts, built in a model's own tokens.

    prompts = build_ruler_prompts("niah_single_2", tokenizer, 4096, samples=10, seed=0)
    prompts[0].tokens + prompts[0].max_new_tokens == 4096
    tokenizer.decode(prompts[0].input_ids[n.start:n.end]) for n in prompts[0].needles   # the needles

The templates, answer prefixes, generation budgets and task settings are RULER's as published in
NVIDIA/RULER (scripts/synthetic.yaml for the 13 tasks' settings, scripts/data/synthetic/constants.py
for templates, answer prefixes and tokens to generate, and the generators in
scripts/data/synthetic/*.py for the needle, chain, word-list and document formats), for base models
(the answer prefix is part of the prompt). Written here from that description, not copied.

**Length** counts as RULER counts it: the prompt plus the task's generation budget. A prompt of
length L has exactly L - max_new_tokens tokens (special tokens included), so the prompt and the
longest answer RULER allows fit in L. RULER fills its haystack in whole units (sentences, lines,
words) up to at most L; here the last haystack unit is cut at a token so the count is exact.

Every prompt is a function of (seed, task, length, sample) alone, through its own `random.Random`,
so every model of a run and a resumed run see the same prompts; QA questions are a function of
(seed, task, sample), so each length asks the same questions. Needles are whole units (lines in the
noise and needle haystacks, sentences in the essay haystack) and each prompt records where they are:
token span and depth (the fraction of the haystack's tokens before it).
"""

from __future__ import annotations

import itertools
import math
import random
import string
from dataclasses import dataclass
from typing import Any, Callable, Iterator, Sequence

from ...errors import CtxextError
from ..tokens import continuation, encode, special_prefix
from . import haystack as hay
from .qa import QASet

# -- the published templates (RULER's constants.py), with {placeholders} as RULER's -------------------

NIAH_TEMPLATE = (
    "Some special magic {type_v} are hidden within the following text. Make sure to memorize it. "
    "I will quiz you about the {type_v} afterwards.\n{context}\n"
    "What are all the special magic {type_v} for {query} mentioned in the provided text?"
)
NIAH_ANSWER = " The special magic {type_v} for {query} mentioned in the provided text are"
NEEDLE = "One of the special magic {type_v} for {key} is: {value}."

VT_TEMPLATE = (
    "Memorize and track the chain(s) of variable assignment hidden in the following text.\n\n{context}\n"
    "Question: Find all variables that are assigned the value {query} in the text above."
)
VT_ANSWER = (
    " Answer: According to the chain(s) of variable assignment in the text above, {num_v} variables are "
    "assigned the value {query}, they are: "
)
CWE_TEMPLATE = (
    "Below is a numbered list of words. In these words, some appear more often than others. "
    "Memorize the ones that appear most often.\n{context}\nQuestion: What are the 10 most common words in the above list?"
)
CWE_ANSWER = " Answer: The top 10 words that appear most often in the list are:"
FWE_TEMPLATE = (
    "Read the following coded text and track the frequency of each coded word. Find the three most "
    "frequently appeared coded words. {context}\nQuestion: Do not provide any explanation. Please ignore "
    "the dots '....'. What are the three most frequently appeared words in the above coded text?"
)
FWE_ANSWER = " Answer: According to the coded text above, the three most frequently appeared words are:"
QA_TEMPLATE = (
    "Answer the question based on the given documents. Only give me the answer and do not output any other "
    "words.\n\nThe following are given documents.\n\n{context}\n\nAnswer the question based on the given "
    "documents. Only give me the answer and do not output any other words.\n\nQuestion: {query}"
)
QA_ANSWER = " Answer:"
QA_DOCUMENT = "Document {i}:\n{document}"

#: RULER's 40 needle depths (percent) for the essay haystack: round(linspace(0, 100, 40))
ESSAY_DEPTHS = tuple(round(100 * i / 39) for i in range(40))
#: variable tracking: RULER's one-shot example takes at most this many tokens (fewer at short lengths)
VT_EXAMPLE_TOKENS = 500
#: the length below which RULER's common-words task uses its short-context counts
CWE_SHORT = 4096


@dataclass(frozen=True)
class RulerTask:
    """One of RULER's 13 tasks: its family, scoring and the settings of RULER's synthetic.yaml."""

    name: str
    family: str  # "niah", "vt", "cwe", "fwe" or "qa"
    description: str
    max_new_tokens: int  # RULER's tokens_to_generate
    metric: str  # "all": fraction of the expected strings found; "part": 1 if any is found
    haystack: str = ""  # niah: "noise", "essay" or "needle"
    key: str = "words"  # niah: kind of key
    value: str = "numbers"  # niah: kind of value
    keys: int = 1
    values: int = 1
    queries: int = 1
    dataset: str = ""  # qa: "squad" or "hotpotqa"


def _niah(name: str, description: str, haystack: str, **settings: Any) -> RulerTask:
    return RulerTask(name, "niah", description, 128, "all", haystack=haystack, **settings)


TASKS: dict[str, RulerTask] = {
    t.name: t
    for t in (
        _niah("niah_single_1", "one needle (word key, 7-digit value) in the repeated 'The grass is green...' noise", "noise"),
        _niah("niah_single_2", "one needle (word key, 7-digit value) in essay prose", "essay"),
        _niah("niah_single_3", "one needle (word key, UUID value) in essay prose", "essay", value="uuids"),
        _niah("niah_multikey_1", "four needles with different keys in essay prose; one is asked", "essay", keys=4),
        _niah("niah_multikey_2", "one needle in a haystack made of other needles (word keys)", "needle"),
        _niah("niah_multikey_3", "one needle in a haystack of other needles, UUID keys and values", "needle", key="uuids", value="uuids"),
        _niah("niah_multivalue", "four values for one key in essay prose; all are asked", "essay", values=4),
        _niah("niah_multiquery", "four needles in essay prose; all four keys are asked", "essay", keys=4, queries=4),
        RulerTask("vt", "vt", "variable tracking: a 4-hop chain of assignments in noise; name every variable bound to the value", 30, "all"),
        RulerTask("cwe", "cwe", "common-words extraction: the 10 most repeated words of a numbered list", 120, "all"),
        RulerTask("fwe", "fwe", "frequent-words extraction: the 3 most frequent coded words of a Zipf-distributed text", 50, "all"),
        RulerTask("qa_1", "qa", "question answering on SQuAD paragraphs among distractors (needs --qa-file)", 32, "part", dataset="squad"),
        RulerTask("qa_2", "qa", "multi-hop question answering on HotpotQA documents among distractors (needs --qa-file)", 32, "part", dataset="hotpotqa"),
    )
}
#: the tasks that need no file: the default set
SYNTHETIC = tuple(name for name, t in TASKS.items() if t.family != "qa")


def check_tasks(tasks: Sequence[str] | str | None, qa: dict[str, QASet] | None = None) -> list[str]:
    """Task names in RULER's order: the synthetic ones (plus the QA tasks a file was given for) by default."""
    qa = qa or {}
    if tasks is None:
        return [n for n in TASKS if n in SYNTHETIC or TASKS[n].dataset in qa]
    if isinstance(tasks, str):
        tasks = [tasks]
    unknown = [t for t in tasks if t not in TASKS]
    if unknown:
        raise CtxextError(f"Unknown RULER task {unknown[0]!r}; choose from {', '.join(TASKS)}.")
    for name in tasks:
        dataset = TASKS[name].dataset
        if dataset and dataset not in qa:
            shape = "SQuAD" if dataset == "squad" else "HotpotQA"
            raise CtxextError(f"Task {name} asks questions from a {shape}-shaped file; pass one with --qa-file (nothing is downloaded).")
    if not tasks:
        raise CtxextError("Give at least one RULER task.")
    return [n for n in TASKS if n in tasks]


def niah_texts(spec: RulerTask, query: str) -> tuple[str, str]:
    """A needle task's text before and after the haystack (the answer prefix last), RULER's wording."""
    template, type_v = NIAH_TEMPLATE + NIAH_ANSWER, spec.value
    if spec.queries * spec.values == 1:  # RULER's singular wording for one answer
        for old, new in (("Some", "A"), ("are all", "is"), ("are", "is"), ("answers", "answer")):
            template = template.replace(old, new)
        type_v = type_v[:-1]
    head, tail = template.split("{context}")
    return head.format(type_v=type_v), tail.format(type_v=type_v, query=query)


# -- prompts ----------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Needle:
    """Where a needle (or a chain line, or a QA gold document) sits in a prompt."""

    text: str
    start: int  # token index in the prompt
    end: int  # one past its last token
    depth: float  # fraction of the haystack's tokens before it


@dataclass(frozen=True)
class RulerPrompt:
    """One sample: the prompt's token ids, the strings a right answer contains, and the needles' places."""

    task: str
    length: int  # prompt + generation budget, as RULER counts
    sample: int
    input_ids: tuple[int, ...]
    expected: tuple[str, ...]
    needles: tuple[Needle, ...]
    max_new_tokens: int
    shared: int  # the first `shared` tokens are the same for every sample of this task (any length)

    @property
    def tokens(self) -> int:
        return len(self.input_ids)


def sample_rng(seed: int, task: str, length: int, sample: int) -> random.Random:
    return random.Random(f"ctxext-ruler/{seed}/{task}/{length}/{sample}")


class _Layout:
    """A prompt assembled from token pieces: head, context units (haystack and needles), tail."""

    def __init__(self, builder: "RulerPromptBuilder", head_text: str, tail_text: str, sep: str, words: bool = False):
        self.b = builder
        self.words = words  # tokenize a unit word by word (pieces cached per word: long numbered lists)
        # white space that ends the head belongs to the first unit (byte-level BPE puts it there)
        stripped = head_text.rstrip(" ")
        self.lead = head_text[len(stripped) :]
        self.head_text = stripped
        self.head = builder.special + encode(builder.tokenizer, stripped)
        self.tail = builder.piece(tail_text)
        self.sep = sep

    def unit(self, text: str, first: bool) -> list[int]:
        head, *rest = text.split(" ") if self.words else [text]
        ids = self.b.piece(self.lead + head, after=self.head_text) if first else self.b.piece(self.sep + head)
        for word in rest:
            ids = ids + self.b.piece(" " + word)
        return ids

    def build(
        self,
        budget: int,
        stream: Iterator[str],
        needles: Sequence[str],
        place: Callable[[int], list[int]],
        what: str,
        exact: bool = True,
    ) -> tuple[list[int], list[Needle], int]:
        """(ids, needles, start of the context): whole haystack units, needles placed among them, and
        (if `exact`) the next units cut to the token so the prompt has exactly `budget` tokens."""
        room = budget - len(self.head) - len(self.tail)
        needle_tokens = sum(len(self.unit(n, False)) for n in needles)
        if room < needle_tokens + 1:
            raise _TooShort(what, budget - room + needle_tokens + 1)
        units: list[str] = []
        pending: list[str] = []
        used = needle_tokens
        for text in stream:
            size = len(self.unit(text, False))
            if size == 0:  # never loop (and grow) without making progress
                raise CtxextError(f"The tokenizer cannot write RULER's {what} prompt: it turns {text[:30]!r} into no tokens.")
            if used + size > room:
                pending = [text]
                break
            units.append(text)
            used += size
        while True:
            positions = [min(p, len(units)) for p in place(len(units))]  # sorted insertion points
            order: list[tuple[str, str]] = []
            for i in range(len(units) + 1):
                order += [("needle", needles[j]) for j, p in enumerate(positions) if p == i]
                if i < len(units):
                    order.append(("hay", units[i]))
            pieces = [self.unit(text, first=n == 0) for n, (_, text) in enumerate(order)]
            left = room - sum(len(p) for p in pieces)
            if left >= 0 or not units:
                break
            pending.insert(0, units.pop())  # the first unit's own tokens ran over: one unit fewer
        if left < 0:
            raise _TooShort(what, budget - left)
        # the cut: the following units' tokens, as many as fill the prompt exactly
        cut: list[int] = []
        texts = itertools.chain(pending, stream)
        while exact and len(cut) < left:
            more = self.unit(next(texts), first=not order and not cut)
            if not more:
                raise CtxextError(f"The tokenizer cannot write RULER's {what} prompt: a haystack unit has no tokens.")
            cut += more
        cut = cut[:left] if exact else []
        ids = list(self.head)
        spans: list[tuple[str, int, int, int]] = []  # needle text, start, end, haystack tokens before it
        hay_before = 0
        for (kind, text), piece in zip(order, pieces):
            if kind == "needle":
                spans.append((text, len(ids), len(ids) + len(piece), hay_before))
            else:
                hay_before += len(piece)
            ids += piece
        ids += cut + self.tail
        assert len(ids) == budget or not exact, (len(ids), budget)
        total_hay = hay_before + len(cut)
        found = [Needle(t, s, e, round(h / total_hay, 4) if total_hay else 0.0) for t, s, e, h in spans]
        return ids, found, len(self.head)


class _TooShort(Exception):
    def __init__(self, what: str, needed: int):
        self.what, self.needed = what, needed


class RulerPromptBuilder:
    """Builds RULER prompts of exact token lengths for one tokenizer (token pieces cached)."""

    def __init__(self, tokenizer: Any, haystack: str | None = None, qa: dict[str, QASet] | None = None):
        self.tokenizer = tokenizer
        self.haystack = haystack
        self.qa = qa or {}
        self.special = special_prefix(tokenizer)
        self._pieces: dict[tuple[str, str], list[int]] = {}
        # a tokenizer that cannot write the prompts (text -> nothing, or <unk>s) is refused here
        sample = hay.NOISE + " " + NEEDLE.format(type_v="numbers", key="quiet-river", value="1234567")
        ids = encode(tokenizer, sample)
        decoded = tokenizer.decode(ids, skip_special_tokens=True) if ids else ""
        if " ".join(decoded.split()).lower() != sample.lower():
            name = getattr(tokenizer, "name_or_path", "") or type(tokenizer).__name__
            raise CtxextError(
                f"The tokenizer of {name} cannot write RULER's prompts: it reads {sample[:30]!r}... back as "
                f"{decoded[:40]!r}; give the model's own tokenizer (tokenizer.json or tokenizer.model)."
            )

    def piece(self, text: str, after: str = "The end.") -> list[int]:
        """The tokens of `text` where it follows `after` (a sentence end, by default), cached."""
        key = (text, after)
        if key not in self._pieces:
            self._pieces[key] = continuation(self.tokenizer, text, context=after)
        return self._pieces[key]

    # -- per family ------------------------------------------------------------------------------

    def build(self, task: str, length: int, sample: int, seed: int = 0) -> RulerPrompt:
        spec = TASKS[task]
        budget = length - spec.max_new_tokens
        rng = sample_rng(seed, task, length, sample)
        make = {"niah": self._niah, "vt": self._vt, "cwe": self._cwe, "fwe": self._fwe, "qa": self._qa}[spec.family]
        try:
            if budget < 1:
                raise _TooShort(task, spec.max_new_tokens + 1)
            ids, expected, needles, shared = make(spec, budget, rng, length, sample, seed)
        except _TooShort as short:
            raise CtxextError(
                f"Length {length} is too short for RULER's {task} with this tokenizer: its prompt needs at least "
                f"{short.needed} tokens plus {spec.max_new_tokens} to generate; give longer --lengths or leave "
                f"{task} out with --tasks."
            ) from None
        return RulerPrompt(task, length, sample, tuple(ids), tuple(expected), tuple(needles), spec.max_new_tokens, shared)

    def _niah(self, spec: RulerTask, budget: int, rng: random.Random, *_: Any):
        keys: list[str] = []
        while len(keys) < max(spec.keys, spec.queries):
            key = hay.needle_value(spec.key, rng)
            if key not in keys:
                keys.append(key)
        values = [[hay.needle_value(spec.value, rng) for _ in range(spec.values)] for _ in keys]
        needles = [NEEDLE.format(type_v=spec.value, key=k, value=v) for k, vs in zip(keys, values) for v in vs]
        rng.shuffle(needles)
        asked = rng.sample(range(len(keys)), spec.queries)
        names = [keys[i] for i in asked]
        query = names[0] if len(names) == 1 else ", ".join(names[:-1]) + ", and " + names[-1]
        expected = [v for i in asked for v in values[i]]
        head, tail = niah_texts(spec, query)
        layout = _Layout(self, head, tail, "\n")
        if spec.haystack == "noise":
            stream: Iterator[str] = itertools.repeat(hay.NOISE)
        elif spec.haystack == "needle":
            stream = (NEEDLE.format(type_v=spec.value, key=hay.needle_value(spec.key, rng), value=hay.needle_value(spec.value, rng))
                      for _ in itertools.count())
        else:
            layout.sep = " "
            stream = itertools.cycle(hay.essay_sentences(self.haystack))
        place = self._essay_places(rng, len(needles)) if spec.haystack == "essay" else self._line_places(rng, len(needles))
        ids, found, context = layout.build(budget, stream, needles, place, spec.name)
        return ids, expected, found, context if spec.haystack == "needle" else found[0].start

    @staticmethod
    def _line_places(rng: random.Random, k: int) -> Callable[[int], list[int]]:
        """RULER's lines: needles at k distinct random line positions (never after the last line)."""
        return _seeded(rng, lambda own, n: sorted(own.sample(range(n), k)) if n >= k else sorted(own.choices(range(n + 1), k=k)))

    @staticmethod
    def _essay_places(rng: random.Random, k: int) -> Callable[[int], list[int]]:
        """RULER's essays: needles before sentence int(n x depth) for k distinct depths of the 40."""
        return _seeded(rng, lambda own, n: sorted(int(n * d / 100) for d in own.sample(ESSAY_DEPTHS, k)))

    def _vt_chain(self, rng: random.Random, letters: int, hops: int = 4) -> tuple[list[str], list[str], str]:
        names: list[str] = []
        while len(names) < hops + 1:
            name = "".join(rng.choices(string.ascii_uppercase, k=letters))
            if name not in names:
                names.append(name)
        value = str(rng.randint(10000, 99999))
        lines = [f"VAR {names[0]} = {value}"] + [f"VAR {names[j + 1]} = VAR {names[j]}" for j in range(hops)]
        return names, lines, value

    def _vt(self, spec: RulerTask, budget: int, rng: random.Random, length: int, sample: int, seed: int):
        head, tail = (VT_TEMPLATE + VT_ANSWER).split("{context}")
        # RULER's one-shot example: a whole prompt and its answer, 3-letter names, whole noise lines in at
        # most 500 tokens (a quarter of the prompt at short lengths); the same for every sample of a length
        own = sample_rng(seed, spec.name, length, -1)
        ex_names, ex_lines, ex_value = self._vt_chain(own, 3)
        ex_layout = _Layout(self, head, tail.format(query=ex_value, num_v=len(ex_names)), "\n")
        answer = self.piece(" ".join(ex_names) + "\n\n", after="they are: ")
        ex_room = min(VT_EXAMPLE_TOKENS, budget // 4) - len(answer)
        try:
            ex_ids, _, _ = ex_layout.build(ex_room, itertools.repeat(hay.NOISE), ex_lines,
                                           self._line_places(own, len(ex_lines)), spec.name, exact=False)
        except _TooShort as short:
            raise _TooShort(spec.name, 4 * (short.needed + len(answer))) from None
        example = self.tokenizer.decode(ex_ids[len(self.special):]) + " ".join(ex_names) + "\n\n"
        names, lines, value = self._vt_chain(rng, 5)
        layout = _Layout(self, example + head, tail.format(query=value, num_v=len(names)), "\n")
        ids, found, _ = layout.build(budget, itertools.repeat(hay.NOISE), lines, self._line_places(rng, len(lines)), spec.name)
        return ids, names, found, found[0].start

    def _cwe(self, spec: RulerTask, budget: int, rng: random.Random, length: int, sample: int, seed: int):
        pool = list(hay.common_words_pool())
        short = length < CWE_SHORT
        (ex_words, ex_common, ex_rare), (common, rare) = ((20, 3, 1), (6, 1)) if short else ((40, 10, 3), (30, 3))
        head, tail = (CWE_TEMPLATE + CWE_ANSWER).split("{context}")

        def listing(words: list[str], times_common: int, times_rare: int, order: random.Random) -> list[str]:
            items = words[:10] * times_common + words[10:] * times_rare
            order.shuffle(items)
            return items

        own = sample_rng(seed, spec.name, length, -1)  # RULER's few-shot example, the same for every sample
        shown = own.sample(pool, ex_words)
        ex_items = listing(shown, ex_common, ex_rare, own)
        example = (head + " ".join(f"{i + 1}. {w}" for i, w in enumerate(ex_items)) + tail + " "
                   + " ".join(f"{i + 1}. {w}" for i, w in enumerate(shown[:10])) + "\n")
        layout = _Layout(self, example + head, tail, " ", words=True)
        words = rng.sample(pool, len(pool))
        base = rng.random()

        def items_for(n: int) -> list[str]:
            return listing(words[:n], common, rare, random.Random(f"{base}/{n}"))

        def size(items: list[str]) -> int:
            return sum(len(layout.unit(f"{i + 1}. {w}", first=i == 0)) for i, w in enumerate(items))

        room = budget - len(layout.head) - len(layout.tail)
        most = min(len(words), 10 + room // (2 * rare))  # an item is at least two tokens, "N." and its word
        n = _largest(10, most, lambda n: size(items_for(n)) <= room)  # RULER's binary search over words
        items = items_for(n)
        if size(items) > room:
            raise _TooShort(spec.name, budget - room + size(items))
        extra = iter(words[n:] + pool)  # the cut: further items whose words appear once
        numbered = [f"{i + 1}. {w}" for i, w in enumerate(items)]
        stream = itertools.chain(numbered, (f"{len(items) + 1 + j}. {w}" for j, w in enumerate(extra)))
        ids, _, context = layout.build(budget, stream, [], lambda n: [], spec.name)
        return ids, words[:10], [], context

    def _fwe(self, spec: RulerTask, budget: int, rng: random.Random, *_: Any):
        alpha, letters = 2.0, 6
        size_vocab = max(4, budget // 50)  # RULER: (length - tokens to generate) // 50
        vocab: set[str] = set()
        while len(vocab) < size_vocab:
            vocab.add("".join(rng.choices(string.ascii_lowercase, k=letters)))
        coded = sorted(vocab)
        rng.shuffle(coded)
        coded[0] = "..."  # RULER: the most frequent word is noise, to be ignored
        zeta = _zeta(alpha)
        head, tail = (FWE_TEMPLATE + FWE_ANSWER).split("{context}")
        layout = _Layout(self, head, tail, " ")
        base = rng.random()

        def text_for(n: int) -> list[str]:
            words = [w for k, w in enumerate(coded, start=1) for _ in range(int(n * k**-alpha / zeta))]
            random.Random(f"{base}/{n}").shuffle(words)
            return words

        def size(words: list[str]) -> int:
            return sum(len(layout.unit(w, first=i == 0)) for i, w in enumerate(words))

        room = budget - len(layout.head) - len(layout.tail)
        n = _largest(1, 2 * room, lambda n: size(text_for(n)) <= room)  # words come to about n, each a token or more
        words = text_for(n)
        if len(words) == 0 or coded[3] not in words:
            raise _TooShort(spec.name, budget + 1)
        ids, _, context = layout.build(budget, itertools.chain(words, itertools.repeat("...")), [], lambda n: [], spec.name)
        return ids, coded[1:4], [], context

    def _qa(self, spec: RulerTask, budget: int, rng: random.Random, length: int, sample: int, seed: int):
        data = self.qa[spec.dataset]
        order = list(range(len(data.items)))
        random.Random(f"ctxext-ruler/{seed}/{spec.name}/questions").shuffle(order)
        item = data.items[order[sample % len(order)]]
        head, tail = (QA_TEMPLATE + QA_ANSWER).split("{context}")
        layout = _Layout(self, head, tail.format(query=item.question), "\n\n")
        gold = list(item.documents)
        others = [i for i in range(len(data.documents)) if i not in gold and i not in item.related]
        rng.shuffle(others)
        related = list(item.related)
        rng.shuffle(related)
        distractors = related + others
        room = budget - len(layout.head) - len(layout.tail)

        def doc(i: int, d: int, first: bool) -> list[int]:
            return layout.unit(QA_DOCUMENT.format(i=i, document=data.documents[d]), first)

        chosen, used = list(gold), sum(len(doc(9, d, False)) for d in gold)
        if used > room:
            raise _TooShort(spec.name, budget - room + used)
        for d in itertools.cycle(distractors) if distractors else ():
            size = len(doc(len(chosen) + 1, d, False))
            if used + size > room or len(chosen) > 4 * len(data.documents):
                break
            chosen.append(d)
            used += size
        while True:
            rng.shuffle(chosen)
            texts = [QA_DOCUMENT.format(i=i + 1, document=data.documents[d]) for i, d in enumerate(chosen)]
            total = sum(len(layout.unit(t, first=i == 0)) for i, t in enumerate(texts))
            if total <= room or len(chosen) == len(gold):
                break
            chosen.remove(next(d for d in reversed(chosen) if d not in gold))
        following = (QA_DOCUMENT.format(i=len(chosen) + 1 + j, document=data.documents[d])
                     for j, d in enumerate(itertools.cycle(distractors or gold)))
        golden = {QA_DOCUMENT.format(i=i + 1, document=data.documents[d]) for i, d in enumerate(chosen) if d in gold}
        positions = [i for i, t in enumerate(texts) if t in golden]
        needles = [texts[i] for i in positions]
        haystack = [t for t in texts if t not in golden]

        def place(n: int) -> list[int]:  # the gold documents back where the shuffle put them
            return [p - k for k, p in enumerate(positions)]

        ids, found, context = layout.build(budget, itertools.chain(haystack, following), needles, place, spec.name)
        return ids, list(item.answers), found, context


def _seeded(rng: random.Random, place: Callable[[random.Random, int], list[int]]) -> Callable[[int], list[int]]:
    """Placement for n units from a generator of its own (drawn from `rng`), the same each time for the same n."""
    seed = rng.random()
    return lambda n: place(random.Random(f"{seed}/{n}"), n)


def _largest(low: int, high: int, fits: Callable[[int], bool]) -> int:
    """The largest n in [low, high] with fits(n), for fits true up to some n and false after (low if none)."""
    while low < high:
        mid = (low + high + 1) // 2
        if fits(mid):
            low = mid
        else:
            high = mid - 1
    return low


def _zeta(alpha: float, terms: int = 100000) -> float:
    """Riemann zeta(alpha) for alpha > 1: the partial sum plus the integral of the tail."""
    return math.fsum(k**-alpha for k in range(1, terms + 1)) + terms ** (1 - alpha) / (alpha - 1)


def build_ruler_prompts(
    task: str,
    tokenizer: Any,
    length: int,
    samples: int = 1,
    seed: int = 0,
    *,
    haystack: str | None = None,
    qa: dict[str, QASet] | None = None,
) -> list[RulerPrompt]:
    """The `samples` prompts of one RULER task at one length for one tokenizer (see the module docstring).

    `haystack`: a text file for the essay haystack (default: the shipped one); `qa`: {"squad": QASet,
    "hotpotqa": QASet} from `read_qa_file`, for qa_1 and qa_2.
    """
    check_tasks([task], qa)
    builder = RulerPromptBuilder(tokenizer, haystack=haystack, qa=qa)
    return [builder.build(task, length, sample, seed) for sample in range(samples)]
