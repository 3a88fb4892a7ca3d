"""Text data for perplexity and training: a local .txt/.jsonl/.json/.parquet file or a `datasets` name.

    texts = load_texts("pg19", split="test")          # hub dataset (needs network)
    texts = load_texts("notes/book.txt")              # one document per file (blank lines kept)

Returns a `datasets.Dataset` with one column, `text`, one document per row. Loading goes through
`datasets`, so hub data is cached and local files are memory-mapped, not read into Python lists.
Text files must be UTF-8; a text column must hold strings; a path that names a local file (one with
a data suffix, or under a local folder) is never looked up on the hub when it is missing.
"""

from __future__ import annotations

import contextlib
import os
from pathlib import Path
from typing import Any, Iterator

from .errors import CtxextError, first_line
from .loading import file_problem, is_hub_id

TEXT_SUFFIXES = {".txt": "text", ".jsonl": "json", ".json": "json", ".parquet": "parquet"}
TEXT_FIELDS = ("text", "content", "document", "body")
#: the `datasets` value types of a text column
TEXT_KINDS = ("string", "large_string")
#: the columns of prompt/completion data (TRL's names), read for training only
PAIR_FIELDS = ("prompt", "completion")
#: suffixes that name a local file, never a hub dataset
FILE_SUFFIXES = (*TEXT_SUFFIXES, ".csv", ".tsv", ".gz", ".zst", ".arrow", ".md")


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


@contextlib.contextmanager
def _quiet_datasets() -> Iterator[None]:
    """No progress bars or log lines from `datasets` while reading local files: a failure is then one line."""
    from datasets.utils import logging

    verbosity = logging.get_verbosity()
    logging.set_verbosity(logging.CRITICAL)  # its loaders log a failure at ERROR level, then raise it
    try:
        with datasets_progress_bars(False):
            yield
    finally:
        logging.set_verbosity(verbosity)


def _read_text(path: Path) -> str:
    try:
        return path.read_bytes().decode("utf-8")
    except UnicodeDecodeError as err:
        raise CtxextError(
            f"{path} is not UTF-8 text (byte 0x{err.object[err.start]:02x} at offset {err.start:,}); "
            "give a UTF-8 text file, or convert it first (iconv -t utf-8)."
        ) from None
    except OSError as err:
        raise CtxextError(f"Cannot read {path}: {err.strerror or err}.") from None


def _local_files(path: Path, text: str) -> list[Path]:
    problem = file_problem(path)
    if problem:
        raise CtxextError(f"Dataset {text} {problem}; give a text file or a folder of them.")
    if not path.is_dir():
        return [path]
    files = []
    for found in sorted(path.rglob("*")):
        if found.suffix in TEXT_SUFFIXES or found.is_symlink():
            problem = file_problem(found)
            if problem:
                raise CtxextError(f"{found} {problem}; remove it from the dataset folder.")
            if found.is_file() and found.suffix in TEXT_SUFFIXES:
                files.append(found)
    return files


def load_texts(source: str | os.PathLike, split: str = "train", text_field: str | None = None,
               pairs: bool = False) -> Any:
    """A Dataset with a single `text` column; CtxextError for a missing, empty or text-less source.

    pairs: a source with `prompt` and `completion` columns (and no `text_field` named) gives a Dataset
    of those two columns instead (what training with `prompt_loss_weight` reads).
    """
    import datasets

    text = os.fspath(source)
    if not text.strip():
        raise CtxextError("The dataset name is empty; give a text file, a folder of them or a datasets name.")
    path = Path(text).expanduser()
    if os.path.lexists(path):
        files = _local_files(path, text)
        if not files:
            raise CtxextError(f"{text} holds no .txt, .jsonl, .json or .parquet files.")
        kinds = {TEXT_SUFFIXES.get(p.suffix) for p in files}
        if None in kinds or len(kinds) > 1:
            raise CtxextError(f"{text}: give .txt, .jsonl, .json or .parquet files of one kind.")
        (kind,) = kinds
        with _quiet_datasets():
            if kind == "text":
                # one document per file: read whole files so that a book stays one document
                dataset = datasets.Dataset.from_dict({"text": [_read_text(p) for p in files]})
            else:
                try:
                    dataset = datasets.load_dataset(kind, data_files=[str(p) for p in files], split="train")
                except Exception as err:  # datasets raises many types for unreadable files
                    reason = first_line(err)
                    raise CtxextError(f"Could not read {text}: {reason}{' (is it empty?)' if reason == type(err).__name__ else ''}.") from None
    else:
        if text.startswith((".", "/", "~")) or path.suffix.lower() in FILE_SUFFIXES or not is_hub_id(text):
            raise CtxextError(f"Dataset {text!r} not found: no such file or directory.")
        try:
            dataset = datasets.load_dataset(text, split=split)
        except Exception as err:
            raise CtxextError(f"Could not load dataset {text!r} (split {split!r}): {first_line(err)}.") from None
    if pairs and text_field is None and all(f in dataset.column_names for f in PAIR_FIELDS):
        return prompt_completion_pairs(dataset, repr(text))
    field = text_field or next((f for f in TEXT_FIELDS if f in dataset.column_names), None)
    if field is None or field not in dataset.column_names:
        raise CtxextError(
            f"Dataset {text!r} has no text column (columns: {', '.join(dataset.column_names)}); "
            "pass the column name with --text-field."
        )
    kind = column_kind(dataset, field)
    if kind not in TEXT_KINDS:
        raise CtxextError(
            f"Column {field!r} of dataset {text!r} holds {kind} values, "
            "not text; pass the column that holds the documents with --text-field."
        )
    dataset = dataset.select_columns([field])
    if field != "text":
        dataset = dataset.rename_column(field, "text")
    # a progress bar for dropping blank documents is noise, and it would break one-line error output
    with _quiet_datasets():
        dataset = dataset.filter(lambda row: isinstance(row["text"], str) and bool(row["text"].strip()))
    if len(dataset) == 0:
        raise CtxextError(f"Dataset {text!r} is empty: it has no non-blank documents.")
    return dataset


def column_kind(dataset: Any, field: str) -> str:
    """The value type of a Dataset column, as messages name it: "string", "int64", "List", ..."""
    import datasets

    feature = dataset.features[field]
    if isinstance(feature, datasets.Value):
        return feature.dtype
    kind = type(feature).__name__
    return "List" if kind in ("Sequence", "LargeList") else kind  # datasets 3 names a list column Sequence, 4 List


def prompt_completion_pairs(dataset: Any, described: str) -> Any:
    """The `prompt` and `completion` columns of `dataset`, checked to hold text; rows without a completion dropped."""
    for field in PAIR_FIELDS:
        kind = column_kind(dataset, field)
        if kind not in TEXT_KINDS:
            raise CtxextError(
                f"Column {field!r} of dataset {described} holds {kind} "
                "values, not text; prompt/completion data needs text in both columns."
            )
    dataset = dataset.select_columns(list(PAIR_FIELDS))
    with _quiet_datasets():
        dataset = dataset.filter(lambda row: isinstance(row["prompt"], str) and isinstance(row["completion"], str)
                                 and bool(row["completion"].strip()))
    if len(dataset) == 0:
        raise CtxextError(f"Dataset {described} is empty: it has no rows with a non-blank completion.")
    return dataset
