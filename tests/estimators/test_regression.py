"""BINAS §5.2 regression baselines recover exactly bilinear and exactly quadratic targets."""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from lightning_nas.bilinear import BilinearTable
from lightning_nas.estimators import BilinearRegression, QuadraticRegression, bilinear_features, quadratic_features


def split(oracle, n_train, n_test, seed):
    archs = oracle.supernet.space.sample_many(n_train + n_test, seed=seed)
    return archs[:n_train], archs[n_train:]


def eq11_target(staged, seed):
    """A random function of Eq. 11's form with free per-(s,b,c,j) coefficients (richer than a table)."""
    rng = np.random.default_rng(seed)
    weights = rng.normal(size=bilinear_features(staged, *staged.indices_many([staged.space.default()])).shape[1])
    return lambda archs: 0.3 + bilinear_features(staged, *staged.indices_many(archs)) @ weights


@settings(max_examples=5, deadline=None)
@given(seed=st.integers(0, 10_000))
def test_bilinear_regression_recovers_an_exactly_bilinear_target(oracle, seed):
    target = eq11_target(oracle.staged, seed)
    train, test = split(oracle, 300, 100, seed)
    model = BilinearRegression(oracle.staged).fit(train, target(train))
    np.testing.assert_allclose(model.predict_many(test), target(test), atol=1e-8)
    assert model.predict(test[0]) == pytest.approx(float(target(test[:1])[0]), abs=1e-8)


def test_bilinear_regression_contains_every_bilinear_table(oracle):
    rng = np.random.default_rng(0)
    staged = oracle.staged
    table = BilinearTable(staged, 0.5, rng.normal(size=(2, 3, 4)), rng.normal(size=(2, 2)))
    train, test = split(oracle, 300, 100, 1)
    model = BilinearRegression(staged).fit(train, table.predict_many(train))
    np.testing.assert_allclose(model.predict_many(test), table.predict_many(test), atol=1e-8)


def test_bilinear_regression_cannot_fit_a_pure_alpha_interaction(oracle):
    # α–α products lie outside the bilinear form, inside the quadratic one.
    staged = oracle.staged
    train, test = split(oracle, 600, 200, 2)

    def target(archs):
        configs, _ = staged.indices_many(archs)
        return ((configs[:, 0, 0] == 1) & (configs[:, 1, 0] == 2)).astype(float)

    bilinear = BilinearRegression(staged).fit(train, target(train))
    quadratic = QuadraticRegression(staged, ridge=1e-9).fit(train, target(train))
    assert np.abs(bilinear.predict_many(test) - target(test)).max() > 0.1
    np.testing.assert_allclose(quadratic.predict_many(test), target(test), atol=1e-5)


@settings(max_examples=4, deadline=None)
@given(seed=st.integers(0, 10_000))
def test_quadratic_regression_recovers_an_exactly_quadratic_target(oracle, seed):
    staged = oracle.staged
    rng = np.random.default_rng(seed)
    features = lambda archs: quadratic_features(staged, *staged.indices_many(archs))  # noqa: E731
    weights = rng.normal(size=features([staged.space.default()]).shape[1])
    train, test = split(oracle, 1500, 100, seed)
    model = QuadraticRegression(staged, ridge=1e-9).fit(train, features(train) @ weights)
    np.testing.assert_allclose(model.predict_many(test), features(test) @ weights, atol=1e-4)


def test_quadratic_dual_form_matches_primal(oracle):
    # Fewer samples than features takes the N×N (dual) path; it must equal the F×F ridge solution.
    staged = oracle.staged
    train, test = split(oracle, 60, 20, 3)
    y = np.random.default_rng(3).random(len(train))
    model = QuadraticRegression(staged, ridge=0.5).fit(train, y)
    X = model.features(train)
    Xc = X - X.mean(0)
    w = np.linalg.solve(Xc.T @ Xc + 0.5 * np.eye(X.shape[1]), Xc.T @ (y - y.mean()))
    assert X.shape[1] > len(train)
    np.testing.assert_allclose(model.predict_many(test), y.mean() + (model.features(test) - X.mean(0)) @ w, atol=1e-9)


def test_feature_counts(oracle):
    staged = oracle.staged
    configs, depths = staged.indices_many([staged.space.default()])
    # α of the config-only block (4) + β (2 + 2) + α⊗β: stage 0 blocks 2, 3 run at 2 and 1 depths,
    # stage 1 block 1 at 2 depths, blocks 2, 3 at 1 depth: (2 + 1 + 2 + 1 + 1) × 4.
    assert bilinear_features(staged, configs, depths).shape == (1, 4 + 4 + 7 * 4)
    x = 6 * 4 + 4
    groups = [4] * 6 + [2, 2]
    pairs = (x * (x - 1) - sum(g * (g - 1) for g in groups)) // 2
    assert quadratic_features(staged, configs, depths).shape == (1, x + pairs)


def test_bad_arguments(oracle):
    with pytest.raises(ValueError, match="ridge"):
        QuadraticRegression(oracle.staged, ridge=-1.0)
    with pytest.raises(ValueError, match="not fitted"):
        BilinearRegression(oracle.staged).predict_many([oracle.supernet.space.default()])
    with pytest.raises(ValueError, match="accuracies"):
        BilinearRegression(oracle.staged).fit(oracle.supernet.space.sample_many(3, seed=0), [0.1, 0.2])
    with pytest.raises(ValueError, match="staged"):
        BilinearRegression(oracle.supernet.space)
