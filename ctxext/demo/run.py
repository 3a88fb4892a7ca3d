"""`ctxext demo`: the whole story on the embedded tiny model, offline, in minutes on a CPU.

    ctxext demo                      # about 9 minutes on 2 CPU cores, writes ./ctxext-demo/
    ctxext demo --quick --output d   # about 2 minutes: fewer samples and fine-tune steps

The embedded model (ctxext/demo/assets/demo_model, trained by recipes/pretrain_tiny.py) retrieves a
passkey inside its 256-token window. The demo measures passkey accuracy and perplexity at 1x, 2x,
4x and 8x that window for the base model; for pi, ntk and yarn patches and the shipped searched
longrope factors (recipes/search_demo.py), without training; and for pi and yarn after a short LoRA
fine-tune at 8x. It writes demo.json, the heatmaps and plots, the
fine-tuned checkpoints and report.md, and prints one table.
"""

from __future__ import annotations

import copy
import json
import time
import warnings
from dataclasses import asdict, dataclass
from importlib import resources
from pathlib import Path
from typing import Any

from ..errors import CtxextError
from ..io import atomic_write_json, atomic_write_text, check_output_dir, staged_directory

FACTOR = 8
PATCHED = ("pi", "ntk", "yarn")
TUNED = ("pi", "yarn")


def demo_model_path() -> Path:
    """Where the embedded model lives inside the installed package."""
    path = Path(str(resources.files("ctxext.demo") / "assets" / "demo_model"))
    if not (path / "config.json").is_file():
        raise CtxextError(f"The embedded demo model is missing from {path}; reinstall ctxext.")
    return path


@dataclass(frozen=True)
class DemoSettings:
    """How much work the demo does; `quick` trades sample counts and fine-tune steps for time."""

    trials: int = 4  # keys per (length, depth)
    depths: tuple[float, ...] = (0.0, 0.25, 0.5, 0.75, 1.0)
    finetune_steps: int = 150
    batch_size: int = 4
    learning_rate: float = 1e-3
    lora_r: int = 16
    lora_alpha: float = 32.0
    lora_target: str = "all-linear"
    train_documents: int = 800
    perplexity_documents: int = 4
    seed: int = 0

    @classmethod
    def quick(cls) -> "DemoSettings":
        return cls(trials=1, depths=(0.0, 0.5, 1.0), finetune_steps=25, train_documents=120,
                   perplexity_documents=2)


def run_demo(
    output_dir: str | Path = "ctxext-demo",
    *,
    quick: bool = False,
    overwrite: bool = False,
    progress: bool = True,
    settings: DemoSettings | None = None,
) -> dict[str, Any]:
    """Run the demo and write its files into `output_dir`; returns the content of demo.json."""
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from . import synthetic
    from .searched import searched_factors
    from ..evaluation.common import LengthBeyondWindowWarning
    from ..evaluation.passkey import evaluate_passkey
    from ..patching.model import patch_model
    from ..evaluation.perplexity import evaluate_perplexity
    from ..rope.layout import read_layout
    from ..training.finetune import finetune

    settings = settings or (DemoSettings.quick() if quick else DemoSettings())
    source = demo_model_path()
    check_output_dir(output_dir, overwrite, sources=[source])  # issue 10: never the embedded model itself
    say = print if progress else (lambda *a, **k: None)
    started = time.perf_counter()
    tokenizer = AutoTokenizer.from_pretrained(source)
    base = AutoModelForCausalLM.from_pretrained(source, dtype=torch.float32).eval()
    window = read_layout(base.config.to_dict()).window
    lengths = [window * k for k in (1, 2, 4, FACTOR)]

    with staged_directory(output_dir, overwrite, sources=[source], kind="demo") as tmp:
        models: list[tuple[str, Any, Any]] = [("base", base, tokenizer)]
        for method in PATCHED:
            models.append((method, patch_model(copy.deepcopy(base), method, FACTOR), tokenizer))
        searched = searched_factors()  # shipped: see ctxext.demo.searched
        params = {k: searched[k] for k in ("long_factor", "short_factor", "attention_factor")}
        models.append(("longrope", patch_model(copy.deepcopy(base), "longrope", FACTOR, **params), tokenizer))
        finetunes = {}
        stream = synthetic.training_stream(tokenizer, settings.train_documents, window * FACTOR, seed=settings.seed)
        for method in TUNED:
            say(f"fine-tuning {method} x{FACTOR} with LoRA: {settings.finetune_steps} steps at {window * FACTOR} tokens")
            began = time.perf_counter()
            result = finetune(
                copy.deepcopy(base), method, FACTOR, stream, tmp / "models" / f"{method}+lora", tokenizer=tokenizer,
                max_steps=settings.finetune_steps, learning_rate=settings.learning_rate, warmup_steps=10,
                batch_size=settings.batch_size, lora_r=settings.lora_r, lora_alpha=settings.lora_alpha,
                lora_target=settings.lora_target, save_every=0, seed=settings.seed, progress=progress,
            )
            finetunes[f"{method}+lora"] = {
                "method": method, "steps": settings.finetune_steps, "seconds": round(time.perf_counter() - began, 1),
                "first_loss": result.first_loss, "final_loss": result.final_loss,
            }
            models.append((f"{method}+lora", result.model, tokenizer))

        with warnings.catch_warnings():  # beyond the base model's window is the point of the demo
            warnings.simplefilter("ignore", LengthBeyondWindowWarning)
            say(f"passkey retrieval at {', '.join(map(str, lengths))} tokens for {len(models)} models")
            passkey = evaluate_passkey(models, lengths, depths=settings.depths, trials=settings.trials,
                                       seed=settings.seed, output_dir=tmp, progress=progress)
            say("perplexity vs length")
            heldout = synthetic.heldout_texts(tokenizer, settings.perplexity_documents, lengths[-1],
                                              seed=settings.seed + 1)
            perplexity = evaluate_perplexity(models, heldout, lengths, stride=window, output_dir=tmp,
                                             progress=progress)

        ppl = {(r["model"], r["length"]): r["perplexity"] for r in perplexity["results"]}
        rows = [
            {"model": r["model"], "length": r["length"], "accuracy": r["accuracy"],
             "perplexity": ppl.get((r["model"], r["length"]))}
            for r in passkey["summary"]
        ]
        report = {
            "original_max_position_embeddings": window,
            "factor": FACTOR,
            "lengths": lengths,
            "rows": rows,
            "finetune": finetunes,
            "longrope": {**params, "search": searched["search"]},
            "settings": asdict(settings),
            "quick": quick,
            "seconds": round(time.perf_counter() - started, 1),
        }
        atomic_write_json(tmp / "demo.json", report)
        atomic_write_text(tmp / "report.md", render_report(report, sorted(p.name for p in tmp.glob("*.png"))))
    return report


def demo_table(report: dict[str, Any], markdown: bool = False) -> str:
    """One row per model: passkey accuracy and perplexity at each length."""
    from ..evaluation.common import format_table

    def fmt(row: dict) -> str:
        ppl = row.get("perplexity")
        return f"{row['accuracy']:.2f}" + (f" ({ppl:.2f})" if ppl is not None else "")

    def column(n: int) -> str:
        return f"{n:,} ({n // report['original_max_position_embeddings']}x)"

    cells = [{"model": r["model"], "length": r["length"], "cell": fmt(r)} for r in report["rows"]]
    if not markdown:
        return "passkey accuracy (perplexity) by prompt length\n" + format_table(cells, "cell", str, column=column)
    lengths = report["lengths"]
    names = list(dict.fromkeys(r["model"] for r in cells))
    cell = {(r["model"], r["length"]): r["cell"] for r in cells}
    head = ["model"] + [column(n) for n in lengths]
    lines = ["| " + " | ".join(head) + " |", "|" + " --- |" * len(head)]
    lines += ["| " + " | ".join([name] + [cell.get((name, n), "-") for n in lengths]) + " |" for name in names]
    return "\n".join(lines)


def render_report(report: dict[str, Any], pictures: list[str]) -> str:
    """report.md: what was run, the table, the pictures, and how to read them."""
    window, factor = report["original_max_position_embeddings"], report["factor"]
    tuned = "\n".join(
        f"  - `{name}`: {info['steps']} LoRA steps in {info['seconds']:.0f} s, loss {info['first_loss']:.3f} -> "
        f"{info['final_loss']:.3f} (checkpoint in `models/{name}/`)"
        for name, info in report["finetune"].items()
    )
    heatmaps = "\n\n".join(f"![{p}]({p})" for p in pictures if p.startswith("passkey_heatmap"))
    return f"""# ctxext demo

The embedded tiny model was pre-trained with a {window}-token window. Each cell is passkey retrieval
accuracy (greedy exact match of a 5-digit key hidden at depths {", ".join(f"{d:g}" for d in report["settings"]["depths"])}
of the standard prompt, {report["settings"]["trials"]} keys each) and, in brackets, perplexity on held-out
synthetic text, at 1x to {factor}x the window.

{demo_table(report, markdown=True)}

- `base`: the model as pre-trained; beyond its window it has never seen the positions.
- `pi`, `ntk`, `yarn`: the same weights with the rotary frequencies rescaled for {factor}x, no training.
- `longrope`: the same weights with per-frequency factors searched for {factor}x by `ctxext search` (shipped
  with the package; `{report["longrope"]["search"]["command"]}` searched them on the training documents
  only), no training. Inside the original window it keeps the original frequencies (short_factor 1); past
  it stock transformers switches to the searched ones, mid-generation when a prompt fills the window
  exactly (the 1x passkey column), which breaks the cached keys' rotations.
- `pi+lora`, `yarn+lora`: the patched models after a short LoRA fine-tune at {window * factor} tokens:
{tuned}

![accuracy vs length](passkey_accuracy.png)

![perplexity vs length](perplexity.png)

{heatmaps}

Reproduce with `ctxext demo{" --quick" if report["quick"] else ""}` ({report["seconds"]:.0f} s here). Settings:
`{json.dumps(report["settings"])}`.
"""
