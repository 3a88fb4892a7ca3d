"""The search space: the monotone constraint, the projection onto it, and seeds that are the methods."""

import math
import random

import pytest
import torch

from ctxext.rope.functions import compute_inv_freq
from ctxext.search.evaluator import longrope_inv_freq
from ctxext.search.space import Bounds, Candidate, clip, crossover, isotonic, method_seeds, mutate, project, within


def monotone_projection(y):
    """The least-squares non-decreasing fit by the min-max formula, x_i = max_{j<=i} min_{k>=i} mean(y[j..k]):
    a different algorithm from pool-adjacent-violators, with the same answer."""
    n = len(y)
    return [max(min(sum(y[j : k + 1]) / (k + 1 - j) for k in range(i, n)) for j in range(i + 1)) for i in range(n)]


def test_isotonic_is_the_least_squares_monotone_fit():
    rng = random.Random(0)
    for _ in range(200):
        y = [rng.gauss(0, 1) for _ in range(rng.randint(1, 12))]
        assert isotonic(y) == pytest.approx(monotone_projection(y), abs=1e-12)
    assert isotonic([1, 2, 3]) == [1, 2, 3]
    assert isotonic([3, 1]) == [2, 2]


@pytest.mark.parametrize("factor", [2.0, 8.0, 32.0])
def test_every_move_keeps_the_constraint_and_the_bounds(factor):
    bounds = Bounds(n=16, max_long_factor=2 * factor, attention_low=1.0, attention_high=1.3)
    seeds = [s.candidate for s in method_seeds(32, 10000.0, factor, 256)]
    rng = random.Random(1)
    population = [clip(s, bounds) for s in seeds]
    for _ in range(500):
        a, b = rng.choice(population), rng.choice(population)
        child = mutate(a, rng, bounds, strength=1.0) if rng.random() < 0.5 else crossover(a, b, rng, bounds)
        f = child.long_factor
        assert len(f) == 16 and f[0] >= 1.0 and f[-1] <= 2 * factor
        assert all(x <= y for x, y in zip(f, f[1:])), f
        assert 1.0 <= child.attention_factor <= 1.3
        assert within(child, bounds)
        assert child == Candidate.from_json(child.to_json())  # rounded: JSON gives back the same candidate
        population.append(child)
    assert len({c.key for c in population}) > 400  # the moves do move


def test_projection_repairs_an_out_of_order_vector():
    bounds = Bounds(n=4, max_long_factor=8.0)
    c = project([math.log(x) for x in (0.5, 4.0, 2.0, 100.0)], 0.7, bounds)
    assert c.long_factor == (1.0, pytest.approx(math.sqrt(8.0), abs=1e-6), pytest.approx(math.sqrt(8.0), abs=1e-6), 8.0)
    assert c.attention_factor == 1.0  # clipped into [1, 1]


@pytest.mark.parametrize("method", ["pi", "ntk", "ntk-by-parts", "yarn", "llama3"])
@pytest.mark.parametrize("dim,theta,factor,window", [(128, 10000.0, 8.0, 4096), (64, 500000.0, 4.0, 8192), (32, 10000.0, 8.0, 256)])
def test_each_seed_reproduces_its_method(method, dim, theta, factor, window):
    """Stock longrope's frequencies from the seed's factors are the method's own: all but a few exactly, the
    rest one float32 rounding away (stock's division cannot land on every float32 value)."""
    seeds = {s.method: s.candidate for s in method_seeds(dim, theta, factor, window, methods=[method])}
    expected, attention = compute_inv_freq(method, dim, theta, factor, window)
    seed = seeds[method]
    rebuilt = longrope_inv_freq(dim, theta, seed.long_factor)
    assert int((rebuilt != expected).sum()) <= max(1, dim // 32), (rebuilt - expected)
    torch.testing.assert_close(rebuilt, expected, rtol=1.5e-7, atol=0)
    assert seed.attention_factor == attention
    assert seed.long_factor[0] >= 1.0 and all(x <= y for x, y in zip(seed.long_factor, seed.long_factor[1:]))


def test_methods_with_the_same_frequencies_give_one_seed_each_attention_factor():
    seeds = method_seeds(32, 10000.0, 8.0, 256)
    names = [s.method for s in seeds]
    assert names == ["pi", "ntk", "ntk-by-parts", "yarn", "llama3"]
    by = {s.method: s.candidate for s in seeds}
    assert by["pi"].long_factor == (8.0,) * 16
    assert by["yarn"].long_factor == by["ntk-by-parts"].long_factor
    assert by["yarn"].attention_factor == pytest.approx(0.1 * math.log(8) + 1) and by["ntk-by-parts"].attention_factor == 1.0
