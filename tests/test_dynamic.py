"""Dynamic network: a new budget re-solves over the held Pareto blocks; the running network then equals the
supernet's export of the new arch, and only the changed block positions got new modules."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from torch import nn

import lightning_nas as ln
from lightning_nas.bilinear import BilinearTable
from lightning_nas.dynamic import DynamicNetwork, pareto_blocks
from lightning_nas.estimators.block_performance import estimate_block_performance, nodes_as_stage
from lightning_nas.solvers import InfeasibleError
from lightning_nas.solvers.fractional import enumerate_indices
from lightning_nas.spaces import mobilenet_supernet
from lightning_nas.spaces.staged import StagedSpace

torch.set_num_threads(1)


@pytest.fixture(scope="module")
def setup():
    torch.manual_seed(0)
    supernet = mobilenet_supernet(stem_channels=8, stages=((8, 1, 2), (16, 2, 3)), expand_ratios=(2, 4, 6),
                                  kernel_sizes=(3, 5), head_channels=16).eval()
    staged = StagedSpace.from_space(supernet.space)
    rng = np.random.default_rng(0)
    shape = (staged.num_stages, staged.max_blocks, staged.num_configs)
    dshape = (staged.num_stages, staged.max_depth_options)
    # Bigger blocks: more accuracy, more latency, more FLOPs (a plausible trade-off to search).
    size = rng.uniform(1, 3, shape)
    accuracy = BilinearTable(staged, 0.5, 0.02 * size + rng.normal(0, 0.005, shape), rng.uniform(0, 0.02, dshape), name="accuracy")
    latency = BilinearTable(staged, 1.0, size + rng.uniform(0, 0.3, shape), np.zeros(dshape), name="latency", unit="ms")
    flops = BilinearTable(staged, 5.0, 4 * size, np.zeros(dshape), name="flops")
    # reference="default": deltas against one arch, so the search is Eq. 5's fractional program.
    perf = estimate_block_performance(lambda archs: {"accuracy": accuracy.predict_many(archs), "latency": latency.predict_many(archs)},
                                      staged, flops, reference="default")
    return supernet, staged, perf, latency


def outputs_match(dynamic, supernet, arch):
    x = torch.randn(4, 3, 16, 16, generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        return torch.allclose(dynamic(x), supernet.export(arch).eval()(x), atol=1e-5)


def test_switch_swaps_only_changed_blocks(setup):
    supernet, staged, perf, latency = setup
    dynamic = DynamicNetwork(supernet, perf, latency, {"latency": 100.0}, blocks_per_node=3).eval()
    assert dynamic.num_networks == (3 + 9) * (3 + 9 + 27)
    assert outputs_match(dynamic, supernet, dynamic.arch)
    seen = [dynamic.arch]
    for bound in (9.0, 6.0, 12.0):
        before_arch = dynamic.arch
        before = {(s, b): m for s, seq in enumerate(dynamic.network.stages) for b, m in enumerate(seq)}
        report = dynamic.set_budget({"latency": bound})
        assert report.result.feasible and report.result.resources["latency"] <= bound + 1e-7
        assert report.solve_seconds > 0 and report.switch_seconds >= 0
        after = {(s, b): m for s, seq in enumerate(dynamic.network.stages) for b, m in enumerate(seq)}
        # Exactly the positions whose module differs are reported, and unchanged ones keep their object.
        old_c, old_d = staged.indices(before_arch)
        new_c, new_d = staged.indices(report.arch)
        expected = set()
        for s, st in enumerate(staged.stages):
            d_old, d_new = st.depths[old_d[s]], st.depths[new_d[s]]
            expected |= {(s, b) for b in range(max(d_old, d_new)) if b >= min(d_old, d_new) or old_c[s, b] != new_c[s, b]}
        assert set(report.changed) == expected
        assert all(after[k] is before[k] for k in after if k in before and k not in expected)
        assert outputs_match(dynamic, supernet, report.arch)
        seen.append(report.arch)
    assert len({str(a) for a in seen}) >= 3  # the budgets really moved the arch


def test_result_is_the_best_of_the_held_blocks(setup):
    supernet, staged, perf, latency = setup
    dynamic = DynamicNetwork(supernet, perf, latency, {"latency": 8.0}, blocks_per_node=2)
    restricted = dynamic.staged
    configs, depths = enumerate_indices(restricted)
    from lightning_nas.dynamic import _restrict

    lat = _restrict(latency, restricted, dynamic._keep).predict_indices(configs, depths)
    num = _restrict(perf.numerator(), restricted, dynamic._keep).predict_indices(configs, depths)
    den = _restrict(perf.flops, restricted, dynamic._keep).predict_indices(configs, depths)
    value = np.where(lat <= 8.0, perf.base["accuracy"] - num / den, -np.inf)
    assert perf.predictor().predict(dynamic.arch) == pytest.approx(value.max(), abs=1e-9)


def test_signed_deltas_switch_by_the_additive_law(setup):
    supernet, staged, _, latency = setup
    truth = BilinearTable(staged, 0.5, latency.block * 0.01, latency.depth * 0.0, name="accuracy")
    perf = estimate_block_performance(lambda archs: {"accuracy": truth.predict_many(archs)}, staged,
                                      BilinearTable(staged, 5.0, 4 * latency.block, latency.depth * 0.0, name="flops"))
    assert perf.default_law == "additive"  # reference="mean"
    dynamic = DynamicNetwork(supernet, perf, latency, {"latency": 8.0}, blocks_per_node=2)
    configs, depths = enumerate_indices(dynamic.staged)
    from lightning_nas.dynamic import _restrict

    lat = _restrict(latency, dynamic.staged, dynamic._keep).predict_indices(configs, depths)
    value = _restrict(perf.table("accuracy"), dynamic.staged, dynamic._keep).predict_indices(configs, depths)
    assert perf.predictor().predict(dynamic.arch) == pytest.approx(value[lat <= 8.0].max(), abs=1e-9)


def test_infeasible_budget_leaves_the_network_running(setup):
    supernet, _, perf, latency = setup
    dynamic = DynamicNetwork(supernet, perf, latency, {"latency": 50.0}, blocks_per_node=3).eval()
    arch, modules = dynamic.arch, list(dynamic.network.modules())
    with pytest.raises(InfeasibleError, match="smallest achievable latency"):
        dynamic.set_budget({"latency": 0.5})
    assert dynamic.arch == arch and list(dynamic.network.modules()) == modules
    with pytest.raises(ValueError, match="unknown resources"):
        dynamic.set_budget({"energy": 3.0})


def test_pareto_blocks_keeps_the_front():
    acc = np.array([[[0.1, 0.2, 0.3, 0.15, 0.05]]])
    lat = np.array([[[1.0, 2.0, 3.0, 2.5, 0.5]]])
    keep = pareto_blocks([(acc, +1), (lat, -1)], 4)
    assert keep[0, 0].tolist() == [0, 1, 2, 4]  # config 3 is dominated by config 1
    assert pareto_blocks([(acc, +1), (lat, -1)], 2)[0, 0].tolist() == [2, 4]  # the front's two ends
    with pytest.raises(ValueError, match="`blocks_per_node` must be in"):
        pareto_blocks([(acc, +1)], 6)


def test_opchoice_nodes_are_swapped_by_attribute():
    torch.manual_seed(0)
    ops = lambda i: ln.OpChoice({"conv": nn.Conv2d(4, 4, 3, padding=1), "pool": nn.AvgPool2d(3, 1, 1), "id": nn.Identity()}, f"edge{i}")
    supernet = ln.Supernet(nn.Sequential(nn.Conv2d(3, 4, 1), ops(0), nn.ReLU(), ops(1))).eval()
    staged = nodes_as_stage(supernet.space)
    acc = BilinearTable(staged, 0.5, np.array([[[0.1, 0.05, 0.0], [0.2, 0.02, 0.0]]]), name="accuracy")
    lat = BilinearTable(staged, 1.0, np.array([[[3.0, 1.0, 0.1], [3.0, 1.0, 0.1]]]), name="latency")
    dynamic = DynamicNetwork(supernet, acc, lat, {"latency": 10.0}, blocks_per_node=3).eval()
    assert dynamic.arch == {"edge0": "conv", "edge1": "conv"}
    kept = dynamic.network[3]
    report = dynamic.set_budget({"latency": 5.0})
    assert report.arch == {"edge0": "pool", "edge1": "conv"} and report.changed == [(0, 0)]
    assert dynamic.network[3] is kept and isinstance(dynamic.network[1], nn.AvgPool2d)
    x = torch.randn(2, 3, 8, 8)
    with torch.no_grad():
        assert torch.allclose(dynamic(x), supernet.export(report.arch)(x), atol=1e-6)


@pytest.mark.parametrize(("kwargs", "match"), [
    ({"blocks_per_node": True}, "`blocks_per_node` must be an int"),
    ({"blocks_per_node": 2.5}, "`blocks_per_node` must be an int"),
    ({"budget": {"latency": float("nan")}}, "bound of 'latency' must be a finite number"),
    ({"budget": {"latency": "fast"}}, "bound of 'latency' must be a finite number"),
    ({"budget": [("latency", 3.0)]}, "`budget` must be a mapping"),
    ({"method": "newton"}, "`method` must be one of"),
])
def test_bad_arguments_are_named(setup, kwargs, match):
    supernet, staged, perf, latency = setup
    args = {"budget": {"latency": 100.0}, "blocks_per_node": 2}
    args.update(kwargs)
    with pytest.raises(ValueError, match=match):
        DynamicNetwork(supernet, perf, latency, args.pop("budget"), **args)


def test_set_budget_checks_bounds_and_tables(setup):
    supernet, staged, perf, latency = setup
    dynamic = DynamicNetwork(supernet, perf, latency, {"latency": 100.0}, blocks_per_node=2)
    arch = dict(dynamic.arch)
    with pytest.raises(ValueError, match="bound of 'latency' must be a finite number"):
        dynamic.set_budget({"latency": float("inf")})
    other = nodes_as_stage(ln.SearchSpace([ln.spaces.Decision("x", (1, 2), 1)]))
    foreign = BilinearTable(other, 1.0, np.ones((1, 1, 2)), name="latency")
    with pytest.raises(ValueError, match="another space.*labels only in the table"):
        dynamic.set_budget({"latency": 100.0}, foreign)
    assert dynamic.arch == arch


def test_resources_of_another_space_are_named(setup):
    supernet, staged, perf, latency = setup
    other = nodes_as_stage(ln.SearchSpace([ln.spaces.Decision("x", (1, 2), 1)]))
    foreign = BilinearTable(other, 1.0, np.ones((1, 1, 2)), name="latency")
    with pytest.raises(ValueError, match="`resources` table 'latency' was made for another space"):
        DynamicNetwork(supernet, perf, foreign, {"latency": 100.0}, blocks_per_node=2)


def test_unknown_method_is_refused_for_a_table_objective_too():
    torch.manual_seed(0)
    supernet = ln.Supernet(nn.Sequential(nn.Conv2d(3, 4, 1), ln.OpChoice({"a": nn.Identity(), "b": nn.ReLU()}, "edge0")))
    staged = nodes_as_stage(supernet.space)
    acc = BilinearTable(staged, 0.5, np.array([[[0.1, 0.0]]]), name="accuracy")
    lat = BilinearTable(staged, 1.0, np.array([[[1.0, 0.5]]]), name="latency")
    with pytest.raises(ValueError, match="`method` must be one of"):
        DynamicNetwork(supernet, acc, lat, {"latency": 10.0}, blocks_per_node=2, method="simplex")
