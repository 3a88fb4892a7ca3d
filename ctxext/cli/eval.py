"""`ctxext eval passkey|perplexity|ruler`: a thin layer over ctxext.evaluation.passkey, .perplexity and .ruler."""

from __future__ import annotations

import argparse
import sys
from typing import Any

from ..loading import DTYPES
from .options import (
    Help, add_options, comma_list, number, option_values, positive_int, progress_bars, signature_options,
)

PASSKEY_EPILOG = """\
examples:
  ctxext eval passkey Qwen/Qwen2.5-0.5B --lengths 8192,16384,32768 --output eval/qwen
  ctxext eval passkey base/ yarn-x8/ tuned/ --lengths 2048,8192,16384 --depths 0,0.5,1 --trials 10 --output eval/cmp
  ctxext eval passkey base/ --lengths 4096 --output eval/base --resume     # continue an interrupted run

writes DIR/passkey.json (one record per sample, accuracy per model and length), one heatmap
DIR/passkey_heatmap_<model>.png per model (length x depth) and DIR/passkey_accuracy.png.
"""

PERPLEXITY_EPILOG = """\
examples:
  ctxext eval perplexity base/ yarn-x8/ --dataset pg19 --samples 20 --lengths 2048,4096,8192 --output eval/ppl
  ctxext eval perplexity base/ --dataset book.txt --lengths 512,1024 --stride 1024 --output eval/book
  ctxext eval perplexity base/ --dataset notes.jsonl --text-field body --lengths 1024 --output eval/notes

Documents with at least max(--lengths) tokens are cut to that many, so every length scores the same
tokens; windows of each length start every --stride tokens (default 256; stride = length gives
disjoint windows) and score only their new tokens. Writes DIR/perplexity.json and DIR/perplexity.png.
"""

RULER_EPILOG = """\
examples:
  ctxext eval ruler Qwen/Qwen2.5-0.5B --lengths 4096,8192,16384,32768 --output eval/ruler
  ctxext eval ruler base/ yarn-x8/ tuned/ --lengths 4096,16384,32768 --tasks niah_single_1,niah_multikey_2,vt \\
      --samples 50 --output eval/cmp
  ctxext eval ruler base/ --lengths 8192 --qa-file squad-dev-v2.0.json --qa-file hotpot_dev_distractor_v1.json \\
      --tasks qa_1,qa_2 --output eval/qa                 # your own SQuAD / HotpotQA files, nothing downloaded
  ctxext eval ruler base/ --lengths 8192 --haystack my_book.txt --output eval/book   # your own essay haystack
  ctxext eval ruler base/ --lengths 4096 --output eval/ruler --resume                # continue an interrupted run

tasks (RULER's 13; default: the 11 that need no file, plus qa_1/qa_2 for the --qa-file shapes given):
{tasks}

A length counts the prompt and the task's generation budget, as RULER does. Scores are RULER's
string match in percent; the effective length is the longest tested length at which the average
over tasks, and the average at every shorter length, is at least --threshold (RULER's 85.6).
Writes DIR/ruler.json (one record per sample; scores per task x length; averages; effective
lengths), DIR/ruler_heatmap_<model>.png, DIR/ruler_average.png and DIR/report.md.
"""


#: options every evaluation takes, from its own signature: help text here, type and default there
COMMON = {
    "resume": Help("continue the run whose results are in DIR"),
    "overwrite": Help("replace results already in DIR"),
    "device": Help("cpu, cuda, cuda:1, ... (default: cuda when available)"),
    "dtype": Help("auto (the default): float32 on CPU, bfloat16 on CUDA", choices=DTYPES),
    "batch_size": Help("samples per forward pass (default: by length)", parse=positive_int),
}
PASSKEY = {
    "depths": Help("key depths from 0 (start) to 1 (end)", parse=comma_list(number)),
    "trials": Help("keys per length and depth", parse=positive_int),
    "seed": Help("seed of the keys", parse=int),
    "digits": Help("digits of each key", parse=positive_int),
    "generate": Help("decode with model.generate instead of teacher forcing (same answers, slower)"),
    **COMMON,
}
PERPLEXITY = {
    "split": Help("split of a datasets name"),
    "text_field": Help("column holding the text (default: text, content, ...)"),
    "stride": Help("tokens between window starts", parse=positive_int),
    "samples": Help("at most this many documents (default: all long enough)", parse=positive_int),
    "tokens_per_document": Help("score the first N tokens of each document, N >= the longest length "
                                "(default: the longest length); documents shorter than N are skipped",
                                parse=positive_int),
    **COMMON,
}
RULER = {
    "tasks": Help("RULER tasks to run, comma-separated (default: see below)", parse=comma_list(str)),
    "samples": Help("samples per task and length", parse=positive_int),
    "seed": Help("seed of the prompts", parse=int),
    "threshold": Help("score (percent) the effective length asks for, RULER's", parse=number),
    "haystack": Help("a UTF-8 text file of prose for the essay haystack (default: the shipped one)"),
    "stop_at_newline": Help("end each answer at its first line break (faster; RULER stops at EOS only)"),
    "generate": Help("decode with model.generate instead of the batched decoder (same answers, slower)"),
    **COMMON,
}


def _models_and_lengths(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("models", nargs="+", metavar="MODEL", help="model directories or hub ids, evaluated in turn")
    parser.add_argument("--lengths", type=comma_list(positive_int), required=True, help="prompt lengths in tokens, e.g. 1024,2048,4096")
    parser.add_argument("--output", required=True, metavar="DIR", help="directory for the results and plots")


def register(subparsers: Any) -> None:
    from ..evaluation.passkey import evaluate_passkey
    from ..evaluation.perplexity import evaluate_perplexity

    from ..evaluation.ruler import evaluate_ruler
    from ..evaluation.ruler.tasks import TASKS

    parser = subparsers.add_parser("eval", help="passkey retrieval, perplexity and RULER vs length",
                                   description="Evaluate models at long context: passkey retrieval, perplexity and RULER vs length.")
    commands = parser.add_subparsers(title="evaluations", metavar="EVAL", parser_class=type(parser))
    parser.set_defaults(func=lambda args: parser.print_help())

    passkey = commands.add_parser(
        "passkey", help="passkey retrieval accuracy over length x key depth",
        description="Passkey retrieval: is a 5-digit key hidden in filler text repeated exactly by greedy decoding?",
        epilog=PASSKEY_EPILOG, formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    _models_and_lengths(passkey)
    options = signature_options(evaluate_passkey, PASSKEY)
    add_options(passkey, options)
    passkey.add_argument("--quiet", action="store_true", help="no progress bar")
    passkey.set_defaults(func=run_passkey, options=options)

    perplexity = commands.add_parser(
        "perplexity", help="perplexity vs length with sliding windows",
        description="Perplexity at each length, with sliding windows over documents of a dataset.",
        epilog=PERPLEXITY_EPILOG, formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    _models_and_lengths(perplexity)
    perplexity.add_argument("--dataset", required=True, metavar="PATH_OR_NAME",
                            help="a .txt/.jsonl/.parquet file or folder, or a datasets name (pg19, ...)")
    options = signature_options(evaluate_perplexity, PERPLEXITY)
    add_options(perplexity, options)
    perplexity.add_argument("--quiet", action="store_true", help="no progress bar")
    perplexity.set_defaults(func=run_perplexity, options=options)

    listing = "\n".join(f"  {name:<16} {task.description}" for name, task in TASKS.items())
    ruler = commands.add_parser(
        "ruler", help="RULER's tasks and the effective context length",
        description="RULER (Hsieh et al. 2024): needle retrieval, variable tracking, word extraction and QA "
                    "at each length, offline; scores per task and length and each model's effective length.",
        epilog=RULER_EPILOG.format(tasks=listing), formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    _models_and_lengths(ruler)
    options = signature_options(evaluate_ruler, RULER)
    add_options(ruler, options)
    ruler.add_argument("--qa-file", action="append", metavar="FILE", dest="qa_files",
                       help="a SQuAD- or HotpotQA-shaped JSON file for qa_1 / qa_2 (repeat for both)")
    ruler.add_argument("--quiet", action="store_true", help="no progress bar")
    ruler.set_defaults(func=run_ruler, options=options)


def run_passkey(args: argparse.Namespace) -> int:
    from ..evaluation.passkey import evaluate_passkey, passkey_table

    with progress_bars(not args.quiet):
        report = evaluate_passkey(args.models, args.lengths, output_dir=args.output, progress=not args.quiet,
                                  **option_values(args, args.options))
    print(passkey_table(report))
    print(f"wrote {args.output}/passkey.json and the passkey_*.png plots", file=sys.stderr)
    return 0


def run_perplexity(args: argparse.Namespace) -> int:
    from ..evaluation.perplexity import evaluate_perplexity, perplexity_table

    with progress_bars(not args.quiet):
        report = evaluate_perplexity(args.models, args.dataset, args.lengths, output_dir=args.output,
                                     progress=not args.quiet, **option_values(args, args.options))
    print(perplexity_table(report))
    print(f"wrote {args.output}/perplexity.json and perplexity.png", file=sys.stderr)
    return 0


def run_ruler(args: argparse.Namespace) -> int:
    from ..evaluation.ruler import evaluate_ruler, ruler_table

    with progress_bars(not args.quiet):
        report = evaluate_ruler(args.models, args.lengths, output_dir=args.output, progress=not args.quiet,
                                qa_files=args.qa_files, **option_values(args, args.options))
    print(ruler_table(report))
    print(f"wrote {args.output}/ruler.json, report.md and the ruler_*.png plots", file=sys.stderr)
    return 0
