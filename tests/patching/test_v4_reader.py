"""Checkpoints ctxext writes load with the same frequencies in real transformers v4 (4.57).

transformers v4 is installed, once, into the ignored directory .v4/ (pip --target, from PyPI) and
run in a subprocess, so both major versions read the very same files.
"""

import json
import subprocess
import sys
from pathlib import Path

import torch
from transformers import AutoModelForCausalLM

import ctxext.patching.checkpoint
from ctxext.patching.checkpoint import patch_checkpoint
from checkpoints import save_checkpoint
from tiny import token_ids
from v4env import v4_env  # noqa: F401  (the fixture)

ROOT = Path(__file__).resolve().parents[2]
CASES = [("llama", "yarn"), ("llama", "pi"), ("llama", "llama3"), ("llama", "ntk"), ("llama", "dynamic-ntk"),
         ("llama", "ntk-by-parts"), ("phi", "yarn"), ("gpt_neox", "yarn"), ("gpt_neox", "ntk"),
         ("gemma3_text", "yarn"), ("qwen2", "pi"), ("gemma3_text", "dynamic-ntk"), ("llama", "longrope"),
         ("phi", "longrope"), ("phi3", "longrope"), ("phi3", "ntk")]
LONGROPE = {  # rotary frequencies of the tiny models -> (long_factor, short_factor)
    8: ([1.0 + 7.0 * i / 7 for i in range(8)], [1.0 + 0.25 * i for i in range(8)]),
    4: ([1.0, 2.0, 4.0, 8.0], [1.0, 1.0, 1.5, 2.0]),
}


def params(arch: str, method: str) -> dict:
    if method != "longrope":
        return {}
    long, short = LONGROPE[4 if arch == "phi" else 8]
    return {"long_factor": long, "short_factor": short}


def v4_logits(jobs, tmp_path, env):
    (tmp_path / "jobs.json").write_text(json.dumps(jobs))
    result = subprocess.run([sys.executable, str(ROOT / "tests" / "v4_logits.py"), str(tmp_path / "jobs.json")],
                            env=env, capture_output=True, text=True, cwd=tmp_path)
    assert result.returncode == 0, result.stderr[-3000:]
    assert result.stdout.strip().splitlines()[-1] == "4.57.6"
    return [torch.load(job["out"]) for job in jobs]


def test_v4_and_v5_read_the_same_model(v4_env, tmp_path, monkeypatch):
    monkeypatch.setattr(ctxext.patching.checkpoint, "LINK_THRESHOLD", 1)
    jobs, expected = [], []
    for arch, method in CASES:
        src = tmp_path / f"src-{arch}"
        if not src.exists():
            save_checkpoint(src, arch)
        out = patch_checkpoint(src, tmp_path / f"{arch}-{method}", method, 8, **params(arch, method))
        # the whole window (dynamic methods grow here, longrope takes long_factor), and inside the original one
        for n in (8 * 64, 48):
            ids = token_ids(n)
            with torch.no_grad():
                expected.append(AutoModelForCausalLM.from_pretrained(out).eval()(ids).logits)
            jobs.append({"checkpoint": str(out), "ids": ids.tolist(), "out": str(tmp_path / f"{arch}-{method}-{n}.pt")})
    cases = [case for case in CASES for _ in range(2)]
    for (arch, method), got, want in zip(cases, v4_logits(jobs, tmp_path, v4_env), expected):
        torch.testing.assert_close(got, want, rtol=1e-5, atol=1e-5, msg=f"{arch} {method}")


def test_v4_refuses_phi3_with_an_explicit_attention_factor(v4_env, tmp_path):
    """transformers v4's Phi-3 config takes exactly {type, short_factor, long_factor}: pi as longrope (attention 1)
    cannot be said there, and v4 refuses to load it rather than silently using another scale."""
    src = save_checkpoint(tmp_path / "src", "phi3")
    out = patch_checkpoint(src, tmp_path / "pi", "pi", 8)
    (tmp_path / "jobs.json").write_text(json.dumps([{"checkpoint": str(out), "ids": [[5, 6]], "out": "x.pt"}]))
    result = subprocess.run([sys.executable, str(ROOT / "tests" / "v4_logits.py"), str(tmp_path / "jobs.json")],
                            env=v4_env, capture_output=True, text=True, cwd=tmp_path)
    assert result.returncode != 0
    assert "`rope_scaling` must be a dictionary with three fields" in result.stderr


def test_the_trap_is_real_for_a_v5_only_config(v4_env, tmp_path):
    """Without the v4 spelling, transformers v4 silently reads a different rope (default theta, full dims)."""
    src = save_checkpoint(tmp_path / "src", "phi", rope_parameters={
        "rope_type": "default", "rope_theta": 500000.0, "partial_rotary_factor": 0.5})
    config = json.loads((src / "config.json").read_text())
    assert "rope_theta" not in config and "partial_rotary_factor" not in config  # what stock v5 saves
    ids = token_ids(64)
    with torch.no_grad():
        v5 = AutoModelForCausalLM.from_pretrained(src).eval()(ids).logits
    (v4,) = v4_logits([{"checkpoint": str(src), "ids": ids.tolist(), "out": str(tmp_path / "v4.pt")}], tmp_path,
                      v4_env)
    assert not torch.allclose(v4, v5, atol=1e-3)
    # the same weights patched by ctxext (factor 1: identity) carry both spellings and agree
    out = patch_checkpoint(src, tmp_path / "both", "ntk", 1.0)
    (v4_both,) = v4_logits([{"checkpoint": str(out), "ids": ids.tolist(), "out": str(tmp_path / "b.pt")}], tmp_path,
                           v4_env)
    torch.testing.assert_close(v4_both, v5, rtol=1e-5, atol=1e-5)
