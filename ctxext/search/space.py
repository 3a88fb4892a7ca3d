"""The search space of a factor search: what the stock `longrope` rope type can express.

A candidate is one rescale factor per rotary frequency, `long_factor[i] = lambda_i` (frequency i is
divided by lambda_i at lengths past the original window), and one `attention_factor` that scales
cos and sin. LongRoPE's constraint holds for every candidate: 1 <= lambda_0 <= lambda_1 <= ... <=
lambda_{d/2-1} <= max_long_factor, non-decreasing from the fast (short wavelength) to the slow
dimensions, so no slow dimension is stretched less than a faster one.

    seeds = method_seeds(dim=128, rope_theta=10000.0, factor=8, original_max_position_embeddings=4096)
    child = mutate(seeds[0].candidate, random.Random(0), bounds)

Seeds are the factors that pi, ntk, ntk-by-parts, yarn and llama3 imply, lambda_i = theta_i / theta'_i
with theta' the method's frequencies, each with its method's own attention factor. Mutation and
crossover work on log(lambda): a change is made, then projected back onto the constraint by isotonic
regression (pool adjacent violators) and clipped into the bounds, which keeps it monotone. Their
values are rounded to 6 decimals; every candidate written to JSON and read back is the same candidate.
"""

from __future__ import annotations

import math
import random
from dataclasses import dataclass
from typing import Sequence

#: decimals every factor is rounded to (about float32's precision at the factors searched)
DECIMALS = 6

#: methods whose per-dimension factors seed the search, in this order
SEED_METHODS = ("pi", "ntk", "ntk-by-parts", "yarn", "llama3")


@dataclass(frozen=True)
class Candidate:
    """One point of the search space: per-frequency rescale factors and the attention factor."""

    long_factor: tuple[float, ...]
    attention_factor: float

    @property
    def key(self) -> tuple[float, ...]:
        return (*self.long_factor, self.attention_factor)

    def to_json(self) -> dict:
        return {"long_factor": list(self.long_factor), "attention_factor": self.attention_factor}

    @classmethod
    def from_json(cls, data: dict) -> "Candidate":
        return cls(tuple(float(x) for x in data["long_factor"]), float(data["attention_factor"]))


@dataclass(frozen=True)
class Bounds:
    """Where candidates may lie: factors in [1, max_long_factor], attention factor in [low, high]."""

    n: int  # rotary frequencies (rotary dims / 2)
    max_long_factor: float
    attention_low: float = 1.0
    attention_high: float = 1.0

    @property
    def searches_attention(self) -> bool:
        return self.attention_high > self.attention_low


@dataclass(frozen=True)
class Seed:
    """A candidate built from a method's rule, and the method's name."""

    method: str
    candidate: Candidate


def _round(x: float) -> float:
    return round(float(x), DECIMALS)


def isotonic(values: Sequence[float]) -> list[float]:
    """The non-decreasing sequence closest to `values` in least squares (pool adjacent violators)."""
    blocks: list[list[float]] = []  # [mean, count]
    for v in values:
        blocks.append([float(v), 1.0])
        while len(blocks) > 1 and blocks[-2][0] > blocks[-1][0]:
            mean, count = blocks.pop()
            prev = blocks[-1]
            prev[0] = (prev[0] * prev[1] + mean * count) / (prev[1] + count)
            prev[1] += count
    out: list[float] = []
    for mean, count in blocks:
        out += [mean] * int(count)
    return out


def project(log_factors: Sequence[float], attention_factor: float, bounds: Bounds) -> Candidate:
    """The candidate nearest to log(lambda) = `log_factors` that satisfies the constraint and the bounds."""
    top = math.log(bounds.max_long_factor)
    monotone = [min(max(u, 0.0), top) for u in isotonic(log_factors)]  # clipping keeps the order
    factors, previous = [], 1.0
    for u in monotone:
        value = max(_round(math.exp(u)), previous)  # rounding must not undo the order
        factors.append(value)
        previous = value
    attention = min(max(attention_factor, bounds.attention_low), bounds.attention_high)
    return Candidate(tuple(factors), _round(attention))


def clip(candidate: Candidate, bounds: Bounds) -> Candidate:
    """`candidate` moved into the bounds (a seed whose attention factor the guard does not allow, say)."""
    if within(candidate, bounds):
        return candidate
    return project([math.log(x) for x in candidate.long_factor], candidate.attention_factor, bounds)


def within(candidate: Candidate, bounds: Bounds) -> bool:
    """True when `candidate` satisfies the constraint and lies inside the bounds."""
    f = candidate.long_factor
    return (
        len(f) == bounds.n
        and 1.0 <= f[0]
        and f[-1] <= bounds.max_long_factor
        and all(a <= b for a, b in zip(f, f[1:]))
        and bounds.attention_low <= candidate.attention_factor <= bounds.attention_high
    )


def method_seeds(
    dim: int,
    rope_theta: float,
    factor: float,
    original_max_position_embeddings: int,
    methods: Sequence[str] = SEED_METHODS,
) -> list[Seed]:
    """The factors each method implies, lambda_i = theta_i / theta'_i, with its own attention factor.

    The factors are the float32 divisors with which stock longrope rebuilds the method's frequencies
    most closely (`rope.functions.longrope_factors`): most frequencies come back exactly, the rest one
    float32 rounding away. Duplicates (methods that imply the same candidate) are kept once, under the
    first method's name.
    """
    from ..rope.functions import compute_inv_freq, longrope_factors

    seeds, seen = [], set()
    for method in methods:
        inv_freq, attention = compute_inv_freq(method, dim, rope_theta, factor, original_max_position_embeddings)
        factors, previous = [], 1.0
        for x in longrope_factors(inv_freq, dim, rope_theta):
            previous = max(previous, x)  # a monotone method's divisors, evened out where they wobble by an ulp
            factors.append(previous)
        candidate = Candidate(tuple(factors), float(attention))
        if candidate.key not in seen:
            seen.add(candidate.key)
            seeds.append(Seed(method, candidate))
    return seeds


def mutate(candidate: Candidate, rng: random.Random, bounds: Bounds, strength: float) -> Candidate:
    """A random change of `candidate`, projected back onto the constraint.

    One of three moves, each of a random size (strength, strength/2 or strength/4 in log(lambda)):
    a few single dimensions up or down; a smooth bump over a band of neighbouring dimensions; or the
    slow end, from a random dimension on, raised or lowered together (where the model stops
    extrapolating and starts interpolating, LongRoPE2's critical dimension). With a searched attention
    factor, it also moves (by a few percent) one time in three.
    """
    u = [math.log(x) for x in candidate.long_factor]
    n = len(u)
    sigma = strength * rng.choice((1.0, 0.5, 0.25))
    move = rng.choice(("dims", "bump", "tail"))
    if move == "dims":
        chosen = [i for i in range(n) if rng.random() < 2.0 / n] or [rng.randrange(n)]
        for i in chosen:
            u[i] += rng.gauss(0.0, sigma)
    elif move == "bump":
        center, width, amplitude = rng.uniform(0, n - 1), rng.uniform(1.0, max(1.0, n / 3)), rng.gauss(0.0, sigma)
        u = [x + amplitude * math.exp(-0.5 * ((i - center) / width) ** 2) for i, x in enumerate(u)]
    else:
        start, amplitude = rng.randrange(n), rng.gauss(0.0, sigma)
        u = [x + (amplitude if i >= start else 0.0) for i, x in enumerate(u)]
    attention = candidate.attention_factor
    if bounds.searches_attention and rng.random() < 1 / 3:
        attention *= math.exp(rng.gauss(0.0, 0.03))
    return project(u, attention, bounds)


def crossover(a: Candidate, b: Candidate, rng: random.Random, bounds: Bounds) -> Candidate:
    """One-point crossover: the fast dimensions of one parent, the slow ones of the other, made monotone."""
    n = len(a.long_factor)
    cut = rng.randrange(1, n) if n > 1 else 0
    first, second = (a, b) if rng.random() < 0.5 else (b, a)
    u = [math.log(x) for x in (*first.long_factor[:cut], *second.long_factor[cut:])]
    return project(u, rng.choice((a.attention_factor, b.attention_factor)), bounds)
