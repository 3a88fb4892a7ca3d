"""Load a model and its tokenizer from a local directory or a Hugging Face hub id, with one clear error.

    model, tokenizer = load_model("checkpoints/llama-yarn-x8", device="cpu", dtype="float32")

CPU float32 by default; on CUDA, bf16 and SDPA (or FlashAttention 2 when installed) unless told
otherwise. RoPE frequencies stay float32 whatever `dtype` is (transformers computes them so).

A model directory is checked before anything reads it (`check_source`): it must hold a config.json
and only regular files (a named pipe would hang a reader, a broken link fail it), and, where weights
are needed, safetensors files whose headers are whole. Pickle weights (`*.bin`) are never loaded:
unpickling runs whatever code the file holds.
"""

from __future__ import annotations

import contextlib
import json
import os
import stat
import struct
import warnings
from pathlib import Path
from typing import Any, Iterator

from .errors import CtxextError, first_line, installed, internal_error

DTYPES = ("auto", "float32", "bfloat16", "float16")

#: files transformers builds a tokenizer from; a folder with none of them has no tokenizer
TOKENIZER_FILES = ("tokenizer.json", "tokenizer.model", "spiece.model", "sentencepiece.bpe.model", "vocab.json",
                   "vocab.txt", "merges.txt", "vocab.model", "tokenizer.tiktoken", "qwen.tiktoken")
#: tokenizer files that are JSON documents
TOKENIZER_JSON = ("tokenizer.json", "tokenizer_config.json", "special_tokens_map.json", "added_tokens.json", "vocab.json")
#: weights ctxext will not unpickle
PICKLE_WEIGHTS = ("pytorch_model.bin", "pytorch_model.bin.index.json", "model.pt", "model.pth", "model.ckpt")
#: a safetensors header larger than this is not a header (the format caps it at 100 MB)
MAX_HEADER = 100 * 1024 * 1024


def is_local(source: str | os.PathLike) -> bool:
    return Path(source).expanduser().exists()


def is_hub_id(text: str) -> bool:
    """Shaped like a Hugging Face hub id: 'name' (legacy ids such as gpt2) or 'org/name', and not a path.

    huggingface_hub's own rule decides the shape; something that names a local place (starts with
    '.', '/' or '~', exists on disk, or whose first part is a local folder) is a path, not an id.
    """
    from huggingface_hub.utils import HFValidationError, validate_repo_id

    if not isinstance(text, str) or text.startswith((".", "/", "~")) or os.path.lexists(os.path.expanduser(text)):
        return False
    if "/" in text and os.path.isdir(text.split("/", 1)[0]):
        return False  # data/missing.txt next to a data/ folder is a missing file, not a hub repo
    try:
        validate_repo_id(text)
    except HFValidationError:
        return False
    return True


def file_problem(path: Path) -> str | None:
    """What is wrong with a directory entry a reader would open: None for a regular file or directory."""
    try:
        mode = os.lstat(path).st_mode
    except OSError as err:
        return f"cannot be read ({err.strerror})"
    if stat.S_ISLNK(mode):
        try:
            mode = os.stat(path).st_mode
        except OSError:
            return f"is a broken symbolic link (to {os.readlink(path)})"
    if stat.S_ISREG(mode) or stat.S_ISDIR(mode):
        return None
    kind = "a named pipe" if stat.S_ISFIFO(mode) else "a socket" if stat.S_ISSOCK(mode) else "a device file"
    return f"is {kind}, not a file"


def check_files(directory: Path, what: str = "model folder") -> None:
    """Refuse a folder holding something other than regular files and folders (pipes, broken links)."""
    for root, dirs, files in os.walk(directory):
        for name in sorted(dirs + files):
            problem = file_problem(Path(root) / name)
            if problem:
                path = Path(root) / name
                raise CtxextError(f"{path} {problem}; ctxext reads {what}s of regular files only: remove it or fix it.")


def check_source(source: str | os.PathLike, *, weights: bool = False) -> str:
    """A local model directory or a hub id, checked without loading anything; CtxextError otherwise.

    weights=True also checks the weight files of a local directory (for commands that load them);
    whether they fit the config is `check_weights_fit`, once the config's own values are checked.
    """
    if not isinstance(source, (str, os.PathLike)):
        raise CtxextError(f"A model must be a directory or a hub id, got {type(source).__name__}.")
    text = os.fspath(source)
    if not text.strip():
        raise CtxextError("The model name is empty; give a checkpoint directory or a hub id like 'org/name'.")
    path = Path(text).expanduser()
    if os.path.lexists(path):
        problem = file_problem(path)
        if problem:
            raise CtxextError(f"Model {text} {problem}; give a checkpoint directory or a hub id.")
        if not path.is_dir():
            raise CtxextError(f"{text} is not a model directory (it is a file); give the checkpoint directory that holds config.json.")
        if not os.path.lexists(path / "config.json"):
            raise CtxextError(f"{text} is not a model directory (it has no config.json); give a checkpoint directory or a hub id.")
        check_files(path)
        if not (path / "config.json").is_file():
            raise CtxextError(f"{path / 'config.json'} is not a file; give a checkpoint directory with a config.json.")
        if weights:
            check_weights(path)
        return str(path)
    if not is_hub_id(text):
        raise CtxextError(f"Model {text!r} not found: no such directory, and it is not a hub id like 'org/name'.")
    return text


def _check_safetensors(path: Path) -> dict[str, tuple[int, ...]]:
    """{tensor name: shape} of a safetensors file whose header and length agree; CtxextError naming the file otherwise.

    Reads the 8-byte length and the JSON header only (what safetensors itself validates first), so
    it costs nothing whatever the file's size.
    """
    try:
        size = path.stat().st_size
        with open(path, "rb") as handle:
            head = handle.read(8)
            length = struct.unpack("<Q", head)[0] if len(head) == 8 else None
            header = handle.read(length) if length is not None and 0 < length <= min(MAX_HEADER, size - 8) else None
    except OSError as err:
        raise CtxextError(f"Cannot read {path}: {err.strerror or err}; check the file's permissions.") from None
    problem = None
    if size == 0:
        problem = "is empty"
    elif header is None:
        problem = "is truncated or not a safetensors file (its header length does not fit the file)"
    else:
        try:
            meta = json.loads(header)
            if not isinstance(meta, dict):
                raise ValueError
            entries = {name: entry for name, entry in meta.items() if name != "__metadata__"}
            spans = [entry["data_offsets"] for entry in entries.values()]
            if not all(isinstance(span, list) and len(span) == 2 and all(type(v) is int for v in span)
                       and 0 <= span[0] <= span[1] for span in spans):
                raise TypeError
            shapes = {name: tuple(entry["shape"]) for name, entry in entries.items()}
            if not all(type(n) is int and n >= 0 for shape in shapes.values() for n in shape):
                raise TypeError
            ends = [span[1] for span in spans]
        except (ValueError, KeyError, TypeError, IndexError, UnicodeDecodeError):
            problem = "is corrupt (its header is not a safetensors header)"
        else:
            data, described = size - 8 - len(header), max(ends, default=0)
            if described > data:
                problem = f"is truncated ({size:,} bytes where its header describes {8 + len(header) + described:,})"
            elif described < data:
                problem = f"is corrupt ({data - described:,} bytes after the tensors its header describes)"
    if problem:
        raise CtxextError(f"{path} {problem}; download or copy it again.")
    return shapes


def check_weights(directory: Path) -> dict[str, tuple[int, ...]]:
    """{tensor name: shape} of the directory's safetensors weights, checked present and whole (headers read,
    nothing loaded)."""
    index = directory / "model.safetensors.index.json"
    if index.exists():
        try:
            shards = sorted(set(json.loads(index.read_text(encoding="utf-8"))["weight_map"].values()))
        except (OSError, ValueError, KeyError, TypeError, AttributeError, UnicodeDecodeError):
            raise CtxextError(f"{index} is not a valid safetensors index (no weight_map); download or copy it again.") from None
        files = [directory / shard for shard in shards]
        missing = [f for f in files if not f.exists()]
        if missing:
            raise CtxextError(f"{missing[0]} is missing (listed in {index.name}); download or copy it again.")
    elif os.path.lexists(directory / "model.safetensors"):
        files = [directory / "model.safetensors"]
    else:
        pickles = [name for name in PICKLE_WEIGHTS if (directory / name).exists()]
        if pickles:
            raise CtxextError(
                f"{directory} holds only pickle weights ({pickles[0]}), which ctxext never loads because unpickling "
                "can run any code the file holds; convert them to model.safetensors with a tool you trust, or use a "
                "checkpoint that ships safetensors."
            )
        raise CtxextError(f"{directory} holds no model weights (no model.safetensors); give a complete checkpoint directory.")
    shapes: dict[str, tuple[int, ...]] = {}
    for path in files:
        if not path.is_file():
            raise CtxextError(f"{path} is not a file; download or copy it again.")
        shapes |= _check_safetensors(path)
    return shapes


@contextlib.contextmanager
def _quiet_transformers() -> Iterator[None]:
    """No load report and no progress bar from transformers inside the block (what matters is refused here)."""
    from transformers.utils import logging

    verbosity, bars = logging.get_verbosity(), logging.is_progress_bar_enabled()
    logging.set_verbosity_error()
    logging.disable_progress_bar()
    try:
        yield
    finally:
        logging.set_verbosity(verbosity)
        if bars:
            logging.enable_progress_bar()


def _refuse_unfit(source: str, wrong: list[str]) -> None:
    """CtxextError when any tensor the config's model needs is missing from the weights or of another shape."""
    if wrong:
        raise CtxextError(
            f"The weights of {source} do not fit its config.json: {len(wrong)} tensor(s) missing or of another "
            f"shape ({', '.join(wrong[:3])}{', ...' if len(wrong) > 3 else ''}); give the weights that belong to it."
        )


def load_config(source: str | os.PathLike) -> Any:
    """The transformers config of a checked model directory or hub id, with whose fault any failure is.

    transformers refusing the config's values or its model type is the input's fault (one sentence
    about config.json); anything else it raises is an internal error, reported as such.
    """
    from transformers import AutoConfig

    source = os.fspath(source)
    try:
        with _quiet_transformers():
            return AutoConfig.from_pretrained(source)
    except OSError as err:
        if is_local(source):
            raise
        raise CtxextError(f"{source} is not a local directory, and fetching its config from the Hugging Face hub "
                          f"failed ({first_line(err)}); check the model id and the network.") from None
    except (ValueError, TypeError, KeyError) as err:  # the config's values or model type, as transformers validates them
        raise CtxextError(f"{installed('transformers')} does not accept the config of {source}: "
                          f"{first_line(err, last=True)}; fix the value it names, or use a transformers that knows "
                          "this model type.") from None
    except Exception as err:
        raise internal_error(err, f"reading the config of {source}") from None


def empty_causal_lm(config: Any, source: str, real_buffers: bool = False) -> Any:
    """The causal LM that `config` describes, built on the meta device: names and shapes, no memory, no weights read.

    `real_buffers`: buffers (a rotary module's frequencies, computed by stock code) are built for real, only the
    parameters on the meta device. A text model saved alone (Mllama's or Emu3's causal LM), whose config the auto
    class does not map, is built from the causal-LM class its config names. A config that transformers does not
    build as a causal LM is the input's fault; any other failure to build is an internal error.
    """
    import torch
    import transformers
    from accelerate import init_empty_weights
    from transformers import AutoModelForCausalLM, PreTrainedModel
    from transformers.models.auto.modeling_auto import MODEL_FOR_CAUSAL_LM_MAPPING

    named = [getattr(transformers, a, None) for a in (getattr(config, "architectures", None) or [])
             if isinstance(a, str) and a.endswith("ForCausalLM")]
    named = [c for c in named if isinstance(c, type) and issubclass(c, PreTrainedModel)]
    empty = init_empty_weights(include_buffers=False) if real_buffers else torch.device("meta")
    try:
        with _quiet_transformers(), warnings.catch_warnings(), empty:
            warnings.simplefilter("ignore")
            if type(config) not in MODEL_FOR_CAUSAL_LM_MAPPING and named:
                return named[0](config)
            return AutoModelForCausalLM.from_config(config)
    except ValueError as err:
        if "Unrecognized configuration class" not in str(err):
            raise internal_error(err, f"building the model that the config of {source} describes") from None
        raise CtxextError(f"{source} holds a {config.model_type!r} model, which transformers does not load as a "
                          "causal language model; give a decoder-only (causal LM) checkpoint.") from None
    except Exception as err:
        raise internal_error(err, f"building the model that the config of {source} describes") from None


def unfit_weights(model: Any, stored: dict[str, tuple[int, ...]]) -> list[str]:
    """The state-dict names of `model` that the stored tensors ({name: shape}) leave missing or give another shape.

    Checkpoint names are mapped as `from_pretrained` maps them (renamed, merged or split experts, with or
    without the base model's prefix); a tied weight may be left out, and so may what the model says it
    ignores when missing. Tensors that a converter merges (per-expert weights into one) or splits (a fused
    projection into several) are checked by size: the stored pieces must hold as many elements as the
    tensors they become, so a missing expert or a piece of another shape is found too.
    """
    import math
    import re

    from ._compat import checkpoint_key_renamer, ignored_missing_patterns, tied_weight_names

    rename = checkpoint_key_renamer(model)
    shapes = {name: tuple(tensor.shape) for name, tensor in model.state_dict().items()}
    filled: dict[str, tuple[int, ...]] = {}  # model name -> the stored shape (one-to-one)
    converted: dict[tuple[str, ...], int] = {}  # the model names a converter fills -> elements stored for them
    for key, shape in stored.items():
        targets, merged = rename(key)
        if merged:
            group = tuple(sorted(targets))
            converted[group] = converted.get(group, 0) + math.prod(shape)
        else:
            filled[targets[0]] = shape
    wrong = {name for name, shape in filled.items() if name in shapes and shape != shapes[name]}
    for group, size in converted.items():
        if size != sum(math.prod(shapes.get(name, (0,))) for name in group):
            wrong.update(group)
    present = set(filled).union(*converted)
    patterns = ignored_missing_patterns(model)
    ignored = re.compile("|".join(f"(?:{p})" for p in patterns)) if patterns else None
    tied = tied_weight_names(model)
    wrong.update(name for name in shapes
                 if name not in present and name not in tied and not (ignored and ignored.search(name)))
    return [name for name in shapes if name in wrong]  # in the model's order


def check_weights_fit(directory: str | os.PathLike, config: Any = None) -> Any:
    """The weights hold every tensor the config's model needs, in its shape, or CtxextError before any work;
    returns the config (`load_config`'s, unless one already read is given).

    The config's model is built on the meta device (`torch.device("meta")`: no memory, no weights
    read) and its state dict compared with the safetensors headers, names mapped as `from_pretrained`
    maps them. No loading path is used that transformers does not document for this.
    """
    directory = os.fspath(directory)
    stored = check_weights(Path(directory))
    config = config if config is not None else load_config(directory)
    _refuse_unfit(directory, unfit_weights(empty_causal_lm(config, directory), stored))
    return config


def pick_device(device: str | None = None) -> str:
    """`device` checked against this machine (cpu, cuda, cuda:N, mps, xpu); the best one when None."""
    import torch

    if not device:
        return "cuda" if torch.cuda.is_available() else "cpu"
    try:
        parsed = torch.device(device)
    except (RuntimeError, TypeError, ValueError):
        raise CtxextError(f"Unknown device {device!r}; use cpu, cuda, cuda:N or mps.") from None
    kind = parsed.type
    if kind == "cpu":
        return device
    backend = {"cuda": torch.cuda, "xpu": getattr(torch, "xpu", None), "mps": getattr(torch, "mps", None)}.get(kind)
    if kind == "mps":
        available, count = torch.backends.mps.is_available(), 1
    elif backend is not None and hasattr(backend, "is_available"):
        available = backend.is_available()
        count = backend.device_count() if available else 0
    else:
        raise CtxextError(f"ctxext does not run on --device {device} ({kind}); use cpu, cuda, cuda:N or mps.")
    if not available:
        raise CtxextError(f"--device {device} was asked for but no {kind.upper()} device is available; use --device cpu.")
    if parsed.index is not None and parsed.index >= count:
        raise CtxextError(f"--device {device} was asked for but this machine has {count} {kind} device(s), "
                          f"{kind}:0 to {kind}:{count - 1}.")
    return device


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
    """The tokenizer of a model directory or hub id; CtxextError when it has none or it does not load.

    A local directory without tokenizer files is refused: transformers would otherwise build an
    empty tokenizer from the model type alone, which turns every text into nothing.
    """
    from transformers import AutoTokenizer

    source = check_source(source)
    if is_local(source):
        if not any((Path(source) / name).is_file() for name in TOKENIZER_FILES):
            raise CtxextError(
                f"{source} has no tokenizer files (tokenizer.json, tokenizer.model, vocab.json, ...); copy the base "
                "model's tokenizer into it (tokenizer.save_pretrained)."
            )
        for name in TOKENIZER_JSON:  # name the broken file, which transformers' own error does not
            path = Path(source) / name
            if path.is_file():
                try:
                    json.loads(path.read_bytes())
                except ValueError as err:  # JSONDecodeError and UnicodeDecodeError
                    raise CtxextError(f"{path} is not valid JSON ({first_line(err)}); copy the tokenizer files again.") from None
    try:
        tokenizer = AutoTokenizer.from_pretrained(source)
    except Exception as err:
        # a file that is not what it claims raises what its parser raises: ValueError and the like, or the
        # bare Exception of the Rust tokenizers; anything else is transformers' or tokenizers' own failure
        if not (type(err) is Exception or isinstance(err, (ValueError, TypeError, KeyError, OSError))):
            raise internal_error(err, f"loading the tokenizer of {source}") from None
        raise CtxextError(f"Could not load the tokenizer of {source}: {first_line(err)}; check its tokenizer files.") from None
    if len(tokenizer) < 2:
        raise CtxextError(f"The tokenizer of {source} has {len(tokenizer)} token(s), so it cannot encode text; check its tokenizer files.")
    return tokenizer


def load_model(
    source: str | os.PathLike,
    device: str | None = None,
    dtype: str | None = None,
    attn_implementation: str | None = None,
) -> tuple[Any, Any]:
    """(model in eval mode on `device`, tokenizer) from a directory or hub id.

    Only safetensors weights are read; weights that do not fit the config (missing or of another
    shape) are refused rather than left randomly initialised.
    """
    from transformers import AutoModelForCausalLM
    from transformers.utils import logging

    source = check_source(source, weights=True)
    device = pick_device(device)
    torch_dtype = pick_dtype(dtype, device)
    tokenizer = load_tokenizer(source)
    config = load_config(source)
    if is_local(source):  # every input fault is found here, so whatever loading raises below is not the input's
        check_weights_fit(source, config)
    verbosity = logging.get_verbosity()
    logging.set_verbosity_error()  # transformers' load report; what matters in it is refused below
    try:
        model, info = AutoModelForCausalLM.from_pretrained(
            source,
            config=config,
            dtype=torch_dtype,
            attn_implementation=attn_implementation or attention_implementation(device),
            use_safetensors=True,
            ignore_mismatched_sizes=True,
            output_loading_info=True,
        )
    except OSError as err:
        if is_local(source):
            raise
        raise CtxextError(f"{source} is not a local directory, and fetching its weights from the Hugging Face hub "
                          f"failed ({first_line(err)}); check the model id and the network.") from None
    except Exception as err:
        raise internal_error(err, f"loading the weights of {source}") from None
    finally:
        logging.set_verbosity(verbosity)
    # a hub model's weights are first seen here
    _refuse_unfit(source, sorted(info.get("missing_keys") or ()) + sorted(
        str(k[0] if isinstance(k, tuple) else k) for k in info.get("mismatched_keys") or ()))
    return model.to(device).eval(), tokenizer
