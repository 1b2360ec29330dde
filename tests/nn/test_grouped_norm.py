"""``GroupedBatchNorm2d`` and ``grouped_batch_norm``: each row normalised by its own group's norm."""

from __future__ import annotations

import copy

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from torch import nn

from lightning_nas.nn import GroupedBatchNorm2d, grouped_batch_norm, recalibrate_batch_norm
from lightning_nas.nn.grouped_norm import batch_norm
from lightning_nas.profiling.counters import HostReadCounter


def _randomise(norm: nn.Module, g: torch.Generator) -> None:
    shape = norm.weight.shape
    with torch.no_grad():
        norm.weight.copy_(torch.empty(shape).uniform_(0.5, 1.5, generator=g))
        norm.bias.copy_(torch.empty(shape).uniform_(-0.5, 0.5, generator=g))
        norm.running_mean.copy_(torch.empty(shape).uniform_(-0.5, 0.5, generator=g))
        norm.running_var.copy_(torch.empty(shape).uniform_(0.5, 2.0, generator=g))


def _norms(groups: int, c: int, momentum, single: bool) -> nn.Module:
    """``groups`` norms of width ``c``: a GroupedBatchNorm2d, or one nn.BatchNorm2d when ``single``."""
    return nn.BatchNorm2d(c, momentum=momentum) if single else GroupedBatchNorm2d(groups, c, momentum=momentum)


def _norm_of(norms: nn.Module, k: int) -> nn.BatchNorm2d:
    return norms if isinstance(norms, nn.BatchNorm2d) else norms.norm(k)


@settings(max_examples=30, deadline=None)
@given(
    seed=st.integers(0, 2**31 - 1),
    n=st.integers(1, 9),
    groups=st.integers(1, 4),
    masked=st.booleans(),
    training=st.booleans(),
    momentum=st.sampled_from([0.1, None]),
    single=st.booleans(),
)
def test_grouped_batch_norm_matches_batch_norm_on_each_groups_rows(seed, n, groups, masked, training, momentum, single):
    single = single and groups == 1
    g = torch.Generator().manual_seed(seed)
    c, h, w = 5, 3, 2
    norms = _norms(groups, c + 2, momentum, single).train(training)
    _randomise(norms, g)
    group = torch.randint(0, groups, (n,), generator=g)
    widths = torch.randint(1, c + 1, (n,), generator=g) if masked else torch.full((n,), c)
    mask = (torch.arange(c) < widths[:, None]).float()
    # Values where the mask is 0 must not matter: the row does not use those channels.
    x = torch.randn(n, c, h, w, generator=g) * 2 + 1
    references = [_norm_of(copy.deepcopy(norms), k) for k in range(groups)]
    out = grouped_batch_norm(x, norms, group if groups > 1 else None, mask if masked else None)
    for k, ref in enumerate(references):
        after = _norm_of(norms, k)
        for width in range(1, c + 1):
            # Rows of group k using channel width-1 and all channels before it.
            rows = ((group == k) & (widths >= width)).nonzero().flatten()
            if not len(rows):
                continue
            col = width - 1
            sub = x[rows][:, col : col + 1]
            bn = nn.BatchNorm2d(1, momentum=momentum).train(training)
            with torch.no_grad():
                for name in ("weight", "bias", "running_mean", "running_var"):
                    getattr(bn, name).copy_(getattr(ref, name)[col : col + 1])
                bn.num_batches_tracked.copy_(ref.num_batches_tracked)
            torch.testing.assert_close(out[rows][:, col : col + 1], bn(sub), atol=1e-5, rtol=1e-5)
            torch.testing.assert_close(after.running_mean[col], bn.running_mean[0], atol=1e-6, rtol=1e-5)
            torch.testing.assert_close(after.running_var[col], bn.running_var[0], atol=1e-5, rtol=1e-5)
        # Channels no row of this group uses (and the ones past x's width) keep their statistics.
        first_unused = int(widths[group == k].max()) if bool((group == k).any()) else 0
        for name in ("running_mean", "running_var"):
            assert torch.equal(getattr(after, name)[first_unused:], getattr(ref, name)[first_unused:])
        expected_tracked = ref.num_batches_tracked + int(training and bool((group == k).any()))
        assert after.num_batches_tracked.item() == expected_tracked
    assert torch.equal(out * (1 - mask[:, :, None, None]), torch.zeros_like(out))


def _reference_grouped_norm(x, norms, group, mask):
    """Each used (row, channel) normalised with its group's statistics, written out with autograd ops
    (``norms``: a GroupedBatchNorm2d, or one nn.BatchNorm2d, whose parameters it reads row by row)."""
    single = isinstance(norms, nn.BatchNorm2d)
    weight, bias = (norms.weight[None], norms.bias[None]) if single else (norms.weight, norms.bias)
    running_mean, running_var = (norms.running_mean[None], norms.running_var[None]) if single else (norms.running_mean, norms.running_var)
    out = torch.zeros_like(x)
    for i in range(x.shape[0]):
        k = int(group[i])
        for ch in range(x.shape[1]):
            if mask[i, ch] == 0:
                continue
            rows = ((group == group[i]) & (mask[:, ch] == 1)).nonzero().flatten()
            values = x[rows, ch]
            mean, var = (values.mean(), values.var(unbiased=False)) if norms.training else (running_mean[k, ch], running_var[k, ch])
            out[i, ch] = (x[i, ch] - mean) / torch.sqrt(var + norms.eps) * weight[k, ch] + bias[k, ch]
    return out


@settings(max_examples=25, deadline=None)
@given(seed=st.integers(0, 2**31 - 1), n=st.integers(1, 6), training=st.booleans(), cached=st.booleans(),
       groups=st.sampled_from([1, 3]), single=st.booleans())
def test_grouped_batch_norm_gradients_match_autograd(seed, n, training, cached, groups, single):
    """Outputs and gradients (input, weight, bias) against BatchNorm written out per row with autograd
    ops: several norms, one norm in a group, and one nn.BatchNorm2d (its own native-kernel path in training)."""
    single = single and groups == 1
    g = torch.Generator().manual_seed(seed)
    c = 4
    norms = _norms(groups, c + 1, 0.1, single).double().train(training)
    _randomise(norms, g)
    reference = copy.deepcopy(norms)
    x = torch.randn(n, c, 3, 2, dtype=torch.float64, generator=g, requires_grad=True)
    group = torch.randint(0, groups, (n,), generator=g)
    mask = (torch.arange(c) < torch.randint(1, c + 1, (n,), generator=g)[:, None]).double()
    upstream = torch.randn(n, c, 3, 2, dtype=torch.float64, generator=g)
    store = {}
    cache = (lambda key, make: store[key] if key in store else store.setdefault(key, make())) if cached else None  # noqa: E731
    if cached:  # a first call fills the cache, the second reuses it (running statistics do not enter the output)
        grouped_batch_norm(x, norms, group if groups > 1 else None, mask, cache=cache)
        assert len(store) == 1
    got = grouped_batch_norm(x, norms, group if groups > 1 else None, mask, cache=cache)
    grads = torch.autograd.grad((got * upstream).sum(), [x, norms.weight, norms.bias])
    expected = _reference_grouped_norm(x, reference, group, mask)
    expected_grads = torch.autograd.grad((expected * upstream).sum(), [x, reference.weight, reference.bias], allow_unused=True)
    torch.testing.assert_close(got, expected)
    for a, b in zip(grads, expected_grads):
        torch.testing.assert_close(a, torch.zeros_like(a) if b is None else b)


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
def test_grouped_batch_norm_on_half_precision_inputs_matches_float32(dtype):
    # 20 rows of 64×64 pixels: 81,920 elements per channel, past float16's largest value (65,504), so
    # statistics counted in the input's precision would overflow.
    g = torch.Generator().manual_seed(0)
    n, c = 20, 4
    x = torch.randn(n, c, 64, 64, generator=g) * 3 + 1
    group = torch.randint(0, 2, (n,), generator=g)
    mask = (torch.arange(c) < torch.randint(1, c + 1, (n,), generator=g)[:, None]).float()
    full = GroupedBatchNorm2d(2, c)
    half = copy.deepcopy(full)
    upstream = torch.randn(n, c, 64, 64, generator=g)
    x32, x16 = x.clone().requires_grad_(), x.to(dtype).requires_grad_()
    expected = full(x32, group, mask)
    got = half(x16, group, mask.to(dtype))
    assert got.dtype == dtype
    (expected * upstream).sum().backward()
    (got.float() * upstream).sum().backward()
    tol = 2e-2 if dtype == torch.float16 else 1e-1
    torch.testing.assert_close(got.float(), expected, atol=tol, rtol=0)
    torch.testing.assert_close(x16.grad.float(), x32.grad, atol=tol, rtol=tol)
    torch.testing.assert_close(half.running_mean, full.running_mean, atol=1e-3, rtol=1e-2)
    torch.testing.assert_close(half.running_var, full.running_var, atol=1e-3, rtol=1e-2)
    torch.testing.assert_close(half.weight.grad, full.weight.grad, atol=tol * 64, rtol=tol)


def test_grouped_batch_norm_reads_nothing_back():
    x = torch.randn(5, 8, 3, 3, requires_grad=True)
    group = torch.tensor([0, 2, 2, 1, 0])
    mask = (torch.arange(8) < torch.tensor([3, 8, 5, 8, 1])[:, None]).float()
    for norms, rows in ((GroupedBatchNorm2d(3, 8), group), (nn.BatchNorm2d(8), None)):
        with HostReadCounter() as reads:
            grouped_batch_norm(x, norms, rows, mask).sum().backward()
        assert reads.total == 0, reads.by_operator


@pytest.mark.parametrize("momentum", [0.1, None])
def test_batch_norm_of_one_group_member_is_that_norm_alone(momentum):
    g = torch.Generator().manual_seed(0)
    norms = GroupedBatchNorm2d(3, 6, momentum=momentum)
    _randomise(norms, g)
    x = torch.randn(4, 5, 3, 3, generator=g)  # 5 of the 6 channels: a prefix
    alone = norms.norm(1)
    ref = nn.BatchNorm2d(5, momentum=momentum)
    ref.load_state_dict({k: v[:5] if v.dim() else v for k, v in alone.state_dict().items()})
    before = copy.deepcopy(norms)
    torch.testing.assert_close(batch_norm(x, norms, 1), ref(x))
    torch.testing.assert_close(norms.running_mean[1, :5], ref.running_mean)
    torch.testing.assert_close(norms.running_var[1, :5], ref.running_var)
    assert norms.num_batches_tracked.tolist() == [0, 1, 0]
    for name in ("running_mean", "running_var"):  # the other norms, and the channel past x's, untouched
        assert torch.equal(getattr(norms, name)[[0, 2]], getattr(before, name)[[0, 2]])
        assert torch.equal(getattr(norms, name)[1, 5:], getattr(before, name)[1, 5:])
    norms.eval()
    torch.testing.assert_close(batch_norm(x, norms, 1), ref.eval()(x))


def test_norm_copies_one_member_and_checks_its_index():
    norms = GroupedBatchNorm2d(2, 3, eps=1e-3, momentum=0.2).eval()
    _randomise(norms, torch.Generator().manual_seed(1))
    bn = norms.norm(1)
    assert isinstance(bn, nn.BatchNorm2d) and not bn.training and (bn.eps, bn.momentum) == (1e-3, 0.2)
    assert torch.equal(bn.weight, norms.weight[1]) and torch.equal(bn.running_var, norms.running_var[1])
    with torch.no_grad():
        bn.weight.zero_()  # a copy: the group keeps its own
    assert norms.weight[1].abs().sum() > 0
    for bad in (2, -1, 1.0, True):
        with pytest.raises(ValueError, match="`g` must be an int in"):
            norms.norm(bad)


def test_construction_and_call_errors():
    for kwargs, match in (
        (dict(num_groups=0, num_features=3), "`num_groups` must be a positive int"),
        (dict(num_groups=2, num_features=2.0), "`num_features` must be a positive int"),
        (dict(num_groups=2, num_features=3, momentum=1.5), "`momentum` must be in"),
    ):
        with pytest.raises(ValueError, match=match):
            GroupedBatchNorm2d(**kwargs)
    norms, x = GroupedBatchNorm2d(2, 3), torch.randn(4, 3, 2, 2)
    with pytest.raises(ValueError, match="`group` is required with 2 norms"):
        norms(x)
    for args, match in (
        ((torch.randn(4, 5, 2, 2), torch.zeros(4, dtype=torch.long)), r"`x` must be \(n, C', H, W\) with C' <= 3"),
        ((x, torch.zeros(3, dtype=torch.long)), r"`group` must be an integer tensor of shape \(4,\)"),
        ((x, torch.zeros(4)), "`group` must be an integer tensor"),
        ((x, torch.zeros(4, dtype=torch.long), torch.ones(4, 2)), r"`mask` must have shape \(4, 3\)"),
    ):
        with pytest.raises(ValueError, match=match):
            norms(*args)


def test_loads_a_state_dict_of_separate_norms():
    # What a list of nn.BatchNorm2d (an nn.ModuleList) stored: keys "{g}.weight", ...
    g = torch.Generator().manual_seed(2)
    separate = nn.ModuleList(nn.BatchNorm2d(4) for _ in range(3))
    for bn in separate:
        _randomise(bn, g)
        bn.num_batches_tracked.fill_(int(torch.randint(1, 9, (), generator=g)))
    norms = GroupedBatchNorm2d(3, 4)
    norms.load_state_dict(separate.state_dict())
    for k, bn in enumerate(separate):
        for name in ("weight", "bias", "running_mean", "running_var", "num_batches_tracked"):
            assert torch.equal(getattr(norms, name)[k], getattr(bn, name)), (k, name)
    with pytest.raises(RuntimeError, match="Missing key"):  # a partial list is not guessed at
        norms.load_state_dict({k: v for k, v in separate.state_dict().items() if not k.startswith("2.")})


def test_recalibration_averages_each_norm_over_its_own_batches():
    # Cumulative averages (momentum None while recalibrating), each norm over the batches whose rows use it.
    g = torch.Generator().manual_seed(3)
    norms = GroupedBatchNorm2d(2, 3)
    _randomise(norms, g)
    batches = [torch.randn(4, 3, 2, 2, generator=g) + i for i in range(3)]
    groups = [torch.tensor([0, 0, 1, 1]), torch.tensor([0, 0, 0, 0]), torch.tensor([1, 0, 1, 0])]
    calls = iter(groups)
    assert recalibrate_batch_norm(norms, batches, forward=lambda m, x: m(x, next(calls))) == 3
    assert norms.momentum == 0.1 and norms.num_batches_tracked.tolist() == [3, 2]
    for k in range(2):
        means = [x[rows == k].mean((0, 2, 3)) for x, rows in zip(batches, groups) if bool((rows == k).any())]
        torch.testing.assert_close(norms.running_mean[k], torch.stack(means).mean(0))


def test_a_grouped_norm_not_masking_stopped_rows_keeps_a_depth_choice_grouping_rows():
    # Its batch statistics would take in the rows a DepthChoice has stopped, unless the mutable
    # applying it declares it masks them (as BinasBlock does).
    from lightning_nas.nn.choice import rows_separable
    from lightning_nas.spaces import BinasBlock

    plain = nn.Sequential(nn.Conv2d(3, 3, 1), GroupedBatchNorm2d(1, 3))
    assert not rows_separable([plain])
    assert rows_separable([plain.eval()])  # running statistics: each row on its own
    assert rows_separable([BinasBlock(8, 8, 1, prefix="b").train()])
