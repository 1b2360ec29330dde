"""Per-block cost tables fitted to measured whole networks, with their held-out error and a safety margin.

A table of blocks timed one at a time (BINAS's LUT, MathNAS's Algorithm 1 deltas) misses what a
whole network adds: caches, fused kernels, a block whose input another block already produced.
On NAS-Bench-201's CPU latencies the Algorithm 1 table is off by 17 % on average. Measuring a few
dozen whole networks and fitting every entry of the additive table to them by least squares puts
those effects, on average, into the entries the solver sees::

    min_θ  Σ_n (x_n · θ − y_n)²  +  λ N ‖θ − θ_prior‖²          (x_n: one-hot of arch n's running blocks)

``θ`` holds every block entry, every depth term and the constant (unpenalised). With a ``prior``
table the fit starts from it, first rescaled to the measurements
(:func:`~lightning_nas.profiling.report.calibrate_latency`), so entries the measurements do not
pin down keep the prior's values; without one they shrink towards 0.

The fit's error is measured where it matters, on networks it has not seen: ``folds``-fold
cross-validation gives every measurement a held-out prediction. The safety margin is the
``quantile`` of the held-out *under*-prediction ``measured / predicted − 1``; solving against
``upper / (1 + margin)`` (:meth:`TableFit.safe_upper`) makes the solver's pick fit the real budget
as often as the held-out networks did. Pairwise terms between adjacent blocks are not fitted: the
tables here are additive (:class:`~lightning_nas.bilinear.BilinearTable`), which is what the MILP
solves exactly.

``build_latency_table(..., fit_archs=N)`` (:mod:`~lightning_nas.profiling.tables`) uses it on
whole subnets timed in the same rounds as the blocks, at several ridge weights, and keeps a fit
only when its held-out error clearly beats the block table's.

Example::

    fit = fit_table(staged, archs, measured_ms, prior=latency_lut, name="latency", unit="ms")
    fit.heldout["mape_percent"], fit.margin
    best = search_constrained(accuracy, Limit(fit.table, upper=fit.safe_upper(25.0)))
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from lightning_nas.bilinear import BilinearTable
from lightning_nas.spaces.staged import StagedSpace

__all__ = ["TableFit", "design_matrix", "fit_table"]


@dataclass
class TableFit:
    """A fitted table and how well it predicts networks it was not fitted on.

    Attributes:
        table: the fitted additive table (fitted on every measurement).
        heldout: cross-validated errors: ``mape_percent``, ``max_error_percent`` (largest
            ``|measured / predicted − 1|``), ``rmse`` (in the table's unit), ``folds``.
        margin: relative safety margin, the ``quantile`` of the held-out ``measured / predicted − 1``
            (0 when the table over-predicts at that quantile).
        quantile: the quantile ``margin`` is taken at.
        measurements: the number of measured networks.
        prior_heldout: the same held-out errors of the (rescaled) prior, for comparison (``None``
            without a prior).
        details: the ridge weight, the fold assignment seed, and in how many of the ``folds + 1``
            fits the prior could not be rescaled (it ordered the networks unlike the measurements)
            and was used as it is.
    """

    table: BilinearTable
    heldout: dict[str, float]
    margin: float
    quantile: float
    measurements: int
    prior_heldout: dict[str, float] | None = None
    details: dict[str, Any] = field(default_factory=dict)

    def safe_upper(self, upper: float) -> float:
        """The bound to give the solver for a real budget ``upper``: ``upper / (1 + margin)``."""
        return float(upper) / (1.0 + self.margin)


def design_matrix(staged: StagedSpace, configs: np.ndarray, depths: np.ndarray) -> np.ndarray:
    """``(N, P)`` features with ``table.predict_indices(configs, depths) == X @ params(table)``.

    ``P = S·D·C + S·max_depth_options + 1``: a one-hot of every running block's config, a one-hot
    of every stage's depth option, and 1 for the constant (the order of :func:`_params`).
    """
    configs, depths = np.asarray(configs), np.asarray(depths)
    n = len(depths)
    S, D, C = staged.num_stages, staged.max_blocks, staged.num_configs
    nd = staged.max_depth_options
    active = staged.active(depths)  # (N, S, D)
    block = np.zeros((n, S, D, C))
    rows, ss, bb = np.nonzero(active)
    block[rows, ss, bb, configs[rows, ss, bb]] = 1.0
    depth = np.zeros((n, S, nd))
    depth[np.arange(n)[:, None], np.arange(S)[None], depths] = 1.0
    return np.concatenate([block.reshape(n, -1), depth.reshape(n, -1), np.ones((n, 1))], 1)


def _params(table: BilinearTable) -> np.ndarray:
    return np.concatenate([table.block.ravel(), table.depth.ravel(), [table.constant]])


def _table(staged: StagedSpace, theta: np.ndarray, like: BilinearTable | None, name: str, unit: str,
           metadata: Mapping[str, Any]) -> BilinearTable:
    S, D, C = staged.num_stages, staged.max_blocks, staged.num_configs
    nb = S * D * C
    block = np.where(staged.config_exists(), theta[:nb].reshape(S, D, C), 0.0)
    depth = np.where(staged.depth_exists(), theta[nb:-1].reshape(S, -1), 0.0)
    return BilinearTable(staged, float(theta[-1]), block, depth, name=name, unit=unit, metadata=dict(metadata))


def _solve(X: np.ndarray, y: np.ndarray, prior: np.ndarray, ridge: float) -> np.ndarray:
    # Ridge towards the prior on every entry but the constant: rows sqrt(λN)·(θ − θ_prior) = 0.
    p = X.shape[1]
    weight = np.sqrt(ridge * len(y))
    penalty = weight * np.eye(p)[:-1]
    A = np.concatenate([X, penalty])
    b = np.concatenate([y, weight * prior[:-1]])
    return np.linalg.lstsq(A, b, rcond=None)[0]


def _errors(predicted: np.ndarray, measured: np.ndarray) -> dict[str, float]:
    rel = measured / np.where(np.abs(predicted) > 1e-12, predicted, np.nan) - 1.0
    return {"mape_percent": float(np.nanmean(np.abs(predicted / measured - 1.0)) * 100),
            "max_error_percent": float(np.nanmax(np.abs(rel)) * 100),
            "rmse": float(np.sqrt(np.mean((predicted - measured) ** 2)))}


def fit_table(
    staged: StagedSpace,
    archs: Sequence[Mapping[str, Any]],
    measured: Sequence[float] | np.ndarray,
    *,
    prior: BilinearTable | None = None,
    ridge: float = 1e-3,
    folds: int = 5,
    quantile: float = 0.9,
    seed: int = 0,
    name: str = "latency",
    unit: str = "ms",
) -> TableFit:
    """Fit an additive per-block table to measured whole networks by (ridge) least squares.

    Args:
        staged: the node structure of the table (e.g. ``StagedSpace.of(supernet)``,
            :func:`~lightning_nas.estimators.block_performance.nodes_as_stage`).
        archs: ``N`` measured archs (a few dozen; at least ``folds`` and 3).
        measured: ``(N,)`` their measured cost (latency in ms, energy in mJ...), positive.
        prior: a table to start from (a LUT of blocks timed alone, Algorithm 1's additive
            table); rescaled to the measurements first. ``None``: shrink towards 0.
        ridge: ``λ``, the weight of ``‖θ − θ_prior‖²`` per measurement (small: the data decide
            where they can).
        folds: cross-validation folds for the held-out error (``min(folds, N)``).
        quantile: the held-out under-prediction quantile taken as the safety margin.
        seed: seeds the fold assignment.
        name: the fitted table's name (a :class:`~lightning_nas.solvers.Limit` names the
            resource by it).
        unit: its unit.

    Returns:
        A :class:`TableFit`.

    Raises:
        ValueError: fewer than 3 measurements or than ``folds``, lengths that differ, non-positive
            or non-finite measurements, a prior of another structure, or bad ``ridge``,
            ``folds``, ``quantile``.
    """
    from lightning_nas.profiling.report import calibrate_latency

    archs = list(archs)
    y = np.asarray(measured, dtype=np.float64)
    if y.ndim != 1 or len(archs) != y.size:
        raise ValueError(f"`archs` and `measured` must have the same length, got {len(archs)} and shape {y.shape}")
    if isinstance(folds, bool) or not isinstance(folds, int) or folds < 2:
        raise ValueError(f"`folds` must be an int >= 2, got {folds!r}")
    if y.size < max(3, folds):
        raise ValueError(f"`measured` must hold at least max(3, folds={folds}) networks, got {y.size}")
    if not (np.isfinite(y).all() and (y > 0).all()):
        raise ValueError("`measured` must hold positive finite values (a cost of each network)")
    if isinstance(ridge, bool) or not isinstance(ridge, (int, float)) or not np.isfinite(ridge) or ridge <= 0:
        raise ValueError(f"`ridge` must be a positive finite number, got {ridge!r}")
    if isinstance(quantile, bool) or not isinstance(quantile, (int, float)) or not 0.0 <= quantile <= 1.0:
        raise ValueError(f"`quantile` must be a number in [0, 1], got {quantile!r}")
    if isinstance(seed, bool) or not isinstance(seed, int) or seed < 0:
        raise ValueError(f"`seed` must be an int >= 0, got {seed!r}")
    if prior is not None:
        if not isinstance(prior, BilinearTable) or prior.link != "identity":
            raise ValueError("`prior` must be an additive BilinearTable (link 'identity') or None")
        if prior.staged is not staged and (prior.staged.num_configs != staged.num_configs
                                          or prior.block.shape != (staged.num_stages, staged.max_blocks, staged.num_configs)):
            raise ValueError(f"`prior` {prior.name!r} was made for another node structure than `staged`")
    configs, depths = staged.indices_many(archs)
    X = design_matrix(staged, configs, depths)

    def fit(rows: np.ndarray) -> tuple[np.ndarray, np.ndarray | None]:
        """``θ`` of the fit on ``rows`` and of the prior rescaled on them (``None`` without a prior)."""
        theta_prior = np.zeros(X.shape[1])
        if prior is not None:
            try:
                theta_prior = _params(calibrate_latency(prior, [archs[i] for i in rows], y[rows], terms="scale"))
            except ValueError:
                # The prior orders these networks unlike the measurements (or not at all): no scale to
                # fit, so it is used as it is (the data outweigh it wherever they pin an entry down).
                theta_prior = _params(prior)
                rejected.append(len(rows))
        return _solve(X[rows], y[rows], theta_prior, ridge), (theta_prior if prior is not None else None)

    rejected: list[int] = []
    k = min(folds, y.size)
    assignment = np.random.default_rng(seed).permutation(y.size) % k
    heldout, heldout_prior = np.zeros_like(y), np.zeros_like(y)
    for f in range(k):
        test, train = assignment == f, assignment != f
        theta, theta_prior = fit(np.flatnonzero(train))
        heldout[test] = X[test] @ theta
        if theta_prior is not None:
            heldout_prior[test] = X[test] @ theta_prior
    theta, _ = fit(np.arange(y.size))
    under = y / heldout - 1.0
    margin = max(0.0, float(np.quantile(under, quantile)))
    errors = {**_errors(heldout, y), "folds": k}
    metadata = {"fit": {"measurements": int(y.size), "ridge": ridge, "heldout": errors, "margin": margin,
                        "quantile": quantile, "prior": None if prior is None else prior.name}}
    return TableFit(
        table=_table(staged, theta, prior, name, unit, metadata), heldout=errors, margin=margin, quantile=quantile,
        measurements=int(y.size), prior_heldout=None if prior is None else {**_errors(heldout_prior, y), "folds": k},
        details={"ridge": ridge, "seed": seed, "prior_not_rescaled": len(rejected)},
    )
