"""Next-token cross-entropy of a causal LM for training, through the chunked LM head.

    loss = causal_lm_loss(model, input_ids)          # = model(input_ids, labels=input_ids).loss
    loss = causal_lm_loss(model, input_ids, weights=token_weights(completion_mask, 0.01))   # prompt tokens x 0.01

The chunked head lives in `ctxext.lm_head`, shared with perplexity scoring; this module runs the
decoder and hands its hidden states to the model's own final-logit code (`own_head`), chunk by
chunk, so whatever an architecture does to its logits (Cohere's logit_scale, Granite's division and
HyperCLOVA X's multiplication by logits_scaling, Falcon-H1's lm_head_multiplier, Gemma 2's softcap) is
done exactly as its forward does it.
"""

from __future__ import annotations

import torch
from torch import nn

from ..lm_head import (  # noqa: F401  (public names of this module since 0.1)
    CHUNK_LOGITS,
    IGNORE_INDEX,
    LogitTransform,
    chunked_cross_entropy,
    chunked_head_loss,
    decoder_hidden,
    default_chunk_size,
    own_head,
    shifted_labels,
)


def causal_lm_loss(
    model: nn.Module,
    input_ids: torch.Tensor,
    position_ids: torch.Tensor | None = None,
    chunk_size: int | None = None,
    weights: torch.Tensor | None = None,
) -> torch.Tensor:
    """Mean next-token loss of a Hugging Face causal LM over `input_ids` [B, T], chunked over the head.

    `weights` [B, T] (`token_weights`): the weighted mean, weights[t] applying to the prediction of
    token t + 1.

    `position_ids` [B, T] (PoSE) are passed to the decoder with an all-ones attention mask: without a
    mask or a cache, transformers reads a jump in position ids as the boundary between packed
    sequences and would stop tokens after a PoSE skip from attending to those before it.
    """
    attention_mask = None if position_ids is None else torch.ones_like(input_ids)
    hidden = decoder_hidden(
        model, input_ids=input_ids, position_ids=position_ids, attention_mask=attention_mask, use_cache=False
    )  # [B, T, H], after the final norm
    # what the head reads and may train: every trainable tensor (unused ones get no gradient; tied embeddings do)
    head_params = [p for p in model.parameters() if p.requires_grad]
    chunk_size = chunk_size or default_chunk_size(model.get_output_embeddings().weight.shape[0])
    return chunked_head_loss(hidden, own_head(model), shifted_labels(input_ids), head_params, chunk_size, weights)


def token_weights(completion_mask: torch.Tensor, prompt_loss_weight: float) -> torch.Tensor:
    """Loss weights [B, T] from a completion mask [B, T]: 1 for predicting a completion token, else
    `prompt_loss_weight` (OpenAI's fine-tuning parameter of that name; 0 trains on completions only).

    Aligned with `shifted_labels`: position t predicts token t + 1, so weights[t] = w(mask[t + 1]).
    """
    mask = completion_mask.bool()
    weights = torch.where(mask[:, 1:], 1.0, float(prompt_loss_weight))  # [B, T - 1]
    return torch.cat([weights, torch.zeros_like(weights[:, :1])], dim=1)  # the last position has no target
