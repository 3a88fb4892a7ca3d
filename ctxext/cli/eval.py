"""`ctxext eval passkey|perplexity|ruler`: a thin layer over ctxext.evaluation.passkey, .perplexity and .ruler."""

from __future__ import annotations

import argparse
import sys

from .options import number, positive_int

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


def comma_list(kind):
    """argparse type: a comma-separated list of `kind` values ("1024,2048")."""

    def parse(text: str) -> list:
        items = [item.strip() for item in text.split(",") if item.strip()]
        if not items:
            raise argparse.ArgumentTypeError(f"expected a comma-separated list, got {text!r}")
        return [kind(item) for item in items]

    parse.__name__ = f"list of {kind.__name__}"
    return parse


def _common(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("models", nargs="+", metavar="MODEL", help="model directories or hub ids, evaluated in turn")
    parser.add_argument("--lengths", type=comma_list(positive_int), required=True, help="prompt lengths in tokens, e.g. 1024,2048,4096")
    parser.add_argument("--output", required=True, metavar="DIR", help="directory for the results and plots")
    parser.add_argument("--resume", action="store_true", help="continue the run whose results are in DIR")
    parser.add_argument("--overwrite", action="store_true", help="replace results already in DIR")
    parser.add_argument("--device", help="cpu, cuda, cuda:1, ... (default: cuda when available)")
    parser.add_argument("--dtype", choices=("auto", "float32", "bfloat16", "float16"), default="auto",
                        help="auto: float32 on CPU, bfloat16 on CUDA")
    parser.add_argument("--batch-size", type=positive_int, help="samples per forward pass (default: by length)")
    parser.add_argument("--quiet", action="store_true", help="no progress bar")


def register(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser("eval", help="passkey retrieval, perplexity and RULER vs length",
                                   description="Evaluate models at long context: passkey retrieval, perplexity and RULER vs length.")
    commands = parser.add_subparsers(title="evaluations", metavar="EVAL", parser_class=type(parser))
    parser.set_defaults(func=lambda args: parser.print_help())

    passkey = commands.add_parser(
        "passkey", help="passkey retrieval accuracy over length x key depth",
        description="Passkey retrieval: is a 5-digit key hidden in filler text repeated exactly by greedy decoding?",
        epilog=PASSKEY_EPILOG, formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    _common(passkey)
    passkey.add_argument("--depths", type=comma_list(number), default=[0.0, 0.25, 0.5, 0.75, 1.0],
                         help="key depths from 0 (start) to 1 (end), default 0,0.25,0.5,0.75,1")
    passkey.add_argument("--trials", type=positive_int, default=5, help="keys per length and depth (default 5)")
    passkey.add_argument("--seed", type=int, default=0, help="seed of the keys (default 0)")
    passkey.add_argument("--digits", type=positive_int, default=5, help="digits of each key (default 5)")
    passkey.add_argument("--generate", action="store_true",
                         help="decode with model.generate instead of teacher forcing (same answers, slower)")
    passkey.set_defaults(func=run_passkey)

    perplexity = commands.add_parser(
        "perplexity", help="perplexity vs length with sliding windows",
        description="Perplexity at each length, with sliding windows over documents of a dataset.",
        epilog=PERPLEXITY_EPILOG, formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    _common(perplexity)
    perplexity.add_argument("--dataset", required=True, metavar="PATH_OR_NAME",
                            help="a .txt/.jsonl/.parquet file or folder, or a datasets name (pg19, ...)")
    perplexity.add_argument("--split", default="test", help="split of a datasets name (default test)")
    perplexity.add_argument("--text-field", help="column holding the text (default: text, content, ...)")
    perplexity.add_argument("--stride", type=positive_int, default=256, help="tokens between window starts (default 256)")
    perplexity.add_argument("--samples", type=positive_int, help="at most this many documents (default: all long enough)")
    perplexity.add_argument("--tokens-per-document", type=positive_int, metavar="T",
                            help="score the first T tokens of each document, T >= the longest length "
                                 "(default: the longest length); documents shorter than T are skipped")
    perplexity.set_defaults(func=run_perplexity)

    from ..evaluation.ruler.tasks import TASKS

    listing = "\n".join(f"  {name:<16} {task.description}" for name, task in TASKS.items())
    ruler = commands.add_parser(
        "ruler", help="RULER's tasks and the effective context length",
        description="RULER (Hsieh et al. 2024): needle retrieval, variable tracking, word extraction and QA "
                    "at each length, offline; scores per task and length and each model's effective length.",
        epilog=RULER_EPILOG.format(tasks=listing), formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    _common(ruler)
    ruler.add_argument("--tasks", type=comma_list(str), metavar="TASK,...", help="RULER tasks to run (default: see below)")
    ruler.add_argument("--samples", type=positive_int, default=20, help="samples per task and length (default 20)")
    ruler.add_argument("--seed", type=int, default=0, help="seed of the prompts (default 0)")
    ruler.add_argument("--threshold", type=number, default=85.6, help="score (percent) for the effective length (default 85.6)")
    ruler.add_argument("--haystack", metavar="FILE", help="a UTF-8 text file of prose for the essay haystack (default: the shipped one)")
    ruler.add_argument("--qa-file", action="append", metavar="FILE", dest="qa_files",
                       help="a SQuAD- or HotpotQA-shaped JSON file for qa_1 / qa_2 (repeat for both)")
    ruler.add_argument("--stop-at-newline", action="store_true", help="end each answer at its first line break (faster; RULER stops at EOS only)")
    ruler.add_argument("--generate", action="store_true", help="decode with model.generate instead of the batched decoder (same answers, slower)")
    ruler.set_defaults(func=run_ruler)


def _quiet(args: argparse.Namespace) -> None:
    """--quiet also silences transformers' and datasets' own progress bars (loading weights, filtering)."""
    if args.quiet:
        from transformers.utils import logging

        logging.disable_progress_bar()
        try:
            import datasets

            datasets.disable_progress_bars()
        except ImportError:
            pass


def run_passkey(args: argparse.Namespace) -> int:
    from ..evaluation.common import one_line_warnings
    from ..evaluation.passkey import evaluate_passkey, passkey_table

    _quiet(args)
    with one_line_warnings():
        report = evaluate_passkey(
            args.models, args.lengths, depths=args.depths, trials=args.trials, seed=args.seed, digits=args.digits,
            output_dir=args.output, resume=args.resume, overwrite=args.overwrite, generate=args.generate,
            device=args.device, dtype=args.dtype, batch_size=args.batch_size, progress=not args.quiet,
        )
    print(passkey_table(report))
    print(f"wrote {args.output}/passkey.json and the passkey_*.png plots", file=sys.stderr)
    return 0


def run_perplexity(args: argparse.Namespace) -> int:
    from ..evaluation.common import one_line_warnings
    from ..evaluation.perplexity import evaluate_perplexity, perplexity_table

    _quiet(args)
    with one_line_warnings():
        report = evaluate_perplexity(
            args.models, args.dataset, args.lengths, stride=args.stride, samples=args.samples,
            tokens_per_document=args.tokens_per_document, split=args.split,
            text_field=args.text_field, output_dir=args.output, resume=args.resume, overwrite=args.overwrite,
            device=args.device, dtype=args.dtype, batch_size=args.batch_size, progress=not args.quiet,
        )
    print(perplexity_table(report))
    print(f"wrote {args.output}/perplexity.json and perplexity.png", file=sys.stderr)
    return 0


def run_ruler(args: argparse.Namespace) -> int:
    from ..evaluation.common import one_line_warnings
    from ..evaluation.ruler import evaluate_ruler, ruler_table

    _quiet(args)
    with one_line_warnings():
        report = evaluate_ruler(
            args.models, args.lengths, tasks=args.tasks, samples=args.samples, seed=args.seed, threshold=args.threshold,
            haystack=args.haystack, qa_files=args.qa_files, output_dir=args.output, resume=args.resume,
            overwrite=args.overwrite, generate=args.generate, stop_at_newline=args.stop_at_newline,
            device=args.device, dtype=args.dtype, batch_size=args.batch_size, progress=not args.quiet,
        )
    print(ruler_table(report))
    print(f"wrote {args.output}/ruler.json, report.md and the ruler_*.png plots", file=sys.stderr)
    return 0
