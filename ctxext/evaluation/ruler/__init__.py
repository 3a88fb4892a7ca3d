"""RULER (Hsieh et al. 2024): needle retrieval, variable tracking, word extraction and QA at many lengths,
offline, and the effective context length. See tasks.py (prompts), scoring.py (scores, effective
length) and evaluate.py (`evaluate_ruler`)."""

from .evaluate import RulerRunner, evaluate_ruler, ruler_table, write_ruler_files
from .scoring import DEFAULT_THRESHOLD, effective_length, string_match_all, string_match_part
from .tasks import SYNTHETIC, TASKS, RulerPrompt, RulerPromptBuilder, build_ruler_prompts

__all__ = [
    "DEFAULT_THRESHOLD", "SYNTHETIC", "TASKS", "RulerPrompt", "RulerPromptBuilder", "RulerRunner", "build_ruler_prompts",
    "effective_length", "evaluate_ruler", "ruler_table", "string_match_all", "string_match_part", "write_ruler_files",
]
