"""What a checkpoint's rotary embedding is, and what a scaling method would do to each dimension.

    describe(config_dict)                       # torch-free: type, rotary dims, rope, windows
    dimension_table(config_dict, "yarn", 8)     # per-dim wavelength before/after (loads the rope math)

A dimension is *kept* when its frequency is unchanged, *interpolated* when divided by the factor,
and *blended* in between; its wavelength against the original window says why (YaRN keeps dims
that rotate many times inside the window and interpolates those that rotate less than once).
"""

from __future__ import annotations

import math
import os
from pathlib import Path
from typing import Any, Mapping

from ..io import save_figure
from ..rope.methods import Scaling, resolve
from ..rope.layout import RopeLayout, attention_scales, read_layout
from ..rope.readers import reader_notes

#: file kinds `ctxext info --plot` writes (matplotlib's, less those that need LaTeX or are raw buffers)
PLOT_FORMATS = ("png", "pdf", "svg", "jpg", "jpeg", "webp", "eps", "tif", "tiff")


def describe(config: Mapping[str, Any]) -> dict[str, Any]:
    """A JSON-ready summary of a config's RoPE: what `ctxext info` prints."""
    layout = read_layout(config)
    rope = {("all" if k is None else k): (dict(v) if v is not None else None) for k, v in layout.rope.items()}
    first = layout.targets[0]
    # per rope key: the head width and rotary dims of the layers that use it, and whether a patch scales it
    layers = {("all" if k is None else k): {"head_dim": layout.head_dim_of(k), "rotary_dim": layout.rotary_dim_of(k),
                                            "scaled": k in layout.targets}
              for k, v in layout.rope.items() if v is not None}
    return {
        "model_type": layout.model_type,
        "head_dim": layout.head_dim_of(first),  # of the first layer type a patch scales
        "partial_rotary_factor": float(layout.rope[first].get("partial_rotary_factor") or 1.0),
        "rotary_dim": layout.rotary_dim_of(first),
        "rope": rope,
        "layers": layers,
        "scaled_layer_types": ["all" if t is None else t for t in layout.targets],
        "scaling": layout.scaling_type if not layout.metadata else layout.metadata["method"],
        "original_max_position_embeddings": layout.original_max_position_embeddings,
        "window": layout.window,
        "max_position_embeddings": layout.max_position_embeddings,
        "ctxext": dict(layout.metadata) if layout.metadata else None,
        "attention_scale": attention_scale(layout),
        # one sentence per reader that runs this config differently from transformers v5
        "readers": reader_notes(config),
    }


def attention_scale(layout: RopeLayout) -> dict[str, Any]:
    """Where the rope config's attention scale goes, as stock transformers runs it: cos/sin of the rotary dims
    (`cos_sin`, so q.k over those dims by its square) and the softmax over the whole head (`softmax`, DeepSeek and
    the other families that fold mscale_all_dim into it), with one sentence saying so."""
    cos_sin, softmax = attention_scales(layout.model_type, layout.main, layout.max_position_embeddings)
    where = f"cos/sin of the {layout.rotary_dim} rotary dims x{cos_sin:.4f}"
    if softmax != 1.0:
        where += f"; softmax over the whole {layout.model_type} head x{softmax:.4f} (mscale_all_dim)"
    return {"cos_sin": cos_sin, "softmax": softmax, "where": where}


def _kind(ratio: float, factor: float) -> str:
    if math.isclose(ratio, 1.0, rel_tol=1e-4):
        return "kept"
    if math.isclose(ratio, 1.0 / factor, rel_tol=1e-4):
        return "interpolated"
    return "blended"


def scaling_for(config: Mapping[str, Any], method: str, factor: float, **params: float | None) -> Scaling:
    """The validated scaling of `method` at `factor` on this config, its original window filled in
    (given, or what the config records, or its max_position_embeddings)."""
    layout = read_layout(config)
    scaling = resolve(method, factor, **params)
    if scaling.original_max_position_embeddings is None:
        scaling = scaling.with_window(layout.original_max_position_embeddings or layout.max_position_embeddings)
    return scaling


def dimension_table(
    config: Mapping[str, Any], method: str, factor: float, **params: float | None
) -> list[dict[str, Any]]:
    """One row per rotary frequency of the first patched layer type: i, wavelengths, ratio, kind.

    Dynamic methods are shown at the full new window. Imports torch (the rope math).
    """
    from ..rope.functions import compute_inv_freq, default_inv_freq

    layout: RopeLayout = read_layout(config)
    scaling = scaling_for(config, method, factor, **params)
    original = scaling.original_max_position_embeddings
    first = layout.targets[0]
    theta = float(layout.metadata["rope_theta"].get("global" if first is None else first)
                  if layout.metadata else layout.rope[first]["rope_theta"])
    dim, exponent_dim = layout.rotary_dim_of(first), layout.exponent_dim_of(first)
    base = default_inv_freq(dim, theta, exponent_dim)[: dim // 2]  # proportional rope: the rotating ones only
    new, _ = compute_inv_freq(
        scaling.method, dim, theta, scaling.factor, original,
        seq_len=scaling.window, head_dim=exponent_dim,
        **{k: v for k, v in scaling.params.items() if v is not None},
    )
    rows = []
    for i, (old_freq, new_freq) in enumerate(zip(base.tolist(), new[: dim // 2].tolist())):
        ratio = new_freq / old_freq
        rows.append(
            {
                "dim": i,
                "wavelength": 2 * math.pi / old_freq,
                "rotations_in_window": original * old_freq / (2 * math.pi),
                "new_wavelength": 2 * math.pi / new_freq,
                "ratio": ratio,
                "kind": _kind(ratio, scaling.factor),
            }
        )
    return rows


def plot_dimensions(rows: list[dict[str, Any]], path: str | os.PathLike, title: str, original: int, window: int) -> Path:
    """Wavelength per dimension before and after, against the original and new windows (log scale).

    A matplotlib `Figure` (no pyplot state), written atomically like every other picture ctxext draws.
    """
    from matplotlib.figure import Figure

    colors = {"kept": "tab:blue", "blended": "tab:orange", "interpolated": "tab:red"}
    fig = Figure(figsize=(8, 4.5), layout="constrained")
    ax = fig.add_subplot()
    dims = [r["dim"] for r in rows]
    ax.plot(dims, [r["wavelength"] for r in rows], color="0.6", lw=1.5, label="original wavelength")
    for kind, color in colors.items():
        chosen = [r for r in rows if r["kind"] == kind]
        if chosen:
            ax.scatter([r["dim"] for r in chosen], [r["new_wavelength"] for r in chosen], s=14, color=color,
                       label=f"{kind} ({len(chosen)})", zorder=3)
    ax.axhline(original, color="k", ls="--", lw=1, label=f"original window ({original:,})")
    ax.axhline(window, color="k", ls=":", lw=1, label=f"new window ({window:,})")
    ax.set_yscale("log")
    ax.set_xlabel("rotary dimension pair i")
    ax.set_ylabel("wavelength (tokens)")
    ax.set_title(title)
    ax.legend(fontsize=8, loc="upper left")
    return save_figure(fig, path)
