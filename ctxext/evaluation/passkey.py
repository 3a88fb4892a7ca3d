"""Passkey retrieval: can the model repeat a 5-digit key hidden at a given depth of a long prompt?

    from ctxext.evaluation.passkey import evaluate_passkey
    report = evaluate_passkey(["base/", ("yarn-x4", model, tokenizer)], [1024, 4096], output_dir="eval/")
    report["summary"]     # [{"model": "base", "length": 1024, "accuracy": 1.0}, ...]

The prompt is the one of the published evaluations (Mohtashami & Jaggi 2023; the YaRN and LongLoRA
scripts), counted in the model's own tokens instead of characters:

    <task sentence>\\n<filler ...>\\nThe pass key is 12345. Remember it. 12345 is the pass key.\\n<filler ...>\\n
    What is the pass key? The pass key is

Lengths are exact (the prompt, up to "The pass key is", has exactly `length` tokens, BOS included) and
the key line starts after round(depth x F) filler tokens, F being all the filler tokens of the prompt
(depth 0: right after the task sentence; 1: right before the question). Keys come from a
`random.Random` seeded by (seed, length, depth, trial), so every model of a call, and a resumed run,
sees the same keys. "Same prompts" across models means the same text template, keys, lengths and
depths; the token sequences are identical when the tokenizers are, and otherwise each tokenizer
counts its own tokens (the filler is then cut at a different place in the text).

Scoring is greedy decoding's exact match, computed by teacher forcing: one forward pass over the
prompt and the key's tokens; the argmax at every key position is what greedy decoding produces as
long as all earlier ones matched, so all match <=> greedy reproduces the key. When one does not,
greedy decoding is finished from the cache from that point, so `prediction` is exactly what greedy
decoding says (`generate=True` runs `model.generate` instead; the tests check they agree).

Speed: the text before the key line is the same for every sample of a run (the task sentence and the
start of one filler stream), so its KV cache is computed once, up to the deepest key of the longest
length, and every sample continues from a prefix of it; samples of one (length, depth) run as a
batch. Models whose rotary frequencies depend on the current length (dynamic NTK, dynamic YaRN,
longrope) get no shared prefix and are decoded with `model.generate`, since one forward pass over
prompt and key would compute their frequencies for a different length than decoding does.
"""

from __future__ import annotations

import math
import random
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterable, Iterator, Sequence

from ..errors import CtxextError
from ..io import one_writer
from .decoding import DEFAULT_BATCH_TOKENS, GreedyDecoder, common_prefix, position_dependent_rope  # noqa: F401 (re-exported)
from .tokens import continuation as _continuation, encode as _encode, special_prefix as _special_prefix
from .common import (
    ModelSpec,
    ResultsFile,
    check_device,
    format_table,
    iterate_models,
    parse_lengths,
    resolve_models,
    slug,
    warn_beyond_window,
)

TASK = (
    "There is an important info hidden inside a lot of irrelevant text. Find it and memorize them. "
    "I will quiz you about the important information there."
)
FILLER = "The grass is green. The sky is blue. The sun is yellow. Here we go. There and back again."
KEY_LINE = "The pass key is {key}. Remember it. {key} is the pass key."
QUESTION = "What is the pass key? The pass key is"

DEFAULT_DEPTHS = (0.0, 0.25, 0.5, 0.75, 1.0)
DEFAULT_TRIALS = 5
DEFAULT_DIGITS = 5


# ---------------------------------------------------------------------------------------------
# prompts


@dataclass(frozen=True)
class PasskeyPrompt:
    """One sample: the prompt's token ids and the key's tokens as the model should continue."""

    length: int  # target length in tokens
    depth: float  # 0 = key right after the task sentence, 1 = right before the question
    trial: int
    passkey: str
    input_ids: tuple[int, ...]  # BOS ... "The pass key is"
    answer_ids: tuple[int, ...]  # " 12345" in context
    key_start: int  # index of the key line's first token; everything before is shared

    @property
    def tokens(self) -> int:
        return len(self.input_ids)


def parse_depths(depths: Iterable[float]) -> list[float]:
    """Sorted distinct depths in [0, 1], or CtxextError."""
    if isinstance(depths, (int, float, str)):
        depths = [depths]
    out = []
    for value in depths:
        if isinstance(value, bool) or not isinstance(value, (int, float)) or not 0.0 <= float(value) <= 1.0:
            raise CtxextError(f"Depths must be numbers from 0 (start of the prompt) to 1 (end), got {value!r}.")
        out.append(float(value))
    if not out:
        raise CtxextError("Give at least one depth between 0 and 1.")
    return sorted(set(out))


def make_passkey(seed: int, length: int, depth: float, trial: int, digits: int = DEFAULT_DIGITS) -> str:
    """The key of one sample: a function of (seed, length, depth, trial) alone, so runs can resume."""
    rng = random.Random(f"ctxext-passkey/{seed}/{length}/{float(depth)!r}/{trial}")
    return str(rng.randint(10 ** (digits - 1), 10**digits - 1))


class PromptBuilder:
    """Builds passkey prompts of exact token lengths for one tokenizer."""

    def __init__(self, tokenizer: Any):
        self.tokenizer = tokenizer
        # issue 10: a tokenizer that cannot write the prompt (text -> nothing, or <unk>s) is refused here,
        # before filler() would keep doubling a stream that never reaches the length asked for
        filler = _encode(tokenizer, FILLER)
        decoded = tokenizer.decode(filler, skip_special_tokens=True) if filler else ""
        if " ".join(decoded.split()).lower() != FILLER.lower():
            name = getattr(tokenizer, "name_or_path", "") or type(tokenizer).__name__
            raise CtxextError(
                f"The tokenizer of {name} cannot write the passkey prompt: it reads the filler text back as "
                f"{decoded[:40]!r}; give the model's own tokenizer (tokenizer.json or tokenizer.model)."
            )
        self.special = _special_prefix(tokenizer)
        self.head = _encode(tokenizer, TASK + "\n")
        self.question = _continuation(tokenizer, "\n" + QUESTION, context=FILLER)
        self._filler: list[int] = []
        self._filler_repeats = 0

    def filler(self, n: int) -> list[int]:
        """The first n tokens of the endless filler ("The grass is green. ... There and back again. The grass ...")."""
        while len(self._filler) < n:
            per = max(1, len(_encode(self.tokenizer, FILLER)))
            self._filler_repeats = max(2 * self._filler_repeats, math.ceil(n / per) + 2)
            stream = " ".join([FILLER] * self._filler_repeats)
            before, self._filler = len(self._filler), _continuation(self.tokenizer, stream, context=TASK + "\n")
            if len(self._filler) <= before:  # issue 10: never loop (and grow) without making progress
                raise CtxextError("The tokenizer cannot write the passkey prompt: its filler text does not grow with repeats.")
        return self._filler[:n]

    def fixed_tokens(self, key: str) -> int:
        """Tokens of everything but the filler, for this key."""
        return len(self.special) + len(self.head) + len(self._key_line(key)) + len(self.question)

    def _key_line(self, key: str) -> list[int]:
        return _continuation(self.tokenizer, "\n" + KEY_LINE.format(key=key) + "\n", context=FILLER)

    def build(self, length: int, depth: float, trial: int, passkey: str) -> PasskeyPrompt:
        key_line = self._key_line(passkey)
        n_filler = length - self.fixed_tokens(passkey)
        if n_filler < 0:
            raise CtxextError(
                f"Length {length} is too short for the passkey prompt, which needs at least "
                f"{self.fixed_tokens(passkey)} tokens with this tokenizer; give longer --lengths."
            )
        before = math.floor(depth * n_filler + 0.5)  # round half up, the same on every platform
        prefix = self.special + self.head + self.filler(before)
        ids = prefix + key_line + self.filler(n_filler - before) + self.question
        answer = _continuation(self.tokenizer, " " + passkey, context=QUESTION)
        if self.tokenizer.decode(answer, skip_special_tokens=True).strip() != passkey:
            raise CtxextError(f"The tokenizer does not reproduce the key {passkey} when decoding it; it cannot be used for passkey retrieval.")
        assert len(ids) == length, (len(ids), length)
        return PasskeyPrompt(length, depth, trial, passkey, tuple(ids), tuple(answer), len(prefix))


def build_prompts(
    tokenizer: Any,
    lengths: Sequence[int],
    depths: Sequence[float] = DEFAULT_DEPTHS,
    trials: int = DEFAULT_TRIALS,
    seed: int = 0,
    digits: int = DEFAULT_DIGITS,
) -> list[PasskeyPrompt]:
    """Every (length, depth, trial) prompt of a run for one tokenizer, in that order."""
    builder = PromptBuilder(tokenizer)
    return [
        builder.build(length, depth, trial, make_passkey(seed, length, depth, trial, digits))
        for length in lengths
        for depth in depths
        for trial in range(trials)
    ]


# ---------------------------------------------------------------------------------------------
# scoring


def teacher_forced_tokens(logits: Any, answer_ids: Sequence[int]) -> tuple[list[int], int | None]:
    """Greedy tokens at the key's positions and the index of the first one that misses (None: all match).

    `logits` is [k, vocab]: row j is the model's prediction for answer token j given the prompt and
    answer[:j]. Up to and including the first miss, these argmaxes are exactly greedy decoding's tokens.
    """
    predicted = logits.argmax(dim=-1).tolist()  # [k]
    miss = next((j for j, (p, a) in enumerate(zip(predicted, answer_ids)) if p != a), None)
    return predicted, miss


def prediction_text(tokenizer: Any, tokens: Sequence[int], eos_ids: Iterable[int] = ()) -> str:
    """What greedy decoding said: the tokens up to the first end-of-sequence, decoded and stripped."""
    eos = set(eos_ids)
    kept = []
    for token in tokens:
        if token in eos:
            break
        kept.append(token)
    return tokenizer.decode(kept, skip_special_tokens=True).strip()


class PasskeyRunner:
    """Greedy outputs at the key's positions for many prompts of one model, sharing the common prefix.

        runner = PasskeyRunner(model, tokenizer)
        for batch in runner.run(prompts):        # batches, in (length, depth, trial) order
            for prompt, tokens in batch: ...     # tokens: greedy decoding's len(answer_ids) tokens

    The model calls and the KV-cache handling are the GreedyDecoder's (evaluation/decoding.py); what
    is the passkey's own is the teacher-forced scoring of the key and the finishing after a miss.
    """

    def __init__(
        self,
        model: Any,
        tokenizer: Any,
        *,
        batch_size: int | None = None,
        batch_tokens: int = DEFAULT_BATCH_TOKENS,
        share_prefix: bool = True,
        generate: bool = False,
    ):
        self.decoder = GreedyDecoder(model, tokenizer)
        self.model = model
        self.tokenizer = tokenizer
        self.batch_size = batch_size
        self.batch_tokens = batch_tokens
        self.device = self.decoder.device
        self.eos_ids = self.decoder.eos_ids
        self.pad_id = self.decoder.pad_id
        dynamic = not self.decoder.share_prefix  # rotary frequencies that depend on the current length
        self.generate = generate or (dynamic and hasattr(model, "generate"))
        self.share_prefix = share_prefix and not dynamic
        import torch

        self._torch = torch

    @property
    def tokens_run(self) -> int:
        """Tokens given to the model so far (the naive loop gives every prompt whole)."""
        return self.decoder.tokens_run

    # -- batches -------------------------------------------------------------------------------

    def _batches(self, prompts: Sequence[PasskeyPrompt]) -> Iterator[list[PasskeyPrompt]]:
        """Prompts of one (length, depth) together, at most batch_size (or batch_tokens / length) at once."""
        order = sorted(prompts, key=lambda p: (p.length, p.depth, p.trial))
        group: list[PasskeyPrompt] = []
        for prompt in order:
            size = self.batch_size or max(1, self.batch_tokens // (prompt.tokens + len(prompt.answer_ids)))
            if group and ((group[0].length, group[0].depth, group[0].tokens) != (prompt.length, prompt.depth, prompt.tokens) or len(group) >= size):
                yield group
                group = []
            group.append(prompt)
        if group:
            yield group

    def _teacher_forced(self, group: list[PasskeyPrompt], master: list | None, master_ids: Sequence[int]) -> list[list[int]]:
        torch = self._torch
        decoder = self.decoder
        # shared tokens: the common prefix with the master, leaving at least each prompt's last token to run
        shared = decoder.shared_length([p.input_ids for p in group], master_ids) if master is not None else 0
        rests = [list(p.input_ids[shared:]) + list(p.answer_ids[:-1]) for p in group]
        width = max(len(r) for r in rests)
        ids = torch.tensor([r + [self.pad_id] * (width - len(r)) for r in rests], device=self.device)  # [B, R]
        # right padding needs no attention mask: causal attention never looks at later (pad) positions
        cache = decoder.shared_cache(master, shared, len(group)) if shared else decoder.new_cache()
        first = [len(p.input_ids) - 1 - shared for p in group]  # rest position predicting answer[0]
        keep = sorted({first[i] + j for i, p in enumerate(group) for j in range(len(p.answer_ids))})
        logits = decoder.forward(ids, cache, keep)  # [B, len(keep), V]
        index = {pos: n for n, pos in enumerate(keep)}
        greedy, misses = [], []
        for i, p in enumerate(group):
            rows = [index[first[i] + j] for j in range(len(p.answer_ids))]
            predicted, miss = teacher_forced_tokens(logits[i, rows], p.answer_ids)
            greedy.append(predicted if miss is not None else list(p.answer_ids))
            misses.append(miss)
        self._finish_greedy(group, greedy, misses, cache)
        return greedy

    def _finish_greedy(self, group: list[PasskeyPrompt], greedy: list[list[int]], misses: list[int | None], cache: Any) -> None:
        """Replace the teacher-forced tokens after each row's first miss by what greedy decoding produces.

        Greedy decoding agrees with teacher forcing up to and including the first miss; after it the
        model sees its own token, not the key's. The rows that missed continue together from the
        earliest miss (all prompts of a group have the same length, so positions line up).
        """
        torch = self._torch
        rows = [i for i, miss in enumerate(misses) if miss is not None]
        if not rows:
            return
        start = min(misses[i] for i in rows)
        longest = max(len(group[i].answer_ids) for i in rows)
        end = group[0].tokens + start  # the cache keeps the prompt and the answer tokens before `start`
        own = self.decoder.select(cache, rows, end)
        for position in range(start, longest - 1):
            fed = [greedy[i][position] if position < len(greedy[i]) else self.pad_id for i in rows]
            logits = self.decoder.forward(torch.tensor(fed, device=self.device)[:, None], own, keep=1)  # [R, 1, V]
            following = logits[:, -1].argmax(dim=-1).tolist()
            for r, i in enumerate(rows):
                if misses[i] <= position < len(greedy[i]) - 1:  # decoded: past this row's miss
                    greedy[i][position + 1] = following[r]

    def _generated(self, group: list[PasskeyPrompt]) -> list[list[int]]:
        """model.generate's greedy tokens for prompts of one token length (no padding needed)."""
        from transformers import GenerationConfig

        torch = self._torch
        if not hasattr(self.model, "generate"):
            raise CtxextError("generate=True needs a model with a .generate method (a transformers model).")
        ids = torch.tensor([p.input_ids for p in group], device=self.device)
        longest = max(len(p.answer_ids) for p in group)
        config = GenerationConfig(
            max_new_tokens=longest, do_sample=False, num_beams=1, repetition_penalty=1.0, no_repeat_ngram_size=0,
            eos_token_id=self.eos_ids or None, pad_token_id=self.pad_id,
        )
        out = self.model.generate(input_ids=ids, attention_mask=torch.ones_like(ids), generation_config=config)
        new = out[:, ids.shape[1] :].tolist()
        return [row[: len(p.answer_ids)] for row, p in zip(new, group)]

    def run(self, prompts: Sequence[PasskeyPrompt]) -> Iterator[list[tuple[PasskeyPrompt, list[int]]]]:
        """Greedy tokens for every prompt, one batch at a time (so callers can save and report progress)."""
        torch = self._torch
        if not prompts:
            return
        with torch.inference_mode():
            master, master_ids = None, ()
            if self.share_prefix and not self.generate:
                master_ids = max((p.input_ids[: p.key_start] for p in prompts), key=len)
                master = self.decoder.prefill(master_ids)
            for group in self._batches(prompts):
                tokens = self._generated(group) if self.generate else self._teacher_forced(group, master, master_ids)
                yield list(zip(group, tokens))


# ---------------------------------------------------------------------------------------------
# the evaluation


def summarize(results: Sequence[dict]) -> list[dict]:
    """Accuracy per (model, length) over all depths and trials, models in order of appearance."""
    cells: dict[tuple[str, int], list[bool]] = {}
    for r in results:
        cells.setdefault((r["model"], r["length"]), []).append(bool(r["correct"]))
    order = list(dict.fromkeys(model for model, _ in cells))
    return [
        {"model": model, "length": length, "accuracy": sum(v) / len(v)}
        for (model, length), v in sorted(cells.items(), key=lambda kv: (order.index(kv[0][0]), kv[0][1]))
    ]


@one_writer("output_dir")  # issue 10: one run at a time writes an output directory
def evaluate_passkey(
    models: ModelSpec | Sequence[ModelSpec],
    lengths: Sequence[int],
    *,
    depths: Sequence[float] = DEFAULT_DEPTHS,
    trials: int = DEFAULT_TRIALS,
    seed: int = 0,
    digits: int = DEFAULT_DIGITS,
    output_dir: str | Path | None = None,
    resume: bool = False,
    overwrite: bool = False,
    generate: bool = False,
    device: str | None = None,
    dtype: str | None = None,
    batch_size: int | None = None,
    progress: bool = True,
) -> dict:
    """Passkey accuracy of each model at each length x depth; returns {"results": [...], "summary": [...]}.

    `models`: directories or hub ids (each loaded, evaluated and freed in turn, on `device` in `dtype`)
    and/or (name, model, tokenizer) triples already in memory. Every model sees the same keys at the
    same lengths and depths. With `output_dir`, writes passkey.json after every batch and, at the end,
    the heatmaps and the accuracy plot; `resume=True` continues a run from its passkey.json.
    Bad input raises CtxextError before any model is loaded.
    """
    from tqdm.auto import tqdm

    lengths = parse_lengths(lengths)
    depths = parse_depths(depths)
    for name, value, low in (("trials", trials, 1), ("digits", digits, 1), ("seed", seed, 0)):
        if isinstance(value, bool) or not isinstance(value, int) or value < low:
            raise CtxextError(f"{name} must be a whole number of at least {low}, got {value!r}.")
    if batch_size is not None and (not isinstance(batch_size, int) or batch_size < 1):
        raise CtxextError(f"batch_size must be a whole number of at least 1, got {batch_size!r}.")
    entries = resolve_models(models)
    check_device(device, dtype)
    out = ResultsFile(output_dir, "passkey.json", resume=resume, overwrite=overwrite,
                      sources=[e.source for e in entries])

    # every prompt, per tokenizer, before any model loads (a too-short length fails here)
    prompts: dict[str, list[PasskeyPrompt]] = {}
    built: dict[int, list[PasskeyPrompt]] = {}
    for entry in entries:
        tokenizer = entry.load_tokenizer()
        if id(tokenizer) not in built:
            built[id(tokenizer)] = build_prompts(tokenizer, lengths, depths, trials, seed, digits)
        prompts[entry.name] = built[id(tokenizer)]

    # a resumed run keeps what it finished; its keys must be the ones this run would draw
    done = set()
    for record in out.results:
        key = (record.get("model"), record.get("length"), record.get("depth"), record.get("trial"))
        if key[0] in prompts and key[1] in lengths and key[2] in depths and isinstance(key[3], int) and key[3] < trials:
            if str(record.get("passkey")) != make_passkey(seed, key[1], key[2], key[3], digits):
                raise CtxextError(
                    f"{out.path} was written with another seed or number of digits; resume with the same "
                    "--seed and --digits, or pass --overwrite to start again."
                )
            done.add(key)

    results = out.results
    todo = {name: [p for p in ps if (name, p.length, p.depth, p.trial) not in done] for name, ps in prompts.items()}
    bar = tqdm(total=sum(len(t) for t in todo.values()), unit="sample", desc="passkey", disable=not progress,
               delay=0.5)  # issue 10: a model that fails to load leaves no bar above the error
    try:
        for entry, model, tokenizer in iterate_models([e for e in entries if todo[e.name]], device=device, dtype=dtype):
            bar.set_postfix_str(entry.name)
            warn_beyond_window(entry.name, model, sorted({p.length for p in todo[entry.name]}))
            runner = PasskeyRunner(model, tokenizer, batch_size=batch_size, generate=generate)
            for batch in runner.run(todo[entry.name]):
                for prompt, tokens in batch:
                    prediction = prediction_text(tokenizer, tokens, runner.eos_ids)
                    results.append(
                        {
                            "model": entry.name,
                            "length": prompt.length,
                            "tokens": prompt.tokens,
                            "depth": prompt.depth,
                            "trial": prompt.trial,
                            "passkey": prompt.passkey,
                            "prediction": prediction,
                            "correct": prediction == prompt.passkey,
                        }
                    )
                out.write({"results": results, "summary": summarize(results)})
                bar.update(len(batch))
    finally:
        bar.close()
    report = {"results": results, "summary": summarize(results)}
    out.write(report)
    if out.path is not None:
        write_passkey_plots(report, out.path.parent)
    return report


def write_passkey_plots(report: dict, directory: str | Path) -> list[Path]:
    """passkey_heatmap_<model>.png per model and passkey_accuracy.png; returns the paths written."""
    from . import plots

    directory = Path(directory)
    paths = []
    models = list(dict.fromkeys(r["model"] for r in report["results"]))
    used: set[str] = set()
    for model in models:
        name = slug(model)
        while name in used:
            name += "_"
        used.add(name)
        paths.append(plots.passkey_heatmap(report["results"], model, directory / f"passkey_heatmap_{name}.png"))
    if report["summary"]:
        paths.append(plots.accuracy_vs_length(report["summary"], directory / "passkey_accuracy.png"))
    return paths


def passkey_table(report: dict) -> str:
    """Accuracy per model (rows) and length (columns), for the terminal."""
    return format_table(report["summary"], "accuracy", lambda v: f"{v:.2f}")
