"""YaRN, s=16: Llama 2 7B from 4k to 64k tokens, the YaRN paper's setting as a LoRA fine-tune.

    accelerate launch --config_file recipes/accelerate/ddp_8gpu.yaml recipes/yarn_llama2_7b_s16.py

Peng et al. 2023 (arXiv 2309.00071), section 4: 400 steps, learning rate 2e-5, no weight decay,
20 linear warmup steps, AdamW (0.9, 0.95), global batch 64, PG19 in 64k-token chunks. They trained
all weights with FSDP; this is the same schedule with LoRA (r=8 on q, k, v, o), which fits one 80 GB
GPU per process: gradient checkpointing, the chunked LM-head loss and SDPA / FlashAttention 2.
Global batch 64 = 8 processes x 1 sequence x 8 accumulation steps (change GRADIENT_ACCUMULATION
with the process count to keep it). Copy this file and edit the constants to make your own recipe.

Tokenizing PG19 once takes a while and caches ~12 GB of ids in $CTXEXT_CACHE (~/.cache/ctxext);
the 400 steps read 1.7B of its tokens. After an interruption, run the same command with RESUME = True.
Then evaluate: ctxext eval passkey llama2-7b-yarn-x16 --lengths 4096,16384,32768,65536 --output eval/
"""

import ctxext

MODEL = "meta-llama/Llama-2-7b-hf"
DATASET = "emozilla/pg19"  # PG19 as parquet with a `text` column
OUTPUT = "llama2-7b-yarn-x16"
GRADIENT_ACCUMULATION = 8  # x 8 processes x batch 1 = 64 sequences per step
RESUME = False

if __name__ == "__main__":
    ctxext.finetune(
        MODEL,
        "yarn",
        16,  # 4096 x 16 = 65,536 tokens
        DATASET,
        OUTPUT,
        seq_len=65536,
        max_steps=400,
        learning_rate=2e-5,
        warmup_steps=20,
        schedule="constant",
        weight_decay=0.0,
        batch_size=1,
        gradient_accumulation_steps=GRADIENT_ACCUMULATION,
        lora_r=8,
        lora_alpha=16,
        save_every=50,
        resume=RESUME,
    )
