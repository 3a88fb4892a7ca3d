"""The evolutionary loop on a cheap synthetic objective: elitism, reproducibility, budgets, resume after a kill."""

import json
import math
import os
import subprocess
import sys
from pathlib import Path

import pytest

from ctxext.errors import CtxextError
from ctxext.search.evolution import LOG_NAME, STATE_NAME, EvolutionSettings, evolve
from ctxext.search.space import Bounds, Candidate, method_seeds

ROOT = Path(__file__).resolve().parents[2]
BOUNDS = Bounds(n=16, max_long_factor=16.0, attention_low=1.0, attention_high=1.4)
SEEDS = method_seeds(32, 10000.0, 8.0, 256)
#: a monotone optimum no seed has: the objective is the squared distance to it in log space
TARGET = [1.0, 1.0, 1.1, 1.3, 1.7, 2.4, 3.6, 5.0, 6.2, 7.0, 7.4, 7.6, 7.8, 9.0, 9.5, 10.0]


def distance(c: Candidate) -> float:
    return sum((math.log(a) - math.log(b)) ** 2 for a, b in zip(c.long_factor, TARGET)) + (c.attention_factor - 1.15) ** 2


def run(**kw):
    settings = EvolutionSettings(**{"population": 8, "generations": 6, "seed": 3, **kw})
    return evolve(distance, SEEDS, BOUNDS, settings, progress=False)


def test_the_search_improves_on_every_seed_and_never_loses_its_best():
    out = run()
    seed_losses = {s.origin: s.loss for s in out.seeds}
    assert set(seed_losses) == {f"seed: {m}" for m in ("pi", "ntk", "ntk-by-parts", "yarn", "llama3")}
    assert all(s.loss == distance(s.candidate) for s in out.seeds)
    assert out.best.loss < min(seed_losses.values())
    best_so_far = [h["loss"] for h in out.history]
    assert len(best_so_far) == 7 and all(b <= a for a, b in zip(best_so_far, best_so_far[1:]))
    assert out.best.loss == min(i.loss for i in out.evaluated) == best_so_far[-1]
    assert len({i.candidate.key for i in out.evaluated}) == len(out.evaluated)  # nothing evaluated twice
    assert out.generations == 6 and out.stopped == "generations"
    assert len(out.evaluated) == 8 + 6 * 4


def test_the_same_seed_gives_the_same_search_and_another_seed_another():
    a, b, c = run(), run(), run(seed=4)
    assert [i.record() for i in a.evaluated] == [i.record() for i in b.evaluated]
    assert [i.record() for i in a.evaluated] != [i.record() for i in c.evaluated]


def test_zero_generations_returns_the_best_seed_and_a_time_budget_stops_after_generation_0():
    out = run(generations=0)
    assert {i.generation for i in out.evaluated} == {0} and len(out.evaluated) == 8
    assert out.best.loss == min(i.loss for i in out.evaluated) <= min(s.loss for s in out.seeds)
    timed = run(generations=50, max_minutes=1e-9)
    assert timed.stopped == "time" and timed.generations == 0
    assert {i.generation for i in timed.evaluated} == {0}
    assert timed.best.loss <= min(s.loss for s in timed.seeds)


@pytest.mark.parametrize("kw,match", [
    ({"population": 3}, "population must be a whole number of at least 4"),
    ({"generations": -1}, "generations must be a whole number, 0 or more"),
    ({"max_minutes": 0}, "max_minutes must be a number of minutes greater than 0"),
    ({"seed": 1.5}, "seed must be a whole number"),
])
def test_bad_settings_are_refused(kw, match):
    with pytest.raises(CtxextError, match=match):
        EvolutionSettings(**kw)


KILLED = """
import math, os, signal, sys
sys.path.insert(0, {tests!r})
from pathlib import Path
from search.test_evolution import BOUNDS, SEEDS, distance
from ctxext.search.evolution import EvolutionSettings, evolve

def die(record):
    if (record["generation"], record["index"]) == ({generation}, {index}):
        os.kill(os.getpid(), signal.SIGKILL)  # no cleanup, no exception handler runs

evolve(distance, SEEDS, BOUNDS, EvolutionSettings(population=8, generations=6, seed=3), state_dir=Path({state!r}),
       run={{"what": "test"}}, progress=False, on_evaluation=die)
"""


def test_a_search_killed_mid_generation_resumes_to_the_uninterrupted_result(tmp_path):
    (tmp_path / "straight").mkdir()
    straight = evolve(distance, SEEDS, BOUNDS, EvolutionSettings(population=8, generations=6, seed=3),
                      state_dir=tmp_path / "straight", run={"what": "test"}, progress=False)
    state = tmp_path / "killed"
    state.mkdir()
    script = KILLED.format(tests=str(ROOT / "tests"), generation=3, index=2, state=str(state))
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(ROOT), str(ROOT / "tests")])}
    killed = subprocess.run([sys.executable, "-c", script], env=env, capture_output=True, text=True)
    assert killed.returncode == -9, killed.stderr[-2000:]
    assert json.loads((state / STATE_NAME).read_text())["generation"] == 2  # generation 3 was cut short
    logged = [json.loads(line) for line in (state / LOG_NAME).read_text().splitlines()]
    assert (logged[-1]["generation"], logged[-1]["index"]) == (3, 2)

    calls = []
    def counted(c):
        calls.append(c)
        return distance(c)

    with pytest.raises(CtxextError, match=r"seed \(3 then, 4 now\) changed"):
        evolve(distance, SEEDS, BOUNDS, EvolutionSettings(population=8, generations=6, seed=4), state_dir=state,
               run={"what": "test"}, resume=True, progress=False)
    resumed = evolve(counted, SEEDS, BOUNDS, EvolutionSettings(population=8, generations=6, seed=3), state_dir=state,
                     run={"what": "test"}, resume=True, progress=False)
    strip = lambda records: [{k: v for k, v in r.items() if k != "seconds"} for r in records]
    assert strip(json.loads(line) for line in (state / LOG_NAME).read_text().splitlines()) == \
        strip(json.loads(line) for line in (tmp_path / "straight" / LOG_NAME).read_text().splitlines())
    assert resumed.best.record() == straight.best.record()
    assert [i.record() for i in resumed.evaluated] == [i.record() for i in straight.evaluated]
    # generation 3's first three children came from the log, not from new evaluations
    assert len(calls) == (6 - 2) * 4 - 3
