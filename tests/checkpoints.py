"""Tiny checkpoints on disk (model, tokenizer, extra files) for the checkpoint and CLI tests."""

from __future__ import annotations

from pathlib import Path

from tokenizers import Tokenizer, models, pre_tokenizers
from transformers import PreTrainedTokenizerFast

from tiny import tiny_model

WORDS = ["<pad>", "<s>", "</s>", "<unk>"] + [f"w{i}" for i in range(124)]


def tiny_tokenizer() -> PreTrainedTokenizerFast:
    """A word-level tokenizer over the tiny models' 128-token vocabulary (no download)."""
    tok = Tokenizer(models.WordLevel({w: i for i, w in enumerate(WORDS)}, unk_token="<unk>"))
    tok.pre_tokenizer = pre_tokenizers.WhitespaceSplit()
    return PreTrainedTokenizerFast(tokenizer_object=tok, bos_token="<s>", eos_token="</s>", unk_token="<unk>",
                                   pad_token="<pad>")


def save_checkpoint(directory: Path, arch: str = "llama", **overrides) -> Path:
    """A tiny `arch` checkpoint with tokenizer, generation config, a README and an extra file."""
    model = tiny_model(arch, **overrides)
    model.save_pretrained(directory)
    tiny_tokenizer().save_pretrained(directory)
    (directory / "README.md").write_text("# the base model's own card\n")
    (directory / "notes").mkdir()
    (directory / "notes" / "license.txt").write_text("some license\n")
    return directory
