"""PoSE: Llama 2 7B extended to 64k tokens (YaRN, s=16) while training on 4k-token sequences.

    accelerate launch --config_file recipes/accelerate/ddp_8gpu.yaml recipes/pose_llama2_7b_s16.py

Positional Skip-wise training (Zhu et al. 2023, arXiv 2309.10400): each training sequence keeps
the original 4k length, but its position ids are split into two chunks with random skips between
them, so that over training every relative distance up to 64k is seen. Memory and time per step are
those of 4k tokens, about 1/16 of the YaRN recipe's, so each GPU takes 8 sequences per step and no
accumulation is needed for the same global batch of 64. PoSE combines with any RoPE method; the
paper pairs it with linear, NTK and YaRN interpolation. The schedule is the YaRN recipe's. Copy
this file and edit the constants to make your own recipe.
"""

import ctxext

MODEL = "meta-llama/Llama-2-7b-hf"
DATASET = "emozilla/pg19"
OUTPUT = "llama2-7b-yarn-x16-pose"
BATCH_SIZE = 8  # x 8 processes = 64 sequences per step
RESUME = False

if __name__ == "__main__":
    ctxext.finetune(
        MODEL,
        "yarn",
        16,
        DATASET,
        OUTPUT,
        seq_len=65536,  # the window the position ids span
        pose=True,
        pose_window=4096,  # the length actually trained on (the original window)
        max_steps=400,
        learning_rate=2e-5,
        warmup_steps=20,
        batch_size=BATCH_SIZE,
        gradient_accumulation_steps=1,
        lora_r=8,
        lora_alpha=16,
        save_every=50,
        resume=RESUME,
    )
