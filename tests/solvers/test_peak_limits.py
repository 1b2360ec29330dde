"""Max-type limits (peak memory: the largest running unit's entry, not a sum) in every exact solver path,
against brute force on small random structures: the MILP (both formulations) and the MIQCP enforce
``max <= U`` exactly through per-unit constraints, the fractional program and the Pareto sweep too; an
unreachable bound names the smallest achievable maximum (alone, and subject to the other limits)."""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from lightning_nas.bilinear import BilinearTable
from lightning_nas.solvers import InfeasibleError, Limit, pareto_sweep, search_constrained, solve_fractional
from lightning_nas.solvers.problem import max_extreme


def peak_table(staged, rng, name="peak_memory") -> BilinearTable:
    """Non-negative entries on a coarse grid (ties between units, as memory has), small fixed part, some depth entries."""
    shape = (staged.num_stages, staged.max_blocks, staged.num_configs)
    depth = np.where(rng.random((staged.num_stages, staged.max_depth_options)) < 0.3,
                     rng.integers(0, 12, (staged.num_stages, staged.max_depth_options)), 0).astype(float)
    return BilinearTable(staged, float(rng.integers(0, 4)), rng.integers(1, 12, shape).astype(float), depth,
                         name=name, unit="bytes", metadata={"aggregate": "max"})


def brute_max(table: BilinearTable, arch) -> float:
    """The definition, on an arch dict: the largest of the constant, each stage's depth entry and each running block's entry."""
    terms = [table.constant]
    for s, stage in enumerate(table.staged.stages):
        depth = stage.depths[-1] if stage.depth_label is None else arch[stage.depth_label]
        terms.append(table.depth[s, stage.depths.index(depth)])
        for b in range(depth):
            terms.append(table.block[s, b, stage.configs[b].index(tuple(arch[lab] for lab in stage.block_labels[b]))])
    return max(terms)


def setup(inst, seed, q):
    space, staged, acc, (lat,), rng = inst.random_instance(seed)
    peak = peak_table(staged, rng)
    archs, values = inst.enumerate_values(space, [acc, lat])
    peaks = np.array([brute_max(peak, a) for a in archs])
    distinct = np.unique(peaks)
    bound = float(distinct[min(int(q * len(distinct)), len(distinct) - 1)]) + 0.5  # between grid values
    return space, staged, acc, lat, peak, archs, values, peaks, bound


@settings(max_examples=40, deadline=None)
@given(seed=st.integers(0, 2**31 - 1), q=st.floats(0, 1), formulation=st.sampled_from(["compact", "alpha"]),
       with_latency=st.booleans())
def test_milp_under_a_max_limit_equals_brute_force(inst, seed, q, formulation, with_latency):
    space, staged, acc, lat, peak, archs, values, peaks, bound = setup(inst, seed, q)
    limits = [Limit(peak, upper=bound)]
    feasible = peaks <= bound
    if with_latency:
        lat_bound = inst.midpoint_limit(values[feasible, 1], 0.6)
        if lat_bound is None:
            return
        limits.append(Limit(lat, upper=lat_bound))
        feasible &= values[:, 1] <= lat_bound
    assert limits[0].aggregate == "max"  # read from the table's metadata
    result = search_constrained(acc, limits, formulation=formulation)
    assert result.status == "optimal" and result.feasible
    assert result.objective == pytest.approx(values[feasible, 0].max(), abs=1e-12)
    assert result.resources["peak_memory"] == brute_max(peak, result.arch) <= bound
    assert limits[0].predict(result.arch) == brute_max(peak, result.arch)


@settings(max_examples=25, deadline=None)
@given(seed=st.integers(0, 2**31 - 1))
def test_extremes_of_a_max_table_equal_brute_force(inst, seed):
    space, staged, acc, lat, peak, archs, values, peaks, _ = setup(inst, seed, 0.5)
    smallest, arch = max_extreme(peak)
    assert smallest == peaks.min() and brute_max(peak, arch) == smallest
    largest, arch = max_extreme(peak, largest=True)
    assert largest == peaks.max() and brute_max(peak, arch) == largest


@settings(max_examples=20, deadline=None)
@given(seed=st.integers(0, 2**31 - 1), q=st.floats(0, 1))
def test_unreachable_max_bound_names_the_smallest_achievable(inst, seed, q):
    space, staged, acc, lat, peak, archs, values, peaks, _ = setup(inst, seed, q)
    with pytest.raises(InfeasibleError, match="smallest achievable peak_memory") as error:
        search_constrained(acc, Limit(peak, upper=peaks.min() - 0.5))
    assert error.value.achievable == peaks.min() and error.value.bound == "upper"
    # Jointly: a latency bound that only the largest-peak archs violate... the peak bound just above the
    # smallest peak, and a latency bound below what those archs reach: the message gives the smallest peak
    # subject to the latency limit (brute force), or the latency subject to the peak limit.
    tight = peaks <= peaks.min() + 0.5
    lat_bound = float(values[tight, 1].min()) - 0.05
    if not (values[:, 1] <= lat_bound).any():
        return
    with pytest.raises(InfeasibleError, match="subject to the other limits") as error:
        search_constrained(acc, [Limit(peak, upper=peaks.min() + 0.5), Limit(lat, upper=lat_bound)])
    if error.value.resource == "peak_memory":
        assert error.value.achievable == peaks[values[:, 1] <= lat_bound].min()
    else:
        assert error.value.achievable == pytest.approx(values[tight, 1].min(), abs=1e-9)


@settings(max_examples=10, deadline=None)
@given(seed=st.integers(0, 2**31 - 1), q=st.floats(0, 1))
def test_miqcp_and_fractional_under_a_max_limit(inst, seed, q):
    space, staged, acc, lat, peak, archs, values, peaks, bound = setup(inst, seed, q)
    feasible = peaks <= bound
    result = search_constrained(acc, Limit(peak, upper=bound), method="miqcp", solver="scip_direct")
    assert result.objective == pytest.approx(values[feasible, 0].max(), abs=1e-9) and result.feasible
    # The fractional program (positive numerator and denominator) under the same limit.
    flops = BilinearTable(staged, 5.0, np.abs(lat.block) + 1.0, np.zeros_like(lat.depth), name="flops")
    penalty = BilinearTable(staged, 1.0, np.abs(acc.block) * 100 + 0.1, np.zeros_like(acc.depth), name="penalty")
    ratio = np.array([inst.brute_value(penalty, a) / inst.brute_value(flops, a) for a in archs])
    for method in ("brute_force", "charnes_cooper", "dinkelbach"):
        found = solve_fractional(penalty, flops, [Limit(peak, upper=bound)], constant=0.0, method=method)
        got = inst.brute_value(penalty, found.arch) / inst.brute_value(flops, found.arch)
        assert got == pytest.approx(ratio[feasible].min(), rel=1e-7) and brute_max(peak, found.arch) <= bound


@settings(max_examples=10, deadline=None)
@given(seed=st.integers(0, 2**31 - 1))
def test_pareto_sweep_over_a_max_resource(inst, seed):
    space, staged, acc, lat, peak, archs, values, peaks, _ = setup(inst, seed, 0.5)
    targets = sorted({float(p) + 0.5 for p in np.unique(peaks)[:3]} | {float(peaks.min()) - 1.0})
    for result, target in zip(pareto_sweep(acc, peak, targets), targets):
        feasible = peaks <= target
        if not feasible.any():
            assert result.status == "infeasible" and "smallest achievable peak_memory" in result.message
            continue
        assert result.objective == pytest.approx(values[feasible, 0].max(), abs=1e-12)
        assert brute_max(peak, result.arch) <= target


def test_evolution_meets_a_max_limit_and_bcfw_refuses_it(inst):
    space, staged, acc, lat, peak, archs, values, peaks, bound = setup(inst, 3, 0.5)
    result = search_constrained(acc, Limit(peak, upper=bound), method="evolution", seed=0)
    assert result.feasible and brute_max(peak, result.arch) <= bound
    with pytest.raises(ValueError, match="method='bcfw' bounds additive tables"):
        search_constrained(acc, Limit(peak, upper=bound), method="bcfw")


def test_max_limit_arguments_are_checked(inst):
    space, staged, acc, lat, peak, *_ = setup(inst, 1, 0.5)
    with pytest.raises(ValueError, match="only an `upper` bound is supported"):
        Limit(peak, lower=3.0)
    with pytest.raises(ValueError, match="contradicts table 'peak_memory'"):
        Limit(peak, upper=3.0, aggregate="sum")
    with pytest.raises(ValueError, match="`aggregate` of the limit on 'latency' must be one of"):
        Limit(lat, upper=3.0, aggregate="mean")
    # A table without the metadata can be limited as a maximum explicitly; as a sum by default.
    plain = BilinearTable(staged, peak.constant, peak.block, peak.depth, name="peak")
    assert Limit(plain, upper=3.0).aggregate == "sum" and Limit(plain, upper=3.0, aggregate="max").aggregate == "max"
