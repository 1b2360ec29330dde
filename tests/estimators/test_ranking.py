"""Kendall τ / Spearman ρ against scipy, one-shot subnet accuracy and the Table 2 ranking report."""

from __future__ import annotations

import warnings

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from scipy import stats

from lightning_nas.estimators import (
    BilinearRegression,
    estimate_one_pass,
    kendall_tau,
    measure_subnet_accuracies,
    rank_correlations,
    ranking_report,
    spearman_rho,
    table2_predictors,
)

# Few distinct values so that ties are common.
pairs = st.integers(2, 60).flatmap(
    lambda n: st.tuples(st.lists(st.integers(0, 6), min_size=n, max_size=n), st.lists(st.floats(-3, 3).map(lambda v: round(v, 1)), min_size=n, max_size=n))
)


@settings(max_examples=200, deadline=None)
@given(xy=pairs)
def test_kendall_and_spearman_match_scipy(xy):
    x, y = xy
    expected_tau = stats.kendalltau(x, y).statistic
    with np.errstate(all="ignore"), warnings.catch_warnings():
        warnings.simplefilter("ignore")
        expected_rho = stats.spearmanr(x, y).statistic
    for got, want in ((kendall_tau(x, y, chunk=7), expected_tau), (spearman_rho(x, y), expected_rho)):
        if np.isnan(want):
            assert np.isnan(got)
        else:
            assert got == pytest.approx(want, abs=1e-12)


def test_rank_correlations_extremes_and_errors():
    x = np.arange(10.0)
    assert rank_correlations(x, x**3) == {"kendall_tau": 1.0, "spearman_rho": 1.0}
    assert rank_correlations(x, -x) == {"kendall_tau": -1.0, "spearman_rho": -1.0}
    with pytest.raises(ValueError, match="same length"):
        kendall_tau([1, 2], [1, 2, 3])
    with pytest.raises(ValueError, match="finite"):
        spearman_rho([1, np.nan], [1, 2])


def test_measured_one_shot_accuracy_is_exact_on_the_oracle(oracle):
    n = 400
    loader = oracle.loader(n, 150)
    u = torch.cat([batch[0][:, 0] for batch in loader]).numpy()
    archs = oracle.supernet.space.sample_many(12, seed=0)
    measured = measure_subnet_accuracies(oracle.supernet, archs, loader)
    p = oracle.truth(*oracle.staged.indices_many(archs))
    expected = (u[None, :] < p[:, None].astype(np.float32)).mean(1)
    np.testing.assert_allclose(measured, expected)


def test_ranking_report_of_the_estimate_and_its_ablations(oracle):
    space = oracle.supernet.space
    table = estimate_one_pass(oracle.supernet, oracle.loader(20_000, 5000), passes=1, seed=0)
    archs = space.sample_many(300, seed=9)
    truth = oracle.truth(*oracle.staged.indices_many(archs))  # the oracle's exact accuracies
    train = space.sample_many(300, seed=10)
    baseline = BilinearRegression(oracle.staged).fit(train, oracle.truth(*oracle.staged.indices_many(train)))
    report = ranking_report({**table2_predictors(table), "bilinear_regression": baseline}, archs, truth)
    assert list(report) == ["full", "q_beta=0", "Q=0", "bilinear_regression"]
    # The truth is additive up to one interaction and clipping, so the full estimate ranks well and
    # dropping the depth terms (the largest gains) hurts most.
    assert report["full"]["kendall_tau"] > 0.6 and report["full"]["spearman_rho"] > 0.8
    assert report["q_beta=0"]["kendall_tau"] < report["full"]["kendall_tau"]
    assert report["Q=0"]["kendall_tau"] < report["full"]["kendall_tau"]
    assert report["bilinear_regression"]["kendall_tau"] > 0.6
    with pytest.raises(ValueError, match="accuracies"):
        ranking_report({"full": table}, archs, truth[:-1])


def test_recalibrated_one_shot_accuracy_equals_the_recalibrated_exported_subnet():
    from torch.utils.data import DataLoader, TensorDataset

    from lightning_nas.spaces import mobilenet_supernet

    torch.manual_seed(0)
    supernet = mobilenet_supernet(num_classes=4, stem_channels=8, head_channels=16)
    x, y = torch.randn(96, 3, 16, 16), torch.randint(0, 4, (96,))
    # Per-example training steps leave mixture statistics, as real supernet training does.
    supernet.train()
    optimizer = torch.optim.SGD(supernet.parameters(), lr=0.05)
    for step in range(3):
        supernet.activate_indices(supernet.space.sample_indices(96, seed=step))
        torch.nn.functional.cross_entropy(supernet(x), y).backward()
        optimizer.step()
        optimizer.zero_grad()
    calibration = DataLoader(TensorDataset(x[:64], y[:64]), batch_size=32)
    held_out = DataLoader(TensorDataset(x[64:] + 0.5, y[64:]), batch_size=16)
    buffers = {k: v.clone() for k, v in supernet.named_buffers()}
    archs = supernet.space.sample_many(4, seed=3)
    measured = measure_subnet_accuracies(supernet, archs, held_out, calibration_batches=calibration)
    for name, value in supernet.named_buffers():
        assert torch.equal(value, buffers[name]), name  # the supernet's statistics are restored
    for arch, accuracy in zip(archs, measured):
        subnet = supernet.export(arch, calibration_batches=calibration).eval()
        with torch.no_grad():
            expected = torch.cat([(subnet(xb).argmax(1) == yb) for xb, yb in held_out]).float().mean().item()
        assert accuracy == pytest.approx(expected, abs=1 / 32 + 1e-9)  # at most one near-tie flips
    plain = measure_subnet_accuracies(supernet, archs, held_out)
    assert not np.allclose(plain, measured)  # the inherited statistics do give other numbers here
