"""BINAS §5.2 baselines: accuracy predictors *learned* by closed-form (ridge) least squares.

Both are fit on uniformly sampled subnets and their measured one-shot accuracies and compared with
the estimated bilinear table by their ranking quality (:mod:`lightning_nas.estimators.ranking`).

* :class:`BilinearRegression` (Eq. 10–11): ``r + αᵀq_α + βᵀq_β + αᵀQ_αβ β`` with every entry of
  ``q_α`` (config-only blocks), ``q_β`` and the block upper-triangular ``Q_αβ`` (entry
  ``(s,b,c),(s,j)`` for each depth option ``j`` that runs block ``b``) learned freely. It contains
  every :class:`~lightning_nas.bilinear.BilinearTable` as a special case.
* :class:`QuadraticRegression` (Eq. 12): all pairwise products of the one-hot encoding ``(α, β)``,
  ridge-regularised.

Features are centred and the intercept is not penalised. With ``ridge=0`` the minimum-norm least
squares solution is used (the one-hot features are collinear by construction).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np

from lightning_nas.estimators.contributions import conditioning_depths
from lightning_nas.spaces.staged import StagedSpace

__all__ = ["BilinearRegression", "QuadraticRegression", "bilinear_features", "quadratic_features"]


def _one_hot(staged: StagedSpace, configs: np.ndarray, depths: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    configs, depths = np.asarray(configs), np.asarray(depths)
    alpha = (configs[..., None] == np.arange(staged.num_configs)) & staged.block_exists()[..., None]  # (N, S, D, C)
    beta = depths[..., None] == np.arange(staged.max_depth_options)  # (N, S, nd)
    return alpha.astype(np.float64), beta.astype(np.float64)


def bilinear_features(staged: StagedSpace, configs: np.ndarray, depths: np.ndarray) -> np.ndarray:
    """``(N, F)`` features of Eq. 11 from ``(N, S, D)`` config and ``(N, S)`` depth indices:
    α of config-only blocks, β of every depth option, and ``α^s_{b,c} β^s_j`` for the other blocks
    and each depth option ``j`` deep enough to run block ``b``."""
    alpha, beta = _one_hot(staged, configs, depths)
    cond = conditioning_depths(staged)
    columns = [alpha[:, cond == -1].reshape(len(alpha), -1), beta[:, staged.depth_exists()]]
    for s, st in enumerate(staged.stages):
        for b in range(st.num_blocks):
            if cond[s, b] >= 0:
                runs = [j for j, d in enumerate(st.depths) if d >= b + 1]
                columns.append((alpha[:, s, b, :, None] * beta[:, s][:, None, runs]).reshape(len(alpha), -1))
    return np.concatenate(columns, axis=1)


def quadratic_features(staged: StagedSpace, configs: np.ndarray, depths: np.ndarray) -> np.ndarray:
    """``(N, F)`` features of Eq. 12: the one-hot ``x = (α, β)`` of existing blocks and depth options,
    and ``x_i x_j`` for every pair ``i < j`` of entries from different one-hot groups."""
    alpha, beta = _one_hot(staged, configs, depths)
    n = len(alpha)
    x = np.concatenate([alpha[:, staged.block_exists()].reshape(n, -1), beta[:, staged.depth_exists()]], axis=1)
    groups = np.concatenate([
        np.repeat(np.arange(int(staged.block_exists().sum())), staged.num_configs),
        int(staged.block_exists().sum()) + np.repeat(np.arange(staged.num_stages), staged.depth_exists().sum(1)),
    ])
    i, j = np.triu_indices(x.shape[1], k=1)
    keep = groups[i] != groups[j]  # products within a one-hot group are identically zero
    return np.concatenate([x, x[:, i[keep]] * x[:, j[keep]]], axis=1)


class _Regression:
    _features = staticmethod(bilinear_features)

    def __init__(self, staged: StagedSpace, ridge: float) -> None:
        if not isinstance(staged, StagedSpace):
            raise ValueError(f"`staged` must be a StagedSpace, got {type(staged).__name__}")
        if not isinstance(ridge, (int, float)) or isinstance(ridge, bool) or not ridge >= 0 or not np.isfinite(ridge):
            raise ValueError(f"`ridge` must be a finite float >= 0, got {ridge!r}")
        self.staged, self.ridge = staged, float(ridge)
        self.weights: np.ndarray | None = None

    def features(self, archs: Sequence[Mapping[str, Any]]) -> np.ndarray:
        """``(N, F)`` feature matrix of ``archs``."""
        return self._features(self.staged, *self.staged.indices_many(archs))

    def fit(self, archs: Sequence[Mapping[str, Any]], accuracies: Any) -> "_Regression":
        """Fit on ``N`` archs and their measured accuracies ``(N,)``; returns ``self``."""
        y = np.asarray(accuracies, dtype=np.float64)
        if y.shape != (len(archs),) or len(archs) < 2:
            raise ValueError(f"`accuracies` must have shape (N,) = ({len(archs)},) with N >= 2, got {y.shape}")
        if not np.isfinite(y).all():
            raise ValueError("`accuracies` must be finite")
        X = self.features(archs)
        self.x_mean, self.y_mean = X.mean(0), float(y.mean())
        Xc, yc = X - self.x_mean, y - self.y_mean
        if self.ridge == 0:
            self.weights = np.linalg.lstsq(Xc, yc, rcond=None)[0]
        elif Xc.shape[1] <= Xc.shape[0]:
            self.weights = np.linalg.solve(Xc.T @ Xc + self.ridge * np.eye(Xc.shape[1]), Xc.T @ yc)
        else:
            # Dual form: an N×N system instead of F×F when there are more features than samples.
            self.weights = Xc.T @ np.linalg.solve(Xc @ Xc.T + self.ridge * np.eye(Xc.shape[0]), yc)
        return self

    def predict_many(self, archs: Sequence[Mapping[str, Any]]) -> np.ndarray:
        """``(N,)`` predicted accuracies."""
        if self.weights is None:
            raise ValueError(f"{type(self).__name__} is not fitted; call fit(archs, accuracies) first")
        return self.y_mean + (self.features(archs) - self.x_mean) @ self.weights

    def predict(self, arch: Mapping[str, Any]) -> float:
        """The predicted accuracy of one arch."""
        return float(self.predict_many([arch])[0])


class BilinearRegression(_Regression):
    """Eq. 10–11: the bilinear form with every coefficient learned by least squares.

    Args:
        staged: the staged space.
        ridge: L2 penalty on the (centred) coefficients; 0 = minimum-norm least squares.
    """

    _features = staticmethod(bilinear_features)

    def __init__(self, staged: StagedSpace, ridge: float = 0.0) -> None:
        super().__init__(staged, ridge)


class QuadraticRegression(_Regression):
    """Eq. 12: a full quadratic in the one-hot encoding, ridge-regularised.

    Args:
        staged: the staged space.
        ridge: L2 penalty on the (centred) coefficients.
    """

    _features = staticmethod(quadratic_features)

    def __init__(self, staged: StagedSpace, ridge: float = 1e-2) -> None:
        super().__init__(staged, ridge)
