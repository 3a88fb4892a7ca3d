"""Factor search on the embedded demo model: what it costs, and the searched factors against yarn at 8x.

    python benchmarks/search.py                  # ~15 minutes on 2 cores: search, then evaluate
    python benchmarks/search.py --factors ctxext/demo/assets/demo_longrope.json   # evaluate given factors only

1. Search (ctxext.demo.searched.search_demo_factors with recipes/search_demo.py's settings, which made
   the factors the demo ships; --objective perplexity for LongRoPE's objective instead): wall and CPU
   time. Named baselines for the cost per candidate, in the same process: scoring one candidate's
   documents with nothing else (the floor any search pays), and the naive loop that writes and reloads
   a checkpoint for every candidate (patch_checkpoint + from_pretrained + the same scoring), on 3
   candidates.
2. Evaluation without training, the demo's protocol, for base, yarn and the searched factors (patched
   with patch_model(..., "longrope"), stock transformers' code path): perplexity on held-out texts the
   search never saw (synthetic.heldout_texts, seed 1, 4 documents, stride 256) at 1x and 8x, and
   passkey retrieval at 1x to 8x (5 depths x 4 keys, seed 0), plus the same for ntk and pi.

Writes benchmarks/results/search/ (report.json, factors.png, search.json) and prints the README table.
"""

from __future__ import annotations

import argparse
import copy
import json
import math
import resource
import shutil
import sys
import tempfile
import time
import warnings
from pathlib import Path

import torch
from transformers import AutoModelForCausalLM, AutoTokenizer

from ctxext.demo import synthetic
from ctxext.demo.run import FACTOR, demo_model_path
from ctxext.evaluation.common import LengthBeyondWindowWarning
from ctxext.evaluation.passkey import evaluate_passkey
from ctxext.evaluation.perplexity import evaluate_perplexity
from ctxext.patching.checkpoint import patch_checkpoint
from ctxext.patching.model import patch_model
from ctxext.demo.searched import SEARCH, search_demo_factors
from ctxext.search.evaluator import FrequencyEvaluator
from ctxext.search.objectives import given_needles, long_documents, perplexity_documents
from ctxext.search.space import Candidate

WINDOW = 256
RESULTS = Path(__file__).resolve().parent / "results" / "search"


def cpu_seconds() -> float:
    usage = resource.getrusage(resource.RUSAGE_SELF)
    return usage.ru_utime + usage.ru_stime


def search_documents(tokenizer, objective: str, samples: int) -> list:
    """The scored sequences the demo's search reads (see ctxext.demo.searched)."""
    length = WINDOW * FACTOR
    if objective == "needle":
        return given_needles(synthetic.search_needles(tokenizer, samples, length, seed=0))
    return perplexity_documents(long_documents(tokenizer, synthetic.search_texts(tokenizer, samples, length), length, samples))


def stock_loss(model, docs) -> float:
    """Mean -log p of the scored tokens, from a model's full logits (no ctxext code)."""
    total = count = 0.0
    with torch.inference_mode():
        for d in docs:
            ids = torch.tensor([d.input_ids])
            logits = model(ids).logits[0].float()  # [T, V]
            scored = torch.tensor(d.scored)
            total += float(torch.nn.functional.cross_entropy(logits[scored - 1], ids[0, scored], reduction="sum"))
            count += len(d.scored)
    return total / count


def per_candidate_baselines(source: Path, docs: list, result) -> dict:
    """Seconds per candidate: bare scoring of its documents, and the reload-per-candidate loop."""
    model = AutoModelForCausalLM.from_pretrained(source).eval()
    evaluator = FrequencyEvaluator(model)
    candidates = [Candidate(tuple(r["long_factor"]), r["attention_factor"]) for r in result.log[:3]]
    began, cpu = time.perf_counter(), cpu_seconds()
    bare = [evaluator.loss(c, docs) for c in candidates]
    bare_s, bare_cpu = ((time.perf_counter() - began) / len(candidates), (cpu_seconds() - cpu) / len(candidates))
    began, cpu = time.perf_counter(), cpu_seconds()
    with tempfile.TemporaryDirectory() as tmp:
        reloaded = []
        for k, c in enumerate(candidates):
            out = patch_checkpoint(source, Path(tmp) / str(k), "longrope", FACTOR, long_factor=c.long_factor,
                                   short_factor=[1.0] * len(c.long_factor), attention_factor=c.attention_factor)
            reloaded.append(stock_loss(AutoModelForCausalLM.from_pretrained(out).eval(), docs))
    reload_s, reload_cpu = ((time.perf_counter() - began) / len(candidates), (cpu_seconds() - cpu) / len(candidates))
    agree = max(abs(a - b) for a, b in zip(bare, reloaded))
    return {"bare_scoring_s": bare_s, "bare_scoring_cpu_s": bare_cpu, "reload_per_candidate_s": reload_s,
            "reload_per_candidate_cpu_s": reload_cpu, "max_loss_difference": agree}


def evaluate(models, tokenizer, quick: bool) -> tuple[dict, dict]:
    lengths = [WINDOW * k for k in (1, 2, 4, FACTOR)]
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", LengthBeyondWindowWarning)
        heldout = synthetic.heldout_texts(tokenizer, 2 if quick else 4, lengths[-1], seed=1)
        ppl = evaluate_perplexity(models, heldout, [WINDOW, lengths[-1]], stride=WINDOW, progress=False)
        depths = (0.0, 0.5, 1.0) if quick else (0.0, 0.25, 0.5, 0.75, 1.0)
        passkey = evaluate_passkey(models, lengths, depths=depths, trials=1 if quick else 4, seed=0, progress=False)
    return ({(r["model"], r["length"]): r["perplexity"] for r in ppl["results"]},
            {(r["model"], r["length"]): r["accuracy"] for r in passkey["summary"]})


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--factors", help="a factors file (demo_longrope.json or search.json): evaluate it, no search")
    parser.add_argument("--objective", choices=("needle", "perplexity"), default=SEARCH["objective"])
    parser.add_argument("--samples", type=int, default=SEARCH["samples"])
    parser.add_argument("--population", type=int, default=SEARCH["population"])
    parser.add_argument("--generations", type=int, default=SEARCH["generations"])
    parser.add_argument("--seed", type=int, default=SEARCH["seed"])
    parser.add_argument("--quick", action="store_true", help="fewer evaluation samples (a smoke test)")
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--output", default=str(RESULTS))
    args = parser.parse_args()

    torch.set_num_threads(args.threads)
    source = demo_model_path()
    tokenizer = AutoTokenizer.from_pretrained(source)
    output = Path(args.output)
    output.mkdir(parents=True, exist_ok=True)
    report: dict = {"threads": args.threads}

    if args.factors:
        found = json.loads(Path(args.factors).read_text())
        report["factors_from"] = args.factors
    else:
        settings = {k: getattr(args, k) for k in SEARCH}
        with tempfile.TemporaryDirectory() as tmp:
            wall, cpu = time.perf_counter(), cpu_seconds()
            result = search_demo_factors(Path(tmp) / "out", progress=False, **settings)
            wall, cpu = time.perf_counter() - wall, cpu_seconds() - cpu
            shutil.copy2(Path(tmp) / "out" / "factors.png", output / "factors.png")
            shutil.copy2(Path(tmp) / "out" / "search.json", output / "search.json")
        found = {"long_factor": result.long_factor, "short_factor": result.short_factor,
                 "attention_factor": result.attention_factor, "objective": result.objective}
        report["search"] = {
            "objective": args.objective, "samples": args.samples, "population": args.population,
            "generations": args.generations, "seed": args.seed, "evaluations": result.evaluations,
            "wall_s": wall, "cpu_s": cpu, "per_candidate_s": wall / result.evaluations,
            "per_candidate_cpu_s": cpu / result.evaluations,
            "perplexity": result.perplexity, "seeds": {s["method"]: s["perplexity"] for s in result.seeds},
            "guard": result.guard,
            **per_candidate_baselines(source, search_documents(tokenizer, args.objective, args.samples), result),
        }
        shipped = source.parent / "demo_longrope.json"
        if shipped.exists():
            asset = json.loads(shipped.read_text())
            report["search"]["same_as_shipped"] = (asset["long_factor"], asset["attention_factor"]) == \
                (result.long_factor, result.attention_factor)
    report["factors"] = found

    base = AutoModelForCausalLM.from_pretrained(source, dtype=torch.float32).eval()
    models = [("base", base, tokenizer)]
    for method in ("pi", "ntk", "yarn"):
        models.append((method, patch_model(copy.deepcopy(base), method, FACTOR), tokenizer))
    searched = patch_model(copy.deepcopy(base), "longrope", FACTOR, long_factor=found["long_factor"],
                           short_factor=found.get("short_factor") or [1.0] * len(found["long_factor"]),
                           attention_factor=found["attention_factor"], original_max_position_embeddings=WINDOW)
    objective = found.get("search", {}).get("objective") or found.get("objective") or args.objective
    models.append((f"longrope ({objective} search)", searched, tokenizer))
    wall = time.perf_counter()
    ppl, passkey = evaluate(models, tokenizer, args.quick)
    report["evaluation_s"] = time.perf_counter() - wall
    lengths = [WINDOW * k for k in (1, 2, 4, FACTOR)]
    report["perplexity"] = {m: {n: ppl[(m, n)] for n in (WINDOW, lengths[-1])} for m, *_ in models}
    report["passkey"] = {m: {n: passkey[(m, n)] for n in lengths} for m, *_ in models}
    (output / "report.json").write_text(json.dumps(report, indent=2) + "\n")

    print("| model | perplexity 256 (1x) | perplexity 2,048 (8x) | passkey 256 | 512 | 1,024 | 2,048 (8x) |")
    print("| --- | --- | --- | --- | --- | --- | --- |")
    for m, *_ in models:
        p, k = report["perplexity"][m], report["passkey"][m]
        print(f"| {m} | {p[WINDOW]:.3f} | {p[lengths[-1]]:.3f} | " + " | ".join(f"{k[n]:.2f}" for n in lengths) + " |")
    if "search" in report:
        s = report["search"]
        print(f"\nsearch: {s['evaluations']} candidates in {s['wall_s']:.0f} s wall, {s['cpu_s']:.0f} s CPU "
              f"({args.threads} thread); CPU seconds per candidate: search {s['per_candidate_cpu_s']:.2f}, bare scoring "
              f"{s['bare_scoring_cpu_s']:.2f} ({s['per_candidate_cpu_s'] / s['bare_scoring_cpu_s']:.2f}x), reloading a "
              f"checkpoint per candidate {s['reload_per_candidate_cpu_s']:.2f} "
              f"({s['reload_per_candidate_cpu_s'] / s['per_candidate_cpu_s']:.2f}x the search's); wall: "
              f"{s['per_candidate_s']:.2f} / {s['bare_scoring_s']:.2f} / {s['reload_per_candidate_s']:.2f} s; loss "
              f"difference between in-memory and reloaded scoring {s['max_loss_difference']:.1e}; same factors as "
              f"shipped: {s.get('same_as_shipped')}")
    print(f"evaluation: {report['evaluation_s']:.0f} s; wrote {output}/report.json")
    return 0


if __name__ == "__main__":
    sys.exit(main())
