"""Differentiable NAS: continuous relaxations (DARTS softmax, DrNAS Dirichlet), the bilevel α gradient, selection.

The Lightning callbacks built on these live in :mod:`lightning_nas.callbacks.darts` (``DartsSearch``,
``DrNASSearch``) and :mod:`lightning_nas.callbacks.selection` (``PerturbationSelection``).
"""

from lightning_nas.differentiable.bilevel import arch_gradient, cross_entropy_loss, preserved_buffers
from lightning_nas.differentiable.diagnostics import CONV_OPS, skip_gap
from lightning_nas.differentiable.relaxation import DirichletRelaxation, SoftmaxRelaxation
from lightning_nas.differentiable.selection import (
    count_correct,
    input_edges,
    magnitude_selection,
    perturbation_op_scores,
    select_inputs_by_perturbation,
    select_op_by_perturbation,
    supernet_accuracy,
    supernet_correct,
)

__all__ = [
    "CONV_OPS",
    "DirichletRelaxation",
    "SoftmaxRelaxation",
    "arch_gradient",
    "count_correct",
    "cross_entropy_loss",
    "input_edges",
    "magnitude_selection",
    "perturbation_op_scores",
    "preserved_buffers",
    "select_inputs_by_perturbation",
    "select_op_by_perturbation",
    "skip_gap",
    "supernet_accuracy",
    "supernet_correct",
]
