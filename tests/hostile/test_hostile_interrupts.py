"""Interruptions and concurrency: SIGKILL mid-write, two writers at once, a torn log line.

- a `ctxext patch` killed while it stages its output leaves the old state (no output, or the old output
  untouched); the next run cleans the stale staging folder up and succeeds;
- killed between the two renames of a replace (on a filesystem without renameat2), the next run puts
  the previous output back;
- two `ctxext patch` runs to one output: exactly one writes it, the other is refused in one sentence;
- a writer of an eval or train output is refused while another process holds it, and not after that
  process is SIGKILLed (the kernel releases an flock with the process);
- a torn last line in train_log.jsonl: --resume continues from the last checkpoint and ends with the
  same weights as an uninterrupted run.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

from ctxext.cli import main
from ctxext.errors import CtxextError
from ctxext.training.finetune import checkpoint_dir, finetune
from evalkit import one_thread  # noqa: F401
from tiny import tiny_model, tiny_tokenizer
from world import _save_good, english, snapshot, tree_hash

ROOT = Path(__file__).resolve().parents[2]
TESTS = ROOT / "tests"

#: `ctxext patch` that stops after staging its first file: says "ready", then waits for "go" (or a kill)
BLOCKED_PATCH = """
import sys, time
from pathlib import Path
import ctxext.patching.checkpoint as checkpoint
from ctxext.cli import main

ready, go = Path(sys.argv[1]), Path(sys.argv[2])
carry = checkpoint._carry

def slow_carry(src, dst):
    how = carry(src, dst)
    ready.touch()
    while not go.exists():
        time.sleep(0.05)
    return how

checkpoint._carry = slow_carry
sys.exit(main(sys.argv[3:]))
"""

#: a process that holds ctxext's lock on an output until killed
HOLDER = """
import sys, time
from pathlib import Path
from ctxext.io import output_lock

with output_lock(sys.argv[1]):
    Path(sys.argv[2]).touch()
    time.sleep(600)
"""

#: a replace killed between its two renames (the fallback for filesystems without renameat2)
KILLED_BETWEEN_RENAMES = """
import os, signal, sys
import ctxext.io as io
from ctxext.cli import main

io._renameat2 = lambda *args: False
replace, out = os.replace, os.path.abspath(sys.argv[1])

def replace_then_die(src, dst):
    replace(src, dst)
    if os.path.abspath(src) == out:  # the old output has just moved aside
        os.kill(os.getpid(), signal.SIGKILL)

os.replace = replace_then_die
sys.exit(main(sys.argv[2:]))
"""


def env(tmp_path: Path) -> dict:
    return {**os.environ, "PYTHONPATH": os.pathsep.join([str(ROOT), str(TESTS)]), "OMP_NUM_THREADS": "1",
            "HF_HUB_OFFLINE": "1", "CTXEXT_CACHE": str(tmp_path / "cache")}


def wait_for(path: Path, process: subprocess.Popen, seconds: float = 120) -> None:
    deadline = time.monotonic() + seconds
    while not path.exists():
        if process.poll() is not None:
            raise AssertionError(f"exited {process.returncode} early: {process.stderr.read()}")
        assert time.monotonic() < deadline, f"{path} never appeared"
        time.sleep(0.05)


def hidden(folder: Path) -> list[str]:
    return sorted(p.name for p in folder.iterdir() if p.name.startswith("."))


def patch_argv(src: Path, out: Path, method: str = "yarn", *extra: str) -> list[str]:
    return ["patch", str(src), "--method", method, "--factor", "2", "--output", str(out), *extra]


@pytest.fixture
def source(tmp_path):
    return _save_good(tmp_path / "src")


def killed_mid_patch(tmp_path: Path, argv: list[str]) -> None:
    ready, go = tmp_path / "ready", tmp_path / "go"
    for flag in (ready, go):
        flag.unlink(missing_ok=True)
    process = subprocess.Popen([sys.executable, "-c", BLOCKED_PATCH, str(ready), str(go), *argv], env=env(tmp_path),
                               stderr=subprocess.PIPE, text=True)
    wait_for(ready, process)
    process.send_signal(signal.SIGKILL)
    assert process.wait() == -signal.SIGKILL


def test_sigkill_mid_patch_then_a_rerun_succeeds_and_leaves_no_staging(source, tmp_path, capsys):
    out_dir = tmp_path / "outs"
    out_dir.mkdir()
    out = out_dir / "out"
    source_hash = tree_hash(source)
    killed_mid_patch(tmp_path, patch_argv(source, out))
    assert not out.exists()
    stale = [name for name in hidden(out_dir) if name.endswith(".partial")]
    assert len(stale) == 1 and stale[0].startswith(".out.")  # what the kill left; the lock file may stay too
    assert main(patch_argv(source, out)) == 0
    assert hidden(out_dir) == []  # stale staging and lock gone
    assert json.loads((out / "config.json").read_text())["ctxext"]["method"] == "yarn"
    assert (out / ".ctxext").is_file()

    # killed during --overwrite: the previous output is untouched; the next --overwrite cleans up and replaces it
    before = snapshot(out)
    killed_mid_patch(tmp_path, patch_argv(source, out, "pi", "--overwrite"))
    assert snapshot(out) == before
    assert [n for n in hidden(out_dir) if n.endswith(".partial")]
    assert main(patch_argv(source, out, "pi", "--overwrite")) == 0
    assert hidden(out_dir) == []
    assert json.loads((out / "config.json").read_text())["ctxext"]["method"] == "pi"
    assert tree_hash(source) == source_hash
    capsys.readouterr()


def test_a_replace_killed_between_its_renames_is_put_back(source, tmp_path, capsys):
    out = tmp_path / "outs" / "out"
    assert main(patch_argv(source, out)) == 0
    before = snapshot(out)
    result = subprocess.run([sys.executable, "-c", KILLED_BETWEEN_RENAMES, str(out), *patch_argv(source, out, "pi", "--overwrite")],
                            env=env(tmp_path), capture_output=True, text=True, timeout=120)
    assert result.returncode == -signal.SIGKILL, result.stderr
    assert not out.exists()  # moved aside: `.out.<random>.old`, next to the finished `.out.<random>.partial`
    assert {n.rsplit(".", 1)[1] for n in hidden(out.parent) if not n.endswith(".lock")} == {"old", "partial"}
    # the next writer of `out` restores the previous output first (then refuses: it exists, no --overwrite)
    capsys.readouterr()
    assert main(patch_argv(source, out, "pi")) == 2
    assert "already exists" in capsys.readouterr().err
    assert snapshot(out) == before and hidden(out.parent) == []


def test_two_concurrent_patches_exactly_one_writes_the_output(source, tmp_path):
    out = tmp_path / "outs" / "out"
    ready, go = tmp_path / "ready", tmp_path / "go"
    first = subprocess.Popen([sys.executable, "-c", BLOCKED_PATCH, str(ready), str(go), *patch_argv(source, out, "yarn")],
                             env=env(tmp_path), stderr=subprocess.PIPE, text=True)
    wait_for(ready, first)
    second = subprocess.run([sys.executable, "-m", "ctxext.cli", *patch_argv(source, out, "pi")], env=env(tmp_path),
                            capture_output=True, text=True, timeout=120)
    assert second.returncode == 2 and second.stderr.count("\n") == 1, second.stderr
    assert second.stderr.startswith("error: Another ctxext process is writing") and "Traceback" not in second.stderr
    go.touch()
    assert first.wait(timeout=120) == 0, first.stderr.read()
    assert json.loads((out / "config.json").read_text())["ctxext"]["method"] == "yarn"  # the first one's
    assert hidden(out.parent) == []

    # and started at the same moment, with nothing slowed down: one writes, the other is refused
    for round_ in range(2):
        target = tmp_path / "race" / f"out{round_}"
        runs = [subprocess.Popen([sys.executable, "-m", "ctxext.cli", *patch_argv(source, target, method)], env=env(tmp_path),
                                 stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True) for method in ("yarn", "pi")]
        results = [(run.wait(timeout=120), run.stderr.read()) for run in runs]
        assert sorted(code for code, _ in results) == [0, 2], results
        refusal = next(err for code, err in results if code == 2)
        assert refusal.count("\n") == 1 and ("Another ctxext process" in refusal or "already exists" in refusal), refusal
        assert hidden(target.parent) == []


@pytest.mark.parametrize("command", ["eval passkey", "train", "eval perplexity"])
def test_a_second_writer_is_refused_until_the_holder_dies(command, source, tmp_path, capsys, monkeypatch):
    monkeypatch.setenv("CTXEXT_CACHE", str(tmp_path / "cache"))
    out = tmp_path / "outs" / "out"
    (tmp_path / "book.txt").write_text(english(3000))
    argv = {
        "eval passkey": ["eval", "passkey", str(source), "--lengths", "300", "--depths", "0", "--trials", "1",
                         "--quiet", "--output", str(out)],
        "eval perplexity": ["eval", "perplexity", str(source), "--dataset", str(tmp_path / "book.txt"), "--lengths", "64",
                            "--quiet", "--output", str(out)],
        "train": ["train", str(source), "--method", "yarn", "--factor", "2", "--dataset", str(tmp_path / "book.txt"),
                  "--seq-len", "64", "--max-steps", "1", "--save-every", "0", "--no-progress", "--output", str(out)],
    }[command]
    ready = tmp_path / "held"
    holder = subprocess.Popen([sys.executable, "-c", HOLDER, str(out), str(ready)], env=env(tmp_path),
                              stderr=subprocess.PIPE, text=True)
    try:
        wait_for(ready, holder)
        before = snapshot(tmp_path / "outs")
        assert main(argv) == 2
        err = capsys.readouterr().err
        assert err.startswith("error: Another ctxext process is writing") and err.count("\n") == 1, err
        assert snapshot(tmp_path / "outs") == before and not (tmp_path / "cache").exists()
    finally:
        holder.send_signal(signal.SIGKILL)
        holder.wait()
    assert main(argv) == 0  # the kernel released the dead holder's lock
    assert (out / ".ctxext").is_file() and hidden(out.parent) == []


KILLED_TRAIN = """
import os, signal
from ctxext.training.finetune import finetune

def die(record):
    if record["step"] == {kill_at}:
        os.kill(os.getpid(), signal.SIGKILL)

finetune({model!r}, "yarn", 2, {data!r}, {out!r}, on_step=die, progress=False, **{kwargs!r})
"""


def test_a_torn_log_line_resumes_from_the_last_checkpoint_to_the_same_weights(tmp_path):
    model_dir = tmp_path / "model"
    tiny_model("llama", initializer_range=0.1).save_pretrained(model_dir)
    tiny_tokenizer().save_pretrained(model_dir)
    data = tmp_path / "text.txt"
    data.write_text(english(3000))
    kwargs = dict(seq_len=64, max_steps=5, learning_rate=5e-3, warmup_steps=1, save_every=2, seed=3,
                  cache_dir=str(tmp_path / "cache"))
    straight = finetune(str(model_dir), "yarn", 2, str(data), tmp_path / "straight", progress=False, **kwargs)

    out = tmp_path / "resumed"
    script = KILLED_TRAIN.format(kill_at=3, model=str(model_dir), data=str(data), out=str(out), kwargs=kwargs)
    killed = subprocess.run([sys.executable, "-c", script], env=env(tmp_path), capture_output=True, text=True, timeout=600)
    assert killed.returncode == -signal.SIGKILL, killed.stderr[-2000:]
    log = checkpoint_dir(out) / "train_log.jsonl"
    with open(log, "a") as handle:  # the power went out while step 4's record was being written
        handle.write('{"step": 4, "loss": 3.1')
    assert (checkpoint_dir(out) / "step-0000002").is_dir()

    resumed = finetune(str(model_dir), "yarn", 2, str(data), out, progress=False, resume=True, **kwargs)
    assert [r["step"] for r in resumed.log] == [1, 2, 3, 4, 5]
    assert [r["sequences"] for r in resumed.log] == [r["sequences"] for r in straight.log]
    assert [r["loss"] for r in resumed.log] == pytest.approx([r["loss"] for r in straight.log], rel=1e-5)
    for key, value in straight.model.state_dict().items():
        torch.testing.assert_close(resumed.model.state_dict()[key], value, rtol=1e-5, atol=1e-6, msg=key)
    written = [json.loads(line)["step"] for line in (out / "train_log.jsonl").read_text().splitlines()]
    assert written == [1, 2, 3, 4, 5] and not checkpoint_dir(out).exists()


def test_damage_inside_the_log_is_refused_with_a_sentence(tmp_path):
    from ctxext.training.resume import read_log as _read_log

    run = tmp_path / "run"
    run.mkdir()
    (run / "train_log.jsonl").write_text('{"step": 1}\n{"step": 2, "lo\n{"step": 3}\n')
    with pytest.raises(CtxextError, match=r"Line 2 of .* is damaged; pass --overwrite to start over"):
        _read_log(run, upto=2)
    (run / "train_log.jsonl").write_text('{"step": 1}\n{"step": 3}\n')
    with pytest.raises(CtxextError, match="does not record steps 1 to 2"):
        _read_log(run, upto=2)
    (run / "train_log.jsonl").write_text('{"step": 1}\n{"step": 2}\n{"st')
    assert [r["step"] for r in _read_log(run, upto=2)] == [1, 2]
