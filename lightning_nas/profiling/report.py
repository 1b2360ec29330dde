"""How well a latency table predicts real latency: MAPE against end-to-end measurements.

BINAS predicts a subnet's latency as the sum of its blocks' isolated timings plus a constant
(Eq. 5). :func:`check_latency` measures random exported subnets end to end with the table's own
settings and compares.

Example::

    check = check_latency(supernet, table, num_archs=30, seed=1)
    print(f"MAPE {check.mape:.2f} % over {len(check)} subnets")
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from lightning_nas.bilinear import BilinearTable
from lightning_nas.profiling.tables import settings_of, time_archs
from lightning_nas.profiling.timing import ProfileSettings
from lightning_nas.seeding import derive_seed
from lightning_nas.supernet import Supernet

__all__ = ["LatencyCheck", "check_latency", "mape"]

# Separate from the table's calibration stream (0), so checked archs are drawn independently.
CHECK_STREAM = 1


def mape(predicted: Sequence[float] | np.ndarray, measured: Sequence[float] | np.ndarray) -> float:
    """Mean absolute percentage error ``100 · mean(|predicted − measured| / measured)``, in percent.

    Args:
        predicted: ``(N,)`` predictions.
        measured: ``(N,)`` measurements, all positive.

    Raises:
        ValueError: for different lengths, no values, or a non-positive measurement.
    """
    predicted, measured = np.asarray(predicted, dtype=np.float64), np.asarray(measured, dtype=np.float64)
    if predicted.ndim != 1 or predicted.shape != measured.shape or predicted.size == 0:
        raise ValueError(
            f"`predicted` and `measured` must be non-empty 1-D arrays of the same length, got shapes {predicted.shape} and {measured.shape}"
        )
    if not (np.isfinite(measured).all() and (measured > 0).all()) or not np.isfinite(predicted).all():
        raise ValueError("`measured` must be positive and finite and `predicted` finite")
    return float(100.0 * np.mean(np.abs(predicted - measured) / measured))


@dataclass(frozen=True)
class LatencyCheck:
    """Predicted vs measured latency of some archs.

    Attributes:
        archs: the archs.
        predicted: ``(N,)`` table predictions, in the table's unit (ms).
        measured: ``(N,)`` end-to-end times (ms), the same statistic as the table's entries.
        p10, p90: ``(N,)`` spread of each measurement (ms).
    """

    archs: list[dict[str, Any]]
    predicted: np.ndarray
    measured: np.ndarray
    p10: np.ndarray
    p90: np.ndarray

    def __len__(self) -> int:
        return len(self.archs)

    @property
    def mape(self) -> float:
        """Mean absolute percentage error, in percent."""
        return mape(self.predicted, self.measured)

    @property
    def errors(self) -> np.ndarray:
        """``(N,)`` signed relative errors ``(predicted − measured) / measured``, in percent."""
        return 100.0 * (self.predicted - self.measured) / self.measured

    @property
    def pairs(self) -> list[tuple[dict[str, Any], float, float]]:
        """``(arch, predicted, measured)`` per arch."""
        return [(a, float(p), float(m)) for a, p, m in zip(self.archs, self.predicted, self.measured)]

    def to_dict(self) -> dict[str, Any]:
        return {
            "mape_percent": self.mape,
            "max_abs_error_percent": float(np.abs(self.errors).max()),
            "archs": [
                {"arch": a, "predicted_ms": float(p), "measured_ms": float(m), "p10_ms": float(lo), "p90_ms": float(hi)}
                for a, p, m, lo, hi in zip(self.archs, self.predicted, self.measured, self.p10, self.p90)
            ],
        }


def check_latency(
    supernet: Supernet,
    table: BilinearTable,
    *,
    num_archs: int = 30,
    seed: int = 0,
    archs: Sequence[Mapping[str, Any]] | None = None,
    settings: ProfileSettings | None = None,
) -> LatencyCheck:
    """Time random exported subnets end to end and compare with ``table.predict``.

    Args:
        supernet: the supernet the table was built for.
        table: a latency table (:func:`~lightning_nas.profiling.build_latency_table`).
        num_archs: how many uniformly random archs (ignored when ``archs`` is given).
        seed: their seed (drawn from another stream than the table's calibration archs).
        archs: explicit archs instead of random ones.
        settings: measurement settings (default: the table's own, from its metadata).
    """
    if archs is None:
        if not isinstance(num_archs, int) or isinstance(num_archs, bool) or num_archs < 1:
            raise ValueError(f"`num_archs` must be an int >= 1, got {num_archs!r}")
        archs = supernet.space.sample_many(num_archs, derive_seed(seed, CHECK_STREAM))
    archs = [supernet.space.validate(a) for a in archs]
    if not archs:
        raise ValueError("`archs` must hold at least one architecture")
    settings = settings or settings_of(table)
    timings = time_archs(supernet, archs, settings, seed=seed)
    return LatencyCheck(
        archs=archs,
        predicted=table.predict_many(archs),
        measured=np.array([t.value(settings.statistic) for t in timings]),
        p10=np.array([t.p10_ms for t in timings]),
        p90=np.array([t.p90_ms for t in timings]),
    )
