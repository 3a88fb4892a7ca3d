"""Load a model and its tokenizer from a local directory or a Hugging Face hub id, with one clear error.

    model, tokenizer = load_model("checkpoints/llama-yarn-x8", device="cpu", dtype="float32")

CPU float32 by default; on CUDA, bf16 and SDPA (or FlashAttention 2 when installed) unless told
otherwise. RoPE frequencies stay float32 whatever `dtype` is (transformers computes them so).
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

from .errors import CtxextError

DTYPES = ("auto", "float32", "bfloat16", "float16")


def is_local(source: str | os.PathLike) -> bool:
    return Path(source).expanduser().exists()


def check_source(source: str | os.PathLike) -> str:
    """A local model directory or something shaped like a hub id; CtxextError otherwise (no loading)."""
    text = str(source)
    path = Path(text).expanduser()
    if path.exists():
        if not path.is_dir() or not (path / "config.json").is_file():
            raise CtxextError(f"{text} is not a model directory (it has no config.json); give a checkpoint directory or a hub id.")
        return str(path)
    parts = text.split("/")
    if text.startswith((".", "/", "~")) or len(parts) > 2 or not all(parts):
        raise CtxextError(f"Model {text!r} not found: no such directory, and it is not a hub id like 'org/name'.")
    return text


def pick_device(device: str | None = None) -> str:
    import torch

    if device:
        if device.startswith("cuda") and not torch.cuda.is_available():
            raise CtxextError(f"--device {device} was asked for but no CUDA device is available; use --device cpu.")
        return device
    return "cuda" if torch.cuda.is_available() else "cpu"


def pick_dtype(dtype: str | None, device: str):
    """float32 on CPU, bfloat16 on CUDA, unless asked otherwise."""
    import torch

    name = dtype or "auto"
    if name not in DTYPES:
        raise CtxextError(f"Unknown dtype {name!r}; choose one of {', '.join(DTYPES)}.")
    if name == "auto":
        return torch.bfloat16 if device.startswith("cuda") else torch.float32
    return getattr(torch, name)


def attention_implementation(device: str) -> str:
    """FlashAttention 2 on CUDA when installed, else PyTorch SDPA (a fused kernel either way)."""
    if device.startswith("cuda"):
        try:
            import flash_attn  # noqa: F401

            return "flash_attention_2"
        except ImportError:
            pass
    return "sdpa"


def load_tokenizer(source: str | os.PathLike) -> Any:
    from transformers import AutoTokenizer

    source = check_source(source)
    try:
        return AutoTokenizer.from_pretrained(source)
    except (OSError, ValueError) as err:
        raise CtxextError(f"Could not load a tokenizer for {source}: {_first_line(err)}") from None


def load_model(
    source: str | os.PathLike,
    device: str | None = None,
    dtype: str | None = None,
    attn_implementation: str | None = None,
) -> tuple[Any, Any]:
    """(model in eval mode on `device`, tokenizer) from a directory or hub id."""
    from transformers import AutoModelForCausalLM

    source = check_source(source)
    device = pick_device(device)
    torch_dtype = pick_dtype(dtype, device)
    tokenizer = load_tokenizer(source)
    try:
        model = AutoModelForCausalLM.from_pretrained(
            source,
            dtype=torch_dtype,
            attn_implementation=attn_implementation or attention_implementation(device),
        )
    except (OSError, ValueError) as err:
        raise CtxextError(f"Could not load model {source}: {_first_line(err)}") from None
    return model.to(device).eval(), tokenizer


def _first_line(err: BaseException) -> str:
    text = str(err).strip().splitlines()
    return (text[0] if text else type(err).__name__).rstrip(".") + "."
