"""The picture of a search: the found rescale factor per rotary dimension against pi, ntk and yarn.

    plot_factors(result, "factors.png")

Drawn as a `matplotlib.figure.Figure` (no pyplot state) and written atomically, like the evaluation's
plots. The x axis is the rotary frequency index (fast dimensions on the left), the y axis the factor
lambda_i that divides the frequency past the original window, on a log scale from 1 (kept) to the
factor and beyond (interpolated); the top axis gives each dimension's original wavelength in tokens.
"""

from __future__ import annotations

import math
import os
from pathlib import Path
from typing import Any

from ..evaluation.plots import _save

#: the rules drawn next to the searched factors, and how
RULES = {"pi": ("tab:red", ":"), "ntk": ("tab:green", "--"), "yarn": ("tab:orange", "-.")}


def plot_factors(result: Any, path: str | os.PathLike) -> Path:
    """`result`: a SearchResult (its factors, seeds, factor, window and losses)."""
    from matplotlib.figure import Figure

    n = len(result.long_factor)
    dims = list(range(n))
    fig = Figure(figsize=(7.5, 4.4))
    ax = fig.add_subplot()
    seeds = {s["method"]: s for s in result.seeds}
    for method, (color, style) in RULES.items():
        if method in seeds:
            ax.plot(dims, seeds[method]["long_factor"], color=color, ls=style, lw=1.8, zorder=2,
                    label=f"{method} (objective {seeds[method]['perplexity']:.4f})")
    ax.plot(dims, result.long_factor, color="tab:blue", marker="o", ms=4, lw=2, zorder=3,
            label=f"searched (objective {result.perplexity:.4f})")
    ax.axhline(result.factor, color="0.75", lw=0.8, zorder=1)
    ax.axhline(1.0, color="0.75", lw=0.8, zorder=1)
    ax.set_yscale("log", base=2)
    ax.set_xlabel("rotary frequency i, fast to slow (top: its original wavelength in tokens)")
    ax.set_ylabel("rescale factor lambda_i (log scale)")
    ax.set_xlim(-0.5, n - 0.5)
    wavelengths = [2 * math.pi * result.rope_theta ** (2 * i / (2 * n)) for i in dims]
    top = ax.secondary_xaxis("top")
    ticks = dims[:: max(1, n // 6)]
    top.set_xticks(ticks, [f"{wavelengths[i]:,.0f}" for i in ticks])
    top.tick_params(labelsize=8)
    objective = "needle-driven perplexity" if result.objective == "needle" else "perplexity"
    ax.set_title(f"searched factors x{result.factor:g} ({result.original_max_position_embeddings:,} -> "
                 f"{result.window:,} tokens); objective: {objective} at {result.length:,}", fontsize=9, pad=12)
    ax.grid(True, which="both", alpha=0.3)
    ax.legend(fontsize=8, loc="upper left")
    return _save(fig, path)
