"""Differentiable NAS: continuous relaxations (DARTS softmax, DrNAS Dirichlet), the bilevel α gradient, selection."""

from lightning_nas.differentiable.bilevel import arch_gradient, cross_entropy_loss, preserved_buffers
from lightning_nas.differentiable.relaxation import DirichletRelaxation, SoftmaxRelaxation

__all__ = ["DirichletRelaxation", "SoftmaxRelaxation", "arch_gradient", "cross_entropy_loss", "preserved_buffers"]
