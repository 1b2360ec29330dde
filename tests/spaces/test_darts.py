"""DARTS cell space, S1–S4, genotypes and the evaluation network."""

from __future__ import annotations

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from lightning_nas.spaces.darts import (
    DARTS_OPS,
    DARTS_OPS_WITH_NONE,
    DARTS_V2,
    DartsNetwork,
    Noise,
    darts_arch,
    darts_edges,
    darts_genotype,
    darts_supernet,
    robustness_supernet,
)
from lightning_nas.spaces.registry import create_space

torch.set_num_threads(1)


def test_decisions_of_the_search_network():
    net = darts_supernet(channels=4, layers=3)
    edges = [label for label in net.space.labels if ".edge_" in label]
    nodes = [label for label in net.space.labels if ".node_" in label]
    assert len(darts_edges()) == 14 and len(edges) == 28 and len(nodes) == 8
    assert all(net.space[label].values == DARTS_OPS for label in edges)
    assert net.space["normal.node_4"].values == ((0, 1), (0, 2), (0, 3), (1, 2), (1, 3), (2, 3))
    assert "none" in darts_supernet(ops=DARTS_OPS_WITH_NONE, channels=4, layers=3).space["reduce.edge_5_4"].values
    assert create_space("darts", channels=4, layers=3).space.labels == net.space.labels


def test_reduction_cells_at_one_and_two_thirds():
    net = darts_supernet(channels=4, layers=8).module
    assert [i for i, cell in enumerate(net.cells) if cell.reduction] == [2, 5]
    assert net(torch.randn(2, 3, 16, 16)).shape == (2, 10)


@settings(max_examples=6, deadline=None)
@given(seed=st.integers(0, 10_000), train=st.booleans())
def test_export_equals_supernet_and_drops_unchosen_edges(seed, train):
    torch.manual_seed(0)
    net = darts_supernet(channels=4, layers=3).train(train)
    arch = net.space.sample(seed)
    x = torch.randn(3, 3, 8, 8)
    exported = net.export(arch).train(train)
    net.activate(arch)
    torch.testing.assert_close(exported(x), net(x), atol=1e-5, rtol=1e-5)
    # Every intermediate node keeps exactly 2 edges: 8 per cell.
    from lightning_nas.spaces.darts import _StaticNode

    static = [m for m in exported.modules() if isinstance(m, _StaticNode)]
    assert len(static) == 3 * 4 and all(len(m.edges) == 2 for m in static)


def test_per_example_mode_runs_each_example_through_its_own_cell():
    torch.manual_seed(0)
    net = darts_supernet(channels=4, layers=3).eval()
    archs = [net.space.sample(s) for s in (1, 2)]
    x = torch.randn(2, 3, 8, 8)
    net.activate(archs)
    both = net(x)
    for k, arch in enumerate(archs):
        net.activate(arch)
        torch.testing.assert_close(both[k : k + 1], net(x[k : k + 1]), atol=1e-5, rtol=1e-5)


def test_genotype_round_trip_and_darts_v2_parameter_count():
    arch = darts_arch(DARTS_V2)
    genotype = darts_genotype(arch)
    for kind in ("normal", "reduce"):
        for n in range(4):  # same pairs per node; the genotype orders them by source
            assert sorted(getattr(genotype, kind)[2 * n : 2 * n + 2], key=lambda p: p[1]) == sorted(
                getattr(DARTS_V2, kind)[2 * n : 2 * n + 2], key=lambda p: p[1]
            )
    assert darts_genotype(darts_arch(genotype)) == genotype
    darts_supernet(ops=DARTS_OPS, channels=4, layers=3).space.validate(arch)
    # DARTS reports 3.3 M parameters for this cell at 20 cells × 36 channels (3,349,342 without the auxiliary head).
    assert sum(p.numel() for p in DartsNetwork(DARTS_V2).parameters()) == 3_349_342


def test_evaluation_network_runs_a_sampled_genotype():
    genotype = darts_genotype(darts_supernet(channels=4, layers=3).space.sample(3))
    net = DartsNetwork(genotype, channels=4, layers=5, num_classes=3)
    assert net(torch.randn(2, 3, 16, 16)).shape == (2, 3)


@pytest.mark.parametrize(
    ("space", "ops"),
    [("s2", ("skip_connect", "sep_conv_3x3")), ("s3", ("none", "skip_connect", "sep_conv_3x3")), ("s4", ("noise", "sep_conv_3x3"))],
)
def test_robustness_spaces(space, ops):
    net = create_space("darts_s1_s4", space=space, channels=4, layers=3)
    assert {net.space[label].values for label in net.space.labels if ".edge_" in label} == {ops}
    assert net(torch.randn(2, 3, 8, 8)).shape == (2, 10)


def test_s1_takes_its_pair_per_edge_and_noise_is_noise():
    labels = [f"{kind}.edge_{j}_{i}" for kind in ("normal", "reduce") for j, i in darts_edges()]
    table = {label: (DARTS_OPS[k % 7], DARTS_OPS[(k + 3) % 7]) for k, label in enumerate(labels)}
    net = robustness_supernet("s1", edge_ops=table, channels=4, layers=3)
    assert all(net.space[label].values == table[label] for label in labels)
    with pytest.raises(ValueError, match="missing"):
        robustness_supernet("s1", edge_ops={labels[0]: ("skip_connect", "sep_conv_3x3")})
    with pytest.raises(ValueError, match="`space`"):
        robustness_supernet("s5")
    with pytest.raises(ValueError, match="only for space 's1'"):
        robustness_supernet("s2", edge_ops=table)
    noise = Noise(stride=2)(torch.zeros(2, 3, 8, 8))
    assert noise.shape == (2, 3, 4, 4) and noise.std() > 0.5


def test_noise_is_seeded_resumable_and_leaves_torchs_rng_alone():
    x = torch.zeros(2, 3, 8, 8)
    torch.manual_seed(0)
    expected = torch.rand(2)
    torch.manual_seed(0)
    a, b = Noise(seed=7), Noise(seed=7)
    first = [a(x) for _ in range(3)]
    assert torch.equal(torch.rand(2), expected)  # the global stream is untouched
    assert all(torch.equal(f, b(x)) for f in first)  # same seed, same sequence
    assert not torch.equal(first[0], first[1])  # a new draw per call
    resumed = Noise(seed=7)
    resumed.load_state_dict(Noise(seed=7).state_dict() | {"calls": torch.tensor(2)})
    assert torch.equal(resumed(x), first[2])  # the call count is in the state dict
    # Every noise op of an S4 network has its own stream, fixed by noise_seed.
    net, again = (robustness_supernet("s4", channels=2, layers=3, noise_seed=3) for _ in range(2))
    seeds = [m.seed for m in net.modules() if isinstance(m, Noise)]
    assert len(seeds) == len(set(seeds)) == 2 * 14 + 14  # normal + 2 reduction cells (one 14-edge cell each)
    assert seeds == [m.seed for m in again.modules() if isinstance(m, Noise)]
    assert seeds != [m.seed for m in robustness_supernet("s4", channels=2, layers=3, noise_seed=4).modules() if isinstance(m, Noise)]
    with pytest.raises(ValueError, match="`noise_seed`"):
        robustness_supernet("s4", channels=2, layers=3, noise_seed=-1)


def test_bad_arguments_are_named():
    with pytest.raises(ValueError, match="`ops`"):
        darts_supernet(ops=("sep_conv_7x7",))
    with pytest.raises(ValueError, match="`layers`"):
        darts_supernet(layers=2)
    with pytest.raises(ValueError, match="node 2"):
        darts_arch(DARTS_V2._replace(normal=[("skip_connect", 0), ("skip_connect", 0)] + DARTS_V2.normal[2:]))
    with pytest.raises(ValueError, match="missing"):
        darts_genotype({"normal.node_2": (0, 1)})


def test_sampled_cells_profile_end_to_end():
    from lightning_nas.profiling import ProfileSettings
    from lightning_nas.profiling.tables import time_archs

    net = darts_supernet(channels=4, layers=3)
    (result,) = time_archs(net, [net.space.sample(0)], ProfileSettings(input_size=(3, 16, 16), repeats=5, warmup=1, rounds=1))
    assert result.median_ms > 0


@pytest.mark.parametrize(("genotype", "match"), [
    (("x",), "`genotype` must be a Genotype"),
    ({"normal": []}, "`genotype` must be a Genotype"),
    (DARTS_V2._replace(normal=[("sep_conv_3x3", "0")] * 8), r"genotype.normal\[0\] must be an \(op name, source node int\) pair"),
    (DARTS_V2._replace(reduce=["max_pool_3x3"] * 8), r"genotype.reduce\[0\] must be"),
])
def test_malformed_genotypes_are_named(genotype, match):
    with pytest.raises(ValueError, match=match):
        darts_arch(genotype)
