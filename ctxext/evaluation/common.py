"""What passkey and perplexity evaluation share: the models of a call, the results file, the table.

    entries = resolve_models(["base/", ("yarn-x4", model, tokenizer)])
    for entry, model, tokenizer in iterate_models(entries, device="cpu"):
        ...                                    # a source is loaded here and freed after its turn

A model is a source (a local directory or a hub id, loaded when its turn comes) or a
`(name, model, tokenizer)` triple already in memory (a patched variant, say).

The results file (`passkey.json`, `perplexity.json`) is rewritten atomically after every batch,
so an interrupted run keeps what it finished; `resume=True` reads it back and skips that work.
The output directory is created by the first write, after the first finished batch, so bad input
or a model that does not load never leaves an empty directory behind.
"""

from __future__ import annotations

import contextlib
import gc
import json
import os
import re
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Iterable, Iterator, Sequence, Union

from ..errors import CtxextError
from ..io import atomic_write_json, check_output_dir, prepare_output_dir
from ..loading import check_source, check_weights_fit, is_local, load_model, load_tokenizer, pick_device, pick_dtype

#: a model to evaluate: a local directory or hub id, or a (name, model, tokenizer) triple in memory
ModelSpec = Union[str, os.PathLike, tuple]


class LengthBeyondWindowWarning(UserWarning):
    """A length longer than the model's configured window: evaluated anyway (that is the point)."""


@dataclass
class ModelEntry:
    """One model of a call: `source` to load, or `model`/`tokenizer` already in memory."""

    name: str
    source: str | None = None
    model: Any = None
    tokenizer: Any = None

    def load_tokenizer(self) -> Any:
        if self.tokenizer is None:
            self.tokenizer = load_tokenizer(self.source)
        return self.tokenizer


def _is_triple(spec: Any) -> bool:
    return isinstance(spec, tuple) and len(spec) == 3 and isinstance(spec[0], str) and not isinstance(spec[1], (str, os.PathLike))


def resolve_models(models: ModelSpec | Sequence[ModelSpec]) -> list[ModelEntry]:
    """Validate the models of a call (no loading): sources must exist or look like hub ids, names be unique."""
    if isinstance(models, (str, os.PathLike)) or _is_triple(models):
        models = [models]
    entries = []
    for spec in models:
        if _is_triple(spec):
            name, model, tokenizer = spec
            if not callable(model) or tokenizer is None:
                raise CtxextError(f"Model {name!r} must be given as (name, model, tokenizer) with a callable model and its tokenizer.")
            entries.append(ModelEntry(name=name, model=model, tokenizer=tokenizer))
        elif isinstance(spec, (str, os.PathLike)):
            source = check_source(spec, weights=True)  # issue 10: bad weights refused before any work
            if is_local(source):  # and wrong-typed config values, with a sentence instead of a traceback
                from ..patching.checkpoint import read_config
                from ..rope.layout import check_config_types

                check_config_types(read_config(Path(source)))
                check_weights_fit(source)  # every tensor there, in its shape (headers only, on the meta device)
            entries.append(ModelEntry(name=str(spec).rstrip("/") or str(spec), source=source))
        else:
            raise CtxextError(
                f"Cannot evaluate {type(spec).__name__} {spec!r}: give a model directory, a hub id or a (name, model, tokenizer) triple."
            )
    if not entries:
        raise CtxextError("No model to evaluate; give at least one model directory or hub id.")
    names = [e.name for e in entries]
    duplicate = next((n for n in names if names.count(n) > 1), None)
    if duplicate is not None:
        raise CtxextError(f"Model name {duplicate!r} is given twice; give each model once (or distinct names to in-memory models).")
    return entries


def check_device(device: str | None, dtype: str | None) -> None:
    """Refuse a device this machine lacks or an unknown dtype before anything is loaded."""
    pick_dtype(dtype, pick_device(device))


def model_device(model: Any) -> Any:
    import torch

    device = getattr(model, "device", None)
    if isinstance(device, torch.device):
        return device
    for tensor in (*model.parameters(), *model.buffers()):
        return tensor.device
    return torch.device("cpu")


def iterate_models(
    entries: Sequence[ModelEntry], device: str | None = None, dtype: str | None = None
) -> Iterator[tuple[ModelEntry, Any, Any]]:
    """Yield (entry, model, tokenizer) in turn; a model loaded from a source is freed before the next loads."""
    for entry in entries:
        if entry.model is not None:
            yield entry, entry.model, entry.tokenizer
            continue
        model, tokenizer = load_model(entry.source, device=device, dtype=dtype)
        entry.tokenizer = tokenizer
        try:
            yield entry, model, tokenizer
        finally:
            del model
            gc.collect()
            with contextlib.suppress(Exception):
                import torch

                if torch.cuda.is_available():
                    torch.cuda.empty_cache()


def model_window(model: Any) -> int | None:
    """The window the model's config is meant for (its RoPE scaling counted), None when it has no config."""
    from ..rope.layout import read_layout

    config = getattr(model, "config", None)
    if config is None:
        return None
    try:
        return read_layout(config.to_dict()).window
    except CtxextError:  # not a RoPE model: its plain window
        window = getattr(config, "max_position_embeddings", None) or getattr(config, "n_positions", None)
        return int(window) if window else None


def warn_beyond_window(name: str, model: Any, lengths: Iterable[int]) -> None:
    """One line when some lengths exceed the model's window; they are evaluated all the same."""
    window = model_window(model)
    beyond = [n for n in lengths if window is not None and n > window]
    if beyond:
        listed = ", ".join(str(n) for n in beyond)
        warnings.warn(
            f"{name} has a {window}-token window; length{'s' if len(beyond) > 1 else ''} {listed} "
            f"{'are' if len(beyond) > 1 else 'is'} beyond it and evaluated anyway.",
            LengthBeyondWindowWarning,
            stacklevel=4,  # the caller of evaluate_*, past io.one_writer's wrapper (issue 10)
        )


def parse_lengths(lengths: Iterable[int]) -> list[int]:
    """Sorted distinct positive whole numbers, or CtxextError."""
    if isinstance(lengths, (int, str)):
        lengths = [lengths]
    out = []
    for value in lengths:
        if isinstance(value, bool) or not isinstance(value, int) or value <= 0:
            raise CtxextError(f"Lengths must be whole numbers of tokens greater than 0, got {value!r}.")
        out.append(value)
    if not out:
        raise CtxextError("Give at least one length (in tokens).")
    return sorted(set(out))


class ResultsFile:
    """`DIR/<name>.json` holding `results` records (and a summary), rewritten atomically after each batch.

    Nothing is created until the first `write`, which comes with the first finished batch: a run that
    fails before it (bad input, a model that does not load) leaves no directory behind.
    """

    def __init__(self, output_dir: str | os.PathLike | None, filename: str, resume: bool, overwrite: bool,
                 sources: Sequence[Any] = ()):
        self.path: Path | None = None
        self.results: list[dict] = []
        if output_dir is None:
            if resume:
                raise CtxextError("resume needs an output directory to continue from; pass output_dir (--output).")
            return
        # issue 10: ctxext.io's output rule (not a source, new / empty / ctxext's own directory)
        directory = check_output_dir(output_dir, overwrite, sources=sources, adds=True)
        self.path = directory / filename
        if self.path.exists() and not (resume or overwrite):
            raise CtxextError(
                f"{self.path} already exists; pass --resume to continue that run, --overwrite to start again, "
                "or choose another --output."
            )
        if self.path.exists() and resume:
            self.results = self._read()

    def _read(self) -> list[dict]:
        try:
            data = json.loads(self.path.read_text(encoding="utf-8"))
            results = data["results"]
            if not isinstance(results, list) or not all(isinstance(r, dict) for r in results):
                raise TypeError
        except (OSError, ValueError, KeyError, TypeError):
            raise CtxextError(
                f"Cannot resume from {self.path}: it is not a results file written by ctxext; "
                "pass --overwrite to start again or choose another --output."
            ) from None
        return results

    def write(self, data: dict) -> None:
        if self.path is not None:
            prepare_output_dir(self.path.parent)  # created and marked as ctxext's on the first write
            atomic_write_json(self.path, data)


def slug(name: str) -> str:
    """A file-name-safe form of a model name ("org/model-7b" -> "org_model-7b")."""
    return re.sub(r"[^A-Za-z0-9._-]+", "_", name).strip("._") or "model"


def format_table(
    rows: Sequence[dict],
    value: str,
    fmt: Callable[[Any], str],
    models: Sequence[str] | None = None,
    column: Callable[[int], str] = str,
    extra: Sequence[tuple[str, dict[str, str]]] = (),
) -> str:
    """A plain-text table: one row per model, one column per length (headed `column(length)`), `value` formatted by `fmt`.

    `extra`: more columns after the lengths, each (header, {model: cell}).
    """
    models = list(models or dict.fromkeys(r["model"] for r in rows))
    lengths = sorted({r["length"] for r in rows})
    cells = {(r["model"], r["length"]): fmt(r[value]) for r in rows}
    header = ["model", *(column(n) for n in lengths), *(name for name, _ in extra)]
    body = [[m, *(cells.get((m, n), "-") for n in lengths), *(col.get(m, "-") for _, col in extra)] for m in models]
    widths = [max(len(row[i]) for row in (header, *body)) for i in range(len(header))]
    lines = ["  ".join(c.ljust(w) if i == 0 else c.rjust(w) for i, (c, w) in enumerate(zip(row, widths))) for row in (header, *body)]
    lines.insert(1, "  ".join("-" * w for w in widths))
    return "\n".join(lines)
