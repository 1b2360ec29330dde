"""The architecture gradient: first order is autograd's; second order matches finite differences of the unrolled objective."""

from __future__ import annotations

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from torch import nn

import lightning_nas as ln
from lightning_nas.differentiable.bilevel import arch_gradient, cross_entropy_loss
from lightning_nas.differentiable.relaxation import SoftmaxRelaxation

torch.set_num_threads(1)


def tiny(seed: int) -> tuple[ln.Supernet, SoftmaxRelaxation]:
    torch.manual_seed(seed)
    net = ln.Supernet(
        nn.Sequential(
            nn.Linear(3, 4),
            ln.OpChoice({"linear": nn.Linear(4, 4), "tanh": nn.Tanh(), "skip": nn.Identity()}, "op1"),
            ln.OpChoice({"linear": nn.Linear(4, 4), "sigmoid": nn.Sigmoid()}, "op2"),
            nn.Linear(4, 3),
        )
    ).double()
    relaxation = SoftmaxRelaxation(net, init_std=0.5, seed=seed).double().install()
    return net, relaxation


def batches(seed: int):
    g = torch.Generator().manual_seed(seed)
    make = lambda: (torch.randn(8, 3, generator=g, dtype=torch.float64), torch.randint(0, 3, (8,), generator=g))  # noqa: E731
    return make(), make()


def unrolled_objective(net, relaxation, train, val, xi):
    """L_val(w − ξ ∇_w L_train(w, α), α), computed functionally (no in-place weight change)."""
    names = [n for n, _ in net.named_parameters()]
    params = dict(net.named_parameters())
    loss = cross_entropy_loss(net, train)
    grads = torch.autograd.grad(loss, list(params.values()), create_graph=True)
    unrolled = {n: p - xi * g for (n, p), g in zip(params.items(), grads)}
    out = torch.func.functional_call(net, unrolled, (val[0],))
    assert names
    return nn.functional.cross_entropy(out, val[1])


@settings(max_examples=5, deadline=None)
@given(seed=st.integers(0, 1000), xi=st.sampled_from([0.05, 0.3]))
def test_second_order_gradient_matches_finite_differences(seed, xi):
    net, relaxation = tiny(seed)
    train, val = batches(seed)
    got = arch_gradient(cross_entropy_loss, net, relaxation, val, train_batch=train, unrolled_lr=xi, epsilon=1e-4)
    h = 1e-5
    for alpha, grad in zip(relaxation.alpha, got):
        numeric = torch.zeros_like(alpha)
        for k in range(alpha.numel()):
            values = []
            for sign in (1, -1):
                with torch.no_grad():
                    alpha[k] += sign * h
                values.append(float(unrolled_objective(net, relaxation, train, val, xi).detach()))
                with torch.no_grad():
                    alpha[k] -= sign * h
            numeric[k] = (values[0] - values[1]) / (2 * h)
        torch.testing.assert_close(grad, numeric, atol=1e-6, rtol=1e-4)


def test_second_order_differs_from_first_order_and_restores_weights():
    net, relaxation = tiny(3)
    train, val = batches(3)
    before = [p.detach().clone() for p in net.parameters()]
    first = arch_gradient(cross_entropy_loss, net, relaxation, val)
    second = arch_gradient(cross_entropy_loss, net, relaxation, val, train_batch=train, unrolled_lr=0.5)
    assert all(torch.equal(a, b) for a, b in zip(before, net.parameters()))
    assert max(float((a - b).abs().max()) for a, b in zip(first, second)) > 1e-4
    # ξ = 0 is first order.
    zero = arch_gradient(cross_entropy_loss, net, relaxation, val, train_batch=train, unrolled_lr=0.0)
    for a, b in zip(first, zero):
        torch.testing.assert_close(a, b)
    with pytest.raises(ValueError, match="`unrolled_lr`"):
        arch_gradient(cross_entropy_loss, net, relaxation, val, train_batch=train)
