"""Zero-cost proxies: hand-computed values on tiny networks, determinism, batch-order invariance, the
module left unchanged, use as an evaluator and as BO's cost model, errors."""

from __future__ import annotations

import math
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from torch import nn

from lightning_nas.proxies import (
    PROXIES,
    ProxyCostModel,
    ProxyEvaluator,
    compute_proxies,
    grad_norm,
    jacob_cov,
    log_synflow,
    naswot,
    proxy_examples,
    synflow,
    synthetic_batch,
)
from lightning_nas.strategies.bo import BayesianOptimization
from lightning_nas.strategies.driver import Budget, run_search
from lightning_nas.strategies.random_search import RandomSearch

sys.path.insert(0, str(Path(__file__).parent / "strategies"))
from synthetic import SyntheticEvaluator, synthetic_space  # noqa: E402

torch.set_num_threads(1)
FOUR = ("synflow", "naswot", "grad_norm", "jacob_cov")


def two_layer(d: int = 3, h: int = 5, c: int = 4, seed: int = 0, norm: bool = False) -> nn.Sequential:
    torch.manual_seed(seed)
    layers = [nn.Linear(d, h)] + ([nn.BatchNorm1d(h)] if norm else []) + [nn.ReLU(), nn.Linear(h, c)]
    return nn.Sequential(*layers).double()


def batch(n: int = 6, d: int = 3, c: int = 4, seed: int = 1) -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    return torch.randn(n, d, generator=g, dtype=torch.float64), torch.randint(c, (n,), generator=g)


def np_weights(net: nn.Sequential) -> tuple[np.ndarray, ...]:
    first, last = net[0], net[-1]
    return tuple(t.detach().numpy() for t in (first.weight, first.bias, last.weight, last.bias))


# -- hand-computed values ------------------------------------------------------------------------
@pytest.mark.parametrize("norm", [False, True])
def test_synflow_equals_the_path_sum_of_a_two_layer_net(norm: bool) -> None:
    net = two_layer(norm=norm)
    w1, b1, w2, _ = (np.abs(a) for a in np_weights(net))
    hidden = w1.sum(1) + b1  # |W1| 1 + |b1|: the linearised hidden signal for an all-ones input
    # R = 1ᵀ(|W2| h + |b2|): dR/dW2_kj = h_j, dR/dW1_ji = Σ_k |W2_kj| (BatchNorm removed: Abdelfattah's bn=False).
    expected = (w2 * hidden[None, :]).sum() + (w1 * w2.sum(0)[:, None]).sum()
    x, _ = batch()
    assert synflow(net, x) == pytest.approx(expected, rel=1e-12)
    assert log_synflow(net, x) == pytest.approx(math.log1p(expected), rel=1e-12)
    # A cut path (a zero last layer) has no flow.
    with torch.no_grad():
        net[-1].weight.zero_()
        net[-1].bias.zero_()
    assert synflow(net, x) == 0.0


def test_naswot_equals_the_log_determinant_of_the_hamming_kernel() -> None:
    # Identity first layer: the codes of x are its signs. Codes (1,0), (0,1), (1,1): K = [[2,0,1],[0,2,1],[1,1,2]], det 4.
    net = nn.Sequential(nn.Linear(2, 2), nn.ReLU(), nn.Linear(2, 1))
    with torch.no_grad():
        net[0].weight.copy_(torch.eye(2))
        net[0].bias.zero_()
    x = torch.tensor([[1.0, -1.0], [-1.0, 1.0], [2.0, 3.0]])
    assert naswot(net, x) == pytest.approx(math.log(4.0), rel=1e-12)
    # A random net: K_ij = N_A - Hamming(c_i, c_j) from the codes computed by hand.
    net = two_layer(d=3, h=16)
    x, _ = batch(n=5)
    w1, b1, _, _ = np_weights(net)
    codes = (x.numpy() @ w1.T + b1 > 0).astype(float)
    hamming = (codes[:, None, :] != codes[None, :, :]).sum(-1)
    kernel = codes.shape[1] - hamming
    assert naswot(net, x) == pytest.approx(np.linalg.slogdet(kernel)[1], rel=1e-10)
    # Two examples with the same code make K singular.
    assert naswot(net, torch.cat([x, x[:1]])) == -math.inf


def test_grad_norm_equals_the_hand_derived_gradients() -> None:
    net = two_layer(d=3, h=5, c=4)
    x, y = batch(n=6)
    w1, b1, w2, b2 = np_weights(net)
    xs = x.numpy()
    z1 = xs @ w1.T + b1
    a = np.maximum(z1, 0)
    z2 = a @ w2.T + b2
    p = np.exp(z2 - z2.max(1, keepdims=True))
    p /= p.sum(1, keepdims=True)
    dz2 = (p - np.eye(4)[y.numpy()]) / len(xs)  # mean cross-entropy
    dw2 = dz2.T @ a
    dz1 = (dz2 @ w2) * (z1 > 0)
    dw1 = dz1.T @ xs
    expected = np.linalg.norm(dw1) + np.linalg.norm(dw2)  # biases are not weights
    assert grad_norm(net, (x, y)) == pytest.approx(expected, rel=1e-10)


def test_jacob_cov_closed_forms() -> None:
    k = 1e-5
    # A linear net: every example has the same Jacobian, so the correlation is all ones (eigenvalues N, 0, ..., 0).
    torch.manual_seed(0)
    linear = nn.Linear(3, 4).double()
    x, _ = batch(n=5)
    n = 5
    expected = -((math.log(n + k) + 1 / (n + k)) + (n - 1) * (math.log(k) + 1 / k))
    assert jacob_cov(linear, x) == pytest.approx(expected, rel=1e-6)
    # A ReLU net: J_i = W1ᵀ diag(c_i) W2ᵀ 1, then numpy's corrcoef and eigenvalues.
    net = two_layer(d=3, h=16)
    w1, b1, w2, _ = np_weights(net)
    codes = (x.numpy() @ w1.T + b1 > 0).astype(float)
    jac = (codes * w2.sum(0)[None, :]) @ w1
    eig = np.clip(np.linalg.eigvalsh(np.corrcoef(jac)), 0, None)
    assert jacob_cov(net, x) == pytest.approx(-np.sum(np.log(eig + k) + 1 / (eig + k)), rel=1e-8)
    # An output that does not depend on the input: correlation undefined, -inf.
    with torch.no_grad():
        net[0].weight.zero_()
    assert jacob_cov(net, x) == -math.inf


# -- determinism, invariance, the module untouched -----------------------------------------------------
class Noisy(nn.Module):
    """A stochastic layer (draws from torch's RNG): its randomness must come from the proxies' seed."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x + 0.1 * torch.randn_like(x)


def cnn() -> nn.Module:
    torch.manual_seed(0)
    return nn.Sequential(nn.Conv2d(3, 6, 3, padding=1), nn.BatchNorm2d(6), nn.ReLU(), Noisy(), nn.Dropout(0.5),
                         nn.Conv2d(6, 6, 3, padding=1), nn.ReLU(), nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(6, 5))


def test_seeded_deterministic_and_the_global_rng_untouched() -> None:
    model, data = cnn(), synthetic_batch((3, 6, 6), 5, 12, seed=3)
    assert torch.equal(data[0], synthetic_batch((3, 6, 6), 5, 12, seed=3)[0])
    state = torch.get_rng_state()
    a = compute_proxies(model, data, FOUR, seed=7)
    assert torch.equal(torch.get_rng_state(), state)
    assert compute_proxies(model, data, FOUR, seed=7) == a
    assert compute_proxies(model, data, FOUR, seed=8)["naswot"] != a["naswot"]  # the noise layer follows the seed
    for name in FOUR:  # the combined call equals each proxy's own function
        assert PROXIES[name](model, data, seed=7) == pytest.approx(a[name], rel=1e-9)


def test_invariant_to_example_order_and_batch_split() -> None:
    torch.manual_seed(0)
    model = nn.Sequential(nn.Conv2d(3, 6, 3, padding=1), nn.BatchNorm2d(6), nn.ReLU(), nn.Conv2d(6, 6, 3, padding=1),
                          nn.ReLU(), nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(6, 5)).double()
    x, y = synthetic_batch((3, 6, 6), 5, 12, seed=3)
    x = x.double()
    base = compute_proxies(model, (x, y), FOUR)
    perm = torch.randperm(12, generator=torch.Generator().manual_seed(1))
    permuted = compute_proxies(model, (x[perm], y[perm]), FOUR)
    split = compute_proxies(model, [(x[perm][:5], y[perm][:5]), (x[perm][5:], y[perm][5:])], FOUR, num_batches=2)
    for name in FOUR:
        assert permuted[name] == pytest.approx(base[name], rel=1e-9, abs=1e-9)
        assert split[name] == pytest.approx(base[name], rel=1e-9, abs=1e-9)
    # Other examples give other scores (the data matters where the definition uses it).
    other = compute_proxies(model, synthetic_batch((3, 6, 6), 5, 12, seed=4), FOUR)  # float inputs, cast to double
    assert other["synflow"] == pytest.approx(base["synflow"], rel=1e-5)  # only the example shape
    assert other["naswot"] != base["naswot"] and other["jacob_cov"] != base["jacob_cov"]


def test_the_model_is_left_unchanged() -> None:
    model = cnn()
    model[5].weight.data[0, 0, 0, 0] = -1.0  # a negative weight: synflow's |θ| must not stick
    model.eval()
    model[2].register_forward_hook(lambda m, i, o: None)
    before = {k: v.clone() for k, v in model.state_dict().items()}
    modes = [m.training for m in model.modules()]
    hooks = [len(m._forward_hooks) for m in model.modules()]
    compute_proxies(model, synthetic_batch((3, 6, 6), 5, 8), FOUR)
    with pytest.raises(ValueError):  # an error mid-way leaves it unchanged too
        grad_norm(model, synthetic_batch((3, 6, 6), 5, 8), loss_fn=lambda out, y: out)
    after = model.state_dict()
    assert all(torch.equal(before[k], after[k]) and before[k].dtype == after[k].dtype for k in before)
    assert [m.training for m in model.modules()] == modes
    assert [len(m._forward_hooks) for m in model.modules()] == hooks
    assert all(p.grad is None and p.requires_grad for p in model.parameters())


def test_networks_without_relu_or_batchnorm() -> None:
    torch.manual_seed(0)
    tanh = nn.Sequential(nn.Linear(3, 8), nn.Tanh(), nn.LayerNorm(8), nn.Linear(8, 4))
    x, y = batch(n=6)
    x = x.float()
    scores = compute_proxies(tanh, (x, y), ("synflow", "grad_norm", "jacob_cov"))
    assert scores["synflow"] > 0 and scores["grad_norm"] > 0 and math.isfinite(scores["jacob_cov"])
    with pytest.raises(ValueError, match="naswot reads the binary codes of rectifier modules"):
        naswot(tanh, x)
    assert math.isfinite(naswot(tanh, x, activations=(nn.Tanh,)))  # tanh's sign is a code too
    gelu = nn.Sequential(nn.Linear(3, 8), nn.GELU(), nn.Linear(8, 4))
    assert math.isfinite(naswot(gelu, x))


# -- search: evaluator and cost model --------------------------------------------------------------
def mlp_for(arch: dict) -> nn.Module:
    """A network per synthetic arch: widths 8 + 4·l_i of 4 hidden layers (built under the cost model's seed)."""
    widths = [8 + 4 * int(arch[f"l{i}"]) for i in range(4)]
    layers, previous = [], 4
    for w in widths:
        layers += [nn.Linear(previous, w), nn.ReLU()]
        previous = w
    return nn.Sequential(*layers, nn.Linear(previous, 3))


def test_evaluator_for_zero_shot_search() -> None:
    data = synthetic_batch((4,), 3, 8, seed=0)
    evaluator = ProxyEvaluator(mlp_for, data, ("naswot", "params"), seed=0)
    strategy = RandomSearch(synthetic_space(), seed=0)
    results = run_search(strategy, evaluator, objective="naswot", budget=Budget(evaluations=12))
    # A singular kernel (-inf) is a non-finite objective: the driver records a failed trial, never ranked.
    assert len(results) + len(strategy.failures) == 12 and evaluator.calls == 12 and len(results) >= 8
    best = results.best()
    assert best.metrics["naswot"] == max(r["naswot"] for r in results.rows())
    # Seeded per arch: a second evaluator gives the same scores; another seed other initialisations.
    arch = best.arch
    assert ProxyEvaluator(mlp_for, data, ("naswot",), seed=0)(arch, 10.0)["naswot"] == best.metrics["naswot"]
    assert ProxyEvaluator(mlp_for, data, ("naswot",), seed=1)(arch)["naswot"] != best.metrics["naswot"]
    with pytest.raises(ValueError, match="`fidelity` must be None or a positive finite number"):
        evaluator(arch, -1.0)


def test_cost_model_for_bo_pretraining_with_a_cache_and_from_a_supernet() -> None:
    from lightning_nas.nn.op_choice import OpChoice
    from lightning_nas.supernet import Supernet

    data = synthetic_batch((4,), 3, 16, seed=0)
    costs = ProxyCostModel(mlp_for, data, ("log_synflow", "naswot"), seed=0)
    strategy = BayesianOptimization(synthetic_space(), seed=0, cost_model=costs, pretrain_metrics=["log_synflow", "naswot"],
                                    pretrain_archs=48, pretrain_steps=30, members=2, trunk=(16,), branch=16, steps=20,
                                    batch_size=4, initial=4)
    results = run_search(strategy, SyntheticEvaluator(), objective="accuracy", budget=Budget(evaluations=12))
    assert len(results) == 12 and strategy._pretrained is not None
    scored = costs.calls
    assert 0 < scored <= 48 + 12 and len(costs.cache) == scored
    arch = results.rows()[0]["arch"] if "arch" in results.rows()[0] else strategy.history[0].arch
    first = costs(arch)
    assert costs(arch) == first and costs.calls == scored + (0 if len(costs.cache) == scored else 1)
    # A supernet: each arch's subnet is exported from it, the supernet unchanged.
    torch.manual_seed(0)
    supernet = Supernet(nn.Sequential(nn.Linear(4, 8), OpChoice({"relu": nn.ReLU(), "tanh": nn.Tanh()}, "act"),
                                      nn.Linear(8, 3)))
    before = {k: v.clone() for k, v in supernet.state_dict().items()}
    exported = ProxyCostModel(supernet, data, ("synflow", "grad_norm"))
    scores = {a: exported({"act": a}) for a in ("relu", "tanh")}
    assert scores["relu"] != scores["tanh"]
    assert all(torch.equal(before[k], v) for k, v in supernet.state_dict().items())


# -- errors --------------------------------------------------------------------------------------
def test_bad_input_gets_clear_errors() -> None:
    net = two_layer()
    x, y = batch()
    with pytest.raises(ValueError, match="`model` must be an nn.Module"):
        synflow(lambda t: t, x)
    with pytest.raises(ValueError, match="`data` must be a tensor of inputs"):
        naswot(net, "images")
    with pytest.raises(ValueError, match="holds no example"):
        naswot(net, [])
    with pytest.raises(ValueError, match="do not match inputs"):
        grad_norm(net, (x, y[:3]))
    with pytest.raises(ValueError, match="different example shapes"):
        proxy_examples([x, torch.zeros(2, 5)], num_batches=2)
    with pytest.raises(ValueError, match="`num_batches` must be an int >= 1"):
        naswot(net, x, num_batches=0)
    with pytest.raises(ValueError, match="at least 2 examples"):
        naswot(net, x[:1])
    with pytest.raises(ValueError, match="at least 2 examples"):
        jacob_cov(net, x[:1])
    with pytest.raises(ValueError, match="must be floating point"):
        jacob_cov(nn.Sequential(nn.Embedding(5, 3), nn.Flatten()), torch.tensor([[1], [2]]))
    with pytest.raises(ValueError, match="must give targets"):
        grad_norm(net, x)
    with pytest.raises(ValueError, match=r"class indices must lie in \[0, 4\)"):
        grad_norm(net, (x, y + 10))
    with pytest.raises(ValueError, match="must return a scalar tensor"):
        grad_norm(net, (x, y), loss_fn=lambda out, t: out)
    with pytest.raises(ValueError, match="forward returns one tensor"):
        jacob_cov(nn.Sequential(nn.Linear(3, 2), _Pair()), x)
    with pytest.raises(ValueError, match="`seed` must be a non-negative int"):
        synflow(net, x, seed=-1)
    with pytest.raises(ValueError, match="`k` must be a positive finite number"):
        jacob_cov(net, x, k=0)
    with pytest.raises(ValueError, match="proxy names from"):
        compute_proxies(net, (x, y), ["synflow", "snip"])
    with pytest.raises(ValueError, match="`network` must be a Supernet"):
        ProxyCostModel(net, x, ("synflow",))
    with pytest.raises(ValueError, match="proxy 'grad_norm' differentiates a loss"):
        ProxyCostModel(mlp_for, x, ("grad_norm",))
    with pytest.raises(ValueError, match="must return an nn.Module"):
        ProxyCostModel(lambda arch: None, x, ("synflow",))({"l0": 0})
    with pytest.raises(ValueError, match="`activations` must be nn.Module subclasses"):
        naswot(net, x, activations=("relu",))


class _Pair(nn.Module):
    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        return x, x


def test_grouped_batch_norm_parameters_are_not_weights() -> None:
    # A GroupedBatchNorm2d's weight and bias are (G, C): 2-d like a weight, but a norm's.
    from lightning_nas.nn import GroupedBatchNorm2d

    torch.manual_seed(0)
    net = nn.Sequential(nn.Conv2d(2, 3, 3), GroupedBatchNorm2d(1, 3), nn.ReLU(), nn.Flatten(), nn.Linear(12, 4))
    with torch.no_grad():
        net[1].weight.uniform_(0.5, 1.5)
    x, y = torch.randn(5, 2, 4, 4, generator=torch.Generator().manual_seed(1)), torch.tensor([0, 1, 2, 3, 0])
    nn.functional.cross_entropy(net(x), y).backward()
    expected = float(net[0].weight.grad.norm()) + float(net[4].weight.grad.norm())
    assert net[1].weight.grad.abs().sum() > 0  # it has a gradient, left out of the proxy
    assert grad_norm(net, (x, y)) == pytest.approx(expected, rel=1e-5)
