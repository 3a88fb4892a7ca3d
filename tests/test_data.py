"""ctxext.data and the token cache: undecodable or text-less data gets a sentence, quiet; short data is never cached."""

from __future__ import annotations

import os

import pytest

from ctxext.data import load_texts
from ctxext.errors import CtxextError
from ctxext.training.packing import token_stream
from tiny import tiny_tokenizer


@pytest.mark.parametrize("name, content, message", [
    ("bytes.txt", bytes(range(128, 256)) * 4, r"bytes.txt is not UTF-8 text \(byte 0x80 at offset 0\)"),
    ("number.jsonl", b'{"text": 5}\n', "Column 'text' of dataset .* holds int64 values, not text"),
    ("nested.jsonl", b'{"text": {"a": "b"}}\n', "holds .* values, not text"),
    ("malformed.jsonl", b"{nope\n", "Could not read"),
    ("blank.txt", b" \n\n", "is empty: it has no non-blank documents"),
    ("table.csv", b"text\nx\n", "give .txt, .jsonl, .json or .parquet files"),
])
def test_bad_files_are_one_quiet_sentence(name, content, message, tmp_path, capfd):
    path = tmp_path / name
    path.write_bytes(content)
    with pytest.raises(CtxextError, match=message):
        load_texts(path)
    assert capfd.readouterr().err == ""  # no datasets log line or progress bar before the error


@pytest.mark.timeout(60)
def test_a_named_pipe_is_refused_without_being_opened(tmp_path):
    os.mkfifo(tmp_path / "pipe.txt")
    with pytest.raises(CtxextError, match="is a named pipe"):
        load_texts(tmp_path / "pipe.txt")
    (tmp_path / "folder").mkdir()
    (tmp_path / "folder" / "a.txt").write_text("text")
    os.mkfifo(tmp_path / "folder" / "b.txt")
    with pytest.raises(CtxextError, match="b.txt is a named pipe"):
        load_texts(tmp_path / "folder")


def test_missing_local_files_are_not_looked_up_on_the_hub(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    (tmp_path / "data").mkdir()
    for missing in ("data/nothere.txt", "data/nothere", "book.txt", "./x"):
        with pytest.raises(CtxextError, match=f"Dataset '{missing}' not found: no such file or directory"):
            load_texts(missing)


def test_a_stream_shorter_than_needed_is_never_cached(tmp_path):
    texts = load_texts(_write(tmp_path / "short.txt", "a short text"))
    ids = token_stream(texts, tiny_tokenizer(), tmp_path / "cache", min_tokens=1000)
    assert len(ids) == len("a short text\n") + 1  # its characters, the newline included, then EOS
    assert not (tmp_path / "cache").exists()
    cached = token_stream(texts, tiny_tokenizer(), tmp_path / "cache", min_tokens=5)
    assert list(cached) == list(ids) and len(list((tmp_path / "cache" / "tokens").iterdir())) == 1


def _write(path, text):
    path.write_text(text + "\n")
    return path
