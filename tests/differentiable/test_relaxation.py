"""Softmax and Dirichlet relaxations: mixing against explicit sums, selection edits, DrNAS sampling and anchors."""

from __future__ import annotations

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from torch import nn

import lightning_nas as ln
from lightning_nas.differentiable.relaxation import DirichletRelaxation, SoftmaxRelaxation
from lightning_nas.differentiable.selection import (
    magnitude_selection,
    select_inputs_by_perturbation,
    select_op_by_perturbation,
)
from lightning_nas.spaces.darts import darts_supernet

torch.set_num_threads(1)


def shared_net() -> ln.Supernet:
    torch.manual_seed(0)
    ops = lambda: {"lin": nn.Linear(4, 4), "tanh": nn.Tanh(), "skip": nn.Identity()}  # noqa: E731
    return ln.Supernet(nn.Sequential(ln.OpChoice(ops(), "op"), ln.OpChoice(ops(), "op")))


@settings(max_examples=10, deadline=None)
@given(seed=st.integers(0, 1000))
def test_softmax_mixing_is_the_weighted_sum_and_labels_share_alpha(seed):
    net = shared_net()
    relaxation = SoftmaxRelaxation(net, init_std=1.0, seed=seed).install()
    assert relaxation.op_labels == ["op"] and relaxation.alpha_of("op").shape == (3,)
    x = torch.randn(5, 4)
    w = torch.softmax(relaxation.alpha_of("op"), 0)
    first, second = net.module
    mix = lambda m, h: sum(w[k] * m.candidates[key](h) for k, key in enumerate(["lin", "tanh", "skip"]))  # noqa: E731
    torch.testing.assert_close(net(x), mix(second, mix(first, x)))
    relaxation.remove()
    net.activate({"op": "tanh"})
    torch.testing.assert_close(net(x), torch.tanh(torch.tanh(x)))


def test_fix_and_perturbation_edit_the_weights_not_alpha():
    net = shared_net()
    relaxation = SoftmaxRelaxation(net, init_std=1.0).install()
    alpha = relaxation.alpha_of("op").detach().clone()
    x = torch.randn(5, 4)
    with relaxation.perturbed("op", "tanh"):
        w = relaxation.mixing_weights("op")
        assert float(w[1]) == 0.0 and float(w.sum()) < 1.0  # masked, not renormalised
    relaxation.fix("op", "lin")
    fixed = net(x)
    relaxation.remove()
    net.activate({"op": "lin"})
    torch.testing.assert_close(fixed, net(x))
    assert torch.equal(relaxation.alpha_of("op"), alpha)
    assert relaxation.expected_weights("op").tolist() == [1.0, 0.0, 0.0]
    with pytest.raises(ValueError, match="not a candidate"):
        relaxation.fix("op", "conv")
    with pytest.raises(ValueError, match="not a relaxed OpChoice label"):
        relaxation.alpha_of("nope")


def test_select_op_by_perturbation_keeps_the_op_whose_removal_hurts_most():
    relaxation = SoftmaxRelaxation(shared_net()).install()
    hurt = {"lin": 0.2, "tanh": 0.9, "skip": 0.5}  # accuracy with that op masked
    evaluate = lambda: next(hurt[op] for op, m in zip(["lin", "tanh", "skip"], relaxation._perturb("op").tolist()) if m == 0)  # noqa: E731
    op, scores = select_op_by_perturbation(relaxation, "op", evaluate)
    assert op == "lin" and scores == hurt and relaxation.fixed == {"op": "lin"}


def test_darts_topology_selection_and_magnitude_selection():
    net = darts_supernet(channels=2, layers=3)
    relaxation = SoftmaxRelaxation(net).install()
    # Magnitude: node 3 keeps the 2 edges whose strongest op weighs most; "none" is never chosen.
    with torch.no_grad():
        for i, boost in enumerate([0.0, 3.0, 2.0]):
            relaxation.alpha_of(f"normal.edge_4_{i}")[2] = boost  # skip_connect
    arch = magnitude_selection(relaxation)
    assert arch["normal.node_4"] == (1, 2) and arch["normal.edge_4_1"] == "skip_connect"
    assert net.space.contains(arch)
    # Perturbation: each input adds its importance to the accuracy; the least important goes first.
    importance = {0: 0.3, 1: 0.1, 2: 0.7, 3: 0.4, 4: 0.2}
    evaluate = lambda: sum(importance[i] for i, m in enumerate(relaxation._edges("normal.node_5").tolist()) if m)  # noqa: E731
    kept, rounds = select_inputs_by_perturbation(relaxation, "normal.node_5", 2, evaluate)
    assert kept == (2, 3) and len(rounds) == 3 and sorted(rounds[0]) == [0, 1, 2, 3, 4]
    assert magnitude_selection(relaxation)["normal.node_5"] == (2, 3)
    # The relaxed network still runs with the removed inputs zeroed.
    assert net(torch.randn(2, 3, 8, 8)).shape == (2, 10)


def test_dirichlet_draws_are_seeded_differentiable_and_the_mean_in_eval():
    net = shared_net()
    relaxation = DirichletRelaxation(net, seed=3, init_std=0.5).install()
    x = torch.randn(5, 4)
    net.train()
    outs = [net(x) for _ in range(2)]
    assert not torch.allclose(outs[0], outs[1])  # a new draw every forward
    again = DirichletRelaxation(shared_net(), seed=3, init_std=0.5).install()
    torch.testing.assert_close(again.supernet(x), outs[0])  # same seed, same first draw
    outs[0].sum().backward()
    assert float(relaxation.alpha_of("op").grad.abs().sum()) > 0  # rsample: the gradient reaches α
    beta = nn.functional.elu(relaxation.alpha_of("op")) + 1
    relaxation.sampling = False  # training mode, mean weights (how PT measures)
    draws = relaxation.draws
    torch.testing.assert_close(net(x), net(x))
    assert relaxation.draws == draws
    relaxation.sampling = True
    net.eval()
    relaxation._begin_forward()
    torch.testing.assert_close(relaxation.mixing_weights("op"), beta / beta.sum())


@pytest.mark.parametrize("anchor", ["kl", "l2"])
def test_dirichlet_anchor_is_zero_at_the_prior_and_pulls_toward_it(anchor):
    relaxation = DirichletRelaxation(shared_net(), anchor=anchor, anchor_weight=1.0, init_std=0.0)
    assert float(relaxation.regulariser()) == pytest.approx(0.0, abs=1e-6)
    with torch.no_grad():
        relaxation.alpha_of("op").copy_(torch.tensor([1.0, -0.5, 0.2]))
    value = relaxation.regulariser()
    assert float(value) > 0
    (grad,) = torch.autograd.grad(value, [relaxation.alpha_of("op")])
    assert grad[0] > 0 and grad[1] < 0 and grad[2] > 0  # gradient descent moves α back toward 0 (β toward 1)
    if anchor == "l2":
        beta = nn.functional.elu(torch.tensor([1.0, -0.5, 0.2])) + 1
        assert float(value) == pytest.approx(float(0.5 * ((beta - 1) ** 2).sum()), rel=1e-6)
        # For α >= 0 the anchor's gradient is α itself: DrNAS's Adam weight decay on α.
        assert float(grad[0]) == pytest.approx(1.0) and float(grad[2]) == pytest.approx(0.2)


def test_prune_keeps_the_largest_means():
    relaxation = DirichletRelaxation(shared_net())
    with torch.no_grad():
        relaxation.alpha_of("op").copy_(torch.tensor([0.5, -0.3, 0.1]))
    relaxation.prune(2)
    assert relaxation.available_ops("op") == ["lin", "skip"]
    assert relaxation.expected_weights("op")[1] == 0
    relaxation.supernet.train()
    relaxation.install()
    relaxation._begin_forward()
    assert float(relaxation.mixing_weights("op")[1]) == 0.0
    with pytest.raises(ValueError, match="`keep`"):
        relaxation.prune(0)


def test_dirichlet_draws_leave_the_users_random_streams_alone(monkeypatch):
    """torch.manual_seed would reseed every CUDA generator (the user's dropout masks on a GPU)."""
    reseeded = []
    monkeypatch.setattr(torch.cuda, "manual_seed_all", lambda seed: reseeded.append(seed))
    relaxation = DirichletRelaxation(shared_net(), seed=2, init_std=0.5).install()
    relaxation.supernet.train()
    x = torch.randn(5, 4)
    torch.manual_seed(123)
    expected = torch.rand(3)
    torch.manual_seed(123)
    reseeded.clear()
    relaxation.supernet(x)
    assert reseeded == []
    assert torch.equal(torch.rand(3), expected)  # the CPU stream continues as if no draw happened


def test_dirichlet_replaying_mixes_with_an_earlier_draw():
    relaxation = DirichletRelaxation(shared_net(), seed=4, init_std=0.5).install()
    net = relaxation.supernet.train()
    x = torch.randn(5, 4)
    first = net(x)
    k = relaxation.last_draw()
    assert not torch.allclose(net(x), first)
    draws = relaxation.draws
    with relaxation.replaying(k):
        torch.testing.assert_close(net(x), first)
        torch.testing.assert_close(net(x), first)
    assert relaxation.draws == draws  # replays do not advance the stream
    with pytest.raises(ValueError, match="`draw`"):
        with relaxation.replaying(draws + 1):
            pass


def test_relaxation_refuses_bools_for_ops_and_non_finite_settings():
    import math

    net = ln.Supernet(nn.Sequential(ln.OpChoice([nn.Identity(), nn.ReLU(), nn.Tanh()], "op"), ln.InputChoice(3, 2, "in")))
    relaxation = SoftmaxRelaxation(net)
    with pytest.raises(ValueError, match=r"`op` True is not a candidate of 'op'; candidates: \[0, 1, 2\]"):
        relaxation.fix("op", True)
    with pytest.raises(ValueError, match=r"`op` False is not a candidate of 'op'"):
        with relaxation.perturbed("op", False):
            pass
    relaxation.fix("op", 1)
    assert relaxation.fixed == {"op": 1}
    with pytest.raises(ValueError, match=r"`chosen` must be indices in \[0, 3\), got \(0, 1.5\)"):
        relaxation.fix_inputs("in", (0, 1.5))
    with pytest.raises(ValueError, match="`keep` must be a positive int, got True"):
        relaxation.prune(True)
    with pytest.raises(ValueError, match="`init_std` must be a finite float >= 0, got inf"):
        SoftmaxRelaxation(net, init_std=math.inf)
    with pytest.raises(ValueError, match="`anchor_weight` must be a finite float >= 0, got nan"):
        DirichletRelaxation(net, anchor_weight=math.nan)
