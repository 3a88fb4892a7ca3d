"""Runs inside the vLLM reader environment (tests/readers/setup.sh): window, rope, prompt log-probs.

    python vllm_worker.py JOBS.json RESULTS.json

Jobs: {"kind": "rope", "model": DIR, "window": N, "positions": [...], "out": FILE.npz} runs vLLM's own
max-model-len derivation (with no max_model_len, and with max_model_len=N) and builds the rotary
embedding vLLM's model code builds from the config (`get_rope`), saving its cos/sin at the positions
for the position range the run would use; {"kind": "logprobs", "model": DIR, "ids": [...],
"max_model_len": N, "out": FILE.npy} runs the model (`vllm.LLM`, float32, eager) and saves every
prompt position's full log-probabilities and the greedy continuation. One process runs all jobs.
"""

import json
import os
import sys
import traceback
from pathlib import Path

os.environ.setdefault("VLLM_TARGET_DEVICE", "cpu")
os.environ.setdefault("VLLM_CPU_KVCACHE_SPACE", "1")
os.environ.setdefault("VLLM_LOGGING_LEVEL", "ERROR")
os.environ.setdefault("VLLM_ENABLE_V1_MULTIPROCESSING", "0")  # the engine in this process: no child to spawn


def _model_config(model: str, max_model_len: int | None):
    from vllm.config import ModelConfig

    return ModelConfig(model=model, tokenizer=model, dtype="float32", max_model_len=max_model_len,
                       enforce_eager=True, seed=0)


def rope(job: dict) -> dict:
    import numpy as np
    import torch
    from vllm.config import VllmConfig, set_current_vllm_config
    from vllm.model_executor.layers.rotary_embedding import get_rope

    default = _model_config(job["model"], None)
    result = {"max_model_len": default.max_model_len}
    try:
        config = _model_config(job["model"], job["window"])
        result["window_accepted"] = True
    except Exception as err:  # vLLM refuses a max_model_len above the one it derives
        config, result["window_accepted"] = default, False
        result["window_refusal"] = str(err).splitlines()[0][:300]
    hf = config.hf_text_config
    params = dict(hf.rope_parameters)
    if "full_attention" in params:  # per-layer-type rope (Gemma 3): vLLM builds one per layer type
        params = dict(params["full_attention"])
    head_dim = getattr(hf, "head_dim", None) or hf.hidden_size // hf.num_attention_heads
    with set_current_vllm_config(VllmConfig(model_config=config)):
        module = get_rope(head_dim, max_position=hf.max_position_embeddings, rope_parameters=params,
                          is_neox_style=True, dtype=torch.float32)
    cache = getattr(module, "cos_sin_cache", None)
    offset = 0
    if cache is None:  # LongRoPE: short rows, then long rows; one set for the whole run
        cache = module.long_short_cos_sin_cache
        offset = module.original_max_position_embeddings if module.use_long_rope else 0
    cache = cache.float()  # [rows, rotary_dim]: cos half, then sin half
    rows = [p + offset for p in job["positions"]]
    result |= {"rope_class": type(module).__name__, "cache_rows": int(cache.shape[0]) - offset,
               "rotary_dim": int(cache.shape[1])}
    if max(rows) >= cache.shape[0]:
        result["past_cache"] = True
        rows = [min(r, cache.shape[0] - 1) for r in rows]
    half = cache.shape[1] // 2
    picked = cache[rows]
    np.savez(job["out"], cos=picked[:, :half].numpy(), sin=picked[:, half:].numpy())
    return result


def logprobs(job: dict) -> dict:
    import numpy as np
    from vllm import LLM, SamplingParams
    from vllm.inputs import TokensPrompt

    llm = LLM(model=job["model"], tokenizer=job["model"], dtype="float32", enforce_eager=True, seed=0,
              max_logprobs=-1, max_num_seqs=1, max_model_len=job["max_model_len"])
    vocab = llm.llm_engine.model_config.get_vocab_size()
    params = SamplingParams(max_tokens=job.get("generate", 8), temperature=0.0, prompt_logprobs=vocab,
                            logprobs=1, detokenize=False)
    out = llm.generate([TokensPrompt(prompt_token_ids=job["ids"])], params, use_tqdm=False)[0]
    rows = []
    for position in out.prompt_logprobs[1:]:  # position 0 has no prediction
        row = np.full(vocab, -np.inf)
        for token, lp in position.items():
            row[token] = lp.logprob
        rows.append(row)
    np.save(job["out"], np.stack(rows))  # [n - 1, vocab]: log p(token t | tokens < t) for t >= 1
    del llm
    return {"greedy": list(out.outputs[0].token_ids)}


def main() -> None:
    import vllm

    jobs = json.loads(Path(sys.argv[1]).read_text())
    results = []
    for job in jobs:
        try:
            result = {"rope": rope, "logprobs": logprobs}[job["kind"]](job)
        except Exception as err:
            traceback.print_exc()
            result = {"error": f"{type(err).__name__}: {err}"[:2000]}
        results.append(result | {"vllm": vllm.__version__})
        Path(sys.argv[2]).write_text(json.dumps(results))  # after every job: a crash keeps what was done
    sys.stdout.flush()
    os._exit(0)  # vLLM's engine threads can hang interpreter teardown


if __name__ == "__main__":
    main()
