"""python benchmarks/train_memory.py --threads 1      # CPU, ~10 minutes on 2 cores; add --device cuda on a GPU

Peak memory and tokens/s of LoRA training at 4096 tokens: ctxext's `finetune` loop against a naive
Hugging Face `Trainer` + peft run of the same model, at the same length, with the same gradient
checkpointing (non-reentrant in both), batch 1, LoRA r=8 on q, k, v, o. Also ctxext with PoSE: 512-token
sequences whose positions span the same 4096-token window. Goal: <= 0.35x the baseline's peak memory
and >= 1.0x its tokens/s.

The model is a random-weight Llama shaped like SmolLM2 (hidden 576, 9 heads, 3 KV heads, MLP 1536,
a 49,152-token vocabulary) with --layers layers (default 4 on CPU, 30 = SmolLM2-135M on CUDA): with a
vocabulary this large the 4096 x 49,152 logits, not the layers, dominate training memory. Both runs
see the same random token ids, so what is measured is the cost of a step, not what it learns.

Every configuration runs in a fresh subprocess, so each peak is its own. Memory:
- CPU: the process's peak resident set size (VmHWM), reset just before training starts by writing 5
  to /proc/self/clear_refs and read after the last step. tracemalloc cannot be used (it sees Python's
  allocations, not torch's C++ allocator); the RSS high-water mark sees every byte the process touched,
  weights, activations, logits, optimizer state and allocator slack alike, measured the same way for
  both sides. Reported whole, and as the growth over the RSS at the start of training (what training
  itself adds on top of the resident model).
- CUDA: torch.cuda.max_memory_allocated, reset before training (weights included).
tokens/s counts the training tokens of the timed steps (all but the first) over their wall time.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
CONFIGS = ("trainer", "ctxext", "ctxext-pose")


def model_config(layers: int, window: int):
    from transformers import LlamaConfig

    return LlamaConfig(
        vocab_size=49152, hidden_size=576, intermediate_size=1536, num_hidden_layers=layers,
        num_attention_heads=9, num_key_value_heads=3, max_position_embeddings=window, rope_theta=100000.0,
        tie_word_embeddings=True, bos_token_id=1, eos_token_id=2,
    )  # fmt: skip


# -- memory probes ----------------------------------------------------------------------------------


class Memory:
    """Peak memory since reset(): RSS high-water mark on CPU, the allocator's peak on CUDA."""

    def __init__(self, device: str):
        self.device = device

    def reset(self) -> None:
        import torch

        if self.device == "cuda":
            torch.cuda.synchronize()
            torch.cuda.reset_peak_memory_stats()
            self.start = torch.cuda.memory_allocated()
        else:
            Path("/proc/self/clear_refs").write_text("5")  # VmHWM := current RSS
            self.start = self._status("VmRSS")

    def peak(self) -> int:
        import torch

        if self.device == "cuda":
            torch.cuda.synchronize()
            return torch.cuda.max_memory_allocated()
        return self._status("VmHWM")

    @staticmethod
    def _status(field: str) -> int:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith(field + ":"):
                return int(line.split()[1]) * 1024
        raise RuntimeError(f"/proc/self/status has no {field}")


# -- one configuration, in its own process ---------------------------------------------------------


def worker(config: str, args: argparse.Namespace) -> dict:
    import torch
    from transformers import AutoModelForCausalLM

    import ctxext

    torch.manual_seed(0)
    dtype = torch.bfloat16 if args.device == "cuda" else torch.float32
    window = args.seq_len // args.factor
    model = AutoModelForCausalLM.from_config(model_config(args.layers, window), dtype=dtype, attn_implementation="sdpa")
    model.to(args.device)
    g = torch.Generator().manual_seed(1)
    ids = torch.randint(3, 49152, ((args.steps + 1) * args.seq_len,), generator=g)
    warm_up(model, args.device)
    memory = Memory(args.device)
    peaks: list[int] = []

    if config == "trainer":
        step_times = run_trainer(model, ids, args, memory, peaks)
        tokens = args.seq_len
    else:
        pose = config == "ctxext-pose"
        tokens = args.pose_window if pose else args.seq_len
        step_times = []
        with tempfile.TemporaryDirectory() as out:
            memory.reset()

            def on_step(record: dict) -> None:
                peaks.append(memory.peak())
                step_times.append(tokens / record["tokens_per_s"])

            ctxext.finetune(
                model, "yarn", args.factor, ids, Path(out) / "run", seq_len=args.seq_len, pose=pose,
                pose_window=args.pose_window if pose else None, max_steps=args.steps, warmup_steps=0,
                save_every=0, progress=False, on_step=on_step, loss_chunk_size=args.loss_chunk_size,
            )  # fmt: skip
    timed = step_times[1:]  # the first step pays for allocator warm-up and lazy initialisation
    return {
        "config": config,
        "tokens_per_step": tokens,
        "peak_bytes": max(peaks),
        "start_bytes": memory.start,
        "tokens_per_s": tokens * len(timed) / sum(timed),
        "step_seconds": timed,
    }


def warm_up(model, device: str) -> None:
    """Run the model's kernels once, forward and backward, on a short sequence before measuring.

    RSS counts library code and one-time buffers the first time a kernel runs (about 0.5 GB for
    torch's CPU backward here); both sides would pay it inside the measurement otherwise. Same
    warm-up for both; no optimizer step, so the weights are untouched.
    """
    import torch

    from ctxext.training.loss import causal_lm_loss

    ids = torch.randint(3, model.config.vocab_size, (1, 128), generator=torch.Generator().manual_seed(2)).to(device)
    model.train()
    model(ids, labels=ids).loss.backward()
    causal_lm_loss(model, ids).backward()
    model.zero_grad(set_to_none=True)


def run_trainer(model, ids, args, memory: Memory, peaks: list[int]) -> list[float]:
    """The naive baseline: HF Trainer + peft as its documentation shows, same model and length."""
    import torch
    from peft import LoraConfig, get_peft_model
    from transformers import Trainer, TrainerCallback, TrainingArguments

    import ctxext

    ctxext.patch_model(model, "yarn", args.factor)  # the same model ctxext trains
    model.config.use_cache = False
    model = get_peft_model(
        model, LoraConfig(r=8, lora_alpha=16, target_modules=["q_proj", "k_proj", "v_proj", "o_proj"], task_type="CAUSAL_LM")
    )
    rows = ids[: args.steps * args.seq_len].view(args.steps, args.seq_len)
    data = [{"input_ids": row, "labels": row} for row in rows]
    times: list[float] = []

    class Probe(TrainerCallback):
        def on_step_begin(self, *a, **k):
            if args.device == "cuda":
                torch.cuda.synchronize()
            self.started = time.perf_counter()

        def on_step_end(self, *a, **k):
            if args.device == "cuda":
                torch.cuda.synchronize()
            times.append(time.perf_counter() - self.started)
            peaks.append(memory.peak())

    with tempfile.TemporaryDirectory() as out:
        training = TrainingArguments(
            output_dir=out, per_device_train_batch_size=1, max_steps=args.steps, learning_rate=2e-5,
            adam_beta2=0.95, gradient_checkpointing=True, gradient_checkpointing_kwargs={"use_reentrant": False},
            bf16=args.device == "cuda", use_cpu=args.device == "cpu", report_to=[], save_strategy="no",
            logging_strategy="no", remove_unused_columns=False, dataloader_num_workers=0, disable_tqdm=True,
        )  # fmt: skip
        trainer = Trainer(model=model, args=training, train_dataset=data, callbacks=[Probe()])
        memory.reset()
        trainer.train()
    return times


# -- the driver --------------------------------------------------------------------------------------


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[1], formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--device", choices=("cpu", "cuda"), default="cpu")
    parser.add_argument("--layers", type=int, help="decoder layers (default: 4 on CPU, 30 on CUDA)")
    parser.add_argument("--seq-len", type=int, default=4096)
    parser.add_argument("--factor", type=int, default=4, help="YaRN factor: the model's window is seq-len / factor")
    parser.add_argument("--pose-window", type=int, default=512)
    parser.add_argument("--loss-chunk-size", type=int, help="ctxext's LM-head chunk (default: ctxext's, 256 here)")
    parser.add_argument("--steps", type=int, default=4, help="training steps per run; the first is not timed")
    parser.add_argument("--repeats", type=int, default=1, help="runs per configuration, interleaved; medians reported")
    parser.add_argument("--threads", type=int, help="torch CPU threads (default: torch's choice)")
    parser.add_argument("--only", choices=CONFIGS, help="run one configuration")
    parser.add_argument("--worker", choices=CONFIGS, help=argparse.SUPPRESS)
    parser.add_argument("--json", help="also write the results here")
    args = parser.parse_args()
    if args.layers is None:
        args.layers = 30 if args.device == "cuda" else 4
    if args.threads:
        import torch

        torch.set_num_threads(args.threads)
    if args.worker:
        print(json.dumps(worker(args.worker, args)))
        return

    env = {**os.environ, "PYTHONPATH": os.pathsep.join(filter(None, [str(ROOT), os.environ.get("PYTHONPATH")]))}
    if args.threads:
        env["OMP_NUM_THREADS"] = str(args.threads)
    passthrough = [a for a in sys.argv[1:] if a not in ("--json", args.json or "")]
    configs = [args.only] if args.only else list(CONFIGS)
    runs: dict[str, list[dict]] = {c: [] for c in configs}
    for _ in range(args.repeats):
        for config in configs:
            done = subprocess.run(
                [sys.executable, __file__, *passthrough, "--worker", config], env=env, capture_output=True, text=True
            )
            if done.returncode != 0:
                sys.exit(f"{config} failed:\n{done.stderr[-4000:]}")
            runs[config].append(json.loads(done.stdout.strip().splitlines()[-1]))
            r = runs[config][-1]
            print(f"  {config:12s} peak {r['peak_bytes'] / 2**20:8.0f} MiB  {r['tokens_per_s']:9.1f} tokens/s", file=sys.stderr)

    def median(config: str, key: str) -> float:
        values = sorted(r[key] for r in runs[config])
        return values[len(values) // 2]

    grew = {c: median(c, "peak_bytes") - median(c, "start_bytes") for c in configs}
    measure = "peak RSS" if args.device == "cpu" else "max_memory_allocated"
    print(
        f"\n{args.device}, {args.layers}-layer Llama, vocab 49,152, batch 1, gradient checkpointing, "
        f"LoRA r=8 q,k,v,o; {args.steps - 1} timed steps x {args.repeats} run(s)"
    )
    print(f"{'config':14s} {'tokens/step':>11s} {measure + ' MiB':>22s} {'growth in training MiB':>23s} {'tokens/s':>10s}")
    for c in configs:
        print(
            f"{c:14s} {runs[c][0]['tokens_per_step']:11d} {median(c, 'peak_bytes') / 2**20:22.0f} "
            f"{grew[c] / 2**20:23.0f} {median(c, 'tokens_per_s'):10.1f}"
        )
    results = {"args": vars(args), "runs": runs}
    if {"trainer", "ctxext"} <= set(configs):
        ratios = {
            "peak_memory": median("ctxext", "peak_bytes") / median("trainer", "peak_bytes"),
            "training_growth": grew["ctxext"] / grew["trainer"],
            "tokens_per_s": median("ctxext", "tokens_per_s") / median("trainer", "tokens_per_s"),
        }
        results["ratios"] = ratios
        print(
            f"\nctxext / Trainer at {args.seq_len}: peak memory {ratios['peak_memory']:.2f}x (goal <= 0.35x), "
            f"growth in training {ratios['training_growth']:.2f}x, tokens/s {ratios['tokens_per_s']:.2f}x (goal >= 1.0x)"
        )
    if {"ctxext", "ctxext-pose"} <= set(configs):
        pose = {
            "peak_memory": median("ctxext-pose", "peak_bytes") / median("ctxext", "peak_bytes"),
            "step_time": (median("ctxext-pose", "tokens_per_step") / median("ctxext-pose", "tokens_per_s"))
            / (median("ctxext", "tokens_per_step") / median("ctxext", "tokens_per_s")),
        }
        results["pose"] = pose
        print(
            f"PoSE {args.pose_window} / full {args.seq_len} (same {args.seq_len}-token window): "
            f"peak memory {pose['peak_memory']:.2f}x, time per step {pose['step_time']:.2f}x"
        )
    if args.json:
        Path(args.json).write_text(json.dumps(results, indent=2) + "\n")


if __name__ == "__main__":
    main()
