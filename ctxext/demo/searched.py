"""The demo model's searched longrope factors: the search that makes them, and the shipped copy.

    result = search_demo_factors(output_dir="ctxext-demo-longrope")   # what recipes/search_demo.py runs
    shipped = searched_factors()                                      # what `ctxext demo` patches with

A search inside `ctxext demo` would not fit its time budget, so the factors are searched once, by
`python recipes/search_demo.py`, and shipped in assets/demo_longrope.json with the search that found
them and a fingerprint of the weights they belong to. The search reads only the demo's training
documents (the first ones of `synthetic.training_stream`, seed 0); the demo measures on held-out texts
(`synthetic.heldout_texts`, seed 1) and passkey prompts it never sees.
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path
from typing import Any

from ..errors import CtxextError

FACTOR = 8
WINDOW = 256
#: the file next to the embedded model that holds its searched factors
LONGROPE_ASSET = "demo_longrope.json"
#: the settings of the shipped search (recipes/search_demo.py's defaults)
SEARCH = {"objective": "needle", "samples": 8, "population": 16, "generations": 12, "seed": 0}


def weights_fingerprint(model_dir: str | Path) -> str:
    """A short hash of a checkpoint's weights: searched factors belong to the weights they were searched on."""
    return hashlib.sha256((Path(model_dir) / "model.safetensors").read_bytes()).hexdigest()[:16]


def search_demo_factors(output_dir: str | Path | None = None, *, progress: bool = True, **settings: Any) -> Any:
    """Search the embedded model's factors for 8x on its training documents; returns the SearchResult.

    objective "needle" (the default): the loss on the answers of the training documents' passkeys
    (they are passkey documents); "perplexity": on all their tokens.
    """
    from transformers import AutoTokenizer

    from ..search import search_factors
    from .run import demo_model_path
    from .synthetic import search_needles, search_texts

    s = {**SEARCH, **settings}
    source = demo_model_path()
    tokenizer = AutoTokenizer.from_pretrained(source)
    length = WINDOW * FACTOR
    if s["objective"] == "needle":
        data = {"needle_documents": search_needles(tokenizer, s["samples"], length, seed=0)}
    else:
        data = {"dataset": search_texts(tokenizer, s["samples"], length, seed=0)}
    return search_factors(str(source), FACTOR, output_dir=output_dir, objective=s["objective"], samples=s["samples"],
                          population=s["population"], generations=s["generations"], seed=s["seed"],
                          overwrite=output_dir is not None, progress=progress, **data)


def asset(result: Any, command: str) -> dict[str, Any]:
    """What assets/demo_longrope.json holds for a search result."""
    from .run import demo_model_path

    return {
        "factor": result.factor,
        "original_max_position_embeddings": result.original_max_position_embeddings,
        "long_factor": result.long_factor,
        "short_factor": result.short_factor,
        "attention_factor": result.attention_factor,
        "weights": weights_fingerprint(demo_model_path()),
        "search": {
            "command": command, "objective": result.objective, "length": result.length,
            "perplexity": result.perplexity, "seeds": {s["method"]: s["perplexity"] for s in result.seeds},
            "guard": result.guard, "evaluations": result.evaluations, "generations": result.generations,
            "seconds": result.seconds, "settings": result.settings,
        },
    }


def searched_factors() -> dict[str, Any]:
    """The shipped longrope factors of the embedded model (x8) and the search that found them.

    Refused if they were searched for other weights (rerun recipes/search_demo.py after retraining).
    """
    from .run import demo_model_path

    model = demo_model_path()
    path = model.parent / LONGROPE_ASSET
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        raise CtxextError(f"The demo's searched factors are missing from {path}; run python recipes/search_demo.py.") from None
    if data.get("weights") != weights_fingerprint(model):
        raise CtxextError(f"{path} holds factors searched for other weights than the embedded model's; "
                          "run python recipes/search_demo.py to search them again.")
    return data
