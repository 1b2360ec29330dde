"""The paired one-pass estimator: records centred on their example's other draws."""

from __future__ import annotations

import warnings

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from lightning_nas.estimators import ContributionAccumulator, estimate_contributions, estimate_one_pass


def rms(a, b):
    return float(np.sqrt(np.mean((np.asarray(a) - np.asarray(b)) ** 2)))


def test_paired_recovers_exact_deltas_with_less_error_than_the_same_records_unpaired(oracle):
    # The oracle's examples have a fixed difficulty (u): an example with small u is right under
    # almost every architecture. Plain conditional means carry that example-to-example noise.
    loader = oracle.loader(4000, 500)
    errors = {"plain": [], "paired": []}
    for seed in range(3):
        plain = estimate_one_pass(oracle.supernet, loader, passes=4, seed=seed)
        paired = estimate_one_pass(oracle.supernet, loader, passes=4, seed=seed, paired=True)
        assert paired.constant == pytest.approx(plain.constant, abs=1e-12)  # same draws, same records
        assert paired.metadata["examples"] == plain.metadata["examples"] == 16_000 and paired.metadata["paired"]
        errors["plain"].append(rms(plain.block, oracle.exact["block"]) + rms(plain.depth, oracle.exact["depth"]))
        errors["paired"].append(rms(paired.block, oracle.exact["block"]) + rms(paired.depth, oracle.exact["depth"]))
    assert np.mean(errors["paired"]) < 0.7 * np.mean(errors["plain"]), errors
    # Unbiased: with many records the paired gains converge on the exact ones.
    many = estimate_one_pass(oracle.supernet, oracle.loader(20_000, 5000), passes=4, seed=9, paired=True)
    assert rms(many.block, oracle.exact["block"]) < 0.15 * np.sqrt(np.mean(oracle.exact["block"] ** 2))
    assert np.abs(many.depth - oracle.exact["depth"]).max() < 0.01


@settings(max_examples=25, deadline=None)
@given(st.integers(0, 2**31 - 1), st.integers(2, 5))
def test_architecture_independent_outcomes_give_exactly_zero_gains(oracle, seed, draws):
    # Each example is right or wrong whatever the architecture: every gain is truly 0. The paired
    # estimate says so exactly; the plain one sees the noise of which examples fell where.
    rng = np.random.default_rng(seed)
    ex = oracle.exact
    n = 60
    rows = rng.integers(len(ex["p"]), size=(draws, n))
    configs, depths = torch.as_tensor(ex["configs"][rows]), torch.as_tensor(ex["depths"][rows])
    correct = torch.as_tensor(np.broadcast_to(rng.random(n) < 0.7, (draws, n)).copy())
    paired, plain = ContributionAccumulator(oracle.staged), ContributionAccumulator(oracle.staged)
    paired.update_paired(configs, depths, correct)
    plain.update(configs.flatten(0, 1), depths.flatten(0, 1), correct.flatten())
    with warnings.catch_warnings():  # 60 examples may leave some conditionals without a record
        warnings.simplefilter("ignore")
        table, reference = paired.compute(), plain.compute()
    assert table.constant == pytest.approx(reference.constant)
    assert np.all(table.block == 0) and np.all(table.depth == 0)


def test_shrinkage_uses_the_residual_variance(oracle):
    loader = oracle.loader(2000, 500)
    raw = estimate_one_pass(oracle.supernet, loader, passes=3, seed=1, paired=True)
    shrunk = estimate_one_pass(oracle.supernet, loader, passes=3, seed=1, paired=True, shrinkage="empirical_bayes")
    assert shrunk.constant == raw.constant and shrunk.metadata["shrinkage"] == "empirical_bayes"
    # Shrinking moves gains toward their group, so the spread within each row can only shrink.
    assert np.abs(shrunk.block).sum() <= np.abs(raw.block).sum() + 1e-12
    assert rms(shrunk.block, oracle.exact["block"]) < 1.2 * rms(raw.block, oracle.exact["block"])


def test_bad_input_is_named(oracle):
    loader = oracle.loader(100, 50)
    with pytest.raises(ValueError, match="paired"):
        estimate_one_pass(oracle.supernet, loader, passes=1, paired=True)
    with pytest.raises(ValueError, match="paired"):
        estimate_contributions(oracle.supernet, loader, method="paper", passes=2, paired=True)
    with pytest.raises(ValueError, match="paired"):
        estimate_one_pass(oracle.supernet, loader, passes=2, paired=1)
    acc = ContributionAccumulator(oracle.staged)
    ex = oracle.exact
    configs, depths = torch.as_tensor(ex["configs"][:6]), torch.as_tensor(ex["depths"][:6])
    with pytest.raises(ValueError, match="P >= 2"):
        acc.update_paired(configs[None], depths[None], torch.ones(1, 6))
    with pytest.raises(ValueError, match="configs"):
        acc.update_paired(configs.view(2, 3, *configs.shape[1:]), depths.view(2, 3, -1), torch.ones(3, 2))
    acc.update(configs, depths, torch.ones(6))
    with pytest.raises(ValueError, match="fresh one"):
        acc.update_paired(configs.view(2, 3, *configs.shape[1:]), depths.view(2, 3, -1), torch.ones(2, 3))
