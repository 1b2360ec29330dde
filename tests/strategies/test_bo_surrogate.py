"""The deep ensemble's fast paths equal their reference definitions: the hand-written gradient equals
autograd's, the in-place Adam equals ``torch.optim.Adam``, the folded prediction equals ``forward``, and
the candidate pool's by-position lookups equal a pass over the space."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest
import torch

from lightning_nas.strategies.base import arch_key
from lightning_nas.strategies.candidates import CandidatePool, one_hot
from lightning_nas.strategies.ensemble import DeepEnsemble, _FlatAdam, _ManualStep, fit_ensemble, masked_huber

sys.path.insert(0, str(Path(__file__).parent))
from synthetic import synthetic_space  # noqa: E402

torch.set_num_threads(1)


@pytest.mark.parametrize("activation", ["silu", "hardswish"])
@pytest.mark.parametrize("missing", [0.0, 0.4])
def test_hand_written_gradient_equals_autograd(missing: float, activation: str) -> None:
    generator = torch.Generator().manual_seed(0)
    model = DeepEnsemble(12, 3, members=4, trunk=(16, 8), branch=8, seed=1, activation=activation)
    x = torch.randn(4, 10, 12, generator=generator)
    target = torch.randn(4, 10, 3, generator=generator) * 2  # beyond Huber's δ = 1 too
    target[torch.rand(4, 10, 3, generator=generator) < missing] = float("nan")
    active = [0, 2]  # head 1 idle: its parameters are not in the step
    observed = ~torch.isnan(target[..., active])
    step = _ManualStep(model, active)
    loss = step.gradient(x, torch.nan_to_num(target[..., active]), None if missing == 0 else observed.float(),
                         want_loss=True)
    reference = masked_huber(model(x, heads=active), target[..., active])
    model.zero_grad()
    reference.backward()
    assert loss == pytest.approx(float(reference.detach()), rel=1e-5)
    expected = torch.cat([p.grad.reshape(-1) for p in step.params])
    torch.testing.assert_close(step.flat.grad, expected, rtol=1e-4, atol=1e-6)
    assert all(p.grad is None for p in (*model.branches[1].parameters(), *model.heads[1].parameters()))


@pytest.mark.parametrize("fused", [True, False])
def test_flat_adam_equals_torch_adam(fused: bool) -> None:
    generator = torch.Generator().manual_seed(0)
    mine = torch.randn(50, generator=generator)
    theirs = torch.nn.Parameter(mine.clone())
    adam, reference = _FlatAdam(mine, 1e-2, fused=fused), torch.optim.Adam([theirs], lr=1e-2)
    assert adam.fused == fused
    for _ in range(20):
        grad = torch.randn(50, generator=generator)
        adam.step(grad)
        theirs.grad = grad.clone()
        reference.step()
    torch.testing.assert_close(mine, theirs.detach(), rtol=1e-6, atol=1e-7)


@pytest.mark.parametrize("activation", ["silu", "hardswish"])
@pytest.mark.parametrize("missing", [0.0, 0.4])
def test_compiled_refit_loop_is_bit_identical_to_the_python_steps(missing: float, activation: str) -> None:
    # fit_ensemble runs its loop through TorchScript for speed; it must give the very bits of stepping
    # _ManualStep.gradient and _FlatAdam.step from Python with the same draws (the searches depend on it).
    generator = torch.Generator().manual_seed(0)
    x = (torch.rand(40, 12, generator=generator) < 0.3).float()
    y = torch.randn(40, 3, generator=generator)
    y[torch.rand(40, 3, generator=generator) < missing] = float("nan")
    y[:, 1] = float("nan")  # an idle head, as a search's pretraining heads
    compiled, stepped = (DeepEnsemble(12, 3, members=4, trunk=(16, 8), branch=8, seed=1, activation=activation)
                         for _ in range(2))
    for model in (compiled, stepped):
        model.set_standardisation(y)
    loss = fit_ensemble(compiled, x, y, steps=23, lr=5e-3, batch_size=8, seed=3)
    active = [0, 2]
    scaled = ((y - stepped.target_mean) / stepped.target_std)[:, active]
    observed = None if missing == 0 else (~torch.isnan(scaled)).float()
    scaled = torch.nan_to_num(scaled)
    idx = torch.randint(40, (23, 4, 8), generator=torch.Generator().manual_seed(3))  # fit_ensemble's draws
    step = _ManualStep(stepped, active)
    adam = _FlatAdam(step.flat.data, 5e-3)
    for i in range(23):
        expected_loss = step.gradient(x[idx[i]], scaled[idx[i]], None if observed is None else observed[idx[i]],
                                      want_loss=i == 22)
        adam.step(step.flat.grad)
    step.write_back()
    assert loss == expected_loss
    assert all(torch.equal(a, b) for a, b in zip(compiled.state_dict().values(), stepped.state_dict().values()))
    assert not torch.equal(compiled.trunk[0].linear.weight, DeepEnsemble(12, 3, members=4, trunk=(16, 8), branch=8,
                                                                          seed=1).trunk[0].linear.weight)  # trained


@pytest.mark.parametrize("activation", ["silu", "hardswish"])
def test_folded_prediction_equals_forward(activation: str) -> None:
    model = DeepEnsemble(10, 2, members=3, trunk=(16, 16), branch=8, seed=2, activation=activation)
    model.target_mean[1], model.target_std[1] = 0.7, 3.0
    x = torch.randn(300, 10, generator=torch.Generator().manual_seed(1))
    expected = model(x).detach()[..., 1] * 3.0 + 0.7
    for chunk in (64, 2048):  # several chunks and one
        torch.testing.assert_close(model.predict(x, 1, chunk=chunk), expected, rtol=1e-4, atol=1e-5)


def test_activation_is_checked_and_changes_only_the_nonlinearity() -> None:
    with pytest.raises(ValueError, match="`activation` must be one of"):
        DeepEnsemble(10, 2, activation="relu")
    silu, hard = (DeepEnsemble(10, 2, members=3, seed=2, activation=a) for a in ("silu", "hardswish"))
    assert all(torch.equal(a, b) for a, b in zip(silu.state_dict().values(), hard.state_dict().values()))
    x = torch.randn(50, 10, generator=torch.Generator().manual_seed(1))
    assert not torch.allclose(silu.predict(x, 0), hard.predict(x, 0))


def test_pool_positions_equal_a_pass_over_the_space() -> None:
    space = synthetic_space()
    pool = CandidatePool(space, limit=space.size)
    archs, x, index = pool.enumeration()
    assert len(archs) == space.size and torch.equal(x, one_hot(space, archs))
    assert all(index[arch_key(a)] == i for i, a in enumerate(archs))
    exclude = {arch_key(archs[i]) for i in (0, 5, 17)} | {("not", "an", "arch")}
    keep = pool.available(exclude)
    assert keep.tolist() == [i for i, a in enumerate(archs) if arch_key(a) not in exclude]
    kept, encoded = pool(None, exclude)
    assert kept == [archs[i] for i in keep] and torch.equal(encoded, x[keep])
    with pytest.raises(ValueError, match="more than the candidate limit"):
        CandidatePool(space, limit=space.size - 1).enumeration()
