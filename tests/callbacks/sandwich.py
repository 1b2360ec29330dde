"""The gradient a sandwich step must apply, computed by hand (importable by the test modules next to it)."""

from __future__ import annotations

import torch
from torch import nn

from lightning_nas.distillation import distillation_kl


def sandwich_gradient(module: nn.Module, net, cb, x: torch.Tensor, y: torch.Tensor, step: int = 0) -> list[torch.Tensor]:
    """Gradients of ``module``'s parameters (zeros where none) of CE of ``net``'s largest subnet on
    ``(x, y)`` plus each of ``cb``'s students' KL to the largest's detached soft targets."""
    module.zero_grad()
    with net.activated(net.space.largest()):
        teacher = net(x)
    loss = nn.functional.cross_entropy(teacher, y)
    for arch in cb.student_archs(x.shape[0], step, 0).values():
        if all(isinstance(v, torch.Tensor) for v in arch.values()):
            net.activate_indices(arch)
            student = net(x)
        else:
            with net.activated(arch):
                student = net(x)
        loss = loss + distillation_kl(student, teacher.detach())
    loss.backward()
    return [p.grad.clone() if p.grad is not None else torch.zeros_like(p) for p in module.parameters()]
