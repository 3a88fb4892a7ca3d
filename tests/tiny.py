"""Tiny models built from configs, no downloads: the fixtures every test uses."""

from __future__ import annotations

import torch
from transformers import AutoConfig, AutoModelForCausalLM

#: common small sizes; a model type may override any of them
SMALL = dict(
    hidden_size=64,
    intermediate_size=128,
    num_hidden_layers=2,
    num_attention_heads=4,
    num_key_value_heads=2,
    vocab_size=128,
    max_position_embeddings=64,
    bos_token_id=1,
    eos_token_id=2,
    pad_token_id=0,
)

#: per-architecture tweaks to stay tiny and valid
OVERRIDES: dict[str, dict] = {
    "gemma": dict(head_dim=16),
    "gemma2": dict(head_dim=16, sliding_window=16, layer_types=["sliding_attention", "full_attention"]),
    "gemma3_text": dict(
        head_dim=16, sliding_window=16, layer_types=["sliding_attention", "full_attention"],
        rope_parameters={
            "sliding_attention": {"rope_type": "default", "rope_theta": 10000.0},
            "full_attention": {"rope_type": "default", "rope_theta": 1000000.0},
        },
    ),
    "qwen3": dict(head_dim=16),
    "phi": dict(partial_rotary_factor=0.5, num_key_value_heads=4),
    "gpt_neox": dict(rotary_pct=0.25, num_key_value_heads=None),
    "stablelm": dict(partial_rotary_factor=0.25, num_key_value_heads=4),
    "cohere": dict(),
}

#: architectures named by the Core issue, each covered by every test that loops over ARCHITECTURES
ARCHITECTURES = [
    "llama", "mistral", "qwen2", "qwen3", "gemma", "gemma2", "gemma3_text", "phi", "phi3",
    "gpt_neox", "stablelm", "olmo2", "cohere", "granite",
]


def tiny_config(model_type: str, **overrides):
    kwargs = {**SMALL, **OVERRIDES.get(model_type, {}), **overrides}
    kwargs = {k: v for k, v in kwargs.items() if v is not None}
    return AutoConfig.for_model(model_type, **kwargs)


def tiny_model(model_type: str = "llama", seed: int = 0, dtype: torch.dtype = torch.float32, **overrides):
    """A randomly initialised tiny causal LM in eval mode; weights perturbed so no layer is trivial."""
    torch.manual_seed(seed)
    model = AutoModelForCausalLM.from_config(tiny_config(model_type, **overrides))
    with torch.no_grad():
        for p in model.parameters():
            p.add_(torch.randn_like(p) * 0.02)
    return model.to(dtype).eval()


def token_ids(length: int, vocab_size: int = 128, seed: int = 0) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    return torch.randint(3, vocab_size, (1, length), generator=g)


def tiny_tokenizer():
    """A character-level tokenizer over ASCII whose 128 ids match the tiny models' vocabulary.

    ids 0-3 are <pad>, <s>, </s>, <unk> (the tiny configs' pad/bos/eos ids); id i >= 4 is chr(i).
    """
    from tokenizers import Regex, Tokenizer, models, pre_tokenizers
    from transformers import PreTrainedTokenizerFast

    specials = ["<pad>", "<s>", "</s>", "<unk>"]
    vocab = {tok: i for i, tok in enumerate(specials)} | {chr(i): i for i in range(4, 128)}
    backend = Tokenizer(models.WordLevel(vocab, unk_token="<unk>"))
    backend.pre_tokenizer = pre_tokenizers.Split(Regex("(?m)."), behavior="isolated")
    return PreTrainedTokenizerFast(
        tokenizer_object=backend, pad_token="<pad>", bos_token="<s>", eos_token="</s>", unk_token="<unk>"
    )
