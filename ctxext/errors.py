"""User-facing errors: the message is one sentence saying what was wrong and what to do.

The CLI prints these without a traceback and exits non-zero; anything else is a bug and keeps its
traceback. They subclass ValueError/TypeError so library callers can catch the usual types.
"""


class CtxextError(ValueError):
    """Bad input (a value, a file, a model) that the user can fix."""


class CtxextTypeError(CtxextError, TypeError):
    """Bad input of the wrong type (a string where a number belongs, say)."""
