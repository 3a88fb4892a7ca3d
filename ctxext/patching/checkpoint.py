"""Patch a checkpoint on disk by rewriting its config only: the weights are never loaded.

    patch_checkpoint("meta-llama/Llama-2-7b-hf", "llama2-yarn-x8", "yarn", 8)

Weight files are hard-linked into the output when it is on the same filesystem (no extra disk, no
copy time) and copied otherwise; pickle weights (`*.bin`) are carried as files, never unpickled.
Tokenizer files, generation config and everything else come along unchanged; config.json is
rewritten with the rules of `ctxext.rope.plan` and README.md becomes a model card (the original
card, if any, is kept as README.base.md). The output is built in a temporary sibling directory and
renamed at the end, so an error leaves nothing behind. No torch is imported for the model types whose
config alone is proven to say everything (`ctxext.patching.verify`); any other is patched on the model its
config builds (parameters on the meta device, no weights read) and checked against a stock build of the
written config before anything is carried.
"""

from __future__ import annotations

import json
import os
import shutil
import warnings
from pathlib import Path
from typing import Any

from .card import render_model_card
from .verify import check_checkpoint_patch, needs_model_check
from ..errors import CtxextError, first_line
from ..io import atomic_write_text, check_output_dir, staged_directory
from ..loading import check_files, check_source, is_local
from ..rope.methods import Scaling, resolve
from ..rope.plan import RopePatch, patched_config_dict, plan_patch
from ..rope.layout import read_layout
from ..rope.readers import ReaderWarning, reader_notes

#: files at least this large are hard-linked (weights); smaller ones are copied (and so independent)
LINK_THRESHOLD = 1 << 20

#: hub files not needed to load the model with transformers (Meta's original/ consolidated weights...)
HUB_IGNORE = ["original/*", "*.pth", "*.gguf", "*.onnx", "onnx/*", "*.h5", "*.msgpack", "*.ot", ".*"]


def resolve_checkpoint(source: str | os.PathLike, revision: str | None = None) -> Path:
    """A local directory as is; a hub id downloaded (or found in the cache) through huggingface_hub."""
    source = check_source(source)
    if is_local(source):
        return Path(source)
    from huggingface_hub import snapshot_download

    try:
        directory = Path(snapshot_download(source, revision=revision, ignore_patterns=HUB_IGNORE))
    except Exception as err:  # network, auth, missing repo: huggingface_hub raises many types
        raise CtxextError(f"{source} is not a local directory, and fetching it from the Hugging Face hub failed "
                          f"({first_line(err)}); check the path or the model id.") from None
    check_files(directory)  # a snapshot is links into the cache's blobs: none may be broken
    return directory


def read_config(directory: Path) -> dict[str, Any]:
    path = directory / "config.json"
    try:
        config = json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise CtxextError(f"{directory} has no config.json; give a Hugging Face checkpoint directory.") from None
    except (json.JSONDecodeError, UnicodeDecodeError) as err:
        raise CtxextError(f"{path} is not valid JSON ({first_line(err)}); fix or replace it.") from None
    except OSError as err:
        raise CtxextError(f"Cannot read {path}: {err.strerror or err}; give a Hugging Face checkpoint directory.") from None
    if not isinstance(config, dict):
        raise CtxextError(f"{path} does not hold a JSON object; give a Hugging Face checkpoint directory.")
    return config


def plan_checkpoint(
    config: dict[str, Any], scaling: Scaling, replace: bool = False
) -> RopePatch:
    """The RopePatch for a config dict; refuses what a stock config cannot express."""
    if scaling.spec.rope_type is None:
        raise CtxextError(
            f"{scaling.method} cannot be written into a stock config (readers would load static YaRN); "
            "use yarn for a checkpoint, or patch_model(model, 'dynamic-yarn', factor) in memory."
        )
    return plan_patch(read_layout(config), scaling, replace=replace)


def _carry(src: Path, dst: Path) -> str:
    """Hard-link a large file (copy when linking is impossible), copy a small one; returns how."""
    real = src.resolve()  # hub caches hold symlinks to blobs: link the blob itself
    try:
        if real.stat().st_size >= LINK_THRESHOLD:
            try:
                os.link(real, dst)
                return "linked"
            except OSError:  # another filesystem, or links not allowed: fall back to a copy
                pass
        shutil.copy2(real, dst)
    except OSError as err:  # unreadable source file, a full disk
        raise CtxextError(f"Cannot copy {src} into the output: {err.strerror or err}.") from None
    return "copied"


def patch_checkpoint(
    src: str | os.PathLike,
    dst: str | os.PathLike,
    method: str,
    factor: float,
    *,
    original_max_position_embeddings: int | None = None,
    replace: bool = False,
    overwrite: bool = False,
    revision: str | None = None,
    **params: float | None,
) -> Path:
    """Write a copy of checkpoint `src` scaled by `method` x `factor` to `dst`; returns `dst`.

    Same arguments and rules as `patch_model` (replace=True discards an existing scaling), plus
    `overwrite` to replace an existing `dst` and `revision` for hub sources. Everything is validated
    before the output is created; on any error nothing is left behind. Warns (ReaderWarning) where a
    reader would run the result differently from transformers v5 (see ctxext.rope.readers).
    """
    scaling = resolve(method, factor, original_max_position_embeddings, **params)
    source = check_source(src)  # a local folder checked, or a hub id's shape (nothing downloaded yet)
    dst = check_output_dir(dst, overwrite, sources=[source])  # before a hub download
    directory = resolve_checkpoint(source, revision)
    check_output_dir(dst, overwrite, sources=[directory])  # the real directory, a hub snapshot included
    config = read_config(directory)
    patch = plan_checkpoint(config, scaling, replace)
    new_config = patched_config_dict(config, patch)
    with staged_directory(dst, overwrite, sources=[directory]) as tmp:
        atomic_write_text(tmp / "config.json", json.dumps(new_config, indent=2, ensure_ascii=False) + "\n")
        if needs_model_check(config):  # before any weight is carried: a refusal costs nothing
            check_checkpoint_patch(directory, tmp, new_config, patch, scaling, replace, params)
        for path in sorted(directory.rglob("*")):
            relative = path.relative_to(directory)
            if path.is_dir() or relative.parts[0].startswith("."):
                continue
            target = tmp / relative
            target.parent.mkdir(parents=True, exist_ok=True)
            if relative == Path("config.json"):
                continue
            if relative == Path("README.md"):
                target = tmp / "README.base.md"
            _carry(path, target)
        notes = reader_notes(new_config)
        card = render_model_card(str(src), patch, name=dst.name, notes=notes)
        atomic_write_text(tmp / "README.md", card)
    for note in notes:
        warnings.warn(note, ReaderWarning, stacklevel=2)
    return dst
