"""ctxext.io's promises, as behaviour: readers see the old file or the new one, never half of either;
a staged directory appears whole or not at all, and leaves nothing behind when it fails.

(Error messages of io.py and loading.py are tested with the rest of the error paths.)
"""

import os
import stat
import threading

import pytest

from ctxext.io import atomic_file, atomic_write_json, atomic_write_text, save_figure, staged_directory


def test_atomic_file_replaces_only_when_the_block_finishes(tmp_path):
    target = tmp_path / "results.json"
    target.write_text("old")
    with pytest.raises(RuntimeError):
        with atomic_file(target) as tmp:
            tmp.write_text("half")
            assert tmp.parent == target.parent and tmp.name.startswith(".results.json.")  # same filesystem
            assert target.read_text() == "old"  # nothing changes until the end
            raise RuntimeError("interrupted")
    assert target.read_text() == "old" and sorted(p.name for p in tmp_path.iterdir()) == ["results.json"]
    with atomic_file(target, suffix=".png") as tmp:
        assert tmp.suffix == ".png"  # writers that go by the extension see the right one
        tmp.write_text("new")
    assert target.read_text() == "new" and sorted(p.name for p in tmp_path.iterdir()) == ["results.json"]


def test_atomic_files_get_the_usual_permissions(tmp_path):
    old = os.umask(0o022)
    try:
        path = atomic_write_text(tmp_path / "a.txt", "x")
    finally:
        os.umask(old)
    assert stat.S_IMODE(path.stat().st_mode) == 0o644  # not mkstemp's 0600


def test_a_reader_never_sees_a_partial_file(tmp_path):
    """While one thread rewrites a large JSON file over and over, another reads it: every read parses."""
    import json

    path = tmp_path / "big.json"
    atomic_write_json(path, {"results": list(range(20000))})
    stop, failures = threading.Event(), []

    def read():
        while not stop.is_set():
            try:
                assert len(json.loads(path.read_text())["results"]) in (20000, 20001)
            except Exception as err:  # a torn read shows up here
                failures.append(repr(err))

    reader = threading.Thread(target=read)
    reader.start()
    for i in range(30):
        atomic_write_json(path, {"results": list(range(20000 + i % 2))})
    stop.set()
    reader.join()
    assert failures == []


def test_a_staged_directory_appears_whole_and_replaces_the_old_one_whole(tmp_path):
    out = tmp_path / "a" / "b" / "out"
    old = os.umask(0o022)
    try:
        with staged_directory(out) as tmp:
            (tmp / "config.json").write_text("{}")
            assert not out.exists() and tmp.parent == out.parent
    finally:
        os.umask(old)
    assert sorted(p.name for p in out.iterdir()) == ["config.json"]
    assert stat.S_IMODE(out.stat().st_mode) == 0o755  # the usual permissions, not mkdtemp's 0700
    with staged_directory(out, overwrite=True) as tmp:
        (tmp / "model.safetensors").write_text("w")
    assert sorted(p.name for p in out.iterdir()) == ["model.safetensors"]  # the old content is gone
    assert sorted(p.name for p in out.parent.iterdir()) == ["out"]  # no .partial, no .old


def test_a_failed_staged_directory_leaves_the_filesystem_as_it_was(tmp_path):
    with pytest.raises(KeyboardInterrupt):
        with staged_directory(tmp_path / "new" / "deeper" / "out") as tmp:
            (tmp / "half").write_text("x")
            raise KeyboardInterrupt
    assert list(tmp_path.iterdir()) == []  # the parents it created are gone too
    (tmp_path / "out").mkdir()
    (tmp_path / "out" / "keep").write_text("mine")
    with pytest.raises(ValueError):
        with staged_directory(tmp_path / "out", overwrite=True) as tmp:
            (tmp / "half").write_text("x")
            raise ValueError("bad")
    assert [p.name for p in (tmp_path / "out").iterdir()] == ["keep"]  # an overwrite that fails keeps the old
    assert sorted(p.name for p in tmp_path.iterdir()) == ["out"]


def test_save_figure_writes_a_png_through_a_temporary_file(tmp_path):
    from matplotlib.figure import Figure

    from pictures import assert_picture

    fig = Figure(figsize=(4, 3))
    fig.add_subplot().plot([0, 1, 2], [2, 0, 1])
    path = save_figure(fig, tmp_path / "plot.png")
    assert path == tmp_path / "plot.png" and [p.name for p in tmp_path.iterdir()] == ["plot.png"]
    assert_picture(path, min_width=250, min_height=180)
