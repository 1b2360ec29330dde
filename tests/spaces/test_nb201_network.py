"""The NB201 network: one shared decision per edge, export equals the supernet, genotype/string round trips."""

from __future__ import annotations

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from lightning_nas.spaces.nb201 import (
    NB201_LABELS,
    NB201_OPS,
    nb201_all_archs,
    nb201_from_genotype,
    nb201_from_string,
    nb201_genotype,
    nb201_string,
    nb201_supernet,
)
from lightning_nas.spaces.registry import create_space

torch.set_num_threads(1)


def test_every_cell_shares_the_six_edge_decisions():
    net = nb201_supernet(channels=4, cells_per_stage=2)
    assert net.space.labels == list(NB201_LABELS)
    assert all(d.values == NB201_OPS for d in net.space)
    assert net.space.size == 5**6
    assert isinstance(create_space("nb201", channels=4, cells_per_stage=1), type(net))


def test_shapes_and_reductions():
    net = nb201_supernet(channels=4, cells_per_stage=1, num_classes=7, in_chans=1)
    assert net(torch.randn(3, 1, 16, 16)).shape == (3, 7)
    widths = [m.out_channels for m in net.modules() if isinstance(m, torch.nn.Conv2d) and m.kernel_size == (1, 1) and m.stride == (1, 1) and m.in_channels != m.out_channels]
    assert widths == [8, 16]  # the two residual shortcuts double the width


@settings(max_examples=8, deadline=None)
@given(code=st.integers(0, 5**6 - 1), train=st.booleans())
def test_export_equals_supernet(code, train):
    torch.manual_seed(0)
    net = nb201_supernet(channels=4, cells_per_stage=1).train(train)
    arch = {label: NB201_OPS[(code // 5**k) % 5] for k, label in enumerate(NB201_LABELS)}
    x = torch.randn(4, 3, 8, 8)
    exported = net.export(arch).train(train)
    net.activate(arch)
    torch.testing.assert_close(exported(x), net(x), atol=1e-5, rtol=1e-5)


def test_export_has_only_the_chosen_operation_weights():
    net = nb201_supernet(channels=4, cells_per_stage=1)
    all_skip = net.export(dict.fromkeys(NB201_LABELS, "skip_connect"))
    all_conv = net.export(dict.fromkeys(NB201_LABELS, "nor_conv_3x3"))
    count = lambda m: sum(p.numel() for p in m.parameters())  # noqa: E731
    # nor_conv_3x3 adds a 3×3 conv per edge: 6 edges × (C² · 9) per cell, C = 4, 8, 16; BN is not affine.
    assert count(all_conv) - count(all_skip) == 6 * 9 * (4**2 + 8**2 + 16**2)


def test_genotype_string_round_trip_over_all_cells():
    archs = list(nb201_all_archs())
    assert len(archs) == 15_625
    for arch in archs:
        genotype = nb201_genotype(arch)
        assert nb201_from_string(nb201_string(nb201_from_genotype(genotype))) == arch
        assert nb201_genotype(nb201_from_string(nb201_string(arch))) == genotype


def test_genotype_form_and_errors():
    arch = nb201_from_string("|nor_conv_3x3~0|+|nor_conv_3x3~0|avg_pool_3x3~1|+|skip_connect~0|nor_conv_3x3~1|skip_connect~2|")
    assert nb201_genotype(arch)[2] == (("skip_connect", 0), ("nor_conv_3x3", 1), ("skip_connect", 2))
    with pytest.raises(ValueError, match="3 nodes"):
        nb201_from_genotype(((("none", 0),),))
    with pytest.raises(ValueError, match="node 2"):
        nb201_from_genotype(((("none", 0),), (("none", 0), ("none", 0)), (("none", 0), ("none", 1), ("none", 2))))
    with pytest.raises(ValueError, match="unknown NB201 operations"):
        nb201_from_genotype(((("conv", 0),), (("none", 0), ("none", 1)), (("none", 0), ("none", 1), ("none", 2))))


def test_bad_arguments_name_the_argument():
    with pytest.raises(ValueError, match="`channels`"):
        nb201_supernet(channels=0)
    with pytest.raises(ValueError, match="`ops`"):
        nb201_supernet(ops=["nor_conv_5x5"])


def test_sampled_cells_profile_end_to_end():
    from lightning_nas.profiling import ProfileSettings
    from lightning_nas.profiling.tables import time_archs

    net = nb201_supernet(channels=4, cells_per_stage=1)
    archs = [dict.fromkeys(NB201_LABELS, "none"), dict.fromkeys(NB201_LABELS, "nor_conv_3x3")]
    light, heavy = time_archs(net, archs, ProfileSettings(input_size=(3, 16, 16), repeats=10, warmup=2, rounds=2))
    assert 0 < light.median_ms and 0 < heavy.median_ms
