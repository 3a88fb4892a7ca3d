"""On a machine with a CUDA GPU: finetune under FSDP through recipes/accelerate/fsdp_8gpu.yaml (one process).

FSDP shards the weights: the model is read onto the CPU (the main process only) and sharded onto the
GPU by accelerate, and the merge at the end gathers the full state onto the main process and assigns
it to a model built there on the meta device. CPU-only CI cannot reach that path (accelerate runs
FSDP on GPUs only); tests/training/test_fsdp_loading.py tests its loading and merge logic directly.
"""

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

ROOT = Path(__file__).resolve().parents[2]

SCRIPT = """
import torch
from tiny import tiny_model, tiny_tokenizer
from accelerate import PartialState
from ctxext.training.finetune import finetune

state = PartialState()
if state.is_main_process:
    model = tiny_model("llama", initializer_range=0.1)
    model.save_pretrained({src!r})
    tiny_tokenizer().save_pretrained({src!r})
state.wait_for_everyone()
ids = torch.randint(4, 128, (40000,), generator=torch.Generator().manual_seed(0))
finetune({src!r}, "yarn", 4, ids, {out!r}, seq_len=256, max_steps=6, learning_rate=1e-2, warmup_steps=1,
         save_every=3, progress=False)
"""


@pytest.mark.slow
@pytest.mark.skipif(not torch.cuda.is_available(), reason="FSDP through accelerate needs a CUDA GPU")
def test_fsdp_run_merges_into_a_stock_checkpoint(tmp_path):
    from safetensors.torch import load_file
    from transformers import AutoModelForCausalLM

    src, out = tmp_path / "src", tmp_path / "out"
    script = tmp_path / "run.py"
    script.write_text(SCRIPT.format(src=str(src), out=str(out)))
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(ROOT), str(ROOT / "tests")]), "HF_HUB_OFFLINE": "1",
           "CTXEXT_CACHE": str(tmp_path / "cache")}  # fmt: skip
    command = [sys.executable, "-m", "accelerate.commands.launch", "--config_file",
               str(ROOT / "recipes/accelerate/fsdp_8gpu.yaml"), "--num_processes", "1", str(script)]  # fmt: skip
    done = subprocess.run(command, env=env, capture_output=True, text=True, timeout=900, cwd=ROOT)
    assert done.returncode == 0, done.stderr[-3000:]

    log = [json.loads(line) for line in (out / "train_log.jsonl").read_text().splitlines()]
    assert [r["step"] for r in log] == list(range(1, 7)) and log[-1]["loss"] < log[0]["loss"]
    assert not [k for k in load_file(out / "model.safetensors") if "lora" in k or "base_layer" in k]
    merged = AutoModelForCausalLM.from_pretrained(out)
    base = AutoModelForCausalLM.from_pretrained(src).state_dict()
    assert merged.config.rope_parameters["rope_type"] == "yarn"
    for key, value in merged.state_dict().items():
        moved = not torch.equal(value.float(), base[key].float())
        assert moved == any(p in key for p in ("q_proj", "k_proj", "v_proj", "o_proj")), key
