"""`ctxext train`: patch a model's RoPE, LoRA fine-tune it for the longer window, merge, save.

    ctxext train HuggingFaceTB/SmolLM2-360M --method yarn --factor 4 --dataset book.txt --output smollm2-yarn-x4

A thin layer over `ctxext.training.finetune.finetune`; on many GPUs the same command runs under
`accelerate launch ... -m ctxext.cli train ...`.
"""

from __future__ import annotations

import argparse
import sys

from .options import number, positive_int
from .patch import add_scaling_arguments, scaling_kwargs

EPILOG = """\
examples:
  # YaRN x4 (8k -> 32k) on a local text file; one process, the GPU if there is one
  ctxext train HuggingFaceTB/SmolLM2-360M --method yarn --factor 4 --dataset book.txt --output smollm2-yarn-x4

  # PoSE: 8k-token sequences (the original window) whose position ids span 64k; --replace
  # discards Llama 3.1's own llama3 scaling, so x8 counts from its 8k pre-training window
  ctxext train meta-llama/Llama-3.1-8B --method yarn --factor 8 --replace --dataset pg19.jsonl --pose \\
      --output llama31-yarn-x8-pose

  # the YaRN paper's Llama 2 7B s=16 setting on 8 GPUs (see recipes/ for FSDP and DeepSpeed)
  accelerate launch --config_file recipes/accelerate/ddp_8gpu.yaml -m ctxext.cli train \\
      meta-llama/Llama-2-7b-hf --method yarn --factor 16 --dataset emozilla/pg19 --seq-len 65536 \\
      --max-steps 400 --learning-rate 2e-5 --warmup-steps 20 --gradient-accumulation-steps 8 \\
      --output llama2-7b-yarn-x16

  # a searched longrope checkpoint (ctxext search), fine-tuned with its own factors, not re-patched
  ctxext train llama2-longrope-x8 --method keep --dataset pg19.jsonl --output llama2-longrope-x8-lora

  # after an interruption: the same command plus --resume continues from the last checkpoint
  ctxext train HuggingFaceTB/SmolLM2-360M --method yarn --factor 4 --dataset book.txt --output smollm2-yarn-x4 --resume

writes OUTPUT/ (merged weights that stock transformers loads, tokenizer, adapter/, train_log.jsonl,
README.md); checkpoints live in OUTPUT.checkpoints/ until the run completes.
"""


def register(subparsers: argparse._SubParsersAction) -> None:
    p = subparsers.add_parser(
        "train",
        help="LoRA fine-tune a RoPE-patched model for its longer window",
        description="Patch MODEL's rotary embedding for FACTOR x its window, LoRA fine-tune it on DATASET, "
        "merge the adapter and save a checkpoint that stock transformers loads.",
        epilog=EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument("model", metavar="MODEL", help="hub id or local checkpoint directory")
    add_scaling_arguments(p, keep=True)
    p.add_argument("--dataset", required=True, help="a .txt/.jsonl/.json/.parquet file or folder, or a datasets hub name")
    p.add_argument("--output", required=True, help="directory to write")

    data = p.add_argument_group("data")
    data.add_argument("--seq-len", type=positive_int, help="tokens per training sequence (default: original window x factor)")
    data.add_argument("--pose", action="store_true", help="PoSE: short sequences whose position ids span --seq-len")
    data.add_argument("--pose-window", type=positive_int, help="PoSE sequence length (default: the original window)")
    data.add_argument("--split", default="train", help="dataset split for hub datasets (default: train)")
    data.add_argument("--text-field", help="column holding the text (default: text, content, document or body)")

    opt = p.add_argument_group("optimisation")
    opt.add_argument("--max-steps", type=positive_int, default=400, help="optimizer steps (default: 400)")
    opt.add_argument("--learning-rate", type=number, default=2e-5, help="peak learning rate (default: 2e-5)")
    opt.add_argument("--warmup-steps", type=int, default=20, help="linear warmup steps (default: 20)")
    opt.add_argument("--schedule", choices=("constant", "cosine"), default="constant", help="after warmup (default: constant)")
    opt.add_argument("--batch-size", type=positive_int, default=1, help="sequences per process per micro-step (default: 1)")
    opt.add_argument("--gradient-accumulation-steps", type=positive_int, default=1, help="micro-steps per optimizer step (default: 1)")
    opt.add_argument("--weight-decay", type=number, default=0.0, help="AdamW weight decay (default: 0)")
    opt.add_argument("--max-grad-norm", type=number, default=1.0, help="gradient clipping, 0 for none (default: 1)")
    opt.add_argument("--seed", type=int, default=0, help="seed for LoRA init, data order and PoSE (default: 0)")

    lora = p.add_argument_group("LoRA")
    lora.add_argument("--lora-r", type=positive_int, default=8, help="rank (default: 8)")
    lora.add_argument("--lora-alpha", type=number, default=16.0, help="scale numerator (default: 16)")
    lora.add_argument("--lora-dropout", type=number, default=0.0, help="dropout on the LoRA input (default: 0)")
    lora.add_argument("--lora-target", choices=("attention", "all-linear"), default="attention",
                      help="attention: q, k, v, o projections (default); all-linear: every linear layer but the head")  # fmt: skip
    lora.add_argument("--train-embeddings-and-norms", action="store_true",
                      help="also train embeddings and norms in full (LongLoRA's LoRA+)")  # fmt: skip

    mem = p.add_argument_group("memory and checkpoints")
    mem.add_argument("--no-gradient-checkpointing", action="store_true", help="keep activations (faster, far more memory)")
    mem.add_argument("--loss-chunk-size", type=positive_int,
                     help="tokens per LM-head chunk in the loss (default: 64 MiB of float32 logits, 256 at a 49k vocabulary)")  # fmt: skip
    mem.add_argument("--dtype", choices=("auto", "float32", "bfloat16", "float16"), default="auto",
                     help="weights dtype (default: bfloat16 on GPU, float32 on CPU)")  # fmt: skip
    mem.add_argument("--save-every", type=int, default=50, help="checkpoint every N steps, 0 for never (default: 50)")
    mem.add_argument("--resume", action="store_true", help="continue an interrupted run from its last checkpoint")
    mem.add_argument("--overwrite", action="store_true", help="replace an existing output (and discard old checkpoints)")
    mem.add_argument("--no-progress", action="store_true", help="no progress bar")

    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from ..errors import CtxextError
    from ..training.finetune import KEEP, checkpoint_dir, finetune

    if args.factor is None and args.method != KEEP:
        raise CtxextError(f"--factor is required with --method {args.method} (only --method keep reads it from the checkpoint).")
    try:
        finetune(
            args.model, args.method, args.factor, args.dataset, args.output,
            seq_len=args.seq_len, pose=args.pose, pose_window=args.pose_window, split=args.split,
            text_field=args.text_field, max_steps=args.max_steps, learning_rate=args.learning_rate,
            warmup_steps=args.warmup_steps, schedule=args.schedule, batch_size=args.batch_size,
            gradient_accumulation_steps=args.gradient_accumulation_steps, weight_decay=args.weight_decay,
            max_grad_norm=args.max_grad_norm, seed=args.seed, lora_r=args.lora_r, lora_alpha=args.lora_alpha,
            lora_dropout=args.lora_dropout, lora_target=args.lora_target,
            train_embeddings_and_norms=args.train_embeddings_and_norms,
            gradient_checkpointing=not args.no_gradient_checkpointing, loss_chunk_size=args.loss_chunk_size,
            dtype=args.dtype, save_every=args.save_every, resume=args.resume, overwrite=args.overwrite,
            progress=not args.no_progress, **scaling_kwargs(args),
        )  # fmt: skip
    except KeyboardInterrupt:
        print(f"checkpoints are in {checkpoint_dir(args.output)}; rerun with --resume to continue", file=sys.stderr)
        raise
    return 0
