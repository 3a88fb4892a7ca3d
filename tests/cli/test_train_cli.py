"""`ctxext train` on the command line: bad input gets one sentence, exit 2, nothing written, no model loaded."""

import json

import pytest
import torch

import ctxext.loading
from ctxext import cli
from tiny import tiny_model, tiny_tokenizer


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory):
    path = tmp_path_factory.mktemp("model") / "tiny"
    tiny_model("llama").save_pretrained(path)
    tiny_tokenizer().save_pretrained(path)
    return path


@pytest.fixture
def work(tmp_path, monkeypatch):
    """A clean working folder; the token cache lives elsewhere, and loading a model is an error."""
    monkeypatch.setenv("CTXEXT_CACHE", str(tmp_path / "cache"))
    (tmp_path / "work").mkdir()

    def no_model(*args, **kwargs):
        raise AssertionError("the model was loaded before the bad input was reported")

    monkeypatch.setattr(ctxext.loading, "load_model", no_model)
    torch.set_num_threads(1)
    return tmp_path / "work"


def files(root):
    return sorted(p.relative_to(root).as_posix() for p in root.rglob("*"))


def run_cli(argv, capsys):
    code = cli.main(argv)
    captured = capsys.readouterr()
    return code, captured.err


CASES = {
    "missing dataset": ([], "{work}/missing.txt", "Dataset '{work}/missing.txt' not found"),
    "empty dataset": ([], "{work}/blank.txt", "is empty"),
    "dataset shorter than a sequence": ([], "{work}/short.txt", "fewer than one training sequence of 256"),
    "zero seq-len": (["--seq-len", "0"], "{work}/text.txt", "Argument --seq-len: expected a number greater than 0"),
    "negative steps": (["--max-steps", "-3"], "{work}/text.txt", "Argument --max-steps: expected a number greater than 0"),
    "factor below 1": (["--factor", "0.5"], "{work}/text.txt", "factor must be >= 1"),
    "existing output": (["--output", "{work}/existing"], "{work}/text.txt", "already exists; choose another --output or pass --overwrite"),
    "leftover checkpoints": (["--output", "{work}/crashed"], "{work}/text.txt", "holds the checkpoints of an interrupted run"),
    "pose window without pose": (["--pose-window", "32"], "{work}/text.txt", "pose_window is set but pose is off"),
    "pose window too long": (["--pose", "--pose-window", "256"], "{work}/text.txt", "is not shorter than seq_len (256)"),
    "parameter of another method": (["--method", "pi", "--beta-fast", "8"], "{work}/text.txt", "Unknown parameter(s) beta_fast for method 'pi'"),
    "missing model": (["MODEL={work}/nothing"], "{work}/text.txt", "not found: no such directory"),
    "prompt weight without completions": (["--prompt-loss-weight", "0.01"], "{work}/text.txt",
                                          "prompt_loss_weight is 0.01, but dataset {work}/text.txt marks no completions"),
    "negative prompt weight": (["--prompt-loss-weight", "-1"], "{work}/qa.jsonl", "prompt_loss_weight is out of range: got -1.0; it must be a finite number at least 0"),
}


@pytest.mark.parametrize("case", list(CASES))
def test_bad_input_is_one_sentence_exit_2_and_leaves_nothing(case, work, model_dir, capsys):
    extra, dataset, message = CASES[case]
    (work / "blank.txt").write_text("  \n\n")
    (work / "short.txt").write_text("too short")
    (work / "text.txt").write_text("some text to train on. " * 40)
    (work / "qa.jsonl").write_text(json.dumps({"prompt": "some text. " * 30, "completion": " an answer"}) + "\n")
    (work / "existing").mkdir()
    (work / "crashed.checkpoints").mkdir()
    before = files(work)
    model = str(model_dir)
    extra = [a.format(work=work) for a in extra]
    if extra and extra[0].startswith("MODEL="):
        model = extra.pop(0).split("=", 1)[1]
    argv = ["train", model, "--method", "yarn", "--factor", "4", "--dataset", dataset.format(work=work),
            "--output", str(work / "out"), "--no-progress", *extra]  # fmt: skip
    code, err = run_cli(argv, capsys)
    assert code == 2
    assert err.count("\n") == 1 and err.startswith("error: ") and "Traceback" not in err, err
    assert message.format(work=work) in err, err
    assert files(work) == before  # no output, no checkpoints, nothing half-written


def test_a_short_cli_run_writes_the_checkpoint(work, model_dir, capsys, monkeypatch):
    monkeypatch.undo()  # loading the model is fine here
    monkeypatch.setenv("CTXEXT_CACHE", str(work.parent / "cache"))
    (work / "text.txt").write_text("some text to train on. " * 40)
    argv = ["train", str(model_dir), "--method", "linear", "--factor", "2", "--dataset", str(work / "text.txt"),
            "--output", str(work / "out"), "--seq-len", "64", "--max-steps", "3", "--learning-rate", "1e-3",
            "--warmup-steps", "1", "--save-every", "2", "--no-progress"]  # fmt: skip
    code, err = run_cli(argv, capsys)
    assert code == 0, err
    assert sorted(p.name for p in (work / "out").iterdir()) == [
        ".ctxext", "README.md", "adapter", "config.json", "generation_config.json", "model.safetensors",
        "tokenizer.json", "tokenizer_config.json", "train_log.jsonl",
    ]  # fmt: skip
    config = json.loads((work / "out" / "config.json").read_text())
    # pi on Llama is spelled as llama3 with every band interpolated (what llama.cpp's converter reads):
    # stock transformers must build the base frequencies divided by the factor from it
    assert config["rope_scaling"]["rope_type"] == "llama3" and config["rope_scaling"]["factor"] == 2.0
    from transformers import AutoModelForCausalLM

    base = AutoModelForCausalLM.from_pretrained(model_dir).model.rotary_emb.inv_freq
    tuned = AutoModelForCausalLM.from_pretrained(work / "out").model.rotary_emb.inv_freq
    torch.testing.assert_close(tuned, base / 2.0)
    assert len((work / "out" / "train_log.jsonl").read_text().splitlines()) == 3
    assert not (work / "out.checkpoints").exists()


def test_help_has_worked_examples(capsys):
    with pytest.raises(SystemExit):
        cli.main(["train", "--help"])
    text = capsys.readouterr().out
    assert "examples:" in text and "accelerate launch" in text and "--resume" in text


def test_a_prompt_completion_run_weighs_the_prompt_as_told(work, model_dir, capsys, monkeypatch):
    monkeypatch.undo()
    monkeypatch.setenv("CTXEXT_CACHE", str(work.parent / "cache"))
    rows = [{"prompt": f"note {i}: " + "filler text. " * 8, "completion": f" answer {i}."} for i in range(12)]
    (work / "qa.jsonl").write_text("\n".join(json.dumps(r) for r in rows))
    argv = ["train", str(model_dir), "--method", "yarn", "--factor", "2", "--dataset", str(work / "qa.jsonl"),
            "--output", str(work / "out"), "--seq-len", "64", "--max-steps", "2", "--prompt-loss-weight", "0",
            "--save-every", "0", "--no-progress"]  # fmt: skip
    code, err = run_cli(argv, capsys)
    assert code == 0, err
    card = (work / "out" / "README.md").read_text()
    assert "prompt tokens weighted 0, completion tokens 1" in card
