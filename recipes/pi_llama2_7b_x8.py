"""Position Interpolation, x8: Llama 2 7B from 4k to 32k tokens, LongLoRA's LoRA+ setting.

    accelerate launch --config_file recipes/accelerate/ddp_8gpu.yaml recipes/pi_llama2_7b_x8.py

Chen et al. 2023 (arXiv 2306.15595) divide every rotary frequency by the factor and fine-tune for
1000 steps at learning rate 2e-5, 20 warmup steps, AdamW (0.9, 0.95), global batch 64. LongLoRA
(Chen et al. 2023, arXiv 2309.12307) showed that LoRA alone falls short at long lengths unless the
embeddings and norms train too ("LoRA+"), which is what `train_embeddings_and_norms` does here.
PI needs more steps than YaRN: it compresses every frequency, the high ones included. Copy this file
and edit the constants to make your own recipe.
"""

import ctxext

MODEL = "meta-llama/Llama-2-7b-hf"
DATASET = "emozilla/pg19"
OUTPUT = "llama2-7b-pi-x8"
GRADIENT_ACCUMULATION = 8  # x 8 processes x batch 1 = 64 sequences per step
RESUME = False

if __name__ == "__main__":
    ctxext.finetune(
        MODEL,
        "pi",
        8,  # 4096 x 8 = 32,768 tokens
        DATASET,
        OUTPUT,
        seq_len=32768,
        max_steps=1000,
        learning_rate=2e-5,
        warmup_steps=20,
        schedule="constant",
        batch_size=1,
        gradient_accumulation_steps=GRADIENT_ACCUMULATION,
        lora_r=8,
        lora_alpha=16,
        train_embeddings_and_norms=True,  # LongLoRA's LoRA+
        save_every=100,
        resume=RESUME,
    )
