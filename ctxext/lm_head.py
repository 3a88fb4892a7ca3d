"""The LM head applied in chunks: next-token cross-entropy without full-sequence float32 logits.

    loss = chunked_cross_entropy(hidden, head.weight, labels)       # training: value and gradient
    nll = chunked_nll_sum(hidden, head.weight, labels)              # evaluation: summed -log p, no gradient

At long lengths the logits dominate memory: 64k tokens x 32k vocabulary is 8 GiB in float32 (16.8 GB
in bf16 at 64k x 128k), and the stock loss keeps the logits, their float32 copy and the log-softmax
alive for backward. Here the head and the cross-entropy run over chunks of `chunk_size` tokens, and
each chunk's gradient (softmax minus one-hot) is turned into the gradient of the hidden states (and of
the head, when it is trained) inside the forward pass. Only those gradients are kept for backward,
so memory is one chunk of logits at a time and no matmul is recomputed.

In the base layer because training (`ctxext.training.loss`) and evaluation
(`ctxext.evaluation.perplexity`) both score through it; `LogitTransform` says what each
architecture does to the logits before the softmax.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
from torch import nn

IGNORE_INDEX = -100
#: float32 logits one chunk may hold (64 MiB): 256 tokens at a 49k vocabulary, 128 at Llama 3's 128k
CHUNK_LOGITS = 2**24


def default_chunk_size(vocab_size: int) -> int:
    """Tokens per chunk: the largest power of two whose float32 logits fit CHUNK_LOGITS (at least 16)."""
    return max(16, 2 ** int(math.log2(max(1, CHUNK_LOGITS // vocab_size))))


@dataclass(frozen=True)
class LogitTransform:
    """What an architecture does to `lm_head(hidden)` before the softmax (most do nothing)."""

    scale: float = 1.0  # Cohere's logit_scale; 1 / Granite's logits_scaling
    softcap: float | None = None  # Gemma 2's final_logit_softcapping: cap * tanh(logits / cap)

    @classmethod
    def from_config(cls, config) -> "LogitTransform":
        scale = 1.0
        if getattr(config, "logit_scale", None) is not None:  # Cohere multiplies
            scale *= float(config.logit_scale)
        if getattr(config, "logits_scaling", None) is not None:  # Granite divides
            scale /= float(config.logits_scaling)
        softcap = getattr(config, "final_logit_softcapping", None)
        return cls(scale=scale, softcap=float(softcap) if softcap else None)


def _chunked(hidden, weight, bias, labels, chunk_size: int, transform: LogitTransform, need: tuple[bool, bool, bool]):
    """(summed loss, number of targets, gradients of the MEAN loss wrt hidden, weight, bias or None where not
    needed), one chunk of logits at a time."""
    # hidden [N, H], weight [V, H], bias [V] or None, labels [N] (IGNORE_INDEX = no target)
    need_hidden, need_weight, need_bias = need
    count = (labels != IGNORE_INDEX).sum().clamp(min=1).to(torch.float32)
    grad_hidden = torch.empty_like(hidden) if need_hidden else None
    grad_weight = torch.zeros(weight.shape, dtype=torch.float32, device=weight.device) if need_weight else None
    grad_bias = torch.zeros(bias.shape, dtype=torch.float32, device=bias.device) if need_bias else None
    total = torch.zeros((), dtype=torch.float32, device=hidden.device)
    for start in range(0, hidden.shape[0], chunk_size):
        h = hidden[start : start + chunk_size]  # [n, H]
        y = labels[start : start + chunk_size]  # [n]
        logits = nn.functional.linear(h, weight, bias).float()  # [n, V] float32, one chunk only
        if transform.scale != 1.0:
            logits.mul_(transform.scale)
        capped = None
        if transform.softcap is not None:
            capped = torch.tanh(logits / transform.softcap)  # [n, V]
            logits = capped * transform.softcap
        valid = y != IGNORE_INDEX  # [n]
        target = y.clamp(min=0)
        lse = torch.logsumexp(logits, dim=-1)  # [n]
        picked = logits.gather(1, target[:, None])[:, 0]  # [n]
        total += ((lse - picked) * valid).sum()
        if not any(need):
            continue
        # d(mean loss)/d(logits) = (softmax - onehot) / count on valid rows, in place on the logits
        grad = logits.sub_(lse[:, None]).exp_()  # [n, V]
        grad[torch.arange(len(y), device=y.device), target] -= 1.0
        grad.mul_((valid.to(grad.dtype) / count)[:, None])
        if capped is not None:  # d(cap * tanh(z / cap))/dz = 1 - tanh^2
            grad.mul_(1.0 - capped.square_())
        if transform.scale != 1.0:
            grad.mul_(transform.scale)
        if need_bias:
            grad_bias += grad.sum(0)
        grad = grad.to(weight.dtype)  # [n, V] in the head's dtype for the matmuls, as stock backward does
        if need_hidden:
            grad_hidden[start : start + chunk_size] = grad @ weight  # [n, H]
        if need_weight:
            grad_weight += (grad.T @ h).float()  # [V, H]
    return total, count, (grad_hidden, grad_weight, grad_bias)


class _ChunkedCrossEntropy(torch.autograd.Function):
    """The backward of a mean cross-entropy is known in closed form, so forward computes it and saves
    only the gradients ([N, H] for the hidden states, [V, H] float32 for a trained head), never logits.
    """

    @staticmethod
    def forward(ctx, hidden, weight, bias, labels, chunk_size: int, transform: LogitTransform):
        need = (ctx.needs_input_grad[0], ctx.needs_input_grad[1], bias is not None and ctx.needs_input_grad[2])
        total, count, grads = _chunked(hidden, weight, bias, labels, chunk_size, transform, need)
        loss = total / count
        ctx.dtypes = (hidden.dtype, weight.dtype, None if bias is None else bias.dtype)
        ctx.save_for_backward(*grads)
        return loss

    @staticmethod
    def backward(ctx, grad_output):
        grads = [g if g is None else (g * grad_output).to(dtype) for g, dtype in zip(ctx.saved_tensors, ctx.dtypes)]
        return (*grads, None, None, None)


def chunked_cross_entropy(
    hidden: torch.Tensor,
    weight: torch.Tensor,
    labels: torch.Tensor,
    bias: torch.Tensor | None = None,
    chunk_size: int | None = None,
    transform: LogitTransform = LogitTransform(),
) -> torch.Tensor:
    """Mean cross-entropy of the head `hidden @ weight.T + bias` against `labels` (IGNORE_INDEX skipped).

    hidden [..., H] and labels [...] (already aligned: labels[t] is the token that follows t);
    equal to `F.cross_entropy(transform(hidden @ weight.T + bias), labels)` in value and gradient.
    `chunk_size` tokens per chunk; None = default_chunk_size(vocabulary).
    """
    chunk_size = chunk_size or default_chunk_size(weight.shape[0])
    if chunk_size < 1:
        raise ValueError(f"chunk_size must be at least 1, got {chunk_size}")
    hidden2d = hidden.reshape(-1, hidden.shape[-1])  # [N, H]
    labels1d = labels.reshape(-1)  # [N]
    tracked = [t for t in (hidden2d, weight, bias) if t is not None and t.requires_grad]
    if not (torch.is_grad_enabled() and tracked):  # evaluation: the loss alone, no gradients computed
        total, count, _ = _chunked(hidden2d, weight, bias, labels1d, chunk_size, transform, (False, False, False))
        return total / count
    return _ChunkedCrossEntropy.apply(hidden2d, weight, bias, labels1d, chunk_size, transform)


def chunked_nll_sum(
    hidden: torch.Tensor,
    weight: torch.Tensor,
    labels: torch.Tensor,
    bias: torch.Tensor | None = None,
    chunk_size: int | None = None,
    transform: LogitTransform = LogitTransform(),
) -> torch.Tensor:
    """Summed -log p(label) under the head, for scoring (no gradients): `chunked_cross_entropy` x targets, exactly.

    hidden [..., H], labels [...] as for `chunked_cross_entropy`; a float32 scalar.
    """
    chunk_size = chunk_size or default_chunk_size(weight.shape[0])
    if chunk_size < 1:
        raise ValueError(f"chunk_size must be at least 1, got {chunk_size}")
    with torch.no_grad():
        total, _, _ = _chunked(hidden.reshape(-1, hidden.shape[-1]), weight, bias, labels.reshape(-1), chunk_size,
                               transform, (False, False, False))
    return total


def shifted_labels(input_ids: torch.Tensor) -> torch.Tensor:
    """labels[t] = input_ids[t + 1]; the last position has no target.

    Padding the labels instead of slicing the hidden states avoids copying [B, T, H] activations.
    """
    # input_ids [B, T] -> labels [B, T]
    pad = torch.full_like(input_ids[:, :1], IGNORE_INDEX)
    return torch.cat([input_ids[:, 1:], pad], dim=1)
