"""llama.cpp reads what `ctxext patch` writes: its own converter, then llama-cpp-python's logits.

For every architecture x method: convert the patched checkpoint with llama.cpp's convert_hf_to_gguf.py
(as vendored by llama-cpp-python 0.3.36), read the GGUF it wrote, run it on a 400-token prompt (the
original window is 256) and compare with transformers v5 on the same checkpoint:

- window: the GGUF's context_length (what llama.cpp's -c defaults to) is the new window;
- frequencies and scale: cos/sin at positions on both sides of the original window, from the rope
  keys and tensors of the GGUF read as llama.cpp's loader reads them (`gguf_rope` below), against
  the cos/sin transformers' attention layers receive;
- outputs: llama.cpp's logits for every prompt position against transformers' (per-row centred,
  max |difference| < 0.3, where the two engines' float32 arithmetic alone differs by 0.07-0.15 and a
  rope difference by 1 to 18), and the greedy next token at each position (>= 97% the same: near-ties).

Each case either agrees on everything, or ctxext warns about llama.cpp for it (ctxext.rope.readers)
and it does not. Slow: builds nothing, but converts ~35 checkpoints and runs each.
"""

from __future__ import annotations

import math

import numpy as np
import pytest

from conftest import CASES, POSITIONS, check_case, rope_agreement
from engines import LLAMA_CPP
from models import PROMPT, WINDOW, prompt_ids

pytestmark = pytest.mark.slow
N_CTX = 512  # >= the prompt; above the original window, so longrope runs its long factors as transformers does


def gguf_rope(meta: dict, n_ctx: int) -> tuple[np.ndarray, float]:
    """(inv_freq [d/2], cos/sin scale) that llama.cpp builds from a GGUF's rope metadata.

    llama.cpp's rules (src/llama-model.cpp, llama-context.cpp, ggml rope_yarn; Gemma 3: the full-attention
    layers, whose base is rope.freq_base): theta_i =
    freq_base^(-2i/d), divided by rope_freqs (llama3) or by the long/short factor tensors (longrope:
    long when the context exceeds original_context_length); linear divides by factor; YaRN blends
    theta_i and theta_i / factor by its ramp with beta 32 / 1 (llama-cpp-python's own defaults) and
    scales by attn_factor x (1 + 0.1 ln factor); longrope scales by attn_factor.
    """
    rope, tensors = meta["rope"], meta["rope_tensors"]
    # rotary dims: rope.dimension_count, else the head size (attention.key_length, else embedding / heads)
    head = rope.get("attention.key_length") or rope["embedding_length"] // rope["attention.head_count"]
    d = int(rope.get("rope.dimension_count", head))
    base = float(rope.get("rope.freq_base", 10000.0))
    inv_freq = base ** (-np.arange(0, d, 2, dtype=np.float64) / d)
    kind = rope.get("rope.scaling.type", "none")
    factor = float(rope.get("rope.scaling.factor", 1.0))
    original = rope.get("rope.scaling.original_context_length")
    attn = float(rope.get("rope.scaling.attn_factor", 1.0))
    scale = 1.0
    if "rope_freqs.weight" in tensors:
        inv_freq = inv_freq / np.array(tensors["rope_freqs.weight"])
    if "rope_factors_long.weight" in tensors:
        chosen = "rope_factors_long.weight" if n_ctx > original else "rope_factors_short.weight"
        return inv_freq / np.array(tensors[chosen]), attn
    if kind == "linear":
        inv_freq = inv_freq / factor
    elif kind == "yarn":
        def corr_dim(rotations: float) -> float:
            return d * math.log(original / (rotations * 2 * math.pi)) / (2 * math.log(base))

        low, high = max(0.0, math.floor(corr_dim(32.0))), min(d - 1.0, math.ceil(corr_dim(1.0)))
        keep = 1 - np.clip((np.arange(d // 2) - low) / max(0.001, high - low), 0, 1)
        inv_freq = inv_freq / factor * (1 - keep) + inv_freq * keep
        scale = attn * (1 + 0.1 * math.log(factor))
    return inv_freq, scale


@pytest.fixture(scope="module")
def converted(cases, tmp_path_factory):
    """Every case converted and run in one llama.cpp worker process: (metadata, logits)."""
    LLAMA_CPP.require()
    out = tmp_path_factory.mktemp("gguf")
    jobs = [{"kind": "convert", "model": str(cases[c].checkpoint), "gguf": str(out / f"{c[0]}-{c[1]}.gguf"),
             "name": "tiny"} for c in CASES]  # a name without "phi3": llama.cpp's vocab special-cases it
    metas = dict(zip(CASES, LLAMA_CPP.run(jobs)))
    runs = [{"kind": "logits", "gguf": jobs[i]["gguf"], "ids": prompt_ids(), "n_ctx": N_CTX,
             "out": str(out / f"{c[0]}-{c[1]}.npy")} for i, c in enumerate(CASES) if "error" not in metas[c]]
    logits = {}
    for job, result in zip(runs, LLAMA_CPP.run(runs)):
        key = tuple(job["out"].rsplit("/", 1)[1][:-4].split("-", 1))
        logits[key] = (result, np.load(job["out"]) if "error" not in result else None)
    return metas, logits


@pytest.mark.parametrize("arch,method", CASES)
def test_llama_cpp_reads_the_patch(arch, method, cases, converted, record):
    case = cases[arch, method]
    metas, runs = converted
    meta = metas[arch, method]
    assert "error" not in meta, f"llama.cpp's converter refused {arch} {method}: {meta['error']}"
    result, logits = runs[arch, method]
    assert "error" not in result, result["error"]
    window = meta["rope"]["context_length"] == WINDOW
    inv_freq, scale = gguf_rope(meta, N_CTX)
    angles = np.array(POSITIONS, dtype=np.float64)[:, None] * inv_freq[None, :]
    frequencies, scale_ok, rope_detail = rope_agreement(case, np.cos(angles) * scale, np.sin(angles) * scale)
    centred = lambda x: x - x.mean(axis=-1, keepdims=True)  # noqa: E731 -- logit offsets cancel in softmax
    ours = logits[:, : case.logits.shape[1]]
    error = float(np.abs(centred(ours) - centred(case.logits)).max())
    greedy = float((ours.argmax(-1) == case.logits.argmax(-1)).mean())
    outputs = error < 0.3 and greedy >= 0.97
    detail = (f"context_length {meta['rope']['context_length']}; {rope_detail}; logits max |d| {error:.3g}, "
              f"greedy agreement {greedy:.3f} over {PROMPT} positions")
    check_case(case, "llama.cpp", {"window": window, "frequencies": frequencies, "scale": scale_ok,
                                   "outputs": outputs}, detail, LLAMA_CPP.version, record)
