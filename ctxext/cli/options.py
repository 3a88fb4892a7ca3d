"""What every subcommand's parser shares: one-sentence argparse errors and the value types.

Kept apart from `ctxext.cli.app` so that command modules import it without importing the
dispatcher that imports them.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

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


def number_list(text: str) -> list[float]:
    """argparse type: comma-separated numbers, or the path of a JSON file holding a list of numbers."""
    path = Path(text)
    if path.suffix == ".json" or path.is_file():
        try:
            value = json.loads(path.read_text(encoding="utf-8"))
        except FileNotFoundError:
            raise argparse.ArgumentTypeError(f"no such file {text!r}") from None
        except (OSError, UnicodeDecodeError, json.JSONDecodeError) as err:
            raise argparse.ArgumentTypeError(f"{text!r} is not a JSON list of numbers ({err})") from None
        if not isinstance(value, list):
            raise argparse.ArgumentTypeError(f"{text!r} holds a JSON {type(value).__name__}, not a list of numbers")
        return value
    try:
        return [float(part) for part in text.split(",") if part.strip()]
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected comma-separated numbers or a .json file, got {text!r}") from None
