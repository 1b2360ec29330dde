from __future__ import annotations

import itertools
import sys
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from lightning_nas.strategies.base import Constraint
from lightning_nas.strategies.driver import Budget, run_search
from lightning_nas.strategies.layernas import LayerNAS, cost_bucket

sys.path.insert(0, str(Path(__file__).parent))
from synthetic import SyntheticEvaluator, synthetic_space  # noqa: E402


def search(strategy, evaluator, evaluations: int = 10_000):
    return run_search(strategy, evaluator, objective="accuracy", budget=Budget(evaluations=evaluations))


@settings(max_examples=50, deadline=None)
@given(st.floats(-10, 10), st.floats(-10, 10), st.floats(0, 5), st.integers(1, 100))
def test_cost_bucket_is_eq4_clamped(cost: float, low: float, width: float, buckets: int) -> None:
    high = low + width
    h = cost_bucket(cost, low, high, buckets)
    assert 0 <= h < buckets
    if high == low:
        assert h == 0
    elif low <= cost < high and width > 1e-6:
        assert h == min(int((cost - low) / (high - low) * buckets), buckets - 1)
    assert cost_bucket(high, low, high, buckets) == (buckets - 1 if high > low else 0)
    assert cost_bucket(low - 1.0, low, high, buckets) == 0


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_value_keyed_buckets_solve_a_chain_exactly(seed: int) -> None:
    # Accuracy = unary + neighbour-pair terms: keying the memo table by the current layer's value is Viterbi.
    evaluator = SyntheticEvaluator(n_layers=5, n_values=4, seed=seed)
    strategy = LayerNAS(synthetic_space(5, 4), per_bucket=1, bucket_key=lambda arch, layer: arch[f"l{layer}"])
    results = search(strategy, evaluator)
    assert results.best().value == pytest.approx(evaluator.optimum())
    assert len(results) <= 4 + 4 * 4 * 4  # layer 1: 4 children; then ≤ 4 buckets × 4 options per layer
    assert len(results) < 4**5


@pytest.mark.parametrize("seed", [0, 1])
def test_cost_target_and_exact_cost_keys_give_the_constrained_optimum(seed: int) -> None:
    evaluator = SyntheticEvaluator(n_layers=4, n_values=4, seed=seed)
    space = synthetic_space(4, 4)
    limit = 8.0
    strategy = LayerNAS(space, constraints=[Constraint("cost", upper=limit)], cost_model=evaluator.costs, cost="cost",
                        per_bucket=1, bucket_key=lambda a, layer: (a[f"l{layer}"], round(evaluator.costs(a)["cost"], 6)))
    results = search(strategy, evaluator)
    best = results.best()
    assert best.violation == 0.0 and best.metrics["cost"] <= limit
    assert best.value == pytest.approx(evaluator.optimum(max_cost=limit))
    # Target filter: every proposal can still be completed into a model within the target.
    for r in results.done:
        layer = max(i for i in range(4) if r.arch[f"l{i}"] != 0) if any(r.arch.values()) else 0
        completions = itertools.product(range(4), repeat=3 - layer)
        assert any(evaluator.costs({**r.arch, **{f"l{layer + 1 + j}": v for j, v in enumerate(c)}})["cost"] <= limit
                   for c in completions)


def test_bucket_bound_and_per_bucket() -> None:
    evaluator = SyntheticEvaluator(n_layers=5, n_values=4)
    for buckets, per_bucket in [(2, 1), (3, 2)]:
        strategy = LayerNAS(synthetic_space(5, 4), cost_model=evaluator.costs, cost="cost", buckets=buckets,
                            per_bucket=per_bucket)
        results = search(strategy, evaluator)
        assert all(len(table) <= buckets for table in strategy.tables)
        assert all(len(kept) <= per_bucket for table in strategy.tables for kept in table.values())
        assert len(results) <= 4 + 4 * 4 * buckets * per_bucket
        assert len({tuple(r.arch.values()) for r in results.done}) == len(results)  # nothing evaluated twice


def test_selections_children_passes_and_reproducibility() -> None:
    evaluator = SyntheticEvaluator(n_layers=4, n_values=4)
    make = lambda seed: LayerNAS(synthetic_space(4, 4), seed=seed, cost_model=evaluator.costs, cost="cost",  # noqa: E731
                                 buckets=4, per_bucket=2, selections=3, children=2, passes=2)
    first, again = search(make(0), evaluator), search(make(0), evaluator)
    assert [r.arch for r in first.done] == [r.arch for r in again.done]
    one_pass = search(LayerNAS(synthetic_space(4, 4), seed=0, cost_model=evaluator.costs, cost="cost", buckets=4,
                               per_bucket=2, selections=3, children=2), evaluator)
    assert len(first) > len(one_pass)
    assert first.best().value >= one_pass.best().value


def test_custom_hooks_are_used() -> None:
    evaluator = SyntheticEvaluator(n_layers=3, n_values=3)
    calls = {"select": 0, "apply": 0}

    def select(models, rng):
        calls["select"] += 1
        return models[:1]

    def apply(arch, decision, rng):
        calls["apply"] += 1
        return list(decision.values)

    strategy = LayerNAS(synthetic_space(3, 3), select=select, apply_search_option=apply)
    results = search(strategy, evaluator)
    assert calls["select"] == 2 and calls["apply"] == 1 + 1 + 1
    assert len(results) == 3 + 2 + 2  # each later layer re-evaluates nothing already known


def test_bad_arguments() -> None:
    space = synthetic_space()
    with pytest.raises(ValueError, match="`buckets` must be an int >= 1"):
        LayerNAS(space, buckets=0)
    with pytest.raises(ValueError, match="no `cost_model` was given"):
        LayerNAS(space, cost="cost")
    with pytest.raises(ValueError, match="`children` must be None or an int"):
        LayerNAS(space, children=0)
    evaluator = SyntheticEvaluator()
    with pytest.raises(ValueError, match=r"the bucketing cost cost of arch \{.*\} is nan; every arch needs a finite"):
        LayerNAS(space, cost_model=lambda a: {"cost": float("nan")}, cost="cost")
    with pytest.raises(ValueError, match="completion_limit"):
        LayerNAS(space, cost_model=evaluator.costs, cost="cost", constraints=[Constraint("cost", upper=8.0)],
                 completion_limit=10)


def test_the_seed_breaks_ties() -> None:
    """Every model scores the same: which one a bucket keeps (and so what is expanded next) is the
    seed's choice, reproducible for one seed and different across seeds."""
    class Flat(SyntheticEvaluator):
        def __call__(self, arch, fidelity):
            return {"accuracy": 1.0}

    flat = Flat(3, 4)
    make = lambda seed: LayerNAS(synthetic_space(3, 4), seed=seed, bucket_key=lambda arch, layer: 0,  # noqa: E731
                                 per_bucket=1)
    runs = {seed: [tuple(r.arch.values()) for r in search(make(seed), flat).done] for seed in range(6)}
    assert runs[0] == [tuple(r.arch.values()) for r in search(make(0), flat).done]
    assert len({tuple(run) for run in runs.values()}) > 1


@settings(max_examples=15, deadline=None)
@given(st.integers(0, 10_000), st.integers(1, 4), st.integers(1, 2), st.integers(1, 3), st.integers(3, 5), st.integers(2, 4))
def test_max_evaluations_bounds_every_run(seed: int, buckets: int, per_bucket: int, passes: int, layers: int,
                                          values: int) -> None:
    from lightning_nas.strategies.layernas import max_evaluations

    evaluator = SyntheticEvaluator(n_layers=layers, n_values=values, seed=seed)
    space = synthetic_space(layers, values)
    strategy = LayerNAS(space, seed=seed, cost_model=evaluator.costs, cost="cost", buckets=buckets,
                        per_bucket=per_bucket, passes=passes)
    assert len(search(strategy, evaluator)) <= max_evaluations(space, buckets, per_bucket, passes)


def test_for_budget_takes_the_most_buckets_that_fit_and_paper_settings_are_the_defaults() -> None:
    from lightning_nas.strategies.layernas import PAPER_SETTINGS, max_evaluations

    evaluator = SyntheticEvaluator(n_layers=5, n_values=4, seed=3)
    space = synthetic_space(5, 4)
    strategy = LayerNAS.for_budget(space, 60, cost_model=evaluator.costs, cost="cost")
    plan = strategy.plan
    assert (plan["per_bucket"], plan["passes"]) == (1, 2) and strategy.buckets == plan["buckets"]
    assert max_evaluations(space, plan["buckets"], 1, 2) <= 60 < max_evaluations(space, plan["buckets"] + 1, 1, 2)
    assert len(search(strategy, evaluator)) <= 60
    paper = LayerNAS(space, cost_model=evaluator.costs, cost="cost")
    assert {"buckets": paper.buckets, "per_bucket": paper.per_bucket, "passes": paper.passes} == PAPER_SETTINGS
    assert paper.plan is None
    with pytest.raises(ValueError, match="below the worst case of the smallest search"):
        LayerNAS.for_budget(space, 5, cost_model=evaluator.costs, cost="cost")
    with pytest.raises(ValueError, match="needs a bucketing `cost`"):
        LayerNAS.for_budget(space, 60)
    with pytest.raises(ValueError, match="`buckets` is what for_budget chooses"):
        LayerNAS.for_budget(space, 60, cost_model=evaluator.costs, cost="cost", buckets=3)
    with pytest.raises(ValueError, match="`evaluations` must be an int >= 1"):
        LayerNAS.for_budget(space, 0, cost_model=evaluator.costs, cost="cost")
