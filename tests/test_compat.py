"""Each private or undocumented touch of another library (ctxext/_compat.py) still holds in the installed version.

A failure here means an upgrade moved what ctxext relies on: the message names the touch and the
library, so the fix starts in ctxext/_compat.py rather than in a quiet wrong result elsewhere.
"""

import inspect
import json
import subprocess
import sys

import pytest
import torch

from ctxext import _compat
from tiny import tiny_config, tiny_model
from v4env import v4_env  # noqa: F401  (the fixture)


def _version(package: str) -> str:
    from importlib.metadata import version

    return f"{package} {version(package)}"


def test_dynamic_rope_update_still_shares_one_code_object():
    from transformers.models.llama.modeling_llama import LlamaRotaryEmbedding

    assert _compat.has_stock_dynamic_update(LlamaRotaryEmbedding(tiny_config("llama"))), (
        f"{_version('transformers')}: LlamaRotaryEmbedding.forward no longer shares dynamic_rope_update's "
        "wrapper code object; update _compat.has_stock_dynamic_update"
    )
    assert not _compat.has_stock_dynamic_update(torch.nn.Linear(2, 2))
    # transformers 5.0 to 5.23 put torch.no_grad() around it: still recognised (they refused every dynamic method)
    from transformers.modeling_rope_utils import dynamic_rope_update

    class Wrapped(torch.nn.Module):
        @torch.no_grad()
        @dynamic_rope_update
        def forward(self, x, position_ids):
            return x

    class NoGradOnly(torch.nn.Module):
        @torch.no_grad()
        def forward(self, x, position_ids):
            return x

    assert _compat.has_stock_dynamic_update(Wrapped()) and not _compat.has_stock_dynamic_update(NoGradOnly())


def test_a_config_dict_entry_is_serialised_without_changing_the_rope_alias(tmp_path):
    config = tiny_config("llama")
    config.rope_parameters = {"rope_type": "linear", "rope_theta": 10000.0, "factor": 2.0}
    v4 = {"rope_type": "linear", "type": "linear", "factor": 2.0}
    _compat.set_serialised_config_key(config, "rope_scaling", v4)
    message = (f"{_version('transformers')}: PretrainedConfig.to_dict() no longer serialises __dict__ next to the "
               "rope_scaling alias; update _compat.set_serialised_config_key")
    assert config.to_dict()["rope_scaling"] == v4, message
    assert config.rope_parameters["rope_theta"] == 10000.0, message  # the v5 view is untouched
    config.save_pretrained(tmp_path)
    saved = json.loads((tmp_path / "config.json").read_text())
    assert saved["rope_scaling"] == v4 and saved["rope_parameters"]["factor"] == 2.0, message
    _compat.drop_serialised_config_key(config, "rope_scaling")
    assert config.to_dict().get("rope_scaling") != v4, message


def test_a_dynamic_cache_builds_from_tensors():
    keys = torch.randn(2, 3, 5, 4)
    values = torch.randn(2, 3, 5, 4)
    cache = _compat.dynamic_cache([(keys, values), (keys + 1, values + 1)])
    message = f"{_version('transformers')}: DynamicCache(ddp_cache_data=...) changed; update _compat.dynamic_cache"
    assert cache.get_seq_length() == 5 and len(cache.layers) == 2, message
    torch.testing.assert_close(cache.layers[1].keys, keys + 1, msg=message)
    assert _compat.dynamic_cache().get_seq_length() == 0, message


def test_no_split_modules_is_still_what_accelerates_fsdp_wraps_by():
    from accelerate.utils import FullyShardedDataParallelPlugin
    from accelerate.utils.fsdp_utils import fsdp2_prepare_auto_wrap_policy

    assert set(_compat.no_split_modules(tiny_model("llama"))) == {"LlamaDecoderLayer"}, (
        f"{_version('transformers')}: models no longer list their decoder layers in _no_split_modules"
    )
    for reader in (FullyShardedDataParallelPlugin.set_auto_wrap_policy, fsdp2_prepare_auto_wrap_policy):
        assert "_no_split_modules" in inspect.getsource(reader), (
            f"{_version('accelerate')}: {reader.__qualname__} no longer reads _no_split_modules; "
            "update _compat.no_split_modules and how training/model.py exposes it"
        )


def test_lora_config_options_are_its_dataclass_fields():
    message = f"{_version('peft')}: LoraConfig's options are no longer its dataclass fields; update _compat.lora_config_accepts"
    assert _compat.lora_config_accepts("r") and _compat.lora_config_accepts("ensure_weight_tying"), message
    assert not _compat.lora_config_accepts("no_such_option"), message


def test_a_dataset_fingerprint_follows_content_and_transforms():
    import datasets

    message = f"{_version('datasets')}: Dataset._fingerprint changed; update _compat.dataset_fingerprint"
    a = datasets.Dataset.from_dict({"text": ["one", "two"]})
    same = datasets.Dataset.from_dict({"text": ["one", "two"]})
    other = datasets.Dataset.from_dict({"text": ["one", "three"]})
    assert isinstance(_compat.dataset_fingerprint(a), str), message
    assert _compat.dataset_fingerprint(a) == _compat.dataset_fingerprint(same), message
    assert _compat.dataset_fingerprint(a) != _compat.dataset_fingerprint(other), message
    renamed = a.rename_column("text", "body")
    assert _compat.dataset_fingerprint(renamed) != _compat.dataset_fingerprint(a), message


def test_save_state_writes_each_models_weights_where_the_load_hook_looks(tmp_path):
    from accelerate import Accelerator

    accelerator = Accelerator(cpu=True)
    models = accelerator.prepare(torch.nn.Linear(2, 2), torch.nn.Linear(3, 3))
    accelerator.save_state(str(tmp_path))
    for index in range(len(models)):
        assert (tmp_path / _compat.state_weights_name(index)).is_file(), (
            f"{_version('accelerate')}: save_state no longer writes {_compat.state_weights_name(index)} "
            f"(found {sorted(p.name for p in tmp_path.iterdir())}); update _compat.state_weights_name"
        )


V4_TYPES = """
import importlib, json
import transformers
from transformers.models.auto.configuration_auto import model_type_to_module_name
from transformers.models.auto.modeling_auto import MODEL_FOR_CAUSAL_LM_MAPPING_NAMES
rotary = []
for model_type in MODEL_FOR_CAUSAL_LM_MAPPING_NAMES:
    module = model_type_to_module_name(model_type)
    try:
        modeling = importlib.import_module(f"transformers.models.{module}.modeling_{module}")
    except Exception:
        continue
    if any(name.endswith("RotaryEmbedding") for name in vars(modeling)):
        rotary.append(model_type)
print(json.dumps({"version": transformers.__version__, "causal": sorted(MODEL_FOR_CAUSAL_LM_MAPPING_NAMES),
                  "rotary": sorted(rotary)}))
"""


@pytest.mark.slow
def test_v4_model_types_are_the_v4_readers_rotary_causal_lms(v4_env, tmp_path):
    done = subprocess.run([sys.executable, "-c", V4_TYPES], env=v4_env, capture_output=True, text=True, cwd=tmp_path)
    assert done.returncode == 0, done.stderr[-3000:]
    v4 = json.loads(done.stdout.strip().splitlines()[-1])
    unknown = sorted(_compat.V4_MODEL_TYPES - set(v4["causal"]))
    missing = sorted(set(v4["rotary"]) - _compat.V4_MODEL_TYPES)
    assert not unknown, f"transformers {v4['version']} does not load {unknown} as causal LMs; update _compat.V4_MODEL_TYPES"
    assert not missing, f"transformers {v4['version']} has rotary causal LMs {missing} missing from _compat.V4_MODEL_TYPES"


def test_a_replaced_forward_runs_with_the_modules_hooks_and_is_put_back():
    import torch

    from ctxext._compat import forward_replaced

    module = torch.nn.Linear(2, 2)
    seen = []
    module.register_forward_pre_hook(lambda m, args: seen.append("hook"))
    x = torch.ones(1, 2)
    with forward_replaced(module, lambda x: x * 7):
        assert torch.equal(module(x), x * 7)
    assert seen == ["hook"] and "forward" not in vars(module)
    torch.testing.assert_close(module(x), torch.nn.functional.linear(x, module.weight, module.bias))
    module.forward = lambda x: x + 1  # a wrapper someone else put there (accelerate's hooks do) comes back
    with forward_replaced(module, lambda x: x * 7):
        assert torch.equal(module(x), x * 7)
    assert torch.equal(module(x), x + 1)


def test_no_module_but_compat_touches_another_objects_private_names():
    """Outside ctxext/_compat.py, no `obj._name` of anything but the module's own object, no `__code__` /
    `__dict__` / `__dataclass_fields__`, and no getattr/hasattr of a private name (ctxext's own `_ctxext_*` aside)."""
    import ast
    from pathlib import Path

    package = Path(_compat.__file__).parent
    # the language's own public dunders (`__traceback__`: PEP 3134's attribute of every exception)
    allowed_dunders = {"__name__", "__init__", "__file__", "__version__", "__main__", "__class__", "__qualname__",
                       "__traceback__"}
    found = []
    for path in sorted(package.rglob("*.py")):
        if path.name == "_compat.py":
            continue
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
            names = []
            if isinstance(node, ast.Attribute) and ast.unparse(node.value) not in ("self", "cls", "ctx"):
                names.append(node.attr)
            if isinstance(node, ast.Call) and ast.unparse(node.func) in ("getattr", "hasattr", "setattr", "delattr"):
                if len(node.args) > 1 and isinstance(node.args[1], ast.Constant) and isinstance(node.args[1].value, str):
                    names.append(node.args[1].value)
            for name in names:
                dunder = name.startswith("__") and name.endswith("__")
                if (dunder and name not in allowed_dunders) or (name.startswith("_") and not dunder and not name.startswith("_ctxext")):
                    found.append(f"{path.relative_to(package.parent)}:{node.lineno} {name}")
    assert not found, "private names touched outside _compat:\n" + "\n".join(found)


def test_checkpoint_keys_are_renamed_as_from_pretrained_renames_them():
    message = (f"{_version('transformers')}: get_model_conversion_mapping / rename_source_key changed; update "
               "_compat.checkpoint_key_renamer (check_weights_fit reads checkpoint names through it)")
    mixtral = _compat.checkpoint_key_renamer(tiny_model("mixtral", num_local_experts=4, num_experts_per_tok=2))
    # Mixtral ships one tensor per expert; v5 stacks them into one fused parameter per layer
    assert mixtral("model.layers.0.block_sparse_moe.experts.3.w1.weight") == (
        ["model.layers.0.mlp.experts.gate_up_proj"], True), message
    assert mixtral("model.layers.1.block_sparse_moe.experts.0.w2.weight") == (
        ["model.layers.1.mlp.experts.down_proj"], True), message
    llama = _compat.checkpoint_key_renamer(tiny_model("llama"))
    assert llama("model.layers.0.self_attn.q_proj.weight") == (["model.layers.0.self_attn.q_proj.weight"], False), message
    # a base model's checkpoint (no "model." prefix) loads into the causal LM
    assert llama("layers.0.self_attn.q_proj.weight") == (["model.layers.0.self_attn.q_proj.weight"], False), message


def test_tied_weights_and_ignored_missing_keys_are_where_from_pretrained_reads_them():
    message = (f"{_version('transformers')}: PreTrainedModel.all_tied_weights_keys or _keys_to_ignore_on_load_missing "
               "moved; update _compat.tied_weight_names / ignored_missing_patterns")
    assert _compat.tied_weight_names(tiny_model("llama", tie_word_embeddings=True)) == {"lm_head.weight"}, message
    assert _compat.tied_weight_names(tiny_model("llama", tie_word_embeddings=False)) == set(), message
    assert _compat.ignored_missing_patterns(tiny_model("llama")) == [], message
    from transformers.models.llama.modeling_llama import LlamaForCausalLM

    class Ignoring(LlamaForCausalLM):
        _keys_to_ignore_on_load_missing = [r"lm_head\.weight"]

    assert _compat.ignored_missing_patterns(Ignoring(tiny_config("llama"))) == [r"lm_head\.weight"], message
