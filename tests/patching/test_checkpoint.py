"""patch_checkpoint and `ctxext patch`: config-only patching that stock transformers reloads."""

import json
import os
import subprocess
import sys

import pytest
import torch
from transformers import AutoConfig, AutoModelForCausalLM, AutoTokenizer

import ctxext
import ctxext.patching.checkpoint
from ctxext.patching.checkpoint import patch_checkpoint
from ctxext.cli import main
from checkpoints import save_checkpoint
from tiny import token_ids

L0 = 64
ARCHS = ["llama", "qwen2", "gemma3_text", "phi", "gpt_neox"]
METHODS = ["pi", "ntk", "dynamic-ntk", "ntk-by-parts", "yarn", "llama3"]


@pytest.fixture(scope="module")
def sources(tmp_path_factory):
    root = tmp_path_factory.mktemp("src")
    return {arch: save_checkpoint(root / arch, arch) for arch in ARCHS}


@pytest.fixture(autouse=True)
def link_everything(monkeypatch):
    monkeypatch.setattr(ctxext.patching.checkpoint, "LINK_THRESHOLD", 1)  # the tiny weights count as large


def rotary(model):
    return next(m for m in model.modules() if hasattr(m, "attention_scaling") or hasattr(m, "full_attention_inv_freq"))


def run_cli(*args, capsys):
    code = main([str(a) for a in args])
    captured = capsys.readouterr()
    return code, captured.out, captured.err


@pytest.mark.parametrize("arch", ARCHS)
@pytest.mark.parametrize("method", METHODS)
def test_cli_output_reloads_like_the_in_memory_patch(arch, method, sources, tmp_path, capsys):
    out = tmp_path / "out"
    code, stdout, stderr = run_cli("patch", sources[arch], "--method", method, "--factor", 8, "--output", out,
                                   capsys=capsys)
    assert code == 0 and stderr == "" and f"window {L0} -> {8 * L0:,} tokens" in stdout
    in_memory = ctxext.patch_model(AutoModelForCausalLM.from_pretrained(sources[arch]).eval(), method, 8)
    # the output's stock AutoConfig builds the same rotary module as the in-memory patch
    stock = type(rotary(in_memory))(AutoConfig.from_pretrained(out))
    for name, buffer in rotary(in_memory).named_buffers():
        torch.testing.assert_close(dict(stock.named_buffers())[name], buffer, rtol=0, atol=0)
    assert {k: v for k, v in vars(stock).items() if "scaling" in k} == \
           {k: v for k, v in vars(rotary(in_memory)).items() if "scaling" in k}
    reloaded = AutoModelForCausalLM.from_pretrained(out).eval()
    ids = token_ids(8 * L0)
    with torch.no_grad():
        torch.testing.assert_close(reloaded(ids).logits, in_memory(ids).logits, rtol=0, atol=0)


def _factors(n: int, top: float) -> list[float]:
    return [1.0 + (top - 1.0) * i / (n - 1) for i in range(n)]


@pytest.mark.parametrize("arch", ["llama", "phi", "phi3"])
def test_longrope_from_the_cli_reloads_like_the_in_memory_patch(arch, tmp_path, capsys):
    """--long-factor from a .json file, --short-factor as a comma list; both sides of the original window."""
    src = save_checkpoint(tmp_path / "src", arch)
    half = {"llama": 8, "phi": 4, "phi3": 8}[arch]
    long, short = _factors(half, 8.0), _factors(half, 1.5)
    (tmp_path / "long.json").write_text(json.dumps(long))
    out = tmp_path / "out"
    code, stdout, stderr = run_cli("patch", src, "--method", "longrope", "--factor", 8, "--long-factor",
                                   tmp_path / "long.json", "--short-factor", ",".join(map(str, short)),
                                   "--output", out, capsys=capsys)
    assert code == 0 and stderr == "", stderr
    saved = json.loads((out / "config.json").read_text())
    assert saved["rope_parameters"]["long_factor"] == long and saved["rope_parameters"]["short_factor"] == short
    assert saved["max_position_embeddings"] == 8 * L0 and saved["original_max_position_embeddings"] == L0
    in_memory = ctxext.patch_model(AutoModelForCausalLM.from_pretrained(src).eval(), "longrope", 8,
                                   long_factor=long, short_factor=short)
    reloaded = AutoModelForCausalLM.from_pretrained(out).eval()
    with torch.no_grad():
        for ids in (token_ids(L0), token_ids(8 * L0 + 8)):
            torch.testing.assert_close(reloaded(ids).logits, in_memory(ids).logits, rtol=0, atol=0)
    assert "`long_factor=[" + str(half) + " values, 1 to 8]`" in (out / "README.md").read_text()


@pytest.mark.parametrize("method", ["pi", "ntk-by-parts", "yarn", "llama3"])
def test_phi3_checkpoints_take_static_methods_as_longrope(method, tmp_path, capsys):
    src = save_checkpoint(tmp_path / "src", "phi3")
    out = tmp_path / "out"
    code, stdout, stderr = run_cli("patch", src, "--method", method, "--factor", 8, "--output", out, capsys=capsys)
    assert code == 0, stderr
    assert json.loads((out / "config.json").read_text())["rope_parameters"]["rope_type"] == "longrope"
    in_memory = ctxext.patch_model(AutoModelForCausalLM.from_pretrained(src).eval(), method, 8)
    reloaded = AutoModelForCausalLM.from_pretrained(out).eval()
    ids = token_ids(8 * L0)
    with torch.no_grad():
        torch.testing.assert_close(reloaded(ids).logits, in_memory(ids).logits, rtol=0, atol=0)


def test_weights_are_linked_byte_identical_and_everything_else_carried(sources, tmp_path):
    src, out = sources["llama"], tmp_path / "out"
    patch_checkpoint(src, out, "yarn", 8)
    weights = src / "model.safetensors"
    assert (out / "model.safetensors").read_bytes() == weights.read_bytes()
    assert os.stat(out / "model.safetensors").st_ino == os.stat(weights).st_ino  # a hard link: no extra disk
    for name in ("tokenizer.json", "tokenizer_config.json", "generation_config.json", "notes/license.txt"):
        assert (out / name).read_bytes() == (src / name).read_bytes(), name
    assert (out / "README.base.md").read_text() == "# the base model's own card\n"
    card = (out / "README.md").read_text()
    for fact in ("`yarn`", "| factor | 8 |", f"| original window | {L0} tokens |", f"| new window | {8 * L0} tokens |",
                 "from_pretrained"):
        assert fact in card
    assert AutoTokenizer.from_pretrained(out)("w5 w6")["input_ids"] == [9, 10]
    assert not [p for p in out.parent.iterdir() if p.name.startswith(".")]  # no staging left behind


def test_copies_when_linking_is_impossible(sources, tmp_path, monkeypatch):
    def no_links(*args):
        raise OSError(18, "Invalid cross-device link")

    monkeypatch.setattr(ctxext.patching.checkpoint.os, "link", no_links)
    out = patch_checkpoint(sources["llama"], tmp_path / "out", "pi", 2)
    weights = sources["llama"] / "model.safetensors"
    assert (out / "model.safetensors").read_bytes() == weights.read_bytes()
    assert os.stat(out / "model.safetensors").st_ino != os.stat(weights).st_ino


def test_pickle_weights_are_carried_not_unpickled(tmp_path):
    src = save_checkpoint(tmp_path / "src", "llama")
    poison = b"\x80\x04cos\nsystem\n(S'echo unpickled > " + str(tmp_path / "pwned").encode() + b"'\ntR."
    (src / "pytorch_model.bin").write_bytes(poison)
    out = patch_checkpoint(src, tmp_path / "out", "yarn", 4)
    assert (out / "pytorch_model.bin").read_bytes() == poison
    assert not (tmp_path / "pwned").exists()


def test_config_keeps_unrelated_keys_and_writes_both_spellings(sources, tmp_path):
    src = sources["gpt_neox"]
    before = json.loads((src / "config.json").read_text())
    out = patch_checkpoint(src, tmp_path / "out", "yarn", 8)
    after = json.loads((out / "config.json").read_text())
    changed = {k for k in set(before) | set(after) if before.get(k) != after.get(k)}
    assert changed == {"rope_parameters", "rope_scaling", "rope_theta", "rotary_emb_base", "partial_rotary_factor",
                       "rotary_pct", "max_position_embeddings", "original_max_position_embeddings", "ctxext"}
    assert after["rope_scaling"]["rope_type"] == "yarn" and after["rotary_emb_base"] == after["rope_theta"] == 10000.0
    assert after["rope_parameters"]["partial_rotary_factor"] == after["rotary_pct"] == 0.25


def test_hub_ids_resolve_through_huggingface_hub(sources, tmp_path, monkeypatch):
    calls = []

    def fake_snapshot_download(repo_id, revision=None, ignore_patterns=None):
        calls.append((repo_id, revision))
        return str(sources["llama"])

    import huggingface_hub

    monkeypatch.setattr(huggingface_hub, "snapshot_download", fake_snapshot_download)
    out = patch_checkpoint("org/tiny-llama", tmp_path / "out", "yarn", 4, revision="v1")
    assert calls == [("org/tiny-llama", "v1")]
    assert "base_model: org/tiny-llama" in (out / "README.md").read_text()


def test_dynamic_yarn_is_refused_for_checkpoints(sources, tmp_path, capsys):
    code, out, err = run_cli("patch", sources["llama"], "--method", "dynamic-yarn", "--factor", 8,
                             "--output", tmp_path / "out", capsys=capsys)
    assert code == 2 and "dynamic-yarn cannot be written into a stock config" in err and "use yarn" in err
    assert not (tmp_path / "out").exists()


def test_already_scaled_checkpoint_needs_replace(tmp_path, capsys):
    src = save_checkpoint(tmp_path / "src", "llama", max_position_embeddings=512, rope_parameters={
        "rope_type": "llama3", "rope_theta": 500000.0, "factor": 8.0, "low_freq_factor": 1.0,
        "high_freq_factor": 4.0, "original_max_position_embeddings": 64})
    code, _, err = run_cli("patch", src, "--method", "yarn", "--factor", 16, "--output", tmp_path / "out",
                           capsys=capsys)
    assert code == 2 and "already uses llama3" in err and "--replace" in err
    assert not (tmp_path / "out").exists()
    code, out, _ = run_cli("patch", src, "--method", "yarn", "--factor", 16, "--replace", "--output",
                           tmp_path / "out", capsys=capsys)
    assert code == 0 and "window 64 -> 1,024 tokens" in out


def no_traceback_run(*args):
    """Run the real console entry point in a fresh interpreter."""
    return subprocess.run([sys.executable, "-m", "ctxext.cli", *map(str, args)], capture_output=True, text=True,
                          env={**os.environ, "PYTHONWARNINGS": "ignore"})


@pytest.fixture
def gpt2_checkpoint(tmp_path):
    from transformers import GPT2Config, GPT2LMHeadModel

    path = tmp_path / "gpt2"
    GPT2LMHeadModel(GPT2Config(n_layer=1, n_embd=32, n_head=2, vocab_size=64)).save_pretrained(path)
    return path


BAD = {
    "zero factor": (["--method", "yarn", "--factor", "0"], "factor must be >= 1"),
    "negative factor": (["--method", "yarn", "--factor", "-2"], "factor must be >= 1"),
    "not a number": (["--method", "yarn", "--factor", "eight"], "expected a number, got 'eight'"),
    "unknown method": (["--method", "rope2", "--factor", "2"], "invalid choice: 'rope2'"),
    "parameter of another method": (["--method", "pi", "--factor", "2", "--beta-fast", "16"],
                                    "Unknown parameter(s) beta_fast for method 'pi'"),
    "longrope without factors": (["--method", "longrope", "--factor", "2"], "longrope needs long_factor"),
    "longrope factor list": (["--method", "longrope", "--factor", "2", "--long-factor", "1,x"],
                             "expected comma-separated numbers or a .json file, got '1,x'"),
    "longrope factor count": (["--method", "longrope", "--factor", "2", "--long-factor", "1,2,3"],
                              "long_factor has 3 numbers, but this model has 16 rotary dimensions, so it needs 8"),
    "longrope missing file": (["--method", "longrope", "--factor", "2", "--long-factor", "nope.json"],
                              "no such file 'nope.json'"),
}


@pytest.mark.parametrize("case", list(BAD))
def test_bad_arguments_exit_with_one_sentence(case, sources, tmp_path):
    args, message = BAD[case]
    result = no_traceback_run("patch", sources["llama"], *args, "--output", tmp_path / "out")
    assert result.returncode == 2
    assert result.stderr.count("\n") == 1 and message in result.stderr and "Traceback" not in result.stderr
    assert not (tmp_path / "out").exists()


def test_bad_models_and_outputs(sources, gpt2_checkpoint, tmp_path):
    cases = [
        ([tmp_path / "missing", "--output", tmp_path / "o1"], "not found: no such directory"),
        ([gpt2_checkpoint, "--output", tmp_path / "o2"], "has no rotary position embeddings (it uses learned"),
        ([sources["llama"], "--output", "/proc/ctxext/out"], "Cannot write /proc/ctxext/out"),
        ([sources["llama"], "--output", tmp_path / "gpt2" / "config.json" / "out"], "it is a file, not a directory"),
        ([sources["llama"], "--output", sources["llama"] / "inside"], "lies inside the input"),
    ]
    for args, message in cases:
        result = no_traceback_run("patch", *[args[0]], "--method", "yarn", "--factor", "4", *args[1:])
        assert result.returncode == 2, message
        assert message in result.stderr and result.stderr.count("\n") == 1 and "Traceback" not in result.stderr
    assert sorted(p.name for p in tmp_path.iterdir()) == ["gpt2"]
    assert not (sources["llama"] / "inside").exists()


def test_existing_output_is_untouched_unless_overwrite_and_ctxext_wrote_it(sources, tmp_path):
    out = tmp_path / "out"
    out.mkdir()
    (out / "mine.txt").write_text("keep me")
    result = no_traceback_run("patch", sources["llama"], "--method", "yarn", "--factor", "4", "--output", out)
    assert result.returncode == 2 and "already exists" in result.stderr and "--overwrite" in result.stderr
    assert [p.name for p in out.iterdir()] == ["mine.txt"] and (out / "mine.txt").read_text() == "keep me"
    # --overwrite replaces only what ctxext wrote: a folder without its marker is never deleted
    result = no_traceback_run("patch", sources["llama"], "--method", "yarn", "--factor", "4", "--output", out,
                              "--overwrite")
    assert result.returncode == 2 and "ctxext did not write it" in result.stderr, result.stderr
    assert [p.name for p in out.iterdir()] == ["mine.txt"] and (out / "mine.txt").read_text() == "keep me"
    mine = tmp_path / "mine"
    out.rename(mine)
    assert no_traceback_run("patch", sources["llama"], "--method", "yarn", "--factor", "4", "--output", out).returncode == 0
    assert (out / ".ctxext").is_file()
    result = no_traceback_run("patch", sources["llama"], "--method", "pi", "--factor", "2", "--output", out,
                              "--overwrite")
    assert result.returncode == 0 and json.loads((out / "config.json").read_text())["ctxext"]["method"] == "pi"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["mine", "out"]  # no staging, lock or old copy left


def test_patch_and_info_import_no_torch(sources, tmp_path):
    code = (
        "import sys; from ctxext.cli import main; "
        f"main(['patch', {str(sources['llama'])!r}, '--method', 'yarn', '--factor', '8', '--output', "
        f"{str(tmp_path / 'out')!r}]); main(['info', {str(tmp_path / 'out')!r}, '--json']); "
        "print('TORCH' if 'torch' in sys.modules else 'NO-TORCH')"
    )
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip().endswith("NO-TORCH")


def test_factor_1_rewrites_into_both_spellings_and_replace_restores_the_unscaled_model(sources, tmp_path, capsys):
    # README: `--method ntk --factor 1` rewrites any checkpoint into both spellings without changing it,
    # and `--factor 1 --replace` restores the unscaled model (both once crashed after writing, exit 1)
    both = tmp_path / "both"
    code, out, err = run_cli("patch", sources["llama"], "--method", "ntk", "--factor", 1, "--output", both,
                             capsys=capsys)
    assert code == 0 and err == "" and "unscaled" in out
    config = json.loads((both / "config.json").read_text())
    original = json.loads((sources["llama"] / "config.json").read_text())
    assert config["rope_parameters"]["rope_type"] == "default" and "ctxext" not in config
    assert config["rope_theta"] == config["rope_parameters"]["rope_theta"] == original["rope_parameters"]["rope_theta"]
    assert config["max_position_embeddings"] == L0
    ids = token_ids(2 * L0)
    base = AutoModelForCausalLM.from_pretrained(sources["llama"]).eval()
    with torch.no_grad():
        torch.testing.assert_close(AutoModelForCausalLM.from_pretrained(both).eval()(ids).logits, base(ids).logits,
                                   rtol=0, atol=0)

    scaled, restored = tmp_path / "yarn", tmp_path / "restored"
    assert run_cli("patch", sources["llama"], "--method", "yarn", "--factor", 8, "--output", scaled,
                   capsys=capsys)[0] == 0
    code, out, err = run_cli("patch", scaled, "--method", "yarn", "--factor", 1, "--replace", "--output", restored,
                             capsys=capsys)
    assert code == 0 and err == "" and "unscaled" in out
    config = json.loads((restored / "config.json").read_text())
    assert config["rope_parameters"]["rope_type"] == "default" and "ctxext" not in config
    assert config["max_position_embeddings"] == L0
    with torch.no_grad():
        torch.testing.assert_close(AutoModelForCausalLM.from_pretrained(restored).eval()(ids).logits,
                                   base(ids).logits, rtol=0, atol=0)
