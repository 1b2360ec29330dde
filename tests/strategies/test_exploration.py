"""Stall detection and the exploration fallback of BO and RANK-NOSH."""

from __future__ import annotations

import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

import lightning_nas.strategies.bo as bo_module
from lightning_nas.strategies.base import Observation
from lightning_nas.strategies.bo import BayesianOptimization
from lightning_nas.strategies.candidates import one_hot
from lightning_nas.strategies.driver import Budget, run_search
from lightning_nas.strategies.exploration import (best_results_at, evaluations_since_improvement, hamming_to,
                                                  lexsort_top, select_batch)
from lightning_nas.strategies.rank_nosh import RankNOSH

sys.path.insert(0, str(Path(__file__).parent))
from synthetic import SyntheticEvaluator, synthetic_space  # noqa: E402

torch.set_num_threads(1)
SMALL = dict(members=3, trunk=(16, 16), branch=16, steps=30)


def obs(number: int, value: float, fidelity: float = 10.0) -> Observation:
    return Observation(number, {"l0": number}, fidelity, value)


def test_evaluations_since_improvement_counts_equivalent_evaluations() -> None:
    assert evaluations_since_improvement([]) == 0.0
    history = [obs(0, 1.0), obs(1, 0.5), obs(2, 2.0), obs(3, 1.0, 2.5), obs(4, 1.5), obs(5, 9.0, 2.5)]
    # Full fidelity 10: the best (2.0) came 3rd; then 0.25 + 1 + 0.25 were spent without beating it
    # (the low-fidelity 9.0 does not count as an improvement).
    assert evaluations_since_improvement(history, 10.0) == pytest.approx(1.5)
    assert evaluations_since_improvement(history[:3], None) == 0.0
    # No full-fidelity result yet: everything spent counts.
    assert evaluations_since_improvement([obs(0, 1.0, 2.5), obs(1, 2.0, 2.5)], 10.0) == pytest.approx(0.5)


def test_hamming_to_counts_differing_decisions() -> None:
    space = synthetic_space()
    archs = [{"l0": 0, "l1": 0, "l2": 0, "l3": 0}, {"l0": 1, "l1": 0, "l2": 0, "l3": 0}, {"l0": 1, "l1": 2, "l2": 3, "l3": 1}]
    x = one_hot(space, archs).numpy()
    assert hamming_to(x, x[0]).tolist() == [0, 1, 4]


def test_best_results_at_keeps_each_archs_best_at_that_fidelity_in_first_measured_order() -> None:
    history = [obs(0, 1.0, 2.5), obs(1, 5.0), obs(2, 3.0, 2.5), Observation(3, {"l0": 0}, 2.5, 4.0),
               Observation(4, {"l0": 2}, 2.5, 3.0)]
    best = best_results_at(history, 2.5)
    assert [(o.arch["l0"], o.value, o.number) for o in best.values()] == [(0, 4.0, 3), (2, 3.0, 2)]  # tie: earlier
    assert [o.number for o in best_results_at(history, 10.0).values()] == [1]


@settings(max_examples=40, deadline=None)
@given(st.lists(st.lists(st.integers(0, 3), min_size=6, max_size=6), min_size=1, max_size=20), st.integers(0, 19))
def test_hamming_to_matches_a_decision_by_decision_count(rows: list[list[int]], which: int) -> None:
    space = synthetic_space(n_layers=6)
    archs = [{f"l{i}": v for i, v in enumerate(row)} for row in rows]
    x = one_hot(space, archs).numpy()
    centre = archs[which % len(archs)]
    distance = hamming_to(x, x[which % len(archs)])
    assert distance.dtype == np.int64
    assert distance.tolist() == [sum(a[k] != centre[k] for k in a) for a in archs]


@settings(max_examples=60, deadline=None)
@given(st.lists(st.floats(-3, 3), min_size=9, max_size=30, unique=True), st.integers(1, 8))
def test_a_ranking_acquisition_keeps_the_whole_batch(values: list[float], count: int) -> None:
    # Not flat, not stalled: exactly the old order (acquisition, then mean), no exploration.
    acq = np.array(values)
    rng = np.random.default_rng(0)
    mean, std, distance = rng.normal(size=len(acq)), rng.uniform(size=len(acq)), rng.integers(0, 4, len(acq))
    chosen, reason = select_batch(acq, mean, std, count, distance=distance)
    assert reason is None
    assert chosen.tolist() == np.lexsort((-mean, -acq))[:count].tolist()


def test_a_flat_acquisition_triggers_trust_region_and_disagreement() -> None:
    acq = np.zeros(10)
    acq[7] = 0.5  # the acquisition ranks one candidate only
    mean = np.arange(10.0)  # the old tie-break would take 9, 8, 6, ...
    std = np.array([0, 0, 0, 0, 0, 5, 0, 0, 0, 1.0])
    distance = np.array([3, 1, 2, 1, 2, 3, 3, 3, 3, 3])
    chosen, reason = select_batch(acq, mean, std, 5, distance=distance)
    assert reason == "flat"
    # 7 by the acquisition; 2 local moves (distance 1: 3 before 1 by mean + std); 2 by disagreement (5, then 9).
    assert chosen.tolist() == [7, 3, 1, 5, 9]
    # Without an incumbent every exploratory place goes to disagreement.
    assert select_batch(acq, mean, std, 3, distance=None)[0].tolist() == [7, 5, 9]


def test_std_given_as_a_function_is_computed_only_for_exploratory_places() -> None:
    acq = np.zeros(10)
    acq[7] = 0.5
    mean = np.arange(10.0)
    std = np.array([0, 0, 0, 0, 0, 5, 0, 0, 0, 1.0])
    distance = np.array([3, 1, 2, 1, 2, 3, 3, 3, 3, 3])
    calls = []

    def lazy() -> np.ndarray:
        calls.append(1)
        return std

    # An exploratory batch: the same choice as with the array, the function called once.
    assert select_batch(acq, mean, lazy, 5, distance=distance)[0].tolist() == \
        select_batch(acq, mean, std, 5, distance=distance)[0].tolist()
    assert calls == [1]
    # A batch the acquisition, then the mean, fills without exploratory places (not stalled): never called.
    assert select_batch(acq, mean, lazy, 5, distance=distance, flat="exploit")[0].tolist() == [7, 9, 8, 6, 5]
    assert calls == [1]
    with pytest.raises(ValueError, match="`std` must have one entry per candidate"):
        select_batch(acq, mean, lambda: std[:3], 5, distance=distance)


def test_a_fallback_acquisition_fills_what_a_flat_one_leaves_then_exploration() -> None:
    acq, mean = np.zeros(8), np.zeros(8)
    std = np.array([0, 0, 0, 0, 0, 0, 0, 1.0])
    distance = np.array([2, 2, 2, 2, 2, 1, 2, 2])
    fallback = np.array([0, 0.5, 0, 1.0, 0, 0, 0, 0])  # ranks two candidates: 3, then 1
    chosen, reason = select_batch(acq, mean, std, 4, distance=distance, fallback=fallback)
    assert reason == "flat" and chosen.tolist() == [3, 1, 5, 7]
    with pytest.raises(ValueError, match="`fallback` must have one entry per candidate"):
        select_batch(acq, mean, std, 4, fallback=fallback[:2])


def test_stalled_batches_explore_a_share_and_respect_feasibility() -> None:
    acq = np.linspace(1.0, 0.1, 10)
    mean, std = np.zeros(10), np.linspace(0.0, 1.0, 10)
    distance = np.array([2, 2, 2, 2, 2, 2, 2, 2, 1, 1])
    feasible = np.ones(10, dtype=bool)
    feasible[9] = False
    chosen, reason = select_batch(acq, mean, std, 4, distance=distance, feasible=feasible, stalled=True, explore=0.5)
    assert reason == "stalled"
    assert chosen.tolist() == [0, 1, 8, 7]  # 2 by acquisition, the feasible neighbour, the most disputed feasible
    assert select_batch(acq, mean, std, 4, distance=distance, stalled=True, explore=0.0) == (pytest.approx([0, 1, 2, 3]), None)
    with pytest.raises(ValueError, match="`explore` must be in"):
        select_batch(acq, mean, std, 4, explore=1.5)
    with pytest.raises(ValueError, match="`std` must have one entry per candidate"):
        select_batch(acq, mean, std[:3], 4)


def test_bo_with_a_flat_acquisition_explores_around_the_incumbent(monkeypatch) -> None:
    monkeypatch.setattr(bo_module, "acquisition", lambda predictions, *args: torch.zeros(predictions.shape[1]))
    strategy = BayesianOptimization(synthetic_space(), seed=0, batch_size=4, initial=4, stall_window=None, **SMALL)
    run_search(strategy, SyntheticEvaluator(), objective="accuracy", budget=Budget(evaluations=12))
    assert [reason for _, reason in strategy.explorations] == ["flat", "flat"]
    # The second batch (after the first fit) holds two neighbours of the best of the first four.
    best = max(strategy.history[:4], key=lambda o: o.value).arch
    second = [o.arch for o in strategy.history[4:8]]
    assert sum(sum(a[k] != best[k] for k in best) == 1 for a in second) >= 2


def test_bo_does_not_explore_while_the_acquisition_ranks_and_the_search_progresses() -> None:
    strategy = BayesianOptimization(synthetic_space(), seed=0, batch_size=4, initial=4, acquisition="ucb", **SMALL)
    run_search(strategy, SyntheticEvaluator(), objective="accuracy", budget=Budget(evaluations=12))
    assert strategy.explorations == []


def test_stalls_switch_rank_nosh_and_bo_to_exploration_until_the_best_improves() -> None:
    evaluator = SyntheticEvaluator()
    rank = RankNOSH(synthetic_space(), seed=1, levels=(2.5, 10.0), new_per_round=4, stall_window=0.5, **SMALL)
    run_search(rank, evaluator, objective="accuracy", budget=Budget(evaluations=30))
    assert rank.explorations and {r for _, r in rank.explorations} == {"stalled"}
    never = RankNOSH(synthetic_space(), seed=1, levels=(2.5, 10.0), new_per_round=4, stall_window=None, **SMALL)
    run_search(never, evaluator, objective="accuracy", budget=Budget(evaluations=30))
    assert never.explorations == []
    bo = BayesianOptimization(synthetic_space(), seed=0, batch_size=4, initial=4, acquisition="ucb", stall_window=1.0,
                              **SMALL)
    run_search(bo, evaluator, objective="accuracy", budget=Budget(evaluations=20))
    assert "stalled" in {r for _, r in bo.explorations}


def test_bad_stall_arguments() -> None:
    for make in (lambda **k: BayesianOptimization(synthetic_space(), **k),
                 lambda **k: RankNOSH(synthetic_space(), **k)):
        with pytest.raises(ValueError, match="`stall_window` must be None or a finite number > 0"):
            make(stall_window=0)
        with pytest.raises(ValueError, match=r"`explore` must be a number in \[0, 1\]"):
            make(explore=-0.1)


@settings(max_examples=200, deadline=None)
@given(st.integers(1, 40), st.integers(0, 45), st.integers(1, 4), st.integers(0, 2**32 - 1))
def test_lexsort_top_equals_the_head_of_a_full_lexsort(n: int, count: int, n_keys: int, seed: int) -> None:
    # Few distinct values per key, so that ties (at the threshold, in every key) are the common case.
    rng = np.random.default_rng(seed)
    keys = [rng.integers(0, int(rng.integers(1, 4)), n).astype(float) if rng.random() < 0.7 else rng.normal(size=n)
            for _ in range(n_keys)]
    if rng.random() < 0.3:
        keys[-1] = keys[-1] > 0  # a boolean primary key, as the feasibility mask
    assert lexsort_top(keys, count).tolist() == np.lexsort(keys)[:count].tolist()


@settings(max_examples=100, deadline=None)
@given(st.integers(1, 30), st.integers(0, 35), st.integers(0, 2**32 - 1))
def test_lexsort_top_orders_nan_as_np_lexsort(n: int, count: int, seed: int) -> None:
    # A diverged surrogate predicts NaN: it must not shorten the batch (np.lexsort puts NaN last).
    rng = np.random.default_rng(seed)
    keys = [rng.integers(0, 3, n).astype(float) for _ in range(3)]
    for k in keys:
        k[rng.random(n) < 0.4] = np.nan
    assert lexsort_top(keys, count).tolist() == np.lexsort(keys)[:count].tolist()


def test_lexsort_top_refuses_keys_of_different_lengths() -> None:
    with pytest.raises(ValueError, match=r"`keys` must be 1-D arrays of one length; got shapes \[\(3,\), \(2,\)\]"):
        lexsort_top([np.zeros(3), np.zeros(2)], 1)


@pytest.mark.parametrize("stall_window", [0.5, None])
def test_a_stalled_multi_fidelity_bo_promotes_its_best_cheap_results(stall_window) -> None:
    bo = BayesianOptimization(synthetic_space(), seed=0, fidelities=(2.5, 10.0), p=4, q=2, f=2, initial=4,
                              stall_window=stall_window, **SMALL)
    first = bo.ask(4)
    assert {p.fidelity for p in first} == {2.5}
    values = [3.0, 1.0, 4.0, 2.0]
    for i, (p, v) in enumerate(zip(first, values)):
        bo.tell(Observation(i, p.arch, 2.5, v))
    # The second iteration adds the q = 2 high-fidelity places; with no high-fidelity result yet,
    # 1.0 equivalent evaluations have passed without improvement.
    high = [p.arch for p in bo.ask(6) if p.fidelity == 10.0]
    assert len(high) == 2
    if stall_window is not None:  # ceil(0.5 · 2) = 1 place by measured result: the best cheap one
        assert high[0] == first[2].arch
    assert bo._best_measured(2.5, 10.0, 4) == [p.arch for p in (first[2], first[0], first[3], first[1])
                                                if p.arch not in high]
