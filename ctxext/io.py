"""Where ctxext may write, and how: the one output-safety rule, atomic files and staged directories.

    with staged_directory("out/llama-yarn", overwrite=False, sources=[model_dir]) as tmp:
        ...write into tmp...
    # renamed to out/llama-yarn only if the block finished

    atomic_write_json("out/eval/passkey.json", results)   # readers see the old or the new file
    save_figure(fig, "out/eval/perplexity.png")              # a matplotlib Figure, the same way

The rule, for every command that writes a directory (patch, train, eval, demo):

- an output that is a source of the command, lies inside one or contains one (real paths, symlinks
  followed) is refused, whatever the flags;
- an existing output is refused unless `--overwrite`, and `--overwrite` replaces only a directory
  ctxext wrote itself: one that carries the marker file `.ctxext` (written into every output
  directory ctxext creates), or an empty one. Anything else is refused, never deleted. Evaluations add
  their files to a directory, so theirs may already exist if it carries the marker (or is empty);
- a directory is built in a hidden sibling `.NAME.<random>.partial` and renamed into place at the
  end (an exchange of the two when it replaces an output); one left behind by a killed run is removed
  by the next run that writes NAME;
- one writer per output: `output_lock` holds an flock on `.NAME.lock` beside it while a command
  writes, so a second writer is refused in one sentence. The kernel releases an flock when its
  process dies, even by SIGKILL, so a killed run never blocks the next one.

A directory ctxext wrote before markers existed is not recognised (a folder that merely looks like
a checkpoint may hold a user's files); `touch DIR/.ctxext` adopts one on purpose.
"""

from __future__ import annotations

import contextlib
import ctypes
import errno
import functools
import inspect
import json
import os
import re
import shutil
import stat
import tempfile
from pathlib import Path
from typing import Any, Callable, Iterable, Iterator

from .errors import CtxextError

try:  # POSIX only; elsewhere outputs are still staged and checked, just not locked
    import fcntl
except ImportError:  # pragma: no cover - Windows
    fcntl = None  # type: ignore[assignment]

#: the file that marks a directory as ctxext's own (so `--overwrite` may replace it)
MARKER = ".ctxext"

Sources = Iterable["str | os.PathLike | None"]


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


# -- atomic files --------------------------------------------------------------------------------


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
    """Write a matplotlib `Figure` through `atomic_file`, on the Agg canvas (no pyplot, no display).

    The format follows the file's extension (PNG when it has none), as matplotlib's savefig does.
    """
    from matplotlib.backends.backend_agg import FigureCanvasAgg

    suffix = Path(path).suffix or ".png"
    FigureCanvasAgg(fig)
    with atomic_file(path, suffix=suffix) as tmp:  # a failed or interrupted save leaves no partial file
        fig.savefig(tmp, dpi=dpi, bbox_inches="tight", format=suffix.lstrip(".").lower())
    return Path(path)


def atomic_write_text(path: str | os.PathLike, text: str) -> Path:
    """Write `text` to a temporary sibling, then rename it over `path` (atomic on one filesystem)."""
    with atomic_file(path) as tmp:
        tmp.write_text(text, encoding="utf-8")
    return Path(path)


def atomic_write_json(path: str | os.PathLike, data: Any) -> Path:
    return atomic_write_text(path, json.dumps(data, indent=2, ensure_ascii=False) + "\n")


# -- the rule ------------------------------------------------------------------------------------


def is_ctxext_output(path: str | os.PathLike) -> bool:
    """True for a directory that carries ctxext's marker (a regular file, not a link)."""
    try:
        return stat.S_ISREG(os.lstat(Path(path) / MARKER).st_mode)
    except OSError:
        return False


def mark(directory: str | os.PathLike, kind: str) -> None:
    """Write ctxext's marker into a directory it created (`kind`: checkpoint, eval, demo, run)."""
    from . import __version__

    atomic_write_json(Path(directory) / MARKER, {"written_by": "ctxext", "version": __version__, "kind": kind})


def _is_empty_dir(path: Path) -> bool:
    try:
        return path.is_dir() and not path.is_symlink() and next(os.scandir(path), None) is None
    except OSError:
        return False


def removable(path: str | os.PathLike) -> bool:
    """May ctxext replace or delete this directory? Only if it wrote it (marker) or it is empty."""
    path = Path(path)
    return not path.is_symlink() and path.is_dir() and (is_ctxext_output(path) or _is_empty_dir(path))


def output_path(dst: str | os.PathLike, what: str = "--output") -> Path:
    """`dst` as a Path, refusing names that are no directory of their own ('', '.', '..', '/')."""
    text = os.fspath(dst)
    if not text.strip():
        raise CtxextError(f"{what} is empty; give the name of a new directory, such as out/.")
    name = os.path.basename(os.path.normpath(os.path.expanduser(text)))
    if name in ("", ".", ".."):
        raise CtxextError(
            f"{what} {text} is the current, parent or root directory, not a directory of its own; "
            f"give a new directory name, such as {os.path.join(text, 'out')}."
        )
    return Path(text).expanduser()


def _real(path: str | os.PathLike) -> Path:
    return Path(os.path.realpath(os.path.expanduser(os.fspath(path))))


def check_apart(dst: str | os.PathLike, sources: Sources, what: str = "--output") -> None:
    """Refuse an output that is a source, lies inside one or contains one (real paths, links followed)."""
    real = _real(dst)
    for source in sources:
        if not isinstance(source, (str, os.PathLike)) or not os.path.lexists(os.path.expanduser(os.fspath(source))):
            continue  # a hub id, an object in memory: nothing on disk to protect
        src = _real(source)
        if real == src:
            relation = "is"
        elif real.is_relative_to(src):
            relation = "lies inside"
        elif src.is_relative_to(real):
            relation = "contains"
        else:
            continue
        raise CtxextError(
            f"{what} {os.fspath(dst)} {relation} the input {os.fspath(source)}; ctxext never writes over its "
            f"own input, so choose a {what} path apart from it."
        )


def _check_parent(dst: Path, what: str) -> None:
    existing = next(p for p in (dst.absolute().parent, *dst.absolute().parents) if os.path.lexists(p))
    if not existing.is_dir():
        raise CtxextError(f"Cannot write to {existing}: it is a file, not a directory; choose another {what}.")
    if not os.access(existing, os.W_OK | os.X_OK):
        raise CtxextError(f"Cannot write to {existing}: permission denied; choose another {what}.")


def check_output_dir(
    dst: str | os.PathLike,
    overwrite: bool = False,
    *,
    sources: Sources = (),
    adds: bool = False,
    what: str = "--output",
) -> Path:
    """The output-safety rule, checked before any work starts (nothing is written); returns the path.

    `sources`: the command's inputs on disk (model directories, data files). `adds=True` for outputs
    that files are added to (evaluations): an existing directory is fine if ctxext wrote it (or it is
    empty). Otherwise an existing output needs `overwrite` and must be ctxext's own or empty.
    """
    dst = output_path(dst, what)
    check_apart(dst, sources, what)
    if dst.is_symlink():
        raise CtxextError(f"{what} {dst} is a symbolic link; give the directory itself, or a new name.")
    if dst.exists():
        if not dst.is_dir():
            raise CtxextError(f"{what} {dst} exists and is not a directory; choose another {what}.")
        if adds:
            if not removable(dst):
                raise CtxextError(
                    f"{what} {dst} already holds files that ctxext did not write (it has no {MARKER} marker); "
                    f"choose a new or empty directory (or `touch {dst / MARKER}` to adopt one ctxext wrote)."
                )
        elif not overwrite:
            raise CtxextError(f"Output {dst} already exists; choose another {what} or pass --overwrite.")
        elif not removable(dst):
            raise CtxextError(
                f"Output {dst} exists and ctxext did not write it (it has no {MARKER} marker), so even --overwrite "
                f"will not delete it; remove it yourself or choose another {what} (`touch {dst / MARKER}` adopts "
                "an output of an older ctxext)."
            )
    _check_parent(dst, what)
    return dst


def check_output_file(
    path: str | os.PathLike, *, what: str, suffixes: Iterable[str] = (), sources: Sources = ()
) -> Path:
    """A new file to write (a plot): its folder exists, it does not, and its suffix is one we can write."""
    text = os.fspath(path)
    if not text.strip():
        raise CtxextError(f"{what} is empty; give a file name, such as plot.png.")
    path = Path(text).expanduser()
    if text.endswith(os.sep) or path.is_dir():
        raise CtxextError(f"{what} {text} is a directory; give a file name, such as {os.path.join(text, 'plot.png')}.")
    check_apart(path, sources, what)
    kinds = sorted({s.lower().lstrip(".") for s in suffixes})
    if kinds and path.suffix.lower().lstrip(".") not in kinds:
        shown = ", ".join(f".{k}" for k in kinds)
        raise CtxextError(f"{what} {text}: cannot write a {path.suffix or 'suffix-less'} file; give a name ending in one of {shown}.")
    if os.path.lexists(path):
        raise CtxextError(f"{what} {text} already exists; ctxext does not overwrite files, so choose a new name.")
    parent = path.absolute().parent
    if not parent.is_dir():
        raise CtxextError(f"{what} {text}: the folder {parent} does not exist; create it first or choose another path.")
    if not os.access(parent, os.W_OK | os.X_OK):
        raise CtxextError(f"{what} {text}: cannot write to {parent} (permission denied); choose another path.")
    return path


# -- one writer per output -----------------------------------------------------------------------

#: lock file path -> [fd, depth]: a process may take the lock of an output it already holds
_HELD: dict[str, list[int]] = {}
_STAGING = r"\.{name}\.[a-z0-9_]{{8}}\.(partial|old)"
_ATOMIC_TMP = re.compile(r"\.(?P<name>.+)\.[a-z0-9_]{8}(?P<suffix>\.[A-Za-z0-9]+)")  # atomic_file's names


def _main_process() -> bool:
    """Under `accelerate launch` only the main process writes outputs, so only it takes the lock."""
    return os.environ.get("RANK", "0") in ("", "0")


def _clean_stale(dst: Path) -> None:
    """Remove what a killed writer of `dst` left: staging folders, and atomic temp files inside `dst`.

    Called with the lock held, so no live writer owns them. A folder counts as ctxext's only if it has
    the marker or is empty; an interrupted exchange's `.old` is put back when `dst` itself is missing.
    """
    pattern = re.compile(_STAGING.format(name=re.escape(dst.name)))
    with contextlib.suppress(OSError):
        for entry in os.scandir(dst.parent):
            match = pattern.fullmatch(entry.name)
            if not match or not entry.is_dir(follow_symlinks=False) or not removable(entry.path):
                continue
            if match.group(1) == "old" and not os.path.lexists(dst):
                os.rename(entry.path, dst)  # killed between the two renames of a replace: restore
            else:
                shutil.rmtree(entry.path, ignore_errors=True)
    if is_ctxext_output(dst) and not dst.is_symlink():
        with contextlib.suppress(OSError):
            for entry in os.scandir(dst):
                match = _ATOMIC_TMP.fullmatch(entry.name)
                ours = match and (match["suffix"] == ".tmp" or match["name"].endswith(match["suffix"]))
                if ours and entry.is_file(follow_symlinks=False):
                    os.unlink(entry.path)


@contextlib.contextmanager
def output_lock(dst: str | os.PathLike, what: str = "--output") -> Iterator[Path]:
    """Hold `.NAME.lock` beside `dst` (creating missing parents) while writing `dst`; refuse a second writer.

    Parents created here are removed again on the way out if they are still empty, so a refused or
    failed run leaves the filesystem as it found it. Re-entrant within one process.
    """
    dst = output_path(dst, what)
    if fcntl is None or not _main_process():
        yield dst
        return
    parent = dst.absolute().parent
    created = [p for p in reversed([parent, *parent.parents]) if not os.path.lexists(p)]
    lock = parent / f".{dst.name}.lock"
    key = os.path.realpath(lock)
    if key in _HELD:
        _HELD[key][1] += 1
        try:
            yield dst
        finally:
            _HELD[key][1] -= 1
        return
    try:
        _check_parent(dst, what)
        if created:
            try:
                parent.mkdir(parents=True, exist_ok=True)  # another writer may make it at the same moment
            except OSError as err:
                raise CtxextError(f"Cannot write {dst}: {err.strerror or err}; choose another {what}.") from None
        fd = _acquire(lock, dst, what)
    except BaseException:
        _remove_empty(created)
        raise
    _HELD[key] = [fd, 1]
    try:
        _clean_stale(dst)
        yield dst
    finally:
        del _HELD[key]
        with contextlib.suppress(OSError):
            os.unlink(lock)  # while still holding it; a waiting opener then sees a new file (see _acquire)
        os.close(fd)
        _remove_empty(created)


def _acquire(lock: Path, dst: Path, what: str) -> int:
    """An fd holding an exclusive flock on `lock`; CtxextError when another process holds it."""
    for _ in range(5):
        try:
            fd = os.open(lock, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC | getattr(os, "O_NOFOLLOW", 0), 0o644)
        except OSError as err:
            raise CtxextError(f"Cannot write {dst}: {err.strerror or err} ({lock}); choose another {what}.") from None
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            os.close(fd)
            raise CtxextError(
                f"Another ctxext process is writing {dst} (it holds {lock}); wait for it to finish or choose "
                f"another {what}."
            ) from None
        try:
            same = os.fstat(fd).st_ino == os.stat(lock).st_ino
        except FileNotFoundError:
            same = False
        if not same:  # the previous holder removed the file between our open and our flock: retry
            os.close(fd)
            continue
        content = os.pread(fd, 64, 0)
        if content and not content.startswith(b"ctxext"):
            os.close(fd)
            raise CtxextError(f"{lock} exists and is not a ctxext lock file; remove it or choose another {what}.")
        os.ftruncate(fd, 0)
        os.pwrite(fd, f"ctxext lock, pid {os.getpid()}\n".encode(), 0)
        return fd
    raise CtxextError(f"Could not lock {lock}: other processes keep replacing it; try again.")


def _remove_empty(created: list[Path]) -> None:
    for path in reversed(created):
        with contextlib.suppress(OSError):
            path.rmdir()


def one_writer(argument: str = "output_dir") -> Callable:
    """Decorator: hold `output_lock` on the function's `argument` (when not None) for the whole call.

    For the commands that write into their output over a long run (evaluations after every batch,
    training checkpoints beside the output), so that a second writer is refused before it starts.
    """

    def decorate(function: Callable) -> Callable:
        signature = inspect.signature(function)
        if argument not in signature.parameters:
            raise TypeError(f"{function.__name__} has no parameter {argument!r}")

        @functools.wraps(function)
        def wrapper(*args: Any, **kwargs: Any) -> Any:
            bound = signature.bind_partial(*args, **kwargs)
            target = bound.arguments.get(argument)
            if target is None:
                return function(*args, **kwargs)
            with output_lock(target):
                return function(*args, **kwargs)

        return wrapper

    return decorate


# -- staged directories --------------------------------------------------------------------------

_RENAME_NOREPLACE, _RENAME_EXCHANGE = 1, 2


def _renameat2(src: Path, dst: Path, flags: int) -> bool:
    """Linux renameat2(2); False where the system or filesystem lacks it (the caller falls back)."""
    function = getattr(_libc(), "renameat2", None)
    if function is None:
        return False
    at_fdcwd = -100
    if function(at_fdcwd, os.fsencode(src), at_fdcwd, os.fsencode(dst), flags) == 0:
        return True
    code = ctypes.get_errno()
    if code in (errno.ENOSYS, errno.EINVAL, errno.ENOTSUP):
        return False
    raise OSError(code, os.strerror(code), str(dst))


@functools.lru_cache(maxsize=1)
def _libc() -> Any:
    try:
        return ctypes.CDLL(None, use_errno=True)
    except (OSError, TypeError):  # pragma: no cover - no C library to open by that name (Windows)
        return None


def _move_into_place(tmp: Path, dst: Path, replace: bool) -> None:
    """Rename the finished `tmp` to `dst`: an atomic exchange when replacing the output checked at the
    start (`replace`), otherwise a rename that refuses to land on anything that appeared meanwhile."""
    if replace and os.path.lexists(dst):
        if _renameat2(tmp, dst, _RENAME_EXCHANGE):
            shutil.rmtree(tmp, ignore_errors=True)  # tmp now holds the previous output
            return
        old = Path(tempfile.mkdtemp(prefix=f".{dst.name}.", suffix=".old", dir=dst.parent))
        os.replace(dst, old)  # a killed run leaves `.NAME.*.old`, which the next run puts back
        os.replace(tmp, dst)
        shutil.rmtree(old, ignore_errors=True)
        return
    try:
        moved = _renameat2(tmp, dst, _RENAME_NOREPLACE)
    except FileExistsError:
        moved, appeared = False, True
    else:
        appeared = not moved and os.path.lexists(dst)
    if appeared:
        raise CtxextError(f"{dst} appeared while ctxext was writing it (another program made it); nothing was replaced.")
    if not moved:
        os.rename(tmp, dst)


@contextlib.contextmanager
def staged_directory(
    dst: str | os.PathLike, overwrite: bool = False, *, sources: Sources = (), kind: str = "checkpoint"
) -> Iterator[Path]:
    """Yield a marked temporary sibling of `dst`; on success it replaces `dst`, on any error it is removed.

    The output-safety rule is checked again under the lock; parent directories created for the
    output are removed again on failure, so an error leaves the filesystem as it found it.
    """
    with output_lock(dst) as dst:
        dst = check_output_dir(dst, overwrite, sources=sources)
        replace = os.path.lexists(dst)  # an output checked as ctxext's own (or empty), under the lock
        try:
            tmp = Path(tempfile.mkdtemp(prefix=f".{dst.name}.", suffix=".partial", dir=dst.parent))
            os.chmod(tmp, 0o777 & ~_umask())  # mkdtemp makes 0700
            mark(tmp, kind)
        except OSError as err:
            raise CtxextError(f"Cannot write {dst}: {err.strerror or err}; choose another --output.") from None
        try:
            yield tmp
            _move_into_place(tmp, dst, replace)
        except BaseException:
            shutil.rmtree(tmp, ignore_errors=True)
            raise


def prepare_output_dir(directory: str | os.PathLike, kind: str = "eval") -> Path:
    """Create (or adopt an empty) output directory that files are added to, and mark it as ctxext's."""
    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    if not is_ctxext_output(directory):
        mark(directory, kind)
    return directory
