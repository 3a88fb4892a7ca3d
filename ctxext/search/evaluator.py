"""Score candidates on a model in memory by swapping its rotary frequencies: no reload, no copy.

    evaluator = FrequencyEvaluator(model)
    loss = evaluator.loss(candidate, documents)          # long factors, as past the original window
    loss = evaluator.loss(candidate, windows, short=True) # short factors (1): inside the original window
    evaluator.restore()                                   # the model's own frequencies again

Candidates differ only in `inv_freq` and `attention_scaling`, so the model is loaded once and each
candidate costs only the forward passes over the documents (batched, under torch.inference_mode).
The frequencies are the ones stock transformers' longrope computes from the same factors,
1 / (lambda_i * b^(2i/d)) in float32, and the attention factor multiplies cos and sin in both
regimes, as there: a searched checkpoint reloaded in stock transformers gives the logits scored here.
The loss runs the LM head on the scored positions only (a needle document scores a handful).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Sequence

import torch

from ..errors import CtxextError
from ..patching.rotary import frequencies, rotary_modules, serves, set_frequencies
from ..rope.functions import longrope
from ..rope.layout import RopeLayout, read_layout
from ..lm_head import IGNORE_INDEX, chunked_head_loss, decoder_hidden, default_chunk_size, own_head
from .objectives import ScoredSequence
from .space import Candidate

#: tokens one forward pass may hold (sets how many documents go in one batch)
DEFAULT_BATCH_TOKENS = 16384


def longrope_inv_freq(dim: int, rope_theta: float, factors: Sequence[float]) -> torch.Tensor:
    """Stock longrope's frequencies for one factor set: 1 / (lambda_i * b^(2i/d)), float32 [dim // 2]."""
    # the set is passed as long_factor with no short_factor: longrope() then uses it whatever the length
    inv_freq, _ = longrope(dim, rope_theta, 1.0, 1, long_factor=tuple(factors), attention_factor=1.0)
    return inv_freq


@dataclass
class _Buffer:
    module: Any
    layer_type: str | None
    rope_theta: float
    inv_freq: torch.Tensor  # the model's own, to restore
    attention_scaling: float


class FrequencyEvaluator:
    """Mean next-token loss of `model` on scored sequences, under any candidate's frequencies."""

    def __init__(self, model: Any, batch_tokens: int = DEFAULT_BATCH_TOKENS):
        config = getattr(model, "config", None)
        if config is None or not hasattr(model, "get_decoder"):
            raise CtxextError(f"A factor search needs a transformers causal LM, got {type(model).__name__}.")
        self.layout: RopeLayout = read_layout(config.to_dict())
        if self.layout.is_scaled:
            raise CtxextError(
                f"This model already uses {self.layout.describe_scaling()} RoPE scaling; search from the unscaled "
                "base model (or pass replace=True, CLI: --replace, to start from its original window)."
            )
        self.model = model
        self.batch_tokens = batch_tokens
        self.dim = self.layout.rotary_dim
        self.buffers: list[_Buffer] = []
        for target in rotary_modules(model):
            for layer_type in self.layout.targets:
                if not serves(target.module, layer_type):
                    continue  # a per-layer-type module without layers of this type
                buffer, scaling = frequencies(target.module, layer_type)
                if buffer.shape != (self.dim // 2,):
                    raise CtxextError(
                        f"ctxext does not recognise the rotary embedding {type(target.module).__name__}: it holds "
                        f"{buffer.numel()} frequencies where the config implies {self.dim // 2}."
                    )
                theta = float(self.layout.rope[layer_type]["rope_theta"])
                self.buffers.append(_Buffer(target.module, layer_type, theta, buffer.detach().clone(), scaling))
        if not self.buffers:
            raise CtxextError(f"Model {self.layout.model_type!r} has no rotary embedding module ctxext can search.")
        self.device = self.buffers[0].inv_freq.device

    @property
    def n(self) -> int:
        """Rotary frequencies per layer type: the length of long_factor."""
        return self.dim // 2

    @property
    def rope_theta(self) -> float:
        return self.buffers[0].rope_theta

    def set(self, candidate: Candidate | None, short: bool = False) -> None:
        """Write `candidate`'s frequencies (its long factors, or 1 with `short`) and attention factor into the model.

        None restores the model's own frequencies and attention scale.
        """
        for b in self.buffers:
            if candidate is None:
                inv_freq, scaling = b.inv_freq, b.attention_scaling
            else:
                factors = [1.0] * self.n if short else candidate.long_factor
                inv_freq, scaling = longrope_inv_freq(self.dim, b.rope_theta, factors), candidate.attention_factor
            set_frequencies(b.module, b.layer_type, inv_freq, scaling, rebuild=False)

    def restore(self) -> None:
        self.set(None)

    def _batches(self, sequences: Sequence[ScoredSequence]) -> list[list[ScoredSequence]]:
        """Sequences of similar length together, at most batch_tokens (padded) tokens per batch."""
        order = sorted(sequences, key=lambda s: -len(s.input_ids))
        batches: list[list[ScoredSequence]] = []
        for s in order:
            if batches and (len(batches[-1]) + 1) * len(batches[-1][0].input_ids) <= self.batch_tokens:
                batches[-1].append(s)
            else:
                batches.append([s])
        return batches

    def nll(self, sequences: Sequence[ScoredSequence]) -> tuple[float, int]:
        """(sum of -log p over the scored tokens, how many) under the frequencies currently set."""
        head = own_head(self.model)  # the model's own final-logit code (a scale, multiplier or softcap included)
        chunk_size = default_chunk_size(self.model.get_output_embeddings().weight.shape[0])
        pad = getattr(self.model.config, "pad_token_id", None) or 0
        total, count = 0.0, 0
        with torch.inference_mode():
            for batch in self._batches(sequences):
                width = len(batch[0].input_ids)
                ids = torch.full((len(batch), width), pad, dtype=torch.long)  # [B, T], right-padded
                labels = torch.full((len(batch), width), IGNORE_INDEX, dtype=torch.long)  # [B, T]: target of t is t + 1
                for row, s in enumerate(batch):
                    ids[row, : len(s.input_ids)] = torch.tensor(s.input_ids)
                    scored = torch.tensor(s.scored)
                    labels[row, scored - 1] = ids[row, scored]
                ids, labels = ids.to(self.device), labels.to(self.device)
                # right padding needs no mask: causal attention never looks at later (pad) positions
                hidden = decoder_hidden(self.model, input_ids=ids, use_cache=False)  # [B, T, H]
                keep = labels != IGNORE_INDEX  # [B, T]
                n = int(keep.sum())
                loss = chunked_head_loss(hidden[keep], head, labels[keep], chunk_size=chunk_size)  # mean over n
                total += float(loss) * n
                count += n
        return total, count

    def loss(self, candidate: Candidate | None, sequences: Sequence[ScoredSequence], short: bool = False) -> float:
        """Mean negative log-likelihood per scored token under `candidate` (None: the model's own rope)."""
        self.set(candidate, short=short)
        total, count = self.nll(sequences)
        return total / count
