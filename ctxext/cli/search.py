"""`ctxext search`: LongRoPE-style searched rescale factors, written as a stock `longrope` checkpoint.

    ctxext search meta-llama/Llama-2-7b-hf --factor 8 --dataset book.txt --output llama2-longrope-x8

A thin layer over `ctxext.search.run.search_factors`.
"""

from __future__ import annotations

import argparse
import sys
from typing import Any

from .options import number, positive_int

EPILOG = """\
examples:
  # 8x the window, perplexity of long documents (LongRoPE); 16 candidates x 10 generations
  ctxext search meta-llama/Llama-2-7b-hf --factor 8 --dataset pg19.jsonl --output llama2-longrope-x8

  # needle-driven perplexity (LongRoPE2): a passkey hidden in each document, loss on the answer only;
  # a bigger search with a time budget, on the GPU
  ctxext search Qwen/Qwen2.5-0.5B --factor 4 --dataset book.txt --objective needle --samples 16 \\
      --population 32 --generations 20 --max-minutes 60 --output qwen-longrope-x4

  # interrupted? the same command plus --resume continues from the last generation
  ctxext search meta-llama/Llama-2-7b-hf --factor 8 --dataset pg19.jsonl --output llama2-longrope-x8 --resume

  # then fine-tune the searched checkpoint without re-patching it, and evaluate it
  ctxext train llama2-longrope-x8 --method keep --dataset pg19.jsonl --output llama2-longrope-x8-lora
  ctxext eval passkey llama2-longrope-x8 --lengths 8192,16384,32768 --output eval/

The search space is one rescale factor per rotary frequency (>= 1, non-decreasing from fast to slow
dimensions), seeded with what pi, ntk, ntk-by-parts, yarn and llama3 imply, so the result is never
worse than the best of them on the objective. Inside the original window stock readers use the
original frequencies (short_factor 1) with the same attention factor, which the guard bounds: the
base model's perplexity there may rise by at most --guard-tolerance.

writes DIR/ (config-only checkpoint with rope_type longrope in both spellings, weights hard-linked;
README.md recording the search; search.json; search_log.jsonl, one record per candidate;
factors.png); the state lives in DIR.search/ until the search completes.
"""


def register(subparsers: Any) -> None:
    p = subparsers.add_parser(
        "search",
        help="search per-dimension RoPE rescale factors (LongRoPE) and write a longrope checkpoint",
        description="Search one rescale factor per rotary frequency for FACTOR x MODEL's window with an "
        "evolutionary search on DATASET, then write a config-only checkpoint with stock rope_type longrope.",
        epilog=EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument("model", metavar="MODEL", help="hub id or local checkpoint directory")
    p.add_argument("--factor", required=True, type=number, help="new window / original window (> 1)")
    p.add_argument("--dataset", required=True, help="long documents: a .txt/.jsonl/.json/.parquet file or folder, or a datasets hub name")
    p.add_argument("--output", "-o", required=True, metavar="DIR", help="output checkpoint directory")

    objective = p.add_argument_group("objective")
    objective.add_argument("--objective", choices=("needle", "perplexity"), default="needle",
                           help="needle (default): the answer tokens of a passkey hidden in each document "
                                "(LongRoPE2); perplexity: every token (LongRoPE)")  # fmt: skip
    objective.add_argument("--samples", type=positive_int, default=8, help="documents scored per candidate (default 8)")
    objective.add_argument("--length", type=positive_int, help="tokens per document (default: the new window)")
    objective.add_argument("--attention-factor", default="searched", metavar="X",
                           help="searched (default), longrope (sqrt(1 + ln s / ln L0)), yarn (0.1 ln s + 1) or a number")
    objective.add_argument("--max-long-factor", type=number, metavar="X", help="largest factor a dimension may get (default 2 x --factor)")
    objective.add_argument("--guard-tolerance", type=number, default=0.02, metavar="X",
                           help="allowed rise of perplexity inside the original window (default 0.02 = 2%%)")
    objective.add_argument("--original-max-position-embeddings", type=positive_int, metavar="N",
                           help="the pre-training window (default: what the config records)")
    objective.add_argument("--replace", action="store_true", help="search from the original window of a model that already carries a scaling")
    objective.add_argument("--split", default="train", help="dataset split for hub datasets (default: train)")
    objective.add_argument("--text-field", help="column holding the text (default: text, content, document or body)")

    budget = p.add_argument_group("budget")
    budget.add_argument("--population", type=positive_int, default=16, help="candidates per generation (default 16)")
    budget.add_argument("--generations", type=int, default=10, help="generations after the seeds' (default 10)")
    budget.add_argument("--max-minutes", type=number, metavar="M", help="stop after M minutes (the best so far is written)")
    budget.add_argument("--seed", type=int, default=0, help="seed of the mutations and crossovers (default 0)")

    run_group = p.add_argument_group("running")
    run_group.add_argument("--device", help="cpu, cuda, cuda:1, ... (default: cuda when available)")
    run_group.add_argument("--dtype", choices=("auto", "float32", "bfloat16", "float16"), default="auto",
                           help="auto: float32 on CPU, bfloat16 on CUDA")
    run_group.add_argument("--batch-tokens", type=positive_int, help="tokens per forward pass (default 16384)")
    run_group.add_argument("--resume", action="store_true", help="continue an interrupted search from its state")
    run_group.add_argument("--overwrite", action="store_true", help="replace DIR (and an interrupted search's state)")
    run_group.add_argument("--quiet", action="store_true", help="no progress bar")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from ..search.run import search_factors, state_dir

    if args.quiet:
        from transformers.utils import logging

        logging.disable_progress_bar()
    try:
        result = search_factors(
            args.model, args.factor, args.dataset, args.output, objective=args.objective, length=args.length,
            samples=args.samples, population=args.population, generations=args.generations,
            max_minutes=args.max_minutes, seed=args.seed, attention_factor=args.attention_factor,
            max_long_factor=args.max_long_factor, guard_tolerance=args.guard_tolerance,
            original_max_position_embeddings=args.original_max_position_embeddings, replace=args.replace,
            split=args.split, text_field=args.text_field, device=args.device, dtype=args.dtype,
            batch_tokens=args.batch_tokens, resume=args.resume, overwrite=args.overwrite, progress=not args.quiet,
        )  # fmt: skip
    except KeyboardInterrupt:
        print(f"the search state is in {state_dir(args.output)}; rerun with --resume to continue", file=sys.stderr)
        raise
    print(summary(result))
    return 0


def summary(result) -> str:
    """What the terminal shows at the end: searched against the seeds, the guard, where it went."""
    name = "needle perplexity" if result.objective == "needle" else "perplexity"
    rows = [("searched", result.perplexity, result.attention_factor)]
    rows += [(s["method"], s["perplexity"], s["attention_factor"]) for s in result.seeds]
    width = max(len(r[0]) for r in rows)
    lines = [f"{name} at {result.length:,} tokens (attention factor)"]
    lines += [f"  {m:<{width}}  {p:10.4f}  ({a:.4g})" for m, p, a in rows]
    g = result.guard
    lines.append(f"inside the original window ({g['window']:,} tokens): perplexity {g['perplexity']:.4f}, "
                 f"base model {g['base_perplexity']:.4f}")
    lines.append(f"{result.evaluations} candidates, {result.generations} generations in {result.seconds:,.0f} s "
                 f"(stopped by {result.stopped}); wrote {result.output_dir}")
    return "\n".join(lines)
