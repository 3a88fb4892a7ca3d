"""ctxext.io: the output-safety rule, staged directories (exchange and fallback), stale staging, the lock."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

import ctxext.io as io
from ctxext.errors import CtxextError
from ctxext.io import (MARKER, check_output_dir, check_output_file, one_writer, output_lock, prepare_output_dir,
                       staged_directory)

ROOT = Path(__file__).resolve().parents[1]


def names(folder: Path) -> list[str]:
    return sorted(p.name for p in folder.iterdir())


@pytest.fixture
def place(tmp_path):
    """A source model folder, a user's folder, a ctxext output, an empty folder and a file."""
    (tmp_path / "parent" / "model").mkdir(parents=True)
    (tmp_path / "parent" / "model" / "config.json").write_text("{}")
    (tmp_path / "parent" / "unrelated.txt").write_text("mine")
    (tmp_path / "user").mkdir()
    (tmp_path / "user" / "notes.txt").write_text("mine")
    (tmp_path / "ours").mkdir()
    io.mark(tmp_path / "ours", "checkpoint")
    (tmp_path / "ours" / "config.json").write_text("{}")
    (tmp_path / "empty").mkdir()
    (tmp_path / "afile").write_text("x")
    os.symlink(tmp_path / "parent" / "model", tmp_path / "model-link")
    return tmp_path


@pytest.mark.parametrize("output, overwrite, message", [
    ("", False, "--output is empty"),
    (".", True, "is the current, parent or root directory"),
    ("..", True, "is the current, parent or root directory"),
    ("/", True, "is the current, parent or root directory"),
    ("{t}/user/..", True, "contains the input"),
    ("{t}/parent/model", True, "is the input"),
    ("{t}/model-link", True, "is the input"),
    ("{t}/model-link/out", False, "lies inside the input"),
    ("{t}/parent", True, "contains the input"),
    ("{t}/user", False, "already exists; choose another --output or pass --overwrite"),
    ("{t}/user", True, "ctxext did not write it (it has no .ctxext marker), so even --overwrite will not delete it"),
    ("{t}/ours", False, "already exists"),
    ("{t}/afile", True, "exists and is not a directory"),
    ("{t}/afile/out", False, "it is a file, not a directory"),
])
def test_the_rule_refuses(output, overwrite, message, place, monkeypatch):
    monkeypatch.chdir(place / "user")
    with pytest.raises(CtxextError) as refused:
        check_output_dir(output.format(t=place), overwrite, sources=[place / "parent" / "model"])
    assert message in str(refused.value)


def test_the_rule_allows_new_empty_and_own_outputs(place):
    sources = [place / "parent" / "model", "org/hub-id", None]
    assert check_output_dir(place / "new" / "deep", sources=sources) == place / "new" / "deep"
    assert check_output_dir(place / "empty", overwrite=True, sources=sources) == place / "empty"
    assert check_output_dir(place / "ours", overwrite=True, sources=sources) == place / "ours"
    # outputs that files are added to (evaluations): new, empty or ctxext's, with or without --overwrite
    for folder in ("new", "empty", "ours"):
        check_output_dir(place / folder, adds=True, sources=sources)
    with pytest.raises(CtxextError, match="already holds files that ctxext did not write"):
        check_output_dir(place / "user", overwrite=True, adds=True)
    assert not (place / "new").exists()  # checking writes nothing


def test_a_marker_must_be_a_regular_file(place):
    os.symlink(place / "ours" / MARKER, place / "user" / MARKER)
    with pytest.raises(CtxextError, match="ctxext did not write it"):
        check_output_dir(place / "user", overwrite=True)


def test_staged_directory_replaces_only_at_the_end_and_leaves_nothing_on_failure(place):
    out = place / "a" / "b" / "out"
    with pytest.raises(RuntimeError):
        with staged_directory(out) as tmp:
            (tmp / "half.txt").write_text("half")
            assert (out.parent / ".out.lock").exists() and not out.exists()
            raise RuntimeError("interrupted")
    assert not (place / "a").exists()  # the parents it made are gone again
    with staged_directory(out) as tmp:
        (tmp / "config.json").write_text("1")
    assert names(out) == [MARKER, "config.json"] and names(out.parent) == ["out"]
    with pytest.raises(CtxextError, match="already exists"):
        with staged_directory(out):
            pass
    with staged_directory(out, overwrite=True) as tmp:
        assert (out / "config.json").read_text() == "1"  # the old output stays readable until the end
        (tmp / "config.json").write_text("2")
    assert (out / "config.json").read_text() == "2" and names(out.parent) == ["out"]


def test_replacing_without_renameat2_goes_through_an_old_copy(place, monkeypatch):
    monkeypatch.setattr(io, "_renameat2", lambda *args: False)
    out = place / "out"
    with staged_directory(out) as tmp:
        (tmp / "v").write_text("1")
    with staged_directory(out, overwrite=True) as tmp:
        (tmp / "v").write_text("2")
    assert (out / "v").read_text() == "2" and names(place).count("out") == 1
    assert not [n for n in names(place) if n.startswith(".out")]


def test_an_output_that_appears_meanwhile_is_not_replaced(place):
    out = place / "out"
    with pytest.raises(CtxextError, match="appeared while ctxext was writing it"):
        with staged_directory(out) as tmp:
            (tmp / "v").write_text("ours")
            out.mkdir()  # another program makes it
            (out / "theirs.txt").write_text("theirs")
    assert names(out) == ["theirs.txt"] and not [n for n in names(place) if n.startswith(".out")]


def test_stale_staging_is_cleaned_but_look_alikes_are_kept(place):
    stale = place / ".out.abcd1234.partial"
    stale.mkdir()
    io.mark(stale, "checkpoint")
    (place / ".out.efgh5678.partial").mkdir()  # empty: losing it loses nothing
    users = place / ".out.ijkl9012.partial"  # unmarked with content: not ours
    users.mkdir()
    (users / "keep.txt").write_text("mine")
    other = place / ".out.b.abcd1234.partial"  # staging of another output, "out.b"
    other.mkdir()
    io.mark(other, "checkpoint")
    with output_lock(place / "out"):
        pass
    assert names(place).count(".out.ijkl9012.partial") == 1 and (users / "keep.txt").exists()
    assert not stale.exists() and not (place / ".out.efgh5678.partial").exists() and other.exists()


def test_an_interrupted_exchange_is_put_back(place):
    old = place / ".out.abcd1234.old"
    old.mkdir()
    io.mark(old, "checkpoint")
    (old / "v").write_text("previous")
    with output_lock(place / "out"):
        assert (place / "out" / "v").read_text() == "previous"
    assert not old.exists()


def test_stale_atomic_files_inside_a_ctxext_output_are_removed(place):
    for name in (".passkey.json.abcd1234.tmp", ".plot.png.abcd1234.png", ".notes.abcd1234.txt"):
        (place / "ours" / name).write_text("x")
    with output_lock(place / "ours"):
        pass
    assert ".notes.abcd1234.txt" in names(place / "ours")
    assert ".passkey.json.abcd1234.tmp" not in names(place / "ours") and ".plot.png.abcd1234.png" not in names(place / "ours")


HOLDER = """
import sys, time
from pathlib import Path
from ctxext.io import output_lock

with output_lock(sys.argv[1]):
    Path(sys.argv[2]).touch()
    time.sleep(600)
"""


def test_the_lock_refuses_another_process_and_is_freed_when_it_dies(place):
    out, ready = place / "out", place / "ready"
    holder = subprocess.Popen([sys.executable, "-c", HOLDER, str(out), str(ready)],
                              env={**os.environ, "PYTHONPATH": str(ROOT)})
    try:
        deadline = time.monotonic() + 60
        while not ready.exists():
            assert holder.poll() is None and time.monotonic() < deadline
            time.sleep(0.05)
        with pytest.raises(CtxextError, match=r"Another ctxext process is writing .*out \(it holds .*\.out\.lock\)"):
            with output_lock(out):
                pass
    finally:
        holder.send_signal(signal.SIGKILL)
        holder.wait()
    assert (place / ".out.lock").exists()  # SIGKILL left the file; the kernel released the lock
    with output_lock(out):
        with output_lock(out):  # re-entrant within a process
            pass
    assert not (place / ".out.lock").exists()


def test_a_lock_file_that_is_not_ours_is_refused_and_kept(place):
    (place / ".out.lock").write_text("someone's notes")
    with pytest.raises(CtxextError, match="is not a ctxext lock file"):
        with output_lock(place / "out"):
            pass
    assert (place / ".out.lock").read_text() == "someone's notes"


def test_only_the_main_process_of_a_launch_locks(place, monkeypatch):
    monkeypatch.setenv("RANK", "1")
    with output_lock(place / "out"):
        assert not (place / ".out.lock").exists()


def test_one_writer_holds_the_lock_for_the_call_and_checks_its_parameter(place):
    seen = []

    @one_writer("output_dir")
    def write(x, output_dir=None):
        seen.append((place / ".out.lock").exists())
        return x

    assert write(1, output_dir=place / "out") == 1 and write(2) == 2 and seen == [True, False]
    assert not (place / ".out.lock").exists()
    with pytest.raises(TypeError, match="has no parameter 'output_dir'"):
        one_writer("output_dir")(lambda out: None)


def test_prepare_output_dir_marks_new_and_empty_directories(place):
    assert names(prepare_output_dir(place / "eval" / "x")) == [MARKER]
    assert names(prepare_output_dir(place / "empty")) == [MARKER]


@pytest.mark.parametrize("path, message", [
    ("", "--plot is empty"),
    ("{t}/user", "is a directory"),
    ("{t}/nodir/p.png", "the folder {t}/nodir does not exist"),
    ("{t}/p.txt", "cannot write a .txt file"),
    ("{t}/p", "cannot write a suffix-less file"),
    ("{t}/user/notes.txt", "cannot write a .txt file"),
    ("{t}/parent/model/p.png", "lies inside the input"),
])
def test_output_files(path, message, place):
    with pytest.raises(CtxextError) as refused:
        check_output_file(path.format(t=place), what="--plot", suffixes=["png", "pdf"], sources=[place / "parent" / "model"])
    assert message.format(t=place) in str(refused.value)
    (place / "p.png").write_text("the user's picture")
    with pytest.raises(CtxextError, match="already exists; ctxext does not overwrite files"):
        check_output_file(place / "p.png", what="--plot", suffixes=["png"])
    assert check_output_file(place / "q.PNG", what="--plot", suffixes=["png"]) == place / "q.PNG"
