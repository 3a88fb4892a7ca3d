"""The evolutionary search: a population of candidates, improved generation by generation.

    outcome = evolve(evaluate, seeds, bounds, EvolutionSettings(population=16, generations=10, seed=0))

Generation 0 is every seed (the factors pi, ntk, ntk-by-parts, yarn and llama3 imply) and mutants of
them up to the population size. Each later generation keeps the best half (the parents) and adds as
many children, half mutants of one parent and half one-point crossovers of two (see `space`); a
child identical to a candidate already evaluated is mutated again. Parents survive unchanged, so the
best loss never rises and the result is never worse than the best seed.

Reproducible: generation g draws from `random.Random((seed, g))` and its children are all made before
any is evaluated, so the search depends only on the seed and the losses. With a `state_dir`, the
population is saved atomically after every generation (`state.json`) and every evaluation is
appended to `search_log.jsonl`; `resume=True` continues from the last saved generation, reusing the
evaluations already logged for the next one, and ends where an uninterrupted search would. A time
budget (`max_minutes`) stops between evaluations, after generation 0; its result depends on the
machine's speed, so a search stopped by time is not reproducible, one stopped by `generations` is.
"""

from __future__ import annotations

import json
import math
import random
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Callable, Sequence

from ..errors import CtxextError
from ..io import atomic_write_json, atomic_write_text
from .space import Bounds, Candidate, Seed, clip, crossover, mutate

STATE_NAME = "state.json"
LOG_NAME = "search_log.jsonl"
#: run keys a resumed search takes from the saved state instead of comparing: measured, not chosen
#: (another thread count can move them by a rounding), and what the search may extend
NOT_COMPARED = ("generations", "ctxext", "guard", "bounds")
#: retries when a child repeats a candidate already evaluated
MAX_RETRIES = 20


@dataclass(frozen=True)
class EvolutionSettings:
    """How much searching to do; validated here, so every later step trusts it."""

    population: int = 16
    generations: int = 10
    seed: int = 0
    max_minutes: float | None = None
    strength: float = 0.5  # mutation size in log(lambda), before its random halvings

    def __post_init__(self) -> None:
        if isinstance(self.population, bool) or not isinstance(self.population, int) or self.population < 4:
            raise CtxextError(f"population must be a whole number of at least 4, got {self.population!r}.")
        for name in ("generations", "seed"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int) or value < 0:
                raise CtxextError(f"{name} must be a whole number, 0 or more, got {value!r}.")
        if self.max_minutes is not None and not (
            isinstance(self.max_minutes, (int, float)) and not isinstance(self.max_minutes, bool)
            and math.isfinite(self.max_minutes) and self.max_minutes > 0
        ):
            raise CtxextError(f"max_minutes must be a number of minutes greater than 0, got {self.max_minutes!r}.")
        if not (isinstance(self.strength, (int, float)) and 0 < self.strength <= 5):
            raise CtxextError(f"strength must be a number in (0, 5], got {self.strength!r}.")

    @property
    def parents(self) -> int:
        return self.population // 2


@dataclass
class Individual:
    candidate: Candidate
    loss: float
    generation: int
    index: int  # order of evaluation within its generation
    origin: str  # "seed: yarn", "mutation", "crossover"

    def record(self, seconds: float | None = None) -> dict:
        out = {"generation": self.generation, "index": self.index, "origin": self.origin,
               **self.candidate.to_json(), "loss": self.loss, "perplexity": math.exp(self.loss)}
        if seconds is not None:
            out["seconds"] = round(seconds, 3)
        return out

    @classmethod
    def from_record(cls, r: dict) -> "Individual":
        return cls(Candidate.from_json(r), float(r["loss"]), int(r["generation"]), int(r["index"]), str(r["origin"]))

    @property
    def rank(self) -> tuple:
        """Sort key: lower loss first; ties by age, then order, so sorting is deterministic."""
        return (self.loss, self.generation, self.index)


@dataclass
class Outcome:
    """What a search ends with: the best individual, the seeds, every evaluation, why it stopped."""

    best: Individual
    seeds: list[Individual]
    evaluated: list[Individual]
    generations: int  # generations completed after generation 0
    stopped: str  # "generations" or "time"
    seconds: float
    history: list[dict] = field(default_factory=list)  # per generation: best loss so far


def _read_log(path: Path) -> list[dict]:
    """The log's complete records (a line cut short by a kill is dropped)."""
    if not path.exists():
        return []
    records = []
    for line in path.read_text(encoding="utf-8").splitlines():
        try:
            records.append(json.loads(line))
        except ValueError:
            continue
    return records


class _Log:
    """search_log.jsonl in the state directory (or in memory only, without one)."""

    def __init__(self, directory: Path | None, keep: list[dict]):
        self.path = None if directory is None else directory / LOG_NAME
        self.records = list(keep)
        if self.path is not None:
            atomic_write_text(self.path, "".join(json.dumps(r) + "\n" for r in keep))

    def append(self, record: dict) -> None:
        self.records.append(record)
        if self.path is not None:
            with open(self.path, "a", encoding="utf-8") as handle:
                handle.write(json.dumps(record) + "\n")


def _children(parents: list[Individual], rng: random.Random, bounds: Bounds, settings: EvolutionSettings,
              seen: set) -> list[tuple[Candidate, str]]:
    """The new candidates of one generation: half mutants, half crossovers, none seen before."""
    out: list[tuple[Candidate, str]] = []
    for j in range(settings.population - len(parents)):
        if j % 2 == 1 and len(parents) >= 2:
            a, b = rng.sample(parents, 2)
            child, origin = crossover(a.candidate, b.candidate, rng, bounds), "crossover"
        else:
            child, origin = mutate(rng.choice(parents).candidate, rng, bounds, settings.strength), "mutation"
        retries = 0
        while child.key in seen and retries < MAX_RETRIES:
            child, retries = mutate(child, rng, bounds, settings.strength), retries + 1
        if child.key in seen:
            continue  # the neighbourhood is exhausted at this strength: one child fewer
        seen.add(child.key)
        out.append((child, origin))
    return out


def evolve(
    evaluate: Callable[[Candidate], float],
    seeds: Sequence[Seed],
    bounds: Bounds,
    settings: EvolutionSettings,
    *,
    state_dir: Path | None = None,
    run: dict | None = None,
    resume: bool = False,
    progress: bool = True,
    on_evaluation: Callable[[dict], None] | None = None,
) -> Outcome:
    """Run the search; `evaluate(candidate)` returns its loss (lower is better).

    `run` describes the search (model, data, objective, settings): a resumed search must repeat it,
    except for `generations` and `max_minutes`, which may be raised. `on_evaluation` is called with
    each log record after it is written.
    """
    from tqdm.auto import tqdm

    run = dict(run or {}, **{k: v for k, v in asdict(settings).items() if k not in ("max_minutes",)})
    state = _load_state(state_dir, run, resume)
    started = time.perf_counter()
    elapsed_before = state["seconds"] if state else 0.0

    def elapsed() -> float:
        return elapsed_before + time.perf_counter() - started

    log_records = _read_log(state_dir / LOG_NAME) if (state and state_dir) else []
    done_generation = state["generation"] if state else -1
    cache = {Candidate.from_json(r).key: float(r["loss"]) for r in log_records if r.get("generation") == done_generation + 1}
    log = _Log(state_dir, [r for r in log_records if r.get("generation", 1 << 30) <= done_generation])
    population = [Individual.from_record(r) for r in state["population"]] if state else []
    evaluated = [Individual.from_record(r) for r in log.records] or list(population)
    history = list(state["history"]) if state else []
    seen = {i.candidate.key for i in evaluated}

    children_per_generation = settings.population - settings.parents
    total = max(settings.population, len(seeds)) + settings.generations * children_per_generation
    bar = tqdm(total=total, initial=min(total, len(evaluated)), unit="candidate", desc="search", disable=not progress)
    stopped = "generations"

    def score(candidate: Candidate, generation: int, index: int, origin: str) -> Individual:
        began = time.perf_counter()
        loss = cache[candidate.key] if candidate.key in cache else float(evaluate(candidate))
        if not math.isfinite(loss):
            loss = float("inf")  # a candidate that breaks the model loses, it does not crash the search
        individual = Individual(candidate, loss, generation, index, origin)
        record = individual.record(time.perf_counter() - began)
        log.append(record)
        evaluated.append(individual)
        best = min(evaluated, key=lambda i: i.rank)
        bar.set_postfix_str(f"gen {generation}, best {_show(best.loss)}")
        bar.update()
        if on_evaluation is not None:
            on_evaluation(record)
        return individual

    def save(generation: int) -> None:
        best = min(population, key=lambda i: i.rank)
        history.append({"generation": generation, "loss": best.loss, "perplexity": math.exp(best.loss),
                        "evaluations": len(evaluated)})
        if state_dir is not None:
            atomic_write_json(state_dir / STATE_NAME, {
                "run": run, "generation": generation, "seconds": round(elapsed(), 3),
                "population": [i.record() for i in population], "history": history,
            })

    try:
        if state is None:  # generation 0: the seeds, then their mutants up to the population size
            rng = random.Random(f"ctxext-search/{settings.seed}/0")
            start: list[tuple[Candidate, str]] = []
            for s in seeds:
                candidate = clip(s.candidate, bounds)
                if candidate.key not in seen:
                    seen.add(candidate.key)
                    start.append((candidate, f"seed: {s.method}"))
            firsts = [c for c, _ in start]
            tries = 0
            while len(start) < settings.population and tries < settings.population * MAX_RETRIES:
                child, tries = mutate(rng.choice(firsts), rng, bounds, settings.strength), tries + 1
                if child.key not in seen:
                    seen.add(child.key)
                    start.append((child, "mutation"))
            population = [score(c, 0, k, origin) for k, (c, origin) in enumerate(start)]
            save(0)
            done_generation = 0
        for generation in range(done_generation + 1, settings.generations + 1):
            if settings.max_minutes is not None and elapsed() >= 60 * settings.max_minutes:
                stopped = "time"
                break
            rng = random.Random(f"ctxext-search/{settings.seed}/{generation}")
            parents = sorted(population, key=lambda i: i.rank)[: settings.parents]
            children = _children(parents, rng, bounds, settings, seen)
            born = []
            for k, (child, origin) in enumerate(children):
                if settings.max_minutes is not None and elapsed() >= 60 * settings.max_minutes:
                    stopped = "time"
                    break
                born.append(score(child, generation, k, origin))
            population = parents + born
            if stopped == "time":
                break
            save(generation)
            done_generation = generation
    finally:
        bar.close()

    seed_names = {f"seed: {s.method}" for s in seeds}
    return Outcome(
        best=min(evaluated, key=lambda i: i.rank),
        seeds=[i for i in evaluated if i.generation == 0 and i.origin in seed_names],
        evaluated=evaluated,
        generations=max(0, done_generation),
        stopped=stopped,
        seconds=round(elapsed(), 3),
        history=history,
    )


def _show(loss: float) -> str:
    return f"{math.exp(loss):.4f}" if loss < 50 else "inf"


def saved_run(state_dir: Path | None) -> dict | None:
    """The `run` record of the search saved in `state_dir`, if there is a readable one."""
    try:
        return json.loads((state_dir / STATE_NAME).read_text(encoding="utf-8"))["run"]
    except (OSError, ValueError, KeyError, TypeError):
        return None


def _load_state(state_dir: Path | None, run: dict, resume: bool) -> dict | None:
    """The saved state to continue from, after checking that this search repeats the interrupted one."""
    if state_dir is None or not resume:
        return None
    path = state_dir / STATE_NAME
    if not path.exists():
        return None
    try:
        state = json.loads(path.read_text(encoding="utf-8"))
        previous = state["run"]
        state["population"], state["generation"], state["history"]
    except (OSError, ValueError, KeyError, TypeError):
        raise CtxextError(f"{path} is not a search state ctxext wrote; pass --overwrite to start over.") from None
    current = json.loads(json.dumps(run))  # compare in JSON's types
    changed = sorted(k for k in current.keys() | previous.keys()
                     if k not in NOT_COMPARED and current.get(k) != previous.get(k))
    if changed:
        what = ", ".join(f"{k} ({previous.get(k)!r} then, {current.get(k)!r} now)" for k in changed)
        raise CtxextError(f"--resume must repeat the interrupted search's settings, but {what} changed; "
                          "repeat them, or pass --overwrite to start over.")
    return state
