"""Searched rescale factors (LongRoPE): an evolutionary search over what the stock `longrope` rope type
can express, one factor per rotary frequency, seeded with pi, ntk, ntk-by-parts, yarn and llama3.

    space.py       candidates, the monotone constraint, seeds from the rules, mutation and crossover
    objectives.py  the scored documents: perplexity, needle-driven perplexity, the original-window guard
    evaluator.py   candidates scored on one model in memory by swapping its rotary frequencies
    evolution.py   the population loop: budget, progress, search_log.jsonl, resume
    plots.py       the found factors per dimension against pi, ntk and yarn
    run.py         `search_factors`, what `ctxext search` runs, and the checkpoint it writes
"""

from __future__ import annotations

from typing import Any

__all__ = ["SearchResult", "search_factors"]


def __getattr__(name: str) -> Any:
    if name in __all__:
        from . import run

        return getattr(run, name)
    raise AttributeError(f"module 'ctxext.search' has no attribute {name!r}")
