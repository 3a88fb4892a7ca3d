"""Shared by the reader tests: the patched checkpoints, transformers' reference, and the results file.

The results (one row per architecture x method x reader: window, frequencies, scale, outputs, and the
warnings ctxext gives) go to $CTXEXT_READER_RESULTS (default: results.json next to the reader
environments), which `python tests/readers/matrix.py` turns into README's matrix.
"""

from __future__ import annotations

import json
import os
import warnings
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pytest
import torch
from transformers import AutoModelForCausalLM

from ctxext.patching.checkpoint import patch_checkpoint
from ctxext.rope.readers import ReaderWarning, reader_notes
from engines import ROOT
from models import ARCHITECTURES, FACTOR, METHODS, PROMPT, method_params, prompt_ids, rotary_dim, save_base
from runtime import capture

#: positions whose cos/sin are compared: both sides of the original window, up to the prompt's end
POSITIONS = [0, 1, 2, 7, 100, 255, 256, 257, 399]
RESULTS = Path(os.environ.get("CTXEXT_READER_RESULTS", ROOT / "results.json"))

CASES = [(arch, method) for arch in ARCHITECTURES for method in METHODS
         if not (arch == "phi3" and method == "dynamic-ntk")]  # refused: a longrope-only config cannot say it


@dataclass
class Case:
    arch: str
    method: str
    checkpoint: Path
    config: dict
    logits: np.ndarray  # [PROMPT, vocab], transformers v5 float32
    cos: np.ndarray  # [len(POSITIONS), rotary_dim / 2], the full-attention layers' cos at a PROMPT-token pass
    sin: np.ndarray
    greedy: list[int]  # transformers' 8-token greedy continuation of the prompt
    notes: list[str] = field(default_factory=list)

    def warned(self, reader: str) -> list[str]:
        return [n for n in self.notes if n.startswith(reader + " ")]


def _reference(checkpoint: Path, arch: str) -> tuple:
    model = AutoModelForCausalLM.from_pretrained(checkpoint, dtype=torch.float32).eval()
    ids = torch.tensor([prompt_ids()])
    with torch.no_grad():
        logits = model(ids).logits[0].numpy()
        greedy = model.generate(ids, max_new_tokens=8, do_sample=False, pad_token_id=1)[0, PROMPT:].tolist()
    seen = capture(model, PROMPT, full=True, ids=ids, positions=POSITIONS)
    full = [s for s in seen if s.layer_type in (None, "full_attention")][0]
    half = rotary_dim(arch) // 2
    return logits, full.cos[:, :half].numpy(), full.sin[:, :half].numpy(), greedy


@pytest.fixture(scope="session")
def cases(tmp_path_factory) -> dict[tuple[str, str], Case]:
    root = tmp_path_factory.mktemp("readers")
    out = {}
    for arch in ARCHITECTURES:
        base = save_base(arch, root / f"{arch}-base")
        for method in METHODS:
            if (arch, method) not in CASES:
                continue
            with warnings.catch_warnings():
                warnings.simplefilter("ignore", ReaderWarning)
                checkpoint = patch_checkpoint(base, root / f"{arch}-{method}", method, FACTOR,
                                              **method_params(arch, method))
            config = json.loads((checkpoint / "config.json").read_text())
            logits, cos, sin, greedy = _reference(checkpoint, arch)
            out[arch, method] = Case(arch, method, checkpoint, config, logits, cos, sin, greedy, reader_notes(config))
    return out


@pytest.fixture(scope="session")
def record():
    """Collect result rows; at the end merge them into RESULTS (rows of other readers' runs are kept)."""
    rows: list[dict] = []
    yield rows.append
    if not rows:
        return
    old = json.loads(RESULTS.read_text()) if RESULTS.exists() else {"rows": [], "versions": {}}
    keys = {(r["arch"], r["method"], r["reader"]) for r in rows}
    merged = [r for r in old["rows"] if (r["arch"], r["method"], r["reader"]) not in keys] + rows
    versions = old.get("versions", {}) | {r["reader"]: r["version"] for r in rows}
    RESULTS.parent.mkdir(parents=True, exist_ok=True)
    tmp = RESULTS.with_suffix(".tmp")
    tmp.write_text(json.dumps({"rows": merged, "versions": versions}, indent=1))
    tmp.replace(RESULTS)


def angles_and_scale(cos: np.ndarray, sin: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(cos, sin) of the angle and the magnitude per position and frequency."""
    magnitude = np.sqrt(cos.astype(np.float64) ** 2 + sin.astype(np.float64) ** 2)
    return np.stack([cos / magnitude, sin / magnitude]), magnitude


def rope_agreement(case: Case, cos: np.ndarray, sin: np.ndarray) -> tuple[bool, bool, str]:
    """(frequencies agree, scale agrees, detail) of a reader's cos/sin at POSITIONS against transformers'."""
    theirs, their_scale = angles_and_scale(cos, sin)
    ours, our_scale = angles_and_scale(case.cos, case.sin)
    angle_error = float(np.abs(theirs - ours).max())
    scale_error = float(np.abs(their_scale / our_scale - 1).max())
    detail = f"angle error {angle_error:.2g}, scale {float(their_scale.mean()):.4f} vs {float(our_scale.mean()):.4f}"
    return angle_error < 1e-3, scale_error < 1e-4, detail


def check_case(case: Case, reader: str, measured: dict[str, bool | None], detail: str, version: str, record) -> None:
    """Record the row; then: no warning for this reader -> everything measured agrees; a warning -> something
    measured does not (the warning is about a real difference)."""
    notes = case.warned(reader)
    record({"arch": case.arch, "method": case.method, "reader": reader, "version": version, **measured,
            "detail": detail, "warnings": notes})
    agrees = all(v for v in measured.values() if v is not None)
    if not notes:
        assert agrees, f"{reader} runs {case.arch} {case.method} differently and ctxext does not say so: {measured}, {detail}"
    else:
        assert not agrees, f"ctxext warns about {reader} for {case.arch} {case.method}, but it agrees: {notes}"
