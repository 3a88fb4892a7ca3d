"""Search the embedded demo model's longrope factors for 8x its window, and ship them with the package.

    python recipes/search_demo.py                      # ~5 minutes on 2 cores
    python recipes/search_demo.py --generations 20     # a longer search

`ctxext demo` shows a `longrope` row (searched factors, no training) next to pi, ntk and yarn. A search
inside the demo would not fit its time budget, so the factors are searched once, here, and stored in
ctxext/demo/assets/demo_longrope.json with the search that found them and a fingerprint of the model's
weights (the demo refuses factors searched for other weights: rerun this after retraining the model
with recipes/pretrain_tiny.py).

The search reads only the demo's training documents (`synthetic.search_texts`: the first documents of
`synthetic.training_stream`, seed 0, which the demo also fine-tunes on); the demo measures on held-out
texts (`synthetic.heldout_texts`, seed 1) and passkey prompts the search never sees. The search's own
output (a config-only longrope checkpoint of the demo model, search_log.jsonl, factors.png) goes to
--workdir.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import torch
from transformers import AutoTokenizer

from ctxext.demo.run import FACTOR, LONGROPE_ASSET, demo_model_path, weights_fingerprint
from ctxext.demo.synthetic import search_texts
from ctxext.io import atomic_write_json
from ctxext.search import search_factors


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0], formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--samples", type=int, default=4, help="training documents per candidate (default 4)")
    parser.add_argument("--population", type=int, default=16)
    parser.add_argument("--generations", type=int, default=12)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--objective", choices=("perplexity", "needle"), default="perplexity")
    parser.add_argument("--workdir", default="ctxext-demo-longrope", help="where the search writes its checkpoint and log")
    parser.add_argument("--output", default=None, help=f"factors file (default: the package's {LONGROPE_ASSET})")
    parser.add_argument("--threads", type=int, default=1, help="torch threads (default 1: steadier on a shared machine)")
    args = parser.parse_args()

    torch.set_num_threads(args.threads)
    source = demo_model_path()
    tokenizer = AutoTokenizer.from_pretrained(source)
    window = 256
    texts = search_texts(tokenizer, args.samples, window * FACTOR, seed=0)
    result = search_factors(
        str(source), FACTOR, texts, args.workdir, objective=args.objective, samples=args.samples,
        population=args.population, generations=args.generations, seed=args.seed, overwrite=True,
    )
    command = "python recipes/search_demo.py " + " ".join(sys.argv[1:])
    asset = {
        "factor": result.factor,
        "original_max_position_embeddings": result.original_max_position_embeddings,
        "long_factor": result.long_factor,
        "short_factor": result.short_factor,
        "attention_factor": result.attention_factor,
        "weights": weights_fingerprint(source),
        "search": {
            "command": command.strip(),
            "objective": result.objective,
            "length": result.length,
            "perplexity": result.perplexity,
            "seeds": {s["method"]: s["perplexity"] for s in result.seeds},
            "guard": result.guard,
            "evaluations": result.evaluations,
            "generations": result.generations,
            "seconds": result.seconds,
            "settings": result.settings,
        },
    }
    out = Path(args.output) if args.output else source.parent / LONGROPE_ASSET
    atomic_write_json(out, asset)
    seeds = ", ".join(f"{m} {p:.4f}" for m, p in asset["search"]["seeds"].items())
    print(f"wrote {out}: perplexity {result.perplexity:.4f} at {result.length} tokens on the training documents "
          f"(seeds: {seeds}); {result.evaluations} candidates in {result.seconds:.0f} s")
    print(json.dumps({k: asset[k] for k in ("long_factor", "attention_factor")}))
    return 0


if __name__ == "__main__":
    sys.exit(main())
