"""RULER's scores: string match per sample, the mean per task x length, the average per length, and the
effective length.

    string_match_all("It is 123 and 456.", ["123", "789"])   # 50.0: half the expected strings are there
    string_match_part("Paris, France", ["Paris", "Lyon"])    # 100.0: one of the references is there
    effective_length({4096: 91.2, 8192: 88.0, 16384: 80.1})  # 8192

The metrics are RULER's (scripts/eval/synthetic/constants.py): case-insensitive substring match on
the prediction, which is first stripped and has control characters turned into newlines (RULER's
postprocess_pred). `string_match_all` (the fraction of the expected strings found) scores every task
but question answering, which `string_match_part` scores (1 if any reference answer is found). Scores
are percentages, as RULER reports them, so a sample of a four-value task scores 0, 25, 50, 75 or 100.

The **effective length** at a threshold (RULER: 85.6, Llama-2-7B's average at 4K) is the longest
tested length L such that the model's average over the tasks is at or above the threshold at L and
at every shorter tested length. RULER states it as the longest length whose score exceeds the
threshold, counting a score equal to it (its table underlines Qwen3-32B's 85.6 at 128K); requiring the
shorter lengths too only differs where a model fails a length and passes a longer one, which RULER's
tables do not show. `None` when even the shortest length is below the threshold.
"""

from __future__ import annotations

import re
from typing import Iterable, Sequence

#: RULER's threshold: Llama-2-7B's average at 4K
DEFAULT_THRESHOLD = 85.6
_CONTROL = re.compile(r"[\x00-\x1f]")


def clean_prediction(text: str) -> str:
    """RULER's postprocess_pred: strip, control characters to newlines, strip again."""
    return _CONTROL.sub("\n", text.strip()).strip()


def string_match_all(prediction: str, expected: Sequence[str]) -> float:
    """Percent of the expected strings found in the prediction (case-insensitive)."""
    found = clean_prediction(prediction).lower()
    return 100.0 * sum(e.lower() in found for e in expected) / len(expected)


def string_match_part(prediction: str, expected: Sequence[str]) -> float:
    """100 if any expected string is found in the prediction (case-insensitive), else 0."""
    found = clean_prediction(prediction).lower()
    return 100.0 if any(e.lower() in found for e in expected) else 0.0


METRICS = {"all": string_match_all, "part": string_match_part}


def score(metric: str, prediction: str, expected: Sequence[str]) -> float:
    return METRICS[metric](prediction, expected)


def _mean(values: Sequence[float]) -> float:
    return round(sum(values) / len(values), 2)


def summarize(results: Sequence[dict]) -> list[dict]:
    """Mean score per (model, task, length), models in order of appearance, then task and length order."""
    cells: dict[tuple[str, str, int], list[float]] = {}
    for r in results:
        cells.setdefault((r["model"], r["task"], r["length"]), []).append(float(r["score"]))
    models = list(dict.fromkeys(r["model"] for r in results))
    tasks = list(dict.fromkeys(r["task"] for r in results))
    return [
        {"model": m, "task": t, "length": n, "score": _mean(v), "samples": len(v)}
        for (m, t, n), v in sorted(cells.items(), key=lambda kv: (models.index(kv[0][0]), tasks.index(kv[0][1]), kv[0][2]))
    ]


def average(summary: Sequence[dict]) -> list[dict]:
    """Mean over tasks of the per-task scores, per (model, length): RULER's average (each task counts once)."""
    cells: dict[tuple[str, int], list[float]] = {}
    for s in summary:
        cells.setdefault((s["model"], s["length"]), []).append(s["score"])
    models = list(dict.fromkeys(s["model"] for s in summary))
    return [
        {"model": m, "length": n, "score": _mean(v), "tasks": len(v)}
        for (m, n), v in sorted(cells.items(), key=lambda kv: (models.index(kv[0][0]), kv[0][1]))
    ]


def effective_length(scores: dict[int, float], threshold: float = DEFAULT_THRESHOLD) -> int | None:
    """The longest tested length whose average, and every shorter tested length's, is >= threshold."""
    best = None
    for length in sorted(scores):
        if scores[length] < threshold:
            break
        best = length
    return best


def effective_lengths(averages: Iterable[dict], threshold: float = DEFAULT_THRESHOLD) -> dict[str, int | None]:
    """effective_length per model of `average()`'s rows."""
    per_model: dict[str, dict[int, float]] = {}
    for row in averages:
        per_model.setdefault(row["model"], {})[row["length"]] = row["score"]
    return {model: effective_length(scores, threshold) for model, scores in per_model.items()}


def describe(effective: int | None, lengths: Sequence[int]) -> str:
    """How a table shows an effective length: "<4096" below the shortest, "4096+" when all pass (RULER's ">")."""
    if effective is None:
        return f"<{min(lengths)}" if lengths else "-"
    return f"{effective}+" if lengths and effective == max(lengths) else str(effective)
