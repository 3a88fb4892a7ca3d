"""Every subcommand against hostile input: one sentence, exit 2, no traceback, nothing written, source intact.

Each case is one command line run in-process through `ctxext.cli.main` in the workspace that
`world.build` fills with broken models, bad data and awkward outputs. For every case:

- the exit status is 2 and stdout is empty;
- stderr is exactly one line, `error: <sentence>`, holding the fragment that names the problem;
- no traceback anywhere;
- the workspace (sources, data, outputs, the token cache) is byte for byte what it was, and the
  model the command was given hashes the same;
- nothing unpickled the pickle weights (they would create PWNED).

A handful of the same cases also run as real subprocesses (`python -m ctxext.cli`) so that what
libraries print through logging (which in-process capture cannot see) is checked too.
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

import ctxext.demo.run
from ctxext.cli import main
from evalkit import one_thread  # noqa: F401  (one torch thread for the module)
from world import PWNED, build, snapshot, tree_hash

ROOT = Path(__file__).resolve().parents[2]
DEMO_MODEL = ctxext.demo.run.demo_model_path()

# -- the cases -------------------------------------------------------------------------------------
# {m} the model, {w} the workspace, {o} a fresh output path, {d} the data folder, {demo} the embedded model

#: what each broken model folder must be refused with (any command that reads the config)
FOLDER = {
    "no-config": "is not a model directory (it has no config.json)",
    "config-dir": "config.json is not a file",
    "config-fifo": "config.json is a named pipe",
    "config-invalid": "config.json is not valid JSON",
    "config-empty": "config.json is not valid JSON",
    "config-list": "does not hold a JSON object",
    "config-bytes": "config.json is not valid JSON",
    "fifo-inside": "notes.fifo is a named pipe",
    "socket-inside": "ctl.sock is a socket",
    "dangling-inside": "extra.bin is a broken symbolic link",
    "dangling-weights": "model.safetensors is a broken symbolic link",
}
TYPES = {
    "rope_theta-text": "gives rope_theta 'abc', which is not a positive number",
    "rope_theta-negative": "gives rope_theta -1.0, which is not a positive number",
    "rope_theta-bool": "gives rope_theta True, which is not a positive number",
    "rope_theta-list": "gives rope_theta [10000], which is not a positive number",
    "rope_parameters-text": "gives rope_parameters 'yarn', which is not an object of rope settings",
    "rope_parameters-list": "gives rope_parameters [1, 2], which is not an object of rope settings",
    "rope_type-number": "gives rope_type 5, which is not the name of a rope type",
    "factor-text": "gives factor 'two', which is not a positive number",
    "rope_scaling-text": "gives rope_scaling 'linear', which is not an object of rope settings",
    "head_dim-text": "gives head_dim 'abc', which is not a whole number",
    "head_dim-zero": "gives head_dim 0, which is not a whole number of at least 1",
    "hidden_size-text": "gives hidden_size '16', which is not a whole number",
    "heads-zero": "gives num_attention_heads 0, which is not a whole number of at least 1",
    "window-text": "gives max_position_embeddings 'abc', which is not a whole number",
    "partial-two": "gives partial_rotary_factor 2, which is not a number in (0, 1]",
    "partial-text": "gives partial_rotary_factor 'half', which is not a number in (0, 1]",
    "original-text": "gives original_max_position_embeddings 'x', which is not a whole number",
    "record-text": "The ctxext record in this 'llama' config is damaged",
    "record-fields": "The ctxext record in this 'llama' config is damaged",
    "record-theta": "The ctxext record in this 'llama' config is damaged",
}
NOT_ROPE = {  # fine to evaluate, nothing to patch
    "no-rope": "has no rotary position embedding settings",
    "gpt2": "has no rotary position embeddings (it uses learned absolute position embeddings)",
}
WEIGHTS = {
    "weights-truncated": "model.safetensors is truncated (3,000 bytes where its header describes",
    "weights-empty": "model.safetensors is empty",
    "weights-garbage": "model.safetensors is truncated or not a safetensors file",
    "weights-bad-header": "model.safetensors is corrupt (its header is not a safetensors header)",
    "weights-trailing": "model.safetensors is corrupt (100 bytes after the tensors its header describes)",
    "weights-dir": "model.safetensors is not a file",
    "weights-none": "holds no model weights (no model.safetensors)",
    "weights-pickle": "holds only pickle weights (pytorch_model.bin), which ctxext never loads because unpickling",
    "weights-index-missing-shard": "model-00001-of-00002.safetensors is missing (listed in model.safetensors.index.json)",
    "weights-index-corrupt": "model.safetensors.index.json is not a valid safetensors index",
    "weights-no-tensors": "do not fit its config.json: 12 tensor(s) missing or of another shape",
    "weights-wrong-shape": "do not fit its config.json: 12 tensor(s) missing or of another shape",
}
TOKENIZER = {
    "tokenizer-none": "has no tokenizer files (tokenizer.json, tokenizer.model, vocab.json, ...)",
    "tokenizer-config-only": "has no tokenizer files",
    "tokenizer-corrupt": "tokenizer.json is not valid JSON",
    "tokenizer-empty": "tokenizer.json is not valid JSON",
    "tokenizer-config-corrupt": "tokenizer_config.json is not valid JSON",
    "tokenizer-fifo": "tokenizer.json is a named pipe",
}
PLACES = {  # MODEL arguments that are no model
    "empty name": ("", "The model name is empty"),
    "current folder": (".", ". is not a model directory (it has no config.json)"),
    "missing folder": ("{w}/nothere", "not found: no such directory"),
    "missing relative": ("./nothere", "not found: no such directory"),
    "missing under a folder": ("models/nothere", "not found: no such directory"),
    "not a hub id": ("a/b/c", "not found: no such directory, and it is not a hub id"),
    "a file": ("{d}/book.txt", "is not a model directory (it is a file)"),
    "a user folder": ("{w}/existing", "is not a model directory (it has no config.json)"),
    "a broken link": ("{w}/dangling-link", "is a broken symbolic link"),
    "a named pipe": ("{w}/fifo", "is a named pipe"),
}


def _outputs(adds: bool) -> dict[str, tuple[list[str], str]]:
    """--output cases: (extra argv, message). `adds`: evaluations, which add files to a directory."""
    exists = "already holds files that ctxext did not write" if adds else "already exists; choose another --output or pass --overwrite"
    overwritten = "already holds files that ctxext did not write" if adds else "ctxext did not write it"
    return {
        "empty": (["--output", ""], "--output is empty"),
        "dot": (["--output", "."], "--output . is the current, parent or root directory"),
        "dot-overwrite": (["--output", ".", "--overwrite"], "is the current, parent or root directory"),
        "dotdot": (["--output", ".."], "--output .. is the current, parent or root directory"),
        "slash": (["--output", "/", "--overwrite"], "--output / is the current, parent or root directory"),
        "is the source": (["--output", "{m}"], "is the input {m}"),
        "is the source, --overwrite": (["--output", "{m}", "--overwrite"], "is the input {m}"),
        "inside the source": (["--output", "{m}/tuned"], "lies inside the input {m}"),
        "inside the source, --overwrite": (["--output", "{m}/tuned", "--overwrite"], "lies inside the input"),
        "contains the source": (["--output", "{w}/models", "--overwrite"], "contains the input {m}"),
        "the workspace via ..": (["--output", "{w}/existing/..", "--overwrite"], "contains the input"),
        "a link to the source": (["--output", "{w}/link-to-good", "--overwrite"], "is the input {m}"),
        "a user folder": (["--output", "{w}/existing"], exists),
        "a user folder, --overwrite": (["--output", "{w}/existing", "--overwrite"], overwritten),
        "a file": (["--output", "{w}/afile"], "exists and is not a directory"),
        "a file, --overwrite": (["--output", "{w}/afile", "--overwrite"], "exists and is not a directory"),
        "under a file": (["--output", "{w}/afile/out"], "Cannot write to {w}/afile: it is a file, not a directory"),
        "a link to a folder": (["--output", "{w}/link-to-existing", "--overwrite"], "is a symbolic link"),
        "a broken link": (["--output", "{w}/dangling-link"], "is a symbolic link"),
        "a named pipe": (["--output", "{w}/fifo", "--overwrite"], "exists and is not a directory"),
        "in /proc": (["--output", "/proc/ctxext/out"], "Cannot write /proc/ctxext/out"),
        "a foreign lock file": (["--output", "{w}/locked"], "{w}/.locked.lock exists and is not a ctxext lock file"),
    }


def cases() -> list:
    out = []

    def add(group: str, name: str, argv: list[str], message: str, model: str = "good", marks=()):
        out.append(pytest.param(argv, message, model, id=f"{group}: {name}", marks=marks))

    # -- patch -----------------------------------------------------------------------------------
    patch = ["patch", "{m}", "--method", "yarn", "--factor", "2"]
    for name, message in {**FOLDER, **TYPES, **NOT_ROPE}.items():
        add("patch", name, [*patch, "--output", "{o}"], message, name)
    for name, (where, message) in PLACES.items():
        add("patch", name, ["patch", where, "--method", "yarn", "--factor", "2", "--output", "{o}"], message)
    for name, (extra, message) in _outputs(adds=False).items():
        add("patch --output", name, [*patch, *extra], message)
    add("patch --output", "contains the source (the issue's parent/ case)",
        ["patch", "{w}/parent/model", "--method", "yarn", "--factor", "2", "--output", "{w}/parent", "--overwrite"],
        "contains the input {w}/parent/model", "parent/model")
    add("patch --output", "ctxext's own output, no --overwrite", [*patch, "--output", "{w}/marked"], "already exists")
    for name, (extra, message) in {
        "factor 0": (["--factor", "0"], "factor must be >= 1"),
        "factor below 1": (["--factor", "0.5"], "factor must be >= 1"),
        "factor nan": (["--factor", "nan"], "must be"),
        "factor inf": (["--factor", "inf"], "must be a finite number"),
        "factor text": (["--factor", "eight"], "expected a number, got 'eight'"),
        "unknown method": (["--method", "rope2"], "invalid choice: 'rope2'"),
        "parameter of another method": (["--method", "pi", "--beta-fast", "16"], "Unknown parameter(s) beta_fast"),
        "parameter text": (["--beta-fast", "fast"], "expected a number, got 'fast'"),
        "attention factor 0": (["--attention-factor", "0"], "attention_factor must be positive"),
        "window 0": (["--original-max-position-embeddings", "0"], "expected a number greater than 0"),
        "window text": (["--original-max-position-embeddings", "4k"], "expected a whole number, got '4k'"),
        "dynamic-yarn": (["--method", "dynamic-yarn"], "cannot be written into a stock config"),
        "llama3 bands": (["--method", "llama3", "--low-freq-factor", "4", "--high-freq-factor", "1"], "high_freq_factor must be greater"),
    }.items():
        add("patch args", name, ["patch", "{m}", "--method", "yarn", "--factor", "2", *extra, "--output", "{o}"], message)
    add("patch args", "no --output", ["patch", "{m}", "--method", "yarn", "--factor", "2"], "The following arguments are required: --output")
    add("patch args", "already scaled, no --replace", [*patch, "--output", "{o}"], "already uses llama3", "scaled")

    # -- info ------------------------------------------------------------------------------------
    for name, message in {**FOLDER, **TYPES, **NOT_ROPE}.items():
        add("info", name, ["info", "{m}"], message, name)
    for name in ("rope_theta-text", "head_dim-text", "rope_parameters-text"):
        add("info --json", name, ["info", "{m}", "--json"], TYPES[name], name)
    for name, (where, message) in PLACES.items():
        add("info", name, ["info", where], message)
    dims = ["info", "{m}", "--method", "yarn", "--factor", "2"]
    for name, (extra, message) in {
        "into a missing folder": (["--plot", "nodir/p.png"], "--plot nodir/p.png: the folder {w}/nodir does not exist"),
        "a .txt file": (["--plot", "p.txt"], "--plot p.txt: cannot write a .txt file; give a name ending in one of"),
        "no suffix": (["--plot", "p"], "cannot write a suffix-less file"),
        "a suffix-less file": (["--plot", "{w}/afile"], "cannot write a suffix-less file"),
        "an existing picture": (["--plot", "{w}/picture.png"], "--plot {w}/picture.png already exists; ctxext does not overwrite"),
        "over a user file": (["--plot", "{w}/existing/mine.txt"], "cannot write a .txt file"),
        "a folder": (["--plot", "{w}/existing"], "--plot {w}/existing is a directory"),
        "inside the model": (["--plot", "{m}/dims.png"], "--plot {m}/dims.png lies inside the input {m}"),
        "empty": (["--plot", ""], "--plot is empty"),
        "a broken link": (["--plot", "{w}/dangling.png"], "--plot {w}/dangling.png already exists"),
        "under a file": (["--plot", "{w}/afile/p.png"], "the folder {w}/afile does not exist"),
    }.items():
        if message is not None:
            add("info --plot", name, [*dims, *extra], message)
    add("info --plot", "without --method", ["info", "{m}", "--plot", "p.png"], "--plot draws what a method does")
    add("info args", "--method without --factor", ["info", "{m}", "--method", "yarn"], "--method and --factor go together")
    add("info args", "--factor without --method", ["info", "{m}", "--factor", "2"], "--method and --factor go together")
    add("info args", "factor below 1", [*dims[:-1], "0.5"], "factor must be >= 1")

    # -- eval passkey ----------------------------------------------------------------------------
    passkey = ["eval", "passkey", "{m}", "--lengths", "300", "--depths", "0", "--trials", "1"]
    for name, message in {**FOLDER, **TYPES, **WEIGHTS, **TOKENIZER,
                          "tokenizer-unusable": "cannot write the passkey prompt"}.items():
        add("eval passkey", name, [*passkey, "--output", "{o}"], message, name)
    for name, (where, message) in PLACES.items():
        add("eval passkey", name, ["eval", "passkey", where, "--lengths", "300", "--output", "{o}"], message)
    for name, (extra, message) in _outputs(adds=True).items():
        add("eval passkey --output", name, [*passkey, *extra], message)
    add("eval passkey --output", "results already there", [*passkey, "--output", "{w}/marked"],
        "passkey.json already exists; pass --resume")
    add("eval passkey --output", "resume from a damaged file", [*passkey, "--output", "{w}/marked", "--resume"],
        "it is not a results file written by ctxext")
    for name, (extra, message) in {
        "tpu": (["--device", "tpu"], "Unknown device 'tpu'"),
        "cpu:abc": (["--device", "cpu:abc"], "Unknown device 'cpu:abc'"),
        "meta": (["--device", "meta"], "ctxext does not run on --device meta"),
        "xla": (["--device", "xla"], "ctxext does not run on --device xla"),
        "cuda:7": (["--device", "cuda:7"], "--device cuda:7 was asked for but"),
        "dtype": (["--dtype", "int8"], "invalid choice: 'int8'"),
        "length 0": (["--lengths", "0"], "expected a number greater than 0"),
        "length text": (["--lengths", "1k"], "expected a whole number, got '1k'"),
        "lengths empty": (["--lengths", ","], "expected a comma-separated list"),
        "length too short": (["--lengths", "20"], "Length 20 is too short for the passkey prompt"),
        "depth 1.5": (["--depths", "0.5,1.5"], "Depths must be numbers from 0"),
        "trials 0": (["--trials", "0"], "expected a number greater than 0"),
        "digits 0": (["--digits", "0"], "expected a number greater than 0"),
        "batch size text": (["--batch-size", "x"], "expected a whole number"),
    }.items():
        add("eval passkey args", name, [*passkey, *extra, "--output", "{o}"], message)
    add("eval passkey args", "the same model twice", ["eval", "passkey", "{m}", "{m}", "--lengths", "300", "--output", "{o}"],
        "is given twice")

    # -- eval perplexity -------------------------------------------------------------------------
    ppl = ["eval", "perplexity", "{m}", "--lengths", "64", "--dataset"]
    datasets_ = {
        "missing file": ("{w}/nothere.txt", "not found: no such file or directory"),
        "missing under a folder": ("data/nothere", "Dataset 'data/nothere' not found"),
        "missing relative": ("./nothere", "not found: no such file or directory"),
        "missing with a suffix": ("nothere.jsonl", "Dataset 'nothere.jsonl' not found"),
        "empty name": ("", "The dataset name is empty"),
        "random bytes": ("{d}/random.txt", "random.txt is not UTF-8 text"),
        "latin-1 text": ("{d}/latin1.txt", "latin1.txt is not UTF-8 text (byte 0xe9"),
        "a number as text": ("{d}/number.jsonl", "Column 'text' of dataset '{d}/number.jsonl' holds int64 values, not text"),
        "a list as text": ("{d}/list.jsonl", "holds List values, not text"),
        "malformed jsonl": ("{d}/malformed.jsonl", "Could not read {d}/malformed.jsonl"),
        "json scalar": ("{d}/scalar.json", "Could not read {d}/scalar.json"),
        "no text field": ("{d}/no-text.jsonl", "has no text column (columns: x)"),
        "garbage parquet": ("{d}/garbage.parquet", "Could not read {d}/garbage.parquet"),
        "a csv": ("{d}/table.csv", "give .txt, .jsonl, .json or .parquet files of one kind"),
        "empty folder": ("{d}/dir-empty", "holds no .txt, .jsonl, .json or .parquet files"),
        "mixed folder": ("{d}/dir-mixed", "of one kind"),
        "a pipe in the folder": ("{d}/dir-fifo", "b.txt is a named pipe"),
        "a named pipe": ("{d}/fifo.txt", "fifo.txt is a named pipe"),
        "a broken link": ("{d}/dangling.txt", "dangling.txt is a broken symbolic link"),
        "blank text": ("{d}/blank.txt", "is empty"),
    }
    for name, (where, message) in {**datasets_, "empty text": ("{d}/empty.txt", "is empty"),
                                   "empty jsonl": ("{d}/empty.jsonl", "is empty"),
                                   "too short": ("{d}/short.txt", "No document in")}.items():
        add("eval perplexity --dataset", name, [*ppl, where, "--output", "{o}"], message)
    add("eval perplexity --dataset", "--text-field not there", [*ppl, "{d}/good.jsonl", "--text-field", "content", "--output", "{o}"],
        "has no text column (columns: body)")
    for name in ("config-invalid", "dangling-inside", "rope_theta-text", "weights-truncated", "weights-pickle",
                 "weights-no-tensors", "tokenizer-none", "tokenizer-corrupt"):
        add("eval perplexity", name, [*ppl, "{d}/book.txt", "--output", "{o}"], {**FOLDER, **TYPES, **WEIGHTS, **TOKENIZER}[name], name)
    for name in ("dot", "is the source", "contains the source", "a user folder, --overwrite", "under a file"):
        extra, message = _outputs(adds=True)[name]
        add("eval perplexity --output", name, [*ppl, "{d}/book.txt", *extra], message)
    add("eval perplexity --output", "is the dataset folder", [*ppl, "{d}/dir-good", "--output", "{d}/dir-good"], "is the input {d}/dir-good")
    add("eval perplexity --output", "contains the dataset", [*ppl, "{d}/book.txt", "--output", "{d}"], "contains the input")
    add("eval perplexity --output", "results already there", [*ppl, "{d}/book.txt", "--output", "{w}/marked"],
        "perplexity.json already exists; pass --resume")
    add("eval perplexity --output", "resume from a damaged file", [*ppl, "{d}/book.txt", "--output", "{w}/marked", "--resume"],
        "it is not a results file written by ctxext")
    add("eval perplexity args", "stride 0", [*ppl, "{d}/book.txt", "--stride", "0", "--output", "{o}"], "expected a number greater than 0")
    add("eval perplexity args", "tokens per document below the length",
        [*ppl, "{d}/book.txt", "--tokens-per-document", "10", "--output", "{o}"], "is shorter than the longest length")
    add("eval perplexity args", "length 1", ["eval", "perplexity", "{m}", "--lengths", "1", "--dataset", "{d}/book.txt", "--output", "{o}"],
        "Perplexity needs windows of at least 2 tokens")
    add("eval perplexity args", "device tpu", [*ppl, "{d}/book.txt", "--device", "tpu", "--output", "{o}"], "Unknown device 'tpu'")

    # -- train -----------------------------------------------------------------------------------
    train = ["train", "{m}", "--method", "yarn", "--factor", "2", "--no-progress", "--dataset"]
    for name, (where, message) in {**datasets_, "empty text": ("{d}/empty.txt", "is empty"),
                                   "empty jsonl": ("{d}/empty.jsonl", "Could not read {d}/empty.jsonl"),
                                   "too short (no token cache written)": ("{d}/short.txt",
                                                                          "fewer than one training sequence of 512")}.items():
        add("train --dataset", name, [*train, where, "--output", "{o}"], message)
    for name, message in {**FOLDER, **{k: TYPES[k] for k in ("rope_theta-text", "rope_parameters-text", "head_dim-text",
                                                              "window-text", "record-text")},
                          **WEIGHTS, **TOKENIZER}.items():
        add("train", name, [*train, "{d}/book.txt", "--output", "{o}"], message, name)
    add("train", "gpt2", [*train, "{d}/book.txt", "--output", "{o}"], NOT_ROPE["gpt2"], "gpt2")
    for name, (where, message) in PLACES.items():
        add("train", name, ["train", where, "--method", "yarn", "--factor", "2", "--dataset", "{d}/book.txt", "--output", "{o}"], message)
    for name, (extra, message) in _outputs(adds=False).items():
        add("train --output", name, [*train, "{d}/book.txt", *extra], message)
    add("train --output", "is the dataset folder", [*train, "{d}/dir-good", "--output", "{d}/dir-good", "--overwrite"],
        "is the input {d}/dir-good")
    add("train --output", "contains the dataset", [*train, "{d}/book.txt", "--output", "{d}", "--overwrite"], "contains the input")
    add("train --output", "a user folder named like its checkpoints", [*train, "{d}/book.txt", "--output", "{w}/run", "--overwrite"],
        "run.checkpoints exists and ctxext did not write it")
    add("train --output", "a user folder named like its checkpoints, --resume", [*train, "{d}/book.txt", "--output", "{w}/run", "--resume"],
        "run.checkpoints exists and ctxext did not write it")
    for name, (extra, message) in {
        "seq-len 0": (["--seq-len", "0"], "expected a number greater than 0"),
        "max-steps -3": (["--max-steps", "-3"], "expected a number greater than 0"),
        "factor 0.5": (["--factor", "0.5"], "factor must be >= 1"),
        "learning rate 0": (["--learning-rate", "0"], "learning_rate is out of range"),
        "learning rate nan": (["--learning-rate", "nan"], "learning_rate is out of range"),
        "lora dropout 1": (["--lora-dropout", "1"], "lora_dropout is out of range"),
        "warmup -1": (["--warmup-steps", "-1"], "warmup_steps must be a whole number, 0 or more"),
        "pose window without pose": (["--pose-window", "32"], "pose_window is set but pose is off"),
        "pose window too long": (["--pose", "--pose-window", "4096"], "is not shorter than seq_len"),
        "schedule": (["--schedule", "linear"], "invalid choice: 'linear'"),
        "dynamic-yarn": (["--method", "dynamic-yarn"], None),
    }.items():
        if message:
            add("train args", name, [*train, "{d}/book.txt", *extra, "--output", "{o}"], message)

    # -- search ----------------------------------------------------------------------------------
    search = ["search", "{m}", "--factor", "2", "--quiet", "--dataset"]
    for name, (where, message) in {**datasets_, "empty text": ("{d}/empty.txt", "is empty"),
                                   "empty jsonl": ("{d}/empty.jsonl", "is empty"),
                                   "too short": ("{d}/short.txt", "No document in")}.items():
        add("search --dataset", name, [*search, where, "--output", "{o}"], message)
    for name, message in {**FOLDER, **{k: TYPES[k] for k in ("rope_theta-text", "rope_parameters-text", "head_dim-text",
                                                              "window-text", "record-text")},
                          **WEIGHTS, **TOKENIZER}.items():
        add("search", name, [*search, "{d}/book.txt", "--output", "{o}"], message, name)
    add("search", "gpt2", [*search, "{d}/book.txt", "--output", "{o}"], NOT_ROPE["gpt2"], "gpt2")
    add("search", "already scaled, no --replace", [*search, "{d}/book.txt", "--output", "{o}"], "already uses llama3", "scaled")
    for name, (where, message) in PLACES.items():
        add("search", name, ["search", where, "--factor", "2", "--dataset", "{d}/book.txt", "--output", "{o}"], message)
    for name, (extra, message) in _outputs(adds=False).items():
        add("search --output", name, [*search, "{d}/book.txt", *extra], message)
    add("search --output", "is the dataset folder", [*search, "{d}/dir-good", "--output", "{d}/dir-good", "--overwrite"],
        "is the input {d}/dir-good")
    add("search --output", "contains the dataset", [*search, "{d}/book.txt", "--output", "{d}", "--overwrite"], "contains the input")
    add("search --output", "a user folder named like its state", [*search, "{d}/book.txt", "--output", "{w}/state", "--overwrite"],
        "state.search exists and ctxext did not write it")
    add("search --output", "a user folder named like its state, --resume", [*search, "{d}/book.txt", "--output", "{w}/state", "--resume"],
        "state.search exists and ctxext did not write it")
    for name, (extra, message) in {
        "factor 1": (["--factor", "1"], "factor must be greater than 1 for a search"),
        "factor 0.5": (["--factor", "0.5"], "factor must be >= 1"),
        "factor nan": (["--factor", "nan"], "must be"),
        "population 3": (["--population", "3"], "population must be a whole number of at least 4"),
        "generations -1": (["--generations", "-1"], "generations must be a whole number, 0 or more"),
        "max minutes 0": (["--max-minutes", "0"], "max_minutes must be a number of minutes greater than 0"),
        "attention factor text": (["--attention-factor", "big"], "attention_factor must be a number or one of"),
        "attention factor 0": (["--attention-factor", "0"], "attention_factor must be a positive number"),
        "max long factor below the factor": (["--max-long-factor", "1.5"], "max_long_factor must be a number of at least the factor"),
        "guard tolerance nan": (["--guard-tolerance", "nan"], "guard_tolerance must be a number, 0 or more"),
        "length inside the window": (["--length", "100"], "must be longer than the original window"),
        "objective": (["--objective", "loss"], "invalid choice: 'loss'"),
        "samples 0": (["--samples", "0"], "expected a number greater than 0"),
        "device tpu": (["--device", "tpu"], "Unknown device 'tpu'"),
    }.items():
        add("search args", name, [*search, "{d}/book.txt", *extra, "--output", "{o}"], message)

    # -- demo ------------------------------------------------------------------------------------
    for name, (extra, message) in _outputs(adds=False).items():
        if "source" not in name and name != "the workspace via ..":
            add("demo --output", name, ["demo", "--quick", *extra], message)
    add("demo --output", "the embedded model", ["demo", "--output", "{demo}", "--overwrite"], "is the input {demo}")
    add("demo --output", "inside the embedded model", ["demo", "--output", "{demo}/out"], "lies inside the input {demo}")
    add("demo --output", "ctxext's own output, no --overwrite", ["demo", "--output", "{w}/marked"], "already exists")
    return out


CASES = cases()


@pytest.fixture(scope="module")
def world(tmp_path_factory):
    return build(tmp_path_factory.mktemp("hostile") / "work")


@pytest.fixture
def inside(world, monkeypatch):
    """The workspace as working directory and token cache; loading a model's weights is fine (some cases need it)."""
    monkeypatch.chdir(world.root)
    monkeypatch.setenv("CTXEXT_CACHE", str(world.cache))
    monkeypatch.delenv("CTXEXT_DEBUG", raising=False)
    return world


def fill(argv: list[str], world, model: str, case: str) -> list[str]:
    fields = dict(m=str(world.models[model]), w=str(world.root), d=str(world.root / "data"),
                  o=str(world.root / "fresh" / case.replace(" ", "-").replace("/", "-").replace(":", "")), demo=str(DEMO_MODEL))
    return [a.format(**fields) for a in argv]


def check_refusal(code: int, stdout: str, stderr: str, message: str) -> None:
    assert code == 2, (code, stderr)
    assert "Traceback" not in stderr + stdout
    assert stdout == "", stdout
    assert stderr.startswith("error: ") and stderr.endswith("\n") and stderr.count("\n") == 1, stderr
    assert message in stderr, stderr


@pytest.mark.parametrize("argv, message, model", CASES)
def test_refused_in_one_sentence_with_nothing_written(argv, message, model, inside, capsys, request):
    world = inside
    case = request.node.callspec.id
    argv = fill(argv, world, model, case)
    message = fill([message], world, model, case)[0]
    source = world.models[model]
    roots = (world.root, DEMO_MODEL) if argv[0] == "demo" else (world.root,)  # the demo's source is in the package
    before, source_hash = snapshot(*roots), tree_hash(source)
    code = main(argv)
    captured = capsys.readouterr()
    check_refusal(code, captured.out, captured.err, message)
    assert snapshot(*roots) == before, "the command changed the disk"
    assert tree_hash(source) == source_hash
    assert not (world.root.parent / PWNED).exists(), "something unpickled the pickle weights"


#: cases that also run as a real process: every command, and the library layers that log (datasets,
#: transformers); the ones that import torch take ~10 s each on a busy 2-core machine, so most are `slow`
SUBPROCESS = [
    "patch: rope_theta-text", "patch --output: contains the source (the issue's parent/ case)",
    "info: rope_theta-text", "info --plot: a .txt file",
    "eval perplexity --dataset: malformed jsonl", "eval passkey: weights-no-tensors",
    *(pytest.param(case, marks=pytest.mark.slow) for case in (
        "eval passkey: weights-pickle", "eval passkey args: tpu", "train --dataset: a number as text",
        "train --dataset: too short (no token cache written)", "train: tokenizer-none",
        "demo --output: a user folder, --overwrite",
    )),
]


@pytest.mark.parametrize("case", SUBPROCESS)
def test_the_same_as_a_real_process(case, inside):
    world = inside
    (argv, message, model), = [p.values for p in CASES if p.id == case]
    argv, message = fill(argv, world, model, case), fill([message], world, model, case)[0]
    before = snapshot(world.root)
    env = {**os.environ, "PYTHONPATH": str(ROOT), "OMP_NUM_THREADS": "1", "HF_HUB_OFFLINE": "1",
           "CTXEXT_CACHE": str(world.cache)}
    env.pop("PYTHONWARNINGS", None)
    result = subprocess.run([sys.executable, "-m", "ctxext.cli", *argv], capture_output=True, text=True,
                            env=env, cwd=world.root, timeout=120)
    check_refusal(result.returncode, result.stdout, result.stderr, message)
    assert snapshot(world.root) == before


def test_a_window_beyond_the_models_own_is_written_with_one_warning_line(world, tmp_path):
    """Accepted (it may be what the user means), but said once, on one line, in a real process."""
    env = {**os.environ, "PYTHONPATH": str(ROOT), "HF_HUB_OFFLINE": "1"}
    env.pop("PYTHONWARNINGS", None)
    result = subprocess.run([sys.executable, "-m", "ctxext.cli", "patch", str(world.good), "--method", "yarn", "--factor", "2",
                             "--original-max-position-embeddings", "100000", "--output", str(tmp_path / "wide")],
                            capture_output=True, text=True, env=env, timeout=120)
    assert result.returncode == 0, result.stderr
    assert result.stderr.count("\n") == 1 and result.stderr.startswith(
        "warning: original_max_position_embeddings 100,000 is larger than the 256-token window this config records"), result.stderr
    assert "window 100,000 -> 200,000 tokens" in result.stdout


# -- whose fault: a failure inside a library is said to be the library's, never the input's ----------------------

#: commands that load the good model, each stopped by a library that fails while building or loading it
LOADING = {
    "eval passkey": ["eval", "passkey", "{m}", "--lengths", "300", "--depths", "0", "--trials", "1", "--output", "{o}"],
    "eval perplexity": ["eval", "perplexity", "{m}", "--dataset", "{d}/book.txt", "--lengths", "64", "--output", "{o}"],
    "train": ["train", "{m}", "--method", "yarn", "--factor", "2", "--no-progress", "--dataset", "{d}/book.txt",
              "--output", "{o}"],
    "search": ["search", "{m}", "--factor", "2", "--quiet", "--dataset", "{d}/book.txt", "--output", "{o}"],
}


@pytest.mark.parametrize("where", ["building the model", "loading the weights"])
@pytest.mark.parametrize("command", list(LOADING))
def test_a_library_failure_is_reported_as_the_librarys(command, where, inside, capsys, monkeypatch):
    """transformers 5.25 with kernels 0.19 raised "Unsupported device type 'meta'" (a ValueError) inside every model
    load, and ctxext said "check its config.json and weights". Such a failure is the library's: exit 1, one sentence
    naming transformers and its version, no traceback, no output written, the model untouched."""
    from importlib.metadata import version

    from transformers import PreTrainedModel

    world = inside
    argv = fill(LOADING[command], world, "good", f"library-{command}-{where}")

    def broken(*args, **kwargs):
        raise ValueError("Unsupported device type 'meta'. Supported device types are: cpu, cuda")

    if where == "building the model":
        monkeypatch.setattr(PreTrainedModel, "post_init", broken)
    else:
        monkeypatch.setattr(PreTrainedModel, "_load_pretrained_model", staticmethod(broken))
    before, source_hash = snapshot(world.root), tree_hash(world.models["good"])
    code = main(argv)
    captured = capsys.readouterr()
    assert code == 1, (code, captured.err)
    assert "Traceback" not in captured.err + captured.out and captured.out == ""
    assert captured.err.count("\n") == 1, captured.err
    assert captured.err.startswith(f"error: Internal error in transformers {version('transformers')} while {where}"), captured.err
    assert "Unsupported device type 'meta'" in captured.err and "CTXEXT_DEBUG=1" in captured.err
    assert "check its" not in captured.err and "your input is not at fault" in captured.err
    # train tokenizes its (good) data before it loads the weights: the token cache it keeps is whole and reusable
    cache = str(world.cache)
    assert {k: v for k, v in snapshot(world.root).items() if not k.startswith(cache)} == {
        k: v for k, v in before.items() if not k.startswith(cache)}, "the command changed the disk"
    assert tree_hash(world.models["good"]) == source_hash


def test_a_ctxext_bug_is_reported_as_ctxexts_with_its_traceback_on_demand(inside, capsys, monkeypatch):
    import ctxext.patching.checkpoint

    world = inside
    argv = fill(["patch", "{m}", "--method", "yarn", "--factor", "2", "--output", "{o}"], world, "good", "ctxext-bug")

    def bug(*args, **kwargs):
        return {}["no such key"]

    monkeypatch.setattr(ctxext.patching.checkpoint, "read_config", bug)
    before = snapshot(world.root)
    code = main(argv)
    err = capsys.readouterr().err
    assert code == 1 and err.count("\n") == 1 and "Traceback" not in err, err
    assert err.startswith("error: Internal error in ctxext ") and "while running `ctxext patch` (KeyError: 'no such key')" in err
    assert snapshot(world.root) == before
    monkeypatch.setenv("CTXEXT_DEBUG", "1")
    with pytest.raises(KeyError):
        main(argv)
