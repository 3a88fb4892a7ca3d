"""A window extension you can watch on a laptop CPU in about three minutes, nothing downloaded.

    python recipes/tiny_cpu.py --output runs/tiny-yarn-x4

1. Text: the docstrings of Python's own standard library (real English, already on disk).
2. A byte-level BPE tokenizer (2,048 tokens) trained on it, and a 4-layer Llama built from a config.
3. A short full pre-training at a 256-token window: the "base model" (plain torch, not ctxext).
4. ctxext: YaRN x4 to 1,024 tokens, then a LoRA fine-tune at 1,024 (the same call as the 7B recipes).
5. Held-out loss at 1,024 tokens for base, patched and fine-tuned, and a stock-transformers reload.

One run on a shared 2-core machine (190 s), held-out loss per token (perplexity):
base at 1,024 tokens 5.357 (212), YaRN x4 without fine-tune 5.276 (196), YaRN x4 + 40 LoRA steps
5.227 (186); for reference the base inside its own 256-token window: 5.204 (182).

Copy it, swap in your own model and text, and scale the numbers up.
"""

from __future__ import annotations

import argparse
import ast
import copy
import math
import sysconfig
import time
from pathlib import Path

import torch
from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
from transformers import AutoModelForCausalLM, LlamaConfig, PreTrainedTokenizerFast

import ctxext
from ctxext.training.loss import causal_lm_loss

WINDOW = 256  # the base model's pre-training window
FACTOR = 4  # -> 1,024 tokens


def stdlib_docstrings(limit_chars: int = 3_000_000) -> list[str]:
    """Module, class and function docstrings of the standard library, longest-lived text on any machine."""
    docs, total = [], 0
    for path in sorted(Path(sysconfig.get_paths()["stdlib"]).rglob("*.py")):
        if "test" in path.parts or "site-packages" in path.parts:
            continue
        try:
            tree = ast.parse(path.read_text(encoding="utf-8"))
        except (SyntaxError, UnicodeDecodeError, ValueError):
            continue
        for node in ast.walk(tree):
            if isinstance(node, (ast.Module, ast.ClassDef, ast.FunctionDef, ast.AsyncFunctionDef)):
                doc = ast.get_docstring(node)
                if doc and len(doc) > 200:
                    docs.append(doc)
                    total += len(doc)
        if total > limit_chars:
            break
    return docs


def bpe_tokenizer(docs: list[str], vocab_size: int = 2048) -> PreTrainedTokenizerFast:
    backend = Tokenizer(models.BPE())
    backend.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    backend.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size, special_tokens=["<pad>", "<s>", "</s>"], initial_alphabet=pre_tokenizers.ByteLevel.alphabet()
    )
    backend.train_from_iterator(docs, trainer)
    return PreTrainedTokenizerFast(tokenizer_object=backend, pad_token="<pad>", bos_token="<s>", eos_token="</s>")


def pretrain(model, ids: torch.Tensor, steps: int, batch: int, lr: float) -> None:
    """A plain full pre-training at the base window: what a real model arrives with."""
    g = torch.Generator().manual_seed(0)
    optimizer = torch.optim.AdamW(model.parameters(), lr=lr, betas=(0.9, 0.95), weight_decay=0.1)
    model.train()
    for step in range(1, steps + 1):
        starts = torch.randint(0, len(ids) - WINDOW, (batch,), generator=g)
        x = torch.stack([ids[s : s + WINDOW] for s in starts.tolist()])  # [batch, WINDOW]
        for group in optimizer.param_groups:
            group["lr"] = lr * min(1.0, step / 20) * 0.5 * (1 + math.cos(math.pi * step / steps))
        loss = causal_lm_loss(model, x)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        optimizer.step()
        optimizer.zero_grad()
        if step % 25 == 0 or step == 1:
            print(f"  pre-train step {step:4d}  loss {loss.item():.3f}")
    model.eval()


@torch.no_grad()
def held_out_loss(model, ids: torch.Tensor, length: int, n: int = 8) -> float:
    rows = ids[: n * length].view(n, length)  # [n, length]
    return sum(causal_lm_loss(model, row[None]).item() for row in rows) / n


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--output", default="runs/tiny-yarn-x4")
    parser.add_argument("--pretrain-steps", type=int, default=500)
    parser.add_argument("--pretrain-lr", type=float, default=5e-3)
    parser.add_argument("--steps", type=int, default=40, help="ctxext fine-tune steps")
    parser.add_argument("--threads", type=int, default=1, help="CPU threads (more only help on idle cores)")
    parser.add_argument("--overwrite", action="store_true")
    args = parser.parse_args()
    torch.manual_seed(0)
    torch.set_num_threads(args.threads)
    started = time.time()

    docs = stdlib_docstrings()
    tokenizer = bpe_tokenizer(docs)
    held_out, train_docs = docs[:200], docs[200:]
    eos = [tokenizer.eos_token_id]
    stream = lambda texts: torch.tensor([t for ids in tokenizer(texts)["input_ids"] for t in ids + eos])  # noqa: E731
    train_ids, eval_ids = stream(train_docs), stream(held_out)
    print(f"{len(docs):,} docstrings, {len(train_ids):,} training tokens, {len(eval_ids):,} held out")

    config = LlamaConfig(
        vocab_size=len(tokenizer), hidden_size=128, intermediate_size=384, num_hidden_layers=4,
        num_attention_heads=4, num_key_value_heads=4, max_position_embeddings=WINDOW,
        bos_token_id=tokenizer.bos_token_id, eos_token_id=tokenizer.eos_token_id, pad_token_id=tokenizer.pad_token_id,
    )  # fmt: skip
    model = AutoModelForCausalLM.from_config(config)
    print(f"pre-training the base model at {WINDOW} tokens")
    pretrain(model, train_ids, args.pretrain_steps, batch=8, lr=args.pretrain_lr)

    long = WINDOW * FACTOR
    base = {"base": held_out_loss(model, eval_ids, long), f"base at its own {WINDOW}": held_out_loss(model, eval_ids, WINDOW)}
    patched = ctxext.patch_model(copy.deepcopy(model), "yarn", FACTOR)  # finetune patches `model` itself
    base["yarn x4, no fine-tune"] = held_out_loss(patched, eval_ids, long)

    print(f"ctxext fine-tune: yarn x{FACTOR}, LoRA at {long} tokens")
    result = ctxext.finetune(
        model, "yarn", FACTOR, train_ids, args.output, tokenizer=tokenizer,
        seq_len=long, max_steps=args.steps, learning_rate=2e-3, warmup_steps=5,
        lora_r=16, lora_alpha=32, train_embeddings_and_norms=True, save_every=20, overwrite=args.overwrite,
    )  # fmt: skip
    reloaded = AutoModelForCausalLM.from_pretrained(result.output_dir).eval()  # stock transformers, no ctxext
    base["yarn x4 + ctxext fine-tune"] = held_out_loss(reloaded, eval_ids, long)

    print(f"\nheld-out loss per token at {long} tokens (perplexity):")
    for name, loss in base.items():
        print(f"  {name:28s} {loss:.3f}  ({math.exp(loss):.1f})")
    print(f"\nwrote {result.output_dir} in {time.time() - started:.0f} s; its README.md records the recipe")


if __name__ == "__main__":
    main()
