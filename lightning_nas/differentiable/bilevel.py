"""The architecture gradient of DARTS's bilevel problem, first and second order.

``min_α L_val(w*(α), α)`` with ``w*(α) = argmin_w L_train(w, α)``:

* first order treats ``w*`` as the current ``w``: ``∇_α L_val(w, α)``;
* second order unrolls one weight step ``w' = w − ξ ∇_w L_train(w, α)`` and differentiates through
  it: ``∇_α L_val(w', α) − ξ ∇²_{α,w} L_train(w, α) · ∇_{w'} L_val(w', α)``, the Hessian-vector
  product by central finite differences at ``w ± ε v`` with ``ε = epsilon / ‖v‖`` (DARTS, Eq. 7–8).
  Given the user's SGD optimiser, the virtual step is the step SGD would take, with its momentum
  buffer and weight decay, as DARTS's ``Architect`` does (they do not depend on α, so the Hessian
  term is unchanged).

The relaxation's regulariser (DrNAS's anchor) is added to the validation loss.
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Iterator, Sequence
from typing import Any

import torch
from torch import Tensor, nn

from lightning_nas.differentiable.relaxation import SoftmaxRelaxation

__all__ = ["LossFn", "arch_gradient", "cross_entropy_loss", "preserved_buffers"]

#: ``loss_fn(model, batch) -> 0-dim Tensor``: the loss of one batch under the active relaxation.
LossFn = Callable[[nn.Module, Any], Tensor]


def cross_entropy_loss(model: nn.Module, batch: Any) -> Tensor:
    """Default loss: ``batch = (inputs, targets, ...)``, cross entropy of ``model(inputs)``."""
    inputs, targets = batch[0], batch[1]
    return nn.functional.cross_entropy(model(inputs), targets)


@contextlib.contextmanager
def preserved_buffers(module: nn.Module) -> Iterator[None]:
    """Restores every buffer (BatchNorm running statistics) of ``module`` on exit."""
    saved = [(b, b.detach().clone()) for b in module.buffers()]
    try:
        yield
    finally:
        with torch.no_grad():
            for buffer, value in saved:
                buffer.copy_(value)


def _sgd_step(
    optimizer: torch.optim.Optimizer, params: Sequence[Tensor], grads: Sequence[Tensor]
) -> tuple[list[Tensor], list[float]]:
    """The direction ``d`` of the step ``p ← p − lr · d`` that ``torch.optim.SGD`` would take with ``grads``,
    and per parameter ``∂d/∂g`` (a scalar: 1 for plain SGD; dampening, Nesterov, ``maximize`` change it).

    Weight decay, momentum (with dampening and Nesterov) and ``maximize`` come from each parameter's
    group, the momentum buffer from the optimiser's state (none before its first step); neither is
    modified. A parameter the optimiser does not train gets ``d = 0`` (its step leaves it alone).
    """
    if not isinstance(optimizer, torch.optim.SGD):
        raise ValueError(f"`optimizer` must be a torch.optim.SGD to unroll its step, got {type(optimizer).__name__}")
    groups = {id(p): group for group in optimizer.param_groups for p in group["params"]}
    directions, scales = [], []
    for p, g in zip(params, grads):
        group = groups.get(id(p))
        if group is None:
            directions.append(torch.zeros_like(p))
            scales.append(0.0)
            continue
        sign = -1.0 if group.get("maximize", False) else 1.0
        d, scale = sign * g, sign
        if group["weight_decay"]:
            d = d + group["weight_decay"] * p.detach()
        momentum = group["momentum"]
        if momentum:
            buffer = optimizer.state.get(p, {}).get("momentum_buffer")
            if buffer is None:
                buffer, buffer_scale = d, scale
            else:
                buffer, buffer_scale = momentum * buffer + (1 - group["dampening"]) * d, (1 - group["dampening"]) * scale
            d, scale = (d + momentum * buffer, scale + momentum * buffer_scale) if group["nesterov"] else (buffer, buffer_scale)
        directions.append(d)
        scales.append(scale)
    return directions, scales


def _grads(loss: Tensor, params: Sequence[Tensor]) -> list[Tensor]:
    grads = torch.autograd.grad(loss, list(params), allow_unused=True)
    return [torch.zeros_like(p) if g is None else g for p, g in zip(params, grads)]


def arch_gradient(
    loss_fn: LossFn,
    model: nn.Module,
    relaxation: SoftmaxRelaxation,
    val_batch: Any,
    *,
    train_batch: Any = None,
    unrolled_lr: float | None = None,
    optimizer: torch.optim.Optimizer | None = None,
    epsilon: float = 0.01,
) -> list[Tensor]:
    """``∇_α`` of the validation objective, one tensor per entry of ``relaxation.alpha``.

    Args:
        loss_fn: loss of a batch (see :data:`LossFn`).
        model: the module ``loss_fn`` calls (it contains the relaxed supernet).
        relaxation: the installed relaxation whose α is differentiated.
        val_batch: a batch of the architecture (held-out) split.
        train_batch: a training batch: given, the second-order (unrolled) gradient is returned.
        unrolled_lr: ξ of the virtual weight step (second order; required then).
        optimizer: the weights' ``torch.optim.SGD`` (second order): the virtual step is its step
            (momentum buffer, weight decay) on the parameters it trains; ``None``: a plain gradient
            step on every parameter of ``model``.
        epsilon: the finite-difference step is ``epsilon / ‖∇_{w'} L_val‖``.

    Returns:
        Gradients shaped like ``relaxation.alpha``. The model's weights and buffers are unchanged
        after a second-order call (the virtual steps are undone).
    """
    alphas = list(relaxation.alpha)
    previous, relaxation.arch_grad = relaxation.arch_grad, True
    try:
        regulariser = relaxation.regulariser()
        reg_grads = _grads(regulariser, alphas) if regulariser.requires_grad else [torch.zeros_like(a) for a in alphas]
        if train_batch is None:
            return [g + r for g, r in zip(_grads(loss_fn(model, val_batch), alphas), reg_grads)]
        if unrolled_lr is None or not unrolled_lr >= 0:
            raise ValueError(f"`unrolled_lr` must be a non-negative float for the second-order gradient, got {unrolled_lr!r}")
        weights = [p for p in model.parameters() if p.requires_grad]
        if optimizer is not None:
            trained = {id(p) for group in optimizer.param_groups for p in group["params"]}
            weights = [p for p in weights if id(p) in trained]
        originals = [w.detach().clone() for w in weights]
        with preserved_buffers(model):
            try:
                steps = _grads(loss_fn(model, train_batch), weights)
                train_draw = relaxation.last_draw()
                # ∂w'/∂α = −ξ · scale · ∇²_{w,α} L_train: the finite difference runs along scale · ∇_{w'} L_val.
                scales = [1.0] * len(weights)
                if optimizer is not None:
                    steps, scales = _sgd_step(optimizer, weights, steps)
                with torch.no_grad():
                    for w, step in zip(weights, steps):
                        w.sub_(unrolled_lr * step)
                grads = _grads(loss_fn(model, val_batch), alphas + weights)
                d_alpha = grads[: len(alphas)]
                d_w = [scale * g for scale, g in zip(scales, grads[len(alphas) :])]
                norm = torch.sqrt(sum(((g.double() ** 2).sum() for g in d_w), torch.zeros((), dtype=torch.float64)))
                radius = epsilon / float(norm) if float(norm) > 0 else 0.0
                hessian = [torch.zeros_like(a) for a in alphas]
                if radius > 0:
                    sides = []
                    for sign in (1.0, -1.0):
                        with torch.no_grad():
                            for w, w0, v in zip(weights, originals, d_w):
                                w.copy_(w0 + sign * radius * v)
                        with relaxation.replaying(train_draw):  # the unrolled step's mixing weights
                            sides.append(_grads(loss_fn(model, train_batch), alphas))
                    hessian = [(p - n) / (2 * radius) for p, n in zip(*sides)]
            finally:
                with torch.no_grad():
                    for w, w0 in zip(weights, originals):
                        w.copy_(w0)
        return [g - unrolled_lr * h + r for g, h, r in zip(d_alpha, hessian, reg_grads)]
    finally:
        relaxation.arch_grad = previous
