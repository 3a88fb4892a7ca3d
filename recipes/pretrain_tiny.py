"""Pre-train the tiny passkey model that `ctxext demo` ships, from scratch, on a CPU.

    python recipes/pretrain_tiny.py --threads 1          # 52 min on a busy shared 2-core machine; writes ctxext/demo/assets/demo_model/
                                                         # (the shipped weights came from exactly this command)
    python recipes/pretrain_tiny.py --output /tmp/tiny --steps 300   # a quicker look

A 4-layer, 128-wide Llama (stock transformers) with a 256-token window and its own byte-level BPE
tokenizer (ctxext.demo.synthetic.build_tokenizer), trained on two kinds of synthetic documents, half
each: passkey documents laid out like the standard passkey prompt (an intro, filler -- the standard
"The grass is green. ..." lines, varied sentences, or a mix --, the key line at a random depth,
sometimes distractor key lines, and the question with its answer), and RULER prompts of
ctxext.demo.synthetic.RULER_TASKS (needle in noise, in essay prose, among other needles) built by
ctxext's RULER prompt builder with seeds no evaluation uses, followed by the answer and EOS. The loss
is the cross-entropy on the answer's tokens plus 0.1 x the language-model loss on everything else (so
perplexity means something too). Seeded: the same seed gives the same tokenizer, data order and weights.

It retrieves the key and the needles inside its window and, like any RoPE model, fails beyond it;
`ctxext demo` shows patching plus a short LoRA fine-tune bringing it back (yarn+lora: a RULER
effective length of 4x the window). The checks at the end run ctxext's own passkey and RULER
evaluations.
"""

from __future__ import annotations

import argparse
import json
import math
import random
import shutil
import time
from pathlib import Path

import torch
import torch.nn.functional as F
from transformers import GenerationConfig, LlamaConfig, LlamaForCausalLM

from ctxext.evaluation.passkey import evaluate_passkey
from ctxext.demo.synthetic import RULER_TASKS, DocumentMaker, RulerDocuments, build_tokenizer

WINDOW = 256
OUTPUT = Path(__file__).resolve().parents[1] / "ctxext" / "demo" / "assets" / "demo_model"


def make_batch(maker: DocumentMaker, ruler: RulerDocuments, rng: random.Random, batch: int,
               ruler_fraction: float = 0.5) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """[batch, WINDOW] ids, answer-target mask and document mask; one document per row, random length."""
    pad = maker.tokenizer.pad_token_id
    rows, answers, valid = [], [], []
    for _ in range(batch):
        if rng.random() < ruler_fraction:
            prompt, answer = ruler.make(rng, WINDOW)
        else:
            budget = WINDOW if rng.random() < 0.5 else rng.randint(128, WINDOW)
            prompt, answer = maker.make(rng, budget)
        ids = prompt + answer
        rows.append(ids + [pad] * (WINDOW - len(ids)))
        # position t predicts token t+1: answer targets sit at the positions just before each answer token
        answers.append([0] * (len(prompt) - 1) + [1] * len(answer) + [0] * (WINDOW - len(ids) + 1))
        valid.append([1] * (len(ids) - 1) + [0] * (WINDOW - len(ids) + 1))
    return torch.tensor(rows), torch.tensor(answers, dtype=torch.bool), torch.tensor(valid, dtype=torch.bool)


def loss_fn(logits: torch.Tensor, ids: torch.Tensor, answer: torch.Tensor, valid: torch.Tensor, lm_weight: float):
    """Answer cross-entropy + lm_weight x LM cross-entropy; logits [B, T, V], masks [B, T] over positions."""
    targets = torch.roll(ids, -1, dims=1)  # [B, T]: the next token
    per_token = F.cross_entropy(logits.transpose(1, 2), targets, reduction="none")  # [B, T]
    answer_loss = per_token[answer].mean()
    lm_loss = per_token[valid].mean()
    return answer_loss + lm_weight * lm_loss, answer_loss.item(), lm_loss.item()


def build_model(vocab_size: int, seed: int) -> LlamaForCausalLM:
    torch.manual_seed(seed)
    config = LlamaConfig(
        vocab_size=vocab_size, hidden_size=128, intermediate_size=512, num_hidden_layers=4, num_attention_heads=4,
        num_key_value_heads=4, max_position_embeddings=WINDOW, tie_word_embeddings=True, bos_token_id=1,
        eos_token_id=2, pad_token_id=0, rope_parameters={"rope_type": "default", "rope_theta": 10000.0},
    )
    return LlamaForCausalLM(config)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--output", type=Path, default=OUTPUT)
    parser.add_argument("--steps", type=int, default=900)
    parser.add_argument("--batch", type=int, default=32)
    parser.add_argument("--lr", type=float, default=1e-3)
    parser.add_argument("--lm-weight", type=float, default=0.1)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--threads", type=int, default=None, help="torch threads (default: torch's)")
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)

    tokenizer = build_tokenizer(seed=args.seed)
    maker, rng = DocumentMaker(tokenizer), random.Random(args.seed)
    ruler = RulerDocuments(tokenizer, seed=args.seed)
    model = build_model(len(tokenizer), args.seed)
    params = sum(p.numel() for p in model.parameters())
    print(f"{params / 1e6:.2f}M parameters, vocabulary {len(tokenizer)}, window {WINDOW}", flush=True)
    optimizer = torch.optim.AdamW(model.parameters(), lr=args.lr, betas=(0.9, 0.95), weight_decay=0.1)
    warmup, started = 100, time.perf_counter()
    model.train()
    for step in range(1, args.steps + 1):
        progress = step / args.steps
        lr = args.lr * min(1.0, step / warmup) * (0.1 + 0.9 * 0.5 * (1 + math.cos(math.pi * progress)))
        for group in optimizer.param_groups:
            group["lr"] = lr
        ids, answer, valid = make_batch(maker, ruler, rng, args.batch)
        loss, answer_loss, lm_loss = loss_fn(model(ids).logits, ids, answer, valid, args.lm_weight)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
        if step % 50 == 0 or step == args.steps:
            print(json.dumps({"step": step, "answer_loss": round(answer_loss, 4), "lm_loss": round(lm_loss, 4),
                              "lr": round(lr, 6), "seconds": round(time.perf_counter() - started)}), flush=True)

    model.eval()
    model.generation_config = GenerationConfig(bos_token_id=1, eos_token_id=2, pad_token_id=0)
    tmp = args.output.with_name(args.output.name + ".partial")
    shutil.rmtree(tmp, ignore_errors=True)
    model.save_pretrained(tmp)
    tokenizer.save_pretrained(tmp)
    if args.output.exists():
        shutil.rmtree(args.output)
    tmp.rename(args.output)
    print(f"saved {args.output} after {time.perf_counter() - started:.0f} s", flush=True)

    lengths = [WINDOW, 2 * WINDOW, 4 * WINDOW, 8 * WINDOW]
    report = evaluate_passkey([("base", model, tokenizer)], lengths, trials=8, seed=1, progress=False)
    print("passkey", json.dumps({s["length"]: s["accuracy"] for s in report["summary"]}), flush=True)
    from ctxext.evaluation.ruler import evaluate_ruler

    ruler_report = evaluate_ruler([("base", model, tokenizer)], lengths, tasks=RULER_TASKS, samples=8, seed=1,
                                  progress=False)
    print("ruler", json.dumps({s["length"]: s["score"] for s in ruler_report["average"]}), flush=True)


if __name__ == "__main__":
    main()
