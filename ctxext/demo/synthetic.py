"""Synthetic long documents for the embedded demo model: its tokenizer, its pre-training data, and
the demo's fine-tuning and perplexity texts. Everything is seeded, so the same seed gives the same text.

A passkey document is the standard passkey prompt with variations: the task sentence (or another
intro, or none), filler (the standard "The grass is green. ..." lines, varied sentences from
templates, or a mix), the key line "The pass key is N. Remember it. N is the pass key." (or a shorter
form) at a random depth, sometimes other key/value lines as distractors, and the question with its
answer. A RULER document is a prompt of one of RULER_TASKS, built by ctxext's own RULER prompt builder
(with seeds far from any evaluation's), followed by its answer and the end-of-sequence token.

    tokenizer = build_tokenizer()
    stream = training_stream(tokenizer, n=100, length=2048, seed=0)   # 100 documents of exactly 2048 tokens
"""

from __future__ import annotations

import random
from typing import Any, Iterator

from ..evaluation.passkey import FILLER, KEY_LINE, QUESTION, TASK
from ..evaluation.ruler import haystack as ruler_haystack
from ..evaluation.ruler.tasks import NEEDLE, TASKS, RulerPromptBuilder, niah_texts

STANDARD = [s.strip() + "." for s in FILLER.split(".") if s.strip()]  # the five standard sentences

NAMES = "Anna Ben Carla David Emma Felix Grace Hugo Iris Jack Kate Leo Maria Nina Oscar Paul Rosa Sam Tina Victor".split()
ANIMALS = "cat dog bird fish horse cow sheep goat duck rabbit fox wolf bear mouse frog owl lion deer".split()
THINGS = "book cup table chair door window lamp clock bag hat coat box pen letter ball bottle kite bread apple stone".split()
PLACES = "garden kitchen forest river market school village city field beach park station library harbor hill farm".split()
COLORS = "red green blue yellow white black brown orange purple gray".split()
ADJECTIVES = "big small old new warm cold quiet loud bright dark soft quick slow happy tall short clean wet dry calm".split()
VERBS = "walks runs sleeps waits sings reads writes plays works rests".split()
TEMPLATES = [
    "{name} has a {adj} {thing}.",
    "The {animal} sleeps in the {place}.",
    "{name} walks to the {place} with {name2}.",
    "The {thing} is {color}.",
    "A {adj} {animal} lives near the {place}.",
    "{name} {verb} in the {place}.",
    "The {place} is {adj} today.",
    "{name} gives the {thing} to {name2}.",
    "There is a {color} {thing} on the table.",
    "The {animal} and the {animal2} are friends.",
    "{name} likes the {adj} {thing}.",
    "In the {place} the {animal} {verb}.",
]
INTROS = [
    TASK,
    "Read the text below. It hides one important number. Remember it.",
    "Here is a long story. Somewhere in it there is a key you will be asked about.",
]
OTHER_KEYS = ["door code", "room number", "lucky number", "secret code"]

#: the RULER tasks the demo model learns: those whose prompts fit its 256-token window beside RULER's
#: generation budget (128 tokens for the needle tasks, so a 128-token prompt at length 256): one
#: needle in noise, one in essay prose, one among other needles
RULER_TASKS = ("niah_single_1", "niah_single_2", "niah_multikey_2")
#: the ones `ctxext demo` averages for the effective length: RULER_TASKS but niah_multikey_2, whose
#: haystack is made of needles, so its distractors grow with the length (5 keys at 256 tokens, 37 at
#: 1,024) and it measures how many keys a 4-layer model tells apart, not the positions it reads; the
#: demo model was pre-trained with at most about 10, and no fine-tune ctxext tried taught it 16
RULER_DEMO_TASKS = ("niah_single_1", "niah_single_2")
#: training prompts are built with seeds from here on, so they never coincide with an evaluation's
RULER_TRAIN_SEED = 1_000_000
#: tokens kept free for a RULER answer (" value." and EOS): 7-digit numbers, or UUIDs
ANSWER_ROOM = {"numbers": 12, "words": 24, "uuids": 48}


def random_sentence(rng: random.Random) -> str:
    name, name2 = rng.sample(NAMES, 2)
    animal, animal2 = rng.sample(ANIMALS, 2)
    return rng.choice(TEMPLATES).format(
        name=name, name2=name2, animal=animal, animal2=animal2, thing=rng.choice(THINGS), place=rng.choice(PLACES),
        adj=rng.choice(ADJECTIVES), color=rng.choice(COLORS), verb=rng.choice(VERBS),
    )


def random_key(rng: random.Random, digits: int = 5) -> str:
    return "".join(rng.choice("0123456789") for _ in range(digits))


def tokenizer_corpus(seed: int = 0) -> list[str]:
    """Every word and line a document can contain, to learn the tokenizer's merges from."""
    rng = random.Random(seed)
    lines = [random_sentence(rng) for _ in range(20000)] + INTROS * 50 + [FILLER] * 200
    lines += [KEY_LINE.format(key=random_key(rng)) for _ in range(100)] + [QUESTION] * 100
    lines += [f"The {k} is {random_key(rng, 4)}. What is the {k}? The {k} is" for k in OTHER_KEYS * 20]
    # RULER's needle tasks: their templates, needle lines with random keys and values, the essay haystack
    for name in RULER_TASKS:
        spec = TASKS[name]
        for _ in range(50):
            key, value = (ruler_haystack.needle_value(kind, rng) for kind in (spec.key, spec.value))
            lines += [*niah_texts(spec, key), NEEDLE.format(type_v=spec.value, key=key, value=value)]
    lines += list(ruler_haystack.essay_sentences())
    return lines


def build_tokenizer(vocab_size: int = 1024, seed: int = 0) -> Any:
    """A byte-level BPE tokenizer learned from the synthetic corpus, every digit its own token.

    Byte-level, so decoding reproduces any text exactly; the BOS token is prepended to every text.
    """
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, processors, trainers
    from transformers import PreTrainedTokenizerFast

    tok = Tokenizer(models.BPE(unk_token="<unk>"))
    tok.pre_tokenizer = pre_tokenizers.Sequence(
        [pre_tokenizers.Digits(individual_digits=True), pre_tokenizers.ByteLevel(add_prefix_space=False)]
    )
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size, special_tokens=["<pad>", "<s>", "</s>", "<unk>"],
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(), show_progress=False,
    )
    tok.train_from_iterator(tokenizer_corpus(seed), trainer=trainer)
    tok.post_processor = processors.TemplateProcessing(single="<s> $A", special_tokens=[("<s>", tok.token_to_id("<s>"))])
    return PreTrainedTokenizerFast(tokenizer_object=tok, bos_token="<s>", eos_token="</s>", unk_token="<unk>",
                                   pad_token="<pad>", model_max_length=1 << 20)


def filler_sentences(rng: random.Random, style: str) -> Iterator[str]:
    """An endless stream of filler: 'standard', 'varied', or 'mixed' (mostly standard)."""
    i = rng.randrange(len(STANDARD))
    while True:
        if style == "standard" or (style == "mixed" and rng.random() < 0.7):
            yield STANDARD[i % len(STANDARD)]
            i += 1
        else:
            yield random_sentence(rng)


class DocumentMaker:
    """Passkey documents that fit a token budget for one tokenizer: (prompt ids, answer ids)."""

    def __init__(self, tokenizer: Any):
        self.tokenizer = tokenizer
        self._cache: dict[str, list[int]] = {}

    def ids(self, text: str) -> list[int]:
        if text not in self._cache:
            self._cache[text] = self.tokenizer(text, add_special_tokens=False)["input_ids"]
        return self._cache[text]

    def make(self, rng: random.Random, budget: int, style: str | None = None) -> tuple[list[int], list[int]]:
        """One document of at most `budget` tokens laid out like the standard prompt; (prompt ids, answer ids).

        Lines joined by newlines: [intro], filler with the key line (and any distractor lines) on
        lines of their own at random depths, the question. The answer is " " and the key's digits.
        """
        key = random_key(rng)
        style = style or rng.choice(["standard", "varied", "mixed", "mixed"])
        intro = rng.choice(INTROS + [None])
        key_line = KEY_LINE.format(key=key) if rng.random() < 0.8 else f"The pass key is {key}."
        inserts = [(rng.random(), key_line)]
        for name in rng.sample(OTHER_KEYS, rng.choice([0, 0, 1, 2])):
            inserts.append((rng.random(), f"The {name} is {random_key(rng, rng.randint(3, 6))}."))
        answer = self.ids(" " + key)
        # filler: estimated from each sentence's own tokens, then trimmed once the exact count is known
        fixed = 1 + len(answer) + len(self.ids("\n" + QUESTION)) + (len(self.ids(intro)) + 1 if intro else 0)
        room = budget - fixed - sum(len(self.ids(line)) + 1 for _, line in inserts)
        filler: list[str] = []
        for sentence in filler_sentences(rng, style):
            room -= len(self.ids(" " + sentence))
            if room < 0:
                break
            filler.append(sentence)
        while True:
            cuts = sorted((round(depth * len(filler)), line) for depth, line in inserts)
            lines, current, c = ([intro] if intro else []), [], 0
            for position in range(len(filler) + 1):
                while c < len(cuts) and cuts[c][0] == position:
                    lines += [" ".join(current)] if current else []
                    lines.append(cuts[c][1])
                    current, c = [], c + 1
                if position < len(filler):
                    current.append(filler[position])
            lines += [" ".join(current)] if current else []
            prompt = self.tokenizer("\n".join(lines + [QUESTION]))["input_ids"]  # BOS included
            if len(prompt) + len(answer) <= budget:
                return prompt, answer
            if not filler:
                raise ValueError(f"a {budget}-token budget cannot hold this document's intro, key line and "
                                 "question; use a budget of at least 128 tokens.")
            filler.pop()


class RulerDocuments:
    """RULER prompts of the demo's tasks with their answers: (prompt ids, answer ids ending in EOS)."""

    def __init__(self, tokenizer: Any, tasks: tuple[str, ...] = RULER_TASKS, seed: int = 0):
        self.tokenizer = tokenizer
        self.tasks = tasks
        self.seed = RULER_TRAIN_SEED + seed
        self.builder = RulerPromptBuilder(tokenizer)
        self.count = 0

    def make(self, rng: random.Random, budget: int) -> tuple[list[int], list[int]]:
        """One prompt of a random task, at most `budget` tokens with its answer; its length uniform up to the budget."""
        from ..errors import CtxextError

        task = rng.choice(self.tasks)
        spec = TASKS[task]
        room = ANSWER_ROOM[spec.value]
        low = min(budget - room, 96)  # prompts of every length up to the budget
        for _ in range(20):
            tokens = rng.randint(low, budget - room)
            self.count += 1
            try:
                prompt = self.builder.build(task, tokens + spec.max_new_tokens, self.count, self.seed)
            except CtxextError:  # too short for this task: a longer one
                low = min(budget - room, low + 16)
                continue
            text = " " + ", ".join(prompt.expected) + "."
            answer = self.builder.piece(text, after=" is") + [self.tokenizer.eos_token_id]
            if len(prompt.input_ids) + len(answer) <= budget:
                return list(prompt.input_ids), answer
        raise ValueError(f"a {budget}-token budget cannot hold a {task} prompt and its answer; use a larger budget.")


def heldout_texts(tokenizer: Any, n: int, length: int, seed: int = 1) -> list[str]:
    """`n` documents of at least `length` tokens of mixed filler with answered questions (perplexity data)."""
    maker, texts = DocumentMaker(tokenizer), []
    for i in range(n):
        parts = []
        rng = random.Random(seed * 1000 + i)
        for _ in range(2):  # two passkey documents back to back
            prompt, answer = maker.make(rng, length, "mixed")
            parts.append(tokenizer.decode(prompt + answer + maker.ids("."), skip_special_tokens=True))
        texts.append("\n".join(parts))
    return texts


def training_documents(tokenizer: Any, n: int, length: int, seed: int = 0,
                       ruler: float = 0.5) -> Iterator[tuple[str, list[int], list[int]]]:
    """The training stream's `n` documents in order, as (kind, prompt ids, answer ids), kind "ruler" or "passkey".

    A fraction `ruler` of them are RULER documents (RulerDocuments, at most `length` tokens with their
    answer), the rest passkey documents of `length - 1` tokens with their answer.
    """
    maker, rng = DocumentMaker(tokenizer), random.Random(seed)
    tasks = RulerDocuments(tokenizer, seed=seed)
    for _ in range(n):
        if rng.random() < ruler:
            yield ("ruler", *tasks.make(rng, length))
        else:
            yield ("passkey", *maker.make(rng, length - 1))


def padded_documents(tokenizer: Any, n: int, length: int, seed: int = 0,
                     ruler: float = 0.5) -> Iterator[tuple[list[int], list[int]]]:
    """`training_documents`, each as exactly `length` (ids, completion mask): answered, then EOS-padded.

    The completion is the answer (and the period after a passkey answer; a RULER answer ends in EOS).
    """
    period = DocumentMaker(tokenizer).ids(".")
    for kind, prompt, answer in training_documents(tokenizer, n, length, seed, ruler):
        completion = answer + (period if kind == "passkey" else [])
        ids = (prompt + completion)[:length]
        mask = ([0] * len(prompt) + [1] * len(completion))[:length]
        pad = length - len(ids)
        yield ids + [tokenizer.eos_token_id] * pad, mask + [0] * pad


def training_stream(tokenizer: Any, n: int, length: int, seed: int = 0, ruler: float = 0.5) -> list[int]:
    """`n` documents as one token stream, each exactly `length` tokens (answered, then EOS-padded).

    A fraction `ruler` of them are RULER documents (RulerDocuments), the rest passkey documents.
    Packed into `length`-token sequences, every sequence is exactly one whole document, so no
    question is cut off from its key (what packing decoded texts would do now and then).
    """
    return [token for ids, _ in padded_documents(tokenizer, n, length, seed, ruler) for token in ids]


def training_dataset(tokenizer: Any, n: int, length: int, seed: int = 0, ruler: float = 0.5) -> Any:
    """training_stream's documents as a `datasets.Dataset` of `input_ids` and `completion_mask` rows.

    What the demo fine-tunes on: `finetune` joins the rows as they are (each exactly one `length`-token
    training sequence) and, with a `prompt_loss_weight`, weighs the answers' tokens above the rest.
    """
    import datasets

    rows = list(padded_documents(tokenizer, n, length, seed, ruler))
    return datasets.Dataset.from_dict({"input_ids": [r[0] for r in rows], "completion_mask": [r[1] for r in rows]})


def search_texts(tokenizer: Any, n: int, length: int, seed: int = 0) -> list[str]:
    """`n` texts of at least `length` tokens made of the training stream's documents, two per text.

    What a factor search of the demo model reads (`recipes/search_demo.py`): the first 2n documents
    of `training_stream(tokenizer, ..., length, seed)`, made like the data the demo fine-tunes on
    (`training_documents`), never the held-out texts it measures with.
    """
    stream = training_stream(tokenizer, 2 * n, length, seed)
    docs = [stream[i * length : (i + 1) * length] for i in range(2 * n)]
    decoded = [tokenizer.decode(d, skip_special_tokens=True) for d in docs]
    return ["\n".join(decoded[2 * i : 2 * i + 2]) for i in range(n)]


def search_needles(tokenizer: Any, n: int, length: int, seed: int = 0) -> list[tuple[list[int], list[int]]]:
    """The first `n` passkey documents of `training_stream(tokenizer, ..., length, seed)` as (prompt ids, answer ids).

    The needle-driven objective of a factor search of the demo model (`recipes/search_demo.py`): the
    loss on the answer tokens of training documents at the full 8x length, made like the ones the demo
    fine-tunes on (those are at most 4x long). Only the passkey ones:
    they fill the whole length, where the stream's RULER documents are of every length up to it.
    """
    needles = []
    for kind, prompt, answer in training_documents(tokenizer, 4 * n + 16, length, seed):
        if kind == "passkey":
            needles.append((prompt, answer))
            if len(needles) == n:
                return needles
    raise ValueError(f"the first {4 * n + 16} training documents hold fewer than {n} passkey documents.")
