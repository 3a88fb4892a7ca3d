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
         ("gemma3_text", "yarn"), ("qwen2", "pi")]


def v4_logits(jobs, tmp_path, env):
    (tmp_path / "jobs.json").write_text(json.dumps(jobs))
    result = subprocess.run([sys.executable, str(ROOT / "tests" / "v4_logits.py"), str(tmp_path / "jobs.json")],
                            env=env, capture_output=True, text=True, cwd=tmp_path)
    assert result.returncode == 0, result.stderr[-3000:]
    assert result.stdout.strip().splitlines()[-1] == "4.57.6"
    return [torch.load(job["out"]) for job in jobs]


def test_v4_and_v5_read_the_same_model(v4_env, tmp_path, monkeypatch):
    monkeypatch.setattr(ctxext.patching.checkpoint, "LINK_THRESHOLD", 1)
    ids = token_ids(8 * 64)
    jobs, expected = [], []
    for arch, method in CASES:
        src = tmp_path / f"src-{arch}"
        if not src.exists():
            save_checkpoint(src, arch)
        out = patch_checkpoint(src, tmp_path / f"{arch}-{method}", method, 8)
        with torch.no_grad():
            expected.append(AutoModelForCausalLM.from_pretrained(out).eval()(ids).logits)
        jobs.append({"checkpoint": str(out), "ids": ids.tolist(), "out": str(tmp_path / f"{arch}-{method}.pt")})
    for (arch, method), got, want in zip(CASES, v4_logits(jobs, tmp_path, v4_env), expected):
        torch.testing.assert_close(got, want, rtol=1e-5, atol=1e-5, msg=f"{arch} {method}")


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
