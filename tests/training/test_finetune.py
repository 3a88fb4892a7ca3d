"""finetune on tiny models: the loss falls, the merged output is a stock checkpoint, resume after a
kill equals an uninterrupted run, and two processes under accelerate split the data and agree."""

import json
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
import torch
from transformers import AutoModelForCausalLM, AutoTokenizer

from ctxext.errors import CtxextError
from ctxext.rope.functions import compute_inv_freq
from ctxext.training.finetune import Recipe, checkpoint_dir, finetune, learning_rate_at
from tiny import tiny_model, tiny_tokenizer

ROOT = Path(__file__).resolve().parents[2]
L0 = 64  # the tiny models' window


@pytest.fixture(autouse=True, scope="module")
def one_thread():
    """On a shared 2-core machine, OpenMP threads that spin against other jobs make tiny steps 10x slower."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


def english(n_lines: int = 400, seed: int = 0) -> str:
    """Varied but learnable text: sentences drawn from a small grammar."""
    import random

    rng = random.Random(seed)
    subjects = ["the cat", "a dog", "my friend", "the old man", "a small bird", "the teacher"]
    verbs = ["sees", "likes", "finds", "carries", "follows", "paints"]
    objects = ["the red ball", "a green tree", "the long road", "a quiet house", "the blue sea"]
    return "\n".join(
        f"{rng.choice(subjects)} {rng.choice(verbs)} {rng.choice(objects)}." for _ in range(n_lines)
    ) + "\n"


def subprocess_env(tmp_path) -> dict:
    return {
        **os.environ,
        "PYTHONPATH": os.pathsep.join([str(ROOT), str(ROOT / "tests")]),
        "OMP_NUM_THREADS": "1",
        "HF_HUB_OFFLINE": "1",
        "CTXEXT_CACHE": str(tmp_path / "cache"),
    }


@pytest.fixture(scope="module")
def source(tmp_path_factory):
    """A tiny Llama checkpoint with a character tokenizer, and a text file, on disk.

    The wider init lets the head express a confident distribution: at the default 0.02 the logits
    stay within about +-2 whatever attention does, and LoRA on attention can barely lower the loss.
    """
    root = tmp_path_factory.mktemp("source")
    model = tiny_model("llama", initializer_range=0.1)
    model.save_pretrained(root / "model")
    tiny_tokenizer().save_pretrained(root / "model")
    (root / "text.txt").write_text(english())
    return root


@pytest.fixture(scope="module")
def trained(source, tmp_path_factory):
    out = tmp_path_factory.mktemp("run") / "out"
    result = finetune(
        str(source / "model"), "yarn", 4, str(source / "text.txt"), out,
        seq_len=128, max_steps=30, learning_rate=1e-2, warmup_steps=3, save_every=10,
        cache_dir=out.parent / "cache", progress=False,
    )  # fmt: skip
    return result


def test_learning_rate_warms_up_then_holds_or_decays():
    constant = Recipe(max_steps=10, learning_rate=1.0, warmup_steps=4)
    assert [learning_rate_at(s, constant) for s in (1, 2, 4, 5, 10)] == [0.25, 0.5, 1.0, 1.0, 1.0]
    cosine = Recipe(max_steps=10, learning_rate=1.0, warmup_steps=4, schedule="cosine")
    values = [learning_rate_at(s, cosine) for s in range(4, 11)]
    assert values[0] == 1.0 and values[-1] == pytest.approx(0.0, abs=1e-12)
    assert all(a > b for a, b in zip(values, values[1:]))
    assert learning_rate_at(1, Recipe(warmup_steps=0)) == 2e-5


@pytest.mark.parametrize(
    "kwargs,message",
    [
        (dict(max_steps=0), "max_steps must be a whole number greater than 0"),
        (dict(seq_len=1), "seq_len must be a whole number of tokens"),
        (dict(learning_rate=-1.0), "learning_rate is out of range"),
        (dict(schedule="linear"), "Unknown schedule 'linear'"),
        (dict(lora_target="mlp"), "Unknown lora_target 'mlp'"),
        (dict(pose_window=32), "pose_window is set but pose is off"),
    ],
)
def test_recipe_refuses_bad_values_with_a_sentence(kwargs, message):
    with pytest.raises(CtxextError, match=message):
        Recipe(**kwargs)


def test_unknown_keywords_are_refused_naming_the_valid_ones(tmp_path):
    with pytest.raises(CtxextError, match=r"unknown argument\(s\) max_step; valid recipe fields: seq_len, .*max_steps"):
        finetune(tiny_model("llama"), "yarn", 2, list(range(4, 100)), tmp_path / "out", max_step=3)
    with pytest.raises(CtxextError, match=r"Unknown parameter\(s\) beta_fast for method 'pi'"):
        finetune(tiny_model("llama"), "pi", 2, list(range(4, 100)), tmp_path / "out", beta_fast=8.0)
    with pytest.raises(CtxextError, match="recipe must be a ctxext Recipe"):
        finetune(tiny_model("llama"), "pi", 2, list(range(4, 100)), tmp_path / "out", {"max_steps": 3})
    assert not (tmp_path / "out").exists()


def test_a_recipe_with_keywords_on_top_and_the_callers_random_state_left_alone(tmp_path):
    """Keywords override the recipe's fields; the run seeds its own generators and gives the caller's back."""
    import random

    import numpy as np

    def draws():
        return random.random(), float(np.random.rand()), float(torch.rand(()))

    model = tiny_model("llama")  # (tiny_model seeds torch itself)
    ids = torch.randint(4, 128, (4000,), generator=torch.Generator().manual_seed(0))
    random.seed(11), np.random.seed(11), torch.manual_seed(11)
    expected = draws()
    random.seed(11), np.random.seed(11), torch.manual_seed(11)
    recipe = Recipe(max_steps=3, learning_rate=1e-3, warmup_steps=2, seq_len=64, save_every=0)
    result = finetune(model, "pi", 2, ids, tmp_path / "out", recipe, warmup_steps=0, progress=False)
    assert draws() == expected
    assert [r["lr"] for r in result.log] == [1e-3, 1e-3, 1e-3]  # warmup_steps=0 won over the recipe's 2
    card = (tmp_path / "out" / "README.md").read_text()
    assert "0 warmup steps" in card and "3 x 1 sequences" in card


def test_the_patch_is_planned_once_per_run(tmp_path, monkeypatch):
    import ctxext.patching.model
    import ctxext.rope.plan
    import ctxext.training.finetune as module

    plans = []
    plan = ctxext.rope.plan.plan_patch
    monkeypatch.setattr(module, "plan_patch", lambda *a, **k: plans.append(1) or plan(*a, **k))
    monkeypatch.setattr(ctxext.patching.model, "plan_patch", lambda *a, **k: pytest.fail("planned a second time"))
    ids = torch.randint(4, 128, (2000,), generator=torch.Generator().manual_seed(0))
    result = finetune(tiny_model("llama"), "yarn", 2, ids, tmp_path / "out", max_steps=1, save_every=0, progress=False)
    assert plans == [1] and result.model.config.rope_parameters["rope_type"] == "yarn"


def test_loss_falls_and_the_log_records_every_step(trained):
    log = trained.log
    assert [r["step"] for r in log] == list(range(1, 31))
    assert set(log[0]) == {"step", "loss", "lr", "tokens_per_s", "sequences"}
    assert all(r["tokens_per_s"] > 0 for r in log)
    assert [r["lr"] for r in log[:4]] == pytest.approx([1e-2 / 3, 2e-2 / 3, 1e-2, 1e-2])
    first = sum(r["loss"] for r in log[:5]) / 5
    last = sum(r["loss"] for r in log[-5:]) / 5
    assert last < 0.8 * first, (first, last)
    on_disk = [json.loads(line) for line in (trained.output_dir / "train_log.jsonl").read_text().splitlines()]
    assert on_disk == log


def test_output_reloads_in_stock_transformers_with_the_new_rope_and_changed_attention(trained, source):
    out = trained.output_dir
    assert not checkpoint_dir(out).exists()  # the run's checkpoints go once the output is complete
    reloaded = AutoModelForCausalLM.from_pretrained(out).eval()
    rope = reloaded.config.rope_parameters
    assert rope["rope_type"] == "yarn" and rope["factor"] == 4.0 and rope["original_max_position_embeddings"] == L0
    inv_freq, scale = compute_inv_freq(
        "yarn", dim=16, rope_theta=rope["rope_theta"], factor=4.0, original_max_position_embeddings=L0
    )
    rotary = reloaded.model.rotary_emb
    torch.testing.assert_close(rotary.inv_freq, inv_freq)
    assert rotary.attention_scaling == pytest.approx(scale)

    from safetensors.torch import load_file

    saved = load_file(out / "model.safetensors")
    assert not [k for k in saved if any(w in k for w in ("lora", "base_layer", "modules_to_save", "base_model"))]
    base = AutoModelForCausalLM.from_pretrained(source / "model").state_dict()
    for key, value in reloaded.state_dict().items():
        moved = not torch.equal(value, base[key])
        if any(p in key for p in ("q_proj", "k_proj", "v_proj", "o_proj")):
            assert moved, f"{key} was not trained"
        else:
            assert not moved, f"{key} changed but LoRA targets the attention projections only"

    ids = torch.randint(4, 128, (1, 200), generator=torch.Generator().manual_seed(0))  # past the old window
    with torch.no_grad():
        torch.testing.assert_close(reloaded(ids).logits, trained.model(ids).logits)
    assert AutoTokenizer.from_pretrained(out)("ab")["input_ids"] == [97, 98]
    card = (out / "README.md").read_text()
    assert "## Fine-tuning recipe" in card and "lr 0.01" in card and "30 x 1 sequences" in card


def test_the_adapter_on_the_patched_base_gives_the_merged_model(trained, source):
    from peft import PeftModel

    import ctxext

    base = AutoModelForCausalLM.from_pretrained(source / "model")
    ctxext.patch_model(base, "yarn", 4)
    adapted = PeftModel.from_pretrained(base, trained.output_dir / "adapter").eval()
    ids = torch.randint(4, 128, (1, 100), generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        torch.testing.assert_close(adapted(ids).logits, trained.model(ids).logits, rtol=1e-4, atol=1e-5)


def test_embeddings_and_norms_train_and_a_tied_head_stays_tied(tmp_path):
    model = tiny_model("llama", tie_word_embeddings=True)
    original = {k: v.clone() for k, v in model.state_dict().items()}
    ids = torch.randint(4, 128, (4000,), generator=torch.Generator().manual_seed(0))
    result = finetune(
        model, "pi", 2, ids, tmp_path / "out", max_steps=3, learning_rate=1e-2, warmup_steps=0,
        train_embeddings_and_norms=True, save_every=0, progress=False,
    )  # fmt: skip
    reloaded = AutoModelForCausalLM.from_pretrained(tmp_path / "out")
    state = reloaded.state_dict()
    assert not torch.equal(state["model.embed_tokens.weight"], original["model.embed_tokens.weight"])
    assert not torch.equal(state["model.norm.weight"], original["model.norm.weight"])
    assert not torch.equal(state["model.layers.0.input_layernorm.weight"], original["model.layers.0.input_layernorm.weight"])
    assert reloaded.lm_head.weight is reloaded.model.embed_tokens.weight
    torch.testing.assert_close(result.model.lm_head.weight, result.model.model.embed_tokens.weight)
    adapter = json.loads((tmp_path / "out" / "adapter" / "adapter_config.json").read_text())
    assert "model.embed_tokens" in adapter["modules_to_save"]


KILLED_RUN = """
import os, signal, sys
from ctxext.training.finetune import finetune
from tiny import tiny_model

def die(record):
    if record["step"] == {kill_at}:
        os.kill(os.getpid(), signal.SIGKILL)  # no cleanup, no exception handler runs

finetune({model!r}, "yarn", 4, {data!r}, {out!r}, on_step=die, progress=False, **{kwargs!r})
"""


@pytest.mark.slow
def test_resume_after_a_kill_equals_an_uninterrupted_run(source, tmp_path):
    """PoSE, gradient accumulation and batches of 2, killed between checkpoints: the resumed run sees the
    same samples in the same order, repeats none in its log, and ends with the same weights."""
    kwargs = dict(
        seq_len=128, pose=True, pose_window=32, max_steps=7, batch_size=2, gradient_accumulation_steps=2,
        learning_rate=5e-3, warmup_steps=2, schedule="cosine", save_every=3, seed=5,
        cache_dir=str(tmp_path / "cache"),
    )  # fmt: skip
    model, data = str(source / "model"), str(source / "text.txt")
    straight = finetune(model, "yarn", 4, data, tmp_path / "straight", progress=False, **kwargs)

    out = tmp_path / "resumed"
    script = KILLED_RUN.format(kill_at=5, model=model, data=data, out=str(out), kwargs=kwargs)
    killed = subprocess.run([sys.executable, "-c", script], env=subprocess_env(tmp_path), capture_output=True, text=True)
    assert killed.returncode == -9, killed.stderr[-2000:]
    assert not out.exists()
    steps_logged = [json.loads(x)["step"] for x in (checkpoint_dir(out) / "train_log.jsonl").read_text().splitlines()]
    assert steps_logged == [1, 2, 3, 4, 5] and (checkpoint_dir(out) / "step-0000003").is_dir()

    with pytest.raises(CtxextError, match="holds the checkpoints of an interrupted run"):
        finetune(model, "yarn", 4, data, out, progress=False, **kwargs)
    with pytest.raises(CtxextError, match=r"learning_rate \(0.005 then, 0.001 now\) changed"):
        finetune(model, "yarn", 4, data, out, progress=False, resume=True, **{**kwargs, "learning_rate": 1e-3})

    resumed = finetune(model, "yarn", 4, data, out, progress=False, resume=True, **kwargs)
    assert [r["step"] for r in resumed.log] == list(range(1, 8))  # nothing lost, nothing repeated
    assert [r["sequences"] for r in resumed.log] == [r["sequences"] for r in straight.log]
    assert [r["loss"] for r in resumed.log] == pytest.approx([r["loss"] for r in straight.log], rel=1e-5)
    a, b = straight.model.state_dict(), resumed.model.state_dict()
    for key in a:
        torch.testing.assert_close(a[key], b[key], rtol=1e-5, atol=1e-6, msg=key)


TWO_PROCESS_RUN = """
import json, os, sys, torch
from accelerate import PartialState
from ctxext.training.finetune import finetune

result = finetune({model!r}, "yarn", 4, {data!r}, {out!r}, seq_len=128, max_steps=4, batch_size=2,
                  learning_rate=5e-3, warmup_steps=1, save_every=2, progress=False)
rank = PartialState().process_index
torch.save(result.model.state_dict(), os.path.join({report!r}, f"rank{{rank}}.pt"))
"""


@pytest.mark.slow
def test_two_processes_under_accelerate_see_different_data_and_end_identical(source, tmp_path):
    report = tmp_path / "report"
    report.mkdir()
    script = tmp_path / "run.py"
    out = tmp_path / "out"
    script.write_text(
        TWO_PROCESS_RUN.format(model=str(source / "model"), data=str(source / "text.txt"), out=str(out), report=str(report))
    )
    # torchrun's launcher (--multi_gpu) told to stay on the CPU: two processes over gloo (`--cpu` alone
    # would pick accelerate's single-process launcher)
    command = [
        sys.executable, "-m", "accelerate.commands.launch", "--multi_gpu", "--num_processes", "2",
        "--num_machines", "1", "--mixed_precision", "no", "--dynamo_backend", "no", "--main_process_port", "0",
        str(script),
    ]  # fmt: skip
    env = {**subprocess_env(tmp_path), "ACCELERATE_USE_CPU": "true", "CUDA_VISIBLE_DEVICES": ""}
    done = subprocess.run(command, env=env, capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr[-3000:]

    log = [json.loads(line) for line in (out / "train_log.jsonl").read_text().splitlines()]
    assert [r["step"] for r in log] == [1, 2, 3, 4]
    for record in log:
        assert len(record["sequences"]) == 2  # one list per process
        rank0, rank1 = record["sequences"]  # [processes, batch]: what each rank trained on in the step
        assert len(rank0) == len(rank1) == 2
        assert not set(rank0) & set(rank1)
    seen = [s for r in log for rank in r["sequences"] for s in rank]
    assert len(set(seen)) == len(seen) == 16  # every sample once: 4 steps x 2 ranks x batch 2

    weights = [torch.load(report / f"rank{r}.pt") for r in (0, 1)]
    saved = AutoModelForCausalLM.from_pretrained(out).state_dict()
    for key in weights[0]:
        torch.testing.assert_close(weights[0][key], weights[1][key], rtol=0, atol=0, msg=key)
        torch.testing.assert_close(weights[0][key], saved[key], rtol=0, atol=0, msg=key)


def test_report_to_tensorboard_logs_every_step_as_the_run_log_records_it(source, tmp_path):
    """--report-to: accelerate's tensorboard tracker gets each step's loss, learning rate and throughput, and its
    event files land in OUTPUT/logs; tensorboard's own reader (an independent one) gives back the run log's values."""
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    out = tmp_path / "out"
    result = finetune(
        str(source / "model"), "yarn", 4, str(source / "text.txt"), out, seq_len=128, max_steps=4,
        learning_rate=1e-2, warmup_steps=2, save_every=0, report_to="tensorboard", cache_dir=tmp_path / "cache",
        progress=False,
    )  # fmt: skip
    events = sorted((out / "logs").rglob("events.out.tfevents.*"))
    assert events, sorted(p.relative_to(out) for p in out.rglob("*"))
    scalars = {}
    for directory in {e.parent for e in events}:
        reader = EventAccumulator(str(directory))
        reader.Reload()
        for tag in reader.Tags()["scalars"]:
            scalars.setdefault(tag, []).extend((e.step, e.value) for e in reader.Scalars(tag))
    for key in ("loss", "lr", "tokens_per_s"):
        steps, values = zip(*sorted(scalars[key]))
        assert list(steps) == [r["step"] for r in result.log], key
        assert list(values) == pytest.approx([r[key] for r in result.log], rel=1e-6), key  # float32 in the event file
    assert not checkpoint_dir(out).exists()


def test_report_to_a_tracker_that_is_not_installed_is_refused_before_anything_is_written(source, tmp_path):
    import importlib.util

    missing = next(name for name in ("aim", "dvclive", "swanlab", "clearml") if importlib.util.find_spec(name) is None)
    out = tmp_path / "out"
    with pytest.raises(CtxextError, match=f"report_to {missing} needs the {missing} package, which is not installed"):
        finetune(str(source / "model"), "yarn", 4, str(source / "text.txt"), out, max_steps=2, report_to=missing,
                 cache_dir=tmp_path / "cache", progress=False)
    assert sorted(p.name for p in tmp_path.iterdir()) == []
