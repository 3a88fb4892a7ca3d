"""Write outputs so that a failure or an interrupt never leaves a half-written file or directory.

    with staged_directory("out/llama-yarn", overwrite=False) as tmp:
        ...write into tmp...
    # renamed to out/llama-yarn only if the block finished

    atomic_write_json("out/eval/passkey.json", results)   # readers see the old or the new file
    save_figure(fig, "out/eval/perplexity.png")              # a matplotlib Figure, the same way
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import tempfile
from pathlib import Path
from typing import Any, Iterator

from .errors import CtxextError


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


@contextlib.contextmanager
def atomic_file(path: str | os.PathLike, suffix: str = ".tmp") -> Iterator[Path]:
    """Yield a temporary sibling of `path` to write; renamed over `path` only if the block finishes.

    `suffix` lets writers that go by the extension (matplotlib's savefig) see the right one.
    """
    path = Path(path)
    fd, name = tempfile.mkstemp(prefix=f".{path.name}.", suffix=suffix, dir=path.parent)
    os.close(fd)
    tmp = Path(name)
    try:
        yield tmp
        os.chmod(tmp, 0o666 & ~_umask())  # mkstemp makes 0600; give the file the usual permissions
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)
        raise


def save_figure(fig: Any, path: str | os.PathLike, dpi: int = 120) -> Path:
    """Write a matplotlib `Figure` as PNG through `atomic_file`, on the Agg canvas (no pyplot, no display)."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg

    FigureCanvasAgg(fig)
    with atomic_file(path, suffix=".png") as tmp:
        fig.savefig(tmp, dpi=dpi, bbox_inches="tight")
    return Path(path)


def atomic_write_text(path: str | os.PathLike, text: str) -> Path:
    """Write `text` to a temporary sibling, then rename it over `path` (atomic on one filesystem)."""
    with atomic_file(path) as tmp:
        tmp.write_text(text, encoding="utf-8")
    return Path(path)


def atomic_write_json(path: str | os.PathLike, data: Any) -> Path:
    return atomic_write_text(path, json.dumps(data, indent=2, ensure_ascii=False) + "\n")


def check_output_dir(dst: str | os.PathLike, overwrite: bool = False) -> Path:
    """Refuse an existing output (unless overwrite) or an unwritable parent, before any work starts."""
    dst = Path(dst).expanduser()
    if dst.exists() and not overwrite:
        raise CtxextError(f"Output {dst} already exists; choose another --output or pass --overwrite.")
    if dst.exists() and not dst.is_dir():
        raise CtxextError(f"Output {dst} exists and is not a directory; choose another --output.")
    parent = dst.absolute().parent
    existing = next(p for p in (parent, *parent.parents) if p.exists())
    if not existing.is_dir() or not os.access(existing, os.W_OK | os.X_OK):
        raise CtxextError(f"Cannot write to {existing}: permission denied; choose another --output.")
    return dst


@contextlib.contextmanager
def staged_directory(dst: str | os.PathLike, overwrite: bool = False) -> Iterator[Path]:
    """Yield a temporary sibling of `dst`; on success it replaces `dst`, on any error it is removed.

    Parent directories created for the output are removed again on failure, so an error leaves
    the filesystem as it found it.
    """
    dst = check_output_dir(dst, overwrite)
    created = [p for p in reversed(dst.absolute().parents) if not p.exists()]
    try:
        dst.parent.mkdir(parents=True, exist_ok=True)
        tmp = Path(tempfile.mkdtemp(prefix=f".{dst.name}.", suffix=".partial", dir=dst.parent))
        os.chmod(tmp, 0o777 & ~_umask())  # mkdtemp makes 0700
    except OSError as err:
        for path in reversed(created):
            with contextlib.suppress(OSError):
                path.rmdir()
        raise CtxextError(f"Cannot write {dst}: {err.strerror or err}; choose another --output.") from None
    try:
        yield tmp
        if dst.exists():
            old = dst.with_name(f".{dst.name}.old")
            shutil.rmtree(old, ignore_errors=True)
            os.replace(dst, old)
            os.replace(tmp, dst)
            shutil.rmtree(old, ignore_errors=True)
        else:
            os.replace(tmp, dst)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        for path in reversed(created):
            with contextlib.suppress(OSError):
                path.rmdir()
        raise
