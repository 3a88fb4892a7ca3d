"""Training data: documents tokenized once (cached on disk), joined with EOS, cut into fixed-length sequences.

    tokens = tokenize(read_dataset("book.txt"), tokenizer)            # np.memmap of uint32 token ids
    samples = SampleStream(tokens, length=4096, total=800, seed=0)    # item k: the k-th training sample
    samples = SampleStream(tokens, length=512, total=800, seed=0, pose_target=4096)   # PoSE

Prompt/completion data (`prompt` and `completion` text columns, or pre-tokenized `input_ids` with a
`completion_mask`, TRL's names) gives a stream of MASKED records instead: each token's id and whether
it belongs to a completion, which `prompt_loss_weight` reads; samples then carry `completion_mask`.

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
from typing import Any, Iterator, Sequence

import numpy as np
import torch

from .._compat import dataset_fingerprint
from ..errors import CtxextError

CACHE_ENV = "CTXEXT_CACHE"
_FORMAT = 1  # bump when the stream layout changes, so stale caches are not reused
#: a token of prompt/completion data: its id, and 1 where it belongs to a completion (or its EOS)
MASKED = np.dtype([("input_ids", "<u4"), ("completion_mask", "u1")])


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
    With `prompt` and `completion` columns, a document is the prompt (with the special tokens) then
    the completion (without) and EOS, as MASKED records marking the completion and its EOS.
    """
    eos = tokenizer.eos_token_id
    if eos is None:
        raise CtxextError("The tokenizer has no EOS token to join documents with; set tokenizer.eos_token first.")
    # datasets fingerprints a Dataset by its content and the transforms applied to it
    data = dataset_fingerprint(texts)
    key = hashlib.sha256(
        json.dumps({"format": _FORMAT, "data": data, "tokenizer": tokenizer_fingerprint(tokenizer)}).encode()
    ).hexdigest()[:20]
    pairs = has_completions(texts)
    dtype = MASKED if pairs else np.dtype(np.uint32)
    path = cache_root(cache_dir) / "tokens" / f"{key}.{'masked' if pairs else 'u32'}"
    if not path.exists():
        tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
        held: list[np.ndarray] | None = []  # ids kept in memory until min_tokens are reached (then: the file)
        count, out = 0, None
        try:
            for batch in texts.iter(batch_size=batch_size):
                for chunk in _documents(batch, tokenizer, eos, pairs):
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
                return np.concatenate(held) if held else np.zeros(0, dtype=dtype)
            out.close()
            os.replace(tmp, path)  # readers see a whole stream or none
        finally:
            if out is not None:
                out.close()
            tmp.unlink(missing_ok=True)
    if path.stat().st_size == 0:
        return np.zeros(0, dtype=dtype)
    return np.memmap(path, dtype=dtype, mode="r")


def _documents(batch: dict, tokenizer: Any, eos: int, pairs: bool) -> Iterator[np.ndarray]:
    """One batch of rows as token arrays ending in EOS: uint32 ids, or MASKED records for prompt/completion rows."""
    if not pairs:
        for ids in tokenizer(batch["text"])["input_ids"]:
            yield np.asarray(ids if ids and ids[-1] == eos else [*ids, eos], dtype=np.uint32)
        return
    prompts = tokenizer(batch["prompt"])["input_ids"]
    completions = tokenizer(batch["completion"], add_special_tokens=False)["input_ids"]
    for prompt, completion in zip(prompts, completions):
        if not completion or completion[-1] != eos:
            completion = [*completion, eos]
        chunk = np.zeros(len(prompt) + len(completion), dtype=MASKED)
        chunk["input_ids"] = [*prompt, *completion]
        chunk["completion_mask"][len(prompt):] = 1
        yield chunk


def input_ids(tokens: np.ndarray) -> np.ndarray:
    """The token ids of a stream, MASKED or not."""
    return tokens["input_ids"] if tokens.dtype == MASKED else tokens


def has_completions(data: Any) -> bool:
    """Whether a token stream, or what `read_dataset` returned, marks completions (prompt/completion data)."""
    if isinstance(data, np.ndarray):
        return data.dtype == MASKED
    return "text" not in data.column_names  # read_dataset's Datasets: text, or prompt and completion


def read_dataset(dataset: Any, split: str = "train", text_field: str | None = None) -> Any:
    """Documents or token ids to train on, checked before anything is tokenized or loaded.

    A file / folder / hub name is read with `ctxext.data.load_texts` (prompt/completion columns kept);
    a `datasets.Dataset` must have a `text` column, `prompt` and `completion` columns, or pre-tokenized
    `input_ids` (optionally with a `completion_mask` of 0/1 per token; rows joined as they are, no EOS
    added); a 1-D sequence of ints (list, numpy array, tensor) is one pre-tokenized stream.
    """
    if isinstance(dataset, (str, os.PathLike)):
        from ..data import load_texts

        return load_texts(dataset, split=split, text_field=text_field, pairs=True)
    if hasattr(dataset, "column_names"):
        from ..data import PAIR_FIELDS, prompt_completion_pairs

        if len(dataset) == 0:
            raise CtxextError("The dataset is empty: it has no documents.")
        if "text" in dataset.column_names:
            return dataset
        if all(f in dataset.column_names for f in PAIR_FIELDS):
            return prompt_completion_pairs(dataset, "given")
        if "input_ids" in dataset.column_names:
            return _pretokenized(dataset)
        raise CtxextError(
            f"The dataset has no `text` column (columns: {', '.join(dataset.column_names)}); rename it to `text`, "
            "or give `prompt` and `completion` columns, or pre-tokenized `input_ids`."
        )
    ids = np.asarray(dataset.cpu() if isinstance(dataset, torch.Tensor) else dataset)
    if not _are_token_ids(ids):
        raise CtxextError(
            "Token data must be a 1-D sequence of non-negative integer ids; give a text file or dataset otherwise."
        )
    return ids


def _are_token_ids(ids: np.ndarray) -> bool:
    """Whether an array is a 1-D sequence of non-negative integer ids."""
    return ids.ndim == 1 and np.issubdtype(ids.dtype, np.integer) and not (ids.size and ids.min() < 0)


def _pretokenized(dataset: Any) -> np.ndarray:
    """A Dataset's `input_ids` rows (and `completion_mask` rows, if it has them) joined into one stream."""
    masked = "completion_mask" in dataset.column_names
    pieces, i = [], 0
    for batch in dataset.iter(batch_size=256):
        masks = batch["completion_mask"] if masked else [None] * len(batch["input_ids"])
        for ids, mask in zip(batch["input_ids"], masks):
            ids = np.asarray(ids)
            if not (_are_token_ids(ids) or (ids.ndim == 1 and ids.size == 0)):  # an empty row holds no ids
                raise CtxextError(f"Row {i} of the dataset's input_ids is not a list of non-negative integer token ids.")
            if masked:
                mask = np.asarray(mask)
                if mask.shape != ids.shape or not np.isin(mask, (0, 1)).all():
                    raise CtxextError(
                        f"Row {i} of the dataset's completion_mask is not one 0 or 1 per token of its input_ids "
                        f"({mask.size} values for {ids.size} tokens)."
                    )
                piece = np.zeros(ids.size, dtype=MASKED)
                piece["input_ids"], piece["completion_mask"] = ids, mask
            else:
                piece = ids.astype(np.uint32)
            pieces.append(piece)
            i += 1
    return np.concatenate(pieces)


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
    if vocab_size and tokenizer is None and int(input_ids(tokens).max()) >= vocab_size:
        raise CtxextError(f"Token id {int(input_ids(tokens).max())} is outside the model's vocabulary of {vocab_size:,}.")


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
    with `pose_target` the PoSE `position_ids` [length], drawn from a generator seeded by (seed, k),
    and for a MASKED stream the `completion_mask` [length] (bool).

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
        window = np.asarray(self.tokens[index * self.length : (index + 1) * self.length])
        item = {"input_ids": torch.from_numpy(input_ids(window).astype(np.int64)), "sequence": index}
        if has_completions(window):
            item["completion_mask"] = torch.from_numpy(window["completion_mask"].astype(bool))
        if self.pose_target is not None:
            generator = torch.Generator().manual_seed(int(np.random.SeedSequence([self.seed, k]).generate_state(1)[0]))
            item["position_ids"] = pose_position_ids(self.length, self.pose_target, generator, self.pose_chunks)
        return item
