"""patch_model over every causal LM with a rotary module that the installed transformers ships.

For each model type: build a tiny model from its config (MoE, MLA and hybrid keys shrunk too), check
that it runs unpatched (else the tiny config, not ctxext, is at fault), patch with YaRN x8
(replace=True, since some configs ship scaled), save, reload in stock transformers and compare
logits over the whole new window.

Every outcome is named per model type, for the installed transformers: the types ctxext refuses
(REFUSED, with the words of their sentence) and those whose tiny model cannot be built or run
unpatched (FIXTURE, with the reason); every other type must patch and reload exactly. So a new
failure, a new refusal, a lost pass or a fixture that starts failing for another reason each fail
the test; after a transformers upgrade, the report shows what moved.
"""

import copy
import importlib
import tempfile
import warnings

import torch
from transformers import AutoConfig, AutoModelForCausalLM
from transformers.models.auto.configuration_auto import model_type_to_module_name
from transformers.models.auto.modeling_auto import MODEL_FOR_CAUSAL_LM_MAPPING_NAMES

import ctxext
from ctxext.rope.layout import RopeConfigError
from tiny import ARCHITECTURES, OVERRIDES, SMALL, token_ids

SHRINK = dict(
    num_experts=4, num_local_experts=4, n_routed_experts=4, moe_num_experts=4, num_experts_per_tok=2,
    moe_intermediate_size=32, shared_expert_intermediate_size=32, n_shared_experts=1, first_k_dense_replace=1,
    n_group=1, topk_group=1,
)
MAX_PARAMS = 5_000_000  # a tiny config that stays bigger than this builds a vision tower or the like: skipped
L0 = SMALL["max_position_embeddings"]

#: model types ctxext refuses for YaRN x8, and the words their one-sentence error must contain
REFUSED = {
    "beam": "no positional encoding (NoPE) on its global layers",
    "dory": "no positional encoding (NoPE) on its global layers",
    "gemma4_unified_text": "does not recognise the rotary embedding",
    "glm4_moe_lite": "does not recognise the rotary embedding",
    "jetmoe": "does not recognise the rotary embedding",
}

#: model types whose tiny model cannot be built or run unpatched here (the fixture's limit, not ctxext's),
#: and the start of the reason ("parameters": still over MAX_PARAMS, a vision tower or the like)
FIXTURE = {
    "axk1": 'RuntimeError: The size of tensor a (4) must',
    "axk2": 'RuntimeError: The size of tensor a (4) must',
    "bailing_hybrid": 'ValueError: `get_seq_length` can only be cal',
    "bamba": 'ValueError: `get_seq_length` can only be cal',
    "blt": 'parameters',
    "codegen": 'RuntimeError: The size of tensor a (16) must',
    "cohere_compass_text": "KeyError: 'full_attention'",
    "dbrx": "AttributeError: 'DbrxAttentionConfig' object",
    "deepseek_v2": 'RuntimeError: The size of tensor a (4) must',
    "deepseek_v3": 'RuntimeError: The size of tensor a (4) must',
    "deepseek_v32": 'parameters',
    "deepseek_v4": 'parameters',
    "dots3_note": 'StrictDataclassClassValidationError: Class v',
    "dots3_note_text": 'StrictDataclassClassValidationError: Class v',
    "emu3": 'parameters',
    "gemma3": 'parameters',
    "gemma3n": 'ImportError:',
    "gemma3n_text": 'ValueError: The set of layer types producing',
    "gemma4": 'parameters',
    "gemma4_text": 'parameters',
    "gemma4_unified": 'parameters',
    "glm_moe_dsa": 'parameters',
    "gptj": 'RuntimeError: The size of tensor a (16) must',
    "granitemoehybrid": 'ValueError: `get_seq_length` can only be cal',
    "helium": 'RuntimeError: mat1 and mat2 shapes cannot be',
    "hunyuan_v1_dense": 'TypeError: unsupported operand type(s) for *',
    "hunyuan_v1_moe": 'TypeError: unsupported operand type(s) for *',
    "hy_v4": 'parameters',
    "inkling2_text": 'parameters',
    "lfm2_moe": "TypeError: 'NoneType' object is not subscrip",
    "lfm3": 'ValueError: `get_seq_length` can only be cal',
    "llama4": 'parameters',
    "longcat_flash": 'RuntimeError: The size of tensor a (4) must',
    "minicpm3": 'RuntimeError: The size of tensor a (4) must',
    "ministral": 'TypeError: unsupported operand type(s) for *',
    "mllama": 'parameters',
    "phi4_multimodal": 'parameters',
    "qwen3_5": 'parameters',
    "qwen3_5_moe": 'parameters',
    "qwen3_5_moe_text": 'ValueError: `get_seq_length` can only be cal',
    "qwen3_5_text": 'ValueError: `get_seq_length` can only be cal',
    "qwen3_next": 'ValueError: `get_seq_length` can only be cal',
    "qwen4_exp": 'TypeError: unsupported operand type(s) for /',
    "qwen4_exp_text": 'ValueError: `get_seq_length` can only be cal',
    "recurrent_gemma": 'ValueError: `get_seq_length` can only be cal',
    "youtu": 'RuntimeError: The size of tensor a (4) must',
    "zamba2": 'StrictDataclassClassValidationError: Class v',
    "zaya": 'StrictDataclassClassValidationError: Class v',
}


def rotary_model_types() -> list[str]:
    found = []
    for model_type in MODEL_FOR_CAUSAL_LM_MAPPING_NAMES:
        module = model_type_to_module_name(model_type)
        try:
            modeling = importlib.import_module(f"transformers.models.{module}.modeling_{module}")
        except Exception:
            continue
        if any(name.endswith("RotaryEmbedding") for name in vars(modeling)):
            found.append(model_type)
    return found


def check(model_type: str) -> tuple[str, str]:
    """(outcome, detail): outcome is ok, refused, fixture (tiny config unusable) or FAILED."""
    try:
        config = AutoConfig.for_model(model_type, **{**SMALL, **SHRINK, **OVERRIDES.get(model_type, {})})
        with torch.device("meta"):
            size = sum(p.numel() for p in AutoModelForCausalLM.from_config(copy.deepcopy(config)).parameters())
        if size > MAX_PARAMS:
            return "fixture", f"{size:,} parameters"
        torch.manual_seed(0)
        model = AutoModelForCausalLM.from_config(config).eval()
        with torch.no_grad():
            model(token_ids(40))
    except Exception as err:
        return "fixture", f"{type(err).__name__}: {err}"[:160]
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            ctxext.patch_model(model, "yarn", 8, replace=True)
    except RopeConfigError as err:
        return "refused", str(err)
    except Exception as err:
        return "FAILED", f"patch_model raised {type(err).__name__}: {err}"
    try:
        ids = token_ids(8 * L0)
        with tempfile.TemporaryDirectory() as d, torch.no_grad():
            model.save_pretrained(d)
            reloaded = AutoModelForCausalLM.from_pretrained(d).eval()
            diff = (model(ids).logits - reloaded(ids).logits).abs().max().item()
    except Exception as err:
        return "FAILED", f"save/reload raised {type(err).__name__}: {err}"
    # exact for the architectures the fast tests name; a few MoE kernels round differently by memory layout
    return ("ok", f"{diff:.1e}") if diff <= 1e-6 else ("FAILED", f"logits differ by {diff:.3g} after reload")


def test_every_rotary_causal_lm():
    outcomes = {model_type: check(model_type) for model_type in rotary_model_types()}
    report = "\n".join(f"{t:28s} {o:8s} {d}" for t, (o, d) in sorted(outcomes.items()))
    expected = {t: "refused" if t in REFUSED else "fixture" if t in FIXTURE else "ok" for t in outcomes}
    moved = [f"{t}: expected {expected[t]}, got {o} ({d})" for t, (o, d) in sorted(outcomes.items()) if o != expected[t]]
    assert not moved, "\n".join(moved) + "\n\n" + report
    for t, (o, detail) in outcomes.items():
        if o == "refused":
            assert REFUSED[t] in detail, (t, detail)
            assert detail.endswith(".") and len(detail.splitlines()) == 1, (t, detail)
        if o == "fixture":
            assert detail.startswith(FIXTURE[t]) or (FIXTURE[t] == "parameters" and detail.endswith("parameters")), (t, detail)
    ok = {t for t, (o, _) in outcomes.items() if o == "ok"}
    assert set(ARCHITECTURES) <= ok, report  # phi3 included: yarn is written there as longrope
    assert len(ok) >= 60, report
    print(report)
