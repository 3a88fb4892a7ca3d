"""patch_model over every causal LM with a rotary module that the installed transformers ships.

For each model type: build a tiny model from its config (tests/walk.py: MoE, MLA and hybrid keys shrunk
too; one whose tiny config does not run unpatched is recorded as a fixture problem, not failed), then for
every method: patch (replace=True, since some configs ship scaled), check the cos/sin its attention
layers receive at lengths inside, at and past the original and the new window against ctxext's
formulas (tests/runtime.py), save, reload in stock transformers and check again; for YaRN also compare
logits over the whole new window. A model type may be refused with a RopeConfigError (a sentence
saying why); any other exception, a run-time mismatch or a logits difference is a failure.
"""

import copy
import tempfile
import warnings

import pytest
import torch
from transformers import AutoModelForCausalLM

import ctxext
from ctxext.rope.layout import RopeConfigError, read_layout
from runtime import Expectation, check_lengths
from tiny import ARCHITECTURES, SMALL, token_ids
from walk import build, rotary_model_types

L0 = SMALL["max_position_embeddings"]
METHODS = ["pi", "ntk", "dynamic-ntk", "ntk-by-parts", "yarn", "dynamic-yarn", "llama3", "longrope"]
LENGTHS = [L0 // 2, L0 + 1, 4 * L0, 8 * L0, 9 * L0, L0 // 2]
#: hybrids whose reference (non-CUDA) mamba kernels take ~20 s a forward pass on CPU: one static and one
#: dynamic method there keep the walk within the suite's budget
SLOW_FORWARD = {"falcon_h1": ["yarn", "dynamic-ntk"]}


def method_params(model, method: str) -> dict:
    if method != "longrope":
        return {}
    half = read_layout(model.config.to_dict()).rotary_dim // 2
    return {"long_factor": [1.0 + 7.0 * i / max(1, half - 1) for i in range(half)]}


def check(base, method: str) -> tuple[str, str]:
    """(outcome, detail) for one method: ok, refused or FAILED."""
    model = copy.deepcopy(base)
    try:
        layout = read_layout(model.config.to_dict())
        params = method_params(model, method)
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            ctxext.patch_model(model, method, 8, replace=True, **params)
    except RopeConfigError as err:
        return "refused", str(err)
    except Exception as err:
        return "FAILED", f"patch_model raised {type(err).__name__}: {err}"
    # what attention should get, from the window and thetas the patch started from
    record = model.config.to_dict()["ctxext"]
    expect = Expectation(method, 8.0, record["original_max_position_embeddings"], params, layout.rotary_dim,
                         {(None if k == "global" else k): v for k, v in record["rope_theta"].items()}
                         | {t: float(r["rope_theta"]) for t, r in layout.rope.items()
                            if r is not None and t not in layout.targets},
                         layout.targets)
    try:
        problems = check_lengths(model, expect, LENGTHS)
        with tempfile.TemporaryDirectory() as d, torch.no_grad():
            model.save_pretrained(d)
            reloaded = AutoModelForCausalLM.from_pretrained(d).eval()
            problems += [f"reloaded {p}" for p in check_lengths(reloaded, expect.reloaded(), LENGTHS)]
            diff = 0.0
            if method == "yarn":
                ids = token_ids(8 * L0)
                diff = (model(ids).logits - reloaded(ids).logits).abs().max().item()
    except Exception as err:
        return "FAILED", f"run-time check or save/reload raised {type(err).__name__}: {err}"
    if problems:
        return "FAILED", f"{len(problems)} mismatches, first: {problems[0]}"
    # exact for the architectures the fast tests name; a few MoE kernels round differently by memory layout
    return ("ok", f"{diff:.1e}") if diff <= 1e-6 else ("FAILED", f"logits differ by {diff:.3g} after reload")


@pytest.mark.slow
def test_every_rotary_causal_lm_uses_every_method_at_run_time():
    outcomes: dict[tuple[str, str], tuple[str, str]] = {}
    fixtures = {}
    for model_type in rotary_model_types():
        base, why = build(model_type)
        if base is None:
            fixtures[model_type] = why
            continue
        for method in SLOW_FORWARD.get(model_type, METHODS):
            outcomes[model_type, method] = check(base, method)
    lines = [f"{t:28s} fixture  {d}" for t, d in sorted(fixtures.items())]
    lines += [f"{t:28s} {m:13s} {o:8s} {d}" for (t, m), (o, d) in sorted(outcomes.items())]
    report = "\n".join(lines)
    failed = {k: d for k, (o, d) in outcomes.items() if o == "FAILED"}
    assert not failed, report
    ok = {k for k, (o, _) in outcomes.items() if o == "ok"}
    assert {(a, m) for a in ARCHITECTURES for m in METHODS} - {("phi3", "dynamic-ntk")} <= ok, report
    assert len({t for t, m in ok if m == "yarn"}) >= 60, report
    for key, (o, detail) in outcomes.items():
        if o == "refused":
            assert detail.endswith(".") and len(detail.splitlines()) == 1, (key, detail)
    print(report)
