"""python benchmarks/ruler.py [--model DIR] [--lengths 1024,2048] [--tasks ...] [--device cuda --dtype bfloat16]

Tokens per second of ctxext's RULER runner against a naive per-sample `model.generate` loop (what
RULER's own Hugging Face path amounts to with a batch of one), on the same prompts in the same
process, and whether the two give the same greedy tokens sample by sample.

    naive : for each prompt: model.generate(prompt, max_new_tokens=the task's budget), cut at EOS
    ctxext: RulerRunner: the prefix the samples of a task share (template and the start of a noise or
            essay haystack) prefilled once, one batch per (task, length), finished rows dropped

tokens/s counts prompt tokens (the same number for both), so the ratio is the ratio of times; on a
CPU the process's CPU time is reported too, which other jobs on a shared machine disturb far less.
Without --model, a Llama with random weights over a byte vocabulary is built from a config (no
download): it never says EOS, so every sample decodes its whole budget (128 tokens for the needle
tasks) on both sides; a trained model that answers and stops decodes far fewer. Each side runs
--repeats times, alternating, and the best time of each is reported (the machine may be shared).
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
sys.path.insert(0, str(Path(__file__).resolve().parent))

from passkey import byte_tokenizer, random_llama, timed  # noqa: E402  (the passkey benchmark's helpers)

from ctxext.evaluation.decoding import GreedyDecoder  # noqa: E402
from ctxext.evaluation.ruler import RulerRunner, build_ruler_prompts  # noqa: E402


def naive(model, tokenizer, prompts) -> list[list[int]]:
    """One generate call per prompt, greedy, max_new_tokens = the task's budget, cut at EOS."""
    decoder = GreedyDecoder(model, tokenizer)
    return [decoder.generate([p.input_ids], p.max_new_tokens)[0] for p in prompts]


def ours(model, tokenizer, prompts) -> list[list[int]]:
    got = {id(p): tokens for batch in RulerRunner(model, tokenizer).run(prompts) for p, tokens in batch}
    return [got[id(p)] for p in prompts]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[2], formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", help="a model directory or hub id (default: a random Llama built from a config)")
    parser.add_argument("--lengths", default="1024,2048")
    parser.add_argument("--tasks", default="niah_single_1,niah_single_2,niah_multikey_2,fwe")
    parser.add_argument("--samples", type=int, default=5, help="samples per task and length (default 5)")
    parser.add_argument("--hidden", type=int, default=256, help="random Llama: hidden size")
    parser.add_argument("--layers", type=int, default=4, help="random Llama: layers")
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--dtype", default="float32", choices=("float32", "bfloat16", "float16"))
    parser.add_argument("--threads", type=int, default=1, help="torch CPU threads (1: steady on a shared machine)")
    parser.add_argument("--repeats", type=int, default=2)
    args = parser.parse_args()

    torch.set_num_threads(args.threads)
    lengths = [int(n) for n in args.lengths.split(",")]
    tasks = args.tasks.split(",")
    if args.model:
        from ctxext.loading import load_model

        model, tokenizer = load_model(args.model, device=args.device, dtype=args.dtype)
        name = args.model
    else:
        tokenizer = byte_tokenizer()
        model = random_llama(args.hidden, args.layers, max(lengths), args.device, getattr(torch, args.dtype))
        name = f"random Llama ({args.layers} layers x {args.hidden}, {sum(p.numel() for p in model.parameters()) / 1e6:.1f}M parameters)"
    prompts = [p for t in tasks for n in lengths for p in build_ruler_prompts(t, tokenizer, n, args.samples, seed=0)]
    tokens = sum(p.tokens for p in prompts)
    device_name = torch.cuda.get_device_name() if args.device.startswith("cuda") else f"CPU, {torch.get_num_threads()} thread(s)"
    print(f"model: {name}, {args.dtype} on {device_name}")
    print(f"prompts: {len(prompts)} = tasks {tasks} x lengths {lengths} x {args.samples} samples, {tokens} prompt tokens")

    ours(model, tokenizer, prompts[:2]), naive(model, tokenizer, prompts[:1])  # warm-up
    times = {"naive": [], "ctxext": []}
    cpu_times = {"naive": [], "ctxext": []}
    results = {}
    for _ in range(args.repeats):
        for label, fn in (("naive", lambda: naive(model, tokenizer, prompts)), ("ctxext", lambda: ours(model, tokenizer, prompts))):
            seconds, cpu_seconds, results[label] = timed(fn, args.device)
            times[label].append(seconds)
            cpu_times[label].append(cpu_seconds)

    same = sum(a == b for a, b in zip(results["naive"], results["ctxext"]))
    generated = sum(len(a) for a in results["naive"])
    best = {k: min(v) for k, v in times.items()}
    on_cpu = not args.device.startswith("cuda")
    for label in ("naive", "ctxext"):
        line = f"{label:>7}: {tokens / best[label]:8.0f} tokens/s wall (best of {args.repeats}; runs {', '.join(f'{t:.2f}' for t in times[label])} s)"
        if on_cpu:
            line += f", {tokens / min(cpu_times[label]):8.0f} tokens/s of CPU time"
        print(line)
    ratio = f"ratio  : {best['naive'] / best['ctxext']:.2f}x wall (median {statistics.median(times['naive']) / statistics.median(times['ctxext']):.2f}x)"
    if on_cpu:
        ratio += f", {min(cpu_times['naive']) / min(cpu_times['ctxext']):.2f}x CPU time"
    print(ratio + " -- tokens/s against the naive generate loop")
    print(f"agree  : {same}/{len(prompts)} samples with identical greedy tokens ({generated} generated tokens)")


if __name__ == "__main__":
    main()
