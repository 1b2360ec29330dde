"""Per-example mode with static shapes: exact, no host reads, few operator calls."""

from __future__ import annotations

import copy

import pytest
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import lightning_nas as ln
from lightning_nas.profiling.counters import HostReadCounter, OperatorCounter
from lightning_nas.spaces import mobilenet_supernet

FIXTURE_OK = settings(max_examples=8, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])


def tiny_mobilenet() -> ln.Supernet:
    torch.manual_seed(0)
    net = mobilenet_supernet(stem_channels=8, stages=((8, 1, 2), (16, 2, 3)), head_channels=16)
    net.static_shapes = True  # "auto" groups rows on a CPU
    return net


def step(net: ln.Supernet, x: torch.Tensor) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
    """Forward + backward; the output and every gradient."""
    net.zero_grad(set_to_none=True)
    out = net(x)
    (out * torch.linspace(-1, 1, out.shape[1])).sum().backward()
    return out.detach(), {name: p.grad.clone() for name, p in net.named_parameters() if p.grad is not None}


def assert_same_step(a: ln.Supernet, b: ln.Supernet, x: torch.Tensor) -> None:
    out_a, grads_a = step(a, x)
    out_b, grads_b = step(b, x)
    torch.testing.assert_close(out_a, out_b, atol=1e-5, rtol=1e-4)
    # A block no row reaches gets no gradient from grouped rows and a zero one with static shapes.
    for name in grads_a.keys() | grads_b.keys():
        zero = torch.zeros_like(grads_a.get(name, grads_b.get(name)))
        # Float rounding, amplified by batch statistics over a few rows, scales with the gradient's size.
        scale = max(1.0, float(grads_a.get(name, zero).abs().max()))
        torch.testing.assert_close(grads_a.get(name, zero), grads_b.get(name, zero), atol=1e-4 * scale, rtol=1e-4, msg=name)
    for (name, buf_a), buf_b in zip(a.named_buffers(), b.buffers()):
        torch.testing.assert_close(buf_a, buf_b, atol=1e-6, rtol=1e-5, msg=name)


@pytest.mark.parametrize("build", ["all_mutables", "mobilenet"])
@settings(max_examples=6, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(seed=st.integers(0, 2**31 - 1))
def test_static_shapes_equal_grouped_rows_in_training(all_mutables_supernet, build, seed):
    """Outputs, gradients and running statistics of a training step agree between the two
    per-example modes (the grouped one computes each row through its own candidates). In float64:
    batch statistics over a few rows amplify float32 rounding past any fixed tolerance on some
    seeds (seen: a 1.3e-3 gradient difference that is 6e-14 in float64)."""
    static = (all_mutables_supernet if build == "all_mutables" else tiny_mobilenet()).double()
    static.static_shapes = True
    grouped = copy.deepcopy(static)
    grouped.static_shapes = False
    n = 7
    indices = static.space.sample_indices(n, seed)
    x = torch.randn(n, 3, 8, 8, generator=torch.Generator().manual_seed(seed), dtype=torch.float64)
    for net in (static, grouped):
        net.train().activate_indices(indices)
    assert_same_step(static, grouped, x)


@FIXTURE_OK
@given(seed=st.integers(0, 2**31 - 1))
def test_per_example_batch_of_one_arch_equals_that_subnet_in_training(all_mutables_supernet, seed):
    """Every row under one arch through the masked path: the subnet's own training step, gradients
    and running statistics included (the largest shapes and masks change nothing)."""
    per_example = tiny_mobilenet().train()
    scalar = copy.deepcopy(per_example)
    arch = per_example.space.sample(seed)
    n = 5
    per_example.activate([arch] * n)
    scalar.activate(arch)
    assert per_example.static_shapes and per_example.per_example
    assert_same_step(per_example, scalar, torch.randn(n, 3, 8, 8, generator=torch.Generator().manual_seed(seed)))


@pytest.mark.parametrize("static_shapes", [True, False])
def test_per_example_rows_equal_their_subnets_in_eval(static_shapes):
    net = tiny_mobilenet().eval()
    net.static_shapes = static_shapes
    archs = net.space.sample_many(6, 3)
    x = torch.randn(6, 3, 8, 8, generator=torch.Generator().manual_seed(1))
    net.activate(archs)
    together = net(x)
    for i, arch in enumerate(archs):
        torch.testing.assert_close(together[i : i + 1], net.export(arch).eval()(x[i : i + 1]), atol=1e-5, rtol=1e-4)


def test_a_per_example_step_reads_nothing_on_the_host():
    """Forward + backward of a per-example step with static shapes never waits for the device."""
    net = tiny_mobilenet().train()
    net.activate_indices(net.space.sample_indices(8, 0))
    x = torch.randn(8, 3, 8, 8)
    with HostReadCounter() as reads:
        net(x).square().mean().backward()
    assert reads.total == 0, reads.summary()

    net.static_shapes = False  # the grouped mode reads group sizes: the counter sees them
    net.activate_indices(net.space.sample_indices(8, 0))
    with HostReadCounter() as reads:
        net(x).square().mean().backward()
    assert reads.total > 0


def test_operator_calls_of_a_per_example_step_stay_bounded():
    """Operator calls (kernel launches on a GPU) of a per-example training step against the static
    subnet's: a regression bound (measured 2.44x on this 5-block model at batch 8 on 2026-12-03,
    3.04x before; grouped rows 3.6x; an elastic BatchNorm makes ~14 calls forward and ~7 backward
    against the static one's 3 and 1, plus ~8 once per distinct mask for its counts)."""
    net = tiny_mobilenet().train()
    x = torch.randn(8, 3, 8, 8)
    static = net.export(net.space.largest()).train()

    def calls(model) -> int:
        model(x).square().mean().backward()  # warm-up: lazily built caches
        with OperatorCounter() as ops:
            model(x).square().mean().backward()
        return ops.kernels

    static_calls = calls(static)
    net.activate_indices(net.space.sample_indices(8, 0))
    per_example = calls(net)
    assert per_example <= 2.6 * static_calls, (per_example, static_calls)


def test_static_shapes_must_be_a_bool():
    net = tiny_mobilenet()
    with pytest.raises(ValueError, match="`static_shapes` must be True, False or 'auto', got 'yes'"):
        net.static_shapes = "yes"
    with pytest.raises(ValueError, match="`static_shapes` must be True, False or 'auto'"):
        ln.Supernet(torch.nn.Identity(), static_shapes=1)


def test_auto_static_shapes_group_rows_on_a_cpu_and_use_static_shapes_elsewhere():
    net = mobilenet_supernet(stem_channels=8, stages=((8, 1, 2),), head_channels=8)
    assert net.static_shapes == "auto"
    net.activate(net.space.sample_many(3, seed=0))
    assert net.context.static_shapes is False  # parameters on the CPU: grouped rows
    net._resolve_static_shapes(torch.device("cuda"))
    assert net.context.static_shapes is True
    net.static_shapes = False
    net._resolve_static_shapes(torch.device("cuda"))
    assert net.context.static_shapes is False and net.static_shapes is False
    net.static_shapes = True
    assert net.context.static_shapes is True
    # Only "auto" turns static shapes on while torch.compile traces (tests/nn/test_compile.py).
    assert not net.context.static_shapes_when_compiled
    net.static_shapes = "auto"
    assert net.context.static_shapes_when_compiled


def test_contexts_pickled_with_the_plain_static_shapes_attribute_still_load():
    state = ln.nn.ArchContext().__getstate__()
    del state["_static_shapes"]
    state["static_shapes"] = False  # the old layout: a plain attribute
    old = ln.nn.ArchContext.__new__(ln.nn.ArchContext)
    old.__setstate__(state)
    assert old.static_shapes is False and "static_shapes" not in vars(old)


@pytest.mark.parametrize("space", ["gpt-tiny", "vit-tiny"])
def test_transformer_stacks_run_static_shapes_exactly_without_host_reads(space):
    """The elastic attention, MLP and block compute each row from that row alone, so a transformer
    stack's DepthChoice runs its optional blocks on every row with static shapes (no grouping, no
    host reads), with the outputs and gradients of the grouped rows."""
    from lightning_nas.spaces import create_space

    torch.manual_seed(0)
    static = create_space(space).train()
    static.static_shapes = True
    grouped = copy.deepcopy(static)
    grouped.static_shapes = False
    n = 6
    g = torch.Generator().manual_seed(0)
    x = torch.randint(0, 128, (n, 12), generator=g) if space == "gpt-tiny" else torch.randn(n, 1, 8, 8, generator=g)
    indices = static.space.sample_indices(n, 3)
    depths = [k for k in indices if k.endswith("depth")]
    assert depths and len(set(indices[depths[0]].tolist())) > 1  # rows of different depths share the batch
    results = []
    for net in (static, grouped):
        net.activate_indices(indices)
        with HostReadCounter() as reads:
            out = net(x)
            out.square().mean().backward()
        results.append((out.detach(), {k: p.grad for k, p in net.named_parameters() if p.grad is not None}, reads.total))
    (out_s, grads_s, reads_s), (out_g, grads_g, reads_g) = results
    assert reads_s == 0 and reads_g > 0
    torch.testing.assert_close(out_s, out_g, atol=1e-5, rtol=1e-4)
    for name in grads_s.keys() | grads_g.keys():
        zero = torch.zeros_like(grads_s.get(name, grads_g.get(name)))
        torch.testing.assert_close(grads_s.get(name, zero), grads_g.get(name, zero), atol=1e-5, rtol=1e-4, msg=name)


class _FlaggedBlock(torch.nn.Module):
    """Convolutions each feeding an elastic BatchNorm of its width (a MobileNet block's pattern),
    with a kernel decision on a full convolution and biases, so every masked path is taken."""

    def __init__(self, prefix: str, flags: bool) -> None:
        super().__init__()
        width, kernel = ln.Choice([2, 4, 6], f"{prefix}.w"), ln.Choice([1, 3], f"{prefix}.k")
        self.pw = ln.ElasticConv2d(4, width, kernel, output_masked=flags)
        self.bn1 = ln.ElasticBatchNorm2d(width)
        self.dw = ln.ElasticConv2d(width, width, 3, depthwise=True, output_masked=flags)
        self.bn2 = ln.ElasticBatchNorm2d(width)
        self.pwl = ln.ElasticConv2d(width, 4, 1, bias=False, input_zeroed=flags, output_masked=flags)
        self.bn3 = ln.ElasticBatchNorm2d(4)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = torch.relu(self.bn1(self.pw(x)))
        y = torch.relu(self.bn2(self.dw(y)))
        return self.bn3(self.pwl(y)) + x


def test_convolutions_skipping_masks_their_norms_make_redundant_are_exact_and_cheaper():
    """``ElasticConv2d(input_zeroed=True, output_masked=True)`` before and after elastic BatchNorms
    (rows of different widths, kernels and depths in one batch): the same outputs, gradients and
    running statistics as with every mask, in fewer operator calls."""
    nets = []
    for flags in (False, True):
        torch.manual_seed(0)
        stage = ln.DepthChoice([_FlaggedBlock(f"b{i}", flags) for i in range(2)], [1, 2], "depth")
        net = ln.Supernet(torch.nn.Sequential(stage, torch.nn.Flatten(1))).double().train()
        net.static_shapes = True
        nets.append(net)
    nets[1].load_state_dict(nets[0].state_dict())
    n = 7
    indices = nets[0].space.sample_indices(n, 5)
    x = torch.randn(n, 4, 5, 5, generator=torch.Generator().manual_seed(5), dtype=torch.float64)
    calls = []
    for net in nets:
        net.activate_indices(indices)
        with OperatorCounter() as ops:
            net(x).sum().backward()
        calls.append(ops.total)
        net.activate_indices(indices)
    assert_same_step(nets[0], nets[1], x)
    assert calls[1] < calls[0], calls
    with pytest.raises(ValueError, match="`output_masked` must be a bool"):
        ln.ElasticConv2d(4, 4, 1, output_masked="yes")
    with pytest.raises(ValueError, match="`input_zeroed` must be a bool"):
        ln.ElasticConv2d(4, 4, 1, input_zeroed=1)


def test_width_mask_is_each_rows_prefix_in_both_per_example_modes():
    from lightning_nas.nn.elastic_size import row_mask, size_mask, width_mask

    width = ln.Choice([2, 3, 5], "w")
    net = ln.Supernet(torch.nn.Sequential(ln.ElasticConv2d(3, width, 1), ln.ElasticBatchNorm2d(width)))
    indices = torch.tensor([2, 0, 1, 1, 0])
    for static in (True, False):
        net.static_shapes = static
        net.activate_indices({"w": indices})
        expected = size_mask(torch.tensor([5, 2, 3, 3, 2]), 5, torch.float32)
        mask = width_mask(width, 5, torch.float32, torch.device("cpu"))
        assert torch.equal(mask, expected)
        assert width_mask(width, 5, torch.float32, torch.device("cpu")) is mask  # cached for the activation
        assert torch.equal(width_mask(width, 5, torch.float32, torch.device("cpu"), spatial=2), expected[:, :, None, None])
        assert torch.equal(row_mask(width, 5, torch.float32, torch.device("cpu"), net.context), expected)
        net(torch.randn(5, 3, 2, 2)).sum().backward()  # the layers take it too


class _OpChoices(torch.nn.Module):
    """An OpChoice whose candidates compute each row on its own (static shapes run them all on every
    row), then (``batchwise``) one with a plain BatchNorm in a candidate (batch statistics over its
    own rows: routed, with host reads)."""

    def __init__(self, batchwise: bool) -> None:
        super().__init__()
        nn = torch.nn
        gate = nn.Sequential(nn.AdaptiveAvgPool2d(1), nn.Conv2d(4, 4, 1), nn.Sigmoid())
        self.rowwise = ln.OpChoice({"id": nn.Identity(), "conv": nn.Conv2d(4, 4, 3, padding=1), "gate": _Gate(gate)}, "rowwise")
        self.norm = ln.ElasticBatchNorm2d(4)
        self.batchwise = ln.OpChoice([nn.Identity(), nn.Sequential(nn.Conv2d(4, 4, 1), nn.BatchNorm2d(4))], "batchwise") if batchwise else nn.Identity()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.batchwise(self.norm(self.rowwise(x))).mean((2, 3))


class _Gate(torch.nn.Module):
    def __init__(self, gate: torch.nn.Module) -> None:
        super().__init__()
        self.gate = gate

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x * self.gate(x)


@pytest.mark.parametrize("batchwise", [False, True])
def test_op_choice_runs_rowwise_candidates_on_every_row_with_static_shapes(batchwise):
    """Row-wise candidates: every candidate on every row, each row keeping its own (no host reads);
    a candidate with a plain BatchNorm keeps routing rows (its statistics over its own rows). Both
    exact against grouped rows in training (float64) and against each row's subnet in eval."""
    torch.manual_seed(0)
    static = ln.Supernet(_OpChoices(batchwise)).double()
    static.static_shapes = True
    grouped = copy.deepcopy(static)
    grouped.static_shapes = False
    n = 9
    indices = static.space.sample_indices(n, 0)
    indices["rowwise"] = torch.arange(n) % 3  # every candidate used
    if batchwise:
        indices["batchwise"] = torch.arange(n) % 2
    x = torch.randn(n, 4, 5, 5, generator=torch.Generator().manual_seed(1), dtype=torch.float64)
    for net in (static, grouped):
        net.train().activate_indices(indices)
    with HostReadCounter() as reads:
        copy.deepcopy(static)(x).sum().backward()
    assert (reads.total > 0) == batchwise, reads.summary()
    assert_same_step(static, grouped, x)
    static.eval()
    rows = static(x)
    for i in range(n):
        arch = {label: static.space[label].values[int(v[i])] for label, v in indices.items()}
        torch.testing.assert_close(rows[i : i + 1], static.export(arch).eval()(x[i : i + 1]), atol=1e-12, rtol=1e-10)


CELL_SPACES = {
    "nb201": lambda: ln.spaces.nb201_supernet(channels=4, cells_per_stage=1),
    "darts": lambda: ln.spaces.create_space("darts", channels=4, layers=3),
}


@pytest.mark.parametrize("space", CELL_SPACES)
def test_cell_spaces_run_every_candidate_on_every_row_exactly(space):
    """NB201's and DARTS's edges (convolutions with norms, pools, skip, zero; DARTS's node inputs
    too) with static shapes: no host reads, and what grouping the rows by candidate computes (each
    norm's statistics over its own rows)."""
    torch.manual_seed(0)
    static = CELL_SPACES[space]().double()
    static.static_shapes = True
    grouped = copy.deepcopy(static)
    grouped.static_shapes = False
    n = 10
    indices = static.space.sample_indices(n, 5)
    x = torch.randn(n, 3, 8, 8, generator=torch.Generator().manual_seed(2), dtype=torch.float64)
    for net in (static, grouped):
        net.train().activate_indices(indices)
    with HostReadCounter() as reads:
        copy.deepcopy(static)(x).sum().backward()
    assert reads.total == 0, reads.summary()
    assert_same_step(static, grouped, x)


def test_elastic_batch_norms_converts_in_place_and_refuses_what_is_not_a_module():
    torch.manual_seed(0)
    block = torch.nn.Sequential(torch.nn.Conv2d(3, 4, 1), torch.nn.BatchNorm2d(4), torch.nn.Sequential(torch.nn.BatchNorm2d(4))).eval()
    reference = copy.deepcopy(block)
    keys = block.state_dict().keys()
    assert ln.nn.elastic_batch_norms(block) is block
    assert [type(m).__name__ for m in block.modules()].count("ElasticBatchNorm2d") == 2
    assert block.state_dict().keys() == keys and not block[1].training
    x = torch.randn(2, 3, 5, 5)
    torch.testing.assert_close(block(x), reference(x))
    assert type(ln.nn.elastic_batch_norms(torch.nn.BatchNorm2d(4))) is ln.ElasticBatchNorm2d
    with pytest.raises(ValueError, match="`module` must be an nn.Module, got str"):
        ln.nn.elastic_batch_norms("bn")
