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
