"""Run-time truth: the cos/sin a model's attention layers actually receive, against ctxext's formulas.

A patch can write the right config and build the right buffers and still not change what attention
sees (a stock forward that rebuilds frequencies from the config without the length, a dynamic rule
that reads the window as the original one). So these helpers hook every module that receives a
`position_embeddings` argument during a real forward pass, and compare what it got with
cos/sin(position x inv_freq) x attention_factor computed here from `ctxext.rope.functions` at the
length of that pass: two computations that can disagree.

The forward passes use a few scattered position ids (0, 1, L/2, L-1) so that the model derives the
length L from them as stock code does (max position + 1) without running L tokens.
"""

from __future__ import annotations

import inspect
import re
from dataclasses import dataclass, field

import torch
from torch import nn

from ctxext.rope.functions import compute_inv_freq, default_inv_freq
from ctxext.rope.layout import read_layout


def positions_for(length: int) -> list[int]:
    return sorted({0, 1, length // 2, length - 1})


@dataclass
class Seen:
    module: str
    layer_type: str | None
    cos: torch.Tensor  # [n, D]
    sin: torch.Tensor
    # the position ids a rotary module was called with, where they are its own (DeepSeek V4's compressor rotates
    # its compressed windows at their first positions); None: the scattered positions of the pass
    positions: list[int] | None = None


def _layer_type(config, name: str) -> str | None:
    match = re.search(r"layers\.(\d+)\.", name + ".")
    types = getattr(config, "layer_types", None)
    if match is None or not types:
        return None
    return types[int(match.group(1))]


def _argument(module: nn.Module, args: tuple, kwargs: dict, name: str):
    """The argument `name` of one call of module.forward, by keyword or by position (Qwen4-Exp's decoder layer
    passes position_embeddings positionally); None when not given."""
    if name in kwargs:
        return kwargs[name]
    try:
        names = list(inspect.signature(module.forward).parameters)
    except (TypeError, ValueError):
        return None
    index = names.index(name) if name in names else len(args)
    return args[index] if index < len(args) else None


def capture(model: nn.Module, length: int, full: bool = False, ids: torch.Tensor | None = None,
            positions: list[int] | None = None) -> list[Seen]:
    """(cos, sin) each attention module receives in one forward pass that reaches `length` tokens.

    `full=True` runs all `length` tokens (`ids` [1, length] if given, else random ones) and keeps
    `positions` (default: scattered ones) of the result; otherwise only the scattered positions are
    run (with an all-ones mask, so that they are not read as packed sequences).
    """
    positions = positions or positions_for(length)
    seen: list[Seen] = []
    config = model.config.get_text_config()  # a composite model's layer types are its text config's

    def keep(name, pe, layer_type, own=None):
        if isinstance(pe, dict):  # DeepSeek V4: every rope, keyed by its label (main, compress)
            for key, value in pe.items():
                keep(name, value, key)
            return
        if isinstance(pe, torch.Tensor) and pe.is_complex():  # Llama 4: cos + i sin
            pe = (pe.real, pe.imag)
        if isinstance(pe, tuple) and len(pe) == 2 and all(isinstance(t, torch.Tensor) for t in pe):
            cos, sin = (t.detach().float().reshape(-1, t.shape[-2], t.shape[-1])[0] for t in pe)
            if full and own is None:
                cos, sin = cos[positions], sin[positions]
            seen.append(Seen(name, layer_type, cos.clone(), sin.clone(), own))

    def attention_hook(name):
        def pre(module, args, kwargs):
            keep(name, _argument(module, args, kwargs, "position_embeddings"), _layer_type(config, name))
        return pre

    def rotary_hook(name):  # for attention that calls its own rotary module (Moshi, DeepSeek V4's compressor)
        def post(module, args, kwargs, output):
            ids = _argument(module, args, kwargs, "position_ids")
            own = None if ids is None else [int(p) for p in ids.reshape(-1, ids.shape[-1])[0]]
            keep(name, output, kwargs.get("layer_type", args[2] if len(args) > 2 else None), own)
        return post

    # decoder layers pass position_embeddings on to their attention: hook the attention modules only (LongCat's
    # are a list of two MLA modules per layer, self_attn.0 and self_attn.1)
    def is_attention(name: str, module: nn.Module) -> bool:
        parts = name.split(".")
        return ("attn" in parts[-1].lower() or type(module).__name__.endswith("Attention")
                or (parts[-1].isdigit() and len(parts) > 1 and "attn" in parts[-2].lower()))

    handles = [m.register_forward_pre_hook(attention_hook(n), with_kwargs=True) for n, m in model.named_modules()
               if is_attention(n, m)]
    inside = [n for n, m in model.named_modules() if type(m).__name__.endswith("RotaryEmbedding")
              and any(n.startswith(a + ".") for a, am in model.named_modules() if type(am).__name__.endswith("Attention"))]
    handles += [m.register_forward_hook(rotary_hook(n), with_kwargs=True) for n, m in model.named_modules() if n in inside]
    try:
        with torch.no_grad():
            if full:
                if ids is None:
                    ids = torch.randint(3, 100, (1, length), generator=torch.Generator().manual_seed(length))
                model(input_ids=ids, use_cache=False)
            else:
                short = torch.full((1, len(positions)), 5)
                model(input_ids=short, position_ids=torch.tensor([positions]), attention_mask=torch.ones_like(short),
                      use_cache=False)
    finally:
        for h in handles:
            h.remove()
    return seen


@dataclass(frozen=True)
class Expectation:
    """What attention should get: a method on the patched layer types, the original rope elsewhere."""

    method: str
    factor: float
    L0: int
    params: dict
    rotary_dim: int
    theta: dict  # layer type -> rope_theta before the patch
    targets: tuple  # layer types the patch scales
    # layer type -> (rotary dims, head width of proportional rope or None) where not (rotary_dim, None): Gemma 4
    dims: dict = field(default_factory=dict)

    @staticmethod
    def dims_of(layout) -> dict:
        return {t: (layout.rotary_dim_of(t), layout.exponent_dim_of(t)) for t, r in layout.rope.items() if r is not None}

    @classmethod
    def before_patch(cls, model: nn.Module, method: str, factor: float, **params) -> "Expectation":
        layout = read_layout(model.config.to_dict())
        theta = {t: float(r["rope_theta"]) for t, r in layout.rope.items() if r is not None}
        return cls(method, float(factor), layout.max_position_embeddings, dict(params), layout.rotary_dim, theta,
                   layout.targets, cls.dims_of(layout))

    def reloaded(self) -> "Expectation":
        """A stock reload runs dynamic-yarn as the static YaRN its config carries."""
        if self.method != "dynamic-yarn":
            return self
        return Expectation("yarn", self.factor, self.L0, self.params, self.rotary_dim, self.theta, self.targets,
                           self.dims)

    def frequencies(self, layer_type: str | None, length: int) -> tuple[torch.Tensor, float]:
        theta = self.theta.get(layer_type, self.theta.get(None))
        dim, head_dim = self.dims.get(layer_type, (self.rotary_dim, None))
        if layer_type not in self.targets and None not in self.targets:
            return default_inv_freq(dim, theta, head_dim), 1.0
        return compute_inv_freq(self.method, dim, theta, self.factor, self.L0, seq_len=length, head_dim=head_dim,
                                **self.params)


def mismatch(seen: Seen, inv_freq: torch.Tensor, scale: float, length: int) -> str | None:
    """None when (cos, sin) are cos/sin(position x inv_freq) x scale in a known layout, else what differs.

    Tolerance: 1e-5 plus 1e-6 of the angle (stock code may round a run-time frequency by a float32 ulp).
    """
    positions = torch.tensor(seen.positions or positions_for(length), dtype=torch.float64)
    angles = positions[:, None] * inv_freq.double()[None, :]  # [n, d/2]
    tol = (1e-5 + 1e-6 * angles) * scale
    worst = None
    for got, fn in ((seen.cos, torch.cos), (seen.sin, torch.sin)):
        half = fn(angles) * scale
        layouts = [(half, tol), (torch.cat([half, half], -1), torch.cat([tol, tol], -1)),
                   (half.repeat_interleave(2, -1), tol.repeat_interleave(2, -1))]
        errors = [((got.double() - want).abs() - t).max().item() for want, t in layouts if want.shape == got.shape]
        if not errors:
            return f"{seen.module}: cos/sin of shape {tuple(got.shape)} for {inv_freq.numel()} frequencies"
        if min(errors) > 0:
            worst = max(worst or 0.0, min(errors))
    return None if worst is None else f"{seen.module} ({seen.layer_type}) off by {worst:.3g} beyond tolerance"


def expectation_of(expect: Expectation | dict[str, Expectation], module: str) -> Expectation | None:
    """`expect` itself, or from {module prefix: Expectation} the one of the longest prefix of `module` (None if none)."""
    if isinstance(expect, Expectation):
        return expect
    prefixes = [p for p in expect if (module + ".").startswith(p)]
    return expect[max(prefixes, key=len)] if prefixes else None


def check_lengths(model: nn.Module, expect: Expectation | dict[str, Expectation], lengths: list[int],
                  full: bool = False) -> list[str]:
    """Problems found over forward passes at `lengths` (in this order, as a user would run them).

    `expect`: one Expectation for every attention module, or {module prefix: Expectation} for models whose
    sub-models carry their own rope (BLT); each module is checked against its longest prefix.
    """
    problems = []
    for length in lengths:
        seen = capture(model, length, full=full)
        if not seen:
            problems.append(f"at {length}: no attention module received position_embeddings")
            continue
        for s in seen:
            wanted = expectation_of(expect, s.module)
            if wanted is None:
                problems.append(f"at {length}: {s.module}: no expectation covers it")
                continue
            # a rotary module called with its own positions derives its length from them, as stock code does
            at = max(s.positions) + 1 if s.positions else length
            inv_freq, scale = wanted.frequencies(s.layer_type, at)
            problem = mismatch(s, inv_freq, scale, at)
            if problem:
                problems.append(f"at {length}: {problem}")
    return problems
