"""`ctxext search` on the command line: bad input gets one sentence, exit 2, nothing written, no model loaded."""

import json

import pytest
import torch

import ctxext.loading
from ctxext import cli
from ctxext.io import mark
from ctxext.patching.checkpoint import patch_checkpoint
from tiny import tiny_model, tiny_tokenizer


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory):
    path = tmp_path_factory.mktemp("model") / "tiny"
    tiny_model("llama").save_pretrained(path)
    tiny_tokenizer().save_pretrained(path)
    return path


@pytest.fixture
def work(tmp_path, monkeypatch, model_dir):
    """A working folder with data, an existing output and an interrupted search; loading a model is an error."""
    work = tmp_path / "work"
    work.mkdir()
    line = "the cat sees the red ball and a dog follows the long road. "
    (work / "docs.jsonl").write_text("".join(json.dumps({"text": line * 8}) + "\n" for _ in range(3)))
    (work / "short.jsonl").write_text(json.dumps({"text": "too short"}) + "\n")
    (work / "existing").mkdir()
    (work / "existing" / "keep.txt").write_text("mine")
    (work / "crashed.search").mkdir()
    (work / "crashed.search" / "state.json").write_text("{}")
    mark(work / "crashed.search", "run")  # the state of a search ctxext began
    patch_checkpoint(model_dir, work / "yarn-x2", "yarn", 2)

    def no_model(*args, **kwargs):
        raise AssertionError("the model was loaded before the bad input was reported")

    monkeypatch.setattr(ctxext.loading, "load_model", no_model)
    torch.set_num_threads(1)
    return work


def files(root):
    return sorted((p.relative_to(root).as_posix(), p.read_bytes() if p.is_file() else None) for p in root.rglob("*"))


CASES = {
    "factor of 1": (["--factor", "1"], "factor must be greater than 1 for a search"),
    "factor below 1": (["--factor", "0.5"], "factor must be >= 1"),
    "missing dataset": (["--dataset", "{work}/missing.txt"], "Dataset '{work}/missing.txt' not found"),
    "documents too short": (["--dataset", "{work}/short.jsonl"], "No document in {work}/short.jsonl has 256 tokens"),
    "existing output": (["--output", "{work}/existing"], "already exists; choose another --output or pass --overwrite"),
    "interrupted search": (["--output", "{work}/crashed"], "holds an interrupted search; pass --resume"),
    "population too small": (["--population", "2"], "population must be a whole number of at least 4"),
    "negative generations": (["--generations", "-1"], "generations must be a whole number, 0 or more"),
    "bad attention factor": (["--attention-factor", "big"], "attention_factor must be a number or one of searched, longrope, yarn"),
    "max factor below the factor": (["--max-long-factor", "2"], "max_long_factor must be a number of at least the factor (4)"),
    "length inside the window": (["--length", "64"], "length (64) must be longer than the original window (64)"),
    "unknown objective": (["--objective", "loss"], "Argument --objective: invalid choice: 'loss'"),
    "scaled model": (["MODEL={work}/yarn-x2"], "already uses yarn (factor 2, patched by ctxext from a 64-token window) RoPE scaling; pass replace=True"),
    "missing model": (["MODEL={work}/nothing"], "not found: no such directory"),
    "negative tolerance": (["--guard-tolerance", "-0.1"], "guard_tolerance must be a number, 0 or more"),
}


@pytest.mark.parametrize("case", list(CASES))
def test_bad_input_gets_one_sentence_and_exit_2_and_writes_nothing(case, work, model_dir, capsys):
    extra, message = CASES[case]
    fill = lambda s: s.format(work=work)
    model = str(model_dir)
    args = []
    for item in map(fill, extra):
        if item.startswith("MODEL="):
            model = item.removeprefix("MODEL=")
        else:
            args.append(item)
    defaults = {"--factor": "4", "--dataset": f"{work}/docs.jsonl", "--output": f"{work}/out"}
    for key, value in defaults.items():
        if key not in args:
            args += [key, value]
    before = files(work)
    code = cli.main(["search", model, *args, "--samples", "2", "--quiet"])
    err = capsys.readouterr().err
    assert code == 2, err
    assert err.startswith("error: ") and err.count("\n") == 1 and "Traceback" not in err, err
    assert fill(message) in err, err
    assert files(work) == before  # nothing written, nothing removed


def test_a_search_on_the_command_line_writes_the_checkpoint_and_prints_the_comparison(model_dir, tmp_path, capsys):
    torch.set_num_threads(1)
    line = "the cat sees the red ball and a dog follows the long road. "
    (tmp_path / "docs.jsonl").write_text("".join(json.dumps({"text": line * 8}) + "\n" for _ in range(2)))
    out = tmp_path / "searched"
    code = cli.main(["search", str(model_dir), "--factor", "4", "--dataset", str(tmp_path / "docs.jsonl"),
                     "--output", str(out), "--samples", "2", "--population", "4", "--generations", "1", "--quiet"])
    printed = capsys.readouterr().out
    assert code == 0
    assert "needle perplexity at 256 tokens" in printed and "searched" in printed and "yarn" in printed
    assert f"wrote {out}" in printed
    config = json.loads((out / "config.json").read_text())
    assert config["rope_parameters"]["rope_type"] == "longrope"
    assert {"search.json", "search_log.jsonl", "factors.png", "README.md"} <= {p.name for p in out.iterdir()}
