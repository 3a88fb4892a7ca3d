"""The evaluation's pictures, drawn with matplotlib's Agg renderer (no display, no pyplot state).

    passkey_heatmap(results, "base", "eval/passkey_heatmap_base.png")   # length x depth, annotated
    accuracy_vs_length(summary, "eval/passkey_accuracy.png")            # one line per model
    perplexity_vs_length(results, "eval/perplexity.png")                # log scale, one line per model
    ruler_heatmap(summary, averages, "base", "eval/ruler_heatmap_base.png")   # task x length, annotated
    ruler_average_vs_length(averages, {"base": 4096}, 85.6, "eval/ruler_average.png")

Figures are built as `matplotlib.figure.Figure` objects rather than through pyplot, so a notebook's
backend is left alone; each file is written to a temporary name and renamed into place.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any, Sequence

from ..io import save_figure as _save


def _length_axis(ax: Any, lengths: Sequence[int]) -> None:
    """Powers of two sit evenly on a log2 axis; ticks at exactly the lengths evaluated."""
    if len(lengths) > 1:
        ax.set_xscale("log", base=2)
    ax.set_xticks(list(lengths))
    ax.set_xticklabels([str(n) for n in lengths])
    ax.minorticks_off()
    ax.set_xlabel("length (tokens)")


def passkey_heatmap(results: Sequence[dict], model: str, path: str | os.PathLike) -> Path:
    """Accuracy of one model per length (columns) and key depth (rows, start of the prompt at the top)."""
    import numpy as np
    from matplotlib.figure import Figure

    rows = [r for r in results if r["model"] == model]
    lengths = sorted({r["length"] for r in rows})
    depths = sorted({r["depth"] for r in rows})
    hits = np.zeros((len(depths), len(lengths)))
    counts = np.zeros_like(hits)
    for r in rows:
        i, j = depths.index(r["depth"]), lengths.index(r["length"])
        hits[i, j] += bool(r["correct"])
        counts[i, j] += 1
    accuracy = np.divide(hits, counts, out=np.full_like(hits, np.nan), where=counts > 0)  # [depth, length]

    fig = Figure(figsize=(1.1 * len(lengths) + 2.4, 0.55 * len(depths) + 1.8))
    ax = fig.add_subplot()
    image = ax.imshow(accuracy, cmap="RdYlGn", vmin=0.0, vmax=1.0, aspect="auto")
    for i in range(len(depths)):
        for j in range(len(lengths)):
            if counts[i, j]:
                value = accuracy[i, j]
                ax.text(j, i, f"{value:.2f}", ha="center", va="center", fontsize=9,
                        color="white" if value < 0.2 or value > 0.85 else "black")
    ax.set_xticks(range(len(lengths)), [str(n) for n in lengths])
    ax.set_yticks(range(len(depths)), [f"{d:.0%}" if d * 100 == int(d * 100) else f"{d:.1%}" for d in depths])
    ax.set_xlabel("length (tokens)")
    ax.set_ylabel("key depth")
    trials = int(counts.max()) if counts.size else 0
    ax.set_title(f"passkey retrieval: {model}\n({trials} trial{'s' if trials != 1 else ''} per cell)", fontsize=10)
    fig.colorbar(image, ax=ax, label="accuracy", fraction=0.05)
    return _save(fig, path)


def _line_per_model(ax: Any, rows: Sequence[dict], value: str) -> None:
    """One line per model of `value` against length, on the length axis."""
    for model in dict.fromkeys(r["model"] for r in rows):
        points = sorted((r["length"], r[value]) for r in rows if r["model"] == model)
        ax.plot([p[0] for p in points], [p[1] for p in points], marker="o", label=model)
    _length_axis(ax, sorted({r["length"] for r in rows}))


def accuracy_vs_length(summary: Sequence[dict], path: str | os.PathLike) -> Path:
    """Passkey accuracy (all depths) against length, one line per model."""
    from matplotlib.figure import Figure

    fig = Figure(figsize=(6.4, 4.0))
    ax = fig.add_subplot()
    _line_per_model(ax, summary, "accuracy")
    ax.set_ylim(-0.03, 1.03)
    ax.set_ylabel("passkey accuracy")
    ax.grid(True, alpha=0.3)
    ax.legend(fontsize=8)
    ax.set_title("passkey retrieval vs length", fontsize=10)
    return _save(fig, path)


def perplexity_vs_length(results: Sequence[dict], path: str | os.PathLike) -> Path:
    """Perplexity against length on a log scale, one line per model."""
    from matplotlib.figure import Figure

    fig = Figure(figsize=(6.4, 4.0))
    ax = fig.add_subplot()
    _line_per_model(ax, results, "perplexity")
    ax.set_yscale("log")
    ax.set_ylabel("perplexity (log scale)")
    ax.grid(True, which="both", alpha=0.3)
    ax.legend(fontsize=8)
    ax.set_title("perplexity vs length", fontsize=10)
    return _save(fig, path)


def ruler_heatmap(summary: Sequence[dict], averages: Sequence[dict], model: str, path: str | os.PathLike) -> Path:
    """RULER scores of one model per task (rows, the average last) and length (columns), cells annotated."""
    import numpy as np
    from matplotlib.figure import Figure

    rows = [s for s in summary if s["model"] == model]
    tasks = list(dict.fromkeys(s["task"] for s in rows))
    lengths = sorted({s["length"] for s in rows})
    scores = np.full((len(tasks) + 1, len(lengths)), np.nan)  # [task + average, length]
    for s in rows:
        scores[tasks.index(s["task"]), lengths.index(s["length"])] = s["score"]
    for a in averages:
        if a["model"] == model and a["length"] in lengths:
            scores[-1, lengths.index(a["length"])] = a["score"]

    fig = Figure(figsize=(1.1 * len(lengths) + 3.2, 0.45 * (len(tasks) + 1) + 1.8))
    ax = fig.add_subplot()
    image = ax.imshow(scores, cmap="RdYlGn", vmin=0.0, vmax=100.0, aspect="auto")
    for i in range(scores.shape[0]):
        for j in range(scores.shape[1]):
            if not np.isnan(scores[i, j]):
                value = scores[i, j]
                ax.text(j, i, f"{value:.0f}", ha="center", va="center", fontsize=9,
                        fontweight="bold" if i == len(tasks) else "normal",
                        color="white" if value < 20 or value > 85 else "black")
    ax.axhline(len(tasks) - 0.5, color="black", linewidth=1.5)
    ax.set_xticks(range(len(lengths)), [str(n) for n in lengths])
    ax.set_yticks(range(len(tasks) + 1), [*tasks, "average"])
    ax.set_xlabel("length (tokens)")
    ax.set_title(f"RULER: {model}", fontsize=10)
    fig.colorbar(image, ax=ax, label="score (%)", fraction=0.05)
    return _save(fig, path)


def ruler_average_vs_length(averages: Sequence[dict], effective: dict[str, int | None], threshold: float,
                            path: str | os.PathLike) -> Path:
    """RULER's average against length, one line per model, the threshold dashed and each effective length starred."""
    from matplotlib.figure import Figure

    fig = Figure(figsize=(6.4, 4.0))
    ax = fig.add_subplot()
    _line_per_model(ax, averages, "score")
    colors = {line.get_label(): line.get_color() for line in ax.get_lines()}
    ax.axhline(threshold, color="gray", linestyle="--", linewidth=1, label=f"threshold {threshold:g}")
    for model, length in effective.items():
        score = next((a["score"] for a in averages if a["model"] == model and a["length"] == length), None)
        if score is not None:
            ax.plot([length], [score], marker="*", markersize=15, color=colors.get(model, "black"),
                    markeredgecolor="black", linestyle="none")
    ax.set_ylim(-3, 103)
    ax.set_ylabel("RULER average (%)")
    ax.grid(True, alpha=0.3)
    ax.legend(fontsize=8)
    ax.set_title("RULER average vs length (star: effective length)", fontsize=10)
    return _save(fig, path)
