"""Text data for perplexity and training: a local .txt/.jsonl/.json/.parquet file or a `datasets` name.

    texts = load_texts("pg19", split="test")          # hub dataset (needs network)
    texts = load_texts("notes/book.txt")              # one document per file (blank lines kept)

Returns a `datasets.Dataset` with one column, `text`, one document per row. Loading goes through
`datasets`, so hub data is cached and local files are memory-mapped, not read into Python lists.
"""

from __future__ import annotations

import contextlib
import os
from pathlib import Path
from typing import Any, Iterator

from .errors import CtxextError

TEXT_SUFFIXES = {".txt": "text", ".jsonl": "json", ".json": "json", ".parquet": "parquet"}
TEXT_FIELDS = ("text", "content", "document", "body")


@contextlib.contextmanager
def datasets_progress_bars(enabled: bool) -> Iterator[None]:
    """datasets' (process-wide) progress bars on or off inside the block, and as they were after it."""
    import datasets

    was_disabled = datasets.are_progress_bars_disabled()
    (datasets.enable_progress_bars if enabled else datasets.disable_progress_bars)()
    try:
        yield
    finally:
        (datasets.disable_progress_bars if was_disabled else datasets.enable_progress_bars)()


def load_texts(source: str | os.PathLike, split: str = "train", text_field: str | None = None) -> Any:
    """A Dataset with a single `text` column; CtxextError for a missing, empty or text-less source."""
    import datasets

    text = str(source)
    path = Path(text).expanduser()
    if path.exists():
        files = sorted(p for p in path.rglob("*") if p.suffix in TEXT_SUFFIXES) if path.is_dir() else [path]
        if not files:
            raise CtxextError(f"{text} holds no .txt, .jsonl, .json or .parquet files.")
        kinds = {TEXT_SUFFIXES.get(p.suffix) for p in files}
        if None in kinds or len(kinds) > 1:
            raise CtxextError(f"{text}: give .txt, .jsonl, .json or .parquet files of one kind.")
        (kind,) = kinds
        if kind == "text":
            # one document per file: read whole files so that a book stays one document
            dataset = datasets.Dataset.from_dict({"text": [p.read_text(encoding="utf-8") for p in files]})
        else:
            try:
                dataset = datasets.load_dataset(kind, data_files=[str(p) for p in files], split="train")
            except Exception as err:  # datasets raises many types for unreadable files
                raise CtxextError(f"Could not read {text}: {_first_line(err)}") from None
    else:
        if text.startswith((".", "/", "~")):
            raise CtxextError(f"Dataset {text!r} not found: no such file or directory.")
        try:
            dataset = datasets.load_dataset(text, split=split)
        except Exception as err:
            raise CtxextError(
                f"Could not load dataset {text!r} (split {split!r}): {_first_line(err)}"
            ) from None
    field = text_field or next((f for f in TEXT_FIELDS if f in dataset.column_names), None)
    if field is None or field not in dataset.column_names:
        raise CtxextError(
            f"Dataset {text!r} has no text column (columns: {', '.join(dataset.column_names)}); "
            "pass the column name with --text-field."
        )
    dataset = dataset.select_columns([field])
    if field != "text":
        dataset = dataset.rename_column(field, "text")
    # a progress bar for dropping blank documents is noise, and it would break one-line error output
    with datasets_progress_bars(False):
        dataset = dataset.filter(lambda row: bool(row["text"] and row["text"].strip()))
    if len(dataset) == 0:
        raise CtxextError(f"Dataset {text!r} is empty: it has no non-blank documents.")
    return dataset


def _first_line(err: BaseException) -> str:
    """The first line of an error's message, or its type when the message is empty (an empty file, say)."""
    lines = str(err).strip().splitlines()
    return lines[0] if lines else f"{type(err).__name__} (is it empty?)"
