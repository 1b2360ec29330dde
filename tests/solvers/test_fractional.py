"""MathNAS's linear-fractional program: Charnes–Cooper MILP and Dinkelbach against brute force on random
instances with variable depth (Eq. 9) and several limits; infeasibility with the smallest achievable value."""

from __future__ import annotations

import re
import time

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from lightning_nas.bilinear import BilinearTable
from lightning_nas.solvers import InfeasibleError, Limit
from lightning_nas.solvers.fractional import (
    CharnesCooperModel,
    FractionalProblem,
    count_archs,
    enumerate_indices,
    iter_indices,
    solve_fractional,
)
from lightning_nas.spaces.staged import StagedSpace


def fractional_instance(inst, seed, num_resources=2):
    space, staged, acc, resources, rng = inst.random_instance(seed, num_resources=num_resources + 1)
    *limited, flops = resources
    # A penalty of either sign, like b^A (switching can gain or lose accuracy against the reference).
    penalty = BilinearTable(staged, rng.normal(0, 0.01), rng.normal(0, 0.02, acc.block.shape),
                            rng.normal(0, 0.02, acc.depth.shape), name="penalty")
    flops = BilinearTable(staged, flops.constant, flops.block, flops.depth, name="flops", unit="MFLOPs")
    return space, staged, penalty, flops, limited, rng


@settings(max_examples=30, deadline=None)
@given(seed=st.integers(0, 2**31 - 1), q=st.floats(0.05, 1.0), n_limits=st.integers(0, 2), scale=st.floats(0.1, 100.0))
def test_charnes_cooper_and_dinkelbach_equal_brute_force(inst, seed, q, n_limits, scale):
    space, staged, penalty, flops, limited, _ = fractional_instance(inst, seed)
    archs, values = inst.enumerate_values(space, limited)
    limits = []
    for k in range(n_limits):
        bound = inst.midpoint_limit(values[:, k], q)
        if bound is not None:
            limits.append(Limit(limited[k], upper=bound))
    feasible = np.all([[inst.brute_value(lim.table, a) <= lim.upper for lim in limits] for a in archs], axis=1) if limits else np.ones(len(archs), bool)
    if not feasible.any():
        with pytest.raises(InfeasibleError):
            solve_fractional(penalty, flops, limits, method="charnes_cooper")
        return
    # Oracle independent of the library: the definition over space.enumerate().
    ratio = np.array([inst.brute_value(penalty, a) / inst.brute_value(flops, a) for a in archs])
    best = 0.8 - scale * ratio[feasible].min()
    for method in ("brute_force", "charnes_cooper", "dinkelbach"):
        result = solve_fractional(penalty, flops, limits, constant=0.8, scale=scale, method=method)
        assert result.feasible and result.status == "optimal", (method, result.message)
        assert result.objective == pytest.approx(best, rel=1e-7, abs=1e-9), method
        arch_ratio = inst.brute_value(penalty, result.arch) / inst.brute_value(flops, result.arch)
        assert 0.8 - scale * arch_ratio == pytest.approx(best, rel=1e-7, abs=1e-9), method
        assert result.details["ratio"] == pytest.approx(arch_ratio, rel=1e-9, abs=1e-12)


def test_dinkelbach_iterates_to_the_charnes_cooper_bound(inst):
    _, staged, penalty, flops, (lat, _), _ = fractional_instance(inst, 7)
    cc = solve_fractional(penalty, flops, Limit(lat, upper=lat.extreme(largest=True)[0]), method="charnes_cooper")
    dk = solve_fractional(penalty, flops, Limit(lat, upper=lat.extreme(largest=True)[0]), method="dinkelbach")
    assert dk.details["iterations"] >= 2  # λ = 0 is never the optimum's certificate
    assert np.all(np.diff(dk.details["ratios"]) <= 1e-12)  # Dinkelbach's ratios never increase
    assert cc.details["bound_ratio"] == pytest.approx(cc.details["ratio"], abs=1e-8)


def test_infeasible_upper_limit_reports_smallest_achievable(inst):
    space, _, penalty, flops, (lat, energy), _ = fractional_instance(inst, 3)
    smallest = min(inst.brute_value(lat, a) for a in space.enumerate())
    for method in ("charnes_cooper", "dinkelbach", "brute_force"):
        with pytest.raises(InfeasibleError) as err:
            solve_fractional(penalty, flops, Limit(lat, upper=smallest - 0.1), method=method)
        assert err.value.resource == "latency" and err.value.achievable == pytest.approx(smallest)
        assert "smallest achievable latency" in str(err.value)


def test_jointly_infeasible_limits_report_smallest_subject_to_the_others(inst):
    space, _, penalty, flops, (lat, energy), _ = fractional_instance(inst, 11)
    archs, values = inst.enumerate_values(space, [lat, energy])
    # Energy at its median; latency just below the smallest latency among archs within that energy.
    e_bound = inst.midpoint_limit(values[:, 1], 0.5)
    within = values[:, 1] <= e_bound
    smallest = values[within, 0].min()
    if smallest <= values[:, 0].min() + 1e-6:
        pytest.skip("instance: the energy bound does not raise the smallest latency")
    l_bound = (smallest + values[:, 0].min()) / 2
    for method in ("charnes_cooper", "brute_force"):
        with pytest.raises(InfeasibleError) as err:
            solve_fractional(penalty, flops, [Limit(lat, upper=l_bound), Limit(energy, upper=e_bound)], method=method)
        assert err.value.achievable is not None
        if err.value.resource == "latency":
            assert err.value.achievable == pytest.approx(smallest, rel=1e-7)


def test_normalisation_anchors_z(inst):
    """Eq. 11 as printed has no normalisation: with it, z is 1/D of the chosen arch (scaled units)."""
    _, _, penalty, flops, _, _ = fractional_instance(inst, 5)
    fp = FractionalProblem(penalty, flops)
    model = CharnesCooperModel(fp)
    out = model.solve()
    d = float(flops.predict_indices(out["configs"], out["depths"]))
    assert model.model.z.value == pytest.approx(fp.d_min / d, rel=1e-6)
    assert model.unscale(out["value"]) == pytest.approx(float(fp.ratio(out["configs"], out["depths"])), rel=1e-6, abs=1e-12)


def test_enumerate_indices_lists_each_distinct_arch_once(inst):
    space, staged, _, flops, _, _ = fractional_instance(inst, 2)
    configs, depths = enumerate_indices(staged)
    distinct = {tuple(sorted((k, v) for k, v in a.items() if _active(staged, a, k))) for a in space.enumerate()}
    assert len(depths) == len(distinct)
    with pytest.raises(ValueError, match="more than `limit`"):
        enumerate_indices(staged, limit=1)


def _active(staged, arch, label):
    for stage in staged.stages:
        for b, labels in enumerate(stage.block_labels):
            if label in labels:
                depth = stage.depths[-1] if stage.depth_label is None else arch[stage.depth_label]
                return b < depth
    return True


def test_bad_arguments_are_named(inst):
    _, staged, penalty, flops, (lat, _), _ = fractional_instance(inst, 1)
    zero = BilinearTable(staged, flops.constant - flops.extreme()[0] - 0.5, flops.block, flops.depth, name="flops")
    with pytest.raises(ValueError, match="`denominator` 'flops' must be positive.*smallest value is -0.(5|4999)"):
        solve_fractional(penalty, zero)
    with pytest.raises(ValueError, match="`scale` must be positive"):
        solve_fractional(penalty, flops, scale=0.0)
    with pytest.raises(ValueError, match="`method` must be one of"):
        solve_fractional(penalty, flops, method="gurobi")
    with pytest.raises(ValueError, match="`denominator` must be a BilinearTable"):
        solve_fractional(penalty, 3.0)
    with pytest.raises(ValueError, match="solver 'nosuch' is not available"):
        solve_fractional(penalty, flops, solver="nosuch")
    for kwargs, message in [
        ({"time_limit": float("nan")}, "`time_limit` must be a positive finite number"),
        ({"time_limit": -1.0}, "`time_limit` must be a positive finite number"),
        ({"tol": float("nan")}, "`tol` must be a finite number >= 0"),
        ({"max_iter": True}, "`max_iter` must be a positive int"),
        ({"require_optimal": 1}, "`require_optimal` must be True or False"),
        ({"method": "brute_force", "limit": 0}, "`limit` must be a positive int"),
    ]:
        with pytest.raises(ValueError, match=message):
            solve_fractional(penalty, flops, **kwargs)


def test_a_denominator_made_non_finite_is_refused(inst):
    _, staged, penalty, flops, _, _ = fractional_instance(inst, 1)
    flops.block[0, 0, 0] = float("nan")
    with pytest.raises(ValueError, match="the denominator table 'flops' has non-finite `block` entries"):
        solve_fractional(penalty, flops)


def _huge(inst, blocks, configs):
    """One fixed-depth stage of ``blocks`` blocks with ``configs`` configs each: ``configs ** blocks`` archs."""
    staged = StagedSpace.from_space(inst.make_space([blocks], configs, [None]))
    block = np.random.default_rng(0).uniform(1, 2, (1, blocks, configs))
    return BilinearTable(staged, 1.0, block, name="num"), BilinearTable(staged, 5.0, block + 1, name="den")


@pytest.mark.parametrize(("blocks", "configs", "count"), [(7, 9, "4.78e+06"), (20, 10, "1e+20")])
def test_brute_force_refuses_a_huge_space_at_once(inst, blocks, configs, count):
    num, den = _huge(inst, blocks, configs)
    start = time.perf_counter()
    with pytest.raises(ValueError, match=rf"brute force refused: the space has {re.escape(count)} archs.*more than "
                                         r"`limit`=2,000,000.*method='dinkelbach'"):
        solve_fractional(num, den, method="brute_force")
    with pytest.raises(ValueError, match="more than `limit`"):
        enumerate_indices(num.staged)
    assert time.perf_counter() - start < 2.0  # was 21 s for 4.8e6 archs, and an OOM kill for 1e20
    assert count_archs(num.staged) == configs**blocks


def test_brute_force_in_chunks_sees_every_arch(inst):
    _, staged, penalty, flops, (lat, _), _ = fractional_instance(inst, 4)
    configs, depths = enumerate_indices(staged)
    chunks = list(iter_indices(staged, chunk=7))
    assert len(chunks) > 1
    assert np.array_equal(np.concatenate([c for c, _ in chunks]), configs)
    assert np.array_equal(np.concatenate([d for _, d in chunks]), depths)
    # A limit between two archs' values: the chunked search and the diagnosis agree with the MILP.
    upper = float(np.median(lat.predict_indices(configs, depths)))
    a = solve_fractional(penalty, flops, Limit(lat, upper=upper), method="brute_force", limit=len(depths))
    b = solve_fractional(penalty, flops, Limit(lat, upper=upper), method="dinkelbach")
    assert a.objective == pytest.approx(b.objective, rel=1e-7, abs=1e-9) and a.details["evaluations"] == len(depths)
    with pytest.raises(ValueError, match="more than `limit`"):
        solve_fractional(penalty, flops, method="brute_force", limit=len(depths) - 1)
