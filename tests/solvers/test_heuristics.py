"""BCFW (BINAS Algorithm 1) and regularised evolution: honest feasibility, never better than the
proven MILP optimum, Theorem 3.3's sparsity, determinism, bounded failure."""

from __future__ import annotations

import json

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from lightning_nas.bilinear import BilinearTable
from lightning_nas.solvers import InfeasibleError, Limit, SearchFailedError, search_constrained
from lightning_nas.spaces import Decision, SearchSpace
from lightning_nas.spaces.staged import StagedSpace


def check_on_simplices(result, staged, can_be_active):
    alpha, beta = result.relaxed
    assert (alpha >= 0).all() and (beta >= 0).all()
    for s, stage in enumerate(staged.stages):
        assert beta[s, : len(stage.depths)].sum() == pytest.approx(1.0, abs=1e-7)
        for b in range(stage.num_blocks):
            if can_be_active[s, b]:
                assert alpha[s, b].sum() == pytest.approx(1.0, abs=1e-7)


def split_groups(result, staged, can_be_active):
    """(number of α-groups, number of β-groups) with more than one non-zero, and the largest support."""
    alpha, beta = result.relaxed
    supports_a = [int((alpha[s, b] > 1e-9).sum()) for s in range(staged.num_stages) for b in range(staged.max_blocks) if can_be_active[s, b]]
    supports_b = [int((beta[s, : len(stage.depths)] > 1e-9).sum()) for s, stage in enumerate(staged.stages)]
    return sum(n > 1 for n in supports_a), sum(n > 1 for n in supports_b), max(supports_a + supports_b)


@settings(max_examples=30, deadline=None)
@given(seed=st.integers(0, 2**31 - 1), q=st.floats(0, 1), p=st.floats(0.1, 0.9))
def test_bcfw_is_honest_never_beats_milp_and_is_sparse(inst, seed, q, p):
    space, staged, acc, (lat,), _ = inst.random_instance(seed)
    _, values = inst.enumerate_values(space, [acc, lat])
    limit = inst.midpoint_limit(values[:, 1], q)
    if limit is None:
        return
    exact = search_constrained(acc, Limit(lat, upper=limit))
    result = search_constrained(acc, Limit(lat, upper=limit), method="bcfw", seed=seed % 1000, p=p)
    truly_feasible = inst.brute_value(lat, result.arch) <= limit
    assert result.feasible == truly_feasible and result.status == ("feasible" if truly_feasible else "infeasible")
    assert result.objective == pytest.approx(inst.brute_value(acc, result.arch), abs=1e-12)
    if result.feasible:
        assert result.objective <= exact.objective + 1e-12
    # The fractional point: on the simplices, meets the limit, and Theorem 3.3's sparsity.
    can_be_active = np.array([[b < max(stage.depths) for b in range(staged.max_blocks)] for stage in staged.stages])
    check_on_simplices(result, staged, can_be_active)
    n_alpha, n_beta, widest = split_groups(result, staged, can_be_active)
    assert n_alpha <= 1 and n_beta <= 1 and widest <= 2
    assert result.details["split_groups"] == {"alpha": n_alpha, "beta": n_beta}
    assert result.details["relaxed_feasible"] and result.details["relaxed_resources"]["latency"] <= limit + 1e-7
    # Monotone ascent from the start (the best feasible among the objective's best and the lightest arch).
    starts = [acc.extreme(largest=True)[1], lat.extreme()[1]]
    start_value = max(acc(a) for a in starts if lat(a) <= limit + 1e-7)
    assert result.details["relaxed_objective"] >= start_value - 1e-12
    # "support" rounding picks among the split groups' non-zeros, so it is never worse than a feasible argmax.
    support = search_constrained(acc, Limit(lat, upper=limit), method="bcfw", seed=seed % 1000, p=p, rounding="support")
    if result.feasible:
        assert support.feasible and support.objective >= result.objective - 1e-12
    if support.feasible:
        assert support.objective <= exact.objective + 1e-12


def paper_size_instance(seed: int):
    decisions = []
    for s in range(5):
        decisions += [Decision(f"stage{s}.block{b}.config", tuple(range(12)), 0) for b in range(4)]
        decisions.append(Decision(f"stage{s}.depth", (2, 3, 4), 4))
    staged = StagedSpace.from_space(SearchSpace(decisions))
    rng = np.random.default_rng(seed)
    acc = BilinearTable(staged, 0.7, rng.uniform(-5e-3, 1e-2, (5, 4, 12)), rng.uniform(-5e-3, 1e-2, (5, 3)), name="accuracy")
    lat = BilinearTable(staged, 5.0, rng.uniform(0.5, 2.0, (5, 4, 12)), name="latency", unit="ms")
    return staged, acc, lat


def test_bcfw_sparsity_at_paper_size_where_groups_do_split():
    staged, acc, lat = paper_size_instance(0)
    lo, hi = lat.extreme()[0], lat.extreme(largest=True)[0]
    can_be_active = np.ones((5, 4), dtype=bool)
    splits = 0
    for i, frac in enumerate((0.2, 0.4, 0.6)):
        limit = lo + frac * (hi - lo)
        result = search_constrained(acc, Limit(lat, upper=limit), method="bcfw", seed=i)
        exact = search_constrained(acc, Limit(lat, upper=limit))
        check_on_simplices(result, staged, can_be_active)
        n_alpha, n_beta, widest = split_groups(result, staged, can_be_active)
        assert n_alpha <= 1 and n_beta <= 1 and widest <= 2
        splits += n_alpha + n_beta
        if result.feasible:
            assert result.objective <= exact.objective + 1e-12
            assert result.objective >= exact.objective - 0.05  # a sensible local optimum, not a random arch
    assert splits > 0  # the sparsity check above was not vacuous
    json.dumps(result.to_dict())


@settings(max_examples=15, deadline=None)
@given(seed=st.integers(0, 2**31 - 1), q1=st.floats(0, 1), q2=st.floats(0, 1))
def test_bcfw_with_two_limits_is_honest(inst, seed, q1, q2):
    space, staged, acc, (lat, flops), _ = inst.random_instance(seed, num_resources=2)
    _, values = inst.enumerate_values(space, [acc, lat, flops])
    u1, u2 = inst.midpoint_limit(values[:, 1], q1), inst.midpoint_limit(values[:, 2], q2)
    if u1 is None or u2 is None:
        return
    feasible = (values[:, 1] <= u1) & (values[:, 2] <= u2)
    limits = [Limit(lat, upper=u1), Limit(flops, upper=u2)]
    if not feasible.any():
        with pytest.raises(InfeasibleError):
            search_constrained(acc, limits, method="bcfw")
        return
    result = search_constrained(acc, limits, method="bcfw", seed=1)
    ok = inst.brute_value(lat, result.arch) <= u1 and inst.brute_value(flops, result.arch) <= u2
    assert result.feasible == ok
    if ok:
        assert result.objective <= values[feasible, 0].max() + 1e-12
    # K = 2 knapsack rows: at most 2 split groups per block of variables.
    can_be_active = np.array([[b < max(stage.depths) for b in range(staged.max_blocks)] for stage in staged.stages])
    check_on_simplices(result, staged, can_be_active)
    n_alpha, n_beta, _ = split_groups(result, staged, can_be_active)
    assert n_alpha <= 2 and n_beta <= 2


@settings(max_examples=20, deadline=None)
@given(seed=st.integers(0, 2**31 - 1), q=st.floats(0, 1), two=st.booleans())
def test_evolution_is_feasible_never_beats_milp_and_is_seeded(inst, seed, q, two):
    space, staged, acc, resources, _ = inst.random_instance(seed, num_resources=2 if two else 1)
    _, values = inst.enumerate_values(space, [acc, *resources])
    uppers = [inst.midpoint_limit(values[:, 1 + k], q) for k in range(len(resources))]
    if any(u is None for u in uppers):
        return
    limits = [Limit(t, upper=u) for t, u in zip(resources, uppers)]
    feasible = np.all(values[:, 1:] <= np.array(uppers), axis=1)
    if not feasible.any():
        with pytest.raises(InfeasibleError):
            search_constrained(acc, limits, method="evolution", cycles=50)
        return
    try:
        result = search_constrained(acc, limits, method="evolution", seed=seed % 100, cycles=200, population=20, sample=5)
    except SearchFailedError:
        return  # allowed: a heuristic may fail, but then it says so
    assert result.feasible and result.status == "feasible"
    assert all(inst.brute_value(t, result.arch) <= u for t, u in zip(resources, uppers))
    assert result.objective <= values[feasible, 0].max() + 1e-12
    assert result.details["evaluations"] == 20 + 200
    again = search_constrained(acc, limits, method="evolution", seed=seed % 100, cycles=200, population=20, sample=5)
    assert again.arch == result.arch and again.objective == result.objective


def test_evolution_finds_the_optimum_of_a_small_space_with_enough_cycles(inst):
    space, staged, acc, (lat,), _ = inst.random_instance(21)
    _, values = inst.enumerate_values(space, [acc, lat])
    limit = inst.midpoint_limit(values[:, 1], 0.5)
    result = search_constrained(acc, Limit(lat, upper=limit), method="evolution", cycles=3000, seed=0)
    assert result.objective == pytest.approx(values[values[:, 1] <= limit, 0].max(), abs=1e-12)


def test_evolution_failure_is_bounded_and_distinct_from_infeasibility(inst):
    # Find limits that some arch meets but none of the informed starts does.
    for seed in range(200):
        space, staged, acc, (lat, flops), _ = inst.random_instance(seed, num_resources=2)
        archs, values = inst.enumerate_values(space, [acc, lat, flops])
        order = np.argsort(values[:, 0])
        target = archs[order[len(order) // 2]]
        u1, u2 = lat(target) + 1e-6, flops(target) + 1e-6
        starts = [acc.extreme(largest=True)[1], lat.extreme()[1], flops.extreme()[1]]
        if all(lat(a) > u1 or flops(a) > u2 for a in starts):
            break
    else:
        pytest.fail("no suitable instance")
    limits = [Limit(lat, upper=u1), Limit(flops, upper=u2)]
    with pytest.raises(SearchFailedError, match="none met the limits"):
        search_constrained(acc, limits, method="evolution", population=3, sample=1, cycles=0)
    assert search_constrained(acc, limits).feasible


def test_heuristic_arguments_are_validated(inst):
    space, staged, acc, (lat,), _ = inst.random_instance(4)
    limit = Limit(lat, upper=1e6)
    for kwargs, message in [
        ({"method": "bcfw", "p": 1.0}, r"`p` \(probability of updating α\) must be in \(0, 1\)"),
        ({"method": "bcfw", "rounding": "nearest"}, "`rounding` must be one of"),
        ({"method": "bcfw", "max_iter": -1}, "`max_iter` must be an int >= 1"),
        ({"method": "bcfw", "max_iter": 0}, "`max_iter` must be an int >= 1"),
        ({"method": "bcfw", "max_iter": True}, "`max_iter` must be an int >= 1"),
        ({"method": "bcfw", "p": float("nan")}, r"`p` \(probability"),
        ({"method": "bcfw", "p": "0.5"}, r"`p` \(probability"),
        ({"method": "bcfw", "seed": True}, "`seed` must be a non-negative int"),
        ({"method": "bcfw", "require_optimal": True}, "needs an exact method"),
        ({"method": "bcfw", "seed": -3}, "`seed` must be a non-negative int"),
        ({"method": "bcfw", "time_limit": 1.0}, "`time_limit` applies to the solver methods"),
        ({"method": "evolution", "population": 1}, "`population` must be an int >= 2"),
        ({"method": "evolution", "population": 4, "sample": 5}, r"`sample` \(5\) must not exceed `population` \(4\)"),
        ({"method": "evolution", "cycles": 2.5}, "`cycles` must be an int >= 0"),
        ({"method": "evolution", "p": 0.5}, "unknown option"),
    ]:
        with pytest.raises(ValueError, match=message):
            search_constrained(acc, limit, **kwargs)
