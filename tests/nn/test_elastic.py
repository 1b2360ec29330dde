"""Elastic layers: prefix and centre-crop weight sharing, masked statistics, calibration."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from hypothesis import given, settings
from hypothesis import strategies as st
from torch import nn

import lightning_nas as ln
from lightning_nas.nn import Choice, recalibrate_batch_norm
from lightning_nas.nn.conv import crop_kernel
from lightning_nas.nn.norm import masked_batch_norm


@settings(max_examples=25, deadline=None)
@given(out=st.sampled_from([2, 4, 6]), c_in=st.sampled_from([1, 3]), k=st.sampled_from([1, 3, 5]), stride=st.sampled_from([1, 2]))
def test_conv_uses_channel_prefix_and_centre_crop(out, c_in, k, stride):
    conv = ln.ElasticConv2d(Choice([1, 3], "cin"), Choice([2, 4, 6], "out"), Choice([1, 3, 5], "k"), stride)
    net = ln.Supernet(conv)
    net.activate({"cin": c_in, "out": out, "k": k})
    x = torch.randn(2, c_in, 7, 7)
    start = (5 - k) // 2
    weight = conv.weight[:out, :c_in, start : start + k, start : start + k]
    expected = F.conv2d(x, weight, conv.bias[:out], stride, k // 2)
    torch.testing.assert_close(net(x), expected)
    assert crop_kernel(conv.weight, k).shape[-1] == k


def test_linear_and_layer_norm_prefixes():
    hidden = Choice([3, 5], "h")
    lin, norm = ln.ElasticLinear(4, hidden), ln.ElasticLayerNorm(hidden)
    net = ln.Supernet(nn.Sequential(lin, norm))
    net.activate({"h": 3})
    x = torch.randn(2, 7, 4)
    expected = F.layer_norm(F.linear(x, lin.weight[:3], lin.bias[:3]), (3,), norm.weight[:3], norm.bias[:3])
    torch.testing.assert_close(net(x), expected)


def test_per_example_layer_norm_on_sequences():
    hidden = Choice([3, 5], "h")
    net = ln.Supernet(nn.Sequential(ln.ElasticLinear(4, hidden), ln.ElasticLayerNorm(hidden), ln.ElasticLinear(hidden, 2)))
    x = torch.randn(3, 6, 4)
    archs = [{"h": 5}, {"h": 3}, {"h": 5}]
    net.activate(archs)
    together = net(x)
    for i, arch in enumerate(archs):
        with net.activated(arch):
            torch.testing.assert_close(together[i], net(x[i : i + 1])[0], atol=1e-5, rtol=1e-5)


def test_per_example_batch_norm_training_statistics_use_only_active_rows():
    width = Choice([2, 4], "w")
    bn = ln.ElasticBatchNorm2d(width, momentum=1.0)
    net = ln.Supernet(bn).train()
    x = torch.randn(4, 4, 3, 3)
    x[:2, 2:] = 0.0  # rows 0 and 1 run width 2: their channels 2..3 are zero upstream
    net.activate([{"w": 2}, {"w": 2}, {"w": 4}, {"w": 4}])
    y = net(x)
    # Channels 2..3 are normalised over rows 2..3 only; rows 0..1 stay zero there.
    reference = F.batch_norm(x[2:, 2:], None, None, training=True)
    torch.testing.assert_close(y[2:, 2:], reference, atol=1e-5, rtol=1e-5)
    assert torch.equal(y[:2, 2:], torch.zeros_like(y[:2, 2:]))
    torch.testing.assert_close(bn.running_mean[2:], x[2:, 2:].mean((0, 2, 3)))
    torch.testing.assert_close(y[:, :2], F.batch_norm(x[:, :2], None, None, training=True), atol=1e-5, rtol=1e-5)


def _masked_batch_norm_by_definition(x, mask, weight, bias, eps=1e-5):
    """Each channel normalised over the entries of the rows that use it, spelt out (autograd gives the backward)."""
    m4 = mask[:, :, None, None]
    count = (mask.sum(0) * x.shape[2] * x.shape[3]).clamp_min(1)
    mean = (x * m4).sum((0, 2, 3)) / count
    var = ((x - mean[:, None, None]) ** 2 * m4).sum((0, 2, 3)) / count
    y = (x - mean[:, None, None]) / torch.sqrt(var[:, None, None] + eps)
    y = y if weight is None else y * weight[:, None, None]
    y = y if bias is None else y + bias[:, None, None]
    return y * m4, mean, var, mask.sum(0) * x.shape[2] * x.shape[3]


@settings(max_examples=30, deadline=None)
@given(
    n=st.integers(1, 6), c=st.integers(1, 5), h=st.integers(1, 3), affine=st.sampled_from(["both", "weight", "none"]),
    seed=st.integers(0, 2**16),
)
def test_masked_batch_norm_equals_its_definition_with_gradients_and_running_statistics(n, c, h, affine, seed):
    """Any 0/1 mask (not only prefixes; all-zero channels and rows included), in float64: output,
    gradients of input, weight and bias, and the running statistics of the channels some row uses."""
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(n, c, h, h + 1, generator=g, dtype=torch.float64) * 3 + 1
    mask = (torch.rand(n, c, generator=g) < 0.6).double()
    weight = torch.randn(c, generator=g, dtype=torch.float64).requires_grad_() if affine != "none" else None
    bias = torch.randn(c, generator=g, dtype=torch.float64).requires_grad_() if affine == "both" else None
    running_mean, running_var = torch.zeros(c, dtype=torch.float64), torch.ones(c, dtype=torch.float64)
    x1, x2 = x.clone().requires_grad_(), x.clone().requires_grad_()
    y = masked_batch_norm(x1, mask, weight, bias, running_mean, running_var, momentum=0.5)
    expected, mean, var, count = _masked_batch_norm_by_definition(x2, mask, weight, bias)
    torch.testing.assert_close(y, expected, atol=1e-10, rtol=1e-9)
    dy = torch.randn(y.shape, generator=g, dtype=torch.float64)
    params = [p for p in (weight, bias) if p is not None]
    for got, want in zip(torch.autograd.grad(y, [x1, *params], dy), torch.autograd.grad(expected, [x2, *params], dy)):
        torch.testing.assert_close(got, want, atol=1e-9, rtol=1e-8)
    seen = count > 0
    unbiased = var.detach() * count / (count - 1).clamp_min(1)
    torch.testing.assert_close(running_mean[seen], 0.5 * mean.detach()[seen])
    torch.testing.assert_close(running_var[seen], 0.5 + 0.5 * unbiased[seen])
    assert torch.all(running_mean[~seen] == 0) and torch.all(running_var[~seen] == 1)


def test_from_layers_share_the_original_parameters():
    conv, lin, bn = nn.Conv2d(3, 6, 5, padding=2), nn.Linear(4, 6), nn.BatchNorm2d(6)
    ec = ln.ElasticConv2d.from_conv(conv, kernel_size=Choice([3, 5], "k", default=5))
    assert ec.weight is conv.weight
    assert ln.ElasticLinear.from_linear(lin).weight is lin.weight
    assert ln.ElasticBatchNorm2d.from_batch_norm(bn).running_mean is bn.running_mean
    with pytest.raises(ValueError, match="largest candidate must be the original layer"):
        ln.ElasticConv2d.from_conv(conv, kernel_size=Choice([5, 7], "k"))
    with pytest.raises(ValueError, match="'same' padding 2"):
        ln.ElasticConv2d.from_conv(nn.Conv2d(3, 6, 5, padding=0), kernel_size=Choice([3, 5], "k"))


@pytest.mark.parametrize(
    ("build", "message"),
    [
        (lambda: ln.ElasticConv2d(3, Choice([4, 0], "w"), 3), r"`out_channels` must be a positive int"),
        (lambda: ln.ElasticConv2d(3, 4, Choice([2, 3], "k")), r"`kernel_size` must be a positive odd int"),
        (lambda: ln.ElasticConv2d(3, 4, 3, depthwise=True), r"depthwise ElasticConv2d needs out_channels == in_channels"),
        (lambda: ln.ElasticConv2d(3, 4, Choice([3, 5], "k"), padding=1), r"`padding` can only be fixed for a fixed kernel_size"),
        (lambda: ln.OpChoice([], "x"), r"must not be empty"),
        (lambda: ln.DepthChoice([nn.ReLU()], [0, 2], "d"), r"must be ints in \[0, 1\], got \[0, 2\]"),
        (lambda: ln.InputChoice(2, 3, "i"), r"`n_chosen` must be an int in \[1, 2\], got 3"),
        (lambda: Choice([1, 1], "c"), r"has duplicates"),
        (lambda: Choice(5, "c"), r"`values` must be a list or tuple"),
    ],
)
def test_bad_constructor_arguments(build, message):
    with pytest.raises(ValueError, match=message):
        build()


def _data(n_batches=4):
    g = torch.Generator().manual_seed(0)
    return [(torch.randn(8, 3, 6, 6, generator=g) * 3 + 1, None) for _ in range(n_batches)]


def test_recalibration_gives_the_exact_mean_of_batch_statistics():
    width = Choice([4, 8], "w")
    net = ln.Supernet(nn.Sequential(ln.ElasticConv2d(3, width, 3), ln.ElasticBatchNorm2d(width)))
    arch = {"w": 4}
    exported = net.export(arch)
    data = _data()
    assert recalibrate_batch_norm(exported, data) == 4
    conv, bn = exported[0], exported[1]
    with torch.no_grad():
        feats = [conv(x) for x, _ in data]
    expected_mean = torch.stack([f.mean((0, 2, 3)) for f in feats]).mean(0)
    torch.testing.assert_close(bn.running_mean, expected_mean, atol=1e-5, rtol=1e-5)
    assert bn.momentum == 0.1 and exported.training  # restored
    # The same through export's option, and on the supernet itself with the arch active.
    again = net.export(arch, calibration_batches=data, num_calibration_batches=2)
    assert again[1].num_batches_tracked == 2
    with net.activated(arch):
        recalibrate_batch_norm(net, data)
    torch.testing.assert_close(net.module[1].running_mean[:4], expected_mean, atol=1e-5, rtol=1e-5)


def test_recalibration_errors():
    with pytest.raises(ValueError, match="yielded no batch"):
        recalibrate_batch_norm(nn.BatchNorm2d(3), [])
    with pytest.raises(ValueError, match="`num_batches` must be a positive int"):
        recalibrate_batch_norm(nn.BatchNorm2d(3), _data(), num_batches=0)


def test_recalibration_and_mutate_refuse_arguments_of_the_wrong_type():
    import lightning_nas as ln

    net = torch.nn.Sequential(torch.nn.BatchNorm1d(2))
    for bad in (1.5, True, 0):
        with pytest.raises(ValueError, match="`num_batches` must be a positive int or None"):
            ln.recalibrate_batch_norm(net, [torch.randn(4, 2)], num_batches=bad)
    with pytest.raises(ValueError, match="`forward` must be callable"):
        ln.recalibrate_batch_norm(net, [torch.randn(4, 2)], forward="net")
    with pytest.raises(ValueError, match="`strict` must be a bool, got 'no'"):
        ln.mutate(net, rules=[lambda path, m: None], strict="no")
    space = ln.Supernet(torch.nn.Sequential(ln.Choice([1, 2], "c"))).space
    with pytest.raises(ValueError, match="`limit` must be a non-negative int, got 1.5"):
        list(space.enumerate(limit=1.5))
