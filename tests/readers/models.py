"""The checkpoints the reader tests give llama.cpp and vLLM: tiny models, a real BPE tokenizer, ctxext patches.

Each architecture is a 2-layer (Gemma 3: 6) random model with head_dim 32 (the smallest vLLM's CPU
attention runs), a 256-token original window, and weights drawn with std 0.25 so that attention is
peaked: a rope difference then moves the logits by several units where the noise floor between
engines is ~0.05. The tokenizer is a byte-level BPE trained here (llama.cpp's converter needs a real
tokenizer; the tests feed token ids, so tokenisation itself is not compared).
"""

from __future__ import annotations

import json
import random
from pathlib import Path

import torch
from transformers import AutoConfig, AutoModelForCausalLM, PreTrainedTokenizerFast

L0 = 256  # the original window
FACTOR = 8
WINDOW = L0 * FACTOR
PROMPT = 400  # longer than the original window, inside the new one
METHODS = ["pi", "ntk", "dynamic-ntk", "ntk-by-parts", "yarn", "llama3", "longrope"]

_COMMON = dict(hidden_size=128, intermediate_size=256, num_hidden_layers=2, num_attention_heads=4,
               num_key_value_heads=2, head_dim=32, vocab_size=320, max_position_embeddings=L0,
               initializer_range=0.25, bos_token_id=0, eos_token_id=1, tie_word_embeddings=False)

#: model type -> config overrides (rotary dims in the comment)
ARCHITECTURES: dict[str, dict] = {
    "llama": dict(rope_parameters={"rope_type": "default", "rope_theta": 10000.0}),  # 32
    "qwen2": dict(rope_parameters={"rope_type": "default", "rope_theta": 1e6}),  # 32
    # llama.cpp assumes 5 sliding layers per full one and scales attention by 1/sqrt(head_dim); its Gemma 3
    # converter keeps as many embedding rows as tokenizer.json lists tokens (300 + the 2 added again)
    "gemma3_text": dict(num_hidden_layers=6, sliding_window=64, query_pre_attn_scalar=32, vocab_size=302,
                        layer_types=["sliding_attention"] * 5 + ["full_attention"],
                        rope_parameters={"full_attention": {"rope_type": "default", "rope_theta": 1e6},
                                         "sliding_attention": {"rope_type": "default", "rope_theta": 10000.0}}),
    "phi3": dict(original_max_position_embeddings=L0, pad_token_id=1,
                 rope_parameters={"rope_type": "default", "rope_theta": 10000.0}),  # 32
    "gpt_neox": dict(num_key_value_heads=None, rope_parameters={"rope_type": "default", "rope_theta": 10000.0,
                                                                "partial_rotary_factor": 0.5}),  # 16
}


def rotary_dim(arch: str) -> int:
    return 16 if arch == "gpt_neox" else 32


def method_params(arch: str, method: str) -> dict:
    """longrope's factors: 1 for the fast half of the frequencies rising to the factor for the slow ones."""
    if method != "longrope":
        return {}
    half = rotary_dim(arch) // 2
    return {"long_factor": [1.0 + (FACTOR - 1.0) * max(0.0, (i - half / 2) / (half / 2 - 1)) for i in range(half)]}


def tokenizer() -> PreTrainedTokenizerFast:
    """A byte-level BPE tokenizer (300 tokens) trained on a few synthetic sentences, no download."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers

    rng = random.Random(0)
    words = ["".join(rng.choice("abcdefghijklmnopqrstuvwxyz") for _ in range(rng.randint(2, 7))) for _ in range(80)]
    texts = [" ".join(rng.choice(words) for _ in range(30)) + "." for _ in range(200)]
    backend = Tokenizer(models.BPE())
    backend.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    backend.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(vocab_size=300, special_tokens=["<|bos|>", "<|eos|>"],
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet(), show_progress=False)
    backend.train_from_iterator(texts, trainer)
    return PreTrainedTokenizerFast(tokenizer_object=backend, bos_token="<|bos|>", eos_token="<|eos|>")


def save_base(arch: str, directory: Path) -> Path:
    """The unpatched checkpoint of `arch` with its tokenizer."""
    config = AutoConfig.for_model(arch, **{k: v for k, v in {**_COMMON, **ARCHITECTURES[arch]}.items() if v is not None})
    torch.manual_seed(0)
    model = AutoModelForCausalLM.from_config(config)
    model.save_pretrained(directory)
    tokenizer().save_pretrained(directory)
    if arch == "phi3":  # llama.cpp's Phi-3 converter takes a BPE vocabulary only under this class name
        path = directory / "tokenizer_config.json"
        path.write_text(json.dumps(json.loads(path.read_text()) | {"tokenizer_class": "GPT2Tokenizer"}))
    return directory


def prompt_ids(length: int = PROMPT) -> list[int]:
    rng = random.Random(0)
    return [rng.randrange(2, 300) for _ in range(length)]
