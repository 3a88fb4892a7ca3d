"""python benchmarks/passkey.py [--model DIR] [--lengths 512,1024,2048] [--device cuda --dtype bfloat16]

Tokens per second of ctxext's passkey runner against the per-sample `model.generate` loop of the
published passkey scripts (landmark attention, YaRN, LongLoRA), on the same prompts in the same
process, and whether the two agree sample by sample (same prediction, same verdict).

    naive : for each prompt: model.generate(prompt, max_new_tokens=len(key tokens)), compare tokens
    ctxext: PasskeyRunner: the text before the key prefilled once and shared, one teacher-forced
            pass per (length, depth) batch, greedy decoding finished only where the key is missed

tokens/s counts prompt tokens (the same number for both), so the ratio is the ratio of times; on a
CPU the process's CPU time is reported too, which other jobs on a shared machine disturb far less.
Without --model, a Llama with random weights over a byte vocabulary is built from a config (no
download): it retrieves nothing, so every sample takes the runner's slow path (decoding after a
miss); a model that retrieves skips it. Each side runs --repeats times, alternating, and the best
time of each is reported (the machine may be shared).
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from ctxext.evaluation.passkey import PasskeyRunner, build_prompts, prediction_text  # noqa: E402


def byte_tokenizer():
    """One token per byte (plus <pad>, <s>, </s>), BOS in front: a tokenizer that needs no download."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, processors
    from transformers import PreTrainedTokenizerFast

    vocab = {t: i for i, t in enumerate(["<pad>", "<s>", "</s>"])}
    for char in sorted(pre_tokenizers.ByteLevel.alphabet()):
        vocab[char] = len(vocab)
    tok = Tokenizer(models.BPE(vocab=vocab, merges=[]))
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False)
    tok.decoder = decoders.ByteLevel()
    tok.post_processor = processors.TemplateProcessing(single="<s> $A", special_tokens=[("<s>", 1)])
    return PreTrainedTokenizerFast(tokenizer_object=tok, bos_token="<s>", eos_token="</s>", pad_token="<pad>")


def random_llama(hidden: int, layers: int, window: int, device: str, dtype: torch.dtype):
    from transformers import LlamaConfig, LlamaForCausalLM

    torch.manual_seed(0)
    heads = max(1, hidden // 64)
    config = LlamaConfig(
        vocab_size=259, hidden_size=hidden, intermediate_size=int(hidden * 8 / 3) // 64 * 64 or 64,
        num_hidden_layers=layers, num_attention_heads=heads, num_key_value_heads=max(1, heads // 4),
        max_position_embeddings=window, bos_token_id=1, eos_token_id=2, pad_token_id=0,
    )
    model = LlamaForCausalLM(config).to(device=device, dtype=dtype).eval()
    return model


def naive(model, tokenizer, prompts, device) -> list[list[int]]:
    """The published scripts' loop: one generate call per prompt, max_new_tokens = the key's tokens."""
    out = []
    with torch.inference_mode():
        for p in prompts:
            ids = torch.tensor([p.input_ids], device=device)
            generated = model.generate(ids, attention_mask=torch.ones_like(ids), max_new_tokens=len(p.answer_ids),
                                       num_beams=1, do_sample=False, pad_token_id=tokenizer.pad_token_id)
            out.append(generated[0, ids.shape[1]:].tolist())
    return out


def ours(model, tokenizer, prompts) -> list[list[int]]:
    runner = PasskeyRunner(model, tokenizer)
    got = {id(p): tokens for batch in runner.run(prompts) for p, tokens in batch}
    return [got[id(p)] for p in prompts]


def timed(fn, device):
    """(wall seconds, CPU seconds of this process, result)."""
    if device.startswith("cuda"):
        torch.cuda.synchronize()
    wall, cpu = time.perf_counter(), time.process_time()
    result = fn()
    if device.startswith("cuda"):
        torch.cuda.synchronize()
    return time.perf_counter() - wall, time.process_time() - cpu, result


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[2], formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", help="a model directory or hub id (default: a random Llama built from a config)")
    parser.add_argument("--lengths", default="512,1024,2048")
    parser.add_argument("--depths", default="0,0.25,0.5,0.75,1")
    parser.add_argument("--trials", type=int, default=5, help="keys per length and depth (default 5, as the CLI)")
    parser.add_argument("--hidden", type=int, default=256, help="random Llama: hidden size")
    parser.add_argument("--layers", type=int, default=4, help="random Llama: layers")
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--dtype", default="float32", choices=("float32", "bfloat16", "float16"))
    parser.add_argument("--threads", type=int, default=1, help="torch CPU threads (1: steady on a shared machine)")
    parser.add_argument("--repeats", type=int, default=3)
    args = parser.parse_args()

    torch.set_num_threads(args.threads)
    lengths = [int(n) for n in args.lengths.split(",")]
    depths = [float(d) for d in args.depths.split(",")]
    if args.model:
        from ctxext.loading import load_model

        model, tokenizer = load_model(args.model, device=args.device, dtype=args.dtype)
        name = args.model
    else:
        tokenizer = byte_tokenizer()
        model = random_llama(args.hidden, args.layers, max(lengths), args.device, getattr(torch, args.dtype))
        name = f"random Llama ({args.layers} layers x {args.hidden}, {sum(p.numel() for p in model.parameters()) / 1e6:.1f}M parameters)"
    prompts = build_prompts(tokenizer, lengths, depths, trials=args.trials, seed=0)
    tokens = sum(p.tokens for p in prompts)
    device_name = torch.cuda.get_device_name() if args.device.startswith("cuda") else f"CPU, {torch.get_num_threads()} thread(s)"
    print(f"model: {name}, {args.dtype} on {device_name}")
    print(f"prompts: {len(prompts)} = lengths {lengths} x depths {depths} x {args.trials} trials, {tokens} prompt tokens")

    ours(model, tokenizer, prompts[:2]), naive(model, tokenizer, prompts[:1], args.device)  # warm-up
    times = {"naive": [], "ctxext": []}
    cpu_times = {"naive": [], "ctxext": []}
    results = {}
    for _ in range(args.repeats):
        for label, fn in (("naive", lambda: naive(model, tokenizer, prompts, args.device)), ("ctxext", lambda: ours(model, tokenizer, prompts))):
            seconds, cpu_seconds, results[label] = timed(fn, args.device)
            times[label].append(seconds)
            cpu_times[label].append(cpu_seconds)

    eos = [tokenizer.eos_token_id]
    agree_pred = agree_verdict = correct = 0
    for p, a, b in zip(prompts, results["naive"], results["ctxext"]):
        pa, pb = prediction_text(tokenizer, a, eos), prediction_text(tokenizer, b, eos)
        verdict_naive = a == list(p.answer_ids)  # the published scripts' check: the key's tokens exactly
        agree_pred += pa == pb
        agree_verdict += verdict_naive == (pb == p.passkey)
        correct += pb == p.passkey
    best = {k: min(v) for k, v in times.items()}
    on_cpu = not args.device.startswith("cuda")
    for label in ("naive", "ctxext"):
        line = f"{label:>7}: {tokens / best[label]:8.0f} tokens/s wall (best of {args.repeats}; runs {', '.join(f'{t:.2f}' for t in times[label])} s)"
        if on_cpu:  # CPU time is steadier than wall time on a shared machine
            line += f", {tokens / min(cpu_times[label]):8.0f} tokens/s of CPU time"
        print(line)
    ratio = f"ratio  : {best['naive'] / best['ctxext']:.2f}x wall (median {statistics.median(times['naive']) / statistics.median(times['ctxext']):.2f}x)"
    if on_cpu:
        ratio += f", {min(cpu_times['naive']) / min(cpu_times['ctxext']):.2f}x CPU time"
    print(ratio + " -- tokens/s against the naive generate loop")
    print(f"agree  : {agree_pred}/{len(prompts)} predictions, {agree_verdict}/{len(prompts)} verdicts "
          f"(accuracy {correct / len(prompts):.2f})")


if __name__ == "__main__":
    main()
