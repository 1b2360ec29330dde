"""``fit_table``: an additive table fitted to whole-network measurements, its held-out error and margin."""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from lightning_nas.bilinear import BilinearTable
from lightning_nas.estimators.block_performance import nodes_as_stage
from lightning_nas.profiling.fit import design_matrix, fit_table
from lightning_nas.solvers.fractional import enumerate_indices
from lightning_nas.spaces import Decision, SearchSpace
from lightning_nas.spaces.staged import StagedSpace


def _staged(depths=True):
    decisions = [Decision(f"stage0.block{b}.op", ("a", "b", "c"), "a") for b in range(3)]
    if depths:
        decisions.append(Decision("stage0.depth", (1, 2, 3), 3))
    decisions += [Decision(f"stage1.block{b}.op", ("a", "b", "c"), "a") for b in range(2)]
    return StagedSpace.from_space(SearchSpace(decisions))


def _random_table(staged, rng, name="latency"):
    shape = (staged.num_stages, staged.max_blocks, staged.num_configs)
    return BilinearTable(staged, 2.0, rng.uniform(0.5, 3.0, shape), rng.uniform(0, 0.5, (staged.num_stages, staged.max_depth_options)),
                         name=name, unit="ms")


@settings(max_examples=20, deadline=None)
@given(seed=st.integers(0, 2**31 - 1))
def test_design_matrix_reproduces_any_table(seed):
    rng = np.random.default_rng(seed)
    staged = _staged()
    table = _random_table(staged, rng)
    configs, depths = enumerate_indices(staged)
    theta = np.concatenate([table.block.ravel(), table.depth.ravel(), [table.constant]])
    assert np.allclose(design_matrix(staged, configs, depths) @ theta, table.predict_indices(configs, depths))


def test_an_additive_truth_is_recovered_with_no_margin():
    rng = np.random.default_rng(0)
    staged = _staged()
    truth = _random_table(staged, rng)
    archs = staged.space.sample_many(60, 1)
    fit = fit_table(staged, archs, truth.predict_many(archs), ridge=1e-9)
    configs, depths = enumerate_indices(staged)
    assert np.allclose(fit.table.predict_indices(configs, depths), truth.predict_indices(configs, depths), rtol=1e-4)
    assert fit.heldout["mape_percent"] < 0.1 and fit.margin < 1e-3 and fit.table.name == "latency"
    assert fit.table.metadata["fit"]["measurements"] == 60


def test_a_non_additive_cost_beats_a_one_host_table_on_held_out_networks():
    space = SearchSpace([Decision(f"e{i}", ("none", "skip", "conv1", "conv3"), "conv3") for i in range(5)])
    staged = nodes_as_stage(space)
    cost = {"none": 0.0, "skip": 0.3, "conv1": 1.0, "conv3": 3.0}

    def latency(arch):  # adjacent convolutions share a memory pass: a pairwise, non-additive saving
        ops = [arch[f"e{i}"] for i in range(5)]
        return 2.0 + sum(cost[o] for o in ops) - sum(0.6 for a, b in zip(ops, ops[1:]) if a.startswith("conv") and b.startswith("conv"))

    # The one-host table: each edge switched in an all-conv3 network (Algorithm 1 style).
    host = {f"e{i}": "conv3" for i in range(5)}
    block = np.zeros((1, 5, 4))
    for i in range(5):
        for c, op in enumerate(space[f"e{i}"].values):
            block[0, i, c] = latency({**host, f"e{i}": op}) - latency(host)
    prior = BilinearTable(staged, latency(host) - block[0, :, 3].sum(), block, name="latency", unit="ms")
    archs = space.sample_many(40, 3)
    fit = fit_table(staged, archs, [latency(a) for a in archs], prior=prior, seed=2)
    held_out = space.sample_many(300, 4)
    truth = np.array([latency(a) for a in held_out])
    mape = lambda table: float(np.mean(np.abs(table.predict_many(held_out) / truth - 1)) * 100)  # noqa: E731
    assert mape(fit.table) < 0.6 * mape(prior)
    assert fit.prior_heldout["mape_percent"] > fit.heldout["mape_percent"]
    assert fit.margin > 0 and fit.safe_upper(10.0) == pytest.approx(10.0 / (1 + fit.margin))
    # The margin keeps held-out picks within budget about as often as the quantile says.
    budget = float(np.median(truth))
    chosen = fit.table.predict_many(held_out) <= fit.safe_upper(budget)
    assert (truth[chosen] <= budget).mean() >= 0.8


@pytest.mark.parametrize("kwargs, match", [
    ({"measured": [1.0, 2.0]}, "same length"),
    ({"measured": [1.0] * 5 + [-1.0]}, "positive finite"),
    ({"ridge": 0.0}, "`ridge` must be a positive"),
    ({"folds": 1}, "`folds` must be an int >= 2"),
    ({"quantile": 1.5}, r"`quantile` must be a number in \[0, 1\]"),
    ({"seed": -1}, "`seed` must be an int >= 0"),
    ({"prior": "lut"}, "`prior` must be an additive BilinearTable"),
])
def test_bad_arguments(kwargs, match):
    staged = _staged(depths=False)
    archs = staged.space.sample_many(6, 0)
    args = {"measured": [1.0 + i for i in range(6)], **kwargs}
    with pytest.raises(ValueError, match=match):
        fit_table(staged, archs, args.pop("measured"), **args)
    with pytest.raises(ValueError, match="at least max"):
        fit_table(staged, archs[:2], [1.0, 2.0])
