"""Empirical-Bayes shrinkage of the contribution gains."""

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from hypothesis.extra.numpy import arrays

from lightning_nas.estimators import ContributionAccumulator, estimate_one_pass, estimate_paper_protocol
from lightning_nas.estimators.contributions import shrink_gains


def test_noise_only_rows_collapse_and_exact_rows_stay():
    gains = np.array([[0.01, -0.02, 0.015, -0.005], [0.3, -0.2, 0.1, 0.0]])
    variances = np.array([[0.02**2] * 4, [0.0] * 4])  # row 0: spread below its noise; row 1: exact
    valid = np.ones_like(gains, bool)
    out = shrink_gains(gains, variances, valid, center=True)
    np.testing.assert_allclose(out[0], gains[0].mean())
    np.testing.assert_allclose(out[1], gains[1])
    toward_zero = shrink_gains(gains[:1], variances[:1], valid[:1], center=False)
    np.testing.assert_allclose(toward_zero, 0.0)


def test_invalid_entries_are_untouched_and_ignored():
    gains = np.array([[0.5, 0.2, 0.1, 7.0]])
    valid = np.array([[True, True, True, False]])
    out = shrink_gains(gains, np.full_like(gains, 0.01), valid, center=True)
    assert out[0, 3] == 7.0
    assert np.all(np.abs(out[0, :3] - gains[0, :3].mean()) <= np.abs(gains[0, :3] - gains[0, :3].mean()) + 1e-12)


@settings(max_examples=200, deadline=None)
@given(
    arrays(np.float64, (3, 5), elements=st.floats(-1, 1)),
    arrays(np.float64, (3, 5), elements=st.floats(0, 0.5)),
    arrays(np.bool_, (3, 5)),
    st.booleans(),
)
def test_each_gain_moves_toward_its_group_and_never_past_it(gains, variances, valid, center):
    out = shrink_gains(gains, variances, valid, center=center)
    for r in range(3):
        ok = valid[r]
        np.testing.assert_array_equal(out[r, ~ok], gains[r, ~ok])
        if not ok.any():
            continue
        m = gains[r, ok].mean() if center else 0.0
        before, after = gains[r, ok] - m, out[r, ok] - m
        assert np.all(np.abs(after) <= np.abs(before) + 1e-12)
        assert np.all(after * before >= -1e-15)  # same side of the group centre


def test_shrinkage_reduces_error_and_the_winners_curse(oracle):
    """Few records per conditional: shrunk gains are closer to the exact ones, and the table's best
    architecture is predicted less optimistically (averaged over seeds)."""
    exact = oracle.exact
    configs, depths, p = exact["configs"], exact["depths"], exact["p"]
    errors, optimism = {"none": [], "empirical_bayes": []}, {"none": [], "empirical_bayes": []}
    for seed in range(12):
        for shrinkage in errors:
            table = estimate_one_pass(oracle.supernet, oracle.loader(600, 600, seed=seed), passes=1, seed=seed, shrinkage=shrinkage)
            assert table.metadata["shrinkage"] == shrinkage
            errors[shrinkage].append(np.sqrt(np.mean((table.block - exact["block"]) ** 2)))
            predicted = table.predict_indices(configs, depths)
            best = int(np.argmax(predicted))
            optimism[shrinkage].append(predicted[best] - p[best])
    assert np.mean(errors["empirical_bayes"]) < 0.9 * np.mean(errors["none"])
    assert np.mean(optimism["empirical_bayes"]) < 0.7 * np.mean(optimism["none"])
    assert np.mean(optimism["none"]) > 0  # the curse is real without shrinkage


def test_many_records_leave_the_estimate_nearly_unchanged(oracle):
    loader = oracle.loader(20_000, 5000)
    raw = estimate_paper_protocol(oracle.supernet, loader, passes=1, seed=2)
    shrunk = estimate_paper_protocol(oracle.supernet, loader, passes=1, seed=2, shrinkage="empirical_bayes")
    assert raw.constant == shrunk.constant
    np.testing.assert_allclose(shrunk.block, raw.block, atol=0.01)
    assert not np.allclose(shrunk.block, raw.block, atol=0, rtol=0)


def test_bad_shrinkage_is_rejected(oracle):
    with pytest.raises(ValueError, match="`shrinkage` must be one of"):
        ContributionAccumulator(oracle.staged, shrinkage="james-stein")
    with pytest.raises(ValueError, match="one shape"):
        shrink_gains(np.zeros((2, 3)), np.zeros((2, 2)), np.ones((2, 3), bool), center=True)
    with pytest.raises(ValueError, match="non-negative"):
        shrink_gains(np.zeros((1, 3)), -np.ones((1, 3)), np.ones((1, 3), bool), center=True)
