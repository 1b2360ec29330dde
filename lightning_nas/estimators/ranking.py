"""How well a predictor ranks subnets: Kendall τ and Spearman ρ against measured one-shot accuracy.

BINAS's Table 2 compares the full estimator with its ablations (``q_β ≡ 0``, ``Q_αβ ≡ 0``) by the
rank correlation of predicted and measured one-shot accuracy of uniformly sampled subnets;
:func:`ranking_report` computes that for any set of predictors (tables or regression baselines).
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Mapping, Sequence
from typing import Any, Protocol

import numpy as np
import torch
from lightning.pytorch.utilities import move_data_to_device
from torch import Tensor, nn

from lightning_nas.bilinear import BilinearTable
from lightning_nas.estimators.contributions import _device_of, ablate, default_batch_to_xy, evaluation_mode, top1_correct
from lightning_nas.supernet import Supernet

__all__ = ["Predictor", "kendall_tau", "measure_subnet_accuracies", "rank_correlations", "ranking_report", "spearman_rho", "table2_predictors"]


class Predictor(Protocol):
    def predict_many(self, archs: Sequence[Mapping[str, Any]]) -> np.ndarray: ...


def _pair(x: Any, y: Any) -> tuple[np.ndarray, np.ndarray]:
    x, y = np.asarray(x, dtype=np.float64).ravel(), np.asarray(y, dtype=np.float64).ravel()
    if x.shape != y.shape:
        raise ValueError(f"`x` and `y` must have the same length, got {x.size} and {y.size}")
    if not (np.isfinite(x).all() and np.isfinite(y).all()):
        raise ValueError("`x` and `y` must be finite")
    return x, y


def kendall_tau(x: Any, y: Any, *, chunk: int = 2048) -> float:
    """Kendall's τ-b of two equal-length sequences (ties handled as scipy's default ``variant="b"``).

    ``nan`` when fewer than two items or when either sequence is constant. ``O(n²)`` time in chunks
    of ``chunk`` rows (memory ``O(chunk · n)``).
    """
    if isinstance(chunk, bool) or not isinstance(chunk, int) or chunk < 1:
        raise ValueError(f"`chunk` must be an int >= 1, got {chunk!r}")
    x, y = _pair(x, y)
    n = x.size
    if n < 2:
        return float("nan")
    concordance = ties_x = ties_y = 0.0
    for start in range(0, n, chunk):
        rows = slice(start, min(n, start + chunk))
        dx = np.sign(x[rows, None] - x[None, :])
        dy = np.sign(y[rows, None] - y[None, :])
        # Every unordered pair is seen twice (i, j) and (j, i); the diagonal contributes zeros except to ties.
        concordance += float((dx * dy).sum())
        ties_x += float((dx == 0).sum())
        ties_y += float((dy == 0).sum())
    pairs = n * (n - 1) / 2
    tied_x, tied_y = (ties_x - n) / 2, (ties_y - n) / 2
    denominator = np.sqrt((pairs - tied_x) * (pairs - tied_y))
    return float(concordance / 2 / denominator) if denominator > 0 else float("nan")


def _average_ranks(values: np.ndarray) -> np.ndarray:
    unique, inverse, counts = np.unique(values, return_inverse=True, return_counts=True)
    starts = np.cumsum(counts) - counts
    return (starts + (counts + 1) / 2.0)[inverse]


def spearman_rho(x: Any, y: Any) -> float:
    """Spearman's ρ: Pearson correlation of the average ranks (``nan`` for constant input)."""
    x, y = _pair(x, y)
    if x.size < 2:
        return float("nan")
    rx, ry = _average_ranks(x), _average_ranks(y)
    rx, ry = rx - rx.mean(), ry - ry.mean()
    denominator = np.sqrt((rx**2).sum() * (ry**2).sum())
    return float((rx * ry).sum() / denominator) if denominator > 0 else float("nan")


def rank_correlations(predicted: Any, measured: Any) -> dict[str, float]:
    """``{"kendall_tau": τ-b, "spearman_rho": ρ}`` of ``predicted`` against ``measured``."""
    return {"kendall_tau": kendall_tau(predicted, measured), "spearman_rho": spearman_rho(predicted, measured)}


@torch.no_grad()
def measure_subnet_accuracies(
    supernet: Supernet,
    archs: Sequence[Mapping[str, Any]],
    held_out: Iterable[Any],
    *,
    batch_to_xy: Callable[[Any], tuple[Any, Tensor]] | None = None,
    forward: Callable[[Any], Tensor] | None = None,
    model: nn.Module | None = None,
    calibration_batches: Iterable[Any] | None = None,
    num_calibration_batches: int | None = None,
) -> np.ndarray:
    """``(N,)`` one-shot top-1 accuracy (fraction) of each arch: the supernet's weights, eval mode,
    every held-out batch run with that single arch active.

    ``batch_to_xy``, ``forward`` and ``model`` as in
    :func:`~lightning_nas.estimators.estimate_contributions`. Each batch is loaded once and run
    through every arch.

    With ``calibration_batches`` (training batches, as for :meth:`Supernet.export`), every arch is
    measured the SPOS / Once-for-All way: BatchNorm statistics re-estimated for that arch alone
    (:func:`~lightning_nas.nn.recalibrate_batch_norm`, at most ``num_calibration_batches``) before
    its held-out pass, so the number equals the accuracy of its exported, recalibrated subnet.
    Statistics inherited from per-example training are a mixture over architectures, and a single
    subnet's activations can be far from it; the supernet's own statistics are restored afterwards.
    """
    batch_to_xy = batch_to_xy or default_batch_to_xy
    forward = forward or supernet
    model = model if model is not None else supernet
    archs = [supernet.space.validate(a) for a in archs]
    if not archs:
        raise ValueError("`archs` must list at least one architecture")
    correct, total = np.zeros(len(archs)), 0
    device = _device_of(model)
    if calibration_batches is not None:
        return _measure_recalibrated(supernet, archs, held_out, batch_to_xy, forward, model, calibration_batches,
                                     num_calibration_batches)
    with evaluation_mode(model, supernet):
        for batch in held_out:
            x, y = batch_to_xy(batch)
            x, y = move_data_to_device(x, device), move_data_to_device(y, device)
            for k, arch in enumerate(archs):
                supernet.activate(arch)
                correct[k] += int(top1_correct(forward(x), y).sum())
            total += int(torch.as_tensor(y).shape[0])
    if total == 0:
        raise ValueError("`held_out` yielded no examples")
    return correct / total


def _measure_recalibrated(supernet, archs, held_out, batch_to_xy, forward, model, calibration, num_calibration) -> np.ndarray:
    from lightning_nas.nn.calibration import recalibrate_batch_norm

    device = _device_of(model)
    saved = {name: buffer.clone() for name, buffer in model.named_buffers()}
    buffers = dict(model.named_buffers())

    def calibration_forward(module: nn.Module, batch: Any) -> Any:
        return forward(move_data_to_device(batch_to_xy(batch)[0], device))

    accuracies = np.zeros(len(archs))
    with evaluation_mode(model, supernet):
        try:
            for k, arch in enumerate(archs):
                supernet.activate(arch)
                recalibrate_batch_norm(model, calibration, num_batches=num_calibration, forward=calibration_forward)
                correct = total = 0
                for batch in held_out:
                    x, y = batch_to_xy(batch)
                    x, y = move_data_to_device(x, device), move_data_to_device(y, device)
                    correct += int(top1_correct(forward(x), y).sum())
                    total += int(torch.as_tensor(y).shape[0])
                if total == 0:
                    raise ValueError("`held_out` yielded no examples")
                accuracies[k] = correct / total
        finally:
            for name, value in saved.items():
                buffers[name].copy_(value)
    return accuracies


def table2_predictors(table: BilinearTable) -> dict[str, BilinearTable]:
    """BINAS Table 2's variants of an accuracy table: ``full``, ``q_beta=0`` and ``Q=0``."""
    return {"full": table, "q_beta=0": ablate(table, "q_beta"), "Q=0": ablate(table, "Q")}


def ranking_report(
    predictors: Mapping[str, Predictor], archs: Sequence[Mapping[str, Any]], accuracies: Any
) -> dict[str, dict[str, float]]:
    """Kendall τ and Spearman ρ of every predictor against the measured accuracies.

    Args:
        predictors: name → anything with ``predict_many(archs) -> (N,)`` (a ``BilinearTable``,
            :class:`~lightning_nas.estimators.regression.BilinearRegression`, ...); use
            :func:`table2_predictors` for the full estimator and its ablations.
        archs: the ``N`` held-out subnets.
        accuracies: their measured one-shot accuracies ``(N,)`` (:func:`measure_subnet_accuracies`).

    Returns:
        ``{name: {"kendall_tau": τ, "spearman_rho": ρ}}`` in the order of ``predictors``.
    """
    accuracies = np.asarray(accuracies, dtype=np.float64)
    if accuracies.shape != (len(archs),):
        raise ValueError(f"`accuracies` must have shape (N,) = ({len(archs)},), got {accuracies.shape}")
    return {name: rank_correlations(p.predict_many(archs), accuracies) for name, p in predictors.items()}
