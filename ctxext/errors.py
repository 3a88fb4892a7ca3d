"""User-facing errors: the message is one sentence saying what was wrong and what to do.

The CLI prints these without a traceback and exits non-zero; anything else is a bug and keeps its
traceback. They subclass ValueError/TypeError so library callers can catch the usual types.

`first_line(err)` is the one way to quote another library's exception inside such a sentence.
"""

from __future__ import annotations


class CtxextError(ValueError):
    """Bad input (a value, a file, a model) that the user can fix."""


class CtxextTypeError(CtxextError, TypeError):
    """Bad input of the wrong type (a string where a number belongs, say)."""


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
