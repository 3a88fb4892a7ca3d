"""ctxext.io's atomic files, as behaviour: readers see the old file or the new one, never half of either,
a failure leaves the old one and no temporary file, and pictures are written the same way.

(The output-safety rule and staged directories are tested in tests/test_io.py.)
"""

import os
import stat
import threading

import pytest

from ctxext.io import atomic_file, atomic_write_json, atomic_write_text, save_figure


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


def test_save_figure_writes_a_png_through_a_temporary_file(tmp_path):
    from matplotlib.figure import Figure

    from pictures import assert_picture

    fig = Figure(figsize=(4, 3))
    fig.add_subplot().plot([0, 1, 2], [2, 0, 1])
    path = save_figure(fig, tmp_path / "plot.png")
    assert path == tmp_path / "plot.png" and [p.name for p in tmp_path.iterdir()] == ["plot.png"]
    assert_picture(path, min_width=250, min_height=180)
    svg = save_figure(fig, tmp_path / "plot.svg")  # the format follows the extension
    assert svg.read_text().lstrip().startswith("<?xml") and "<svg" in svg.read_text()
