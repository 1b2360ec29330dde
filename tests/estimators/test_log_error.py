"""The multiplicative-error (log-error) fit of one-pass records: recovery of known gains, the constant,
adaptive allocation, DDP-style merging, the estimate_contributions path and bad input."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from lightning_nas.bilinear import BilinearTable
from lightning_nas.estimators import (
    LogErrorAccumulator,
    allocate_records,
    estimate_contributions,
    fit_log_error_table,
    kendall_tau,
    make_accumulator,
)


def additive_over(staged, configs, depths, block, depth):
    return BilinearTable(staged, 0.0, block, depth).predict_indices(configs, depths)


def synthetic_records(oracle, seed, examples, records, scale=0.25):
    """Records from P(wrong | x, a) = λ_x exp(−g(a)) with known gains g and per-example difficulty λ_x."""
    rng = np.random.default_rng(seed)
    staged, ex = oracle.staged, oracle.exact
    block = rng.normal(0, scale, (staged.num_stages, staged.max_blocks, staged.num_configs))
    depth = rng.normal(0, scale, (staged.num_stages, staged.max_depth_options))
    lam = rng.uniform(0.02, 0.08, examples) * (rng.random(examples) < 0.6)  # 40 % never wrong; rare errors (Poisson regime)
    pick = rng.integers(0, len(ex["p"]), (examples, records))
    configs, depths = ex["configs"][pick].reshape(-1, *ex["configs"].shape[1:]), ex["depths"][pick].reshape(-1, ex["depths"].shape[1])
    g = additive_over(staged, configs, depths, block, depth)
    g = g - np.log(np.mean(np.exp(-additive_over(staged, ex["configs"], ex["depths"], block, depth))))  # mean factor 1
    wrong = rng.random(len(g)) < np.repeat(lam, records) * np.exp(-g)  # below 1 at this scale: no clipping
    groups = np.repeat(np.arange(examples), records)
    return configs, depths, (~wrong).astype(float), groups, (block, depth)


@settings(max_examples=6, deadline=None)
@given(seed=st.integers(0, 10_000))
def test_fit_recovers_known_multiplicative_gains(oracle, seed):
    configs, depths, correct, groups, (block, depth) = synthetic_records(oracle, seed, examples=8000, records=20)
    table = fit_log_error_table(oracle.staged, configs, depths, correct, groups)
    ex = oracle.exact
    truth = additive_over(oracle.staged, ex["configs"], ex["depths"], block, depth)
    fitted = table.additive_indices(ex["configs"], ex["depths"])
    # Identified up to a constant: compare centred additive forms over every arch of the space.
    truth, fitted = truth - truth.mean(), fitted - fitted.mean()
    # 20 seeds of this size: correlation ≥ 0.970, slope 0.97–1.04.
    assert np.corrcoef(fitted, truth)[0, 1] > 0.95 and 0.85 < np.polyfit(truth, fitted, 1)[0] < 1.15
    assert table.link == "log_error" and table.metadata["fit"]["converged"]


@settings(max_examples=15, deadline=None)
@given(seed=st.integers(0, 10_000))
def test_constant_matches_the_measured_mean_error_over_uniform_archs(oracle, seed):
    configs, depths, correct, groups, _ = synthetic_records(oracle, seed, examples=300, records=int(2 + seed % 5))
    table = fit_log_error_table(oracle.staged, configs, depths, correct, groups)
    ex = oracle.exact  # every arch once: uniform sampling's expectation
    per_example = np.bincount(groups, weights=correct) / np.bincount(groups)
    assert table.predict_indices(ex["configs"], ex["depths"]).mean() == pytest.approx(per_example.mean(), abs=1e-9)
    assert table.metadata["base_accuracy"] == pytest.approx(per_example.mean(), abs=1e-12)
    # Centred: each block position's and each stage's depth gains average to zero.
    cond_ok = oracle.staged.block_exists()
    assert np.allclose(table.block[cond_ok].mean(-1), 0, atol=1e-9)


@settings(max_examples=60, deadline=None)
@given(spread=st.lists(st.floats(0, 5), min_size=1, max_size=40), minimum=st.integers(0, 3), extra=st.integers(0, 8),
       budget_per=st.floats(0, 12))
def test_allocation_respects_budget_bounds_and_order(spread, minimum, extra, budget_per):
    n, maximum = len(spread), minimum + extra
    budget = int(budget_per * n)
    counts = allocate_records(torch.tensor(spread), budget, minimum, maximum)
    assert counts.dtype == torch.long and counts.shape == (n,)
    assert int(counts.min()) >= minimum and int(counts.max()) <= maximum
    assert int(counts.sum()) <= max(budget, n * minimum)
    s = torch.tensor(spread)
    if budget > n * minimum and float(s.sum()) > 0:
        # Nothing left unspent but rounding, unless every example with a spread is at the cap.
        capped = int(((counts == maximum) | (s == 0)).sum()) == n
        assert capped or int(counts.sum()) >= budget - n
    order = torch.argsort(s)
    assert bool((counts[order][1:] >= counts[order][:-1]).all() | (s[order][1:] == s[order][:-1]).any())


@settings(max_examples=40, deadline=None)
@given(data=st.lists(st.tuples(st.floats(0, 5), st.integers(0, 30)), min_size=1, max_size=30), maximum=st.integers(0, 40),
       budget_per=st.floats(0, 40))
def test_allocation_keeps_what_each_example_already_has(data, maximum, budget_per):
    spread, have = torch.tensor([d[0] for d in data]), torch.tensor([d[1] for d in data])
    budget = int(budget_per * len(data))
    counts = allocate_records(spread, budget, have, maximum)
    assert bool((counts >= have).all()) and bool((counts <= torch.clamp(have, min=maximum)).all())
    assert int(counts.sum()) <= max(budget, int(have.sum()))


def test_allocation_gives_zero_spread_examples_only_the_minimum():
    counts = allocate_records(torch.tensor([0.0, 0.0, 1.0, 3.0]), budget=4 * 6, minimum=2, maximum=20)
    assert counts.tolist()[:2] == [2, 2] and counts[3] > counts[2] > 2


def test_merged_halves_give_the_single_accumulator_fit(oracle):
    configs, depths, correct, groups, _ = synthetic_records(oracle, 3, examples=400, records=5)
    whole, first, second = (LogErrorAccumulator(oracle.staged) for _ in range(3))
    args = [torch.as_tensor(a) for a in (configs, depths, correct, groups)]
    whole.update(*args)
    k = len(correct) // 3
    first.update(*(a[:k] for a in args))
    second.update(*(a[k:] for a in args))
    first.merge_state(second)
    a, b = first.compute(), whole.compute()
    assert a.constant == pytest.approx(b.constant, abs=1e-9)
    np.testing.assert_allclose(a.block, b.block, atol=1e-7)
    np.testing.assert_allclose(a.depth, b.depth, atol=1e-7)


@pytest.mark.parametrize("allocation", ["uniform", "adaptive"])
def test_estimate_contributions_log_error_path(oracle, allocation):
    loader = oracle.loader(600, 100)
    oracle.net.examples = 0
    table = estimate_contributions(oracle.supernet, loader, passes=6, seed=2, fit="log_error", allocation=allocation)
    assert table.link == "log_error" and table.metadata["fit"]["converged"]
    assert table.metadata["allocation"] == allocation and oracle.net.examples == table.metadata["examples"]
    assert table.metadata["examples"] <= 6 * 600 and table.metadata["held_out_examples"] == 600
    if allocation == "uniform":
        assert table.metadata["examples"] == 6 * 600
    else:
        assert table.metadata["examples"] >= 6 * 600 - 600  # rounding down loses < 1 record per example
    again = estimate_contributions(oracle.supernet, loader, passes=6, seed=2, fit="log_error", allocation=allocation)
    assert again.to_dict() == table.to_dict()
    # It ranks the oracle's archs: the truth is additive in accuracy, not in log error, so only roughly.
    ex = oracle.exact
    assert kendall_tau(table.predict_indices(ex["configs"], ex["depths"]), ex["p"]) > 0.5


def test_adaptive_records_run_in_calls_of_the_batch_size(oracle):
    # The adaptive passes owe records to some examples only; they share forward calls of up to the
    # loader's batch size instead of one small call per pass.
    loader, sizes = oracle.loader(600, 100), []

    def forward(x):
        sizes.append(len(x))
        return oracle.supernet(x)

    table = estimate_contributions(oracle.supernet, loader, passes=6, seed=2, fit="log_error", allocation="adaptive", forward=forward)
    assert sum(sizes) == table.metadata["examples"] and max(sizes) <= 100
    assert len(sizes) <= table.metadata["examples"] // 100 + 3 * 6  # at most one part-filled call per batch and stage
    plain = estimate_contributions(oracle.supernet, loader, passes=6, seed=2, fit="log_error", allocation="adaptive")
    assert plain.to_dict() == table.to_dict()


def test_sharded_ranks_give_the_single_process_fit(oracle):
    loader = oracle.loader(700, 100)  # 7 batches: uneven shards
    single = estimate_contributions(oracle.supernet, loader, passes=4, seed=4, fit="log_error", allocation="adaptive")
    ranks = []
    for rank in range(3):
        acc = make_accumulator(oracle.staged, fit="log_error")
        estimate_contributions(oracle.supernet, loader, passes=4, seed=4, rank=rank, world_size=3, accumulator=acc, fit="log_error",
                               allocation="adaptive")
        ranks.append(acc)
    for other in ranks[1:]:
        ranks[0].merge_state(other)
    merged = ranks[0].compute()
    assert merged.metadata["examples"] == single.metadata["examples"]
    assert merged.constant == pytest.approx(single.constant, abs=1e-9)
    np.testing.assert_allclose(merged.block, single.block, atol=1e-7)


def test_bad_options_are_named(oracle):
    loader = oracle.loader(100, 50)
    for kwargs, match in [
        ({"fit": "ols"}, "`fit` must be one of"),
        ({"allocation": "greedy", "fit": "log_error"}, "`allocation` must be one of"),
        ({"fit": "log_error", "method": "paper"}, "needs method='one_pass'"),
        ({"fit": "log_error", "paired": True}, "paired=False"),
        ({"fit": "log_error", "shrinkage": "empirical_bayes"}, "shrinkage='none'"),
        ({"allocation": "adaptive"}, "needs fit='log_error'"),
        ({"fit": "log_error", "allocation": "adaptive", "pilot_passes": 1}, "`pilot_passes` must be an int in \\[2, passes=4\\]"),
        ({"fit": "log_error", "allocation": "adaptive", "pilot_passes": 5}, "`pilot_passes`"),
        ({"fit": "log_error", "accumulator": "acc"}, "`accumulator` must be what make_accumulator"),
    ]:
        with pytest.raises(ValueError, match=match):
            estimate_contributions(oracle.supernet, loader, passes=4, **kwargs)
    staged = oracle.staged
    n = 4
    configs = torch.zeros(n, staged.num_stages, staged.max_blocks, dtype=torch.long)
    depths = torch.zeros(n, staged.num_stages, dtype=torch.long)
    acc = LogErrorAccumulator(staged)
    with pytest.raises(ValueError, match="`groups` must have shape"):
        acc.update(configs, depths, torch.ones(n), torch.zeros(n - 1))
    with pytest.raises(ValueError, match=r"`correct` must be bool or lie in \[0, 1\]"):
        acc.update(configs, depths, torch.full((n,), 2.0), torch.zeros(n))
    with pytest.raises(ValueError, match="no record to fit"):
        acc.compute()
    acc.update(configs, depths, torch.ones(n), torch.arange(n))
    with pytest.raises(ValueError, match="every record is right"):
        acc.compute()
