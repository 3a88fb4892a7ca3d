"""Search the embedded demo model's longrope factors for 8x its window, and ship them with the package.

    python recipes/search_demo.py                      # ~4 minutes on 2 shared cores
    python recipes/search_demo.py --generations 20     # a longer search

`ctxext demo` shows a `longrope` row (searched factors, no training) next to pi, ntk and yarn. A search
inside the demo would not fit its time budget, so the factors are searched once, here, and stored in
ctxext/demo/assets/demo_longrope.json with the search that found them and a fingerprint of the model's
weights (the demo refuses factors searched for other weights: rerun this after retraining the model
with recipes/pretrain_tiny.py).

The search (ctxext.demo.searched.search_demo_factors) reads only training documents, the first
documents of `synthetic.training_stream` (seed 0) at the 8x length, which are passkey documents: the default
objective is LongRoPE2's needle-driven perplexity, the loss on their answers. The demo measures on
held-out texts (`synthetic.heldout_texts`, seed 1) and passkey prompts the search never sees. The
search's own output (a config-only longrope checkpoint of the demo model, search_log.jsonl,
factors.png) goes to --workdir.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import torch

from ctxext.demo.run import demo_model_path
from ctxext.demo.searched import LONGROPE_ASSET, SEARCH, asset, search_demo_factors
from ctxext.io import atomic_write_json


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--objective", choices=("needle", "perplexity"), default=SEARCH["objective"],
                        help="needle (default): the loss on the answers of the training documents' passkeys; "
                             "perplexity: on all their tokens")
    parser.add_argument("--samples", type=int, default=SEARCH["samples"], help="training documents per candidate")
    parser.add_argument("--population", type=int, default=SEARCH["population"])
    parser.add_argument("--generations", type=int, default=SEARCH["generations"])
    parser.add_argument("--seed", type=int, default=SEARCH["seed"])
    parser.add_argument("--workdir", default="ctxext-demo-longrope", help="where the search writes its checkpoint and log")
    parser.add_argument("--output", default=None, help=f"factors file (default: the package's {LONGROPE_ASSET})")
    parser.add_argument("--threads", type=int, default=1, help="torch threads (default 1: steadier on a shared machine)")
    args = parser.parse_args()

    torch.set_num_threads(args.threads)
    settings = {k: getattr(args, k) for k in SEARCH}
    result = search_demo_factors(args.workdir, **settings)
    changed = [f"--{k} {v}" for k, v in settings.items() if v != SEARCH[k]]
    data = asset(result, " ".join(["python recipes/search_demo.py", *changed]))
    out = Path(args.output) if args.output else demo_model_path().parent / LONGROPE_ASSET
    atomic_write_json(out, data)
    seeds = ", ".join(f"{m} {p:.4f}" for m, p in data["search"]["seeds"].items())
    print(f"wrote {out}: {result.objective} perplexity {result.perplexity:.4f} at {result.length} tokens on the "
          f"training documents (seeds: {seeds}); {result.evaluations} candidates in {result.seconds:.0f} s")
    print(json.dumps({k: data[k] for k in ("long_factor", "attention_factor")}))
    return 0


if __name__ == "__main__":
    sys.exit(main())
