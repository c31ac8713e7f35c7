"""Evolutionary search for the best sub-net under a training-memory budget (TinyTL Appendix A).

Every generation keeps the top quarter of the population as parents and refills it with children, half by
mutation (each gene resampled with probability 0.1) and half by crossover of two parents; a child over the budget
(the predicted TinyTL-L+B train-step memory at batch 1, `space.predicted_memory_mb`) is discarded and drawn again.
All randomness comes from one seeded numpy generator whose state is saved with the population after every
generation, so an interrupted search resumes to exactly the result of an uninterrupted one.
"""

import json
from dataclasses import dataclass
from pathlib import Path

import keras
import numpy as np

from tinytl_tf.atomic import atomic_write
from tinytl_tf.errors import TinyTLError
from tinytl_tf.supernet import space

STATE_FORMAT = "tinytl_tf/evolution-v1"
MAX_DRAWS = 10_000  # per child; a budget that leaves (almost) no sub-net fails instead of looping forever


class BudgetTooSmall(TinyTLError, ValueError):
    pass


@dataclass(frozen=True)
class SearchResult:
    arch: space.Arch
    score: float  # the objective (the predicted accuracy) of `arch`
    memory_mb: float
    history: tuple  # best score after each generation


def check_budget(spec, budget_mb):
    """Raise BudgetTooSmall naming the smallest possible memory when no sub-net of `spec` (a SuperSpec or
    JointSpace) fits `budget_mb`."""
    joint = space.JointSpace(spec) if isinstance(spec, space.SuperSpec) else spec
    smallest = joint.min_memory_mb()
    if not budget_mb >= smallest:
        raise BudgetTooSmall(
            f"budget {budget_mb} MB is below the smallest sub-net of {', '.join(joint.backbones)}, which needs "
            f"{smallest:.3f} MB (predicted TinyTL-L+B train-step memory at batch 1); raise --budget-mb "
            f"to at least that or allow smaller --resolutions"
        )
    return smallest


class _Fits:
    """Memoised 'does this sub-net fit the budget' (the memory walk is the search's inner loop)."""

    def __init__(self, joint, budget_mb):
        self.joint, self.budget_mb, self._memory = joint, budget_mb, {}

    def memory_mb(self, arch):
        if arch not in self._memory:
            self._memory[arch] = self.joint.memory_mb(arch)
        return self._memory[arch]

    def __call__(self, arch):
        return self.memory_mb(arch) <= self.budget_mb


def _draw_until_fits(fits, draw, what):
    for _ in range(MAX_DRAWS):
        arch = draw()
        if fits(arch):
            return arch
    raise BudgetTooSmall(
        f"no {what} within {fits.budget_mb} MB in {MAX_DRAWS} draws; the budget leaves almost no "
        f"sub-net (smallest: {fits.joint.min_memory_mb():.3f} MB), raise --budget-mb"
    )


def _next_population(joint, fits, parents, rng, size, n_mutated, mutate_prob):
    """The parents, then `n_mutated` mutants and crossovers up to `size`, each drawn until it fits the budget."""
    n_parents = len(parents)

    def mutant():
        return joint.mutate(parents[int(rng.integers(n_parents))], rng, mutate_prob)

    def cross():
        i, j = rng.choice(n_parents, size=2, replace=False)
        return joint.crossover(parents[int(i)], parents[int(j)], rng)

    return (
        parents
        + [_draw_until_fits(fits, mutant, "mutated child") for _ in range(n_mutated)]
        + [_draw_until_fits(fits, cross, "crossover child") for _ in range(size - n_parents - n_mutated)]
    )


def _save_state(path, state):
    atomic_write(path, lambda p: Path(p).write_text(json.dumps(state)))


def _settings(joint, budget_mb, population, seed, parent_ratio, mutate_prob):
    return {
        "backbones": list(joint.backbones),
        "resolutions": sorted({r for s in joint.specs.values() for r in s.resolutions}),
        "budget_mb": budget_mb,
        "population": population,
        "seed": seed,
        "parent_ratio": parent_ratio,
        "mutate_prob": mutate_prob,
    }


def _load_state(path, settings, joint):
    state = json.loads(Path(path).read_text())
    if state.get("format") != STATE_FORMAT or state.get("settings") != settings:
        raise ValueError(
            f"{path} holds a search with other settings ({state.get('settings')}); delete it to "
            f"start over or repeat the original settings"
        )
    population = [joint.arch_from_dict(d, f"{path}: population") for d in state["population"]]
    best = state["best"] and (
        joint.arch_from_dict(state["best"]["arch"], f"{path}: best"),
        state["best"]["score"],
    )
    return state["generation"], population, state["rng"], tuple(state["history"]), best


def evolve(
    spec,
    score,
    budget_mb,
    population=100,
    generations=20,
    parent_ratio=0.25,
    mutate_prob=0.1,
    seed=0,
    state_path=None,
    verbose=1,
    initial=(),
):
    """The best sub-net of `spec` (a SuperSpec or a JointSpace of several) within `budget_mb` by
    `score(list of Arch) -> array` (higher is better).

    With `state_path`, the state after each generation is written there atomically and a later call with the
    same settings resumes from it (asking for more `generations` continues the search). `initial`: sub-nets
    the first population starts with (the fixed baseline, so the winner is never predicted below it)."""
    joint = space.JointSpace(spec) if isinstance(spec, space.SuperSpec) else spec
    check_budget(joint, budget_mb)
    if population < 4 or generations < 1:
        raise ValueError(f"the search needs population >= 4 and generations >= 1 (got {population}, {generations})")
    initial = [a for a in initial if joint.memory_mb(a) <= budget_mb][:population]
    settings = _settings(joint, budget_mb, population, seed, parent_ratio, mutate_prob)
    if initial:
        settings["initial"] = [a.to_dict() for a in initial]
    fits = _Fits(joint, budget_mb)
    rng = np.random.default_rng(seed)
    if state_path is not None and Path(state_path).exists():
        done, pop, rng.bit_generator.state, history, best = _load_state(state_path, settings, joint)
    else:
        done, history, best = 0, (), None
        pop = initial + [
            _draw_until_fits(fits, lambda: joint.sample(rng), "random sub-net")
            for _ in range(population - len(initial))
        ]
    n_parents = max(2, int(round(population * parent_ratio)))
    n_mutated = (population - n_parents) // 2
    bar = keras.utils.Progbar(
        generations, verbose=verbose, stateful_metrics=("best", "memory_mb"), unit_name="generation"
    )
    bar.update(min(done, generations))
    for generation in range(done, generations):
        scores = np.asarray(score(pop), np.float64).reshape(-1)
        order = np.argsort(-scores, kind="stable")
        parents = [pop[i] for i in order[:n_parents]]
        if best is None or scores[order[0]] > best[1]:
            best = (parents[0], float(scores[order[0]]))
        history += (best[1],)
        pop = _next_population(joint, fits, parents, rng, population, n_mutated, mutate_prob)
        if state_path is not None:
            _save_state(
                state_path,
                {
                    "format": STATE_FORMAT,
                    "settings": settings,
                    "generation": generation + 1,
                    "population": [a.to_dict() for a in pop],
                    "rng": rng.bit_generator.state,
                    "history": list(history),
                    "best": {"arch": best[0].to_dict(), "score": best[1]},
                },
            )
        bar.update(generation + 1, values=[("best", best[1]), ("memory_mb", fits.memory_mb(best[0]))])
    return SearchResult(arch=best[0], score=best[1], memory_mb=fits.memory_mb(best[0]), history=history)
