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
(`ctxext.evaluation.perplexity`) both score through it. Two heads: a plain linear one with a
`LogitTransform` (what an architecture's config says it does to the logits; perplexity checks it
against the model's own forward before using it), and `own_head(model)`, the model's own final-logit
code run on a chunk of hidden states, which training uses (`chunked_head_loss`): whatever an
architecture does after its decoder is then done by its own forward, as in
`model(input_ids, labels=input_ids)`.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Callable

import torch
from torch import nn
from transformers.utils import ModelOutput

from ._compat import forward_replaced
from .errors import CtxextError

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


@dataclass
class _DecoderOutput(ModelOutput):
    """What a stubbed decoder returns: the given hidden states, as a transformers `ModelOutput`.

    A model's forward reads its decoder's output in every way a `ModelOutput` allows: by attribute
    (`outputs.last_hidden_state`), by index (`outputs[0]`) and as a mapping (Gemma 3 / 4 wrap their
    language model's output with `OutputClass(**outputs, ...)`, which calls `keys()`). So the stand-in
    is one, holding only `last_hidden_state`; any other output field (cache, router logits...) reads as None.
    """

    last_hidden_state: torch.Tensor | None = None

    def __getattr__(self, name: str):
        # only reached for names the class does not define; private and dunder lookups stay errors
        if name.startswith("_"):
            raise AttributeError(name)
        return None


def decoder_of(model: nn.Module) -> nn.Module:
    """The causal LM's decoder (the module whose `last_hidden_state` its head reads).

    `get_decoder()` is not reliable on every architecture: Llama 4's text model returns the causal
    LM itself (its `base_model_prefix` names no child) and ModernBERT's decoder returns its
    prediction head (a Linear named `decoder`). The first of `get_decoder()`, `base_model` and
    `model.model` that is a transformers model other than `model` is taken; `own_head` then checks
    that the model's forward goes once through it.
    """
    candidates = [getattr(model, "get_decoder", lambda: None)(), getattr(model, "base_model", None),
                  getattr(model, "model", None)]
    for candidate in candidates:
        if candidate is not model and isinstance(candidate, nn.Module) and hasattr(candidate, "config"):
            return candidate
    raise CtxextError(
        f"ctxext cannot find {type(model).__name__}'s decoder (neither get_decoder(), base_model nor .model is "
        "one); this architecture is not supported for training with ctxext."
    )


def decoder_hidden(model: nn.Module, **inputs) -> torch.Tensor:
    """The decoder's last hidden states [B, T, H] for `inputs` (passed to it as keyword arguments)."""
    output = decoder_of(model)(**inputs)
    hidden = getattr(output, "last_hidden_state", None)
    if not isinstance(hidden, torch.Tensor):
        raise CtxextError(
            f"{type(model).__name__}'s decoder returns no last_hidden_state; this architecture is not supported "
            "for training with ctxext."
        )
    return hidden


def own_head(model: nn.Module) -> Callable[[torch.Tensor], torch.Tensor]:
    """The model's own final-logit code as a function of hidden states [n, H] -> logits [n, V].

    It calls the causal LM's forward with its decoder's forward replaced by one that returns the given
    hidden states, so whatever the architecture does after the decoder (the LM head, Cohere's
    logit_scale, Granite's division by logits_scaling, HyperCLOVA X's multiplication by it, Falcon-H1's
    lm_head_multiplier, Gemma 2's softcapping) is done by its own code, not re-implemented here.
    """
    decoder = decoder_of(model)

    def head(hidden: torch.Tensor) -> torch.Tensor:
        calls = []

        def stub(*args, **kwargs):
            calls.append(1)
            return _DecoderOutput(hidden[None])  # [1, n, H]

        with forward_replaced(decoder, stub):
            ids = torch.zeros(1, hidden.shape[0], dtype=torch.long, device=hidden.device)  # [1, n]
            logits = model(input_ids=ids, use_cache=False).logits  # [1, n, V]
        if len(calls) != 1 or logits.shape[:2] != (1, hidden.shape[0]):
            raise CtxextError(
                f"ctxext's chunked loss cannot run {type(model).__name__}'s own output head on hidden states "
                "(its forward does not go once through its decoder); this architecture is not supported for "
                "training with ctxext."
            )
        return logits[0]

    return head


def _chunk(head, hidden, labels, params, need_hidden, weights=None):
    """(summed (weighted) loss, grad wrt this chunk's hidden states or None, grads wrt params) for one chunk."""
    # hidden [n, H], labels [n], weights [n] or None
    with torch.enable_grad():
        h = hidden.detach().requires_grad_(need_hidden)
        logits = head(h)  # [n, V], in the model's own code and dtype
        if weights is None:
            loss = nn.functional.cross_entropy(logits.float(), labels, ignore_index=IGNORE_INDEX, reduction="sum")
        else:  # ignored targets have loss 0 under reduction="none"
            per_token = nn.functional.cross_entropy(logits.float(), labels, ignore_index=IGNORE_INDEX, reduction="none")
            loss = (per_token * weights).sum()
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
    def forward(ctx, hidden, labels, head, chunk_size: int, weights, *params):
        # hidden [N, H], labels [N], weights [N] float32 or None
        need_hidden = ctx.needs_input_grad[0]
        tracked = [i for i, p in enumerate(params) if ctx.needs_input_grad[5 + i]]
        count = _count(labels, weights)
        grad_hidden = torch.empty_like(hidden) if need_hidden else None
        grad_params = [torch.zeros(params[i].shape, dtype=torch.float32, device=params[i].device) for i in tracked]
        total = torch.zeros((), dtype=torch.float32, device=hidden.device)
        for start in range(0, hidden.shape[0], chunk_size):
            piece = slice(start, start + chunk_size)
            loss, g_hidden, g_params = _chunk(head, hidden[piece], labels[piece], [params[i] for i in tracked],
                                              need_hidden, _piece(weights, start, chunk_size))
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
        return (grad_hidden, None, None, None, None, *grads)


def chunked_head_loss(
    hidden: torch.Tensor,
    head: Callable[[torch.Tensor], torch.Tensor],
    labels: torch.Tensor,
    params: list[torch.Tensor] = (),
    chunk_size: int = 256,
    weights: torch.Tensor | None = None,
) -> torch.Tensor:
    """Mean cross-entropy of `head(hidden)` against `labels` (IGNORE_INDEX skipped), `chunk_size` tokens at a time.

    hidden [..., H], labels [...] (aligned: labels[t] follows t). `params` are the tensors `head` reads
    that may need gradients (the LM head's weight, its LoRA adapters...); unused ones get none.
    `weights` [...] (same shape as labels, >= 0): the weighted mean sum(w * loss) / sum(w) instead.
    """
    if chunk_size < 1:
        raise ValueError(f"chunk_size must be at least 1, got {chunk_size}")
    hidden2d = hidden.reshape(-1, hidden.shape[-1])  # [N, H]
    labels1d = labels.reshape(-1)  # [N]
    weights1d = None if weights is None else weights.reshape(-1).to(torch.float32)  # [N]
    if weights1d is not None and weights1d.shape != labels1d.shape:
        raise ValueError(f"weights must have the labels' shape {tuple(labels.shape)}, got {tuple(weights.shape)}")
    params = [p for p in params if p is not None]
    tracked = [t for t in (hidden2d, *params) if t.requires_grad]
    if not (torch.is_grad_enabled() and tracked):  # evaluation: the loss alone, no gradients computed
        total = sum(_chunk(head, hidden2d[s : s + chunk_size], labels1d[s : s + chunk_size], [], False,
                           _piece(weights1d, s, chunk_size))[0]
                    for s in range(0, hidden2d.shape[0], chunk_size))
        return total / _count(labels1d, weights1d)
    return _ChunkedLoss.apply(hidden2d, labels1d, head, chunk_size, weights1d, *params)


def _piece(weights: torch.Tensor | None, start: int, size: int) -> torch.Tensor | None:
    return None if weights is None else weights[start : start + size]


def _count(labels: torch.Tensor, weights: torch.Tensor | None) -> torch.Tensor:
    """The mean's denominator: the number of targets, or the sum of their weights (never 0)."""
    if weights is None:
        return (labels != IGNORE_INDEX).sum().clamp(min=1).to(torch.float32)
    return (weights * (labels != IGNORE_INDEX)).sum().clamp(min=torch.finfo(torch.float32).tiny)


def shifted_labels(input_ids: torch.Tensor) -> torch.Tensor:
    """labels[t] = input_ids[t + 1]; the last position has no target.

    Padding the labels instead of slicing the hidden states avoids copying [B, T, H] activations.
    """
    # input_ids [B, T] -> labels [B, T]
    pad = torch.full_like(input_ids[:, :1], IGNORE_INDEX)
    return torch.cat([input_ids[:, 1:], pad], dim=1)
