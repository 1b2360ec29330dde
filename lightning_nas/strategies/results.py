"""The results of a search: a table of trials, the best architecture and the Pareto front."""

from __future__ import annotations

import math
import numbers
from collections.abc import Sequence
from typing import Any

import numpy as np

from lightning_nas.strategies.base import rank_key
from lightning_nas.strategies.storage import DONE, FAILED, TrialRecord

__all__ = ["SearchResults", "pareto_mask"]


def pareto_mask(points: np.ndarray) -> np.ndarray:
    """Non-dominated rows of ``points`` ``(N, K)``, every column to *minimise*; ``bool (N,)``.

    A row is dominated when another row is no worse in every column and better in one. Duplicates
    of a non-dominated row are all kept.
    """
    points = np.asarray(points, dtype=np.float64)
    if points.ndim != 2:
        raise ValueError(f"`points` must be 2-D (N, K), got shape {points.shape}")
    no_worse = (points[:, None, :] <= points[None, :, :]).all(-1)  # [j, i]: j no worse than i
    better = (points[:, None, :] < points[None, :, :]).any(-1)
    return ~(no_worse & better).any(0)


class SearchResults:
    """The trials of a search, in trial-number order.

    Args:
        records: the stored trials.
        objective: name of the objective metric.
        maximize: whether the objective is maximised.
        full_fidelity: the evaluator's full fidelity (epochs), for equivalent-evaluation accounting.
    """

    def __init__(self, records: Sequence[TrialRecord], *, objective: str, maximize: bool, full_fidelity: float) -> None:
        if isinstance(full_fidelity, bool) or not isinstance(full_fidelity, numbers.Real) \
                or not 0 < full_fidelity < math.inf:
            raise ValueError(f"`full_fidelity` must be a positive finite number of epochs, got {full_fidelity!r}")
        self.records = list(records)
        self.objective = objective
        self.maximize = maximize
        self.full_fidelity = float(full_fidelity)

    @property
    def done(self) -> list[TrialRecord]:
        """The finished trials."""
        return [r for r in self.records if r.state == DONE]

    @property
    def failed(self) -> list[TrialRecord]:
        """The trials that produced no result (``error`` says why); never ranked."""
        return [r for r in self.records if r.state == FAILED]

    def __len__(self) -> int:
        return len(self.done)

    @property
    def equivalent_evaluations(self) -> float:
        """Epochs charged to finished and failed trials divided by the epochs of one full evaluation."""
        return float(sum(r.epochs for r in self.records if r.state in (DONE, FAILED)) / self.full_fidelity)

    def rows(self) -> list[dict[str, Any]]:
        """One flat dict per finished trial (``number``, ``fidelity``, the arch's labels, every metric,
        ``feasible``, ``violation``, ``seconds``, ``equivalent_evaluations`` so far): ``pd.DataFrame(rows)``."""
        out, spent = [], 0.0
        for r in self.records:
            if r.state == FAILED:
                spent += r.epochs / self.full_fidelity
            if r.state != DONE:
                continue
            spent += r.epochs / self.full_fidelity
            row = {"number": r.number, "fidelity": r.fidelity, **r.arch, **r.metrics}
            row.update(feasible=bool(r.violation <= 0.0), violation=r.violation, seconds=r.seconds,
                       equivalent_evaluations=spent)
            out.append(row)
        return out

    def to_pandas(self):
        """The :meth:`rows` as a ``pandas.DataFrame``."""
        import pandas as pd

        return pd.DataFrame(self.rows())

    def _at(self, fidelity: float | None) -> list[TrialRecord]:
        done = self.done
        if not done:
            return []
        fidelity = max(r.fidelity for r in done) if fidelity is None else fidelity
        return [r for r in done if r.fidelity == fidelity]

    def best(self, fidelity: float | None = None) -> TrialRecord | None:
        """The feasible finished trial with the best objective among those at ``fidelity`` (default: the
        highest fidelity evaluated); ``None`` when none is feasible (:meth:`least_violating` then says
        how close the search came)."""
        feasible = [r for r in self._at(fidelity) if r.violation <= 0.0]
        return max(feasible, key=lambda r: r.value) if feasible else None

    def least_violating(self, fidelity: float | None = None) -> TrialRecord | None:
        """The finished trial at ``fidelity`` (default: the highest) with the smallest constraint violation
        (ties: the best objective); feasible when any is. ``None`` when nothing finished."""
        at = self._at(fidelity)
        return max(at, key=lambda r: rank_key(r.value, r.violation)) if at else None

    def best_arch(self) -> dict[str, Any] | None:
        """The arch of :meth:`best` (``None`` when no finished trial is feasible)."""
        best = self.best()
        return None if best is None else dict(best.arch)

    def pareto_front(self, costs: Sequence[str], fidelity: float | None = None) -> list[TrialRecord]:
        """Feasible trials not dominated in (objective, each cost in ``costs`` — costs minimised), among
        finished trials at ``fidelity`` (default: the highest evaluated), sorted by the first cost.
        A trial with a NaN cost is left out (it can neither dominate nor be dominated).

        Raises:
            KeyError: a cost is not among a trial's metrics.
        """
        if isinstance(costs, str):
            raise ValueError(f"`costs` must be a list of metric names, got the string {costs!r} (write [{costs!r}])")
        at = [r for r in self._at(fidelity) if r.violation <= 0.0]
        for r in at:
            missing = [c for c in costs if c not in r.metrics]
            if missing:
                raise KeyError(f"costs {missing} are not among the metrics {sorted(r.metrics)} of trial {r.number}")
        at = [r for r in at if not any(math.isnan(r.metrics[c]) for c in costs)]
        if not at:
            return []
        points = np.array([[-r.value, *(r.metrics[c] for c in costs)] for r in at], dtype=np.float64)
        keep = pareto_mask(points)
        front = [r for r, k in zip(at, keep) if k]
        return sorted(front, key=lambda r: (r.metrics[costs[0]] if costs else 0.0, -r.value))

    def __repr__(self) -> str:
        return f"SearchResults({len(self)} finished trials, objective={self.objective!r})"
