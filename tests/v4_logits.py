"""Run under transformers v4 (PYTHONPATH=.v4): load checkpoints, save their logits for given ids.

    python tests/v4_logits.py jobs.json    # jobs: [{"checkpoint": DIR, "ids": [[...]], "out": FILE}, ...]
"""

import json
import sys

import torch
import transformers
from transformers import AutoModelForCausalLM

assert transformers.__version__.startswith("4."), transformers.__version__

for job in json.load(open(sys.argv[1])):
    model = AutoModelForCausalLM.from_pretrained(job["checkpoint"], torch_dtype=torch.float32).eval()
    with torch.no_grad():
        logits = model(torch.tensor(job["ids"])).logits
    torch.save(logits, job["out"])
print(transformers.__version__)
