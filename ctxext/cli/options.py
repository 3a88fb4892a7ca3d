"""What every subcommand's parser shares: one-sentence argparse errors and the value types.

Kept apart from `ctxext.cli.app` so that command modules import it without importing the
dispatcher that imports them.
"""

from __future__ import annotations

import argparse

from ..errors import CtxextError


class ArgumentError(CtxextError):
    """argparse's complaint, re-raised so that it is reported like every other bad input."""


class Parser(argparse.ArgumentParser):
    def error(self, message: str) -> None:  # argparse would print usage and exit 2 itself
        raise ArgumentError(f"{self.prog}: {message[0].upper()}{message[1:]}; see {self.prog} --help.")


def positive_int(text: str) -> int:
    """argparse type: a whole number > 0."""
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a whole number, got {text!r}") from None
    if value <= 0:
        raise argparse.ArgumentTypeError(f"expected a number greater than 0, got {value}")
    return value


def number(text: str) -> float:
    """argparse type: a finite number (range checks are the library's job)."""
    try:
        return float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a number, got {text!r}") from None
