"""The `ctxext` command line: a thin map from subcommands to library functions.

    ctxext --help
    ctxext patch meta-llama/Llama-2-7b-hf --method yarn --factor 8 --output llama2-yarn-x8

Each subcommand lives in `ctxext/cli/<name>.py` and exposes `register(subparsers)`, which adds
its parser and sets `func`. Heavy imports (torch, transformers) happen inside `func`, so config-only
commands start fast. Bad input raises CtxextError: one sentence on stderr, exit status 2, no
traceback. A failure that is not the input's (ctxext's own, or a library's) is one sentence too,
naming the package and version it came from and asking for a report, exit status 1. Set
CTXEXT_DEBUG=1 to see the traceback of either.
"""

from __future__ import annotations

import argparse
import importlib
import os
import sys
import warnings

from .. import __version__
from ..errors import CtxextError, InternalError, first_line, internal_error
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


def _show_warning(message, category, filename, lineno, file=None, line=None) -> None:  # noqa: ANN001
    """Every warning as one `warning: ...` line on stderr (above a progress bar, if one is drawn)."""
    text = "warning: " + " ".join(str(message).split())
    tqdm = sys.modules.get("tqdm")
    if tqdm is not None:
        tqdm.tqdm.write(text, file=file or sys.stderr)
    else:
        print(text, file=file or sys.stderr)


def main(argv: list[str] | None = None) -> int:
    shown = warnings.showwarning
    warnings.showwarning = _show_warning
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
    except OSError as err:  # the machine, not the input: a full disk, a file removed under our feet
        if os.environ.get("CTXEXT_DEBUG") or isinstance(err, BrokenPipeError):
            raise
        where = f" ({err.filename})" if getattr(err, "filename", None) else ""
        print(f"error: {err.strerror or first_line(err)}{where}.", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 130
    except Exception as err:  # not the input's fault: ctxext's or a library's, named with its version
        if os.environ.get("CTXEXT_DEBUG"):
            raise
        words = list(argv if argv is not None else sys.argv[1:])[:2]
        command = " ".join(words if words[:1] == ["eval"] else words[:1])
        error = err if isinstance(err, InternalError) else internal_error(err, f"running `ctxext {command}`")
        print(f"error: {error}", file=sys.stderr)
        return 1
    finally:
        warnings.showwarning = shown


if __name__ == "__main__":
    sys.exit(main())
