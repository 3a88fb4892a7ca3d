"""`ctxext train`: patch a model's RoPE, LoRA fine-tune it for the longer window, merge, save.

    ctxext train HuggingFaceTB/SmolLM2-360M --method yarn --factor 4 --dataset book.txt --output smollm2-yarn-x4

A thin layer over `ctxext.training.finetune.finetune`; on many GPUs the same command runs under
`accelerate launch ... -m ctxext.cli train ...`.
"""

from __future__ import annotations

import argparse
import sys
from typing import Any

from ..training.recipe import MEMORY, Recipe
from .options import add_options, dataclass_options, option_values
from .patch import add_scaling_arguments, scaling_kwargs

#: one option per recipe field: type, default, choices and help all come from Recipe
RECIPE_OPTIONS = dataclass_options(Recipe)

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

  # long-context question answering: a .jsonl of {"prompt": ..., "completion": ...} records, the
  # loss on the answers (prompt tokens weighted 0.01, OpenAI's prompt_loss_weight)
  ctxext train Qwen/Qwen2.5-0.5B --method yarn --factor 4 --dataset long_qa.jsonl --prompt-loss-weight 0.01 \\
      --output qwen25-yarn-x4-qa

  # a searched longrope checkpoint (ctxext search), fine-tuned with its own factors, not re-patched
  ctxext train llama2-longrope-x8 --method keep --dataset pg19.jsonl --output llama2-longrope-x8-lora

  # after an interruption: the same command plus --resume continues from the last checkpoint
  ctxext train HuggingFaceTB/SmolLM2-360M --method yarn --factor 4 --dataset book.txt --output smollm2-yarn-x4 --resume

writes OUTPUT/ (merged weights that stock transformers loads, tokenizer, adapter/, train_log.jsonl,
README.md); checkpoints live in OUTPUT.checkpoints/ until the run completes.
"""


def register(subparsers: Any) -> None:
    p = subparsers.add_parser(
        "train",
        help="LoRA fine-tune a RoPE-patched model for its longer window",
        description="Patch MODEL's rotary embedding for FACTOR x its window, LoRA fine-tune it on DATASET, "
        "merge the adapter and save a checkpoint that stock transformers loads. Every training option "
        "and its default is a field of ctxext.training.recipe.Recipe.",
        epilog=EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument("model", metavar="MODEL", help="hub id or local checkpoint directory")
    add_scaling_arguments(p, keep=True)
    p.add_argument("--dataset", required=True, help="a .txt/.jsonl/.json/.parquet file or folder, or a datasets hub name")
    p.add_argument("--output", required=True, help="directory to write")
    groups = add_options(p, RECIPE_OPTIONS)
    runs = groups[MEMORY]
    runs.add_argument("--resume", action="store_true", help="continue an interrupted run from its last checkpoint")
    runs.add_argument("--overwrite", action="store_true", help="replace an existing output (and discard old checkpoints)")
    runs.add_argument("--no-progress", action="store_true", help="no progress bar")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from ..errors import CtxextError
    from ..training.finetune import KEEP, finetune
    from ..training.recipe import Recipe
    from ..training.resume import checkpoint_dir

    if args.factor is None and args.method != KEEP:
        raise CtxextError(f"--factor is required with --method {args.method} (only --method keep reads it from the checkpoint).")
    recipe = Recipe(**option_values(args, RECIPE_OPTIONS))
    try:
        finetune(
            args.model, args.method, args.factor, args.dataset, args.output, recipe,
            resume=args.resume, overwrite=args.overwrite, progress=not args.no_progress, **scaling_kwargs(args),
        )
    except KeyboardInterrupt:
        print(f"checkpoints are in {checkpoint_dir(args.output)}; rerun with --resume to continue", file=sys.stderr)
        raise
    return 0
