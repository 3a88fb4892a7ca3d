"""Training data: documents tokenized once (cached on disk), joined with EOS, cut into fixed-length sequences.

    tokens = tokenize(read_dataset("book.txt"), tokenizer)            # np.memmap of uint32 token ids
    samples = SampleStream(tokens, length=4096, total=800, seed=0)    # item k: the k-th training sample
    samples = SampleStream(tokens, length=512, total=800, seed=0, pose_target=4096)   # PoSE

The token stream is written once per (dataset, tokenizer) to `$CTXEXT_CACHE` (default
`~/.cache/ctxext`) and memory-mapped afterwards, so a second run, a resumed run and every other
process of a multi-GPU run read the same ids without tokenizing again.

Sample k of a run is sequence `permutation(seed, epoch)[k mod n]` of the n packed sequences: the
order depends on (seed, k) alone, which is what lets a resumed run continue with exactly the samples
an uninterrupted run would have seen, and lets accelerate hand every process a different slice.
"""

from __future__ import annotations

import hashlib
import json
import os
from pathlib import Path
from typing import Any, Sequence

import numpy as np
import torch

from .._compat import dataset_fingerprint
from ..errors import CtxextError

CACHE_ENV = "CTXEXT_CACHE"
_FORMAT = 1  # bump when the stream layout changes, so stale caches are not reused


def cache_root(cache_dir: str | os.PathLike | None = None) -> Path:
    if cache_dir is not None:
        return Path(cache_dir).expanduser()
    if os.environ.get(CACHE_ENV):
        return Path(os.environ[CACHE_ENV]).expanduser()
    return Path(os.environ.get("XDG_CACHE_HOME", "~/.cache")).expanduser() / "ctxext"


def tokenizer_fingerprint(tokenizer: Any) -> str:
    """A hash of everything that decides the ids: vocabulary, merges, normaliser, special tokens added."""
    backend = getattr(tokenizer, "backend_tokenizer", None)
    if backend is not None:
        text = backend.to_str()
    else:  # a slow tokenizer: its class and vocabulary
        text = type(tokenizer).__name__ + json.dumps(sorted(tokenizer.get_vocab().items()))
    text += f"|eos={tokenizer.eos_token_id}"
    return hashlib.sha256(text.encode()).hexdigest()[:16]


def token_stream(
    texts: Any, tokenizer: Any, cache_dir: str | os.PathLike | None = None, batch_size: int = 64, min_tokens: int = 0
) -> np.ndarray:
    """All documents of `texts` (a Dataset with a `text` column) tokenized and joined: doc EOS doc EOS ...

    Each document is tokenized with the tokenizer's own special tokens (a BOS where it adds one),
    then EOS is appended unless the tokenizer already put it there. A stream shorter than
    `min_tokens` is returned from memory and never cached, so data too short to use leaves no file.
    """
    eos = tokenizer.eos_token_id
    if eos is None:
        raise CtxextError("The tokenizer has no EOS token to join documents with; set tokenizer.eos_token first.")
    # datasets fingerprints a Dataset by its content and the transforms applied to it
    data = dataset_fingerprint(texts)
    key = hashlib.sha256(
        json.dumps({"format": _FORMAT, "data": data, "tokenizer": tokenizer_fingerprint(tokenizer)}).encode()
    ).hexdigest()[:20]
    path = cache_root(cache_dir) / "tokens" / f"{key}.u32"
    if not path.exists():
        tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
        held: list[np.ndarray] | None = []  # ids kept in memory until min_tokens are reached (then: the file)
        count, out = 0, None
        try:
            for batch in texts.iter(batch_size=batch_size):
                for ids in tokenizer(batch["text"])["input_ids"]:
                    if not ids or ids[-1] != eos:
                        ids = [*ids, eos]
                    chunk = np.asarray(ids, dtype=np.uint32)
                    count += len(chunk)
                    if held is not None:
                        held.append(chunk)
                        if count < min_tokens:
                            continue
                        path.parent.mkdir(parents=True, exist_ok=True)
                        out = open(tmp, "wb")
                        for piece in held:
                            out.write(piece.tobytes())
                        held = None
                    else:
                        out.write(chunk.tobytes())
            if held is not None:  # shorter than min_tokens: nothing written anywhere
                return np.concatenate(held) if held else np.zeros(0, dtype=np.uint32)
            out.close()
            os.replace(tmp, path)  # readers see a whole stream or none
        finally:
            if out is not None:
                out.close()
            tmp.unlink(missing_ok=True)
    if path.stat().st_size == 0:
        return np.zeros(0, dtype=np.uint32)
    return np.memmap(path, dtype=np.uint32, mode="r")


def read_dataset(dataset: Any, split: str = "train", text_field: str | None = None) -> Any:
    """Documents or token ids to train on, checked before anything is tokenized or loaded.

    A file / folder / hub name is read with `ctxext.data.load_texts`; a `datasets.Dataset` must have
    a `text` column; a 1-D sequence of ints (list, numpy array, tensor) is one pre-tokenized stream.
    """
    if isinstance(dataset, (str, os.PathLike)):
        from ..data import load_texts

        return load_texts(dataset, split=split, text_field=text_field)
    if hasattr(dataset, "column_names"):
        if "text" not in dataset.column_names:
            raise CtxextError(
                f"The dataset has no `text` column (columns: {', '.join(dataset.column_names)}); rename it to `text`."
            )
        if len(dataset) == 0:
            raise CtxextError("The dataset is empty: it has no documents.")
        return dataset
    ids = np.asarray(dataset.cpu() if isinstance(dataset, torch.Tensor) else dataset)
    if ids.ndim != 1 or not np.issubdtype(ids.dtype, np.integer) or (ids.size and ids.min() < 0):
        raise CtxextError(
            "Token data must be a 1-D sequence of non-negative integer ids; give a text file or dataset otherwise."
        )
    return ids


def tokenize(data: Any, tokenizer: Any, cache_dir: str | os.PathLike | None = None, min_tokens: int = 0) -> np.ndarray:
    """The token stream of what `read_dataset` returned (ids pass through unchanged); see token_stream."""
    if isinstance(data, np.ndarray):
        return data
    if tokenizer is None:
        raise CtxextError("Text data needs a tokenizer: pass tokenizer=..., or give token ids instead of text.")
    return token_stream(data, tokenizer, cache_dir, min_tokens=min_tokens)


def check_tokens(tokens: np.ndarray, length: int, config: dict, tokenizer: Any, described: str) -> None:
    """Refuse data that cannot train this model: less than one sequence, or ids outside its vocabulary."""
    if len(tokens) < length:
        raise CtxextError(
            f"Dataset {described} holds {len(tokens):,} tokens, fewer than one training sequence of {length:,}; "
            "give more text or a smaller --seq-len."
        )
    vocab_size = config.get("vocab_size") or (config.get("text_config") or {}).get("vocab_size")
    if vocab_size and tokenizer is not None and len(tokenizer) > vocab_size:
        raise CtxextError(
            f"The tokenizer has {len(tokenizer):,} tokens but the model's vocabulary only {vocab_size:,}; "
            "use the model's own tokenizer."
        )
    if vocab_size and tokenizer is None and int(tokens.max()) >= vocab_size:
        raise CtxextError(f"Token id {int(tokens.max())} is outside the model's vocabulary of {vocab_size:,}.")


def describe_dataset(dataset: Any) -> str:
    """A name for the dataset in messages and the run record: its path or hub name, or its type."""
    return str(dataset) if isinstance(dataset, (str, os.PathLike)) else f"in-memory {type(dataset).__name__}"


def pose_position_ids(length: int, target: int, generator: torch.Generator, chunks: int = 2) -> torch.Tensor:
    """Position ids [length] that make a `length`-token sequence span a `target`-token window (PoSE).

    Positional Skip-wise training (Zhu et al. 2023, arXiv 2309.10400): the sequence is cut into
    `chunks` contiguous pieces at random points, and piece i is shifted right by a skip u_i drawn
    from U{u_(i-1), ..., target - length} (u_-1 = 0). Ids stay strictly increasing, within
    [0, target), consecutive inside each piece; relative distances up to target - 1 are seen.
    """
    if not 1 <= chunks <= length:
        raise ValueError(f"chunks must be between 1 and length ({length}), got {chunks}")
    if target < length:
        raise ValueError(f"target ({target}) must be at least length ({length})")
    budget = target - length
    # chunks - 1 distinct cut points in 1..length-1
    cuts = (torch.randperm(length - 1, generator=generator)[: chunks - 1] + 1).sort().values.tolist()
    positions = torch.arange(length)
    skip = 0
    for start, end in zip([0, *cuts], [*cuts, length]):
        skip = int(torch.randint(skip, budget + 1, (1,), generator=generator))
        positions[start:end] += skip
    return positions


class SampleStream(torch.utils.data.Dataset):
    """Item k is the k-th training sample: `input_ids` [length], `sequence` (which packed sequence),
    and with `pose_target` the PoSE `position_ids` [length], drawn from a generator seeded by (seed, k).

    Packed sequence i is tokens[i * length : (i + 1) * length]; the tail shorter than `length` is
    dropped. `total` samples cycle through seeded permutations of the sequences, one per epoch.
    """

    def __init__(
        self,
        tokens: np.ndarray | Sequence[int],
        length: int,
        total: int,
        seed: int = 0,
        pose_target: int | None = None,
        pose_chunks: int = 2,
    ):
        self.tokens = tokens
        self.length = length
        self.total = total
        self.seed = seed
        self.pose_target = pose_target
        self.pose_chunks = pose_chunks
        self.n_sequences = len(tokens) // length
        if self.n_sequences == 0:
            raise ValueError(f"{len(tokens)} tokens hold no sequence of {length}")
        self._epoch: tuple[int, np.ndarray] | None = None

    def __len__(self) -> int:
        return self.total

    def sequence_index(self, k: int) -> int:
        epoch, offset = divmod(k, self.n_sequences)
        if self._epoch is None or self._epoch[0] != epoch:
            self._epoch = (epoch, np.random.default_rng([self.seed, epoch]).permutation(self.n_sequences))
        return int(self._epoch[1][offset])

    def __getitem__(self, k: int) -> dict[str, Any]:
        if not 0 <= k < self.total:
            raise IndexError(k)
        index = self.sequence_index(k)
        window = np.asarray(self.tokens[index * self.length : (index + 1) * self.length], dtype=np.int64)
        item = {"input_ids": torch.from_numpy(window), "sequence": index}
        if self.pose_target is not None:
            generator = torch.Generator().manual_seed(int(np.random.SeedSequence([self.seed, k]).generate_state(1)[0]))
            item["position_ids"] = pose_position_ids(self.length, self.pose_target, generator, self.pose_chunks)
        return item
