"""Next-token cross-entropy that never materialises full-sequence float32 logits.

    loss = causal_lm_loss(model, input_ids)          # = model(input_ids, labels=input_ids).loss

At long lengths the logits dominate training memory: 64k tokens x 32k vocabulary is 8 GiB in float32,
and the stock loss keeps the logits, their float32 copy and the log-softmax alive for backward. Here
the LM head and the cross-entropy run over chunks of `chunk_size` tokens, and each chunk is
differentiated at once into the gradient of the hidden states (and of the head, when it is trained)
inside the forward pass. Only those gradients are kept for backward, so memory is one chunk of logits
at a time and no matmul is recomputed. The head is the model's own code (`own_head`): whatever an
architecture does to its logits (a scale, a multiplier, a softcap) is done by its forward, as in
`model(input_ids, labels=input_ids)`.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Callable

import torch
from torch import nn

from ..errors import CtxextError

IGNORE_INDEX = -100
#: float32 logits one chunk may hold (64 MiB): 256 tokens at a 49k vocabulary, 128 at Llama 3's 128k
CHUNK_LOGITS = 2**24


def default_chunk_size(vocab_size: int) -> int:
    """Tokens per chunk: the largest power of two whose float32 logits fit CHUNK_LOGITS (at least 16)."""
    return max(16, 2 ** int(math.log2(max(1, CHUNK_LOGITS // vocab_size))))


@dataclass(frozen=True)
class LogitTransform:
    """A plain head's post-processing for `chunked_cross_entropy`: logits x scale, then cap x tanh(logits / cap).

    `causal_lm_loss` does not use it: it runs each model's own final-logit code (see `own_head`), so a
    scale, a multiplier or a softcap is applied exactly as the architecture's forward applies it.
    """

    scale: float = 1.0
    softcap: float | None = None

    def __call__(self, logits: torch.Tensor) -> torch.Tensor:
        if self.scale != 1.0:
            logits = logits * self.scale
        if self.softcap is not None:
            logits = torch.tanh(logits / self.softcap) * self.softcap
        return logits


class _DecoderOutput:
    """What a stubbed decoder returns: the given hidden states; any other output field reads as None."""

    def __init__(self, last_hidden_state: torch.Tensor):
        self.last_hidden_state = last_hidden_state

    def __getattr__(self, name: str):
        return None

    def __getitem__(self, index):
        return (self.last_hidden_state,)[index]


_MISSING = object()


def own_head(model: nn.Module) -> Callable[[torch.Tensor], torch.Tensor]:
    """The model's own final-logit code as a function of hidden states [n, H] -> logits [n, V].

    It calls the causal LM's forward with its decoder's forward replaced by one that returns the given
    hidden states, so whatever the architecture does after the decoder (the LM head, Cohere's
    logit_scale, Granite's division by logits_scaling, HyperCLOVA X's multiplication by it, Falcon-H1's
    lm_head_multiplier, Gemma 2's softcapping) is done by its own code, not re-implemented here.
    """
    decoder = model.get_decoder()

    def head(hidden: torch.Tensor) -> torch.Tensor:
        calls = []

        def stub(*args, **kwargs):
            calls.append(1)
            return _DecoderOutput(hidden[None])  # [1, n, H]

        previous = decoder.__dict__.get("forward", _MISSING)  # accelerate and others may wrap forward too
        decoder.forward = stub
        try:
            ids = torch.zeros(1, hidden.shape[0], dtype=torch.long, device=hidden.device)  # [1, n]
            logits = model(input_ids=ids, use_cache=False).logits  # [1, n, V]
        finally:
            if previous is _MISSING:
                del decoder.forward
            else:
                decoder.forward = previous
        if len(calls) != 1 or logits.shape[:2] != (1, hidden.shape[0]):
            raise CtxextError(
                f"ctxext's chunked loss cannot run {type(model).__name__}'s own output head on hidden states "
                "(its forward does not go once through get_decoder()); this architecture is not supported for "
                "training with ctxext."
            )
        return logits[0]

    return head


def _chunk(head, hidden, labels, params, need_hidden):
    """(summed loss, grad wrt this chunk's hidden states or None, grads wrt params) for one chunk."""
    # hidden [n, H], labels [n]
    with torch.enable_grad():
        h = hidden.detach().requires_grad_(need_hidden)
        logits = head(h)  # [n, V], in the model's own code and dtype
        loss = nn.functional.cross_entropy(logits.float(), labels, ignore_index=IGNORE_INDEX, reduction="sum")
        inputs = ([h] if need_hidden else []) + list(params)
        if not inputs or not loss.requires_grad:
            return loss.detach(), None, [None] * len(params)
        grads = list(torch.autograd.grad(loss, inputs, allow_unused=True))
    grad_hidden = grads.pop(0) if need_hidden else None
    return loss.detach(), grad_hidden, grads


class _ChunkedLoss(torch.autograd.Function):
    """Mean cross-entropy of `head(hidden)` computed chunk by chunk: each chunk's graph (its logits) is built,
    differentiated and freed inside forward, and only the gradients are kept for backward: [N, H] for the
    hidden states and one float32 buffer per trained head parameter, never the logits.
    """

    @staticmethod
    def forward(ctx, hidden, labels, head, chunk_size: int, *params):
        # hidden [N, H], labels [N]
        need_hidden = ctx.needs_input_grad[0]
        tracked = [i for i, p in enumerate(params) if ctx.needs_input_grad[4 + i]]
        count = (labels != IGNORE_INDEX).sum().clamp(min=1).to(torch.float32)
        grad_hidden = torch.empty_like(hidden) if need_hidden else None
        grad_params = [torch.zeros(params[i].shape, dtype=torch.float32, device=params[i].device) for i in tracked]
        total = torch.zeros((), dtype=torch.float32, device=hidden.device)
        for start in range(0, hidden.shape[0], chunk_size):
            piece = slice(start, start + chunk_size)
            loss, g_hidden, g_params = _chunk(head, hidden[piece], labels[piece], [params[i] for i in tracked],
                                              need_hidden)
            total += loss
            if need_hidden:
                grad_hidden[piece] = g_hidden if g_hidden is not None else 0
            for buffer, g in zip(grad_params, g_params):
                if g is not None:
                    buffer += g.float()
        if need_hidden:
            grad_hidden /= count.to(grad_hidden.dtype)
        ctx.tracked = tracked
        ctx.n_params = len(params)
        ctx.param_dtypes = [params[i].dtype for i in tracked]
        ctx.save_for_backward(*([grad_hidden] if need_hidden else []), *[g / count for g in grad_params])
        ctx.need_hidden = need_hidden
        return total / count

    @staticmethod
    def backward(ctx, grad_output):
        saved = list(ctx.saved_tensors)
        grad_hidden = None
        if ctx.need_hidden:
            saved_hidden = saved.pop(0)  # [N, H] in the hidden states' dtype
            grad_hidden = (saved_hidden * grad_output).to(saved_hidden.dtype)
        grads = [None] * ctx.n_params
        for i, g, dtype in zip(ctx.tracked, saved, ctx.param_dtypes):
            grads[i] = (g * grad_output).to(dtype)
        return (grad_hidden, None, None, None, *grads)


def chunked_head_loss(
    hidden: torch.Tensor,
    head: Callable[[torch.Tensor], torch.Tensor],
    labels: torch.Tensor,
    params: list[torch.Tensor] = (),
    chunk_size: int = 256,
) -> torch.Tensor:
    """Mean cross-entropy of `head(hidden)` against `labels` (IGNORE_INDEX skipped), `chunk_size` tokens at a time.

    hidden [..., H], labels [...] (aligned: labels[t] follows t). `params` are the tensors `head` reads
    that may need gradients (the LM head's weight, its LoRA adapters...); unused ones get none.
    """
    if chunk_size < 1:
        raise ValueError(f"chunk_size must be at least 1, got {chunk_size}")
    hidden2d = hidden.reshape(-1, hidden.shape[-1])  # [N, H]
    labels1d = labels.reshape(-1)  # [N]
    params = [p for p in params if p is not None]
    tracked = [t for t in (hidden2d, *params) if t.requires_grad]
    if not (torch.is_grad_enabled() and tracked):  # evaluation: the loss alone, no gradients computed
        count = (labels1d != IGNORE_INDEX).sum().clamp(min=1).to(torch.float32)
        total = sum(_chunk(head, hidden2d[s : s + chunk_size], labels1d[s : s + chunk_size], [], False)[0]
                    for s in range(0, hidden2d.shape[0], chunk_size))
        return total / count
    return _ChunkedLoss.apply(hidden2d, labels1d, head, chunk_size, *params)


def chunked_cross_entropy(
    hidden: torch.Tensor,
    weight: torch.Tensor,
    labels: torch.Tensor,
    bias: torch.Tensor | None = None,
    chunk_size: int | None = None,
    transform: LogitTransform = LogitTransform(),
) -> torch.Tensor:
    """Mean cross-entropy of the plain head `transform(hidden @ weight.T + bias)` against `labels`.

    hidden [..., H] and labels [...] (already aligned: labels[t] is the token that follows t);
    equal to `F.cross_entropy(transform(hidden @ weight.T + bias), labels)` in value and gradient.
    `chunk_size` tokens per chunk; None = default_chunk_size(vocabulary).
    """
    chunk_size = chunk_size or default_chunk_size(weight.shape[0])
    return chunked_head_loss(hidden, lambda h: transform(nn.functional.linear(h, weight, bias)), labels,
                             [weight, bias], chunk_size)


def shifted_labels(input_ids: torch.Tensor) -> torch.Tensor:
    """labels[t] = input_ids[t + 1]; the last position has no target.

    Padding the labels instead of slicing the hidden states avoids copying [B, T, H] activations.
    """
    # input_ids [B, T] -> labels [B, T]
    pad = torch.full_like(input_ids[:, :1], IGNORE_INDEX)
    return torch.cat([input_ids[:, 1:], pad], dim=1)


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
    attention_mask = None if position_ids is None else torch.ones_like(input_ids)
    hidden = decoder(
        input_ids=input_ids, position_ids=position_ids, attention_mask=attention_mask, use_cache=False
    ).last_hidden_state  # [B, T, H], after the final norm
    # what the head reads and may train: every trainable tensor outside the decoder, and tied embeddings
    head_params = [p for p in model.parameters() if p.requires_grad]
    chunk_size = chunk_size or default_chunk_size(model.get_output_embeddings().weight.shape[0])
    return chunked_head_loss(hidden, own_head(model), shifted_labels(input_ids), head_params, chunk_size)
