from __future__ import annotations

import math
import sys
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F
from hypothesis import given, settings
from hypothesis import strategies as st

from lightning_nas.strategies.bo import BayesianOptimization, acquisition, pretraining_targets
from lightning_nas.strategies.candidates import one_hot
from lightning_nas.strategies.codec import decode_state, encode_state
from lightning_nas.strategies.driver import Budget, run_search
from lightning_nas.strategies.ensemble import DeepEnsemble, fit_ensemble, masked_huber

sys.path.insert(0, str(Path(__file__).parent))
from synthetic import SyntheticEvaluator, synthetic_space  # noqa: E402

torch.set_num_threads(1)
FAST = dict(members=4, trunk=(32, 32), branch=32, steps=60, batch_size=4, initial=4)


def bo(seed: int = 0, **kwargs) -> BayesianOptimization:
    return BayesianOptimization(synthetic_space(), seed=seed, **{**FAST, **kwargs})


def search(strategy, evaluations: int, budget: Budget | None = None):
    return run_search(strategy, SyntheticEvaluator(), objective="accuracy", budget=budget or Budget(evaluations=evaluations))


@settings(max_examples=40, deadline=None)
@given(st.lists(st.lists(st.floats(-5, 5), min_size=3, max_size=3), min_size=2, max_size=6), st.floats(-5, 5))
def test_mc_acquisitions_equal_their_definitions(rows: list[list[float]], best: float) -> None:
    predictions = torch.tensor(rows, dtype=torch.float64)  # (M members, C candidates)
    members, candidates = predictions.shape
    pi = acquisition(predictions, best, "pi")
    ei = acquisition(predictions, best, "ei")
    ucb = acquisition(predictions, best, "ucb", ucb_beta=2.0)
    for c in range(candidates):
        column = [rows[m][c] for m in range(members)]
        assert pi[c] == pytest.approx(sum(v > best for v in column) / members)
        assert ei[c] == pytest.approx(sum(max(v - best, 0.0) for v in column) / members)
        mean = sum(column) / members
        std = (sum((v - mean) ** 2 for v in column) / members) ** 0.5
        assert ucb[c] == pytest.approx(mean + 2.0 * std)
    with pytest.raises(ValueError, match="`acquisition` must be one of"):
        acquisition(predictions, best, "thompson")


@settings(max_examples=30, deadline=None)
@given(st.data())
def test_masked_huber_is_huber_on_observed_entries(data: st.DataObject) -> None:
    members, batch, targets = 2, data.draw(st.integers(1, 5)), data.draw(st.integers(1, 3))
    flat = members * batch * targets
    pred = torch.tensor(data.draw(st.lists(st.floats(-3, 3), min_size=flat, max_size=flat))).reshape(members, batch, targets)
    values = data.draw(st.lists(st.one_of(st.floats(-3, 3), st.just(float("nan"))), min_size=flat, max_size=flat))
    target = torch.tensor(values).reshape(members, batch, targets)
    expected = 0.0
    for m in range(members):
        for t in range(targets):
            seen = ~torch.isnan(target[m, :, t])
            if seen.any():
                expected += float(F.huber_loss(pred[m, seen, t], target[m, seen, t]))
    assert float(masked_huber(pred, target)) == pytest.approx(expected, rel=1e-6, abs=1e-6)  # float32 sums


def test_ensemble_shapes_members_differ_and_fit_reduces_error() -> None:
    torch.manual_seed(0)
    model = DeepEnsemble(8, 2, members=3, trunk=(16,), branch=8, seed=0)
    x = torch.randn(40, 8)
    assert model(x).shape == (3, 40, 2)
    assert not torch.allclose(model(x)[0], model(x)[1])
    y = torch.stack([x[:, 0] * 3 + 1, torch.full((40,), float("nan"))], dim=1)  # second head never observed
    model.set_standardisation(y)
    before = float(((model.predict(x, 0) - y[:, 0]) ** 2).mean())
    fit_ensemble(model, x, y, steps=150, lr=1e-2, batch_size=16, seed=0)
    after = float(((model.predict(x, 0) - y[:, 0]) ** 2).mean())
    assert after < 0.2 * before
    with pytest.raises(ValueError, match="`targets` must have shape"):
        fit_ensemble(model, x, y[:, :1], steps=1)


def test_finds_the_optimum_and_reproduces() -> None:
    evaluator = SyntheticEvaluator()
    first = search(bo(0), 60)
    assert first.best().value == pytest.approx(evaluator.optimum())
    again = search(bo(0), 60)
    assert [r.arch for r in again.done] == [r.arch for r in first.done]
    assert len({tuple(r.arch.values()) for r in first.done}) == 60  # nothing proposed twice


@pytest.mark.parametrize("kind", ["ei", "ucb"])
def test_other_acquisitions_run(kind: str) -> None:
    results = search(bo(1, acquisition=kind), 40)
    assert results.best().value > sorted(SyntheticEvaluator().accuracy(a) for a in SyntheticEvaluator().all_archs())[-20]


def test_pretraining_on_zero_cost_metrics() -> None:
    evaluator = SyntheticEvaluator()
    strategy = bo(0, cost_model=evaluator.costs, pretrain_metrics=["cost"], pretrain_archs=256, pretrain_steps=100)
    results = search(strategy, 40)
    assert strategy._pretrained is not None
    # The pretrained trunk predicts the metric it was trained on (rank correlation with the truth).
    model = strategy._new_model(0)
    model.load_state_dict(strategy._pretrained)
    archs = evaluator.all_archs()
    pred = model.predict(one_hot(strategy.space, archs), 0).mean(0)
    truth = torch.tensor([evaluator.costs(a)["cost"] for a in archs])
    rank = lambda v: v.argsort().argsort().double()  # noqa: E731
    assert torch.corrcoef(torch.stack([rank(pred), rank(truth)]))[0, 1] > 0.8
    assert len(results) == 40
    with pytest.raises(ValueError, match="needs a `cost_model`"):
        bo(0, pretrain_metrics=["cost"])


def test_multi_fidelity_schedule_and_equivalent_budget() -> None:
    strategy = bo(0, fidelities=(2.5, 10.0), p=3, q=2, f=2, initial=3)
    results = search(strategy, 0, Budget(equivalent_evaluations=8.0))
    fids = [r.fidelity for r in results.done]
    # iteration 0: 3 random low; iteration 1 (f-th): 3 low + 2 high; iteration 2: 3 low; iteration 3: 3 low + 2 high ...
    assert fids[:3] == [2.5] * 3 and sorted(fids[3:8]) == [2.5] * 3 + [10.0] * 2 and fids[8:11] == [2.5] * 3
    assert results.equivalent_evaluations >= 8.0 and results.equivalent_evaluations < 8.0 + 1.0
    assert results.best().fidelity == 10.0


def test_state_survives_storage_without_the_surrogate(tmp_path: Path) -> None:
    evaluator = SyntheticEvaluator()
    straight = search(bo(2, cost_model=evaluator.costs, pretrain_metrics=["cost"], pretrain_archs=64,
                         pretrain_steps=30), 24)
    db = tmp_path / "bo.db"
    make = lambda: bo(2, cost_model=evaluator.costs, pretrain_metrics=["cost"], pretrain_archs=64,  # noqa: E731
                      pretrain_steps=30)
    run_search(make(), evaluator, objective="accuracy", budget=Budget(evaluations=10), storage=db)
    resumed = run_search(make(), evaluator, objective="accuracy", budget=Budget(evaluations=24), storage=db)
    assert [r.arch for r in resumed.done] == [r.arch for r in straight.done]
    assert "_pretrained" not in decode_state(encode_state(make().state_dict()))


def test_bad_arguments() -> None:
    with pytest.raises(ValueError, match="`acquisition` must be one of"):
        bo(acquisition="thompson")
    with pytest.raises(ValueError, match="`members` must be an int >= 2"):
        bo(members=1)
    with pytest.raises(ValueError, match="`fidelities` must be"):
        bo(fidelities=(10.0, 2.0))
    for name, value, message in (("lr", math.nan, "> 0"), ("pretrain_lr", 0.0, "> 0"), ("ucb_beta", math.inf, ">= 0")):
        with pytest.raises(ValueError, match=f"`{name}` must be a finite number {message}, got {value!r}"):
            bo(**{name: value})


def test_nan_zero_cost_metrics_are_missing_and_infinite_ones_extremes() -> None:
    evaluator = SyntheticEvaluator()

    def costs(arch):  # a table with missing cells (NaN) and a dead-network proxy (-inf) for some archs
        return {"cost": math.nan if arch["l0"] == 0 else -math.inf if arch["l0"] == 1 else evaluator.costs(arch)["cost"]}

    strategy = bo(2, cost_model=costs, pretrain_metrics=["cost"], pretrain_archs=64, pretrain_steps=10)
    weights = strategy._pretrain()
    assert all(torch.isfinite(w).all() for w in weights.values())
    inf, nan = math.inf, math.nan
    values = torch.tensor([[1.0, nan, -inf, inf], [3.0, nan, 2.0, 5.0], [-inf, nan, 2.0, inf], [inf, nan, -inf, 1.0]],
                          dtype=torch.float64)
    out = pretraining_targets(values)
    # Column 0: finite {1, 3}, std 1 -> -inf = 0, +inf = 4; column 1 stays missing; column 2: one finite
    # value (step 1); column 3: finite {5, 1}, std 2.
    expected = torch.tensor([[1.0, nan, 1.0, 7.0], [3.0, nan, 2.0, 5.0], [0.0, nan, 2.0, 7.0], [4.0, nan, 1.0, 1.0]],
                            dtype=torch.float64)
    assert torch.equal(torch.isnan(out), torch.isnan(expected))
    assert torch.allclose(torch.nan_to_num(out), torch.nan_to_num(expected))
    assert torch.isnan(pretraining_targets(torch.tensor([[inf], [-inf]]))).all()  # nothing finite: missing


def test_pretraining_on_given_archs() -> None:
    evaluator = SyntheticEvaluator()
    archs = evaluator.all_archs()[:40]
    calls = []

    def costs(arch):
        calls.append(arch)
        return evaluator.costs(arch)

    strategy = bo(0, cost_model=costs, pretrain_metrics=["cost"], pretrain_on=archs, pretrain_steps=5)
    strategy._pretrain()
    assert calls == archs
    with pytest.raises(ValueError, match="`pretrain_on` needs `pretrain_metrics`"):
        bo(cost_model=costs, pretrain_on=archs)
    with pytest.raises(ValueError, match="`pretrain_on` must hold at least one arch"):
        bo(cost_model=costs, pretrain_metrics=["cost"], pretrain_on=[])
    with pytest.raises(ValueError, match="unknown label"):
        bo(cost_model=costs, pretrain_metrics=["cost"], pretrain_on=[{"nope": 1}])


def test_pretraining_also_on_given_archs_beside_the_draws() -> None:
    evaluator = SyntheticEvaluator()
    extra = evaluator.all_archs()[:10]
    calls = []

    def costs(arch):  # "proxy" known only on the extra archs (NaN elsewhere), "cost" everywhere
        calls.append(arch)
        known = any(arch == e for e in extra)
        return {**evaluator.costs(arch), "proxy": float(arch["l0"]) if known else math.nan}

    strategy = bo(0, cost_model=costs, pretrain_metrics=["cost", "proxy"], pretrain_archs=30, pretrain_also=extra,
                  pretrain_steps=5)
    weights = strategy._pretrain()
    assert len(calls) == 40 and calls[30:] == extra  # the 30 draws, then the given archs
    assert all(torch.isfinite(w).all() for w in weights.values())
    assert "pretrain_also" not in strategy.state_dict()  # configuration, not search state
    with pytest.raises(ValueError, match="`pretrain_also` needs `pretrain_metrics`"):
        bo(cost_model=costs, pretrain_also=extra)
    with pytest.raises(ValueError, match="unknown label"):
        bo(cost_model=costs, pretrain_metrics=["cost"], pretrain_also=[{"nope": 1}])


def test_activation_and_fused_adam_reach_the_ensemble() -> None:
    assert bo(0)._new_model(0).activation == "silu"
    assert bo(0, activation="hardswish")._new_model(0).trunk[0].activation == "hardswish"
    # ATen's fused Adam rounds differently: same search quality is not promised, but it runs and reproduces
    first = search(bo(3, fused_adam=True, activation="hardswish"), 16)
    again = search(bo(3, fused_adam=True, activation="hardswish"), 16)
    assert [r.arch for r in again.done] == [r.arch for r in first.done]
    with pytest.raises(ValueError, match="`activation` must be one of"):
        bo(activation="gelu")
    with pytest.raises(ValueError, match="`fused_adam` must be a bool"):
        bo(fused_adam="no")


def test_one_hot_equals_search_space_encoding() -> None:
    space = synthetic_space(3, 5)
    archs = space.sample_many(20, seed=0)
    assert torch.equal(one_hot(space, archs), space.encode_many(archs))
    assert one_hot(space, []).shape == (0, space.encoding_size)


def test_sampled_candidates_for_spaces_larger_than_the_limit() -> None:
    from lightning_nas.strategies.base import arch_key
    from lightning_nas.strategies.candidates import CandidatePool

    strategy = bo(0, candidates=40)
    pool = CandidatePool(strategy.space, 40)
    assert not pool.enumerable
    parents = [{label: 3 for label in strategy.space.labels}]
    exclude = {arch_key(parents[0])}
    archs, x = pool(strategy, exclude, parents)
    assert 0 < len(archs) <= 40 and x.shape == (len(archs), strategy.space.encoding_size)
    assert len({arch_key(a) for a in archs}) == len(archs) and not exclude & {arch_key(a) for a in archs}
    assert any(sum(v != 3 for v in a.values()) == 1 for a in archs)  # mutations of the parent are in the pool
    results = search(strategy, 30)
    assert len({tuple(r.arch.values()) for r in results.done}) == 30


@settings(max_examples=40, deadline=None)
@given(st.lists(st.floats(-1e3, 1e3, allow_nan=False), min_size=1, max_size=40))
def test_normal_scores_are_monotone_tie_aware_and_standard(values: list[float]) -> None:
    from lightning_nas.strategies.bo import normal_scores

    scores = normal_scores(torch.tensor(values, dtype=torch.float64))
    for i, a in enumerate(values):
        for j, b in enumerate(values):
            if a < b:
                assert scores[i] < scores[j]
            elif a == b:
                assert scores[i] == scores[j]
    if len(set(values)) == len(values):  # no ties: the symmetric normal quantiles of (k + 0.5) / N
        expected = torch.special.ndtri((torch.arange(len(values), dtype=torch.float64) + 0.5) / len(values))
        assert torch.allclose(scores.sort().values.double(), expected, atol=1e-5)


def test_rank_targets_and_warm_start_find_the_optimum_and_resume(tmp_path: Path) -> None:
    evaluator = SyntheticEvaluator()
    make = lambda: bo(3, targets="rank", warm_start=True, steps=30)  # noqa: E731
    straight = search(make(), 60)
    assert straight.best().value == pytest.approx(evaluator.optimum())
    db = tmp_path / "warm.db"
    run_search(make(), evaluator, objective="accuracy", budget=Budget(evaluations=13), storage=db)
    resumed = run_search(make(), evaluator, objective="accuracy", budget=Budget(evaluations=60), storage=db)
    assert [r.arch for r in resumed.done] == [r.arch for r in straight.done]  # the warm weights are in the state
    with pytest.raises(ValueError, match="`targets` must be one of"):
        bo(targets="log")


def test_first_random_batch_honours_the_constraints_through_the_cost_model() -> None:
    from lightning_nas.strategies.base import Constraint

    evaluator = SyntheticEvaluator()
    costs = sorted(evaluator.costs(a)["cost"] for a in evaluator.all_archs())
    limit = costs[len(costs) // 10]  # a tenth of the space fits: most uniform draws would not
    strategy = bo(3, initial=12, constraints=[Constraint("cost", upper=limit)], cost_model=evaluator.costs)
    first = strategy.ask(12)
    assert len({tuple(sorted(p.arch.items())) for p in first}) == 12
    assert all(evaluator.costs(p.arch)["cost"] <= limit for p in first)
    # Without a cost model the first batch stays uniformly random (some draws break the limit).
    plain = bo(3, initial=12, constraints=[Constraint("cost", upper=limit)]).ask(12)
    assert any(evaluator.costs(p.arch)["cost"] > limit for p in plain)
