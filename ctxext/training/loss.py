"""Next-token cross-entropy of a causal LM for training, through the chunked LM head.

    loss = causal_lm_loss(model, input_ids)          # = model(input_ids, labels=input_ids).loss

The head itself (`chunked_cross_entropy`, `LogitTransform`) lives in `ctxext.lm_head`, shared with
perplexity scoring; this module runs the decoder and hands its hidden states to it.
"""

from __future__ import annotations

import torch
from torch import nn

from ..lm_head import (  # noqa: F401  (public names of this module since 0.1)
    CHUNK_LOGITS,
    IGNORE_INDEX,
    LogitTransform,
    chunked_cross_entropy,
    default_chunk_size,
    shifted_labels,
)


def causal_lm_loss(
    model: nn.Module,
    input_ids: torch.Tensor,
    position_ids: torch.Tensor | None = None,
    chunk_size: int | None = None,
) -> torch.Tensor:
    """Mean next-token loss of a Hugging Face causal LM over `input_ids` [B, T], chunked over the head.

    `position_ids` [B, T] (PoSE) are passed to the decoder with an all-ones attention mask: without a
    mask or a cache, transformers reads a jump in position ids as the boundary between packed
    sequences and would stop tokens after a PoSE skip from attending to those before it.
    """
    decoder = model.get_decoder()
    head = model.get_output_embeddings()
    attention_mask = None if position_ids is None else torch.ones_like(input_ids)
    hidden = decoder(
        input_ids=input_ids, position_ids=position_ids, attention_mask=attention_mask, use_cache=False
    ).last_hidden_state  # [B, T, H], after the final norm
    return chunked_cross_entropy(
        hidden,
        head.weight,
        shifted_labels(input_ids),
        bias=head.bias,
        chunk_size=chunk_size,
        transform=LogitTransform.from_config(model.config),
    )
