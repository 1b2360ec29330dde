from __future__ import annotations

import sys
from pathlib import Path

import pytest

from lightning_nas.strategies.base import Constraint
from lightning_nas.strategies.driver import Budget, run_search
from lightning_nas.strategies.evolution import RegularizedEvolution
from lightning_nas.strategies.random_search import RandomSearch

sys.path.insert(0, str(Path(__file__).parent))
from synthetic import SyntheticEvaluator, synthetic_space  # noqa: E402


def search(strategy, evaluations: int, evaluator=None):
    evaluator = evaluator or SyntheticEvaluator()
    return run_search(strategy, evaluator, objective="accuracy", budget=Budget(evaluations=evaluations))


@pytest.mark.parametrize("make", [
    lambda seed: RandomSearch(synthetic_space(), seed=seed),
    lambda seed: RegularizedEvolution(synthetic_space(), seed=seed, population=10, sample=4),
])
def test_finds_the_optimum_and_seeds_reproduce(make) -> None:
    evaluator = SyntheticEvaluator()
    first = search(make(0), 256, evaluator)
    assert first.best().value == pytest.approx(evaluator.optimum())
    again, other = search(make(0), 40, evaluator), search(make(1), 40, evaluator)
    assert [r.arch for r in again.done] == [r.arch for r in first.done[:40]]
    assert [r.arch for r in other.done] != [r.arch for r in again.done]


def test_evolution_beats_random_on_average() -> None:
    evaluator = SyntheticEvaluator(n_layers=6, n_values=4)
    space = synthetic_space(6, 4)
    gaps = {"random": 0.0, "evolution": 0.0}
    for seed in range(5):
        gaps["random"] += search(RandomSearch(space, seed=seed), 120, evaluator).best().value
        gaps["evolution"] += search(RegularizedEvolution(space, seed=seed, population=20, sample=5), 120,
                                    evaluator).best().value
    assert gaps["evolution"] > gaps["random"]


@pytest.mark.parametrize("make", [
    lambda c, m: RandomSearch(synthetic_space(), seed=0, constraints=c, cost_model=m),
    lambda c, m: RegularizedEvolution(synthetic_space(), seed=0, constraints=c, cost_model=m, population=8, sample=3),
])
def test_cost_model_keeps_proposals_feasible(make) -> None:
    evaluator = SyntheticEvaluator()
    limit = 8.2  # about 80 of the 256 archs
    results = search(make([Constraint("cost", upper=limit)], evaluator.costs), 60, evaluator)
    feasible = [r for r in results.done if r.metrics["cost"] <= limit]
    assert len(feasible) >= 55  # unconstrained draws would give about 18
    assert results.best().value == pytest.approx(max(r.value for r in feasible))


@pytest.mark.parametrize("make", [
    lambda c, m: RandomSearch(synthetic_space(), seed=0, constraints=c, cost_model=m, max_tries=5),
    lambda c, m: RegularizedEvolution(synthetic_space(), seed=0, constraints=c, cost_model=m, population=4, sample=2),
])
def test_infeasible_constraint_does_not_loop(make) -> None:
    evaluator = SyntheticEvaluator()
    results = search(make([Constraint("cost", upper=5.0)], evaluator.costs), 20, evaluator)
    assert len(results) == 20 and not any(r.violation <= 0 for r in results.done)
    least = min(r.violation for r in results.done)
    assert results.best() is None and results.least_violating().violation == least


def test_bad_arguments() -> None:
    with pytest.raises(ValueError, match="`sample` \\(5\\) must not exceed `population` \\(4\\)"):
        RegularizedEvolution(synthetic_space(), population=4, sample=5)
    with pytest.raises(ValueError, match="`max_tries`"):
        RandomSearch(synthetic_space(), max_tries=0)
    with pytest.raises(ValueError, match="`seed`"):
        RandomSearch(synthetic_space(), seed=-1)
    with pytest.raises(ValueError, match="`space` must be a SearchSpace"):
        RandomSearch({"a": [1, 2]})
