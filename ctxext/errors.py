"""Errors that say truly whose fault they are, in one sentence.

- `CtxextError`: the user's input (a value, a file, a model, a path) is wrong; the sentence says what
  and what to do. They subclass ValueError/TypeError so library callers can catch the usual types.
- `InternalError`: ctxext or one of its libraries failed on input that passed ctxext's checks; the
  sentence names the package and its version (`internal_error`), says that the input is not at fault
  and asks for a report, with the traceback that CTXEXT_DEBUG=1 shows.

The CLI prints either without a traceback and exits non-zero (2 for input, 1 for an internal error).
`first_line(err)` is the one way to quote another library's exception inside such a sentence.
"""

from __future__ import annotations

import sys
from functools import lru_cache


class CtxextError(ValueError):
    """Bad input (a value, a file, a model) that the user can fix."""


class CtxextTypeError(CtxextError, TypeError):
    """Bad input of the wrong type (a string where a number belongs, say)."""


class InternalError(RuntimeError):
    """A failure of ctxext or one of its libraries, not of the user's input; `internal_error` builds it."""


def first_line(err: BaseException, last: bool = False) -> str:
    """An exception's message reduced to one line for quoting: no trailing period, never empty.

    The first non-blank line (`last=True`: the last one, where validation libraries put the reason);
    the exception's type name when the message is blank (an empty file often raises one of those).
    """
    lines = [line.strip() for line in str(err).splitlines() if line.strip()]
    if not lines:
        return type(err).__name__
    text = lines[-1] if last else lines[0]
    return text.rstrip(". ") or type(err).__name__


@lru_cache(maxsize=None)
def installed(package: str) -> str | None:
    """'transformers 5.25.0' for an importable top-level package; None for the standard library and for code in
    no installed distribution (a script, a test)."""
    from importlib.metadata import packages_distributions, version

    if package in sys.stdlib_module_names:
        return None
    for name in packages_distributions().get(package) or [package]:  # an editable install maps no package
        try:
            return f"{name} {version(name)}"
        except Exception:  # importlib.metadata.PackageNotFoundError
            continue
    return None  # a script or test module, in no installed distribution


def culprit(err: BaseException) -> str:
    """The package whose code raised `err`, with its version, as ctxext called it.

    The traceback is read from the outside in: the first package frame that is not ctxext's, after the
    last ctxext frame, is the library ctxext called ('transformers 5.25.0'); when the error was raised
    deeper, in another package, that one is named too ('transformers 5.25.0, in kernels 0.19.1'). An
    error raised in ctxext's own code names ctxext.
    """
    packages = []
    tb = err.__traceback__
    while tb is not None:
        module = tb.tb_frame.f_globals.get("__name__") or ""
        name = installed(module.split(".")[0]) if module else None
        if name is not None:
            packages.append((module.split(".")[0], name))
        tb = tb.tb_next
    if not packages:
        return installed("ctxext") or "ctxext"
    last_ours = max((i for i, (top, _) in enumerate(packages) if top == "ctxext"), default=-1)
    called = packages[last_ours + 1:] or packages[last_ours:]
    outer, inner = called[0][1], called[-1][1]
    return outer if outer == inner else f"{outer}, in {inner}"


def internal_error(err: BaseException, doing: str) -> InternalError:
    """The one sentence for a failure that is not the user's: who failed, while doing what, and what to do."""
    return InternalError(
        f"Internal error in {culprit(err)} while {doing} ({type(err).__name__}: {first_line(err)}); your input is not "
        "at fault as far as ctxext can tell: please report this, with the traceback that CTXEXT_DEBUG=1 prints."
    )
