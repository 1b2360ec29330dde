"""Exact constrained search (MILP through Pyomo/HiGHS) against brute-force enumeration; infeasibility
messages; Pareto sweeps; input validation; the MIQCP model."""

from __future__ import annotations

import json
import math
import re

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from lightning_nas.bilinear import BilinearTable
from lightning_nas.solvers import (
    ConstrainedProblem,
    InfeasibleError,
    Limit,
    SearchResult,
    available_solvers,
    pareto_sweep,
    search_constrained,
)
from lightning_nas.solvers.milp import MilpModel, build_miqcp, dominated_configs, set_miqcp_arch
from lightning_nas.spaces import mobilenet_supernet
from lightning_nas.spaces.staged import StagedSpace

# SCIP (pyscipopt, a dev dependency) proves the MIQCP optimal and has no size limit; a size-limited
# Gurobi or CPLEX installed next to it must not be picked.
MIQCP_SOLVER = "scip_direct"


def numbers_in(message: str) -> list[float]:
    return [float(x) for x in re.findall(r"-?\d+\.\d+(?:e-?\d+)?", message)]


@settings(max_examples=40, deadline=None)
@given(seed=st.integers(0, 2**31 - 1), q=st.floats(0, 1), formulation=st.sampled_from(["compact", "alpha"]))
def test_milp_equals_brute_force_with_one_limit(inst, seed, q, formulation):
    space, staged, acc, (lat,), _ = inst.random_instance(seed)
    archs, values = inst.enumerate_values(space, [acc, lat])
    limit = inst.midpoint_limit(values[:, 1], q)
    if limit is None:
        return
    feasible = values[:, 1] <= limit
    result = search_constrained(acc, Limit(lat, upper=limit), formulation=formulation)
    assert result.status == "optimal" and result.feasible and result.method == "milp"
    assert result.objective == pytest.approx(values[feasible, 0].max(), abs=1e-12)
    # The reported values are the tables' values of the returned arch, and it meets the limit.
    assert result.objective == pytest.approx(inst.brute_value(acc, result.arch), abs=1e-12)
    assert result.resources["latency"] == pytest.approx(inst.brute_value(lat, result.arch), abs=1e-12)
    assert result.resources["latency"] <= limit
    assert result.gap is not None and result.gap <= 1e-9
    assert space.validate(result.arch) == result.arch


@settings(max_examples=30, deadline=None)
@given(seed=st.integers(0, 2**31 - 1), q1=st.floats(0, 1), q2=st.floats(0, 1), with_lower=st.booleans())
def test_milp_equals_brute_force_with_two_limits(inst, seed, q1, q2, with_lower):
    space, staged, acc, (lat, flops), _ = inst.random_instance(seed, num_resources=2)
    archs, values = inst.enumerate_values(space, [acc, lat, flops])
    upper_lat = inst.midpoint_limit(values[:, 1], q1)
    upper_flops = inst.midpoint_limit(values[:, 2], q2)
    if upper_lat is None or upper_flops is None:
        return
    lower_lat = inst.midpoint_limit(values[:, 1], q1 / 2) if with_lower else None
    if lower_lat is not None and lower_lat >= upper_lat:
        lower_lat = None
    feasible = (values[:, 1] <= upper_lat) & (values[:, 2] <= upper_flops)
    if lower_lat is not None:
        feasible &= values[:, 1] >= lower_lat
    limits = [Limit(lat, upper=upper_lat, lower=lower_lat), Limit(flops, upper=upper_flops)]
    if not feasible.any():
        with pytest.raises(InfeasibleError):
            search_constrained(acc, limits)
        return
    result = search_constrained(acc, limits)
    assert result.status == "optimal" and result.feasible
    assert result.objective == pytest.approx(values[feasible, 0].max(), abs=1e-12)
    assert result.resources["latency"] <= upper_lat and result.resources["flops"] <= upper_flops
    if lower_lat is not None:
        assert result.resources["latency"] >= lower_lat


@settings(max_examples=20, deadline=None)
@given(seed=st.integers(0, 2**31 - 1), q=st.floats(0, 1))
def test_log_error_objective_milp_equals_brute_force_over_predicted_accuracy(inst, seed, q):
    space, staged, additive, (lat,), _ = inst.random_instance(seed)
    # −log(error) gains around 3 nats (accuracy ≈ 0.95), spread like a fitted table's.
    acc = BilinearTable(staged, 3.0, additive.block * 40, additive.depth * 40, name="accuracy", link="log_error")
    archs, values = inst.enumerate_values(space, [additive, lat])
    predicted = 1 - np.exp(-(3.0 + (values[:, 0] - additive.constant) * 40))
    limit = inst.midpoint_limit(values[:, 1], q)
    if limit is None:
        return
    result = search_constrained(acc, Limit(lat, upper=limit))
    assert result.status == "optimal" and result.feasible
    assert result.objective == pytest.approx(predicted[values[:, 1] <= limit].max(), abs=1e-12)
    assert result.objective == pytest.approx(acc.predict(result.arch), abs=1e-15)
    with pytest.raises(ValueError, match="link 'log_error'"):
        Limit(acc, lower=0.9)  # a linked table cannot be a limit: the solvers bound the additive form


@settings(max_examples=15, deadline=None)
@given(seed=st.integers(0, 2**31 - 1), method=st.sampled_from(["milp", "bcfw", "evolution"]))
def test_infeasible_single_limit_reports_the_smallest_achievable_value(inst, seed, method):
    space, staged, acc, (lat,), _ = inst.random_instance(seed)
    _, values = inst.enumerate_values(space, [lat])
    smallest = values[:, 0].min()
    with pytest.raises(InfeasibleError, match="smallest achievable latency is") as err:
        search_constrained(acc, Limit(lat, upper=smallest - 0.01), method=method)
    assert err.value.resource == "latency" and err.value.bound == "upper"
    assert err.value.achievable == pytest.approx(smallest, abs=1e-12)
    assert any(v == pytest.approx(smallest, abs=1e-12) for v in numbers_in(str(err.value)))
    # Exactly at the smallest value it is feasible.
    assert search_constrained(acc, Limit(lat, upper=float(smallest) + 1e-12)).feasible


def test_infeasible_lower_bound_reports_the_largest_achievable_value(inst):
    space, staged, acc, (lat,), _ = inst.random_instance(3)
    _, values = inst.enumerate_values(space, [lat])
    with pytest.raises(InfeasibleError, match="largest achievable latency is") as err:
        search_constrained(acc, Limit(lat, lower=values.max() + 1.0))
    assert err.value.achievable == pytest.approx(values.max(), abs=1e-12)


@settings(max_examples=20, deadline=None)
@given(seed=st.integers(0, 2**31 - 1), q=st.floats(0, 0.25))
def test_jointly_infeasible_limits_report_the_minimum_subject_to_the_others(inst, seed, q):
    space, staged, acc, (lat, flops), _ = inst.random_instance(seed, num_resources=2)
    _, values = inst.enumerate_values(space, [lat, flops])
    upper_flops = inst.midpoint_limit(values[:, 1], q)
    if upper_flops is None:
        return
    meets_flops = values[:, 1] <= upper_flops
    best_lat = values[meets_flops, 0].min()  # the smallest latency subject to the flops limit
    # Below best_lat but not below the unconstrained minimum: each limit alone is reachable.
    upper_lat = (best_lat + values[:, 0].min()) / 2 if best_lat - values[:, 0].min() > 1e-5 else None
    if upper_lat is None:
        return
    with pytest.raises(InfeasibleError, match="subject to the other limits") as err:
        search_constrained(acc, [Limit(lat, upper=upper_lat), Limit(flops, upper=upper_flops)])
    assert err.value.resource in ("latency", "flops")
    if err.value.resource == "latency":
        assert err.value.achievable == pytest.approx(best_lat, abs=1e-9)
    else:
        best_flops = values[values[:, 0] <= upper_lat, 1].min()
        assert err.value.achievable == pytest.approx(best_flops, abs=1e-9)
    assert any(v == pytest.approx(err.value.achievable, abs=1e-9) for v in numbers_in(str(err.value)))


@settings(max_examples=15, deadline=None)
@given(seed=st.integers(0, 2**31 - 1))
def test_pareto_sweep_is_monotone_and_reports_infeasible_targets(inst, seed):
    space, staged, acc, (lat,), _ = inst.random_instance(seed)
    _, values = inst.enumerate_values(space, [acc, lat])
    lo, hi = values[:, 1].min(), values[:, 1].max()
    targets = [hi + 1.0, lo - 1.0, *np.linspace(lo, hi, 6)[::-1]]
    results = pareto_sweep(acc, lat, targets)
    assert [r.details["target"] for r in results] == sorted(targets)
    first = results[0]
    assert first.status == "infeasible" and first.arch is None and first.objective is None
    assert "smallest achievable latency" in first.message
    feasible = [r for r in results[1:]]
    assert all(r.status == "optimal" and r.feasible for r in feasible)
    objectives = [r.objective for r in feasible]
    assert all(b >= a - 1e-12 for a, b in zip(objectives, objectives[1:]))
    # Each point is the brute-force optimum for its target (the reused model sees the new bound).
    for r in feasible:
        target = r.details["target"]
        assert r.resources["latency"] <= target + 1e-7
        best = values[values[:, 1] <= target + 1e-7, 0].max()
        assert r.objective == pytest.approx(best, abs=1e-9)
    assert feasible[-1].objective == pytest.approx(values[:, 0].max(), abs=1e-12)
    json.dumps([r.to_dict() for r in results])


def test_free_labels_come_from_base_and_unused_blocks_too(inst):
    space = inst.make_space([3, 2], 3, [(1, 2), (1, 2)], extra=True)
    staged = StagedSpace.from_space(space)
    rng = np.random.default_rng(0)
    acc = inst.random_table(staged, rng, "accuracy", "accuracy")
    lat = inst.random_table(staged, rng, "latency", "resource")
    base = dict(space.default(), **{"head.width": 8, "stage0.block2.config": "c2"})
    result = search_constrained(acc, Limit(lat, upper=1e6), base=base)
    assert result.arch["head.width"] == 8 and result.arch["stage0.block2.config"] == "c2"
    assert result.objective == pytest.approx(acc.extreme(largest=True)[0], abs=1e-12)


def test_two_decisions_per_block_on_the_mobilenet_space(inst):
    staged = StagedSpace.from_space(mobilenet_supernet().space)
    rng = np.random.default_rng(1)
    acc = inst.random_table(staged, rng, "accuracy", "accuracy")
    lat = inst.random_table(staged, rng, "latency", "resource")
    lo, hi = lat.extreme()[0], lat.extreme(largest=True)[0]
    result = search_constrained(acc, Limit(lat, upper=(lo + hi) / 2))
    assert result.status == "optimal" and result.resources["latency"] <= (lo + hi) / 2
    assert result.objective == pytest.approx(acc.predict(result.arch), abs=1e-12)
    # Any heuristic's feasible answer is no better than the proven optimum.
    other = search_constrained(acc, Limit(lat, upper=(lo + hi) / 2), method="evolution", cycles=300)
    assert other.objective <= result.objective + 1e-12


def test_highs_option_names_and_time_limit(inst):
    space, staged, acc, (lat,), _ = inst.random_instance(5)
    _, values = inst.enumerate_values(space, [acc, lat])
    limit = inst.midpoint_limit(values[:, 1], 0.5)
    a = search_constrained(acc, Limit(lat, upper=limit), solver="highs")
    b = search_constrained(acc, Limit(lat, upper=limit), solver="appsi_highs", time_limit=30.0)
    assert a.objective == pytest.approx(b.objective, abs=1e-12) and a.solver == "highs"
    assert "build_seconds" in b.details and b.solve_seconds >= b.details["solver_seconds"]


def test_result_to_dict_is_json(inst):
    space, staged, acc, (lat,), _ = inst.random_instance(7)
    result = search_constrained(acc, (lat, 1e6))
    data = json.loads(json.dumps(result.to_dict()))
    assert data["arch"] == result.arch and data["limits"] == {"latency": {"lower": None, "upper": 1e6, "unit": "ms"}}
    assert set(data) >= {"arch", "objective", "resources", "limits", "method", "solver", "status", "gap", "solve_seconds"}
    assert isinstance(result, SearchResult)


def test_bad_inputs_are_clear_errors(inst):
    space, staged, acc, (lat,), rng = inst.random_instance(11)
    other_space = inst.make_space([1, 1], 2, [None, None])
    foreign = inst.random_table(StagedSpace.from_space(other_space), rng, "latency", "resource")
    with pytest.raises(ValueError, match="made for another space"):
        search_constrained(acc, Limit(foreign, upper=1.0))
    with pytest.raises(ValueError, match="finite number"):
        Limit(lat, upper=math.nan)
    with pytest.raises(ValueError, match="finite number"):
        search_constrained(acc, (lat, float("inf")))
    with pytest.raises(ValueError, match="`method` must be one of"):
        search_constrained(acc, Limit(lat, upper=10.0), method="annealing")
    with pytest.raises(ValueError, match="must not exceed `upper`"):
        Limit(lat, upper=1.0, lower=2.0)
    with pytest.raises(ValueError, match="needs an `upper` or a `lower`"):
        Limit(lat)
    with pytest.raises(ValueError, match="unique table names"):
        search_constrained(acc, [Limit(lat, upper=10.0), Limit(lat, upper=11.0)])
    with pytest.raises(ValueError, match="unknown option"):
        search_constrained(acc, Limit(lat, upper=10.0), population=3)
    with pytest.raises(ValueError, match="`formulation` must be one of"):
        search_constrained(acc, Limit(lat, upper=10.0), formulation="big-m")
    with pytest.raises(ValueError, match="solver 'nope' is not available"):
        search_constrained(acc, Limit(lat, upper=1e6), solver="nope")
    with pytest.raises(ValueError, match="`objective` must be a BilinearTable"):
        search_constrained({"a": 1}, Limit(lat, upper=10.0))
    with pytest.raises(ValueError, match="`targets` must be finite"):
        pareto_sweep(acc, lat, [1.0, math.nan])


# -- MIQCP -------------------------------------------------------------------------------------
@settings(max_examples=15, deadline=None)
@given(seed=st.integers(0, 2**31 - 1))
def test_miqcp_expressions_equal_the_tables_at_any_arch(inst, seed):
    pyo = pytest.importorskip("pyomo.environ")
    space, staged, acc, (lat, flops), rng = inst.random_instance(seed, num_resources=2)
    problem = ConstrainedProblem(acc, [Limit(lat, upper=1e6), Limit(flops, upper=1e6)])
    model, exprs = build_miqcp(problem)
    for arch in space.sample_many(5, seed):
        configs, depths = staged.indices(arch)
        set_miqcp_arch(model, problem, configs, depths)
        for table in (acc, lat, flops):
            assert pyo.value(exprs[table.name]) == pytest.approx(inst.brute_value(table, arch), abs=1e-12)
        assert all(abs(pyo.value(c.body) - pyo.value(c.upper)) < 1e-12 for c in model.one_config.values())
    # The constraints are genuinely quadratic (products of α and β) when some block depends on the depth.
    if (problem.can_be_active & ~problem.always_active).any():
        from pyomo.repn import generate_standard_repn

        repn = generate_standard_repn(model.limit_upper[0].body, quadratic=True)
        assert len(repn.quadratic_vars) > 0


def test_miqcp_with_highs_is_an_informative_error(inst):
    space, staged, acc, (lat,), _ = inst.random_instance(2)
    for solver in ("appsi_highs", "highs", "cbc", "glpk"):
        with pytest.raises(ValueError, match=r"cannot solve method='miqcp'.*use method='milp'.*'scip_direct' \(free, "
                                             r"`pip install pyscipopt`\).*installed: \["):
            search_constrained(acc, Limit(lat, upper=1e6), method="miqcp", solver=solver)


def test_the_miqcp_test_runs_on_scip():
    assert MIQCP_SOLVER in available_solvers(), "pyscipopt (a dev dependency) must be installed: the MIQCP tests need SCIP"


@settings(max_examples=5, deadline=None)
@given(seed=st.integers(0, 2**31 - 1), q=st.floats(0, 1))
def test_miqcp_equals_milp(inst, seed, q):
    space, staged, acc, (lat,), _ = inst.random_instance(seed)
    _, values = inst.enumerate_values(space, [lat])
    limit = inst.midpoint_limit(values[:, 0], q)
    if limit is None:
        return
    a = search_constrained(acc, Limit(lat, upper=limit), method="miqcp", solver=MIQCP_SOLVER)
    b = search_constrained(acc, Limit(lat, upper=limit))
    assert a.status == "optimal" and a.solver == "scip_direct"
    assert a.objective == pytest.approx(b.objective, abs=1e-9)


def test_miqcp_picks_an_installed_miqcp_solver_by_default(inst):
    space, staged, acc, (lat,), _ = inst.random_instance(3)
    limit = float(np.median(lat.predict_many(space.sample_many(50, 0))))
    a = search_constrained(acc, Limit(lat, upper=limit), method="miqcp")
    assert a.solver == MIQCP_SOLVER and a.status == "optimal"
    assert a.objective == pytest.approx(search_constrained(acc, Limit(lat, upper=limit)).objective, abs=1e-9)


def test_model_is_reused_across_targets(inst):
    space, staged, acc, (lat,), _ = inst.random_instance(13)
    problem = ConstrainedProblem(acc, Limit(lat, upper=1e6))
    model = MilpModel(problem)
    first = model.solve()
    lo = lat.extreme()[0]
    model.set_limit(0, upper=lo + 1e-9)
    second = model.solve()
    assert second["status"] == "optimal"
    assert float(lat.predict_indices(second["configs"], second["depths"])) <= lo + 1e-7
    assert first["value"] >= second["value"]
    with pytest.raises(ValueError, match="built without a `lower` bound"):
        model.set_limit(0, lower=1.0)
    for bad in (math.nan, math.inf, "3"):
        with pytest.raises(ValueError, match=r"`upper` bound of limit 0 \('latency'\) must be a finite number"):
            model.set_limit(0, upper=bad)
    with pytest.raises(ValueError, match="`k` must be the index of one of the 1 limits"):
        model.set_limit(1, upper=1.0)


def test_a_model_built_for_another_problem_is_refused(inst):
    space, staged, acc, (lat, flops), _ = inst.random_instance(13, num_resources=2)
    model = MilpModel(ConstrainedProblem(acc, Limit(lat, upper=1e6)))
    # The same tables and bound kinds: the model is reused with the new bound.
    lo = lat.extreme()[0]
    reused = search_constrained(acc, Limit(lat, upper=lo + 1e-9), model=model)
    assert reused.resources["latency"] <= lo + 1e-7 and reused.status == "optimal"
    # Another table, another bound kind, another formulation: it would answer another question.
    for limits, kwargs in [(Limit(flops, upper=1e6), {}), (Limit(lat, lower=0.0), {}), (Limit(lat, upper=1e6), {"formulation": "alpha"})]:
        with pytest.raises(ValueError, match="`model` was built for another problem|differs from the reused model"):
            search_constrained(acc, limits, model=model, **kwargs)


def test_pareto_sweep_other_limits_are_checked(inst):
    space, staged, acc, (lat, flops), _ = inst.random_instance(13, num_resources=2)
    with pytest.raises(ValueError, match="each limit must be a Limit or a"):
        pareto_sweep(acc, lat, [1e6], other_limits=[flops])
    with pytest.raises(ValueError, match="`targets` must be a sequence of finite numbers"):
        pareto_sweep(acc, lat, ["fast"])


def test_tables_loaded_for_an_equal_structure_are_accepted(inst, tmp_path):
    space, staged, acc, (lat,), _ = inst.random_instance(17)
    copy = BilinearTable.load(lat.save(tmp_path / "lat.json"), StagedSpace.from_space(space))
    a = search_constrained(acc, Limit(copy, upper=1e6))
    assert a.objective == pytest.approx(acc.extreme(largest=True)[0], abs=1e-12)


def test_dominated_configs_by_hand():
    # One block, 4 configs; objective (larger better) and one upper-bounded resource (smaller better).
    acc = np.array([0.1, 0.2, 0.2, 0.05]).reshape(1, 1, 4)
    lat = np.array([1.0, 1.0, 1.0, 0.5]).reshape(1, 1, 4)
    dominated = dominated_configs([(acc, +1), (lat, -1)])[0, 0]
    # c0 is beaten by c1 (more accurate, same latency); c2 ties c1 exactly (the first is kept); c3 is cheapest.
    assert dominated.tolist() == [True, False, True, False]
    # With both bounds on the resource, only exact ties on it allow dominance.
    assert dominated_configs([(acc, +1), (lat, 0)])[0, 0].tolist() == [True, False, True, False]
    assert not dominated_configs([(acc, +1), (-lat, 0)])[0, 0][3]


@settings(max_examples=15, deadline=None)
@given(seed=st.integers(0, 2**31 - 1), q=st.floats(0, 1))
def test_pruning_dominated_configs_keeps_the_optimum(inst, seed, q):
    space, staged, acc, (lat,), _ = inst.random_instance(seed)
    lo, hi = lat.extreme()[0], lat.extreme(largest=True)[0]
    problem = ConstrainedProblem(acc, Limit(lat, upper=lo + q * (hi - lo), lower=lo + q * (hi - lo) / 3))
    pruned, full = MilpModel(problem), MilpModel(problem, prune=False)
    assert len(pruned.idx.w) <= len(full.idx.w)
    a, b = pruned.solve(), full.solve()
    assert a["status"] == b["status"]
    if a["status"] == "optimal":
        assert a["value"] == pytest.approx(b["value"], abs=1e-9)
