"""`search_factors`: LongRoPE-style searched rescale factors for any rotary causal LM, one call.

    from ctxext.search import search_factors
    result = search_factors("meta-llama/Llama-2-7b-hf", 8, "pg19.jsonl", "llama2-longrope-x8",
                            objective="needle", population=16, generations=10)
    result.long_factor, result.attention_factor, result.perplexity, result.seeds

The model is loaded once; every candidate's frequencies are swapped into it in memory (see
`evaluator`). The search (see `evolution`) minimises the objective (see `objectives`) at the target
length, over the factors `longrope` can express (see `space`), seeded with what pi, ntk,
ntk-by-parts, yarn and llama3 imply. The original window is guarded: inside it stock readers use
`short_factor` (all 1 here, the original frequencies) with the same attention factor, so the
attention factor may only range where the perplexity of text inside the original window stays
within `guard_tolerance` of the base model's.

The output is a checkpoint written config-only through `patch_checkpoint(..., "longrope", ...)`
(both spellings, weights hard-linked), with `search_log.jsonl` (one record per candidate),
`search.json` (the result, the seeds, the settings), `factors.png` and a model card that records
the search. While it runs, `OUTPUT.search/` holds the state that `resume=True` continues from.
"""

from __future__ import annotations

import math
import os
import shutil
import warnings
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Callable, Sequence

from .. import __version__
from ..errors import CtxextError
from ..io import (atomic_write_json, atomic_write_text, check_apart, check_output_dir, mark, one_writer, removable,
                  staged_directory)
from ..rope.methods import check_factor, longrope_attention_factor, yarn_attention_factor
from .evolution import LOG_NAME, EvolutionSettings, Outcome, evolve, saved_run
from .objectives import OBJECTIVES
from .space import Bounds, Candidate

#: attention-factor modes besides a fixed number
ATTENTION_MODES = ("searched", "longrope", "yarn")
#: bisection steps for the largest attention factor the guard allows
GUARD_STEPS = 7


class GuardWarning(UserWarning):
    """A fixed attention factor raises perplexity inside the original window more than the guard allows."""


def state_dir(output_dir: str | os.PathLike) -> Path:
    """Where a search keeps its state until its output is complete: `OUTPUT.search`."""
    output = Path(output_dir).expanduser()
    return output.with_name(output.name + ".search")


@dataclass
class SearchResult:
    """What `search_factors` returns: the factors found, how good they are, and against what."""

    factor: float
    original_max_position_embeddings: int
    rope_theta: float
    long_factor: list[float]
    attention_factor: float
    objective: str
    length: int  # tokens per document the objective was measured at
    loss: float  # the objective: mean negative log-likelihood per scored token
    seeds: list[dict]  # per seed method: long_factor, attention_factor, loss, perplexity
    guard: dict  # inside the original window: base and searched perplexity, the limit, attention range
    generations: int
    evaluations: int
    stopped: str  # "generations" or "time"
    seconds: float
    settings: dict
    output_dir: Path | None = None
    log: list[dict] = field(default_factory=list)
    history: list[dict] = field(default_factory=list)

    @property
    def perplexity(self) -> float:
        return math.exp(self.loss)

    @property
    def short_factor(self) -> list[float]:
        return [1.0] * len(self.long_factor)

    @property
    def window(self) -> int:
        return int(round(self.original_max_position_embeddings * self.factor))

    def patch_params(self) -> dict:
        """The keyword arguments of patch_model / patch_checkpoint(..., "longrope", factor, **these)."""
        return {"long_factor": list(self.long_factor), "short_factor": self.short_factor,
                "attention_factor": self.attention_factor,
                "original_max_position_embeddings": self.original_max_position_embeddings}

    def apply(self, model: Any) -> Any:
        """Patch `model` in place with the found factors (stock longrope); returns it."""
        from ..patching.model import patch_model

        return patch_model(model, "longrope", self.factor, **self.patch_params())

    def to_json(self) -> dict:
        out = {k: v for k, v in asdict(self).items() if k not in ("log", "output_dir")}
        out["perplexity"] = self.perplexity
        out["short_factor"] = self.short_factor
        return out


def _check_int(name: str, value: Any, least: int) -> None:
    if isinstance(value, bool) or not isinstance(value, int) or value < least:
        raise CtxextError(f"{name} must be a whole number of at least {least}, got {value!r}.")


def _attention_mode(value: Any) -> str | float:
    if isinstance(value, str):
        mode = value.strip().lower()
        if mode in ATTENTION_MODES:
            return mode
        try:
            value = float(mode)
        except ValueError:
            raise CtxextError(f"attention_factor must be a number or one of {', '.join(ATTENTION_MODES)}, "
                              f"got {value!r}.") from None
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value) or value <= 0:
        raise CtxextError(f"attention_factor must be a positive number or one of {', '.join(ATTENTION_MODES)}, "
                          f"got {value!r}.")
    return float(value)


@one_writer("output_dir")  # one search writes an output (and its .search state) at a time
def search_factors(
    model: Any,
    factor: float,
    dataset: Any = None,
    output_dir: str | os.PathLike | None = None,
    *,
    objective: str = "needle",
    needle_documents: Sequence[tuple[Sequence[int], Sequence[int]]] | None = None,
    tokenizer: Any = None,
    length: int | None = None,
    samples: int = 8,
    population: int = 16,
    generations: int = 10,
    max_minutes: float | None = None,
    seed: int = 0,
    attention_factor: str | float = "searched",
    max_long_factor: float | None = None,
    guard_tolerance: float = 0.02,
    original_max_position_embeddings: int | None = None,
    replace: bool = False,
    split: str = "train",
    text_field: str | None = None,
    device: str | None = None,
    dtype: str | None = None,
    batch_tokens: int | None = None,
    resume: bool = False,
    overwrite: bool = False,
    progress: bool = True,
    on_evaluation: Callable[[dict], None] | None = None,
) -> SearchResult:
    """Search per-frequency rescale factors for `factor` x the model's window; returns a SearchResult.

    model: a hub id or checkpoint directory (loaded here; the output is then config-only), or a
        transformers causal LM in memory (with `tokenizer`), which is left patched with the result.
    dataset: long documents (a .txt/.jsonl/.parquet file or folder, a `datasets` name, a Dataset or a
        list of strings); the first `samples` with at least `length` tokens are used. For objective
        "needle", `needle_documents` (prompt ids, answer ids) may replace it.
    objective: "needle" (the answer tokens of passkey documents built from them, LongRoPE2; the
        default) or "perplexity" (every token of the documents, LongRoPE).
    length: tokens per document (default: the new window, original window x factor).
    attention_factor: "searched" (within what the guard allows), "longrope" (sqrt(1 + ln s / ln L0)),
        "yarn" (0.1 ln s + 1) or a number.
    max_long_factor: the largest rescale factor a dimension may get (default 2 x factor).
    guard_tolerance: how much perplexity inside the original window may rise over the base model's.
    output_dir, resume, overwrite: as for `finetune`; without output_dir nothing is written.
    on_evaluation: called with each candidate's log record.

    Bad input raises CtxextError with one sentence before the model is loaded, wherever it can be
    checked without it; nothing is written then.
    """
    factor = check_factor(factor)
    if factor == 1.0:
        raise CtxextError("factor must be greater than 1 for a search (1 is the original model).")
    if objective not in OBJECTIVES:
        raise CtxextError(f"Unknown objective {objective!r}; choose one of {', '.join(OBJECTIVES)}.")
    settings = EvolutionSettings(population=population, generations=generations, seed=seed, max_minutes=max_minutes)
    _check_int("samples", samples, 1)
    if length is not None:
        _check_int("length", length, 2)
    if batch_tokens is not None:
        _check_int("batch_tokens", batch_tokens, 1)
    mode = _attention_mode(attention_factor)
    if isinstance(guard_tolerance, bool) or not isinstance(guard_tolerance, (int, float)) or not (
        math.isfinite(guard_tolerance) and guard_tolerance >= 0
    ):
        raise CtxextError(f"guard_tolerance must be a number, 0 or more (0.02 = 2%), got {guard_tolerance!r}.")
    top = 2.0 * factor if max_long_factor is None else max_long_factor
    if isinstance(top, bool) or not isinstance(top, (int, float)) or not math.isfinite(top) or top < factor:
        raise CtxextError(f"max_long_factor must be a number of at least the factor ({factor:g}), got {top!r}.")
    if needle_documents is not None and objective != "needle":
        raise CtxextError("needle_documents are scored by the needle objective; pass objective='needle'.")
    if dataset is None and needle_documents is None:
        raise CtxextError("Give a dataset of long documents to search on (CLI: --dataset).")
    if dataset is not None and needle_documents is not None:
        raise CtxextError("Give a dataset or needle_documents, not both: the needle documents would replace the dataset.")
    if original_max_position_embeddings is not None:
        _check_int("original_max_position_embeddings", original_max_position_embeddings, 2)
    in_memory = not isinstance(model, (str, os.PathLike))
    from ..loading import check_source, load_model, load_tokenizer, pick_device, pick_dtype

    if not in_memory:
        source = check_source(model, weights=True)  # the model's own problems are reported first
    if resume and output_dir is None:
        raise CtxextError("resume needs the output directory of the interrupted search; pass output_dir (--output).")
    sources = [s for s in (model, dataset) if isinstance(s, (str, os.PathLike))]
    # the output rule of ctxext.io: never the model or the data, --overwrite only on ctxext's own
    output = None if output_dir is None else check_output_dir(output_dir, overwrite, sources=sources)
    states = None if output is None else state_dir(output)
    if states is not None:
        check_apart(states, sources, what="the search state")
        if os.path.lexists(states) and not removable(states):
            raise CtxextError(f"{states} exists and ctxext did not write it (it has no .ctxext marker), so it will not "
                              "use or delete it; move it away or choose another --output.")
        if states.exists() and not (resume or overwrite):
            raise CtxextError(f"{states} holds an interrupted search; pass --resume to continue it or --overwrite to "
                              "start over.")

    from ..rope.layout import read_layout

    # -- everything that can be checked before the weights load ----------------------------------
    if in_memory:
        config = getattr(model, "config", None)
        if config is None or not hasattr(model, "get_decoder"):
            raise CtxextError(f"model must be a hub id, a checkpoint directory or a transformers causal LM, "
                              f"got {type(model).__name__}.")
        source = getattr(config, "name_or_path", "") or f"{type(model).__name__} (in memory)"
        if tokenizer is None and needle_documents is None:
            raise CtxextError("A model given in memory needs its tokenizer to read the dataset; pass tokenizer=.")
        config_dict = config.to_dict()
    else:
        from ..patching.checkpoint import read_config, resolve_checkpoint

        pick_dtype(dtype, pick_device(device))
        directory = resolve_checkpoint(source)
        check_output_dir(output_dir, overwrite, sources=[directory]) if output_dir is not None else None
        config_dict = read_config(directory)
    layout = read_layout(config_dict)  # the config's own problems first
    if not in_memory:
        from ..loading import check_weights_fit

        check_weights_fit(directory)  # weights that would not load are refused before any data is read
        tokenizer = tokenizer or load_tokenizer(source)
    if layout.is_scaled and not replace:
        raise CtxextError(
            f"This {layout.model_type} model already uses {layout.describe_scaling()} RoPE scaling; pass "
            "replace=True (CLI: --replace) to search from its original window, or search the unscaled base model."
        )
    window = original_max_position_embeddings or (layout.original_max_position_embeddings if layout.is_scaled else None) \
        or layout.max_position_embeddings
    length = length or int(round(window * factor))
    if length <= window:
        raise CtxextError(f"length ({length}) must be longer than the original window ({window}): the long "
                          "factors apply only past it.")
    documents, described = _objective_documents(objective, dataset, needle_documents, tokenizer, length, samples,
                                                seed, split, text_field)

    # -- the model, unscaled -----------------------------------------------------------------------
    from ..patching.model import patch_model
    from .evaluator import DEFAULT_BATCH_TOKENS, FrequencyEvaluator
    from .objectives import fingerprint, guard_windows
    from .space import method_seeds

    if in_memory:
        target = model
    else:
        target, _ = load_model(source, device=device, dtype=dtype)
    if layout.is_scaled:  # replace: back to the original frequencies and window
        patch_model(target, "pi", 1.0, replace=True)
    evaluator = FrequencyEvaluator(target, batch_tokens or DEFAULT_BATCH_TOKENS)
    guard_docs = guard_windows(documents, window)
    try:
        previous = saved_run(states) if resume else None
        if previous and "guard" in previous:  # measured when the search began: the bounds its population obeys
            guard = {k: v for k, v in previous["guard"].items() if k != "perplexity"}
        else:
            guard = _guard(evaluator, guard_docs, factor, window, mode, guard_tolerance)
        bounds = Bounds(evaluator.n, float(top), guard["attention_low"], guard["attention_high"])
        seeds = method_seeds(evaluator.dim, evaluator.rope_theta, factor, window)
        if mode != "searched":
            seeds = [type(s)(s.method, Candidate(s.candidate.long_factor, bounds.attention_low)) for s in seeds]
        run = {
            "ctxext": __version__, "source": str(source), "factor": factor,
            "original_max_position_embeddings": window, "length": length, "objective": objective,
            "documents": fingerprint(documents), "dataset": described, "attention_factor": mode,
            "bounds": asdict(bounds), "guard_tolerance": guard_tolerance, "guard": guard,
            # what the losses depend on to the last bit: a resumed search must score the same way
            "batch_tokens": evaluator.batch_tokens, "device": evaluator.device.type,
            "dtype": str(next(target.parameters()).dtype).removeprefix("torch."),
        }
        if states is not None:
            if states.exists() and overwrite and not resume:
                shutil.rmtree(states)  # ours (marked, checked above): a previous search's state
            states.mkdir(parents=True, exist_ok=True)
            mark(states, "run")  # ctxext's own, so a later --overwrite may remove it
        outcome = evolve(lambda c: evaluator.loss(c, documents), seeds, bounds, settings, state_dir=states,
                         run=run, resume=resume, progress=progress, on_evaluation=on_evaluation)
        best = outcome.best.candidate
        guard["perplexity"] = math.exp(evaluator.loss(best, guard_docs, short=True))
    finally:
        evaluator.restore()

    result = _result(outcome, factor, window, evaluator.rope_theta, objective, length, guard, settings, mode,
                     described, len(documents), top)
    if in_memory:
        result.apply(target)
    if output is not None:
        _write_output(result, output, overwrite, states, source, in_memory, target, tokenizer, replace)
        result.output_dir = output
        shutil.rmtree(states, ignore_errors=True)
    return result


def _objective_documents(objective, dataset, needle_documents, tokenizer, length, samples, seed, split, text_field):
    """The scored sequences of the objective, and a description of where they came from."""
    from ..evaluation.perplexity import _texts
    from .objectives import given_needles, long_documents, needle_documents as build_needles, perplexity_documents

    if needle_documents is not None:
        return given_needles(needle_documents), f"{len(needle_documents)} needle documents given as token ids"
    name, texts = _texts(dataset, split, text_field)
    docs = long_documents(tokenizer, texts, length, samples, name)
    described = f"{name}: {len(docs)} documents x {length:,} tokens"
    if objective == "needle":
        return build_needles(tokenizer, docs, length, seed), described + ", a passkey hidden in each"
    return perplexity_documents(docs), described


def _guard(evaluator: Any, windows: list, factor: float, window: int, mode: str | float, tolerance: float) -> dict:
    """Base perplexity inside the original window, the limit, and the attention factors that respect it.

    Inside the original window readers use the original frequencies (short_factor 1) with the
    attention factor, so the guard bounds the attention factor alone: the largest value up to
    1 + 0.2 ln s whose perplexity there stays under the limit, found by bisection from 1 (the base
    model itself, always allowed).
    """
    ones = [1.0] * evaluator.n
    base = evaluator.loss(None, windows)
    limit = base + math.log1p(tolerance)

    def inside(af: float) -> float:
        return evaluator.loss(Candidate(tuple(ones), af), windows, short=True)

    if mode == "searched":
        low, high = 1.0, 1.0 + 0.2 * math.log(factor)
        if inside(high) > limit:
            ok, bad = 1.0, high
            for _ in range(GUARD_STEPS):
                middle = (ok + bad) / 2
                ok, bad = (middle, bad) if inside(middle) <= limit else (ok, middle)
            high = round(ok, 6)
    else:
        value = {"longrope": longrope_attention_factor(factor, window), "yarn": yarn_attention_factor(factor)}.get(mode, mode)
        low = high = float(value)
        rise = math.exp(inside(value) - base) - 1
        if rise > tolerance:
            warnings.warn(
                f"Attention factor {value:g} raises perplexity inside the original window by {rise:.1%}, more than "
                f"the guard's {tolerance:.0%}; pass attention_factor='searched' (CLI: --attention-factor searched) "
                "to keep within it.", GuardWarning, stacklevel=3)
    return {"base_perplexity": math.exp(base), "limit": math.exp(limit), "tolerance": tolerance,
            "attention_low": low, "attention_high": high, "windows": len(windows), "window": window}


def _result(outcome: Outcome, factor, window, rope_theta, objective, length, guard, settings, mode, described,
            n_documents, top) -> SearchResult:
    best = outcome.best
    seeds = [{"method": s.origin.removeprefix("seed: "), **s.candidate.to_json(), "loss": s.loss,
              "perplexity": math.exp(s.loss)} for s in outcome.seeds]
    return SearchResult(
        factor=factor, original_max_position_embeddings=window, rope_theta=rope_theta,
        long_factor=list(best.candidate.long_factor), attention_factor=best.candidate.attention_factor,
        objective=objective, length=length, loss=best.loss, seeds=seeds, guard=guard,
        generations=outcome.generations, evaluations=len(outcome.evaluated), stopped=outcome.stopped,
        seconds=outcome.seconds,
        settings={**asdict(settings), "attention_factor": mode, "max_long_factor": top, "dataset": described,
                  "documents": n_documents},
        log=[i.record() for i in outcome.evaluated], history=outcome.history,
    )


def _card_section(result: SearchResult) -> str:
    """The model card's account of the search: what was minimised, on what, for how long, against what."""
    s = result.settings
    objective = ("needle-driven perplexity (loss on the answer tokens of passkey documents, LongRoPE2)"
                 if result.objective == "needle" else "perplexity of every token (LongRoPE)")
    budget = f"population {s['population']}, {result.generations} of {s['generations']} generations"
    if s.get("max_minutes"):
        budget += f", at most {s['max_minutes']:g} minutes"
    rows = [
        ("objective", f"{objective} at {result.length:,} tokens"),
        ("data", s["dataset"]),
        ("budget", f"{budget}; {result.evaluations} candidates in {result.seconds:,.0f} s (stopped by {result.stopped})"),
        ("seed", s["seed"]),
        ("attention factor", f"{result.attention_factor:.6g} ({s['attention_factor']})"),
        ("inside the original window", f"perplexity {result.guard['perplexity']:.4f} against the base model's "
                                       f"{result.guard['base_perplexity']:.4f} (guard: at most +{result.guard['tolerance']:.0%})"),
    ]
    table = "\n".join(["| | |", "| --- | --- |", *(f"| {k} | {v} |" for k, v in rows)])
    seeds = "\n".join(["| factors | objective (perplexity) |", "| --- | --- |",
                       f"| **searched** | **{result.perplexity:.4f}** |",
                       *(f"| {x['method']} (attention factor {x['attention_factor']:.4g}) | {x['perplexity']:.4f} |"
                         for x in result.seeds)])
    factors = ", ".join(f"{x:g}" for x in result.long_factor)
    return (
        "## Factor search\n\n"
        f"The `long_factor` below was found by `ctxext search` (an evolutionary search seeded with the factors "
        f"pi, ntk, ntk-by-parts, yarn and llama3 imply; monotone, each >= 1). Past the original window "
        f"({result.original_max_position_embeddings:,} tokens) frequency i is divided by long_factor[i]; inside it "
        f"`short_factor` is all 1, the original frequencies. Every search record is in `search_log.jsonl`.\n\n"
        f"{table}\n\n{seeds}\n\n`long_factor`: [{factors}]\n\n![factors per dimension](factors.png)\n"
    )


def _write_output(result: SearchResult, output: Path, overwrite: bool, states: Path | None, source: str,
                  in_memory: bool, model: Any, tokenizer: Any, replace: bool) -> None:
    """The checkpoint (config only for a source on disk or the hub), the log, search.json, the plot, the card."""
    from ..patching.checkpoint import patch_checkpoint
    from .plots import plot_factors

    with staged_directory(output, overwrite, sources=[] if in_memory else [source]) as tmp:
        if in_memory:  # already patched with the result: its weights are saved with the new config
            model.save_pretrained(tmp)
            if tokenizer is not None:
                tokenizer.save_pretrained(tmp)
            atomic_write_text(tmp / "README.md", f"# {output.name}\n\n`{source}` with searched `longrope` factors "
                              f"x{result.factor:g} ({result.original_max_position_embeddings:,} -> {result.window:,} tokens).\n")
        else:
            patch_checkpoint(source, tmp, "longrope", result.factor, replace=replace, overwrite=True,
                             **result.patch_params())
        shutil.copy2(states / LOG_NAME, tmp / LOG_NAME)
        atomic_write_json(tmp / "search.json", result.to_json())
        plot_factors(result, tmp / "factors.png")
        card = (tmp / "README.md").read_text(encoding="utf-8")
        atomic_write_text(tmp / "README.md", card.rstrip("\n") + "\n\n" + _card_section(result))
