"""The README.md model card written next to every checkpoint ctxext produces.

It names the method, factor, original and new window, says how to load the result in stock
transformers, vLLM and llama.cpp, and (after `ctxext train`) records the recipe and eval results.
"""

from __future__ import annotations

from typing import Any, Mapping, Sequence

from .. import __version__
from ..loading import is_hub_id
from ..rope.layout import attention_scales
from ..rope.methods import METHODS
from ..rope.plan import RopePatch
from ..rope.readers import READER_VERSIONS


def _value(value: Any) -> str:
    """A parameter for the card: a number, or a per-frequency list summarised by its length and range."""
    if isinstance(value, (list, tuple)):
        return f"[{len(value)} values, {min(value):g} to {max(value):g}]"
    return f"{value:g}"


def _readers(notes: Sequence[str], patch: RopePatch) -> str:
    """The card's Readers section: what each serving engine does with this config."""
    tested = "; ".join(READER_VERSIONS.values())
    if not notes:
        return (f"## Readers\n\nvLLM and llama.cpp read this config as written: window {patch.window:,}, the same "
                f"frequencies and attention scale as transformers (checked with {tested}).")
    lines = "\n".join(f"- {note}" for note in notes)
    return (f"## Readers\n\nWhere a reader runs this config differently from transformers v5 (checked with "
            f"{tested}):\n\n{lines}")


def _table(rows: Sequence[tuple[str, Any]]) -> str:
    lines = ["| | |", "| --- | --- |"]
    lines += [f"| {key} | {value} |" for key, value in rows]
    return "\n".join(lines)


def render_model_card(
    source: str,
    patch: RopePatch,
    name: str | None = None,
    recipe: Mapping[str, Any] | None = None,
    results: Mapping[str, Any] | None = None,
    notes: Sequence[str] = (),
) -> str:
    """Markdown for README.md. `recipe` and `results` are free-form key -> value sections; `notes` are the
    reader warnings of ctxext.rope.readers for the written config."""
    scaling = patch.scaling
    method = METHODS[scaling.method]
    title = name or f"{source.rstrip('/').split('/')[-1]}-{scaling.method}-x{scaling.factor:g}"
    params = {k: v for k, v in scaling.params.items() if v is not None}
    front = ["---", "library_name: transformers", "tags:", "- ctxext", "- rope-scaling", "- long-context"]
    if is_hub_id(source):  # the same rule that decides whether a MODEL is fetched from the hub
        front.append(f"base_model: {source}")
    front.append("---")
    rows = [
        ("method", f"`{scaling.method}`: {method.summary}"),
        ("factor", f"{scaling.factor:g}"),
        ("original window", f"{patch.original_max_position_embeddings:,} tokens"),
        ("new window", f"{patch.window:,} tokens"),
        ("rope_type written", f"`{patch.rope_parameters.get('rope_type', 'per layer type')}`"),
        ("max_position_embeddings", f"{patch.max_position_embeddings:,}"),
    ]
    main = patch.rope[patch.layout.targets[0]]
    cos_sin, softmax = attention_scales(patch.layout.model_type, main, patch.max_position_embeddings)
    scale = f"cos/sin of the {patch.layout.rotary_dim} rotary dims x{cos_sin:.4f}"
    if softmax != 1.0:
        scale += f"; softmax over the whole head x{softmax:.4f} (mscale_all_dim, set when the model is built)"
    rows.append(("attention scale", scale))
    if params:
        rows.append(("parameters", ", ".join(f"`{k}={_value(v)}`" for k, v in params.items())))
    if patch.layout.nested:
        touched = ", ".join(t for t in patch.layout.targets if t)
        rows.append(("layer types patched", f"{touched} (sliding-window layers keep their rope)"))
    parts = [
        "\n".join(front),
        f"# {title}",
        f"`{source}` with its rotary position embedding rescaled by [ctxext](https://pypi.org/project/ctxext/) "
        f"{__version__} to reach {patch.window:,} tokens. Only the RoPE frequencies and attention scale changed; "
        "the weights are the original ones unless a fine-tune is recorded below.",
        _table(rows),
        "## Load\n\n```python\nfrom transformers import AutoModelForCausalLM, AutoTokenizer\n\n"
        'model = AutoModelForCausalLM.from_pretrained("PATH")\ntokenizer = AutoTokenizer.from_pretrained("PATH")\n```\n\n'
        "The config carries both spellings (`rope_parameters` for transformers v5; `rope_scaling` + "
        "`rope_theta` for v4), so either version loads the same frequencies without ctxext.",
        _readers(notes, patch),
    ]
    if recipe:
        parts.append("## Fine-tuning recipe\n\n" + _table(list(recipe.items())))
    if results:
        parts.append("## Evaluation\n\n" + _table(list(results.items())))
    return "\n\n".join(parts) + "\n"
