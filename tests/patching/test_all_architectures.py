"""patch_model over every causal LM with a rotary module that the installed transformers ships, every method.

For each model type: build a tiny model from its config (tests/walk.py: MoE, MLA and hybrid keys shrunk
too), check that it runs unpatched (else the tiny config, not ctxext, is at fault), then for every
method: patch (replace=True, since some configs ship scaled), check the cos/sin its attention layers
receive at lengths inside, at and past the original and the new window against ctxext's formulas
(tests/runtime.py), save, reload in stock transformers and check again; for YaRN also compare logits
over the whole new window.

Every outcome is named, for the installed transformers: the types ctxext refuses (REFUSED, with the
words of their sentence), the (type, method) pairs it refuses (REFUSED_METHOD), and the types whose
tiny model cannot be built or run unpatched (FIXTURE, with the reason); everything else must patch,
use the method's frequencies at run time and reload exactly. So a new failure, a new refusal, a lost
pass or a fixture that starts failing for another reason each fail the test; after a transformers
upgrade, the report shows what moved. Slow (~6 minutes on 2 cores): CI runs it.
"""

import copy
import tempfile
import warnings

import pytest
import torch
from transformers import AutoModelForCausalLM
from transformers.models.auto.modeling_auto import MODEL_FOR_CAUSAL_LM_MAPPING

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

#: model types ctxext refuses for every method, and the words their one-sentence error must contain
REFUSED = {
    "beam": "no positional encoding (NoPE) on its global layers",
    # CodeGen, GPT-J and Inkling 2 hard-code their rope base in the modeling code: the config names none
    "codegen": "has no rotary position embedding settings",
    "gptj": "has no rotary position embedding settings",
    "inkling2_text": "has no rotary position embedding settings",
    "dory": "no positional encoding (NoPE) on its global layers",
    "ergo": "no positional encoding (NoPE) on its global layers",
}

#: (model type, method) pairs refused on purpose, and the words of their sentence
REFUSED_METHOD = {
    ("phi3", "dynamic-ntk"): "accepts only rope types default, longrope",  # longrope cannot say it
    # Phi-4-multimodal's config validates its rope as longrope only (default passes, so ntk, a rope_theta change, does)
    ("phi4_multimodal", "pi"): "its config refuses it",
    ("phi4_multimodal", "dynamic-ntk"): "its config refuses it",
    ("phi4_multimodal", "ntk-by-parts"): "its config refuses it",
    ("phi4_multimodal", "yarn"): "its config refuses it",
    ("phi4_multimodal", "dynamic-yarn"): "its config refuses it",
    ("phi4_multimodal", "llama3"): "its config refuses it",
    # the full layers' proportional rope (p-RoPE) of Gemma 4 and LFM3 carries pi (its factor) and ntk (its theta) only
    **{(t, m): "can carry only a uniform factor or a new rope_theta"
       for t in ("gemma4", "gemma4_text", "gemma4_unified", "gemma4_unified_text", "lfm3")
       for m in ("dynamic-ntk", "ntk-by-parts", "yarn", "dynamic-yarn", "llama3", "longrope")},
    ("phimoe", "dynamic-ntk"): "rebuilds its frequencies from the config without the current length",
    ("phimoe", "dynamic-yarn"): "rebuilds its frequencies from the config without the current length",
    # RecurrentGemma's rotary embedding takes rope type default only (ntk, a rope_theta change, passes), and its
    # config, which has no max_position_embeddings of its own, cannot standardise a yarn, llama3 or longrope rope
    ("recurrent_gemma", "pi"): "Stock transformers cannot build the rotary embedding",
    ("recurrent_gemma", "dynamic-ntk"): "Stock transformers cannot build the rotary embedding",
    ("recurrent_gemma", "ntk-by-parts"): "its config refuses it",
    ("recurrent_gemma", "yarn"): "its config refuses it",
    ("recurrent_gemma", "dynamic-yarn"): "its config refuses it",
    ("recurrent_gemma", "llama3"): "its config refuses it",
    ("recurrent_gemma", "longrope"): "its config refuses it",
}

#: model types whose tiny model cannot be built or run unpatched here (the fixture's limit, not ctxext's),
#: and the start of the reason ("parameters": still over MAX_PARAMS, a vision tower or the like)
FIXTURE = {
    "blt": 'parameters',
    # Gemma 3n's vision tower is timm's MobileNetV5 (TimmWrapperModel): timm, which needs torchvision, is not among
    # the test dependencies. Its text model, Gemma3nForCausalLM from a Gemma3nTextConfig, is walked as gemma3n_text
    "gemma3n": 'ImportError: \nTimmWrapperModel requires the timm library',
}


def method_params(model, method: str) -> dict:
    if method != "longrope":
        return {}
    half = read_layout(model.config.to_dict()).rotary_dim // 2
    return {"long_factor": [1.0 + 7.0 * i / max(1, half - 1) for i in range(half)]}


def loader(model):
    """AutoModelForCausalLM, or the model's own class where the auto class cannot load the config it saves (the
    causal LM of Mllama and Emu3 is their text model alone, whose text config the auto mapping does not name)."""
    return AutoModelForCausalLM if type(model.config) in MODEL_FOR_CAUSAL_LM_MAPPING else type(model)


def expectation(method: str, params: dict, layout, record: dict) -> Expectation:
    """What attention should get, from the window and thetas the patch started from (`record`: its ctxext record) and
    the parameters it took (the method's, with what the family's spelling fills in: DeepSeek's mscale pair)."""
    params = params | dict(record.get("params") or {})
    return Expectation(method, 8.0, record["original_max_position_embeddings"], params, layout.rotary_dim,
                       {(None if k == "global" else k): v for k, v in record["rope_theta"].items()}
                       | {t: float(r["rope_theta"]) for t, r in layout.rope.items()
                          if r is not None and t not in layout.targets},
                       layout.targets, Expectation.dims_of(layout))


def expectations(base, model, method: str, params: dict, layout) -> dict[str, Expectation]:
    """{module prefix: Expectation}: the attention under a rotary module gets what that module's own config records.

    patch_model writes one record per config a rotary module reads: the model's (a composite's text config) for
    most types, each sub-model's for BLT (patcher, local encoder and decoder, global transformer, thetas 1e4 and
    5e5). The prefix "" (the model config's record, where it has one) covers attention under no recorded module.
    """
    patched = model.config.to_dict()
    top = patched if layout.section is None else patched.get(layout.section, {})  # text_config: composite
    found = {"": expectation(method, params, layout, top["ctxext"])} if "ctxext" in top else {}
    before = dict(base.named_modules())
    for name, module in model.named_modules():
        config = getattr(module, "config", None)
        if not type(module).__name__.endswith("RotaryEmbedding") or config is None:
            continue
        record = config.to_dict().get("ctxext")
        if record is not None:
            prefix = name.rpartition(".")[0] + "." if "." in name else ""
            found[prefix] = expectation(method, params, read_layout(before[name].config.to_dict()), record)
    return found


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
    expect = expectations(base, model, method, params, layout)
    try:
        problems = check_lengths(model, expect, LENGTHS)
        with tempfile.TemporaryDirectory() as d, torch.no_grad():
            model.save_pretrained(d)
            reloaded = loader(model).from_pretrained(d).eval()
            problems += [f"reloaded {p}" for p in check_lengths(reloaded, {k: e.reloaded() for k, e in expect.items()},
                                                                 LENGTHS)]
            diff = 0.0
            if method == "yarn":
                ids = token_ids(8 * L0)
                diff = (model(ids).logits - reloaded(ids).logits).abs().max().item()
                # the `ctxext patch` checkpoint of the saved base model runs as the model patched in memory
                base.save_pretrained(f"{d}/base")
                with warnings.catch_warnings():
                    warnings.simplefilter("ignore")
                    ctxext.patch_checkpoint(f"{d}/base", f"{d}/cli", method, 8, replace=True, **params)
                written = loader(model).from_pretrained(f"{d}/cli").eval()
                diff = max(diff, (model(ids).logits - written(ids).logits).abs().max().item())
    except Exception as err:
        return "FAILED", f"run-time check, save/reload or checkpoint patch raised {type(err).__name__}: {err}"
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
    moved = [f"{t}: expected a fixture problem, got one it did not name ({d})" for t, d in sorted(fixtures.items())
             if t not in FIXTURE or not (d.startswith(FIXTURE[t]) or (FIXTURE[t] == "parameters"
                                                                      and d.endswith("parameters")))]
    moved += [f"{t}: expected its fixture to fail ({FIXTURE[t]}), it built" for t in FIXTURE
              if t not in fixtures and any(k[0] == t for k in outcomes)]
    for (t, m), (o, d) in sorted(outcomes.items()):
        words = REFUSED.get(t) or REFUSED_METHOD.get((t, m))
        expected = "refused" if words else "ok"
        if o != expected or (words and words not in d):
            moved.append(f"{t} {m}: expected {expected}{f' ({words})' if words else ''}, got {o} ({d})")
        if o == "refused":
            assert d.endswith(".") and len(d.splitlines()) == 1, (t, m, d)
    assert not moved, "\n".join(moved) + "\n\n" + report
    ok = {k for k, (o, _) in outcomes.items() if o == "ok"}
    assert {(a, m) for a in ARCHITECTURES for m in METHODS} - set(REFUSED_METHOD) <= ok, report
    assert len({t for t, m in ok if m == "yarn"}) >= 60, report
    print(report)
