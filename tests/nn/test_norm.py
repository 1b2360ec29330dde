"""Running-statistics updates of the elastic norms hidden from autograd (``lerp_running_stats``)."""

import torch
import torch.nn.functional as F

from lightning_nas.nn.norm import lerp_running_stats
from lightning_nas.spaces import binas_supernet, mobilenet_supernet


def test_lerp_running_stats_updates_buffers_saved_by_an_earlier_forward():
    # F.batch_norm saves its running statistics for backward: an in-place update seen by autograd
    # would make that backward fail ("modified by an inplace operation").
    g = torch.Generator().manual_seed(0)
    x = torch.randn(4, 3, 2, 2, generator=g, requires_grad=True)
    weight = torch.rand(3, generator=g).requires_grad_()
    running_mean, running_var = torch.zeros(3), torch.ones(3)
    y = F.batch_norm(x, running_mean, running_var, weight, None, False)
    before = (running_mean.clone(), running_var.clone())
    target, weights = [torch.full((3,), 2.0), torch.full((3,), 4.0)], [torch.tensor([0.5, 0.0, 1.0])] * 2
    lerp_running_stats([running_mean, running_var], target, weights)
    y.square().sum().backward()  # would raise if the update had bumped the version counters
    for buffer, old, new in zip((running_mean, running_var), before, target):
        torch.testing.assert_close(buffer, torch.lerp(old, new, weights[0]))
    assert x.grad is not None


def test_teacher_forward_then_per_example_forward_backpropagate_together():
    # In-place distillation's pattern: a full-width forward, then a per-example one updating the same
    # norms' running statistics, then one backward through both.
    for build in (mobilenet_supernet, lambda: binas_supernet(preset="tiny")):
        torch.manual_seed(0)
        supernet = build().train()
        supernet.static_shapes = True
        x = torch.randn(6, 3, 32, 32)
        supernet.activate(supernet.space.largest())
        teacher = supernet(x)
        supernet.activate_indices(supernet.space.sample_indices(6, seed=0))
        student = supernet(x)
        (teacher.sum() + student.sum()).backward()
        assert all(p.grad is None or torch.isfinite(p.grad).all() for p in supernet.parameters())


def test_masked_batch_norm_per_row_count_tables_are_built_once_and_change_nothing():
    """The per-mask factors come from tables indexed by each channel's row count, kept in the
    ``tables`` dict across calls: the same output, gradients and running statistics as tables
    built at each call, with a float momentum or the same momentum as a tensor (cumulative averages)."""
    from lightning_nas.nn.norm import _count_table, masked_batch_norm

    g = torch.Generator().manual_seed(3)
    x = torch.randn(5, 4, 3, 2, generator=g, dtype=torch.float64)
    mask = torch.tensor([[1, 1, 0, 0], [1, 0, 0, 0], [1, 1, 1, 0], [0, 0, 0, 0], [1, 1, 0, 0]], dtype=torch.float64)
    weight = torch.rand(4, generator=g, dtype=torch.float64)
    results = []
    tables: dict = {}
    for momentum, kept in ((0.25, None), (0.25, tables), (torch.tensor(0.25, dtype=torch.float64), tables)):
        xi, wi = x.clone().requires_grad_(), weight.clone().requires_grad_()
        running = [torch.zeros(4, dtype=torch.float64), torch.ones(4, dtype=torch.float64)]
        y = masked_batch_norm(xi, mask, wi, None, *running, momentum=momentum, tables=kept)
        y.backward(torch.linspace(-1, 1, y.numel(), dtype=torch.float64).view_as(y))
        results.append((y.detach(), xi.grad, wi.grad, *running))
    for other in results[1:]:
        for got, want in zip(other, results[0]):
            torch.testing.assert_close(got, want, atol=1e-12, rtol=1e-12)
    # Channel 3 no row uses: its running statistics stay; channel 2 (one row, 6 pixels) is unbiased by 6 / 5.
    assert results[0][3][3] == 0 and results[0][4][3] == 1
    torch.testing.assert_close(results[0][4][2], 0.75 + 0.25 * x[2, 2].var(correction=1))
    assert len(tables) == 3  # factors for the float momentum and for a tensor one, unbiasing for 6 pixels
    built = dict(tables)
    masked_batch_norm(x, mask, weight, None, torch.zeros(4, dtype=torch.float64), torch.ones(4, dtype=torch.float64), tables=tables, momentum=0.25)
    assert all(tables[k] is built[k] for k in built) and len(tables) == 3
    factors = _count_table(None, "factors", 5, 0.25, torch.float64, torch.device("cpu"))
    k = torch.arange(6, dtype=torch.float64)
    torch.testing.assert_close(factors, torch.stack([5 / k.clamp_min(1), 0.25 * (k > 0), 1 - 5 / k.clamp_min(1)]))
    unbias = _count_table(None, "unbias", 5, 6, torch.float64, torch.device("cpu"))
    torch.testing.assert_close(unbias, 6 * k / (6 * k - 1).clamp_min(1))
