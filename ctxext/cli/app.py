"""The `ctxext` command line: a thin map from subcommands to library functions.

    ctxext --help
    ctxext patch meta-llama/Llama-2-7b-hf --method yarn --factor 8 --output llama2-yarn-x8

Each subcommand lives in `ctxext/cli/<name>.py` and exposes `register(subparsers)`, which adds
its parser and sets `func`. Heavy imports (torch, transformers) happen inside `func`, so config-only
commands start fast. Bad input raises CtxextError: one sentence on stderr, exit status 2, no
traceback (set CTXEXT_DEBUG=1 to see one).
"""

from __future__ import annotations

import argparse
import importlib
import os
import sys

from .. import __version__
from ..errors import CtxextError
from .options import Parser

#: subcommands in the order `ctxext --help` lists them
COMMANDS: tuple[str, ...] = ("demo", "patch", "info", "eval", "train", "search")

EPILOG = """\
examples:
  ctxext demo                 the whole loop on the embedded tiny model, offline, in minutes
  ctxext patch meta-llama/Llama-2-7b-hf --method yarn --factor 8 --output llama2-yarn-x8
  ctxext info llama2-yarn-x8
  ctxext eval passkey meta-llama/Llama-2-7b-hf llama2-yarn-x8 --lengths 2048,8192 --output eval/
  ctxext train meta-llama/Llama-2-7b-hf --method yarn --factor 8 --dataset book.txt --output llama2-yarn-x8-tuned
  ctxext search meta-llama/Llama-2-7b-hf --factor 8 --dataset book.txt --output llama2-longrope-x8
  ctxext <command> --help     worked examples for each command
"""


def build_parser() -> argparse.ArgumentParser:
    parser = Parser(
        prog="ctxext",
        description="Extend the context window of RoPE language models: patch, fine-tune, evaluate, search factors.",
        epilog=EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("--version", action="version", version=f"ctxext {__version__}")
    subparsers = parser.add_subparsers(title="commands", metavar="COMMAND", parser_class=Parser)
    for name in COMMANDS:
        importlib.import_module(f"ctxext.cli.{name}").register(subparsers)
    return parser


def main(argv: list[str] | None = None) -> int:
    try:
        args = build_parser().parse_args(argv)
        if not hasattr(args, "func"):
            build_parser().print_help()
            return 0
        result = args.func(args)
        return int(result or 0)
    except CtxextError as err:
        if os.environ.get("CTXEXT_DEBUG"):
            raise
        print(f"error: {err}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
