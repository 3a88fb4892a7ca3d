"""The hostile world: a workspace of broken models, bad data and awkward outputs, built from configs.

    world = build(tmp_path)        # models/<case>, data/<case>, outputs, a token cache, all on disk
    before = snapshot(world.root)  # every path with its kind and content hash
    ...run a command that must refuse...
    assert snapshot(world.root) == before

Every broken model is a copy of one tiny, healthy Llama (16 wide, byte tokenizer, 256-token window)
with exactly one thing wrong, so a refusal can only come from that one thing. No downloads.
"""

from __future__ import annotations

import hashlib
import json
import os
import random
import shutil
import socket
import stat
import struct
from dataclasses import dataclass, field
from pathlib import Path

import torch
from safetensors.torch import save_file

from checkpoints import tiny_tokenizer as word_tokenizer
from evalkit import byte_tokenizer
from tiny import tiny_model

WINDOW = 256
#: the pickle payload every pickle-weights fixture carries: it would create PWNED if anything unpickled it
PWNED = "PWNED"


@dataclass
class World:
    root: Path
    models: dict[str, Path] = field(default_factory=dict)
    data: dict[str, Path] = field(default_factory=dict)

    @property
    def good(self) -> Path:
        return self.models["good"]

    @property
    def cache(self) -> Path:
        return self.root / "cache"


def snapshot(*roots: Path) -> dict[str, tuple]:
    """{path: (kind, content)} for everything under `roots`: files by SHA-256, links by target, pipes by kind only."""
    found = {}
    for root in roots:
        if not os.path.lexists(root):
            found[str(root)] = ("absent",)
            continue
        for directory, dirs, files in os.walk(root):
            for name in dirs + files:
                path = Path(directory) / name
                mode = os.lstat(path).st_mode
                if stat.S_ISLNK(mode):
                    found[str(path)] = ("link", os.readlink(path))
                elif stat.S_ISREG(mode):
                    found[str(path)] = ("file", hashlib.sha256(path.read_bytes()).hexdigest())
                elif stat.S_ISDIR(mode):
                    found[str(path)] = ("dir",)
                else:
                    found[str(path)] = ("special", stat.S_IFMT(mode))
    return found


def tree_hash(path: Path) -> str:
    """One hash over a model directory's names and bytes (the source must never change)."""
    digest = hashlib.sha256()
    for name, entry in sorted(snapshot(path).items()):
        digest.update(repr((os.path.relpath(name, path), entry)).encode())
    return digest.hexdigest()


# -- the models ------------------------------------------------------------------------------------


def _save_good(path: Path) -> Path:
    model = tiny_model("llama", vocab_size=259, max_position_embeddings=WINDOW, hidden_size=16,
                       intermediate_size=32, num_attention_heads=2, num_key_value_heads=1, num_hidden_layers=1)
    model.save_pretrained(path)
    byte_tokenizer().save_pretrained(path)
    return path


def _edit_config(path: Path, change) -> None:
    config = json.loads((path / "config.json").read_text())
    change(config)
    (path / "config.json").write_text(json.dumps(config))


def _set(**values):
    def change(config):
        for key, value in values.items():
            if value is _DROP:
                config.pop(key, None)
            else:
                config[key] = value

    return change


_DROP = object()


def _rope(**values):
    def change(config):
        config["rope_parameters"] = {**config["rope_parameters"], **values}

    return change


def _safetensors_with_header(header: bytes, body: bytes = b"") -> bytes:
    return struct.pack("<Q", len(header)) + header + body


def _pickle_only(path: Path) -> None:
    (path / "model.safetensors").unlink()
    marker = str(path.parent.parent / PWNED).encode()
    (path / "pytorch_model.bin").write_bytes(b"\x80\x04cos\nsystem\n(S'touch " + marker + b"'\ntR.")


def _fifo(name: str):
    def change(path: Path) -> None:
        target = path / name
        if target.exists():
            target.unlink()
        os.mkfifo(target)

    return change


def _socket(path: Path) -> None:
    sock = socket.socket(socket.AF_UNIX)
    sock.bind(str(path / "ctl.sock"))
    sock.close()


def _word_tokenizer(path: Path) -> None:
    for name in ("tokenizer.json", "tokenizer_config.json"):
        (path / name).unlink()
    word_tokenizer().save_pretrained(path)


def _weights(path: Path):
    return path / "model.safetensors"


#: model folder -> what is wrong with it (a function of the copied folder)
MODELS = {
    # the folder
    "no-config": lambda p: (p / "config.json").unlink(),
    "config-dir": lambda p: ((p / "config.json").unlink(), (p / "config.json").mkdir()),
    "config-fifo": _fifo("config.json"),
    "config-invalid": lambda p: (p / "config.json").write_text("{nope"),
    "config-empty": lambda p: (p / "config.json").write_text(""),
    "config-list": lambda p: (p / "config.json").write_text("[1, 2]"),
    "config-bytes": lambda p: (p / "config.json").write_bytes(bytes(range(128, 256))),
    "fifo-inside": _fifo("notes.fifo"),
    "socket-inside": _socket,
    "dangling-inside": lambda p: os.symlink(p / "gone.bin", p / "extra.bin"),
    "dangling-weights": lambda p: (_weights(p).unlink(), os.symlink(p / "gone.safetensors", _weights(p))),
    # config values of the wrong type
    "rope_theta-text": lambda p: _edit_config(p, _set(rope_parameters=_DROP, rope_theta="abc")),
    "rope_theta-negative": lambda p: _edit_config(p, _rope(rope_theta=-1.0)),
    "rope_theta-bool": lambda p: _edit_config(p, _rope(rope_theta=True)),
    "rope_theta-list": lambda p: _edit_config(p, _rope(rope_theta=[10000])),
    "rope_parameters-text": lambda p: _edit_config(p, _set(rope_parameters="yarn")),
    "rope_parameters-list": lambda p: _edit_config(p, _set(rope_parameters=[1, 2])),
    "rope_type-number": lambda p: _edit_config(p, _rope(rope_type=5)),
    "factor-text": lambda p: _edit_config(p, _rope(rope_type="yarn", factor="two")),
    "rope_scaling-text": lambda p: _edit_config(p, _set(rope_scaling="linear")),
    "head_dim-text": lambda p: _edit_config(p, _set(head_dim="abc")),
    "head_dim-zero": lambda p: _edit_config(p, _set(head_dim=0)),
    "hidden_size-text": lambda p: _edit_config(p, _set(head_dim=_DROP, hidden_size="16")),
    "heads-zero": lambda p: _edit_config(p, _set(num_attention_heads=0)),
    "window-text": lambda p: _edit_config(p, _set(max_position_embeddings="abc")),
    "partial-two": lambda p: _edit_config(p, _set(partial_rotary_factor=2)),
    "partial-text": lambda p: _edit_config(p, _set(partial_rotary_factor="half")),
    "original-text": lambda p: _edit_config(p, _set(original_max_position_embeddings="x")),
    "record-text": lambda p: _edit_config(p, _set(ctxext="yes")),
    "record-fields": lambda p: _edit_config(p, _set(ctxext={"method": "yarn"})),
    "record-theta": lambda p: _edit_config(p, _set(ctxext={"method": "yarn", "factor": 2, "max_window": 512,
                                                           "original_max_position_embeddings": 256,
                                                           "rope_theta": {"global": "x"}})),
    "no-rope": lambda p: _edit_config(p, _set(rope_parameters=_DROP, rope_theta=_DROP)),
    "gpt2": lambda p: _edit_config(p, lambda c: c.update(model_type="gpt2", n_positions=256)),
    # weights
    "weights-truncated": lambda p: _weights(p).write_bytes(_weights(p).read_bytes()[:3000]),
    "weights-empty": lambda p: _weights(p).write_bytes(b""),
    "weights-garbage": lambda p: _weights(p).write_bytes(random.Random(0).randbytes(4096)),
    "weights-bad-header": lambda p: _weights(p).write_bytes(_safetensors_with_header(b"not json at all")),
    "weights-trailing": lambda p: _weights(p).write_bytes(_weights(p).read_bytes() + b"\0" * 100),
    "weights-dir": lambda p: (_weights(p).unlink(), _weights(p).mkdir()),
    "weights-none": lambda p: _weights(p).unlink(),
    "weights-pickle": _pickle_only,
    "weights-index-missing-shard": lambda p: (_weights(p).unlink(), (p / "model.safetensors.index.json").write_text(
        json.dumps({"weight_map": {"lm_head.weight": "model-00001-of-00002.safetensors"}}))),
    "weights-index-corrupt": lambda p: (_weights(p).unlink(), (p / "model.safetensors.index.json").write_text("[")),
    "weights-no-tensors": lambda p: _weights(p).write_bytes(_safetensors_with_header(b"{}")),
    "weights-wrong-shape": lambda p: save_file({"model.embed_tokens.weight": torch.zeros(3, 3)}, str(_weights(p))),
    # tokenizers
    "tokenizer-none": lambda p: [(p / n).unlink() for n in ("tokenizer.json", "tokenizer_config.json")],
    "tokenizer-config-only": lambda p: (p / "tokenizer.json").unlink(),
    "tokenizer-corrupt": lambda p: (p / "tokenizer.json").write_text("{nope"),
    "tokenizer-empty": lambda p: (p / "tokenizer.json").write_text(""),
    "tokenizer-config-corrupt": lambda p: (p / "tokenizer_config.json").write_text("{"),
    "tokenizer-fifo": _fifo("tokenizer.json"),
    "tokenizer-unusable": _word_tokenizer,
}


# -- the data -------------------------------------------------------------------------------------


def english(n_words: int, seed: int = 0) -> str:
    rng = random.Random(seed)
    words = ["the", "grass", "is", "green", "sky", "blue", "we", "go", "there", "and", "back", "again"]
    return " ".join(rng.choice(words) for _ in range(n_words)) + "\n"


def _data(root: Path) -> dict[str, Path]:
    d = root / "data"
    d.mkdir()
    files = {
        "book.txt": english(2000).encode(),
        "empty.txt": b"",
        "blank.txt": b"  \n\n\t\n",
        "random.txt": random.Random(1).randbytes(2000),
        "latin1.txt": "caf\xe9 ".encode("latin-1") * 50,
        "number.jsonl": b'{"text": 5}\n{"text": 7}\n',
        "list.jsonl": b'{"text": ["a", "b"]}\n',
        "malformed.jsonl": b"{nope\n",
        "empty.jsonl": b"",
        "no-text.jsonl": b'{"x": "a"}\n{"x": "b"}\n',
        "good.jsonl": json.dumps({"body": english(800)}).encode() + b"\n",
        "scalar.json": b"5",
        "garbage.parquet": random.Random(2).randbytes(500),
        "table.csv": b"text\nhello\n",
        "short.txt": b"too short\n",
    }
    paths = {}
    for name, content in files.items():
        (d / name).write_bytes(content)
        paths[name] = d / name
    os.mkfifo(d / "fifo.txt")
    paths["fifo.txt"] = d / "fifo.txt"
    os.symlink(d / "gone.txt", d / "dangling.txt")
    paths["dangling.txt"] = d / "dangling.txt"
    for name, contents in {"dir-empty": {}, "dir-mixed": {"a.txt": "x", "b.jsonl": '{"text": "y"}\n'},
                           "dir-good": {"a.txt": english(800)}}.items():
        (d / name).mkdir()
        for file, text in contents.items():
            (d / name / file).write_text(text)
        paths[name] = d / name
    (d / "dir-fifo").mkdir()
    (d / "dir-fifo" / "a.txt").write_text(english(100))
    os.mkfifo(d / "dir-fifo" / "b.txt")
    paths["dir-fifo"] = d / "dir-fifo"
    return paths


# -- the world ------------------------------------------------------------------------------------


def build(root: Path) -> World:
    """Everything the hostile cases need, under `root` (which becomes their working directory)."""
    root.mkdir(parents=True, exist_ok=True)
    world = World(root)
    good = _save_good(root / "models" / "good")
    world.models["good"] = good
    for name, damage in MODELS.items():
        target = root / "models" / name
        shutil.copytree(good, target)
        damage(target)
        world.models[name] = target
    # the first case: a model inside a folder that also holds a file of the user's
    shutil.copytree(good, root / "parent" / "model")
    (root / "parent" / "unrelated.txt").write_text("the user's own file\n")
    world.models["parent/model"] = root / "parent" / "model"
    # a model that already carries scaling (needs --replace)
    scaled = root / "models" / "scaled"
    shutil.copytree(good, scaled)
    _edit_config(scaled, _set(rope_parameters={"rope_type": "llama3", "rope_theta": 10000.0, "factor": 8.0,
                                               "low_freq_factor": 1.0, "high_freq_factor": 4.0,
                                               "original_max_position_embeddings": 32}))
    world.models["scaled"] = scaled
    world.data = _data(root)
    # outputs that are not ctxext's, or are
    (root / "existing").mkdir()
    (root / "existing" / "mine.txt").write_text("keep me\n")
    (root / "afile").write_text("a file, not a folder\n")
    os.symlink(root / "existing", root / "link-to-existing")
    os.symlink(root / "nowhere", root / "dangling-link")
    os.symlink(good, root / "link-to-good")
    os.mkfifo(root / "fifo")
    (root / "picture.png").write_bytes(b"\x89PNG a picture of the user's\n")
    os.symlink(root / "nowhere.png", root / "dangling.png")
    marked = root / "marked"
    marked.mkdir()
    (marked / ".ctxext").write_text('{"written_by": "ctxext"}\n')
    (marked / "passkey.json").write_text("not results\n")
    (marked / "perplexity.json").write_text('{"results": 3}\n')
    (root / ".locked.lock").write_text("someone else's lock file\n")
    (root / "fresh").mkdir()  # new outputs go under here: fresh/<case>
    (root / "cache").mkdir()
    (root / "run.checkpoints").mkdir()  # a user's folder that happens to have train's checkpoint name
    (root / "run.checkpoints" / "notes.txt").write_text("mine\n")
    (root / "state.search").mkdir()  # a user's folder that happens to have search's state name
    (root / "state.search" / "notes.txt").write_text("mine\n")
    return world
