"""`ctxext demo`: the whole story on the embedded tiny model, offline, in minutes on a CPU.

    ctxext demo                      # about 7 minutes on 2 CPU cores, writes ./ctxext-demo/
    ctxext demo --quick --output d   # under 2 minutes: fewer samples and fine-tune steps

The embedded model (ctxext/demo/assets/demo_model, trained by recipes/pretrain_tiny.py) retrieves a
passkey and RULER's needles inside its 256-token window. The demo measures passkey accuracy,
perplexity and RULER (synthetic.RULER_DEMO_TASKS: the single-needle tasks) at 1x, 2x, 4x and 8x
that window for the base model; for pi, ntk and yarn patches and the shipped searched longrope
factors (recipes/search_demo.py), without training; and for pi and yarn patched for 8x after a short
LoRA fine-tune on passkey and RULER documents of up to 4x, the answers' tokens weighted above the
rest (`prompt_loss_weight`). It writes demo.json, the heatmaps and plots, the fine-tuned
checkpoints, ruler/ (RULER's own files) and report.md, and prints two tables. A new model row is
one more (name, model, tokenizer) in `models`.
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
    finetune_steps: int = 250
    batch_size: int = 8
    learning_rate: float = 1e-3
    schedule: str = "cosine"
    lora_r: int = 16
    lora_alpha: float = 32.0
    lora_target: str = "all-linear"
    train_length: int = 4  # fine-tune sequences, in original windows (RULER documents are of every length up to it)
    train_documents: int = 2000
    ruler_fraction: float = 0.75  # of the training documents; the rest are passkey documents
    prompt_loss_weight: float = 0.001  # of the documents' other tokens, the answers weighing 1
    perplexity_documents: int = 4
    ruler_samples: int = 10  # per RULER task and length
    seed: int = 0

    @classmethod
    def quick(cls) -> "DemoSettings":
        return cls(trials=1, depths=(0.0, 0.5, 1.0), finetune_steps=60, train_documents=500,
                   perplexity_documents=2, ruler_samples=1)


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
    from ..evaluation.ruler import evaluate_ruler
    from ..rope.layout import read_layout
    from ..training.finetune import finetune

    settings = settings or (DemoSettings.quick() if quick else DemoSettings())
    source = demo_model_path()
    check_output_dir(output_dir, overwrite, sources=[source])  # issue 10: never the embedded model itself
    say = print if progress else (lambda *a, **k: None)
    started, cpu_started = time.perf_counter(), time.process_time()
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
        train_length = window * settings.train_length
        documents = synthetic.training_dataset(tokenizer, settings.train_documents, train_length, seed=settings.seed,
                                               ruler=settings.ruler_fraction)
        for method in TUNED:
            say(f"fine-tuning {method} x{FACTOR} with LoRA: {settings.finetune_steps} steps of {settings.batch_size} "
                f"sequences of {train_length} tokens")
            began = time.perf_counter()
            result = finetune(
                copy.deepcopy(base), method, FACTOR, documents, tmp / "models" / f"{method}+lora", tokenizer=tokenizer,
                max_steps=settings.finetune_steps, learning_rate=settings.learning_rate, warmup_steps=10,
                schedule=settings.schedule, batch_size=settings.batch_size, seq_len=train_length,
                prompt_loss_weight=settings.prompt_loss_weight, lora_r=settings.lora_r, lora_alpha=settings.lora_alpha,
                lora_target=settings.lora_target, gradient_checkpointing=False, save_every=0, seed=settings.seed,
                progress=progress,
            )
            finetunes[f"{method}+lora"] = {
                "method": method, "steps": settings.finetune_steps, "seq_len": train_length,
                "seconds": round(time.perf_counter() - began, 1),
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
            say(f"RULER ({', '.join(synthetic.RULER_DEMO_TASKS)}) at the same lengths")
            ruler = evaluate_ruler(models, lengths, tasks=synthetic.RULER_DEMO_TASKS, samples=settings.ruler_samples,
                                   seed=settings.seed, output_dir=tmp / "ruler", progress=progress)

        ppl = {(r["model"], r["length"]): r["perplexity"] for r in perplexity["results"]}
        scores = {(r["model"], r["length"]): r["score"] for r in ruler["average"]}
        rows = [
            {"model": r["model"], "length": r["length"], "accuracy": r["accuracy"],
             "perplexity": ppl.get((r["model"], r["length"])), "ruler": scores.get((r["model"], r["length"]))}
            for r in passkey["summary"]
        ]
        report = {
            "original_max_position_embeddings": window,
            "factor": FACTOR,
            "lengths": lengths,
            "rows": rows,
            "ruler": {"tasks": list(synthetic.RULER_DEMO_TASKS), "threshold": ruler["settings"]["threshold"],
                      "effective_length": {r["model"]: r["effective_length"] for r in ruler["effective_length"]},
                      "claimed_window": {r["model"]: r["claimed_window"] for r in ruler["effective_length"]}},
            "finetune": finetunes,
            "longrope": {**params, "search": searched["search"]},
            "settings": asdict(settings),
            "quick": quick,
            "seconds": round(time.perf_counter() - started, 1),
            "cpu_seconds": round(time.process_time() - cpu_started, 1),
        }
        atomic_write_json(tmp / "demo.json", report)
        atomic_write_text(tmp / "report.md", render_report(report, sorted(p.name for p in tmp.glob("*.png"))))
    return report


def _table(report: dict[str, Any], cells: list[dict], title: str, markdown: bool,
           extra: list[tuple[str, dict[str, str]]] = ()) -> str:
    from ..evaluation.common import format_table

    def column(n: int) -> str:
        return f"{n:,} ({n // report['original_max_position_embeddings']}x)"

    if not markdown:
        return title + "\n" + format_table(cells, "cell", str, column=column, extra=extra)
    lengths = report["lengths"]
    names = list(dict.fromkeys(r["model"] for r in cells))
    cell = {(r["model"], r["length"]): r["cell"] for r in cells}
    head = ["model"] + [column(n) for n in lengths] + [name for name, _ in extra]
    lines = ["| " + " | ".join(head) + " |", "|" + " --- |" * len(head)]
    lines += ["| " + " | ".join([name] + [cell.get((name, n), "-") for n in lengths] + [col.get(name, "-") for _, col in extra])
              + " |" for name in names]
    return "\n".join(lines)


def demo_table(report: dict[str, Any], markdown: bool = False) -> str:
    """One row per model: passkey accuracy and perplexity at each length."""

    def fmt(row: dict) -> str:
        ppl = row.get("perplexity")
        return f"{row['accuracy']:.2f}" + (f" ({ppl:.2f})" if ppl is not None else "")

    cells = [{"model": r["model"], "length": r["length"], "cell": fmt(r)} for r in report["rows"]]
    return _table(report, cells, "passkey accuracy (perplexity) by prompt length", markdown)


def ruler_demo_table(report: dict[str, Any], markdown: bool = False) -> str:
    """One row per model: RULER's average at each length, the effective length and the claimed window."""
    from ..evaluation.ruler.scoring import describe

    ruler = report["ruler"]
    cells = [{"model": r["model"], "length": r["length"], "cell": f"{r['ruler']:.1f}"} for r in report["rows"]
             if r.get("ruler") is not None]
    effective = {m: describe(n, report["lengths"]) for m, n in ruler["effective_length"].items()}
    claimed = {m: str(n or "-") for m, n in ruler["claimed_window"].items()}
    title = f"RULER average (%, {', '.join(ruler['tasks'])}) by length"
    return _table(report, cells, title, markdown, extra=[(f"effective (>= {ruler['threshold']:g})", effective),
                                                        ("claimed window", claimed)])


def render_report(report: dict[str, Any], pictures: list[str]) -> str:
    """report.md: what was run, the table, the pictures, and how to read them."""
    window, factor, settings = report["original_max_position_embeddings"], report["factor"], report["settings"]
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

RULER: the average score (string match, percent) of {", ".join(f"`{t}`" for t in report["ruler"]["tasks"])}
({report["settings"]["ruler_samples"]} samples per task and length; a length counts the prompt and
RULER's 128-token answer budget), and the effective length: the longest length at which it and every
shorter length's average is at least {report["ruler"]["threshold"]:g}. Per task: [ruler/report.md](ruler/report.md).

{ruler_demo_table(report, markdown=True)}

- `base`: the model as pre-trained; beyond its window it has never seen the positions.
- `pi`, `ntk`, `yarn`: the same weights with the rotary frequencies rescaled for {factor}x, no training.
- `longrope`: the same weights with per-frequency factors searched for {factor}x by `ctxext search` (shipped
  with the package; `{report["longrope"]["search"]["command"]}` searched them on the training documents
  only), no training. Inside the original window it keeps the original frequencies (short_factor 1); past
  it stock transformers switches to the searched ones, mid-generation when a prompt fills the window
  exactly (the 1x passkey column), which breaks the cached keys' rotations.
- `pi+lora`, `yarn+lora`: the patched models after a short LoRA fine-tune on {window * settings["train_length"]}-token
  sequences of passkey and RULER documents (the answers' tokens weighted 1, the rest
  {settings["prompt_loss_weight"]:g}: `prompt_loss_weight`); beyond {window * settings["train_length"]} tokens
  is extrapolation:
{tuned}

![accuracy vs length](passkey_accuracy.png)

![perplexity vs length](perplexity.png)

![RULER average vs length](ruler/ruler_average.png)

{heatmaps}

Reproduce with `ctxext demo{" --quick" if report["quick"] else ""}` ({report["seconds"]:.0f} s here). Settings:
`{json.dumps(report["settings"])}`.
"""
