"""python benchmarks/patch_checkpoint.py [--size-gb 1.0] [--runs 5] [--workdir /tmp/ctxext-bench]

Time and peak memory of `ctxext patch` (whole process, config only, weights hard-linked) against the
naive path every tutorial shows: `AutoModelForCausalLM.from_pretrained` -> set the rope config ->
`save_pretrained`. Both run as fresh processes on the same random ~1 GB bf16 Llama checkpoint;
the script prints medians, ratios and the extra disk each output costs.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
import subprocess
import sys
import time
from pathlib import Path

NAIVE = """
import sys
from transformers import AutoModelForCausalLM
src, dst = sys.argv[1], sys.argv[2]
model = AutoModelForCausalLM.from_pretrained(src, dtype="auto")
model.config.rope_parameters = {"rope_type": "yarn", "rope_theta": model.config.rope_parameters["rope_theta"],
                                "factor": 8.0, "original_max_position_embeddings": model.config.max_position_embeddings}
model.config.max_position_embeddings *= 8
model.save_pretrained(dst)
print(next(l for l in open("/proc/self/status") if l.startswith("VmHWM")).split()[1])
"""

CTXEXT = """
import sys
from ctxext.cli import main
assert main(["patch", sys.argv[1], "--method", "yarn", "--factor", "8", "--output", sys.argv[2]]) == 0
print(next(l for l in open("/proc/self/status") if l.startswith("VmHWM")).split()[1])
"""


def build_checkpoint(path: Path, size_gb: float) -> None:
    """A random bf16 Llama checkpoint of about `size_gb` GB, written tensor by tensor (never whole in memory)."""
    import torch
    from safetensors.torch import save_file
    from transformers import LlamaConfig

    hidden, inter, vocab = 2048, 5632, 32000
    per_layer = 4 * hidden * hidden + 3 * hidden * inter + 2 * hidden
    layers = max(1, round((size_gb * 1e9 / 2 - 2 * vocab * hidden) / per_layer))
    config = LlamaConfig(hidden_size=hidden, intermediate_size=inter, num_hidden_layers=layers, num_attention_heads=16,
                         num_key_value_heads=16, vocab_size=vocab, max_position_embeddings=4096, dtype="bfloat16",
                         tie_word_embeddings=False)
    path.mkdir(parents=True)
    config.save_pretrained(path)
    shapes = {"model.embed_tokens.weight": (vocab, hidden), "model.norm.weight": (hidden,), "lm_head.weight": (vocab, hidden)}
    for i in range(layers):
        p = f"model.layers.{i}."
        shapes |= {p + "self_attn.q_proj.weight": (hidden, hidden), p + "self_attn.k_proj.weight": (hidden, hidden),
                   p + "self_attn.v_proj.weight": (hidden, hidden), p + "self_attn.o_proj.weight": (hidden, hidden),
                   p + "mlp.gate_proj.weight": (inter, hidden), p + "mlp.up_proj.weight": (inter, hidden),
                   p + "mlp.down_proj.weight": (hidden, inter), p + "input_layernorm.weight": (hidden,),
                   p + "post_attention_layernorm.weight": (hidden,)}
    shards, current, size, weight_map = [], {}, 0, {}
    for name, shape in shapes.items():
        tensor = torch.randn(shape, dtype=torch.bfloat16) * 0.02
        current[name] = tensor
        size += tensor.numel() * 2
        if size > 400e6:
            shards.append(current)
            current, size = {}, 0
    shards.append(current)
    total = 0
    for i, shard in enumerate(shards):
        file = f"model-{i + 1:05d}-of-{len(shards):05d}.safetensors"
        save_file(shard, path / file, metadata={"format": "pt"})
        weight_map |= {name: file for name in shard}
        total += sum(t.numel() * 2 for t in shard.values())
    (path / "model.safetensors.index.json").write_text(json.dumps({"metadata": {"total_size": total},
                                                                   "weight_map": weight_map}, indent=2))


def run(script: str, src: Path, dst: Path) -> tuple[float, int]:
    shutil.rmtree(dst, ignore_errors=True)
    start = time.perf_counter()
    result = subprocess.run([sys.executable, "-c", script, str(src), str(dst)], capture_output=True, text=True,
                            env={**os.environ, "PYTHONWARNINGS": "ignore"})
    elapsed = time.perf_counter() - start
    if result.returncode:
        sys.exit(result.stderr)
    # VmHWM: the process's own peak resident memory in KiB (ru_maxrss would include the parent's, kept across exec)
    return elapsed, int(result.stdout.strip().splitlines()[-1]) * 1024


def extra_disk(src: Path, dst: Path) -> int:
    """Bytes the output adds: files that are not hard links to the source's files."""
    inodes = {p.stat().st_ino for p in src.rglob("*") if p.is_file()}
    return sum(p.stat().st_size for p in dst.rglob("*") if p.is_file() and p.stat().st_ino not in inodes)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--size-gb", type=float, default=1.0)
    parser.add_argument("--runs", type=int, default=5)
    parser.add_argument("--naive-runs", type=int, default=3)
    parser.add_argument("--workdir", type=Path, default=Path("/tmp/ctxext-bench"))
    args = parser.parse_args()
    src = args.workdir / f"llama-{args.size_gb:g}gb"
    if not src.exists():
        print(f"building {src} ...", flush=True)
        build_checkpoint(src, args.size_gb)
    weights = sum(p.stat().st_size for p in src.glob("*.safetensors"))
    print(f"checkpoint: {weights / 1e9:.2f} GB of bf16 safetensors")
    results = {}
    for name, script, runs in (("ctxext patch", CTXEXT, args.runs), ("naive load/save", NAIVE, args.naive_runs)):
        dst = args.workdir / name.split()[0]
        times, peaks = zip(*(run(script, src, dst) for _ in range(runs)))
        results[name] = (statistics.median(times), max(peaks), extra_disk(src, dst))
        print(f"{name:16s} median {results[name][0]:7.2f} s over {runs} runs, peak RSS {results[name][1] / 1e6:7.0f} MB, "
              f"extra disk {results[name][2] / 1e6:7.1f} MB", flush=True)
        shutil.rmtree(dst)
    (fast_t, fast_m, fast_d), (slow_t, slow_m, slow_d) = results.values()
    print(f"\nctxext patch vs naive: {slow_t / fast_t:.0f}x faster, {fast_m / slow_m:.3f}x the peak memory, "
          f"{fast_d / 1e6:.1f} MB extra disk (naive: {slow_d / 1e6:.0f} MB)")


if __name__ == "__main__":
    main()
