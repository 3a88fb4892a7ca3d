"""The shared LM head's scoring sum: the plain cross-entropy's sum, whatever the chunking, with no graph kept."""

import pytest
import torch
from torch import nn

from ctxext.lm_head import IGNORE_INDEX, LogitTransform, chunked_cross_entropy, chunked_nll_sum


@pytest.mark.parametrize("chunk_size", [1, 5, 64, None])
@pytest.mark.parametrize("transform", [LogitTransform(), LogitTransform(scale=0.5, softcap=3.0)])
def test_the_summed_nll_is_the_plain_sum(chunk_size, transform):
    g = torch.Generator().manual_seed(0)
    hidden = torch.randn(3, 21, 8, generator=g, dtype=torch.float64, requires_grad=True)  # [B, T, H]
    weight = torch.randn(30, 8, generator=g, dtype=torch.float64)  # [V, H]
    bias = torch.randn(30, generator=g, dtype=torch.float64)
    labels = torch.randint(0, 30, (3, 21), generator=g)
    labels[1, :4] = IGNORE_INDEX
    logits = nn.functional.linear(hidden, weight, bias) * transform.scale
    if transform.softcap is not None:
        logits = transform.softcap * torch.tanh(logits / transform.softcap)
    plain = nn.functional.cross_entropy(logits.flatten(0, 1), labels.flatten(), reduction="sum")
    total = chunked_nll_sum(hidden, weight, labels, bias=bias, chunk_size=chunk_size, transform=transform)
    torch.testing.assert_close(total, plain.detach().float(), rtol=1e-6, atol=1e-6)
    assert not total.requires_grad  # scoring: no graph, even for inputs that require grad
    mean = chunked_cross_entropy(hidden, weight, labels, bias=bias, chunk_size=chunk_size, transform=transform)
    torch.testing.assert_close(mean.detach().float() * int((labels != IGNORE_INDEX).sum()), total, rtol=1e-6, atol=1e-6)
