"""patch_model over every causal LM with a rotary module that the installed transformers ships.

For each model type: build a tiny model from its config (MoE, MLA and hybrid keys shrunk too), check
that it runs unpatched (else the tiny config, not ctxext, is at fault: recorded, not failed), patch
with YaRN x8 (replace=True, since some configs ship scaled), save, reload in stock transformers and
compare logits over the whole new window. A model type may be refused with a RopeConfigError (a
sentence saying why); any other exception or a logits difference is a failure.
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
    failed = {t: d for t, (o, d) in outcomes.items() if o == "FAILED"}
    assert not failed, report
    ok = {t for t, (o, _) in outcomes.items() if o == "ok"}
    assert set(ARCHITECTURES) - {"phi3"} <= ok, report  # phi3 is refused for yarn on purpose
    assert len(ok) >= 60, report
    for t, (o, detail) in outcomes.items():
        if o == "refused":
            assert detail.endswith(".") and len(detail.splitlines()) == 1, (t, detail)
    print(report)
