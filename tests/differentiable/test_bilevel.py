"""The architecture gradient: first order is autograd's; second order matches finite differences of the unrolled objective."""

from __future__ import annotations

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from torch import nn

import lightning_nas as ln
from lightning_nas.differentiable.bilevel import arch_gradient, cross_entropy_loss
from lightning_nas.differentiable.relaxation import DirichletRelaxation, SoftmaxRelaxation

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


def sgd_unrolled_objective(net, optimizer, train, val, xi):
    """L_val(w − ξ d, α) with d the direction torch.optim.SGD's next step would take (functional)."""
    params = dict(net.named_parameters())
    grads = torch.autograd.grad(cross_entropy_loss(net, train), list(params.values()), create_graph=True)
    groups = {id(p): g for g in optimizer.param_groups for p in g["params"]}
    unrolled = {}
    for (name, p), g in zip(params.items(), grads):
        group = groups[id(p)]
        d = g + group["weight_decay"] * p
        buffer = optimizer.state[p].get("momentum_buffer") if p in optimizer.state else None
        if group["momentum"]:
            buffer = d if buffer is None else group["momentum"] * buffer + (1 - group["dampening"]) * d
            d = d + group["momentum"] * buffer if group["nesterov"] else buffer
        unrolled[name] = p - xi * d
    return nn.functional.cross_entropy(torch.func.functional_call(net, unrolled, (val[0],)), val[1])


@settings(max_examples=4, deadline=None)
@given(seed=st.integers(0, 1000), nesterov=st.booleans(), warm=st.booleans())
def test_second_order_unrolls_the_users_sgd_step_with_momentum_and_weight_decay(seed, nesterov, warm):
    net, relaxation = tiny(seed)
    train, val = batches(seed)
    optimizer = torch.optim.SGD(net.parameters(), lr=0.2, momentum=0.9, weight_decay=0.05, nesterov=nesterov)
    if warm:  # a momentum buffer from one real step
        optimizer.zero_grad()
        cross_entropy_loss(net, train).backward()
        optimizer.step()
        optimizer.zero_grad()
    xi = 0.2
    got = arch_gradient(cross_entropy_loss, net, relaxation, val, train_batch=train, unrolled_lr=xi, optimizer=optimizer, epsilon=1e-4)
    plain = arch_gradient(cross_entropy_loss, net, relaxation, val, train_batch=train, unrolled_lr=xi, epsilon=1e-4)
    h = 1e-5
    for alpha, grad in zip(relaxation.alpha, got):
        numeric = torch.zeros_like(alpha)
        for k in range(alpha.numel()):
            values = []
            for sign in (1, -1):
                with torch.no_grad():
                    alpha[k] += sign * h
                values.append(float(sgd_unrolled_objective(net, optimizer, train, val, xi).detach()))
                with torch.no_grad():
                    alpha[k] -= sign * h
            numeric[k] = (values[0] - values[1]) / (2 * h)
        torch.testing.assert_close(grad, numeric, atol=1e-6, rtol=1e-4)
    assert max(float((a - b).abs().max()) for a, b in zip(got, plain)) > 1e-6  # momentum and decay matter
    with pytest.raises(ValueError, match="`optimizer`"):
        arch_gradient(cross_entropy_loss, net, relaxation, val, train_batch=train, unrolled_lr=xi,
                      optimizer=torch.optim.Adam(net.parameters()))


def test_second_order_moves_only_what_the_optimiser_trains():
    net, relaxation = tiny(4)
    train, val = batches(4)
    head = list(net.module[-1].parameters())
    optimizer = torch.optim.SGD(head, lr=0.3)
    got = arch_gradient(cross_entropy_loss, net, relaxation, val, train_batch=train, unrolled_lr=0.3, optimizer=optimizer, epsilon=1e-4)
    # Oracle: the unrolled objective where only the head takes the step.
    h, xi = 1e-5, 0.3
    alpha = relaxation.alpha[0]
    def objective():
        params = dict(net.named_parameters())
        grads = torch.autograd.grad(cross_entropy_loss(net, train), head, create_graph=True)
        moved = {n: p for n, p in params.items()}
        for name, p in params.items():
            for q, g in zip(head, grads):
                if p is q:
                    moved[name] = p - xi * g
        return float(nn.functional.cross_entropy(torch.func.functional_call(net, moved, (val[0],)), val[1]).detach())
    for k in range(alpha.numel()):
        with torch.no_grad():
            alpha[k] += h
        up = objective()
        with torch.no_grad():
            alpha[k] -= 2 * h
        down = objective()
        with torch.no_grad():
            alpha[k] += h
        assert float(got[0][k]) == pytest.approx((up - down) / (2 * h), abs=1e-6, rel=1e-4)


def test_second_order_dirichlet_reuses_the_training_draw():
    """The Hessian finite difference evaluates one training loss at w ± εv: with a new Dirichlet draw
    on each side it would measure sampling noise / 2ε, which grows as ε shrinks."""
    torch.manual_seed(0)
    net = ln.Supernet(
        nn.Sequential(
            nn.Linear(3, 4),
            ln.OpChoice({"linear": nn.Linear(4, 4), "tanh": nn.Tanh(), "skip": nn.Identity()}, "op1"),
            nn.Linear(4, 3),
        )
    ).double()
    relaxation = DirichletRelaxation(net, init_std=0.5, seed=1).double().install()
    train, val = batches(1)
    results = []
    for epsilon in (1e-2, 1e-4):
        draws = relaxation.draws
        results.append(arch_gradient(cross_entropy_loss, net, relaxation, val, train_batch=train, unrolled_lr=0.5, epsilon=epsilon))
        assert relaxation.draws == draws + 2  # the training draw and the validation draw; the sides replay the first
        relaxation.draws = draws  # the same draws for the second epsilon
    torch.testing.assert_close(results[0][0], results[1][0], atol=1e-4, rtol=1e-3)
