"""`ctxext eval passkey|perplexity`: outputs, the table, resume, and one-sentence errors that create nothing."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from ctxext.cli import main
from evalkit import one_thread, save_checkpoint  # noqa: F401

ROOT = Path(__file__).resolve().parents[2]


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory) -> Path:
    return save_checkpoint(tmp_path_factory.mktemp("models") / "base", window=256)


@pytest.fixture(scope="module")
def book(tmp_path_factory) -> Path:
    path = tmp_path_factory.mktemp("data") / "book.txt"
    path.write_text(("The grass is green and the sky is blue; here we go, there and back again. " * 20).strip())
    return path


def run(capsys, *argv: str) -> tuple[int, str, str]:
    code = main(list(argv))
    captured = capsys.readouterr()
    return code, captured.out, captured.err


def test_passkey_command_writes_results_plots_and_a_table(tmp_path, checkpoint, capsys, monkeypatch):
    monkeypatch.chdir(checkpoint.parent)
    out = tmp_path / "eval"
    code, stdout, stderr = run(capsys, "eval", "passkey", "base/", "--lengths", "300,260", "--depths", "0,1",
                               "--trials", "2", "--output", str(out))
    assert code == 0
    data = json.loads((out / "passkey.json").read_text())
    assert [(s["model"], s["length"]) for s in data["summary"]] == [("base", 260), ("base", 300)]
    assert len(data["results"]) == 2 * 2 * 2
    assert sorted(p.name for p in out.glob("*.png")) == ["passkey_accuracy.png", "passkey_heatmap_base.png"]
    lines = stdout.splitlines()
    assert lines[0].split() == ["model", "260", "300"]
    assert lines[2].split()[0] == "base" and len(lines) == 3
    assert "warning: base has a 256-token window; lengths 260, 300 are beyond it and evaluated anyway." in stderr
    # run again: refused without --resume; with it, nothing left to do and the same results
    code, _, stderr = run(capsys, "eval", "passkey", "base", "--lengths", "260,300", "--depths", "0,1", "--trials", "2", "--output", str(out))
    assert code == 2 and "--resume" in stderr
    code, _, _ = run(capsys, "eval", "passkey", "base", "--lengths", "260,300", "--depths", "0,1", "--trials", "2",
                     "--output", str(out), "--resume", "--quiet")
    assert code == 0 and json.loads((out / "passkey.json").read_text()) == data


def test_generate_mode_gives_the_same_records(tmp_path, checkpoint, capsys):
    common = ["eval", "passkey", str(checkpoint), "--lengths", "280", "--depths", "0,0.5", "--trials", "2", "--quiet"]
    assert run(capsys, *common, "--output", str(tmp_path / "tf"))[0] == 0
    assert run(capsys, *common, "--output", str(tmp_path / "gen"), "--generate")[0] == 0
    tf = json.loads((tmp_path / "tf" / "passkey.json").read_text())
    gen = json.loads((tmp_path / "gen" / "passkey.json").read_text())
    assert tf == gen


def test_perplexity_command(tmp_path, checkpoint, book, capsys):
    out = tmp_path / "ppl"
    code, stdout, _ = run(capsys, "eval", "perplexity", str(checkpoint), "--dataset", str(book), "--lengths", "64,256",
                          "--stride", "64", "--output", str(out), "--quiet")
    assert code == 0
    data = json.loads((out / "perplexity.json").read_text())
    assert [(r["length"], r["tokens"]) for r in data["results"]] == [(64, 256 - 4), (256, 255)]  # disjoint 64-token windows leave their first tokens out
    assert (out / "perplexity.png").exists()
    assert stdout.splitlines()[0].split() == ["model", "64", "256"]


def test_ruler_command_writes_results_plots_report_and_a_table(tmp_path, checkpoint, capsys):
    out = tmp_path / "ruler"
    common = ["eval", "ruler", str(checkpoint), "--lengths", "700,600", "--tasks", "niah_single_1,fwe", "--samples", "2",
              "--output", str(out)]
    code, stdout, stderr = run(capsys, *common, "--quiet")
    assert code == 0, stderr
    data = json.loads((out / "ruler.json").read_text())
    assert [(s["task"], s["length"]) for s in data["summary"]] == [("niah_single_1", 600), ("niah_single_1", 700), ("fwe", 600), ("fwe", 700)]
    assert len(data["results"]) == 2 * 2 * 2 and all(r["tokens"] + r["max_new_tokens"] == r["length"] for r in data["results"])
    names = sorted(p.name for p in out.iterdir() if not p.name.startswith("."))  # not the output marker
    assert names[:3] == ["report.md", "ruler.json", "ruler_average.png"] and len(names) == 4
    assert names[3].startswith("ruler_heatmap_") and names[3].endswith("_base.png")
    lines = stdout.splitlines()
    assert lines[0].split() == ["model", "600", "700", "effective@85.6", "claimed"] and len(lines) == 3
    assert lines[2].split()[0] == str(checkpoint).rstrip("/") and lines[2].split()[-1] == "256"
    code, _, stderr = run(capsys, *common)
    assert code == 2 and "--resume" in stderr
    code, _, _ = run(capsys, *common, "--resume", "--quiet")
    assert code == 0 and json.loads((out / "ruler.json").read_text())["results"] == data["results"]
    with pytest.raises(SystemExit):
        main(["eval", "ruler", "--help"])
    helped = capsys.readouterr().out
    assert "niah_multikey_2" in helped and "examples:" in helped and "--qa-file" in helped


@pytest.mark.parametrize(
    "argv, message",
    [
        (["ruler", "{model}", "--lengths", "512", "--tasks", "needle"], "Unknown RULER task 'needle'"),
        (["ruler", "{model}", "--lengths", "150"], "Length 150 is too short for RULER's niah_single_1"),
        (["ruler", "{model}", "--lengths", "512", "--qa-file", "{book}"], "is not a QA file"),
        (["ruler", "{model}", "--lengths", "512", "--tasks", "qa_2"], "HotpotQA-shaped file; pass one with --qa-file"),
        (["ruler", "{model}", "--lengths", "512", "--haystack", "{tmp}/none.txt"], "Haystack file"),
        (["ruler", "{model}", "--lengths", "512", "--samples", "0"], "--samples: expected a number greater than 0"),
        (["passkey", "{model}", "--lengths", "0"], "--lengths: expected a number greater than 0, got 0"),
        (["passkey", "{model}", "--lengths", "1k"], "--lengths: expected a whole number, got '1k'"),
        (["passkey", "{model}", "--lengths", "512", "--depths", "0.5,1.5"], "Depths must be numbers from 0"),
        (["passkey", "{model}", "--lengths", "512", "--trials", "0"], "--trials: expected a number greater than 0"),
        (["passkey", "{model}", "--lengths", "40"], "Length 40 is too short for the passkey prompt"),
        (["passkey", "{tmp}/missing", "--lengths", "512"], "not found: no such directory"),
        (["passkey", "{book}", "--lengths", "512"], "is not a model directory"),
        (["passkey", "{model}", "--lengths", "512", "--device", "cuda:7"], None),
        (["perplexity", "{model}", "--dataset", "{tmp}/none.txt", "--lengths", "64"], "not found"),
        (["perplexity", "{model}", "--dataset", "{tmp}/empty.jsonl", "--lengths", "64"], None),
        (["perplexity", "{model}", "--dataset", "{book}", "--lengths", "64,4096"], "No document in"),
        (["perplexity", "{model}", "--lengths", "64"], "following arguments are required: --dataset"),
    ],
)
def test_bad_input_is_one_sentence_exit_2_and_creates_nothing(tmp_path, checkpoint, book, capsys, argv, message):
    (tmp_path / "empty.jsonl").write_text("")
    fill = dict(model=str(checkpoint), tmp=str(tmp_path), book=str(book))
    out = tmp_path / "out" / "eval"
    code, stdout, stderr = run(capsys, "eval", *(a.format(**fill) for a in argv), "--output", str(out))
    if message is None and code == 0:  # --device cuda:7 on a machine that has it
        pytest.skip("this machine has that device")
    assert code == 2
    assert stderr.startswith("error: ") and stderr.count("\n") == 1, stderr
    assert "Traceback" not in stderr and stdout == ""
    if message:
        assert message in stderr
    assert not (tmp_path / "out").exists()


def test_the_installed_entry_point_reports_errors_without_a_traceback(tmp_path):
    env = {**os.environ, "PYTHONPATH": str(ROOT), "OMP_NUM_THREADS": "1"}
    env.pop("CTXEXT_DEBUG", None)
    result = subprocess.run(
        [sys.executable, "-m", "ctxext.cli", "eval", "passkey", str(tmp_path / "nope"), "--lengths", "1024", "--output", str(tmp_path / "o")],
        capture_output=True, text=True, env=env, timeout=120,
    )
    assert result.returncode == 2
    assert result.stderr.startswith("error: Model ") and result.stderr.count("\n") == 1
    assert not (tmp_path / "o").exists()
    helped = subprocess.run([sys.executable, "-m", "ctxext.cli", "eval", "perplexity", "--help"],
                            capture_output=True, text=True, env=env, timeout=120)
    assert helped.returncode == 0 and "examples:" in helped.stdout and "--stride" in helped.stdout
