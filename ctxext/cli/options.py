"""What every subcommand's parser shares: one-sentence argparse errors, the value types, and options
generated from the library's own typed settings.

    add_options(parser, dataclass_options(Recipe))                     # ctxext train: one per recipe field
    add_options(parser, signature_options(evaluate_passkey, {...}))    # ctxext eval: from the function's keywords
    finetune(..., **option_values(args, options))

An option's type, default and choices come from the library (a dataclass field and its metadata, or
a function's keyword and its annotation), so the command line cannot drift from what the library
does; only the help text of a function's keyword lives here. Kept apart from `ctxext.cli.app` so
that command modules import it without importing the dispatcher that imports them.
"""

from __future__ import annotations

import argparse
import contextlib
import dataclasses
import inspect
import typing
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, Callable, Iterator, Mapping
import json
from pathlib import Path

from ..errors import CtxextError


class ArgumentError(CtxextError):
    """argparse's complaint, re-raised so that it is reported like every other bad input."""


class Parser(argparse.ArgumentParser):
    def error(self, message: str) -> None:  # argparse would print usage and exit 2 itself
        raise ArgumentError(f"{self.prog}: {message[0].upper()}{message[1:]}; see {self.prog} --help.")


@contextlib.contextmanager
def progress_bars(shown: bool) -> Iterator[None]:
    """transformers' and datasets' own progress bars (loading weights, filtering) hidden inside the block
    unless `shown`, and as they were after it."""
    if shown:
        yield
        return
    from transformers.utils import logging

    from ..data import datasets_progress_bars

    was_enabled = logging.is_progress_bar_enabled()
    logging.disable_progress_bar()
    try:
        with datasets_progress_bars(False):
            yield
    finally:
        if was_enabled:
            logging.enable_progress_bar()


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


def comma_list(kind: Callable[[str], Any]) -> Callable[[str], list]:
    """argparse type: a comma-separated list of `kind` values ("1024,2048")."""

    def parse(text: str) -> list:
        items = [item.strip() for item in text.split(",") if item.strip()]
        if not items:
            raise argparse.ArgumentTypeError(f"expected a comma-separated list, got {text!r}")
        return [kind(item) for item in items]

    parse.__name__ = f"list of {kind.__name__}"
    return parse


@dataclass(frozen=True)
class Option:
    """One command-line option drawn from a library setting: `--name-with-dashes`, stored as `name`."""

    name: str
    default: Any
    kind: type  # what the value is once parsed: bool, int, float, str or list
    help: str
    group: str | None = None
    choices: Sequence[str] | None = None
    parse: Callable[[str], Any] | None = None  # argparse `type`; None = chosen from `kind`
    minimum: float | None = None


@dataclass(frozen=True)
class Help:
    """What the command line adds to a function keyword: its help text, and a parser where the type needs one."""

    text: str
    parse: Callable[[str], Any] | None = None
    choices: Sequence[str] | None = None
    group: str | None = None


def _value_type(hint: Any) -> type:
    """int for `int | None`, list for `Sequence[float]`, the hint itself otherwise."""
    args = [a for a in typing.get_args(hint) if a is not type(None)]
    origin = typing.get_origin(hint)
    if origin is not None and isinstance(origin, type) and issubclass(origin, Sequence) and origin is not str:
        return list
    if args and origin is not None and not (isinstance(origin, type) and issubclass(origin, Sequence)):
        return _value_type(args[0])
    return hint if isinstance(hint, type) else str


def dataclass_options(cls: type) -> list[Option]:
    """One option per field of a settings dataclass whose metadata holds `help` (and `group`, `choices`, `minimum`)."""
    hints = typing.get_type_hints(cls)
    options = []
    for f in dataclasses.fields(cls):
        meta = f.metadata
        options.append(Option(f.name, f.default, _value_type(hints[f.name]), meta["help"], meta.get("group"),
                              meta.get("choices"), minimum=meta.get("minimum")))
    return options


def signature_options(func: Callable, helps: Mapping[str, Help]) -> list[Option]:
    """One option per keyword of `func` named in `helps`: default and type from the signature, help from `helps`."""
    parameters = inspect.signature(func, eval_str=True).parameters
    options = []
    for name, extra in helps.items():
        parameter = parameters[name]  # a KeyError here is a typo in the command's table
        options.append(Option(name, parameter.default, _value_type(parameter.annotation), extra.text, extra.group,
                              extra.choices, extra.parse))
    return options


def _parser_type(option: Option) -> Callable[[str], Any] | None:
    if option.parse is not None:
        return option.parse
    if option.kind is int:
        return positive_int if (option.minimum or 0) >= 1 else int
    if option.kind is float:
        return number
    return None


def _shown(value: Any) -> str:
    if isinstance(value, float):
        return f"{value:g}"
    if isinstance(value, (list, tuple)):
        return ",".join(_shown(v) for v in value)
    return str(value)


def add_options(parser: argparse.ArgumentParser, options: Sequence[Option]) -> dict[str, Any]:
    """Add `options` to `parser` (in argument groups by `group`); returns the groups by name, to add more to.

    A False boolean becomes a flag (`--pose`), a True one a pair (`--gradient-checkpointing` /
    `--no-gradient-checkpointing`); the help says the default unless it is None (then the help
    text itself says what None means).
    """
    groups: dict[str, Any] = {}
    for option in options:
        target = parser
        if option.group is not None:
            if option.group not in groups:
                groups[option.group] = parser.add_argument_group(option.group)
            target = groups[option.group]
        flag = "--" + option.name.replace("_", "-")
        if option.kind is bool:
            if option.default:
                target.add_argument(flag, dest=option.name, action=argparse.BooleanOptionalAction,
                                    default=True, help=f"{option.help} (default: on)")
            else:
                target.add_argument(flag, dest=option.name, action="store_true", help=option.help)
            continue
        shown = "" if option.default is None else f" (default: {_shown(option.default)})"
        kwargs: dict[str, Any] = {"dest": option.name, "default": option.default, "help": option.help + shown}
        if option.choices:
            kwargs["choices"] = tuple(option.choices)
        parse = _parser_type(option)
        if parse is not None:
            kwargs["type"] = parse
        if option.kind in (int, float) and not option.choices:
            kwargs["metavar"] = "N" if option.kind is int else "X"
        target.add_argument(flag, **kwargs)
    return groups


def option_values(args: argparse.Namespace, options: Sequence[Option]) -> dict[str, Any]:
    """The parsed values of `options`, by their library names (to pass on as keywords)."""
    return {option.name: getattr(args, option.name) for option in options}


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
