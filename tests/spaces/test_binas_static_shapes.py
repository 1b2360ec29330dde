"""The BINAS space in per-example mode with static shapes: exact, no host reads, bounded operator calls."""

from __future__ import annotations

import copy

import pytest
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from torch import nn

import lightning_nas as ln
from lightning_nas.profiling.counters import HostReadCounter, OperatorCounter
from lightning_nas.spaces import BinasBlock, binas_supernet

SETTINGS = settings(max_examples=5, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
SIZE = 8  # input pixels: 4 after the stem, 4 and 2 in the stages


@pytest.fixture(autouse=True, scope="module")
def _one_thread():
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def small_binas(*, min_depth: int = 1, max_depth: int = 3) -> ln.Supernet:
    """``binas_supernet("tiny")`` cut down: 2 stages of ``min_depth..max_depth`` blocks, narrow
    widths, non-trivial BatchNorm parameters and statistics; static shapes on (a CPU's "auto" groups)."""
    torch.manual_seed(0)
    net = binas_supernet(
        "tiny", num_classes=5, stem_channels=8, ds_channels=8, stage_channels=(8, 16), stage_strides=(1, 2),
        stage_activations=("relu", "hswish"), min_depth=min_depth, max_depth=max_depth, head_channels=(16, 16),
    )
    g = torch.Generator().manual_seed(1)
    with torch.no_grad():
        for m in net.modules():
            if isinstance(m, (nn.BatchNorm2d, ln.nn.GroupedBatchNorm2d)):
                shape = m.weight.shape
                m.weight.copy_(0.5 + torch.rand(shape, generator=g))
                m.bias.copy_(torch.rand(shape, generator=g) - 0.5)
                m.running_mean.copy_(torch.rand(shape, generator=g) - 0.5)
                m.running_var.copy_(0.5 + torch.rand(shape, generator=g))
    net.static_shapes = True
    return net


def _input(n: int, seed: int, chans: int = 3, size: int = SIZE) -> torch.Tensor:
    return torch.randn(n, chans, size, size, generator=torch.Generator().manual_seed(seed))


def step(net: nn.Module, x: torch.Tensor) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
    """Forward + backward; the output and every gradient."""
    net.zero_grad(set_to_none=True)
    out = net(x)
    (out * torch.linspace(-1, 1, out.shape[1])).sum().backward()
    return out.detach(), {name: p.grad.clone() for name, p in net.named_parameters() if p.grad is not None}


def assert_same_step(a: nn.Module, b: nn.Module, x: torch.Tensor) -> None:
    # float64 for the modes that sum in different orders: float32's rounding then stays far below
    # tolerances tight enough to catch a wrong formula (in float32, 2 of 60 seeds went past 1e-4).
    wide = x.dtype == torch.float64
    out_a, grads_a = step(a, x)
    out_b, grads_b = step(b, x)
    torch.testing.assert_close(out_a, out_b, atol=1e-10 if wide else 1e-5, rtol=1e-9 if wide else 1e-4)
    # A parameter no row uses gets no gradient from grouped rows and a zero one with static shapes.
    for name in grads_a.keys() | grads_b.keys():
        zero = torch.zeros_like(grads_a.get(name, grads_b.get(name)))
        torch.testing.assert_close(grads_a.get(name, zero), grads_b.get(name, zero), atol=1e-9 if wide else 1e-4,
                                   rtol=1e-9 if wide else 1e-4, msg=name)
    for (name, buf_a), buf_b in zip(a.named_buffers(), b.buffers()):
        torch.testing.assert_close(buf_a, buf_b, atol=1e-12 if wide else 1e-6, rtol=1e-10 if wide else 1e-5, msg=name)


@SETTINGS
@given(seed=st.integers(0, 2**31 - 1))
def test_static_shapes_equal_grouped_rows_in_training(seed):
    """Outputs, gradients, running statistics and batch counts of a training step agree between
    the two per-example modes (the grouped one computes each row at its own widths and kernel)."""
    static = small_binas().double().train()
    grouped = copy.deepcopy(static)
    grouped.static_shapes = False
    n = 7
    indices = static.space.sample_indices(n, seed)
    for net in (static, grouped):
        net.activate_indices(indices)
    assert static.context.static_shapes and not grouped.context.static_shapes
    assert_same_step(static, grouped, _input(n, seed).double())


@SETTINGS
@given(seed=st.integers(0, 2**31 - 1))
def test_batch_of_one_arch_equals_that_subnets_training_step(seed):
    """Every row under one arch through the masked path (taken even when rows agree): the subnet's
    own training step, gradients and running statistics included."""
    per_example = small_binas().train()
    scalar = copy.deepcopy(per_example)
    arch = per_example.space.sample(seed)
    n = 5
    per_example.activate([arch] * n)
    scalar.activate(arch)
    assert per_example.per_example and per_example.context.static_shapes
    assert_same_step(per_example, scalar, _input(n, seed))


def test_rows_equal_their_exported_subnets_in_eval():
    net = small_binas().eval()
    archs = net.space.sample_many(6, 3)
    x = _input(6, 1)
    net.activate(archs)
    together = net(x)
    for i, arch in enumerate(archs):
        torch.testing.assert_close(together[i : i + 1], net.export(arch).eval()(x[i : i + 1]), atol=1e-5, rtol=1e-4)


def test_stopped_rows_are_left_out_of_the_block():
    """Under a stopped-rows mark (what a DepthChoice sets with static shapes), the running rows get
    what the block computes on them alone, running statistics included; stopped rows come out as
    their input (zero block output plus the shortcut), whatever they hold."""
    torch.manual_seed(0)
    masked = ln.Supernet(BinasBlock(8, 8, 1, prefix="b", activation="hswish"), static_shapes=True).train()
    alone = copy.deepcopy(masked)
    n = 6
    indices = masked.space.sample_indices(n, 3)
    alive = torch.tensor([True, False, True, True, False, True])
    x = _input(n, 0, chans=8, size=5)
    x[~alive] *= 100  # rows whose statistics would show
    masked.activate_indices(indices)
    alone.activate_indices({label: idx[alive] for label, idx in indices.items()})
    with masked.context.running(alive):
        out = masked(x)
    torch.testing.assert_close(out[~alive], x[~alive])
    torch.testing.assert_close(out[alive], alone(x[alive]), atol=1e-5, rtol=1e-4)
    for (name, a), b in zip(masked.named_buffers(), alone.buffers()):
        torch.testing.assert_close(a, b, atol=1e-6, rtol=1e-5, msg=name)


def test_depthwise_kernels_in_one_convolution_equal_each_kernels_own():
    """The zero-padded filters of every kernel size in one grouped convolution: each row gets what
    its own kernel's convolution gives (stride 2, odd sizes)."""
    torch.manual_seed(0)
    block = BinasBlock(4, 8, 2, prefix="b", kernel_sizes=(3, 5, 7))
    wide = max(block.hidden)
    y = torch.randn(5, wide, 7, 7)
    kernel = torch.tensor([2, 0, 1, 0, 2])
    together = block._depthwise_static(y, kernel)
    for i, k in enumerate(kernel.tolist()):
        torch.testing.assert_close(together[i : i + 1], block.conv_dw[k](y[i : i + 1]), atol=1e-5, rtol=1e-5)


def test_a_block_step_reads_nothing_on_the_host():
    """Forward + backward with every stage at a fixed depth (no DepthChoice grouping) never waits
    for the device, even with no index bounds known on the host."""
    net = small_binas(min_depth=2, max_depth=2).train()
    net.activate_indices(net.space.sample_indices(8, 0))
    net.context.bounds = None  # the grouped path would then read the widths back
    x = _input(8, 0)
    with HostReadCounter() as reads:
        net(x).square().mean().backward()
    assert reads.total == 0, reads.summary()

    net.static_shapes = False
    net.activate_indices(net.space.sample_indices(8, 0))
    net.context.bounds = None
    with HostReadCounter() as reads:
        net(x).square().mean().backward()
    assert reads.total > 0


def test_a_per_example_step_with_stage_depths_reads_nothing_on_the_host():
    # DepthChoice runs every optional block on every row: BinasBlock applies its BatchNorms itself, masked.
    net = small_binas().train()
    net.activate_indices(net.space.sample_indices(8, 0))
    with HostReadCounter() as reads:
        net(_input(8, 0)).square().mean().backward()
    assert reads.total == 0, reads.summary()


def test_operator_calls_stay_bounded():
    """Operator calls (kernel launches on a GPU) of a per-example training step with static shapes
    against grouped rows and the largest static subnet: a regression bound (kernel calls measured
    on this model at batch 8, fixed depths, on 2026-12-03: 731, grouped rows 935, the subnet 271,
    i.e. 2.70x, from 767 (2.83x) and, earlier, 1135 (4.19x); the 12 elastic BatchNorms make most of them)."""
    net = small_binas(min_depth=2, max_depth=2).train()
    x = _input(8, 0)

    def calls(model) -> int:
        model(x).square().mean().backward()  # warm-up: lazily built caches
        with OperatorCounter() as ops:
            model(x).square().mean().backward()
        return ops.kernels

    subnet = calls(net.export(net.space.largest()).train())
    indices = net.space.sample_indices(8, 0)
    net.activate_indices(indices)
    static = calls(net)
    net.static_shapes = False
    net.activate_indices(indices)
    grouped = calls(net)
    assert static <= grouped, (static, grouped)
    assert static <= 2.8 * subnet, (static, subnet)


def test_grouped_norm_count_factors_table():
    """``1 / M``, ``M / (M - 1)``, whether ``k > 0`` and (given a momentum) the running-average
    weight by row count (``M = k * pixels``, clamped to 1), as the grouped BatchNorm's layout looks
    them up, and kept per key."""
    from lightning_nas.nn.grouped_norm import _count_factors

    table = _count_factors(4, 6, torch.float64, torch.device("cpu"))
    elements = torch.arange(5, dtype=torch.float64) * 6
    torch.testing.assert_close(table[0], torch.tensor([1.0, 1 / 6, 1 / 12, 1 / 18, 1 / 24], dtype=torch.float64))
    torch.testing.assert_close(table[1], torch.tensor([0.0, 6 / 5, 12 / 11, 18 / 17, 24 / 23], dtype=torch.float64))
    torch.testing.assert_close(table[1] * (elements - 1).clamp_min(1), elements)
    assert _count_factors(4, 6, torch.float64, torch.device("cpu")) is table
    one_pixel = _count_factors(2, 1, torch.float32, torch.device("cpu"))
    assert one_pixel.dtype == torch.float32 and one_pixel[1].tolist() == [0.0, 1.0, 2.0]  # M = 1: no unbiasing by 1 / 0
    torch.testing.assert_close(table[2], (elements > 0).double())  # seen: some row behind the statistic
    # With the norms' common momentum: a fourth row, the running-average weights (0 where unseen).
    weighted = _count_factors(4, 6, torch.float64, torch.device("cpu"), 0.25)
    assert weighted.shape == (4, 5) and weighted is not table
    torch.testing.assert_close(weighted[:3], table)
    torch.testing.assert_close(weighted[3], torch.tensor([0.0, 0.25, 0.25, 0.25, 0.25], dtype=torch.float64))
