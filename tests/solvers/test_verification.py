"""``search_constrained(verify=...)``: picks measured against the bounds, the next-best arch on failure."""

from __future__ import annotations

import pytest
from hypothesis import example, given, settings
from hypothesis import strategies as st

from lightning_nas.solvers import InfeasibleError, Limit, pareto_sweep, search_constrained


@settings(max_examples=30, deadline=None)
@given(seed=st.integers(0, 2**31 - 1), q=st.floats(0.1, 0.9))
@example(seed=18, q=0.5)  # two archs 3e-7 apart in accuracy: HiGHS returned the lower as optimal
def test_accepted_pick_measures_within_the_budget_and_is_the_best_the_tightened_model_allows(inst, seed, q):
    space, staged, acc, (lat,), _ = inst.random_instance(seed)
    archs, values = inst.enumerate_values(space, [acc, lat])
    upper = inst.midpoint_limit(values[:, 1], q)
    if upper is None:
        return
    measure = inst.measured_truth(lat, seed)
    calls = []

    def verify(arch):
        calls.append(arch)
        return {"latency": measure(arch)}

    try:
        result = search_constrained(acc, Limit(lat, upper=upper), verify=verify, max_verify=20)
    except InfeasibleError as err:
        # Only when the tightening left no room or the tries ran out: every try really measured over the budget.
        assert all(not t["met"] and t["measured"]["latency"] > upper for t in err.tries)
        return
    tries = result.details["verification"]
    assert len(tries) == len(calls) and tries[-1]["met"] and not any(t["met"] for t in tries[:-1])
    assert result.details["measured"]["latency"] == pytest.approx(measure(result.arch))
    assert measure(result.arch) <= upper
    # The bound the solver saw shrinks strictly with each failed try.
    seen = [t["bounds"]["latency"]["upper"] for t in tries]
    assert all(b < a for a, b in zip(seen, seen[1:]))
    # The pick is the exact optimum under the last bound the solver saw (brute force).
    fits = values[:, 1] <= seen[-1] + 1e-7
    # To HiGHS's tolerances (1e-7 feasibility): a near-tie 3e-7 apart was once returned as optimal.
    assert result.objective == pytest.approx(values[fits, 0].max(), abs=1e-6)


def test_an_exact_model_is_accepted_at_the_first_try(inst):
    space, staged, acc, (lat,), _ = inst.random_instance(3)
    archs, values = inst.enumerate_values(space, [acc, lat])
    upper = inst.midpoint_limit(values[:, 1], 0.5)
    plain = search_constrained(acc, Limit(lat, upper=upper))
    checked = search_constrained(acc, Limit(lat, upper=upper), verify=lambda a: {"latency": inst.brute_value(lat, a)})
    assert checked.arch == plain.arch and len(checked.details["verification"]) == 1


def test_an_under_predicting_model_moves_to_a_cheaper_arch(inst):
    space, staged, acc, (lat,), _ = inst.random_instance(5)
    archs, values = inst.enumerate_values(space, [acc, lat])
    upper = inst.midpoint_limit(values[:, 1], 0.6)
    plain = search_constrained(acc, Limit(lat, upper=upper))
    # Every arch measures 10 % over its prediction: the first pick fails unless it had that much room.
    result = search_constrained(acc, Limit(lat, upper=upper), verify=lambda a: {"latency": 1.1 * inst.brute_value(lat, a)},
                                max_verify=50)
    assert 1.1 * inst.brute_value(lat, result.arch) <= upper
    fits = 1.1 * values[:, 1] <= upper
    assert result.objective <= plain.objective and result.objective <= values[fits, 0].max() + 1e-12


def test_running_out_of_tries_names_the_least_violating_pick(inst):
    space, staged, acc, (lat,), _ = inst.random_instance(7)
    archs, values = inst.enumerate_values(space, [acc, lat])
    upper = inst.midpoint_limit(values[:, 1], 0.7)
    with pytest.raises(InfeasibleError, match=r"verification failed: 2 picks measured outside.*least violating") as err:
        search_constrained(acc, Limit(lat, upper=upper), verify=lambda a: {"latency": upper + 1e-3}, max_verify=2)
    assert len(err.value.tries) == 2


def test_a_budget_no_arch_meets_as_measured_is_refused(inst):
    space, staged, acc, (lat,), _ = inst.random_instance(8)
    archs, values = inst.enumerate_values(space, [acc, lat])
    upper = inst.midpoint_limit(values[:, 1], 0.2)
    with pytest.raises(InfeasibleError, match="no arch is predicted to leave the room"):
        search_constrained(acc, Limit(lat, upper=upper), verify=lambda a: {"latency": inst.brute_value(lat, a) + 1e3},
                           max_verify=50)


def test_pareto_sweep_verifies_each_target(inst):
    space, staged, acc, (lat,), _ = inst.random_instance(11)
    archs, values = inst.enumerate_values(space, [acc, lat])
    targets = [inst.midpoint_limit(values[:, 1], q) for q in (0.3, 0.6, 0.9)]
    measure = inst.measured_truth(lat, 11)
    verify = lambda a: {"latency": measure(a)}  # noqa: E731
    for target, result in zip(sorted(targets), pareto_sweep(acc, lat, targets, verify=verify, max_verify=20)):
        if result.status != "infeasible":
            assert measure(result.arch) <= target and result.details["verification"][-1]["met"]


@pytest.mark.parametrize("verify, max_verify, match", [
    ("latency", 5, "`verify` must be a callable"),
    (lambda a: {"latency": 1.0}, 0, "`max_verify` must be an int >= 1"),
    (lambda a: {"latency": 1.0}, True, "`max_verify` must be an int >= 1"),
    (lambda a: {"flops": 1.0}, 5, r"measurements of \['flops'\], which are not limited"),
    (lambda a: {"latency": float("nan")}, 5, "must be a finite number"),
    (lambda a: 1.0, 5, "must return a mapping"),
    (lambda a: {}, 5, "returned no measurement"),
])
def test_bad_verify_is_refused(inst, verify, max_verify, match):
    space, staged, acc, (lat,), _ = inst.random_instance(2)
    upper = float(lat.extreme(largest=True)[0])
    with pytest.raises(ValueError, match=match):
        search_constrained(acc, Limit(lat, upper=upper), verify=verify, max_verify=max_verify)


def test_verify_without_limits_needs_the_objective(inst):
    space, staged, acc, (lat,), _ = inst.random_instance(2)
    with pytest.raises(ValueError, match="without limits, the objective"):
        search_constrained(acc, [], verify=lambda a: {})
    best = search_constrained(acc, [], top_k=3, verify=lambda a: {acc.name: -inst.brute_value(acc, a)})
    # Measured as the negated model: the pool's third arch is the best measurement.
    assert best.arch == best.pool[2].arch and best.details["evaluations"] == 3
